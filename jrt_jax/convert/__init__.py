"""Checkpoint conversion: HazyResearch JRT / Based releases, Hugging Face Llama and GGUF in; PyTorch layouts out.

    model = jrt_jax.from_pretrained("path/to/JRT-360M-30B")          # config.json + pytorch_model.bin
    model = jrt_jax.from_pretrained("path/to/llama", dtype="bfloat16", mesh=mesh)   # placed sharded
    model = jrt_jax.from_pretrained(smollm2_path())                  # SmolLM2-135M GGUF, dequantized
    model = jrt_jax.from_pretrained("runs/mqar")                     # a `jrt train` run directory (newest good step)
    jrt_jax.save_pretrained(model, "out/", format="torch")           # PyTorch-loadable folder
    config = load_config("path/to/llama")                            # just the model config

Command line: ``jrt convert SRC DST [--preset NAME] [--dtype D] [--format safetensors|torch]``.

Modules: `loader` (detection, key checks, streaming placement), `export` (save_pretrained), `hf_tokenizer` (the
tokenizer_config.json / special_tokens_map.json / generation_config.json that complete a folder), `hazy` / `llama_hf`
/ `gguf` (per-architecture configs and key maps), `run` (training run directories, read-only and verified),
`mapping` (entries and the generic loader), `io` (streaming safetensors / torch-zip readers and writers, atomic
output folders), `cli`.
"""

from jrt_jax.convert.errors import ConversionError, KeyMismatchError, NoTextTokenizer
from jrt_jax.convert.export import save_pretrained
from jrt_jax.convert.gguf import GGUFTokenizer, gguf_tokenizer, smollm2_path
from jrt_jax.convert.loader import from_pretrained, load_config, load_tokenizer, open_checkpoint

__all__ = [
    "ConversionError",
    "GGUFTokenizer",
    "KeyMismatchError",
    "NoTextTokenizer",
    "from_pretrained",
    "gguf_tokenizer",
    "load_config",
    "load_tokenizer",
    "open_checkpoint",
    "save_pretrained",
    "smollm2_path",
]
