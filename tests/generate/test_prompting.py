"""JRT-Prompt templates, cutting the context around the answer before duplication, and scoring."""

from __future__ import annotations

import pytest

from jrt_jax import prompting as P
from jrt_jax.tokenizer import ByteTokenizer
from tests import model_helpers as mh

BYTES = ByteTokenizer()


def test_templates_exact():
    assert P.document_prompt("Year founded", "Acme Corp was founded in 1901.") == (
        "Information about Year founded. Acme Corp was founded in 1901.\nAcme Corp was founded in 1901. Year founded:"
    )
    assert P.qa_prompt("Where is the tower?", "The tower is in Paris.\n") == (
        "Where is the tower? The tower is in Paris.\nThe tower is in Paris. Where is the tower?"
    )
    assert P.document_prompt("k", "d", repeat=False) == "d. k:"
    assert P.qa_prompt("q?", "c", repeat=False) == "c. q?"


def test_answer_window_cuts_both_sides():
    # the answer [40, 44) in 100 items, budget 20: centred, cut on both sides
    assert P.answer_window(100, 20, (40, 44)) == (32, 52)
    # near the edges the window shifts inward but keeps the answer
    assert P.answer_window(100, 20, (2, 4)) == (0, 20)
    assert P.answer_window(100, 20, (97, 99)) == (80, 100)
    # no answer: keep the beginning; short enough: keep everything
    assert P.answer_window(100, 20, None) == (0, 20)
    assert P.answer_window(10, 20, (3, 4)) == (0, 10)
    # an answer longer than the budget: start at the answer
    assert P.answer_window(100, 5, (10, 30)) == (10, 15)
    with pytest.raises(ValueError):
        P.answer_window(10, 0, None)


def test_context_is_cut_before_duplication_and_keeps_the_answer():
    before = "".join(f"pre{i} " for i in range(200))
    after = "".join(f"post{i} " for i in range(200))
    context = before + "The secret code is 7431. " + after
    ids = P.qa_prompt_tokens("What is the code?", context, BYTES, answer="7431", max_tokens=300)
    assert len(ids) <= 300
    text = BYTES.decode(ids)
    first, second = text.split("\n")
    # both copies hold the same cut context, and it contains the answer
    ctx1 = first[len("What is the code? "):]
    ctx2 = second[: -len(". What is the code?")]
    assert ctx1 == ctx2 + "." or ctx1.rstrip(".") == ctx2
    assert "7431" in ctx1 and "7431" in ctx2
    # cut from both sides: neither the start nor the end of the original context survives
    assert "pre0 " not in ctx2 and "post199" not in ctx2 and "pre199" in ctx2 and "post0 " in ctx2
    # without the budget, the token prompt is exactly the tokenized text prompt (byte tokenizer)
    assert BYTES.decode(P.qa_prompt_tokens("q?", "short context", BYTES)) == P.qa_prompt("q?", "short context")
    assert BYTES.decode(P.document_prompt_tokens("k", "a doc", BYTES)) == P.document_prompt("k", "a doc")


def test_text_level_cut_and_token_level_builder():
    ctx = "a" * 50 + "ANSWER" + "b" * 50
    cut = P.cut_text_around_answer(ctx, "answer", 20, BYTES)
    assert len(cut) == 20 and "ANSWER" in cut and cut.startswith("a") and cut.endswith("b")
    pieces = P.TemplatePieces([1], [2, 2], [3])
    assert P.build_tokens([7, 8, 9], pieces) == [1, 7, 8, 9, 2, 2, 7, 8, 9, 3]
    assert P.build_tokens([7, 8, 9], pieces, repeat=False) == [7, 8, 9, 3]
    # 20 context tokens 10..29, answer at index 15 (token 25); budget (14 - 4 fixed) // 2 = 5 → indices 13..17
    out = P.build_tokens(list(range(10, 30)), pieces, max_tokens=14, answer_span=(15, 16))
    assert out == [1, 23, 24, 25, 26, 27, 2, 2, 23, 24, 25, 26, 27, 3]
    with pytest.raises(ValueError, match="no room"):
        P.build_tokens([1, 2], pieces, max_tokens=4)


def test_scoring_contains_case_insensitive_first_line():
    assert P.contains_answer(" paris, France\nBerlin", "Paris")
    assert P.contains_answer("It is PARIS", ["London", "paris"])
    assert not P.contains_answer("Lyon\nParis", "Paris")  # only the first line counts
    assert not P.contains_answer("", "Paris")


@pytest.mark.parametrize("name", ["jrt", "llama"])
def test_evaluate_runs_with_any_model(name):
    examples = [P.Example(context="Tom lives in Oslo. Ann lives in Rome.", question="Where does Ann live?",
                          answers=["Rome"]),
                P.Example(context="The code of the vault is 12.", question="code", answers=["12"], kind="document")]
    out = P.evaluate(mh.model(name), examples, BYTES, max_prompt_tokens=120, max_new_tokens=8, batch_size=2)
    assert out["total"] == 2 and 0.0 <= out["accuracy"] <= 1.0 and len(out["generations"]) == 2
    assert all("\n" not in g for g in out["generations"])  # stopped at the newline
