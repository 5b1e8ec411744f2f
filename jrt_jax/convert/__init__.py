"""Checkpoint conversion: HazyResearch JRT / Based releases, Hugging Face Llama and GGUF in; PyTorch layouts out.

    model = jrt_jax.from_pretrained("path/to/JRT-360M-30B")          # config.json + pytorch_model.bin
    model = jrt_jax.from_pretrained("path/to/llama", dtype="bfloat16", mesh=mesh)   # placed sharded
    model = jrt_jax.from_pretrained(smollm2_path())                  # SmolLM2-135M GGUF, dequantized
    model = jrt_jax.from_pretrained("runs/mqar")                     # a `jrt train` run directory (newest good step)
    jrt_jax.save_pretrained(model, "out/", format="torch")           # PyTorch-loadable folder
    config = load_config("path/to/llama")                            # just the model config

Command line: ``jrt convert SRC DST [--preset NAME] [--dtype D] [--format safetensors|torch]``.

Modules, each importing only those before it: `errors`; `formats` / `writers` (streaming safetensors / torch-zip
readers and writers); `atomic` (atomic output folders); `mapping` (entries and the generic loader); `hazy_config`
(release config.json ↔ JRTConfig); `hazy` / `llama_hf` / `gguf` (per-architecture configs and key maps);
`architectures` (the strategy protocol, the file formats); `sources` (what a path holds, named checkpoints);
`run_tokenizer` / `run_checkpoint` (training run directories as checkpoints, over the run format `jrt_jax.runs`);
`loader` (detection, key checks, streaming placement); `run` (the run-directory functions); `hf_tokenizer` (the
tokenizer_config.json / special_tokens_map.json / generation_config.json that complete a folder); `export`
(save_pretrained); `cli`.
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
