"""An independent PyTorch reference of the HazyResearch JRT-RNN / Based release architecture, for the conversion
tests. Written from the design document (§3, §4) and the conversion issue; it never imports jrt_jax.

Module names follow the release's state-dict keys (``transformer.embeddings.word_embeddings``,
``transformer.layers.{i}.norm1`` / ``mixer`` / ``norm2`` / ``mlp``, ``transformer.ln_f``, tied ``lm_head``), so
``state_dict()`` of `ReferenceLM` has exactly the release's key names (without the training wrapper's
``model.`` prefix). Everything is the quadratic, obviously-correct form, in float32:

* RMSNorm: x / sqrt(mean(x²) + eps) · weight.
* SwiGLU MLP: y, gate = split(fc1(x)); fc2(y · silu(gate)); no biases.
* BaseConv: u1, u2 = split(in_proj(x)); out_proj(silu(causal depthwise Conv1d(u1)) · u2); projections with
  bias, the convolution without (PyTorch ``nn.Conv1d(C, C, K, groups=C, padding=K-1)``, output cut to T).
* Taylor map φ(x) = [1, x / d^¼, vec(x xᵀ) / (√2 · √d)], d = feature size.
* Based: y_i = Σ_{j≤i} φ(q_i)·φ(k_j) v_j / (Σ_{j≤i} φ(q_i)·φ(k_j) + eps).
* PLA: the same plus, for every position, Σ_{j<E} φ(q_i)·φ(ke_j) ve_j in the numerator and Σ_{j<E} φ(q_i)·φ(ke_j)
  in the one shared denominator, with ke, ve the encoder projections of the first E = min(M, T) tokens (E can be
  given: when generating, the encoder is the prompt's).
* Sliding window: fused Wqkv (rows q | k | v, each head-major), rotate-half RoPE on the full head, softmax over
  keys i - w … i (w keys back) with scale 1/√Dh; out_proj. No biases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class GatedMlp(nn.Module):
    def __init__(self, d: int, n_inner: int):
        super().__init__()
        self.fc1 = nn.Linear(d, 2 * n_inner, bias=False)
        self.fc2 = nn.Linear(n_inner, d, bias=False)

    def forward(self, x):
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * F.silu(gate))


class ShortConvolution(nn.Module):
    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=False)

    def forward(self, x):  # [B, T, C]
        t = x.shape[1]
        return self.conv(x.transpose(1, 2))[..., :t].transpose(1, 2)


class BaseConv(nn.Module):
    def __init__(self, d: int, kernel_size: int, expand: int, bias: bool):
        super().__init__()
        self.channels = expand * d // 2
        self.in_proj = nn.Linear(d, expand * d, bias=bias)
        self.conv = ShortConvolution(self.channels, kernel_size)
        self.out_proj = nn.Linear(self.channels, d, bias=bias)

    def forward(self, x, enc_len=None):
        u1, u2 = self.in_proj(x).split(self.channels, dim=-1)
        return self.out_proj(F.silu(self.conv(u1)) * u2)


def taylor_map(x):
    d = x.shape[-1]
    x2 = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(2.0)
    return torch.cat([torch.ones_like(x[..., :1]), x / d ** 0.25, x2 / math.sqrt(d)], dim=-1)


class LinearAttention(nn.Module):
    """Based (causal) or, with `enc_length`, prefix linear attention."""

    def __init__(self, d: int, num_heads: int, feature_dim: int, eps: float, enc_length: int | None):
        super().__init__()
        self.h, self.f, self.dh, self.eps, self.m = num_heads, feature_dim, d // num_heads, eps, enc_length
        self.proj_q = nn.Linear(d, num_heads * feature_dim, bias=False)
        self.proj_k = nn.Linear(d, num_heads * feature_dim, bias=False)
        self.proj_v = nn.Linear(d, d, bias=False)
        if enc_length is not None:
            self.proj_k_enc = nn.Linear(d, num_heads * feature_dim, bias=False)
            self.proj_v_enc = nn.Linear(d, d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)

    def _heads(self, t, dim):
        b, n, _ = t.shape
        return t.view(b, n, self.h, dim).transpose(1, 2)  # [B, H, T, dim]

    def forward(self, x, enc_len=None):
        b, t, _ = x.shape
        q = taylor_map(self._heads(self.proj_q(x), self.f))
        k = taylor_map(self._heads(self.proj_k(x), self.f))
        v = self._heads(self.proj_v(x), self.dh)
        a = torch.tril(q @ k.transpose(-1, -2))  # [B, H, T, T]
        num, den = a @ v, a.sum(-1)
        if self.m is not None:
            e = min(self.m, t) if enc_len is None else enc_len
            ke = taylor_map(self._heads(self.proj_k_enc(x[:, :e]), self.f))
            ve = self._heads(self.proj_v_enc(x[:, :e]), self.dh)
            a_enc = q @ ke.transpose(-1, -2)  # every position reads the whole encoder
            num, den = num + a_enc @ ve, den + a_enc.sum(-1)
        y = num / (den[..., None] + self.eps)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, -1))


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Rotary(nn.Module):
    def __init__(self, dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # like flash-attn's RotaryEmbedding

    def forward(self, x):  # [B, H, T, Dh]
        pos = torch.arange(x.shape[2], dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        return x * emb.cos() + rotate_half(x) * emb.sin()


class SlidingAttention(nn.Module):
    def __init__(self, d: int, num_heads: int, window: int, base: float):
        super().__init__()
        self.h, self.dh, self.window = num_heads, d // num_heads, window
        self.Wqkv = nn.Linear(d, 3 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.rotary_emb = Rotary(self.dh, base)

    def forward(self, x, enc_len=None):
        b, t, d = x.shape
        qkv = self.Wqkv(x).view(b, t, 3, self.h, self.dh)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, T, Dh]
        q, k = self.rotary_emb(q), self.rotary_emb(k)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh)
        i = torch.arange(t)[:, None]
        j = torch.arange(t)[None, :]
        allowed = (j <= i) & (i - j <= self.window)
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
        return self.out_proj((p @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d, n_inner, eps, mixer):
        super().__init__()
        self.norm1 = RMSNorm(d, eps)
        self.mixer = mixer
        self.norm2 = RMSNorm(d, eps)
        self.mlp = GatedMlp(d, n_inner)

    def forward(self, x, enc_len=None):
        x = x + self.mixer(self.norm1(x), enc_len)
        return x + self.mlp(self.norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, vocab, d):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, d)


class _Backbone(nn.Module):
    def __init__(self, vocab, d, blocks, eps):
        super().__init__()
        self.embeddings = _Embeddings(vocab, d)
        self.layers = nn.ModuleList(blocks)
        self.ln_f = RMSNorm(d, eps)


class ReferenceLM(nn.Module):
    """JRT-RNN (``enc_length`` set: PLA layers) or Based (``enc_length=None``) with the release's key names.

    Args: d, n_layer, n_inner, vocab (already padded), linear_layers / window_layers (other layers BaseConv),
    num_heads / feature_dim / linear_eps (linear attention), enc_length (PLA encoder length M, or None for
    Based), window_heads / window (keys back) / rope_base (sliding window), conv_kernel / conv_expand /
    conv_bias (BaseConv), norm_eps.
    """

    def __init__(self, *, d, n_layer, n_inner, vocab, linear_layers, window_layers, num_heads, feature_dim,
                 enc_length, window_heads, window, rope_base=10000.0, conv_kernel=3, conv_expand=4, conv_bias=True,
                 norm_eps=1e-5, linear_eps=1e-12):
        super().__init__()
        self.enc_length = enc_length
        blocks = []
        for i in range(n_layer):
            if i in linear_layers:
                mixer = LinearAttention(d, num_heads, feature_dim, linear_eps, enc_length)
            elif i in window_layers:
                mixer = SlidingAttention(d, window_heads, window, rope_base)
            else:
                mixer = BaseConv(d, conv_kernel, conv_expand, conv_bias)
            blocks.append(Block(d, n_inner, norm_eps, mixer))
        self.transformer = _Backbone(vocab, d, blocks, norm_eps)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.embeddings.word_embeddings.weight  # tied

    def forward(self, tokens, enc_len=None):
        x = self.transformer.embeddings.word_embeddings(tokens)
        for layer in self.transformer.layers:
            x = layer(x, enc_len)
        return self.lm_head(self.transformer.ln_f(x))

    @torch.no_grad()
    def greedy(self, prompt: list[int], n: int) -> list[int]:
        """Token-by-token argmax, recomputing the whole sequence each step; the PLA encoder stays the prompt's
        first min(M, len(prompt)) tokens (what a recurrent decoder after a prefill computes)."""
        enc = None if self.enc_length is None else min(self.enc_length, len(prompt))
        seq = list(prompt)
        for _ in range(n):
            logits = self(torch.tensor([seq]), enc_len=enc)[0, -1]
            seq.append(int(torch.argmax(logits)))
        return seq[len(prompt):]
