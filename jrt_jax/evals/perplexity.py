"""Sliding-window perplexity: each token scored at most once, with up to `context` − 1 tokens before it.

The windows and scoring rule are those of Hugging Face's strided-perplexity recipe: windows start every
`stride` tokens and hold up to `context` tokens; window k scores only the tokens no earlier window scored (its
last `end_k − end_{k−1}` tokens), each predicted from everything before it in the window. A window's first
token has nothing before it inside the window and is not scored: so the text's first token never is, and with
stride = context (disjoint windows) neither is the first token of every window — exactly as in the recipe,
whose `num_valid_tokens − batch_size` count drops them. stride < context scores every token but the first;
stride 1 gives every token the full context (one forward per token).

JRT-RNN models read their first M positions non-causally (the PLA encoder), so an output inside the encoder has
seen the tokens it would be scored on. Each window's encoder is therefore cut to the context it does not score:
M_window = min(M, first scored − begin) ≥ 1 (per row, one compilation). The first window's encoder is then its
first token alone: the scores are those of a causal reading, never of a peek at the answer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from jrt_jax.evals.scoring import target_logprobs


@dataclasses.dataclass(frozen=True)
class Window:
    begin: int  # first input token (absolute index)
    end: int  # one past the last input token
    first_scored: int  # absolute index of the first token this window scores


def windows(length: int, context: int, stride: int) -> list[Window]:
    """The recipe's windows over a text of `length` tokens (each token scored at most once; see the module)."""
    for name, value in (("context", context), ("stride", stride)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if stride > context:
        raise ValueError(f"stride={stride} > context={context} would leave tokens unscored; use stride <= context")
    if length < 2:
        raise ValueError(f"the text has {length} token(s); perplexity needs at least 2")
    out, prev_end = [], 0
    for begin in range(0, length, stride):
        end = min(begin + context, length)
        out.append(Window(begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == length:
            break
    return out


@dataclasses.dataclass
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    nll_sum: float
    tokens: int  # scored tokens (text tokens − 1 when stride < context)
    windows: int
    context: int
    stride: int
    greedy_accuracy: float  # fraction of scored tokens that are the argmax prediction

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _batches(ws: Sequence[Window], batch_size: int) -> Iterator[list[Window]]:
    """Consecutive windows of equal length, at most `batch_size` at a time (one compile per length)."""
    group: list[Window] = []
    for w in ws:
        if group and (len(group) == batch_size or w.end - w.begin != group[0].end - group[0].begin):
            yield group
            group = []
        group.append(w)
    if group:
        yield group


def perplexity(model, ids: Sequence[int] | np.ndarray, *, context: int, stride: int | None = None,
               batch_size: int = 1, chunk: int = 512,
               progress: Callable[[int], None] | None = None) -> PerplexityResult:
    """Sliding-window perplexity of token ids `ids` under `model` (a `JRTLM` / `LlamaLM`).

    Args:
      context: tokens per window (N); stride: window step (S ≤ N; default N: disjoint windows).
      batch_size: windows per forward pass. chunk: positions per application of the output head.
      progress: called with the number of tokens scored after each batch (for a progress bar).
    """
    ids = np.asarray(ids, np.int64).reshape(-1)
    stride = context if stride is None else stride
    ws = windows(len(ids), context, stride)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    nll_sum, scored, correct = 0.0, 0, 0
    for group in _batches(ws, batch_size):
        n = group[0].end - group[0].begin
        tokens = np.stack([ids[w.begin:w.end] for w in group])
        targets = np.full(tokens.shape, -1, np.int64)
        for row, w in enumerate(group):
            # input position i (absolute w.begin + i) predicts token w.begin + i + 1
            first = w.first_scored - 1 - w.begin
            targets[row, first:n - 1] = ids[w.first_scored:w.end]
        enc = None
        m = getattr(model, "encoder_len", None)
        if m is not None:  # JRT-RNN: keep scored tokens out of the encoder
            enc = np.asarray([max(1, min(m, w.first_scored - w.begin)) for w in group], np.int32)
        logp, greedy = target_logprobs(model, tokens, targets, chunk=chunk, enc_len=enc)
        count = int((targets >= 0).sum())
        nll_sum -= float(logp.sum(dtype=np.float64))
        correct += int(greedy.sum())
        scored += count
        if progress is not None:
            progress(count)
    nll = nll_sum / scored
    return PerplexityResult(perplexity=math.exp(nll), nll=nll, nll_sum=nll_sum, tokens=scored, windows=len(ws),
                            context=context, stride=stride, greedy_accuracy=correct / scored)
