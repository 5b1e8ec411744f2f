"""The body JRTLM and LlamaLM share: pre-norm blocks over one mixer protocol, forward / prefill / decode.

    x = embed(tokens)
    for block in layers:
        x += mixer(norm_a(x), ctx, cache);  x += mlp(norm_b(x))       # float32 residual stream
    logits = head(final_norm(x))

A model subclass names its parts (the parameter paths of its checkpoints: `embed` / `layers.{i}.mixer` for
JRT, `embed_tokens` / `layers.{i}.self_attn` for Llama) and says how to build the `SequenceContext`; every
mixer is called the same way (`jrt_jax.nn.context`), so nothing here depends on which mixers a model has.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jrt_jax.nn.constraints import constrain
from jrt_jax.nn.context import SequenceContext

_F32 = jnp.float32


class DecoderBlock(nnx.Module):
    """``x += mixer(norm_a(x)); x += mlp(norm_b(x))`` with a float32 residual.

    Subclasses create the four submodules and list their attribute names in `PARTS` (pre-mixer norm, mixer,
    pre-MLP norm, MLP): the names are the checkpoint's parameter paths. A block whose MLP is None is mixer-only.
    """

    PARTS: tuple[str, str, str, str] = ("norm1", "mixer", "norm2", "mlp")

    def parts(self):
        """(pre-mixer norm, mixer, pre-MLP norm, MLP)."""
        return tuple(getattr(self, name) for name in self.PARTS)

    def __call__(self, x: jax.Array, ctx: SequenceContext, cache=None):
        norm_a, mixer, norm_b, mlp = self.parts()
        y, cache = mixer(norm_a(x), ctx, cache)
        x = x + y.astype(_F32)
        if mlp is None:  # a mixer-only block
            return x, cache
        return x + mlp(norm_b(x)).astype(_F32), cache


class DecoderLM(nnx.Module):
    """Forward, prefill and decoding over `self.layers` (a list of `DecoderBlock`s).

    Subclasses provide `embed_input(tokens)` (float32 [..., d]), `output_logits(x)` (float32 [..., V]) and
    `context(tokens, mask, enc_len, segment_ids)` (validation included).
    """

    @property
    def cache_grows(self) -> bool:
        """Whether the decoding caches grow with the sequence (a KV cache): then `prefill` needs `cache_len`."""
        return any(layer.parts()[1].cache_grows for layer in self.layers)

    def __call__(self, tokens: jax.Array, *, enc_len=None, mask: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        """Logits [B, T, V] (float32) of `tokens` [B, T].

        Args:
          tokens: int [B, T], ids in [0, vocab_size).
          enc_len: JRT-RNN only (see `JRTLM`).
          mask: optional [B, T] bool, True = real token. Pads are excluded from every mixer and RoPE positions
            count real tokens only, so a left-padded row gives the same logits as the row alone.
          segment_ids: optional [B, T] int packed-document ids (0 = padding): no mixer crosses a document
            boundary, positions restart per document, and each document has its own PLA encoder.
        """
        return self.output_logits(self.hidden_states(tokens, enc_len=enc_len, mask=mask, segment_ids=segment_ids))

    def hidden_states(self, tokens: jax.Array, *, enc_len=None, mask: jax.Array | None = None,
                      segment_ids: jax.Array | None = None) -> jax.Array:
        """The last layer's output [B, T, d] (float32) before the final norm and head: `output_logits` of it is
        `__call__`. Scoring long sequences applies the head a slice at a time (`jrt_jax.evals.scoring`) rather
        than materialising [B, T, V] logits (16k tokens x 49k vocabulary = 3.2 GB in float32)."""
        ctx = self.context(tokens, mask, enc_len, segment_ids)
        x = constrain(self.embed_input(tokens))
        for layer in self.layers:
            x = constrain(layer(x, ctx)[0])
        return x

    def init_cache(self, batch: int, cache_len: int | None = None) -> tuple:
        """Empty per-layer caches; `cache_len` is the capacity of KV caches (prompt + tokens to generate)."""
        return tuple(layer.parts()[1].init_cache(batch, cache_len) for layer in self.layers)

    def prefill(self, tokens, *, mask=None, enc_len=None, cache_len: int | None = None, all_logits: bool = False):
        """Parallel pass over a prompt that also returns the decoding caches.

        Returns:
          (logits, caches): logits [B, T, V] if `all_logits` else the last position's [B, V]; one cache per
          layer. `cache_len` (default T) is the KV-cache capacity, ignored by constant-size caches.
        """
        ctx = self.context(tokens, mask, enc_len, None)
        cache_len = tokens.shape[1] if cache_len is None else cache_len
        x = self.embed_input(tokens)
        caches = []
        for layer, cache in zip(self.layers, self.init_cache(tokens.shape[0], cache_len)):
            x, cache = layer(x, ctx, cache)
            caches.append(cache)
        return self.output_logits(x if all_logits else x[:, -1]), tuple(caches)

    def decode_step(self, token: jax.Array, caches: tuple, *, positions: jax.Array):
        """One token per row: token [B] int, positions [B] (real tokens before it) → (logits [B, V], caches)."""
        ctx = SequenceContext.for_step(positions)
        x = self.embed_input(token)[:, None]
        new = []
        for layer, cache in zip(self.layers, caches):
            x, cache = layer(x, ctx, cache)
            new.append(cache)
        return self.output_logits(x[:, 0]), tuple(new)
