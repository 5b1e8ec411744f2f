"""Question answering / information extraction from a JSONL file, with or without JRT-Prompt.

Rows are ``{"context", "question", "answer"}`` (template "qa") or ``{"document", "key", "answer"}`` (template
"document"); "answer" is a string or a list of accepted strings. Prompts, the budget cut around the answer,
greedy decoding stopped at a newline and case-insensitive containment scoring are `jrt_jax.prompting`'s (the
JRT paper's templates). With `chat`, the prompt is placed as the user message of the tokenizer's own chat
template (rendered with Jinja, as transformers does) and generation starts after the assistant header.
"""

from __future__ import annotations

import pathlib

from jrt_jax import prompting
from jrt_jax.datasets import jsonl_objects

FIELDS = {"qa": ("context", "question"), "document": ("document", "key")}


def load_rows(path, template: str | None = None) -> tuple[list[prompting.Example], str]:
    """(examples, template) from a JSONL file; the template is inferred from the first row when None."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"--data {path}: no such file")
    if template is not None and template not in FIELDS:
        raise ValueError(f"--template must be 'qa' or 'document'; got {template!r}")
    examples = []
    for n, row in jsonl_objects(path):
        if template is None:
            template = "document" if "document" in row or "key" in row else "qa"
        ctx_field, q_field = FIELDS[template]
        for field in (ctx_field, q_field, "answer"):
            if field not in row:
                raise ValueError(f"{path}:{n}: missing field {field!r} (template {template!r} needs "
                                 f"{ctx_field!r}, {q_field!r} and 'answer')")
        answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        if not all(isinstance(a, str) for a in answers) or not isinstance(row[ctx_field], str) \
                or not isinstance(row[q_field], str):
            raise ValueError(f"{path}:{n}: {ctx_field!r}, {q_field!r} and 'answer' must be strings")
        examples.append(prompting.Example(context=row[ctx_field], question=row[q_field], answers=answers,
                                          kind=template))
    if not examples:
        raise ValueError(f"--data {path}: no rows")
    return examples, template


def render_chat_template(template: str, messages: list[dict], **context) -> str:
    """`template` (a tokenizer's Jinja chat template) rendered for `messages` as transformers'
    `apply_chat_template(..., tokenize=False)` renders it.

    A chat template read from a downloaded file is untrusted code, so it runs in Jinja's immutable sandbox (no
    attribute access to internals, no mutation of the objects passed in), with the environment options and names
    Hugging Face chat templates are written for: trim_blocks and lstrip_blocks, the loopcontrols extension
    (break/continue), a `{% generation %}` block (rendered as its body), `raise_exception(msg)`, a `tojson` that
    keeps non-ASCII text, and `strftime_now(fmt)`. Needs jinja2 >= 3.1.6 (older versions have known sandbox
    escapes). Written here rather than imported from transformers, which is not a core dependency; equality with
    transformers is tested (tests/evals/test_evals.py). A template that fails raises ValueError with jinja's message."""
    import datetime
    import json

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if tuple(int(x) for x in jinja2.__version__.split(".")[:3] if x.isdigit()) < (3, 1, 6):
        raise ValueError(f"chat templates need jinja2 >= 3.1.6 (older versions have sandbox escapes); installed: "
                         f"{jinja2.__version__}")

    class _Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=messages, **context)
    except jinja2.TemplateError as e:
        raise ValueError(f"the chat template does not render: {e}") from None


def chat_wrapper(tokenizer):
    """ids → ids inside the tokenizer's chat template as the user's message, ending with the assistant header
    (`render_chat_template`: sandboxed, as transformers renders it)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("--chat: the model's tokenizer has no chat template")
    marker = "\x00PROMPT\x00"
    bos = eos = ""
    for attr in ("bos_id", "eos_id"):
        i = getattr(tokenizer, attr, None)
        if i is not None:
            if attr == "bos_id":
                bos = tokenizer.decode([i])
            else:
                eos = tokenizer.decode([i])
    try:
        text = render_chat_template(template, [{"role": "user", "content": marker}], add_generation_prompt=True,
                                    bos_token=bos, eos_token=eos)
    except ValueError as e:
        raise ValueError(f"--chat: {e}") from None
    before, after = text.split(marker)
    head, tail = tokenizer.encode(before), tokenizer.encode(after)
    return lambda ids: head + list(ids) + tail


def run(model, tokenizer, examples, *, jrt_prompt: bool, chat: bool = False, max_prompt_tokens: int = 1024,
        max_new_tokens: int = 48, batch_size: int = 8, progress=None) -> dict:
    """Accuracy, and per row the prompt size, prediction, finish reason ("newline", "eos", "length") and score."""
    wrap = chat_wrapper(tokenizer) if chat else None
    seen = [0]

    def step(done, total):  # prompting reports a running count; `progress` takes increments
        if progress is not None:
            progress(done - seen[0])
        seen[0] = done

    out = prompting.evaluate(model, examples, tokenizer, repeat=jrt_prompt, max_prompt_tokens=max_prompt_tokens,
                             max_new_tokens=max_new_tokens, batch_size=batch_size, wrap=wrap, progress=step)
    rows = [{"question": ex.question, "answers": list(ex.answers), "prediction": prompting.first_line(text),
             "finish": why, "prompt_tokens": n, "correct": prompting.contains_answer(text, ex.answers)}
            for ex, text, why, n in zip(examples, out["generations"], out["finish_reasons"], out["prompt_tokens"])]
    finishes = {k: sum(r["finish"] == k for r in rows) for k in ("newline", "eos", "length")}
    result = {"accuracy": out["accuracy"], "correct": out["correct"], "total": out["total"], "finishes": finishes,
              "rows": rows}
    empty = sum(r["finish"] == "eos" and not r["prediction"].strip() for r in rows)
    if rows and 2 * empty >= len(rows):
        hint = ("; the tokenizer has a chat template: an instruction-tuned model answers with --chat"
                if not chat and getattr(tokenizer, "chat_template", None) else "")
        result["warning"] = f"{empty} of {len(rows)} answers were an immediate end-of-sequence{hint}"
    return result
