"""`jrt reproduce NAME --quick`: each study's scaled-down variant end to end, and the CLI's bad-input errors.

Each quick variant runs once (a module-scoped fixture) through `train.reproduce.cli.main` into a temporary
directory; the tests then read what it wrote. The quick variants train for 20 steps, so their accuracies are near
chance and no claim's direction is asserted from them: the tests check the pipeline (files, tables, numbers that
follow from the shapes alone, e.g. parameter counts and state bytes). The verdict logic of the full
set-disjointness and MQAR variants is checked on stand-in accuracies instead (no training).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import pytest

from train.reproduce import STUDIES, cli, common

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TABLE_HEADER = "| claim | paper | ours | reproduced? |"


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """name → (exit code, stdout, DIR/NAME, stderr) of `jrt reproduce NAME --quick --out DIR`, each study run
    once per module."""
    done: dict[str, tuple] = {}

    def get(name):
        if name not in done:
            out = tmp_path_factory.mktemp("reproduce")
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = cli.main([name, "--quick", "--out", str(out)])
            done[name] = (code, stdout.getvalue(), out / name, stderr.getvalue())
        return done[name]

    return get


def _files(quick, name):
    code, stdout, folder, stderr = quick(name)
    assert code == 0, stderr[-2000:]
    record = json.loads((folder / "results.json").read_text())
    report = (folder / "report.md").read_text()
    return stdout, folder, record, report


# The fast tier runs the quickest study (prefill-speed, ~30 s); the others train and are in the slow tier.
@pytest.mark.parametrize("name", [n if n == "prefill-speed" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in STUDIES])
def test_quick_variant_writes_results_report_and_plot(quick, name):
    stdout, folder, record, report = _files(quick, name)
    # stdout: the report's path and the claims table
    assert f"report: {folder / 'report.md'}" in stdout
    assert TABLE_HEADER in stdout
    # results.json: every claim, the command, the wall time, the machine
    assert record["study"] == name and record["variant"] == "quick"
    assert record["command"] == f"jrt reproduce {name} --quick --out {folder.parent}"
    assert record["wall_time_s"] > 0
    assert {"cpu", "cores", "jax", "date"} <= set(record["machine"])
    assert len(record["claims"]) >= 2
    # report.md: the table with one row per claim, the command, wall time and machine lines
    assert TABLE_HEADER in report
    for claim in record["claims"]:
        row = f"| {claim['claim']} | {claim['paper']} | {claim['ours']} | {claim['reproduced']} |"
        assert row.replace("\\|", "|") in report.replace("\\|", "|")
    assert f"- command: `{record['command']}`" in report
    assert "- wall time:" in report and f"{record['machine']['jax']}" in report
    # the plots exist, are PNGs, and the report links them
    assert record["plots"], "no plot written"
    for plot in record["plots"]:
        assert (folder / plot).read_bytes()[:8] == PNG_MAGIC
        assert f"]({plot})" in report


@pytest.mark.slow
def test_set_disjointness_quick_numbers(quick):
    """Per (family, F) one sweep of seeds x lrs, every replica scored per order on the sweep's own held-out
    examples (the per-pair hits add up to its pooled eval_accuracy), sizes that follow from the shapes."""
    from train.reproduce import set_disjointness as sd

    _, _, record, report = _files(quick, "set-disjointness")
    res = record["results"]
    seeds, lrs, fs = res["seeds"], sd.QUICK.lrs, sd.QUICK.feature_dims
    assert res["scale"] == "quick" and len(seeds) == 2
    rows = {(r["family"], r["feature_dim"]): r for r in res["rows"]}
    assert set(rows) == {(fam, f) for fam in ("causal", "non-causal") for f in fs}
    for r in rows.values():
        assert {(run["seed"], run["lr"]) for run in r["runs"]} == {(s, lr) for s in seeds for lr in lrs}
        assert sum(r["pair_examples"]) == sd.QUICK.eval_examples and all(r["pair_examples"])
        for run in r["runs"]:  # 20 steps at these lrs do not diverge
            pooled = sum(p * n for p, n in zip(run["per_pair"], r["pair_examples"])) / sum(r["pair_examples"])
            assert pooled == pytest.approx(run["eval_accuracy"], abs=1e-6)
            assert run["gap"] == pytest.approx(run["short_to_long"] - run["long_to_short"])
        best = r["by_lr"][f"{r['best_lr']:g}"]
        assert r["gap"] == best["gap"] and len(r["gap"]["per_seed"]) == len(seeds)
        assert r["accuracy"]["mean"] == max(e["eval_accuracy"]["mean"] for e in r["by_lr"].values())
    for f in fs:  # JRT-RNN adds the encoder projections to Based's shape; the decoding state is the same size
        based, jrt = rows["causal", f], rows["non-causal", f]
        assert based["params"] < jrt["params"] < 1.15 * based["params"]
        assert based["state_bytes"] == jrt["state_bytes"]
    assert all(c["reproduced"] == "n/a (quick)" for c in record["claims"])
    assert "set_disjointness_gap_vs_state.png" in record["plots"]
    assert "| family | F | (4, 16) | (16, 4) |" in report


@pytest.mark.slow
def test_mqar_quick_results_shape(quick):
    """Per configuration one sweep of seeds x lrs: every (lr, seed) accuracy, the best lr by the mean over seeds,
    and state bytes that follow from the shapes (growing with F; Based and JRT-RNN equal at equal F)."""
    from train.reproduce import mqar

    _, _, record, report = _files(quick, "mqar")
    res = record["results"]
    seeds, lrs = res["seeds"], mqar.QUICK.lrs
    assert len(seeds) == 2
    rows = {(r["family"], r["feature_dim"]): r for r in res["rows"]}
    fs = mqar.QUICK.feature_dims
    assert set(rows) == {(fam, f) for fam in ("Based", "JRT-RNN") for f in fs} | {("attention", None)}
    for r in rows.values():
        assert len(r["runs"]) == len(seeds) * len(lrs)
        assert {(run["seed"], run["lr"]) for run in r["runs"]} == {(s, lr) for s in seeds for lr in lrs}
        assert set(r["by_lr"]) == {f"{lr:g}" for lr in lrs}
        for e in r["by_lr"].values():
            assert len(e["accuracies"]) == len(seeds)
            assert all(0.0 <= a <= 1.0 for a in e["accuracies"])  # 30 steps at these lrs do not diverge
            assert e["mean"] == pytest.approx(sum(e["accuracies"]) / len(seeds))
            assert e["min"] <= e["mean"] <= e["max"]
        means = {lr: r["by_lr"][f"{lr:g}"]["mean"] for lr in lrs}
        assert r["best_lr"] in lrs and means[r["best_lr"]] == max(means.values())
        assert r["accuracy"] == means[r["best_lr"]]
        assert r["accuracies"] == r["by_lr"][f"{r['best_lr']:g}"]["accuracies"]
    # one linear-attention state of Phi = 1 + F + F(F+1)/2 features x (d 64 values + 1 normaliser) floats, plus the
    # two BaseConv tails (2 x 2 x 64 floats); attention: the KV cache of 32 tokens x d 64 (+ the tails, a length)
    for f in fs:
        phi = 1 + f + f * (f + 1) // 2
        assert rows["Based", f]["state_bytes"] == rows["JRT-RNN", f]["state_bytes"] == 4 * (phi * 65 + 256)
    # the full variant's sizes (shapes only, no training): state bytes strictly increasing with F, equal per F
    sizes = {(c["family"], c["feature_dim"]): common.model_size(mqar.sweep_overrides(c, mqar.FULL, seeds), 32)
             for c in mqar.configs(mqar.FULL)}
    for fam in ("Based", "JRT-RNN"):
        state = [sizes[fam, f][1] for f in mqar.FULL.feature_dims]
        assert state == sorted(set(state))
    assert all(sizes["Based", f][1] == sizes["JRT-RNN", f][1] for f in mqar.FULL.feature_dims)
    assert sizes["Based", 4] == (rows["Based", 4]["params"], rows["Based", 4]["state_bytes"])
    kv = 2 * 32 * 64 * 4
    assert kv + 1024 <= rows["attention", None]["state_bytes"] < kv + 1024 + 64
    assert [c["F"] for c in res["comparisons"]] == list(fs)
    assert all(c["reproduced"] == "n/a (quick)" for c in record["claims"])
    assert "| Based | F=4 |" in report and "| attention | KV cache |" in report
    assert "only (the claim needs two state sizes)" in record["claims"][1]["ours"]  # the full variant has three F


@pytest.mark.slow
def test_jrt_prompt_quick_has_both_protocols(quick):
    """Per model a sweep trained read once and one trained read twice; every replica scored on the same held-out
    examples in both formats (in its training format equal to the sweep's own evaluation); gains per seed."""
    import numpy as np

    from train.config import load_config
    from train.data.device import batch_key, device_task, make_batch
    from train.reproduce import jrt_prompt as jp

    _, _, record, report = _files(quick, "jrt-prompt")
    res = record["results"]
    rows = res["rows"]
    assert [r["label"] for r in rows] == ["Based F=4", "attention"]
    for r in rows:
        for fmt in jp.FORMATS:
            runs = r["runs"][fmt]
            assert {(x["seed"], x["lr"]) for x in runs} == {(0, lr) for lr in jp.QUICK.lrs}
            for x in runs:
                assert 0.0 <= x["read_once"] <= 1.0 and 0.0 <= x["read_twice"] <= 1.0
                assert x["read_" + fmt] == pytest.approx(x["sweep_eval_accuracy"], abs=1e-6)
        (s,) = r["per_seed"]
        assert s["gain_zero_shot"] == pytest.approx(s["read_twice_zero_shot"] - s["read_once"])
        assert s["gain_trained"] == pytest.approx(s["read_twice_trained"] - s["read_once"])
        assert r["stats"]["gain_trained"]["mean"] == pytest.approx(s["gain_trained"])
    assert res["real_text"]["status"] == "not measured"
    assert "SmolLM2" in report and "trained format" in report and "| Based F=4 |" in report
    assert [c["reproduced"] for c in record["claims"]] == ["n/a (quick)"] * 2 + ["reported (no claim)",
                                                                                  "not measured"]
    # the two scored formats hold the same examples: read twice = read once with the prefix copied in front
    m = jp.prefix_len()
    for fmt in jp.FORMATS:
        cfg = load_config(None, jp.sweep_overrides(jp.configs(jp.QUICK)[0], fmt, jp.QUICK, [0]))
        task = device_task(cfg.data)
        formats = jp.formats_of(task)
        assert formats[fmt] == task and formats["twice"].enc_len == 2 * m
        once, twice = (make_batch(batch_key(0, 1, 3), formats[f]) for f in jp.FORMATS)
        assert once["tokens"].shape == (jp.QUICK.batch_size, jp.TASK["seq_len"])
        np.testing.assert_array_equal(twice["tokens"][:, m:], once["tokens"])
        np.testing.assert_array_equal(twice["tokens"][:, :m], once["tokens"][:, :m])
        np.testing.assert_array_equal(twice["labels"][:, m:], once["labels"])
        assert (np.asarray(twice["labels"][:, :m]) == -1).all()


def test_jrt_prompt_gains_and_verdicts_follow_the_scores(tmp_path, monkeypatch):
    """The full variant's logic on stand-in scores (no training): the best lr of a sweep by its training format
    (a diverged replica's lr skipped), gains per seed, a gain judged against the std of the per-seed gains."""
    import dataclasses

    from train.reproduce import jrt_prompt as jp

    lo, hi = jp.FULL.lrs[0], jp.FULL.lrs[-1]
    scores = {  # (label, trained format) -> {lr: [(read once, read twice) of seeds 0, 1, 2]}
        ("Based F=2", "once"): {hi: [(0.5, 0.49), (0.6, 0.61), (0.7, 0.70)],  # zero-shot ±1: within the spread
                                lo: [(0.3, 0.99), (0.3, 0.99), (0.3, 0.99)]},  # best lr by read once, not twice
        ("Based F=2", "twice"): {hi: [(0.1, 0.7), (0.1, 0.8), (0.1, 0.9)],  # +20 pts each: yes
                                 lo: [(0.1, 0.5), (0.1, 0.5), (0.1, 0.5)]},
        ("Based F=4", "once"): {lo: [(0.9, 0.80), (0.9, 0.82), (0.9, 0.84)],  # -8 ± 2 pts: no
                                hi: [(0.8, 0.8), (0.8, 0.8), (0.8, 0.8)]},
        ("Based F=4", "twice"): {lo: [(0.5, 0.95), (0.5, 0.85), (0.5, 0.99)],  # +3 ± 7 pts: within the spread
                                 hi: [(0.5, 1.0), (None, None), (0.5, 1.0)]},  # seed 1 diverged
        ("attention", "once"): {lr: [(1.0, 1.0)] * 3 for lr in (lo, hi)},
        ("attention", "twice"): {lr: [(1.0, 1.0)] * 3 for lr in (lo, hi)},
    }

    def fake_measure(overrides, eval_examples, what, verbose):
        args = dict(o.split("=", 1) for o in overrides)
        fmt = "twice" if args["data.read_twice"] == "true" else "once"
        table = scores[what.rsplit(" read ", 1)[0], fmt]
        runs = [{"seed": s, "lr": lr, "diverged_at": 7 if once is None else None, "loss": 1.0,
                 "sweep_eval_accuracy": None, "read_once": 0.9 if once is None else once,
                 "read_twice": 0.99 if twice is None else twice}
                for s in range(3) for lr in (lo, hi) for once, twice in [table[lr][s]]]
        return {"runs": runs, "params": 1000, "wall_s": 1.0, "train_s": 1.0, "replica_steps_per_s": 10.0, "log": ""}

    monkeypatch.setattr(jp, "measure", fake_measure)
    monkeypatch.setattr(common, "matplotlib_pyplot", lambda: None)
    monkeypatch.setattr(jp, "FULL", dataclasses.replace(jp.FULL, feature_dims=(2, 4)))
    outcome = jp.run(common.Context(quick=False, seeds=None, out_dir=tmp_path, log=lambda line: None))
    rows = {r["label"]: r for r in outcome.results["rows"]}
    assert rows["Based F=2"]["best_lr"] == {"once": hi, "twice": hi}
    assert rows["Based F=4"]["best_lr"] == {"once": lo, "twice": lo}
    assert [s["gain_trained"] for s in rows["Based F=2"]["per_seed"]] == pytest.approx([0.2, 0.2, 0.2])
    assert rows["Based F=4"]["stats"]["gain_zero_shot"]["mean"] == pytest.approx(-0.08)
    assert rows["Based F=4"]["stats"]["gain_zero_shot"]["std"] == pytest.approx(0.02)
    assert [c.reproduced for c in outcome.claims[:2]] == [
        "F=2: within the spread; F=4: no",
        "F=2: yes; F=4: within the spread (largest gain +20.0 pts vs the paper's +11.0)"]
    assert "Based F=4 trained read twice seed 1 lr " in " ".join(outcome.notes)
    assert "| Based F=2 | 1,000 |" in outcome.tables[0] and outcome.plots == []
    with pytest.raises(ValueError, match="fmt='thrice'"):
        jp.sweep_overrides(jp.configs(jp.FULL)[0], "thrice", jp.FULL, [0])

    for fmt in jp.FORMATS:  # on the plateau before MQAR is learned no gain is judged
        scores["Based F=2", fmt] = {lr: [(0.1, 0.12)] * 3 for lr in (lo, hi)}
    outcome = jp.run(common.Context(quick=False, seeds=None, out_dir=tmp_path, log=lambda line: None))
    assert outcome.claims[0].reproduced.startswith("F=2: not measurable: not learned (read once 10.0 % < 50 %)")


@pytest.mark.slow
def test_pi_zero_shot_quick_prefixes_are_single_windows(quick):
    """The study reads perplexity at context C off the first C positions of one forward; for these RoPE settings
    that must equal `jrt_jax.evals.perplexity` on a single window of C tokens."""
    from jrt_jax.evals import loading
    from jrt_jax.evals.perplexity import perplexity
    from train.reproduce import pi_zero_shot as pz

    _, _, record, report = _files(quick, "pi-zero-shot")
    at = record["results"]["ppl_at_context"]
    assert list(at) == list(pz.scalings(pz.QUICK.trained))
    text, _ = loading.read_texts([pz.QUICK.text])
    for label in ("none (extrapolation)", "linear PI, s = 2"):
        model, tok = pz.load(pz.QUICK, pz.scalings(pz.QUICK.trained)[label])
        ids = tok.encode(text)
        for c in (64, 256):
            single = perplexity(model, ids[: c + 1], context=c + 1).perplexity
            assert at[label][str(c)] == pytest.approx(single, rel=1e-5)
    assert len(record["results"]["ppl_by_bin"]["YaRN, factor 2"]) == 256 // pz.QUICK.bin


@pytest.mark.slow
def test_pi_finetune_quick_evaluates_every_method_and_budget(quick):
    """Four methods; the fine-tuned ones at every budget, each read back from its run's checkpoint; perplexity by
    128-byte bin over 4L and passkey accuracy at L, 2L, 3L, 4L for each."""
    from train.reproduce import pi_finetune as pf

    _, _, record, report = _files(quick, "pi-finetune")
    methods = record["results"]["methods"]
    budgets = [str(s) for s in pf.QUICK.finetune_steps]
    assert {m: list(r) for m, r in methods.items()} == {
        "extrapolation": ["0"], "PI zero-shot": ["0"], "PI + fine-tuning": budgets, "direct fine-tuning": budgets}
    for runs in methods.values():
        for r in runs.values():
            assert list(r["ppl_at"]) == ["256", "512", "768", "1024"] and len(r["ppl_by_bin"]) == 8
            assert list(r["passkey"]) == ["256", "512", "768", "1024"]
            assert all(0.0 <= a <= 1.0 for a in r["passkey"].values())
    # a budget's model is its own checkpoint: one step more of training changes the perplexity
    ft = methods["PI + fine-tuning"]
    assert ft["1"]["ppl_at"]["1024"] != ft["2"]["ppl_at"]["1024"]
    rows = record["results"]["passkey_rows"]["direct fine-tuning"]["2"]
    assert [r["length"] for r in rows] == [256, 512, 768, 1024]  # one trial per length in the quick variant
    assert "| (c) PI + fine-tuning | 2 |" in report


def test_pi_finetune_effective_window_and_verdicts(tmp_path):
    """The claim logic on stand-in results (no training): extrapolation retrieves only at L, PI + fine-tuning at
    every length after 200 steps, direct fine-tuning up to 2L → every claim 'yes'; swapped, the two fine-tuning
    claims turn 'no'."""
    from train.reproduce import pi_finetune as pf

    assert pf.effective_window({"256": 1.0, "512": 0.85, "768": 0.2, "1024": 1.0}) == 512
    assert pf.effective_window({"256": 0.5, "512": 1.0, "768": 1.0, "1024": 1.0}) == 0

    def r(passkey, ppl_in, ppl_past):
        bins = {f"{b}-{b + 128}": (ppl_in if b < 256 else ppl_past) for b in range(0, 1024, 128)}
        return {"passkey": dict(zip(["256", "512", "768", "1024"], passkey)), "ppl_by_bin": bins,
                "ppl_at": {str(c): ppl_in for c in (256, 512, 768, 1024)}}

    results = {"extrapolation": {"0": r([0.9, 0.1, 0.0, 0.0], 3.0, 40.0)},
               "PI zero-shot": {"0": r([0.4, 0.3, 0.2, 0.1], 4.0, 6.0)},
               "PI + fine-tuning": {"50": r([1, 0.9, 0.6, 0.3], 3.2, 3.4), "200": r([1, 1, 0.95, 0.9], 3.1, 3.2)},
               "direct fine-tuning": {"50": r([1, 0.2, 0, 0], 3.1, 9.0), "200": r([1, 0.85, 0.3, 0.1], 3.1, 5.0)}}
    sizes = pf.dataclasses.replace(pf.FULL, finetune_steps=(50, 200))
    ctx = common.Context(quick=False, seeds=None, out_dir=tmp_path, log=lambda line: None)
    out = pf.outcome(ctx, sizes, results, {})
    assert [c.reproduced for c in out.claims] == ["yes", "yes", "yes", "yes"]
    assert "200 steps: passkey window 1024" in out.claims[1].ours
    assert "200 steps: passkey window 512" in out.claims[2].ours
    swapped = dict(results, **{"PI + fine-tuning": results["direct fine-tuning"],
                               "direct fine-tuning": results["PI + fine-tuning"]})
    assert [c.reproduced for c in pf.outcome(ctx, sizes, swapped, {}).claims][1:3] == ["no", "no"]

    # No retrieval even at L after pretraining: the windows are read off perplexity (bins ≤ 1.25 × the
    # in-window 3.0), and the verdicts say so.
    assert pf.perplexity_window(r([0] * 4, 3.0, 3.7)["ppl_by_bin"], 3.0) == 1024
    assert pf.perplexity_window(r([0] * 4, 3.0, 3.8)["ppl_by_bin"], 3.0) == 256
    blind = {m: {s: dict(x, passkey={n: 0.0 for n in x["passkey"]}) for s, x in runs.items()}
             for m, runs in results.items()}
    verdicts = [c.reproduced for c in pf.outcome(ctx, sizes, blind, {}).claims]
    by = " by perplexity (no passkey retrieval at L after pretraining)"
    assert verdicts == ["yes" + by, "yes" + by, "yes" + by, "yes"]  # direct: 5.0 past L, window 256 < 1024


def test_prefill_speed_quick_table(quick):
    _, _, record, report = _files(quick, "prefill-speed")
    per = record["results"]["per_length"]
    assert [p["T"] for p in per] == [128, 256]
    for p in per:
        for key in ("attention_s", "pla_s", "based_s", "jrt_prompt_s"):
            assert p[key] is not None and p[key] > 0
        assert p["pla_speedup"] == pytest.approx(p["attention_s"] / p["pla_s"])
        assert p["jrt_prompt_speedup"] == pytest.approx(p["attention_s"] / p["jrt_prompt_s"])
    assert "19.2" in report and "11.9" in report
    assert "not measured (no GPU)" in report or record["machine"]["backend"] == "gpu"


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("argv, message", [
    (["no-such-study"], "unknown study 'no-such-study'"),
    (["mqar", "--jobs", "0"], "--jobs must be a positive integer"),
    (["mqar", "--seeds", "0"], "--seeds must be a positive integer"),
    (["mqar", "--seeds", "two"], "--seeds must be a positive integer"),
    ([], "give a study NAME"),
    (["mqar", "--frobnicate"], "unrecognized arguments"),
    (["set-disjointness", "--quick", "--scale", "paper"], "--scale paper: not with --quick"),
    (["jrt-prompt", "--scale", "paper"], "--scale paper: study 'jrt-prompt' has no such scale"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    code, out, err = _run(capsys, *argv, "--out", str(tmp_path))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("jrt reproduce: error: ") and message in err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "no-such-study").exists()


def test_unwritable_out_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = _run(capsys, "mqar", "--quick", "--out", str(blocker))
    assert code == 2 and err.count("\n") == 1 and "cannot create --out directory" in err


def test_jrt_command_dispatches_reproduce(capsys):
    from train import cli as jrt

    assert jrt.main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in STUDIES:
        assert name in out
    assert jrt.main(["reproduce", "nope"]) == 2
    assert "unknown study" in capsys.readouterr().err
    jrt.main(["--help"])
    out = capsys.readouterr().out
    assert "reproduce" in out and all(name in out for name in STUDIES)  # every study, pi-finetune included


def test_report_without_matplotlib_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "matplotlib_pyplot", lambda: None)
    ctx = common.Context(quick=True, seeds=None, out_dir=tmp_path / "x")
    assert common.line_plot(tmp_path / "p.png", [{"label": "a", "x": [1], "y": [1]}], xlabel="x", ylabel="y",
                            title="t") is None
    outcome = common.Outcome(results={"value": float("nan"), "n": 3}, claims=[common.Claim("c", "p", "o", "no")])
    machine = {"cpu": "cpu", "cores": 2, "backend": "cpu", "devices": "1 x cpu", "jax": "0", "python": "3",
               "date": "today"}
    results, report = common.write_outputs(ctx, name="x", title="T", command="jrt reproduce x", wall_s=1.0,
                                           outcome=outcome, machine=machine)
    text = report.read_text()
    assert common.PLOT_UNAVAILABLE in text and "| c | p | o | no |" in text
    assert json.loads(results.read_text())["results"] == {"value": None, "n": 3}  # strict JSON: NaN → null


def _fake_sd(monkeypatch, tmp_path, accuracy, seeds=None):
    """The full set-disjointness variant's rows and claims on stand-in accuracies: `accuracy[(family, F)]` maps
    (seed, lr) to (short→long, long→short) accuracy, or None for a diverged replica (no training)."""
    import re

    from train.reproduce import set_disjointness as sd

    def fake_sweep(overrides, log=None):
        args = dict(o.split("=", 1) for o in overrides)
        family = {v: k for k, v in sd.FAMILIES.items()}[args["model.preset"]]
        f = int(re.search(r"feature_dim: (\d+)", args["model.overrides"]).group(1))
        runs, hits = [], []
        for s in (int(x) for x in args["sweep.seeds"].strip("[]").split(",")):
            for lr in (float(x) for x in args["sweep.lr"].strip("[]").split(",")):
                acc = accuracy[family, f](s, lr)
                s2l, l2s = acc if acc is not None else (0.0, 0.0)
                hits.append([round(500 * s2l), round(500 * l2s)])
                runs.append({"seed": s, "lr": lr, "eval_accuracy": (s2l + l2s) / 2, "eval_loss": 1.0, "loss": 1.0,
                             "diverged_at": 7 if acc is None else None})
        return {"runs": runs, "pair_correct": hits, "pair_examples": [500, 500], "wall_s": 1.0,
                "replica_steps_per_s": 10.0}

    monkeypatch.setattr(sd, "run_sweep", fake_sweep)
    monkeypatch.setattr(common, "matplotlib_pyplot", lambda: None)  # the plots are the quick test's
    monkeypatch.setattr(common, "model_size", lambda overrides, seq_len: (
        1000, 1000 * int(re.search(r"feature_dim: (\d+)", overrides[1]).group(1))))
    ctx = common.Context(quick=False, seeds=seeds, out_dir=tmp_path, log=lambda line: None)
    return sd.run(ctx)


def test_set_disjointness_verdicts_follow_the_accuracies(tmp_path, monkeypatch):
    """The full variant's claim logic on stand-in accuracies: per (family, F) the best lr by the mean pooled
    accuracy, the gap short→long − long→short over seeds; the causal gap growing as F shrinks beyond the spread,
    the non-causal gap near 0, and the two compared at the smallest F."""
    from train.reproduce import set_disjointness as sd

    f_small, f_mid, f_big = sd.FULL.feature_dims

    def causal_gap(gaps):  # short→long 0.95; long→short 0.95 - gap[seed]; the lower lr 0.2 worse in both orders
        return lambda s, lr: (0.95 - (0.2 if lr < sd.FULL.lrs[-1] else 0.0),
                              0.95 - gaps[s] - (0.2 if lr < sd.FULL.lrs[-1] else 0.0))

    acc = {("causal", f_small): causal_gap([0.40, 0.45, 0.50]), ("causal", f_mid): causal_gap([0.2, 0.2, 0.2]),
           ("causal", f_big): causal_gap([0.02, 0.0, 0.04]),
           **{("non-causal", f): causal_gap([0.02, -0.02, 0.0]) for f in sd.FULL.feature_dims}}
    outcome = _fake_sd(monkeypatch, tmp_path, acc)
    rows = {(r["family"], r["feature_dim"]): r for r in outcome.results["rows"]}
    assert all(r["best_lr"] == sd.FULL.lrs[-1] for r in rows.values())
    small = rows["causal", f_small]
    assert small["gap"]["per_seed"] == pytest.approx([0.40, 0.45, 0.50], abs=2e-3)
    assert (small["gap"]["mean"], small["gap"]["std"]) == pytest.approx((0.45, 0.05), abs=2e-3)
    assert small["short_to_long"]["mean"] == pytest.approx(0.95, abs=2e-3)
    assert small["long_to_short"]["mean"] == pytest.approx(0.50, abs=2e-3)
    assert [c.reproduced for c in outcome.claims] == ["yes", "yes", "yes"]
    assert f"| Based (causal) | {f_small} | 1,000 | {1000 * f_small:,} |" in outcome.tables[0]
    assert "| +45.0 ± 5.0 pts | +40.0 – +50.0 | +40.0 / +45.0 / +50.0 |" in outcome.tables[0]

    # the causal gap flat in F; the non-causal gap as large as the causal one at the smallest F, small elsewhere
    acc[("causal", f_small)] = causal_gap([0.02, 0.0, 0.04])
    acc[("causal", f_mid)] = causal_gap([0.02, 0.0, 0.04])
    acc[("non-causal", f_small)] = causal_gap([0.01, 0.03, 0.02])
    acc[("non-causal", f_big)] = causal_gap([0.30, 0.30, 0.31])
    outcome = _fake_sd(monkeypatch, tmp_path, acc)
    assert [c.reproduced for c in outcome.claims] == ["no", f"partly (F={f_small}, {f_mid})", "within the spread"]

    # every model on the plateau (below sd.learned_at): nothing judged; a diverged lr is not the best one
    flat = lambda s, lr: None if lr == sd.FULL.lrs[-1] and s == 0 else (0.3, 0.2)
    outcome = _fake_sd(monkeypatch, tmp_path, {k: flat for k in acc})
    assert all(c.reproduced.startswith("not measurable") for c in outcome.claims)
    assert all(r["best_lr"] == sd.FULL.lrs[0] for r in outcome.results["rows"])


def test_set_disjointness_size_pair_index_reads_the_markers():
    """Each paper-format row's (|A|, |B|) recovered from its markers (read after the read-twice copy)."""
    import numpy as np

    from train.data.device import FIRST_CONTENT, DeviceTask, batch_key, make_batch, size_pair_index

    task = DeviceTask(kind="set_disjointness", seq_len=70, batch_size=32, universe=128, set_format="paper",
                      size_pairs=((4, 16), (16, 4), (8, 8)), read_twice=True)
    tokens = np.asarray(make_batch(batch_key(0, 1, 3), task)["tokens"])
    index = np.asarray(size_pair_index(tokens, task))
    assert set(index) == {0, 1, 2}
    prefix = tokens[:, task.inner_enc_len:2 * task.inner_enc_len]  # the example after its prefix copy
    marks = [np.flatnonzero(row == 1)[0] for row in prefix], [np.flatnonzero(row == 2)[0] for row in prefix]
    sizes = np.asarray(task.size_pairs)[index]
    assert (np.subtract(marks[1], marks[0]) - 1 == sizes[:, 0]).all()
    assert ((prefix >= FIRST_CONTENT).sum(1) == sizes.sum(1)).all()
    with pytest.raises(ValueError, match="set_format='paper'"):
        size_pair_index(tokens, DeviceTask(kind="mqar", seq_len=32, batch_size=4))


def _stand_in_sweep(accuracy, families, asked=None):
    """A `common.run_sweep` stand-in (no training): replica (seed, lr) of the configuration (family, F) scores
    `accuracy[(family, F)](seed, lr)`, None = diverged at step 7 (F None for attention); `families` maps presets
    to family names; the model.overrides asked for are appended to `asked`."""
    import re

    def fake_sweep(overrides, log=None):
        args = dict(o.split("=", 1) for o in overrides)
        if asked is not None:
            asked.append(args.get("model.overrides"))
        family = {v: k for k, v in families.items()}[args["model.preset"]]
        f = int(re.search(r"feature_dim: (\d+)", args.get("model.overrides", "")).group(1)) if family != "attention" \
            else None
        seeds = [int(s) for s in args["sweep.seeds"].strip("[]").split(",")]
        lrs = [float(lr) for lr in args["sweep.lr"].strip("[]").split(",")]
        runs = []
        for s in seeds:
            for lr in lrs:
                acc = accuracy[family, f](s, lr)
                runs.append({"seed": s, "lr": lr, "eval_accuracy": None if acc is None else acc, "eval_loss": 1.0,
                             "loss": 1.0, "diverged_at": 7 if acc is None else None})
        return {"runs": runs, "best": None, "wall_s": 1.0, "replica_steps_per_s": 10.0}

    return fake_sweep


def _fake_mqar(monkeypatch, tmp_path, accuracy, seeds=None):
    """The full MQAR variant's claims and rows on stand-in accuracies: `accuracy[(family, F)]` is a function of
    (seed, lr) (no training)."""
    from train.reproduce import mqar

    monkeypatch.setattr(common, "run_sweep", _stand_in_sweep(accuracy, mqar.FAMILIES))
    monkeypatch.setattr(mqar, "FULL", dataclasses.replace(mqar.FULL, feature_dims=(4, 8, 16)))
    monkeypatch.setattr(common, "model_size", lambda overrides, seq_len: (1000, 4096 * (1 + len(overrides[-1]))))
    ctx = common.Context(quick=False, seeds=seeds, out_dir=tmp_path, log=lambda line: None)
    return mqar.run(ctx)


def _table(values, lr_gap=0.1):
    """Stand-in accuracies per (family, F): seed s gets values[s] at lr 3e-3 and values[s] - lr_gap at 1e-3."""
    return lambda s, lr: values[s] - (lr_gap if lr < 2e-3 else 0.0)


def test_mqar_verdicts_follow_the_accuracies(tmp_path, monkeypatch):
    """The full MQAR variant's claim logic on stand-in accuracies: the best lr by the mean over seeds, attention
    best, Based's growth F=16 - F=4 against 30 points, JRT-RNN vs Based per F against the seeds' spread."""
    acc = {
        ("Based", 4): _table([0.10, 0.12, 0.14]), ("Based", 8): _table([0.70, 0.80, 0.90]),
        ("Based", 16): _table([0.88, 0.90, 0.92]),
        ("JRT-RNN", 4): _table([0.30, 0.31, 0.32]),  # +19 pts, spread 2 + 1: yes
        ("JRT-RNN", 8): _table([0.75, 0.85, 0.80]),  # +0 pts: within the spread
        ("JRT-RNN", 16): _table([0.70, 0.71, 0.72]),  # -19 pts beyond the spread: no
        ("attention", None): _table([1.0, 1.0, 0.99]),
    }
    outcome = _fake_mqar(monkeypatch, tmp_path, acc)
    rows = {(r["family"], r["feature_dim"]): r for r in outcome.results["rows"]}
    assert all(r["best_lr"] == 3e-3 for r in rows.values())
    assert rows["Based", 8]["accuracy"] == pytest.approx(0.80)
    assert rows["Based", 8]["accuracy_std"] == pytest.approx(0.1)
    assert rows["Based", 8]["by_lr"]["0.001"]["mean"] == pytest.approx(0.70)
    assert (rows["Based", 8]["accuracy_min"], rows["Based", 8]["accuracy_max"]) == (0.70, 0.90)
    verdicts = [c.reproduced for c in outcome.claims]
    assert verdicts == ["yes", "yes", "F=4: yes; F=8: within the spread; F=16: no"]
    assert "≥ 90 %: yes" in outcome.claims[0].ours
    assert [c["verdict"] for c in outcome.results["comparisons"]] == ["yes", "within the spread", "no"]
    assert "| 4 |" in outcome.tables[1] and "| +19.0 |" in outcome.tables[1]

    # attention below the best recurrent; Based flat (F=16 - F=4 = 20 pts < 30); JRT-RNN above at every F
    acc.update({("attention", None): _table([0.85, 0.85, 0.85]), ("Based", 16): _table([0.30, 0.30, 0.30]),
                ("JRT-RNN", 8): _table([0.95, 0.95, 0.95]), ("JRT-RNN", 16): _table([0.95, 0.95, 0.95])})
    acc[("Based", 4)] = _table([0.10, 0.10, 0.10])
    acc[("Based", 8)] = _table([0.20, 0.20, 0.20])
    outcome = _fake_mqar(monkeypatch, tmp_path, acc)
    assert [c.reproduced for c in outcome.claims] == ["no", "no", "yes"]
    assert "≥ 90 %: no" in outcome.claims[0].ours


def test_mqar_verdicts_wait_for_a_model_that_learned(tmp_path, monkeypatch):
    """While every model is below `mqar.LEARNED` (on the plateau before MQAR is learned) no claim is judged; with
    attention learned but every recurrent model on the plateau only the attention claim is; one seed says so."""
    plateau = {(fam, f): _table([0.14, 0.15, 0.16], 0.01) for fam in ("Based", "JRT-RNN") for f in (4, 8, 16)}
    outcome = _fake_mqar(monkeypatch, tmp_path, {**plateau, ("attention", None): _table([0.2, 0.2, 0.2], 0.01)})
    assert [c.reproduced for c in outcome.claims] == [
        "not measurable: no model learned the task (best 20.0 % < 50 %)",
        *["not measurable: no recurrent model learned the task (best 15.0 % < 50 %)"] * 2]
    outcome = _fake_mqar(monkeypatch, tmp_path, {**plateau, ("attention", None): _table([1.0, 1.0, 1.0])})
    assert outcome.claims[0].reproduced == "yes"
    assert all(c.reproduced.startswith("not measurable: no recurrent") for c in outcome.claims[1:])
    learned = {**plateau, ("Based", 16): _table([0.9, 0.9, 0.9]), ("attention", None): _table([1.0, 1.0, 1.0])}
    outcome = _fake_mqar(monkeypatch, tmp_path, learned, seeds=1)
    assert [c.reproduced for c in outcome.claims][:2] == ["yes (1 seed: no spread)"] * 2


def test_mqar_best_lr_skips_a_diverged_lr(tmp_path, monkeypatch):
    """A learning rate where a replica diverged is not the best lr while another lr finished every seed; its
    mean is over the finished seeds and the table says how many diverged."""
    fine = {(fam, f): _table([0.6, 0.6, 0.6]) for fam in ("Based", "JRT-RNN") for f in (4, 8, 16)}
    fine["Based", 8] = lambda s, lr: (None if s == 1 else 0.99) if lr > 2e-3 else 0.5
    outcome = _fake_mqar(monkeypatch, tmp_path, {**fine, ("attention", None): _table([1.0, 1.0, 1.0])})
    row = next(r for r in outcome.results["rows"] if r["family"] == "Based" and r["feature_dim"] == 8)
    assert row["best_lr"] == 1e-3 and row["accuracy"] == pytest.approx(0.5)
    assert row["by_lr"]["0.003"]["accuracies"] == [0.99, None, 0.99] and row["by_lr"]["0.003"]["diverged"] == {1: 7}
    assert "99.0 % (1 diverged)" in outcome.tables[0]
    assert "Based F=8 seed 1 lr 0.003" in " ".join(outcome.notes)


def test_run_jobs_in_worker_processes_keeps_the_order(tmp_path):
    """--jobs 2: the calls run in spawned workers and come back in the order of the jobs."""
    import math

    lines = []
    ctx = common.Context(quick=True, seeds=None, out_dir=tmp_path, log=lines.append, jobs=2)
    got = common.run_jobs(ctx, _sqrt_job, [(f"job {i}", (float(i),)) for i in range(5)])
    assert [g["value"] for g in got] == [math.sqrt(i) for i in range(5)]
    assert sorted(lines) == [f"job {i}: sqrt {i}" for i in range(5)]


def _sqrt_job(x: float) -> dict:
    import math

    return {"value": math.sqrt(x), "log": f"sqrt {x:g}"}


def test_read_twice_task_and_config(tmp_path):
    import numpy as np

    from jrt_jax.tasks import MQAR, ReadTwice, read_twice
    from train.config import load_config
    from train.data import make_task

    inner = MQAR(seq_len=48, num_pairs=12, num_queries=6, num_keys=48, num_values=48, seed=3)
    task = ReadTwice(inner)
    b, a = task.batch(7, range(3), 1), inner.batch(7, range(3), 1)
    m = inner.enc_len
    assert task.enc_len == 2 * m and task.seq_len == 48 + m and b.tokens.shape == (3, 48 + m)
    np.testing.assert_array_equal(b.tokens[:, :m], a.tokens[:, :m])
    np.testing.assert_array_equal(b.tokens[:, m:], a.tokens)
    np.testing.assert_array_equal(b.labels[:, m:], a.labels)
    assert (b.labels[:, :m] == -1).all()
    # the trainer's data.read_twice builds the same task with data.seq_len the whole row
    sizes = ["data.kind=mqar", "data.num_pairs=12", "data.num_queries=6", "data.num_keys=48", "data.num_values=48",
             "data.seed=3", "data.read_twice=true"]
    made = make_task(load_config(None, [*sizes, f"data.seq_len={48 + m}"]).data)
    np.testing.assert_array_equal(made.batch(7, range(3), 1).tokens, b.tokens)
    with pytest.raises(ValueError, match="too short for data.read_twice"):
        make_task(load_config(None, [*sizes, "data.seq_len=60"]).data)
    with pytest.raises(ValueError, match="enc_len must be in"):
        read_twice(a.tokens, a.labels, 0)


def test_a_study_stopped_by_sigterm_exits_143_not_as_bad_input(monkeypatch):
    """SIGTERM stops training with a checkpoint; the study then has no result and ends as every command does on
    SIGTERM (`jrt_jax.cli.Terminated`: exit status 143), not as a bad request (2)."""
    import train.sweep
    from jrt_jax.cli import Terminated, exit_status

    monkeypatch.setattr(train.sweep, "sweep", lambda cfg, log=None: {"stopped": "SIGTERM", "runs": []})
    with pytest.raises(Terminated, match="sweep stopped early") as exc:
        common.run_sweep(["data.kind=mqar", "steps=2"])
    assert exit_status(exc.value) == 143


def test_mqar_paper_scale_builds_its_models_and_task():
    """`jrt reproduce mqar --scale paper` (sized for one GPU, not trained here): every configuration's sweep config
    loads, its model is built (shapes only) and the task fits the model's vocabulary, at zoology's sizes."""
    from train.config import load_config
    from train.data import make_task
    from train.reproduce import mqar
    from train.trainer import build_model_config

    sizes = mqar.PAPER
    assert sizes.t["seq_len"] == 256 and sizes.t["num_pairs"] == 64
    for cfg in mqar.configs(sizes):
        overrides = mqar.sweep_overrides(cfg, sizes, [0, 1, 2])
        params, state = common.model_size(overrides, sizes.t["seq_len"])
        config = load_config(None, [*overrides, *common.TRAIN_DEFAULTS])
        task = make_task(config.data, build_model_config(config))
        assert task.vocab_needed == 8192 and params > 1_000_000 and state > 0
        assert config.steps == 4000 and config.data.batch_size == 128 and config.sweep.steps_per_scan == 100


@pytest.mark.slow
def test_mqar_depth_quick_results_shape(quick):
    """One sweep per family of the four-block layout: every (seed, lr), the best lr by the mean, and a state of
    two linear-attention layers plus four BaseConv tails — the same size for Based and JRT-RNN."""
    from train.reproduce import mqar_depth

    _, _, record, report = _files(quick, "mqar-depth")
    res = record["results"]
    seeds, lrs = res["seeds"], mqar_depth.QUICK.lrs
    rows = {r["family"]: r for r in res["rows"]}
    assert set(rows) == {"Based", "JRT-RNN"} and res["depth"] == mqar_depth.DEPTH
    for r in rows.values():
        assert {(run["seed"], run["lr"]) for run in r["runs"]} == {(s, lr) for s in seeds for lr in lrs}
        means = {lr: r["by_lr"][f"{lr:g}"]["mean"] for lr in lrs}
        assert r["best_lr"] in lrs and r["accuracy"] == means[r["best_lr"]] == max(means.values())
    phi = 1 + 2 + 3  # F = 2
    assert rows["Based"]["state_bytes"] == rows["JRT-RNN"]["state_bytes"] == 4 * (2 * phi * 65 + 4 * 2 * 64)
    assert rows["Based"]["params"] < rows["JRT-RNN"]["params"]  # the encoder projections of two layers
    assert all(c["reproduced"] == "n/a (quick)" for c in record["claims"])
    assert "| Based | F=2 |" in report and "mqar_depth_accuracy_vs_lr.png" in record["plots"]


def test_mqar_depth_verdicts_follow_the_accuracies(tmp_path, monkeypatch):
    """mqar-depth's claims on stand-in accuracies (no training): the sweeps ask for four blocks; JRT-RNN above
    Based beyond the spread, and its worst seed above Based's best; neither judged on the plateau."""
    import re

    from train.reproduce import mqar_depth

    asked, accuracy = [], {}
    monkeypatch.setattr(common, "run_sweep", _stand_in_sweep(accuracy, mqar_depth.FAMILIES, asked))
    monkeypatch.setattr(common, "model_size", lambda overrides, seq_len: (1000, 5168))
    run = lambda: mqar_depth.run(common.Context(quick=False, seeds=None, out_dir=tmp_path, log=lambda line: None))

    accuracy.update({("JRT-RNN", 2): _table([0.745, 0.752, 0.757]), ("Based", 2): _table([0.673, 0.169, 0.176])})
    outcome = run()
    assert all(re.search(r"n_layers: 4, linear_layers: \[1, 3\], feature_dim: 2", a) for a in asked)
    assert [c.reproduced for c in outcome.claims] == ["yes", "yes"]
    (c,) = outcome.results["comparisons"]
    assert c["delta"] == pytest.approx((0.745 + 0.752 + 0.757 - 0.673 - 0.169 - 0.176) / 3)
    assert "| 2 | 5,168 |" in outcome.tables[1]

    accuracy["JRT-RNN", 2] = _table([0.75, 0.74, 0.60])  # above on the mean, but a Based seed beats a JRT-RNN seed
    accuracy["Based", 2] = _table([0.62, 0.15, 0.15])
    assert [c.reproduced for c in run().claims] == ["yes", "no"]
    accuracy["JRT-RNN", 2] = _table([0.2, 0.6, 0.7])
    assert [c.reproduced for c in run().claims] == ["within the spread", "no"]
    accuracy["JRT-RNN", 2] = accuracy["Based", 2] = _table([0.15, 0.16, 0.17])
    assert all(c.reproduced.startswith("not measurable: no model learned") for c in run().claims)
