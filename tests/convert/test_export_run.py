"""A trained run → every tool: `jrt export RUN DST`, `jrt_jax.from_pretrained(RUN)` and `jrt generate --checkpoint
RUN` (run directory or exported folder, no extra flags), with the run's tokenizer and token ids.

Three tiny runs: a Llama trained by the `jrt train` command on a local text file with the byte tokenizer (exported
folder loaded by transformers, logits within 1e-4), a tied-embedding Llama and a JRT-RNN (jrt-micro, synthetic
set disjointness: no text tokenizer) trained in-process, whose exported and run-directory models give the
trained parameters' logits exactly. The Llama run, given the byte tokenizer's ids as a tokenizer.json, exports a
complete Hugging Face folder: transformers' AutoTokenizer and text-generation pipeline and lm-eval's ``--model
hf`` read it and agree with ours."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jrt_jax
from jrt_jax import runs
from jrt_jax.convert import ConversionError, load_tokenizer
from jrt_jax.convert.run import EXPORT_FILE, run_model_config, run_tokenizer_record
from jrt_jax.tokenizer import ByteTokenizer
from tests import convert_helpers as ch
from train import cli
from jrt_jax.convert import load_config as model_config
from train.config import load_config, to_dict

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 40


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread():
    yield from ch.torch_single_thread()


def _train_cli(run: pathlib.Path, text_file: pathlib.Path, cache: pathlib.Path):
    """`jrt train` of the issue's command (plus small batch / eval sizes) in a subprocess on the CPU."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JRT_JAX_CACHE=str(cache))
    cmd = [sys.executable, "-m", "train.cli", "train", "model.preset=llama-tiny",
           "model.overrides={num_hidden_layers: 1}", "data.kind=text", f"data.text_files=[{text_file}]",
           "data.tokenizer=bytes", "steps=3", f"checkpoint.dir={run}", "logging.dir=null", "data.batch_size=4",
           "data.seq_len=32", "data.eval_examples=4"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _train_inprocess(run: pathlib.Path, overrides: list[str]):
    """A run trained with train.trainer.Trainer; returns (trained model, trainer config)."""
    from train.trainer import Trainer

    cfg = load_config(None, ["logging.dir=null", "data.batch_size=4", "data.eval_examples=4",
                             "checkpoint.async_save=false", f"checkpoint.dir={run}", *overrides])
    trainer = Trainer(cfg, log=lambda *a, **k: None)
    trainer.run()
    trainer.close()
    model = nnx.merge(trainer.graphdef, trainer.state["params"], trainer.rest)
    return model, cfg


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    text = root / "text.txt"
    text.write_text(TEXT)
    _train_cli(root / "run", text, root / "cache")
    return root / "run"


@pytest.fixture(scope="module")
def jrt_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("jrt")
    # jrt-micro cut to 3 layers (BaseConv, prefix linear attention, sliding window) to halve the compile time
    model, cfg = _train_inprocess(root / "run", [
        "model.preset=jrt-micro", "model.overrides={n_layers: 3, linear_layers: [1], window_layers: [2]}",
        "steps=2", "data.seq_len=32", "checkpoint.every=1"])
    return root / "run", model, cfg


def _export(*args) -> tuple[int, str, str]:
    """`jrt export ...` in-process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["export", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


def _hf_logits(folder, tokens):
    import torch
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(torch.tensor(tokens)).logits.numpy()


TOKENS = np.asarray([list(b"It was the best of times"), list(b"the age of wisdom, it wa")], np.int32)


# ------------------------------------------------------------------------------------------------ Llama


def test_llama_run_exports_to_a_transformers_folder(llama_run, tmp_path):
    code, out, err = _export(llama_run, tmp_path / "out")
    assert code == 0, err
    assert out.startswith(f"exported {llama_run} step 3 (LlamaLM, ")
    assert "tokenizer: bytes (bos 256, eos 256, pad 257)" in out
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["config.json", "generation_config.json", EXPORT_FILE, "model.safetensors"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (256, 256, 257)
    # the byte tokenizer has no tokenizer.json: the folder says what loads it
    assert "jrt_jax.convert.load_tokenizer" in config["jrt_tokenizer"]
    assert config["num_hidden_layers"] == 1
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 256, "eos_token_id": 256, "pad_token_id": 257}
    record = json.loads((tmp_path / "out" / EXPORT_FILE).read_text())
    assert record["step"] == 3 and record["run"] == str(llama_run) and record["tokenizer"]["kind"] == "bytes"
    assert record["tokenizer"]["loader"] == config["jrt_tokenizer"]
    assert record["train_config"]["data"]["tokenizer"] == "bytes"

    ours = jrt_jax.from_pretrained(llama_run)  # the run directory itself
    want = np.asarray(ours(jnp.asarray(TOKENS)))
    hf = _hf_logits(tmp_path / "out", TOKENS)
    diff = ch.max_abs(hf, want)
    print(f"Llama run: max |transformers - JAX| logits = {diff:.3g}")
    assert diff <= 1e-4
    ch.assert_bit_identical(ch.params_of(ours), ch.params_of(jrt_jax.from_pretrained(tmp_path / "out")))
    assert isinstance(load_tokenizer(llama_run), ByteTokenizer)
    assert isinstance(load_tokenizer(tmp_path / "out"), ByteTokenizer)

    # The run records the model it trains beside its checkpoints; a run written before it did (no config.json)
    # gives the same model from its saved training config; a damaged record is a one-line error.
    llama = dataclasses.replace(jrt_jax.models.config_from_preset("llama-tiny"), num_hidden_layers=1)
    assert runs.read_model_config(llama_run) == llama == ours.config
    legacy = tmp_path / "legacy"
    shutil.copytree(llama_run, legacy)
    (legacy / runs.MODEL_CONFIG_FILE).unlink()
    assert model_config(legacy) == model_config(llama_run)
    ch.assert_bit_identical(ch.params_of(ours), ch.params_of(jrt_jax.from_pretrained(legacy)))
    (legacy / runs.MODEL_CONFIG_FILE).write_text("{")
    with pytest.raises(ConversionError, match=r"config.json: unreadable \(JSONDecodeError"):
        jrt_jax.from_pretrained(legacy)


# A tokenizer.json in the run directory is the run's tokenizer (`run_tokenizer_record`); written with the byte
# tokenizer's ids, it describes the model the Llama run trained, without training another.
STRINGS = ["It was the best of times", "  leading, inner   and trailing spaces  ", "tabs\t\tand\n\nnewlines\r\n",
           "ünïcödé — “quotes” 日本語 🙂 café", "", " ", "It was the age of wisdom, it was the age of foolishness"]


@pytest.fixture(scope="module")
def llama_text_export(llama_run, tmp_path_factory):
    """(run, exported folder) of a copy of `llama_run` holding `ch.byte_tokenizer_json` as its tokenizer.json."""
    root = tmp_path_factory.mktemp("llama_text")
    shutil.copytree(llama_run, root / "run")
    ch.byte_tokenizer_json(root / "run" / "tokenizer.json")
    code, out, err = _export(root / "run", root / "out")
    assert code == 0, err
    assert "tokenizer: file (bos 256, eos 256, pad 257)" in out
    return root / "run", root / "out"


def test_llama_export_with_a_tokenizer_file_is_a_complete_hf_folder(llama_text_export):
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json + generation_config.json: transformers'
    AutoTokenizer gives our ids and text with bos / eos / pad set, and its text-generation pipeline gives our greedy
    tokens."""
    import transformers

    run, out = llama_text_export
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", EXPORT_FILE, "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((out / "tokenizer_config.json").read_text()) == {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>", "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": 4096}  # llama-tiny's max_position_embeddings
    assert json.loads((out / "special_tokens_map.json").read_text()) == {
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
    ids = {"bos_token_id": 256, "eos_token_id": 256, "pad_token_id": 257}
    assert json.loads((out / "generation_config.json").read_text()) == ids
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ids} == ids and "jrt_tokenizer" not in config

    ours = load_tokenizer(out)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (256, 256, 257)
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (256, 256, 257)
    for text in STRINGS:
        want = ByteTokenizer().encode(text)  # the ids the model was trained on
        assert ours.encode(text) == want and hf.encode(text) == want, text
        assert hf.decode(want) == ours.decode(want) == text
    assert hf.decode([*b"ab", 256]) == ours.decode([*b"ab", 256]) == "ab<|endoftext|>"

    pipe = transformers.pipeline("text-generation", model=str(out), tokenizer=str(out), device="cpu")
    got = pipe("It was the", max_new_tokens=5, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    model = jrt_jax.from_pretrained(run)
    greedy = list(b"It was the")
    for _ in range(5):
        greedy.append(int(jnp.argmax(model(jnp.asarray([greedy]))[0, -1])))
        if greedy[-1] == 256:  # transformers stops at eos (generation_config.json)
            break
    assert list(got) == greedy


def test_lm_eval_hf_loglikelihoods_equal_ours(llama_text_export):
    """lm-eval's own ``--model hf`` (HFLM: transformers' model and tokenizer from the exported folder) and our
    ``--model jrt-jax`` give the same log-likelihoods on hand-made requests (empty context included: both condition
    it on the bos token)."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate", reason="lm-eval's --model hf (HFLM) imports accelerate")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from jrt_jax.evals.lm_eval_adapter import JRTJaxLM

    _, out = llama_text_export
    pairs = [("It was the best of", " times"), ("It was the", " worst of times, it was"), ("", "It was the age"),
             ("the age of wisdom, ", "it was"), ("ünïcödé ", "— “quotes” 🙂"), ("tabs\t", "\tand  spaces")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    theirs = HFLM(pretrained=str(out), device="cpu", batch_size=2, dtype="float32").loglikelihood(
        requests, disable_tqdm=True)
    ours = JRTJaxLM(pretrained=str(out), batch_size=2).loglikelihood(requests, disable_tqdm=True)
    diff = max(abs(a[0] - b[0]) for a, b in zip(theirs, ours))
    print(f"lm-eval --model hf vs --model jrt-jax on the exported Llama: max |Δ loglik| = {diff:.3g}")
    assert diff <= 1e-4
    assert [a[1] for a in theirs] == [b[1] for b in ours]  # is_greedy
    assert all(a[0] < 0 for a in ours)


@pytest.mark.slow
def test_tied_llama_stores_the_embedding_once(tmp_path):
    from safetensors import safe_open

    model, _ = _train_inprocess(tmp_path / "run", [
        "model.preset=llama-tiny", "model.overrides={num_hidden_layers: 1, tie_word_embeddings: true}",
        "data.kind=mqar", "steps=2", "data.seq_len=48"])
    want = np.asarray(model(jnp.asarray(TOKENS)))
    for fmt in ("safetensors", "torch"):
        code, _, err = _export(tmp_path / "run", tmp_path / fmt, "--format", fmt)
        assert code == 0, err
        if fmt == "safetensors":
            with safe_open(tmp_path / fmt / "model.safetensors", "np") as f:
                keys = set(f.keys())
            assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
        diff = ch.max_abs(_hf_logits(tmp_path / fmt, TOKENS), want)
        print(f"tied Llama ({fmt}): max |transformers - trained JAX| logits = {diff:.3g}")
        assert diff <= 1e-4
        np.testing.assert_array_equal(np.asarray(jrt_jax.from_pretrained(tmp_path / fmt)(jnp.asarray(TOKENS))), want)
    # synthetic data: no tokenizer, no token ids, and a note saying so
    config = json.loads((tmp_path / "safetensors" / "config.json").read_text())
    assert "eos_token_id" not in config and not (tmp_path / "safetensors" / "generation_config.json").exists()
    note = json.loads((tmp_path / "safetensors" / EXPORT_FILE).read_text())["tokenizer"]
    assert note["kind"] is None and "synthetic" in note["note"]


# -------------------------------------------------------------------------------------------------- JRT


@pytest.mark.slow
def test_jrt_run_export_and_run_dir_give_the_trained_logits(jrt_run, tmp_path):
    run, trained, _ = jrt_run
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 40)), jnp.int32)
    want = np.asarray(trained(tokens))
    code, out, err = _export(run, tmp_path / "out")
    assert code == 0, err
    assert "(JRTLM, " in out and "tokenizer: none" in out and "synthetic task" in err
    from_run = jrt_jax.from_pretrained(run)
    from_export = jrt_jax.from_pretrained(tmp_path / "out")
    assert isinstance(from_run, jrt_jax.JRTLM) and from_run.config == from_export.config == model_config(run)
    np.testing.assert_array_equal(np.asarray(from_run(tokens)), want)
    np.testing.assert_array_equal(np.asarray(from_export(tokens)), want)
    ch.assert_bit_identical(ch.params_of(trained), ch.params_of(from_export))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["jrt_loader"] == "jrt_jax.from_pretrained"
    with pytest.raises(ConversionError, match="synthetic"):
        load_tokenizer(tmp_path / "out")  # not GPT-2, the default of a release-style folder without a tokenizer
    with pytest.raises(ConversionError, match="synthetic"):
        load_tokenizer(run)


def test_jrt_folders_name_their_loader(tmp_path):
    """A JRT-RNN folder is the HazyResearch release format, not a transformers architecture: its config.json
    names the loader that reads it, and says why AutoModelForCausalLM fails."""
    from jrt_jax.models import JRTLM, build, config_from_preset

    config = dataclasses.replace(config_from_preset("jrt-micro"), n_layers=3, linear_layers=(1,), window_layers=(2,))
    jrt_jax.save_pretrained(build(config, seed=0), tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["jrt_loader"] == "jrt_jax.from_pretrained" and "KeyError: 'swiglu'" in saved["jrt_note"]
    assert isinstance(jrt_jax.from_pretrained(tmp_path / "out"), JRTLM)
    transformers = pytest.importorskip("transformers")
    with pytest.raises(KeyError, match="swiglu"):
        transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))


@pytest.mark.slow
def test_a_step_folder_and_an_older_step(jrt_run, tmp_path):
    """RUN/<step> selects a step; `--step` too; the newest step is the default. `--model RUN DST` is the same
    command with the model named as every jrt command names it."""
    run, trained, cfg = jrt_run
    assert jrt_jax.from_pretrained(run / "2").config == jrt_jax.from_pretrained(run).config
    code, _, err = _export("--model", run, tmp_path / "out", "--step", "2")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / EXPORT_FILE).read_text())["step"] == 2


# --------------------------------------------------------------------------------------------- generate


def _generate(checkpoint, monkeypatch, capsys) -> str:
    import jrt_jax.tokenizer as tk

    def no_fallback(vocab_size):
        raise AssertionError("the run's own tokenizer should have been used")

    monkeypatch.setattr(tk, "tokenizer_for_vocab", no_fallback)
    code = cli.main(["generate", "--model", str(checkpoint), "--prompt", "It was the", "--max-new-tokens",
                     "5", "--no-eos-stop"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.mark.slow
def test_generate_reads_the_run_dir_and_the_export(llama_run, tmp_path, monkeypatch, capsys):
    assert _export(llama_run, tmp_path / "out")[0] == 0
    from_run = _generate(llama_run, monkeypatch, capsys)
    from_export = _generate(tmp_path / "out", monkeypatch, capsys)
    assert from_run == from_export
    # the text is the byte tokenizer's decoding of the model's greedy continuation
    model = jrt_jax.from_pretrained(llama_run)
    ids = list(b"It was the")
    for _ in range(5):
        ids.append(int(jnp.argmax(model(jnp.asarray([ids]))[0, -1])))
    assert from_run == ByteTokenizer().decode(ids[10:]) + "\n"


# ---------------------------------------------------------------------------------------------- errors


def _assert_one_line_error(code, out, err, *needles):
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jrt export: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.slow
def test_errors_are_one_line_and_write_nothing(jrt_run, tmp_path):
    run = jrt_run[0]
    dst = tmp_path / "dst"
    _assert_one_line_error(*_export(tmp_path / "missing", dst), "does not exist")
    assert not dst.exists()
    for args in ((run,), ("--model", run, run, dst), (run, dst, dst)):
        _assert_one_line_error(*_export(*args), "give RUN_DIR DST, or --model RUN_DIR DST")
    assert not dst.exists()
    (tmp_path / "plain").mkdir()
    _assert_one_line_error(*_export(tmp_path / "plain", dst), "not a training run directory")
    assert not dst.exists()
    # a run that saved no checkpoint yet: its owner file only
    (tmp_path / "empty").mkdir()
    shutil.copy(run / "jrt_run.json", tmp_path / "empty" / "jrt_run.json")
    _assert_one_line_error(*_export(tmp_path / "empty", dst), "no checkpoint")
    assert not dst.exists()
    _assert_one_line_error(*_export(run, dst, "--step", "7"), "step 7 does not exist", "steps: [1, 2]")
    assert not dst.exists()
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    _assert_one_line_error(*_export(run, dst), "not empty")
    assert sorted(p.name for p in dst.iterdir()) == ["keep.txt"] and (dst / "keep.txt").read_text() == "mine"
    code, _, err = _export(run, dst, "--overwrite")
    assert code == 0, err and (dst / "keep.txt").is_file()


def _edit_meta(step_dir: pathlib.Path) -> None:
    meta = step_dir / "meta" / "metadata"
    data = json.loads(meta.read_text())
    data["data_position"] = 5  # valid JSON, a plausible value: only its SHA-256 tells
    meta.write_text(json.dumps(data))


def _alter_a_parameter(step_dir: pathlib.Path) -> None:
    """Rewrite the step's arrays with one element of one parameter changed (a well-formed orbax checkpoint: orbax
    restores it without complaint; only the digest in the metadata tells)."""
    import warnings

    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ckpt, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sharding info not provided when restoring": one CPU device here
        state = {k: np.asarray(v) for k, v in ckpt.restore(step_dir / "state").items()}
        key = sorted(k for k in state if k.startswith("['params']"))[0]
        state[key] = state[key].copy()
        state[key].flat[0] += 1.0
        shutil.rmtree(step_dir / "state")
        ckpt.save(step_dir / "state", state)


@pytest.mark.slow
@pytest.mark.parametrize("damage, reason", [(_edit_meta, "SHA-256"), (_alter_a_parameter, "digest")],
                         ids=["metadata", "parameters"])
def test_a_corrupt_newest_step_falls_back_unless_asked_for(jrt_run, tmp_path, damage, reason):
    run = tmp_path / "run"
    shutil.copytree(jrt_run[0], run)
    damage(run / "2")
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _assert_one_line_error(*_export(run, tmp_path / "a", "--step", "2"), "step 2", reason)
    assert not (tmp_path / "a").exists()
    code, _, err = _export(run, tmp_path / "b")
    assert code == 0 and "warning" in err and "step 2" in err and reason in err
    assert json.loads((tmp_path / "b" / EXPORT_FILE).read_text())["step"] == 1
    after = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # the run is only read


# ------------------------------------------------------------------------------ config and tokenizer rules


@pytest.mark.parametrize("overrides", [
    ["model.preset=jrt-micro"],
    ["model.preset=based-micro", "model.overrides={n_layers: 3, linear_layers: [1], window_layers: [2]}"],
    ["model.preset=llama-tiny", "optim.param_dtype=bfloat16", "optim.compute_dtype=bfloat16"],
    ["model.preset=llama-tiny", "model.rope_scaling={rope_type: linear, factor: 4.0}", "data.seq_len=8192"],
    ["model.preset=llama-tiny", "model.rope_scaling={rope_type: yarn, factor: 2.0}", "data.seq_len=64"],
    ["model.preset=llama-tiny", "model.rope_scaling={rope_type: dynamic, factor: 2.0}", "data.seq_len=8192"],
], ids=["jrt", "based-overrides", "bf16", "pi-linear", "yarn", "dynamic"])
def test_model_config_rule_matches_the_trainer(overrides):
    """The model config the trainer trained is what a run records (config.json round trip), and what the saved
    training config of a run that records none rebuilds (JSON round trip)."""
    from train.trainer import build_model_config

    cfg = load_config(None, overrides)
    trained = build_model_config(cfg)
    assert runs.model_config_from_dict(json.loads(json.dumps(runs.model_config_dict(trained)))) == trained
    assert run_model_config(json.loads(json.dumps(to_dict(cfg)))) == trained


def test_recorded_model_config_errors():
    good = runs.model_config_dict(jrt_jax.models.config_from_preset("recall-attention"))
    assert good["model_class"] == "JRTConfig" and good["attention_layers"] == [1] and good["mlp"] is False
    for bad, match in [(dict(good, model_class="GPT2"), r"x/config.json: model_class='GPT2'; expected one of \["),
                       (dict(good, n_layerz=3), r"unknown field\(s\) \['n_layerz'\] for JRTConfig"),
                       (dict(good, n_layers=0), "does not build a JRTConfig: n_layers"),
                       ([], "must hold a JSON object; got list")]:
        with pytest.raises(runs.RunError, match=match):
            runs.model_config_from_dict(bad, "x/config.json")
    with pytest.raises(runs.RunError, match="fine-tuned from model.checkpoint=base .*base_config="):
        runs.legacy_model_config({"model": {"checkpoint": "base"}}, run="r")


def test_model_config_rules_for_rope_scaling():
    base = jrt_jax.models.config_from_preset("llama-tiny").max_position_embeddings
    linear = run_model_config(to_dict(load_config(None, ["model.preset=llama-tiny", "data.seq_len=8192",
                                                         "model.rope_scaling={rope_type: linear, factor: 4.0}"])))
    assert linear.max_position_embeddings == max(base, 8192) and linear.rope_scaling["factor"] == 4.0
    yarn = run_model_config(to_dict(load_config(None, ["model.preset=llama-tiny", "data.seq_len=64",
                                                       "model.rope_scaling={rope_type: yarn, factor: 2.0}"])))
    assert yarn.rope_scaling["original_max_position_embeddings"] == base
    dynamic = run_model_config(to_dict(load_config(None, ["model.preset=llama-tiny", "data.seq_len=8192",
                                                          "model.rope_scaling={rope_type: dynamic, factor: 2.0}"])))
    assert dynamic.max_position_embeddings == base  # dynamic NTK reads it as the pre-trained context
    bf16 = run_model_config(to_dict(load_config(None, ["optim.compute_dtype=bfloat16"])))
    assert bf16.dtype == "bfloat16" and bf16.param_dtype == "float32"


def test_model_config_of_a_fine_tune(tmp_path):
    from train.trainer import build_model_config

    base = dataclasses.replace(jrt_jax.models.config_from_preset("llama-tiny"), max_position_embeddings=32)
    jrt_jax.save_pretrained(jrt_jax.models.build(base, seed=1), tmp_path / "base")
    cfg = load_config(None, [f"model.checkpoint={tmp_path / 'base'}", "model.preset=llama-tiny",
                             "model.rope_scaling={rope_type: linear, factor: 2.0}", "data.seq_len=64"])
    assert run_model_config(to_dict(cfg)) == build_model_config(cfg)
    gone = dict(to_dict(cfg), model=dict(to_dict(cfg)["model"], checkpoint=str(tmp_path / "gone")))
    with pytest.raises(ConversionError, match="fine-tuned from model.checkpoint=.*does not exist"):
        run_model_config(gone, tmp_path / "run")


def test_tokenizer_records(tmp_path):
    def record(overrides, run=tmp_path / "run"):
        return run_tokenizer_record(to_dict(load_config(None, overrides)), run)

    r = record(["data.kind=text", "data.text_files=[x.txt]", "data.tokenizer=gpt2"])
    assert (r.kind, r.bos, r.eos, r.pad) == ("gpt2", 50256, 50256, None)
    r = record(["data.kind=text", "data.text_files=[x.txt]", "data.tokenizer=bytes"])
    assert (r.kind, r.bos, r.eos, r.pad) == ("bytes", 256, 256, 257) and isinstance(r.load(), ByteTokenizer)
    r = record(["data.kind=mqar"])
    assert r.kind is None and "synthetic" in r.note
    # prepared token data: the directory's tokenizer.json (here a tiny word-level one) and its eos id
    from tokenizers import Tokenizer, models

    data = tmp_path / "data"
    data.mkdir()
    Tokenizer(models.WordLevel({"a": 0, "</s>": 1, "[UNK]": 2}, unk_token="[UNK]")).save(str(data / "tokenizer.json"))
    (data / "index.json").write_text(json.dumps({"tokenizer": {"name": "tokenizer.json", "vocab_size": 3,
                                                               "eos_id": 1, "file": "tokenizer.json"}}))
    r = record(["data.kind=tokens", f"data.path=[{data}]"])
    assert (r.kind, r.eos, r.file) == ("file", 1, str(data / "tokenizer.json")) and r.load().eos_id == 1
    # a tokenizer.json in the run directory comes before the data's
    (tmp_path / "run").mkdir()
    shutil.copy(data / "tokenizer.json", tmp_path / "run" / "tokenizer.json")
    assert record(["data.kind=mqar"]).kind == "file"
    # a fine-tune: the base checkpoint's tokenizer when it has one
    base = tmp_path / "base"
    jrt_jax.save_pretrained(jrt_jax.models.build(jrt_jax.models.config_from_preset("llama-tiny")), base)
    shutil.copy(data / "tokenizer.json", base / "tokenizer.json")
    r = record([f"model.checkpoint={base}", "data.kind=text", "data.text_files=[x.txt]"], tmp_path / "other")
    assert (r.kind, r.eos) == ("checkpoint", 1)  # data.tokenizer=auto: the text was read with the base's tokenizer
    r = record([f"model.checkpoint={base}", "data.kind=text", "data.text_files=[x.txt]", "data.tokenizer=bytes"],
               tmp_path / "other")
    assert r.kind == "bytes"  # an explicit data tokenizer is what the ids were made with
    # … with the ids its config.json / generation_config.json name, when they name them
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(dict(config, bos_token_id=0, eos_token_id=1)))
    (base / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 2], "pad_token_id": 2}))
    r = record([f"model.checkpoint={base}", "data.kind=mqar"], tmp_path / "other")
    assert (r.kind, r.bos, r.eos, r.pad) == ("checkpoint", 0, [1, 2], 2)


@pytest.mark.slow
def test_text_tools_refuse_a_run_without_a_text_tokenizer(jrt_run, tmp_path, capsys):
    """A synthetic-task run has no text tokenizer: jrt generate (run directory or its export) and the text evaluations
    refuse it in one line naming the reason and what to use instead, instead of decoding / scoring its ids through a
    byte tokenizer guessed from the vocabulary size (U+FFFD characters with exit 0, a perplexity of task symbols).
    jrt eval recall, which feeds task symbols, still takes it."""
    run = jrt_run[0]
    assert _export(run, tmp_path / "out")[0] == 0
    capsys.readouterr()
    reason = ("no text tokenizer (data.kind=set_disjointness is a synthetic task: its token ids are task symbols, not "
              "text, so there is no text tokenizer and no bos / eos / pad id)")
    for checkpoint in (run, tmp_path / "out"):
        code = cli.main(["generate", "--checkpoint", str(checkpoint), "--prompt", "It was the", "--max-new-tokens",
                         "2"])
        captured = capsys.readouterr()
        assert code == 2 and captured.err == (
            f"jrt generate: error: --model {checkpoint} has {reason}; this reads text: give a model trained on "
            f"text (or force one with --tokenizer bytes), or evaluate a synthetic-task run with jrt eval recall --model "
            f"{checkpoint}\n")
        assert captured.out == ""  # nothing generated
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    rows = tmp_path / "qa.jsonl"
    rows.write_text(json.dumps({"context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"}))
    for command in (["perplexity", "--text", str(text), "--context", "16"], ["passkey", "--lengths", "64"],
                    ["qa", "--data", str(rows)]):
        code = cli.main(["eval", command[0], "--model", str(run), *command[1:]])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2 and captured.out == "" and len(lines) == 1, captured.err
        assert lines[0] == (f"jrt eval {command[0]}: error: --model {run} has {reason}; this reads text: "
                            f"give a model trained on text, or evaluate a synthetic-task run with jrt eval recall "
                            f"--model {run}")
    code = cli.main(["eval", "recall", "--model", str(run), "--task", "set_disjointness", "--examples", "4", "--json",
                     "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and 0 <= json.loads(captured.out)["accuracy"] <= 1, captured.err
