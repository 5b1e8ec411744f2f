"""The passkey retrieval test of landmark attention (Mohtashami & Jaggi, 2023), as used by the PI paper (§3.2).

A prompt of a target length: the task sentence, filler ("The grass is green. The sky is blue. …") repeated,
with the line "The pass key is KEY. Remember it. KEY is the pass key." at a random depth, then "What is the
pass key? The pass key is". The model generates greedily; its answer is the first integer in the generated text
and is right when it equals the 5-digit KEY. Prompts are built in tokens, so a prompt of length L has at most L
tokens (the filler is cut to fit), and the depth is the fraction of the filler before the key line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np

from jrt_jax.evals.plotting import pyplot

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"


def key_line(key: int) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def prompt(tokenizer, length: int, depth: float, key: int, *, header: str = TASK) -> list[int]:
    """Token ids of a passkey prompt of at most `length` tokens with the key line at `depth` ∈ [0, 1].

    `header` is the task sentence that opens the prompt ("" for none: small byte-level models trained at a
    few hundred tokens have no room for the standard one)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1]; got {depth}")
    head = tokenizer.encode(header + "\n") if header else []
    line = tokenizer.encode("\n" + key_line(key) + "\n")
    tail = tokenizer.encode("\n" + QUESTION)
    unit = tokenizer.encode(" " + FILLER)
    room = length - len(head) - len(line) - len(tail)
    if room < len(unit):
        raise ValueError(f"length {length} leaves no room for filler (the fixed parts take "
                         f"{len(head) + len(line) + len(tail)} tokens)")
    filler = (unit * (room // len(unit) + 1))[:room]
    split = int(round(depth * room))
    return head + filler[:split] + line + filler[split:] + tail


def first_integer(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


@dataclasses.dataclass
class PasskeyResult:
    lengths: list[int]
    accuracy: list[float]
    trials: int
    rows: list[dict]  # per trial: length, depth, key, answer, generated text, correct

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def answer(key: int) -> str:
    """The text that completes a prompt correctly (what passkey training examples end with)."""
    return f" {key}."


def training_example(tokenizer, length: int, rng: np.random.Generator, *, header: str = TASK) -> list[int]:
    """Exactly `length` token ids: a passkey prompt (random key and depth) followed by its answer — the passkey
    examples mixed into text training (`data.passkey_fraction`), so a model can learn the task it is tested on."""
    key = int(rng.integers(10000, 100000))
    depth = float(rng.random())
    tail = tokenizer.encode(answer(key))
    return prompt(tokenizer, length - len(tail), depth, key, header=header) + tail  # the filler fills to length


def passkey(model, tokenizer, lengths: Sequence[int], *, trials: int = 5, seed: int = 0,
            max_new_tokens: int = 8, progress: Callable[[int], None] | None = None,
            header: str = TASK) -> PasskeyResult:
    """Accuracy at each length over `trials` random (key, depth) pairs, greedy decoding."""
    from jrt_jax.generate import Generator

    if not lengths or any(not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be positive ints; got {list(lengths)}")
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive int; got {trials!r}")
    rng = np.random.default_rng(seed)
    gen = Generator(model)
    rows, accuracy = [], []
    for length in lengths:
        right = 0
        for _ in range(trials):
            key = int(rng.integers(10000, 100000))
            depth = float(rng.random())
            ids = prompt(tokenizer, length, depth, key, header=header)
            out = gen.generate([ids], max_new_tokens=max_new_tokens, detokenize=tokenizer.decode)
            text = out.texts[0] if out.texts else tokenizer.decode(list(out.tokens[0]))
            answer = first_integer(text)
            right += answer == key
            rows.append({"length": length, "prompt_tokens": len(ids), "depth": round(depth, 4), "key": key,
                         "answer": answer, "generated": text, "finish": out.finish_reasons[0],
                         "correct": answer == key})
            if progress is not None:
                progress(1)
        accuracy.append(right / trials)
    return PasskeyResult(list(lengths), accuracy, trials, rows)


def plot(result: PasskeyResult, path, title: str = "") -> None:
    """Accuracy vs prompt length (log2 axis) as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(result.lengths, result.accuracy, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel(f"passkey accuracy ({result.trials} trials)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
