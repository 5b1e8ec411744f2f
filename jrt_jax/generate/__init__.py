"""Generation: parallel prefill, constant-memory decoding for JRT-RNN / Based, KV cache for Llama.

    from jrt_jax.generate import Generator, SamplingParams
    gen = Generator(model)
    result = gen.generate([[5, 6, 7], [8, 9]], max_new_tokens=64,
                          sampling=SamplingParams(temperature=0.7, top_p=0.9), seed=1,
                          stop_strings=["\\n"], detokenize=tokenizer.decode)
    for event in gen.stream(prompt_ids, max_new_tokens=64): ...          # tokens as they come

See `engine` for shapes, buckets and the compile counter, `state_size` for decode-state bytes.
"""

from jrt_jax.generate.buckets import bucket, left_pad
from jrt_jax.generate.engine import (
    GenerationResult,
    Generator,
    StreamEvent,
    compile_counts,
    generate,
    reset_compile_counts,
)
from jrt_jax.generate.sampling import SamplingParams, filter_logits
from jrt_jax.generate.state_size import decode_state, state_bytes, state_bytes_by_kind
from jrt_jax.generate.stopping import TextTracker

__all__ = [
    "GenerationResult",
    "Generator",
    "SamplingParams",
    "StreamEvent",
    "TextTracker",
    "bucket",
    "compile_counts",
    "decode_state",
    "filter_logits",
    "generate",
    "left_pad",
    "reset_compile_counts",
    "state_bytes",
    "state_bytes_by_kind",
]
