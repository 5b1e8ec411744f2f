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

from jrt_jax.models._checks import check_mask, check_start, check_tokens
from jrt_jax.nn.constraints import constrain
from jrt_jax.nn.context import SequenceContext
from jrt_jax.parallel import current_sequence_parallel

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
    def encoder_len(self) -> int | None:
        """The PLA encoder length M of a JRT-RNN model (every row's first M real tokens are read twice); None
        for models without an encoder."""
        return None

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

    def prefill(self, tokens, *, mask=None, enc_len=None, cache_len: int | None = None, all_logits: bool = False,
                caches: tuple | None = None, start=None):
        """Parallel pass over a prompt that also returns the decoding caches; or, given `caches`, over the next
        chunk of a prompt.

        Args:
          tokens, mask, enc_len: as `__call__` (prompts are left-padded: pads lead each row).
          cache_len: the KV-cache capacity (default T), ignored by constant-size caches. It must hold every
            chunk to come plus the tokens to generate.
          all_logits: return the logits of every position rather than of the last.
          caches: the caches returned by an earlier `prefill` (or `decode_step`s): the pass continues from them,
            so prefilling a prompt chunk by chunk equals one prefill over the concatenation (logits and caches)
            while the activations held at once are those of one chunk.
          start: with `caches`, [B] int: the real tokens each row already holds (the sum of the earlier
            chunks' masks; what `decode_step` calls positions).

        Returns:
          (logits, caches): logits [B, T, V] if `all_logits` else the last position's [B, V]; one cache per
          layer.
        """
        if caches is None:
            if start is not None:
                raise ValueError("start is the real tokens already in `caches`; pass caches= with it")
            ctx = self.context(tokens, mask, enc_len, None)
            caches = self.init_cache(tokens.shape[0], tokens.shape[1] if cache_len is None else cache_len)
        else:
            if start is None:
                raise ValueError("prefill(caches=...) continues a prompt: pass start=[B] int, the real tokens "
                                 "each row already holds in the caches")
            if current_sequence_parallel() is not None:
                raise ValueError("a chunked prefill (prefill with caches=) runs on one device, not inside "
                                 "sequence_parallel: prefill each chunk without it")
            if len(caches) != len(self.layers):
                raise ValueError(f"caches must hold one cache per layer ({len(self.layers)}); got {len(caches)}")
            ctx = self.chunk_context(tokens, mask, enc_len, start)
        x = self.embed_input(tokens)
        new = []
        for layer, cache in zip(self.layers, caches):
            x, cache = layer(x, ctx, cache)
            new.append(cache)
        return self.output_logits(x if all_logits else x[:, -1]), tuple(new)

    def chunk_context(self, tokens, mask, enc_len, start) -> SequenceContext:
        """The context of a later prefill chunk (validation included); models with an encoder override it."""
        if enc_len is not None:
            raise ValueError(f"enc_len is a JRT-RNN setting; {type(self).__name__} has no encoder "
                             f"(got enc_len={enc_len!r})")
        check_tokens(tokens, self.config.vocab_size, self.max_length)
        b, t = tokens.shape
        return SequenceContext.for_chunk(b, t, start=check_start(start, b), mask=check_mask(mask, b, t))

    def decode_step(self, token: jax.Array, caches: tuple, *, positions: jax.Array):
        """One token per row: token [B] int, positions [B] (real tokens before it) → (logits [B, V], caches)."""
        ctx = SequenceContext.for_step(positions)
        x = self.embed_input(token)[:, None]
        new = []
        for layer, cache in zip(self.layers, caches):
            x, cache = layer(x, ctx, cache)
            new.append(cache)
        return self.output_logits(x[:, 0]), tuple(new)
