"""JRT-Prompt: repeat the context so a fixed-memory recurrent model reads it knowing what will be asked.

Templates of the JRT paper (Arora et al. 2024, and the release's lm-eval tasks):

* documents with a key (SWDE / FDA style, "information extraction")::

      Information about {key}. {doc}.\\n{doc}. {key}:

* question answering (SQuAD / NQ / TriviaQA style)::

      {question} {context}.\\n{context}. {question}

and the single-read baselines ``{doc}. {key}:`` / ``{context}. {question}``. Trailing periods and newlines of the
document / context are stripped before the template adds its own (as the release does).

When the prompt must fit a token budget, the context is cut to its share *before* duplication, keeping a window
that contains the answer (cut from both sides around it) — otherwise the cut could remove the answer in one copy
and not the other. Token-level builders take ids and return ids.

Scoring: greedy generation, stopped at the first newline; an answer counts when it is contained in the
generation, case-insensitively (`contains_answer`). `evaluate` runs this with any model of `jrt_jax.models`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

DOCUMENT_TEMPLATE = "Information about {key}. {doc}.\n{doc}. {key}:"
DOCUMENT_BASELINE = "{doc}. {key}:"
QA_TEMPLATE = "{question} {context}.\n{context}. {question}"
QA_BASELINE = "{context}. {question}"


def _clean(text: str) -> str:
    """Strip surrounding whitespace / newlines and trailing periods (the template adds one)."""
    return text.strip().strip("\n").rstrip(".").rstrip()


# --- text level --------------------------------------------------------------------------------------------------


def document_prompt(key: str, doc: str, *, repeat: bool = True) -> str:
    """``Information about {key}. {doc}.\\n{doc}. {key}:`` (JRT), or ``{doc}. {key}:`` when `repeat` is False."""
    template = DOCUMENT_TEMPLATE if repeat else DOCUMENT_BASELINE
    return template.format(key=key.strip(), doc=_clean(doc))


def qa_prompt(question: str, context: str, *, repeat: bool = True) -> str:
    """``{question} {context}.\\n{context}. {question}`` (JRT), or ``{context}. {question}`` when not `repeat`."""
    template = QA_TEMPLATE if repeat else QA_BASELINE
    return template.format(question=question.strip(), context=_clean(context))


# --- cutting the context around the answer ----------------------------------------------------------------------


def answer_window(n: int, budget: int, span: tuple[int, int] | None) -> tuple[int, int]:
    """[start, end) of a window of min(n, budget) items out of n that contains `span` = [a, b) when possible.

    The window is centred on the span and cut from both sides (shifted inward at the edges). If the span is
    longer than the budget, the window starts at the span. Without a span the window keeps the beginning.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1; got {budget}")
    if n <= budget:
        return 0, n
    if span is None:
        return 0, budget
    a, b = span
    if not 0 <= a <= b <= n:
        raise ValueError(f"span {span} is outside [0, {n}]")
    if b - a >= budget:
        return a, a + budget
    extra = budget - (b - a)
    start = a - extra // 2
    start = min(max(start, 0), n - budget)
    return start, start + budget


def find_span(haystack: Sequence, needle: Sequence) -> tuple[int, int] | None:
    """[a, b) of the first occurrence of `needle` as a contiguous run in `haystack`, else None."""
    m = len(needle)
    if m == 0:
        return None
    for i in range(len(haystack) - m + 1):
        if list(haystack[i : i + m]) == list(needle):
            return i, i + m
    return None


def cut_tokens_around_answer(context_ids: Sequence[int], budget: int,
                             answer_span: tuple[int, int] | None) -> list[int]:
    """The `budget` context tokens around `answer_span` (token indices [a, b)), cut from both sides."""
    start, end = answer_window(len(context_ids), budget, answer_span)
    return list(context_ids[start:end])


def cut_text_around_answer(context: str, answer: str | None, budget: int, tokenizer) -> str:
    """Cut `context` to `budget` tokens of `tokenizer`, keeping a window around the first (case-insensitive)
    occurrence of `answer`; without an answer in the text, keep the beginning."""
    ids = tokenizer.encode(context)
    if len(ids) <= budget:
        return context
    span = answer_token_span(context, answer, tokenizer, len(ids))
    return tokenizer.decode(cut_tokens_around_answer(ids, budget, span))


def answer_token_span(text: str, answer: str | None, tokenizer, n_ids: int) -> tuple[int, int] | None:
    """Token indices [a, b) covering the first case-insensitive occurrence of `answer` in `text` (None if absent).

    Found on characters, converted by tokenizing the text before / through the answer (exact for byte-level
    tokenizers, within a token at the boundaries for BPE).
    """
    if not answer or not answer.strip():
        return None
    at = text.lower().find(answer.strip().lower())
    if at < 0:
        return None
    a = len(tokenizer.encode(text[:at]))
    b = len(tokenizer.encode(text[: at + len(answer.strip())]))
    return min(a, n_ids), min(max(b, a + 1), n_ids)


# --- token level -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TemplatePieces:
    """Token ids of the fixed text of a template, encoded once (see `qa_pieces` / `document_pieces`)."""

    before_first: list[int]
    between: list[int]
    after_second: list[int]


def qa_pieces(question: str, tokenizer, *, repeat: bool = True) -> TemplatePieces:
    """Fixed pieces of the QA template: ``"{question} "`` · context · ``".\\n"`` · context · ``". {question}"``."""
    q = question.strip()
    if repeat:
        return TemplatePieces(tokenizer.encode(q + " "), tokenizer.encode(".\n"), tokenizer.encode(". " + q))
    return TemplatePieces([], [], tokenizer.encode(". " + q))


def document_pieces(key: str, tokenizer, *, repeat: bool = True) -> TemplatePieces:
    """Fixed pieces of the document template around the two copies of the document."""
    k = key.strip()
    if repeat:
        return TemplatePieces(tokenizer.encode(f"Information about {k}. "), tokenizer.encode(".\n"),
                              tokenizer.encode(f". {k}:"))
    return TemplatePieces([], [], tokenizer.encode(f". {k}:"))


def build_tokens(context_ids: Sequence[int], pieces: TemplatePieces, *, repeat: bool = True,
                 max_tokens: int | None = None, answer_span: tuple[int, int] | None = None) -> list[int]:
    """Assemble a JRT prompt from ids: before · ctx · between · ctx · after (or ctx · after when not `repeat`).

    With `max_tokens`, the context is first cut (around `answer_span`, token indices into `context_ids`) to
    ``(max_tokens - fixed tokens) // copies`` tokens, then duplicated; the result has at most `max_tokens` ids.
    Note that tokenizing pieces separately can differ slightly from tokenizing the whole text at once.
    """
    copies = 2 if repeat else 1
    fixed = len(pieces.before_first) + len(pieces.between) + len(pieces.after_second)
    ctx = list(context_ids)
    if max_tokens is not None:
        budget = (max_tokens - fixed) // copies
        if budget < 1:
            raise ValueError(f"max_tokens={max_tokens} leaves no room for the context "
                             f"({fixed} template tokens, {copies} copies)")
        ctx = cut_tokens_around_answer(ctx, budget, answer_span)
    if repeat:
        return pieces.before_first + ctx + pieces.between + ctx + pieces.after_second
    return ctx + pieces.after_second


def qa_prompt_tokens(question: str, context: str, tokenizer, *, answer: str | None = None,
                     max_tokens: int | None = None, repeat: bool = True) -> list[int]:
    """Token-level QA prompt; the context cut to its budget around `answer` before duplication."""
    ctx_text = _clean(context)
    pieces = qa_pieces(question, tokenizer, repeat=repeat)
    return _build_from_text(ctx_text, answer, pieces, tokenizer, max_tokens, repeat)


def document_prompt_tokens(key: str, doc: str, tokenizer, *, answer: str | None = None,
                           max_tokens: int | None = None, repeat: bool = True) -> list[int]:
    """Token-level documents-with-key prompt; the document cut around `answer` before duplication."""
    pieces = document_pieces(key, tokenizer, repeat=repeat)
    return _build_from_text(_clean(doc), answer, pieces, tokenizer, max_tokens, repeat)


def _build_from_text(ctx_text, answer, pieces, tokenizer, max_tokens, repeat):
    ids = tokenizer.encode(ctx_text)
    span = answer_token_span(ctx_text, answer, tokenizer, len(ids))
    return build_tokens(ids, pieces, repeat=repeat, max_tokens=max_tokens, answer_span=span)


# --- scoring ----------------------------------------------------------------------------------------------------


def first_line(text: str) -> str:
    """The generation up to the first newline."""
    return text.split("\n", 1)[0]


def contains_answer(generation: str, answers: str | Iterable[str]) -> bool:
    """True when any answer occurs in the generation's first line, case-insensitively."""
    answers = [answers] if isinstance(answers, str) else list(answers)
    line = first_line(generation).lower()
    return any(a.strip().lower() in line for a in answers if a.strip())


@dataclasses.dataclass
class Example:
    """One recall question: the prompt pieces and the accepted answers."""

    context: str
    question: str  # the question (QA) or the key (documents)
    answers: Sequence[str]
    kind: str = "qa"  # "qa" or "document"


def evaluate(model, examples: Sequence[Example], tokenizer, *, repeat: bool = True, max_prompt_tokens: int = 1024,
             max_new_tokens: int = 48, batch_size: int = 8,
             progress: Callable[[int, int], None] | None = None,
             wrap: Callable[[list[int]], list[int]] | None = None) -> dict:
    """Accuracy of greedy generation (stop at newline, contains-answer) on `examples` with any model here.

    `wrap` maps each prompt's ids to the ids actually fed (e.g. a chat template around them); the budget
    `max_prompt_tokens` applies to the prompt before wrapping.
    Returns {"accuracy": float, "correct": int, "total": int, "generations": [str], "finish_reasons": [str],
    "prompt_tokens": [int]} with finish reasons "newline", "eos" or "length".
    """
    from jrt_jax.generate import Generator

    gen = Generator(model)
    generations: list[str] = []
    finishes: list[str] = []
    lengths: list[int] = []
    correct = 0
    names = {"stop_string": "newline", "stop_token": "eos", "length": "length"}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = []
        for ex in chunk:
            build = qa_prompt_tokens if ex.kind == "qa" else document_prompt_tokens
            prompts.append(build(ex.question, ex.context, tokenizer, answer=ex.answers[0] if ex.answers else None,
                                 max_tokens=max_prompt_tokens, repeat=repeat))
        if wrap is not None:
            prompts = [wrap(list(p)) for p in prompts]
        lengths += [len(p) for p in prompts]
        stops = [tokenizer.eos_id] if getattr(tokenizer, "eos_id", None) is not None else []
        result = gen.generate(prompts, max_new_tokens=max_new_tokens, stop_strings=["\n"],
                              detokenize=tokenizer.decode, stop_tokens=stops)
        for ex, text, why in zip(chunk, result.texts, result.finish_reasons):
            generations.append(text)
            finishes.append(names.get(why, why))
            correct += contains_answer(text, ex.answers)
        if progress is not None:
            progress(min(start + batch_size, len(examples)), len(examples))
    total = len(examples)
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total,
            "generations": generations, "finish_reasons": finishes, "prompt_tokens": lengths}
