"""Perplexity of SmolLM2-135M (the GGUF from PyPI, dequantized) on a Shakespeare play: ours against transformers.

    python benchmarks/perplexity.py                          # hamlet, context 2048, first 8192 tokens
    python benchmarks/perplexity.py --play lear --context 1024 --stride 512 --max-tokens 0   # whole play

Both models read the same weights: the GGUF is converted once to a Hugging Face folder (`jrt convert`, cached
under the jrt-jax cache directory) that `transformers.LlamaForCausalLM.from_pretrained` loads, while ours loads
the GGUF itself. Both score the same token ids (the GGUF's tokenizer) with the same windows: transformers with
Hugging Face's strided-perplexity recipe (labels −100 outside each window's new tokens, loss × scored tokens),
ours with `jrt_jax.evals.perplexity`. Prints both perplexities, their relative difference and the wall times.
Needs the `torch` and `transformers` extras.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def transformers_recipe(hf, ids, context: int, stride: int) -> tuple[float, int]:
    import torch

    nll_sum, n_tokens, prev = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        trg = end - prev
        inp = torch.tensor(np.asarray(ids[begin:end])[None])
        labels = inp.clone()
        labels[:, :-trg] = -100
        with torch.no_grad():
            loss = hf(inp, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        nll_sum += float(loss) * n
        n_tokens += n
        prev = end
        if end == len(ids):
            break
    return nll_sum, n_tokens


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--play", default="hamlet")
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=8192, help="0: the whole play")
    args = p.parse_args(argv)

    import torch
    import transformers

    from jrt_jax.convert import from_pretrained, gguf_tokenizer, smollm2_path
    from jrt_jax.convert.cli import main as convert_main
    from jrt_jax.evals import perplexity
    from jrt_jax.evals.loading import read_texts
    from jrt_jax.fetch import cache_dir

    gguf = smollm2_path()
    text, files = read_texts([f"shakespeare:{args.play}"])
    ids = gguf_tokenizer(gguf).encode(text)
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    stride = args.stride or args.context
    print(f"{files[0]}: {len(ids)} tokens, context {args.context}, stride {stride}")

    t0 = time.perf_counter()
    ours = perplexity(from_pretrained(gguf), ids, context=args.context, stride=stride)
    t_ours = time.perf_counter() - t0

    folder = cache_dir() / "smollm2-hf"
    if not (folder / "config.json").is_file():
        convert_main([str(gguf), str(folder)])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    hf = transformers.LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    t0 = time.perf_counter()
    nll_sum, n = transformers_recipe(hf, ids, args.context, stride)
    t_hf = time.perf_counter() - t0
    theirs = math.exp(nll_sum / n)
    print(f"{'':14} {'perplexity':>11} {'tokens':>7} {'seconds':>8}")
    print(f"{'jrt-jax':14} {ours.perplexity:11.5f} {ours.tokens:7d} {t_ours:8.1f}")
    print(f"{'transformers':14} {theirs:11.5f} {n:7d} {t_hf:8.1f}")
    print(f"relative difference: {abs(ours.perplexity - theirs) / theirs:.2e}")


if __name__ == "__main__":
    main()
