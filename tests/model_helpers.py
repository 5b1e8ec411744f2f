"""Small models shared by the model / generation tests.

Built once per session (`functools.cache`) so that the generator's compiled functions, keyed by the model's graph
and shapes, are reused across test files instead of recompiled.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from jrt_jax.models import JRTConfig, LlamaConfig, build
from tests.helpers import max_abs  # noqa: F401 - the helpers of the model tests, in one namespace

#: JRT-RNN small enough to compile in seconds: BaseConv, PLA, sliding window (window 8), BaseConv.
#: M = 12, so prompts both shorter and longer than the encoder are exercised.
JRT_TEST = JRTConfig.preset(
    "jrt-tiny", vocab_size=300, d_model=64, n_layers=4, n_inner=128, linear_layers=(1,), window_layers=(2,),
    num_heads=2, window_heads=2, feature_dim=8, window=8, enc_len=12,
)
BASED_TEST = JRTConfig.preset(
    "based-tiny", vocab_size=300, d_model=64, n_layers=4, n_inner=128, linear_layers=(1,), window_layers=(2,),
    num_heads=2, window_heads=2, feature_dim=8, window=8, enc_len=12,
)
#: Llama with grouped-query attention and Position Interpolation (linear RoPE scaling).
LLAMA_TEST = LlamaConfig.preset("llama-tiny", vocab_size=300, rope_scaling={"rope_type": "linear", "factor": 2.0})

CONFIGS = {"jrt": JRT_TEST, "based": BASED_TEST, "llama": LLAMA_TEST}


@functools.cache
def model(name: str):
    """The shared test model `name` ("jrt", "based", "llama"), seed 0."""
    return build(CONFIGS[name], seed=0)


@functools.cache
def forward_fn(name: str):
    """jit(model(tokens, mask=, enc_len=)) for the shared model `name`."""
    graphdef, state = nnx.split(model(name))

    @jax.jit
    def fwd(state, tokens, mask, enc_lens):
        m = nnx.merge(graphdef, state)
        kwargs = {} if enc_lens is None else {"enc_len": enc_lens}
        return m(tokens, mask=mask, **kwargs)

    return lambda tokens, mask=None, enc_lens=None: fwd(state, tokens, mask, enc_lens)


def random_prompts(lengths, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]
