"""`jrt_jax.evals.lm_eval_adapter`: lm-eval's `--model jrt-jax` on tiny preset models (random weights), offline.

Rolling log-likelihoods through `lm_eval.simple_evaluate` equal our `perplexity` on the same ids; loglikelihood
equals `target_logprobs` summed over the continuation; generate_until stops at `until`; the two command lines
(`python -m jrt_jax.evals.lm_eval_adapter`, `jrt eval lm-eval`) run lm-eval's CLI and report errors in one line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from jrt_jax.evals import lm_eval_adapter as adapter  # noqa: E402
from jrt_jax.evals.perplexity import perplexity  # noqa: E402
from jrt_jax.evals.scoring import target_logprobs  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
TASKS = ROOT / "tests" / "data" / "lm_eval"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(ROOT)  # the task's data_files path is relative to the repository root


_LMS: dict = {}


def _lm(pretrained: str, **kw) -> adapter.JRTJaxLM:
    key = (pretrained, tuple(sorted(kw.items())))
    if key not in _LMS:
        _LMS[key] = adapter.JRTJaxLM(pretrained=pretrained, **kw)
    return _LMS[key]


def _docs() -> list[str]:
    return [json.loads(line)["text"] for line in (TASKS / "jrt_local.jsonl").read_text().splitlines()]


def _req(kind: str, args, i: int = 0) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=i)


def test_registered_alongside_lm_evals_own_models():
    from lm_eval.api.registry import get_model

    assert get_model("jrt-jax") is adapter.JRTJaxLM
    assert "hf" in lm_eval.api.registry.model_registry  # lm-eval's lazy table is still there


def test_rolling_loglikelihoods_through_simple_evaluate_equal_our_perplexity():
    from lm_eval.tasks import TaskManager

    # max_length 16: every document spans several windows (27 in all); batch 4 leaves a padding row at the end.
    result = lm_eval.simple_evaluate(
        model="jrt-jax", model_args="pretrained=llama-tiny,max_length=16", batch_size=4, tasks=["jrt_local"],
        task_manager=TaskManager(include_path=str(TASKS), include_defaults=False), log_samples=True)
    samples = result["samples"]["jrt_local"]
    docs = _docs()
    assert len(samples) == len(docs)
    lm = _lm("llama-tiny", max_length=16)
    for sample in samples:
        text = docs[sample["doc_id"]]
        ids = lm.rolling_token_ids(text)
        assert ids[0] == lm.tokenizer.eos_id and ids[1:] == lm.tokenizer.encode(text)
        ref = perplexity(lm.model, ids, context=16, stride=15)
        assert ref.tokens == len(ids) - 1  # every token of the text is scored, the first after the prefix
        np.testing.assert_allclose(sample["resps"][0][0], -ref.nll_sum, rtol=1e-5)
    metrics = result["results"]["jrt_local"]
    assert np.isfinite(metrics["word_perplexity,none"]) and metrics["byte_perplexity,none"] > 1


def _expected_pair(lm, context: str, continuation: str):
    """lm-eval's tokenization (TemplateLM / HFLM), written out."""
    tok = lm.tokenizer
    if context == "":
        return [lm.prefix_token_id], tok.encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    return ctx, whole[len(ctx):]


def _reference(lm, context: str, continuation: str, enc_len=None):
    """(sum of target_logprobs over the continuation, all greedy) on the unpadded row, or None when empty."""
    ctx, cont = _expected_pair(lm, context, continuation)
    if not cont:
        return None
    whole = (ctx + cont)[-(lm.max_length + 1):]
    tokens = np.asarray([whole[:-1]])
    targets = np.full(tokens.shape, -1)
    targets[0, -len(cont):] = cont
    logp, greedy = target_logprobs(lm.model, tokens, targets, enc_len=enc_len)
    return logp.sum(dtype=np.float64), bool(greedy[0, -len(cont):].all())


def test_loglikelihood_equals_target_logprobs():
    lm = _lm("llama-tiny", max_length=100, batch_size=3)
    long_context = "Read the context twice. " * 8  # 192 bytes: cut to max_length on the left
    pairs = [("The capital of France is", " Paris"), ("The capital of France is", " Rome"),
             ("Question: what is two plus two?\nAnswer:", " four"), ("", "Empty context."),
             ("Trailing space ", "moves"), (long_context, " and answer."), ("Nothing to score", "")]
    got = lm.loglikelihood([_req("loglikelihood", p, i) for i, p in enumerate(pairs)], disable_tqdm=True)
    for pair, (logp, greedy) in zip(pairs, got):
        ref = _reference(lm, *pair)
        if ref is None:
            assert (logp, greedy) == (0.0, True)
            continue
        np.testing.assert_allclose(logp, ref[0], rtol=1e-5)
        assert greedy == ref[1]


@pytest.mark.slow
def test_jrt_rnn_encoder_reads_the_context_and_rolling_equals_perplexity():
    # jrt-micro: prefix linear attention with M = 64 encoder tokens (read non-causally). Byte tokenizer: one
    # token per ASCII character. Lengths are chosen so that the batches are the unpadded rows' shapes: the
    # references below reuse the adapter's compilations (JRT-RNN compiles slowly on CPU).
    lm = _lm("jrt-micro", max_length=128, batch_size=1)
    assert lm.model.config.enc_len == 64
    short = ("Read the texts twice", " then answer.")  # 20 + 13 tokens: input 32, encoder = the 20 context tokens
    long = ("Read the context twice. " * 8, " and answer.")  # cut to 128 inputs: encoder = the first M = 64
    got = lm.loglikelihood([_req("loglikelihood", short), _req("loglikelihood", long)], disable_tqdm=True)
    ref_short = _reference(lm, *short, enc_len=20)
    np.testing.assert_allclose(got[0][0], ref_short[0], rtol=1e-5)
    np.testing.assert_allclose(got[1][0], _reference(lm, *long, enc_len=None)[0], rtol=1e-5)  # None: min(M, 128)
    # The choice matters: an encoder over all 32 inputs would read continuation tokens non-causally.
    assert abs(_reference(lm, *short, enc_len=None)[0] - ref_short[0]) > 1e-3

    base = "The encoder reads the prompt; the decoder reads it again. " * 3
    docs = [base[:158], base[:31], ""]  # 159 ids: windows of 128 and 32 (stride 127); 32 ids: one window
    got = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (d,), i) for i, d in enumerate(docs)],
                                   disable_tqdm=True)
    assert got[2] == 0.0  # an empty text has nothing to score
    for text, value in zip(docs[:2], got[:2]):
        ref = perplexity(lm.model, lm.rolling_token_ids(text), context=128, stride=127)
        assert ref.tokens == len(text)
        np.testing.assert_allclose(value, -ref.nll_sum, rtol=1e-5)


def test_is_greedy_when_the_continuation_is_the_argmax():
    from flax import nnx

    lm = _lm("llama-tiny", max_length=100, batch_size=3)
    ctx = lm.tokenizer.encode("The capital of France is")
    logits = np.asarray(nnx.jit(lambda model, x: model(x))(lm.model, np.asarray([ctx])))[0, -1]
    best, other = int(np.argmax(logits)), int(np.argsort(logits)[-2])
    got = lm._loglikelihood_tokens([(None, ctx, [best]), (None, ctx, [other])], disable_tqdm=True)
    assert [g for _, g in got] == [True, False]
    logz = np.log(np.exp(logits - logits.max()).sum()) + logits.max()
    np.testing.assert_allclose(got[0][0], logits[best] - logz, rtol=1e-5)


def test_generate_until_stops_at_until_and_honours_max_gen_toks():
    lm = _lm("llama-tiny", max_length=100, batch_size=2)
    prompts = ["Hello world", "The quick fox", "abc"]  # one prompt bucket (16), max_gen_toks 16 and 3: one cache
    free = lm.generate_until([_req("generate_until", (p, {"until": [], "max_gen_toks": 16}), i)
                              for i, p in enumerate(prompts)], disable_tqdm=True)
    cases = []  # (prompt, a stop character of its free text that is new at position k >= 1, the text before it)
    for prompt, text in zip(prompts, free):
        k = next((k for k in range(1, len(text)) if text[k] != "\ufffd" and text[k] not in text[:k]), None)
        if k is not None:
            cases.append((prompt, text[k], text[:k]))
    assert cases, f"no usable stop character in {free!r}"
    reqs = [_req("generate_until", (p, {"until": ["never appears \x00", stop], "max_gen_toks": 16}), i)
            for i, (p, stop, _) in enumerate(cases)]
    assert lm.generate_until(reqs, disable_tqdm=True) == [want for _, _, want in cases]
    # max_gen_toks, and a single string `until`; a different group in the same call keeps request order.
    mixed = [_req("generate_until", (prompts[0], {"until": "never appears \x00", "max_gen_toks": 3}), 0),
             _req("generate_until", (prompts[1], {"until": [], "max_gen_toks": 16}), 1)]
    short, again = lm.generate_until(mixed, disable_tqdm=True)
    assert again == free[1]
    assert 0 < len(short) <= 3 and free[0].startswith(short.rstrip("\ufffd"))


def test_progress_bar_on_stderr_and_disable_tqdm(capfd):
    lm = _lm("llama-tiny", max_length=100, batch_size=3)
    reqs = [_req("loglikelihood", ("The capital of France is", " Paris"))]
    lm.loglikelihood(reqs, disable_tqdm=True)
    assert capfd.readouterr().err == ""
    lm.loglikelihood(reqs)
    assert "jrt-jax loglikelihood" in capfd.readouterr().err


def test_model_args_errors():
    with pytest.raises(ValueError, match="unknown model_args colour"):
        adapter.JRTJaxLM(pretrained="llama-tiny", colour="red")
    with pytest.raises(ValueError, match="pretrained=PATH"):
        adapter.JRTJaxLM()
    with pytest.raises(ValueError, match="stride=16 must be < max_length=16"):
        adapter.JRTJaxLM(pretrained="llama-tiny", max_length=16, stride=16)
    with pytest.raises(ValueError, match="rope-scaling is not valid JSON"):
        adapter.JRTJaxLM(pretrained="llama-tiny", rope_scaling="{bad")


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **OFFLINE)
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Both command lines, started together (each spends ~10 s indexing lm-eval's 14k built-in tasks)."""
    broken = tmp_path_factory.mktemp("broken_task")
    # A task whose target names a field the documents do not have.
    (broken / "broken.yaml").write_text(
        (TASKS / "jrt_local.yaml").read_text().replace("task: jrt_local", "task: jrt_broken")
        .replace("{{text}}", "{{page}}"))
    procs = {
        "module": _start(["-m", "jrt_jax.evals.lm_eval_adapter", "--model", "jrt-jax", "--model_args",
                          "pretrained=llama-tiny", "--tasks", "jrt_local", "--include_path", "tests/data/lm_eval",
                          "--limit", "2"]),
        "jrt": _start(["-m", "train.cli", "eval", "lm-eval", "--model", "jrt-jax", "--model_args",
                       "pretrained=llama-tiny", "--tasks", "jrt_broken", "--include_path", str(broken)]),
    }
    results = {}

    def result(name: str) -> subprocess.CompletedProcess:
        if name not in results:
            out, err = procs[name].communicate(timeout=600)
            results[name] = subprocess.CompletedProcess(procs[name].args, procs[name].returncode, out, err)
        return results[name]

    yield result
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.communicate()


@pytest.mark.slow
def test_module_cli_runs_lm_evals_command_line(cli_runs):
    r = cli_runs("module")
    assert r.returncode == 0, r.stderr[-3000:]
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert any(line.startswith("|jrt_local") for line in table) and any("word_perplexity" in line
                                                                          for line in table), r.stdout
    assert "jrt-jax (" in r.stdout  # lm-eval's summary line names the model


@pytest.mark.slow
def test_jrt_eval_lm_eval_reports_a_task_error_in_one_line(cli_runs):
    r = cli_runs("jrt")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[-1].startswith("jrt eval lm-eval: error:") and "'page' is undefined" in lines[-1], lines[-3:]
    assert sum("error:" in line for line in lines) == 1
