"""Bad input and the command line: every missing / unexpected / mis-shaped key named at once, truncated files,
unknown architectures, clear non-zero exits, and nothing left behind when a conversion fails."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from jrt_jax import from_pretrained, save_pretrained  # noqa: E402
from jrt_jax.convert import ConversionError, KeyMismatchError, cli  # noqa: E402
from jrt_jax.convert import export as export_mod  # noqa: E402
from tests import convert_helpers as ch  # noqa: E402

_one_torch_thread = pytest.fixture(scope="module", autouse=True)(ch.torch_single_thread)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    ref = ch.reference_model("jrt", seed=21)
    return ch.save_release(ref, tmp_path_factory.mktemp("release"), ch.release_config("jrt"))


def _edit_bin(src, dst, edit):
    sd = torch.load(src / "pytorch_model.bin", weights_only=True)
    edit(sd)
    dst.mkdir(parents=True, exist_ok=True)
    torch.save(sd, dst / "pytorch_model.bin")
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_release_key_problems_are_all_named_at_once(release, tmp_path):
    def edit(sd):
        del sd["model.transformer.layers.1.mixer.proj_k_enc.weight"]
        del sd["model.transformer.ln_f.weight"]
        sd["model.transformer.layers.0.mixer.extra.weight"] = torch.zeros(3)
        sd["model.transformer.layers.9.norm1.weight"] = torch.zeros(64)
        sd["model.transformer.layers.3.mlp.fc2.weight"] = torch.zeros(64, 95)
        sd["model.transformer.layers.2.mixer.Wqkv.weight"] = torch.zeros(190, 64)
        sd["model.step"] = 7  # not a tensor

    bad = _edit_bin(release, tmp_path / "bad", edit)
    with pytest.raises(KeyMismatchError) as e:
        from_pretrained(bad)
    err = e.value
    assert err.missing == ["transformer.layers.1.mixer.proj_k_enc.weight", "transformer.ln_f.weight"]
    assert err.unexpected == ["step (not a tensor)", "transformer.layers.0.mixer.extra.weight",
                              "transformer.layers.9.norm1.weight"]
    assert [m[0] for m in err.mismatched] == ["transformer.layers.2.mixer.Wqkv.weight",
                                              "transformer.layers.3.mlp.fc2.weight"]
    msg = str(err)
    assert "2 missing, 3 unexpected, 2 mis-shaped" in msg
    assert "transformer.layers.3.mlp.fc2.weight: (64, 95) vs (64, 96)" in msg
    assert "'model.' stripped" in msg  # how release keys were cleaned, to make the names traceable


def test_llama_key_problems_are_all_named_at_once(tmp_path):
    hf = ch.tiny_hf_llama(seed=1)
    sd = dict(hf.state_dict())
    del sd["lm_head.weight"]
    sd["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(32, 64)
    sd["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    (tmp_path / "m").mkdir()
    torch.save(sd, tmp_path / "m" / "pytorch_model.bin")
    (tmp_path / "m" / "config.json").write_text(json.dumps(hf.config.to_dict()))
    with pytest.raises(KeyMismatchError) as e:
        from_pretrained(tmp_path / "m")
    assert e.value.missing == ["lm_head.weight"]
    assert e.value.unexpected == ["model.layers.0.self_attn.q_proj.bias"]
    assert e.value.mismatched == [("model.layers.0.self_attn.q_proj.weight", (32, 64), (64, 64))]


def test_truncated_files_are_refused(release, tmp_path):
    # torch zip cut short: the archive's directory is gone
    data = (release / "pytorch_model.bin").read_bytes()
    cut = tmp_path / "bin"
    cut.mkdir()
    (cut / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    (cut / "config.json").write_text((release / "config.json").read_text())
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        from_pretrained(cut)
    # safetensors cut short: named tensors lie past the end
    model = from_pretrained(release)
    save_pretrained(model, tmp_path / "st")
    data = (tmp_path / "st" / "model.safetensors").read_bytes()
    (tmp_path / "st" / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ConversionError, match=r"truncated safetensors file: \d+ bytes, the header needs \d+"):
        from_pretrained(tmp_path / "st")
    (tmp_path / "st" / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(ConversionError, match="no header"):
        from_pretrained(tmp_path / "st")


def test_sharded_index_with_a_missing_shard(tmp_path):
    hf = ch.tiny_hf_llama(seed=2)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    gone = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / gone).unlink()
    with pytest.raises(ConversionError, match=f"shard file\\(s\\) missing next to the index: \\['{gone}'\\]"):
        from_pretrained(tmp_path)


def test_unknown_architecture_and_missing_things(release, tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (tmp_path / "bert" / "pytorch_model.bin").write_bytes((release / "pytorch_model.bin").read_bytes())
    with pytest.raises(ConversionError, match=r"unknown architecture \(model_type='bert'.*Supported: Hugging Face "
                                              r"Llama"):
        from_pretrained(tmp_path / "bert")
    with pytest.raises(ConversionError, match="does not exist"):
        from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no weights found"):
        from_pretrained(tmp_path / "empty")
    with pytest.raises(ConversionError, match="unknown preset 'jrt-9b'"):
        from_pretrained(release, preset="jrt-9b")
    with pytest.raises(ConversionError, match="dtype must be one of"):
        from_pretrained(release, dtype="float64")


def test_pickles_with_arbitrary_objects_are_refused(tmp_path):
    import collections

    (tmp_path / "x").mkdir()
    torch.save({"model.a": torch.zeros(2), "opt": collections.Counter(a=1)}, tmp_path / "x" / "pytorch_model.bin")
    (tmp_path / "x" / "config.json").write_text(json.dumps(ch.release_config("jrt")))
    with pytest.raises(ConversionError, match="refers to collections.Counter"):
        from_pretrained(tmp_path / "x")


# --- command line -----------------------------------------------------------------------------------------------


def test_cli_converts_and_round_trips(release, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main([str(release), str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "converted" in stdout and "hazy" in stdout and "model.safetensors" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    ch.assert_bit_identical(ch.params_of(from_pretrained(release)), ch.params_of(from_pretrained(out)))
    # an existing non-empty destination needs --overwrite (bad input: exit status 2); with it, files are replaced
    assert cli.main([str(release), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli.main([str(release), str(out), "--format", "torch", "--overwrite"]) == 2  # stale safetensors
    assert "model.safetensors" in capsys.readouterr().err
    assert cli.main([str(release), str(out), "--dtype", "bfloat16", "--overwrite"]) == 0
    assert from_pretrained(out).config.param_dtype == "bfloat16"


def test_cli_errors_exit_nonzero_and_write_nothing(release, tmp_path, capsys):
    def edit(sd):
        del sd["model.transformer.ln_f.weight"]

    bad = _edit_bin(release, tmp_path / "bad", edit)
    out = tmp_path / "out"
    assert cli.main([str(bad), str(out)]) == 2  # bad input: every error of this command is one line, status 2
    err = capsys.readouterr().err
    assert err.startswith("jrt convert: error:") and err.count("\n") == 1
    assert "(1 missing, 0 unexpected, 0 mis-shaped): missing transformer.ln_f.weight" in err
    assert not out.exists()
    assert cli.main([str(tmp_path / "missing"), str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main([str(release), str(out), "--dtype", "int8"]) == 2  # argparse: bad choice
    err = capsys.readouterr().err
    assert err.startswith("jrt convert: error: argument --dtype: invalid choice: 'int8'") and err.count("\n") == 1
    assert not out.exists()


def test_failure_while_writing_leaves_nothing_behind(release, tmp_path, monkeypatch):
    model = from_pretrained(release)
    real = export_mod.write_safetensors

    def half_then_fail(path, plans, metadata=None):
        real(path, plans[:3], metadata)  # a partial file really exists at this point
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(export_mod, "write_safetensors", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        save_pretrained(model, tmp_path / "new")
    assert not (tmp_path / "new").exists()  # created by us → removed with everything in it
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.json").write_text("old")
    with pytest.raises(OSError, match="simulated"):
        save_pretrained(model, existing, overwrite=True)
    assert sorted(p.name for p in existing.iterdir()) == ["config.json"]  # untouched, no temp files
    assert (existing / "config.json").read_text() == "old"


def test_jrt_dispatcher_runs_convert(release, tmp_path):
    train_cli = pytest.importorskip("train.cli")
    assert train_cli.main(["convert", str(release), str(tmp_path / "o"), "--format", "torch"]) == 0
    assert (tmp_path / "o" / "pytorch_model.bin").is_file()
    assert train_cli.main(["convert", str(tmp_path / "nope"), str(tmp_path / "p")]) == 2
    assert not (tmp_path / "p").exists()


def test_export_needs_values_and_a_known_model(tmp_path):
    from jrt_jax.models import JRTConfig, abstract_model

    with pytest.raises(ConversionError, match="abstract"):
        save_pretrained(abstract_model(JRTConfig.preset("jrt-micro")), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConversionError, match="needs a JRTLM or LlamaLM"):
        save_pretrained(object(), tmp_path / "b")
    with pytest.raises(ConversionError, match="format must be one of"):
        save_pretrained(object(), tmp_path / "c", format="gguf")


# --- temporary files: SIGTERM and killed conversions ------------------------------------------------------------


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sigterm_during_conversion_removes_the_partial_files(release, tmp_path, monkeypatch, capsys):
    import os
    import signal
    import time

    real = export_mod.write_safetensors
    seen = []

    def write_then_sigterm(path, plans, metadata=None):
        real(path, plans[:3], metadata)  # a partial temporary file exists now
        seen.append(sorted(p.name for p in path.parent.iterdir()))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM did not stop the conversion")

    monkeypatch.setattr(export_mod, "write_safetensors", write_then_sigterm)
    out = tmp_path / "out"
    assert cli.main([str(release), str(out)]) == 143
    assert seen and seen[0][0].startswith(".model.safetensors.") and seen[0][0].endswith(".tmp")
    assert not out.exists()  # created by the conversion → removed with its temporary file
    err = capsys.readouterr().err.strip()
    assert err == "jrt convert: terminated by SIGTERM; partial output removed"
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.json").write_text("old")
    assert cli.main([str(release), str(existing), "--overwrite"]) == 143
    assert sorted(p.name for p in existing.iterdir()) == ["config.json"]  # no temporary file left
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_a_killed_conversions_temp_files_are_removed_by_the_next_run(release, tmp_path, capsys):
    import os
    import time

    from jrt_jax.convert.atomic import remove_stale_temp_files, temp_name

    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".model.safetensors.{_dead_pid()}-0123abcd.tmp"  # what kill -9 left (pid gone)
    dead.write_bytes(b"\0" * (1 << 20))
    legacy = out / ".model.safetensors.89abcdef.tmp"  # the older naming, without a pid, an hour old
    legacy.write_bytes(b"\0" * 1000)
    old = time.time() - 3600
    os.utime(legacy, (old, old))
    assert cli.main([str(release), str(out)]) == 0, capsys.readouterr().err  # only stale files: "empty"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    # A temporary file of a live writer, or a fresh one of the older naming, is kept.
    live = out / temp_name("model.safetensors")
    live.write_bytes(b"x")
    fresh = out / ".config.json.fedcba98.tmp"
    fresh.write_bytes(b"x")
    assert remove_stale_temp_files(out) == []
    assert live.exists() and fresh.exists()


def test_a_hub_id_says_jrt_jax_reads_local_folders(tmp_path, monkeypatch):
    import jrt_jax
    from jrt_jax.convert.errors import ConversionError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConversionError, match=r"looks like a Hugging Face hub id.*huggingface-cli download "
                                              r"HuggingFaceTB/SmolLM2-135M --local-dir DIR"):
        jrt_jax.from_pretrained("HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(ConversionError) as missing:
        jrt_jax.from_pretrained(tmp_path / "no" / "such")
    assert "hub id" not in str(missing.value) and "does not exist" in str(missing.value)
