"""lm-evaluation-harness adapter: ``--model jrt-jax`` evaluates any model `jrt eval` can load.

    python -m jrt_jax.evals.lm_eval_adapter --model jrt-jax --model_args pretrained=PATH --tasks hellaswag
    jrt eval lm-eval --model jrt-jax --model_args pretrained=PATH max_length=4096 --tasks wikitext --batch_size 8

    import lm_eval, jrt_jax.evals.lm_eval_adapter        # the import registers "jrt-jax"
    lm_eval.simple_evaluate(model="jrt-jax", model_args="pretrained=PATH", tasks=["hellaswag"])

Why a wrapper command rather than ``lm_eval --model jrt-jax``: lm-eval 0.4.x knows a model only through its
registry (`lm_eval.api.registry.model_registry`), filled by ``@register_model`` when the defining module is
imported and by the fixed table ``lm_eval.models.MODEL_MAPPING`` of lm-eval's own models. It does no plugin
discovery: nothing in lm-eval 0.4.13 calls ``importlib.metadata.entry_points`` (its `Registry` can hold an
``EntryPoint`` placeholder, but only if someone registers one in-process), so a fresh ``lm_eval`` process never
imports this module and answers "Attempted to load model 'jrt-jax', but no model for this name found". Both
commands above import this module and then hand the remaining arguments to lm-eval's own command line
(``lm_eval.__main__.cli_evaluate``), so every lm-eval option works as documented there.

model_args (``key=value`` pairs, or one JSON object for values holding commas):
  pretrained: a converted folder, a .gguf file, a `jrt train` run directory, or a preset (random weights)
    — anything `jrt_jax.evals.loading.load_model` accepts. Required.
  max_length: the longest model input (default: Llama — max_position_embeddings × the RoPE scaling factor;
    JRT / Based — config.max_seq_len, else 2048).
  stride: window step of `loglikelihood_rolling` (default max_length − 1; see below).
  rope_scaling: the RoPE scaling replacing the model's, a JSON object ("none" removes it). key=value pairs split
    at commas, so on the command line pass all model_args as one JSON object:
    --model_args '{"pretrained": "PATH", "rope_scaling": {"rope_type": "linear", "factor": 4}}'.
  dtype: float32 | bfloat16 (converted models). prefix_token_id: the token an empty context is conditioned on
    (default the tokenizer's bos_id, else its eos_id, as lm-eval's HFLM). max_gen_toks: default generation
    budget (256). chunk: positions per application of the output head (512).
  batch_size (``--batch_size``): rows per forward pass; "auto" is not measured — it means 16.
  device (``--device``) and max_batch_size are accepted and ignored: JAX places the model on its default
    backend (choose it with JAX_PLATFORMS).

Tokenization (loglikelihood): lm-eval's `TemplateLM` rule, as HFLM — trailing spaces of the context move to the
continuation, context + continuation is encoded as one string and split after the context's own token count;
an empty context is replaced by the prefix token. No special tokens are added (our tokenizers add none).
Inputs are cut on the left to max_length + 1 tokens (the last token is only a target).

Scoring: `jrt_jax.evals.scoring.target_logprobs` on right-padded batches (pads have target −1), shapes rounded
up to powers of two so that a handful of compilations serve a whole task. Right padding is exact because every
layer reading a position only reads earlier ones — except JRT-RNN's prefix linear attention, whose encoder
(the first enc_len tokens) is read non-causally. For those models the encoder length is passed explicitly:
loglikelihood — the context's tokens (at most config.enc_len), the prompt `jrt_jax.generate` would prefill, so
no continuation token is read by the encoder; loglikelihood_rolling — perplexity()'s rule: min(config.enc_len,
the window's unscored context), at least 1, so no scored token is read by the encoder either.

loglikelihood_rolling: -`jrt_jax.evals.perplexity.perplexity([prefix] + ids, context=max_length,
stride=stride).nll_sum` of the document's token ids, computed with the same windows (`perplexity.windows`) but
batched across documents. With stride = max_length − 1 every document token is scored exactly once, the
first one conditioned on the prefix token, and full windows are lm-eval's own rolling windows
(`get_rolling_token_windows(..., max_seq_len=max_length - 1, context_len=1)`); unlike lm-eval's, the last,
partial window is not moved back to get a full context (it starts at the next multiple of the stride).

generate_until: `jrt_jax.generate.Generator`, greedy unless the task asks for ``do_sample`` (then
temperature / top_k / top_p), stopping at any ``until`` string (the text is cut before it), at the
tokenizer's eos id, or after ``max_gen_toks`` tokens; the context is cut on the left to max_length −
max_gen_toks tokens.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

import lm_eval.models  # noqa: F401  lm-eval's own names first: get_model imports them only into an empty registry
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from jrt_jax.evals import loading
from jrt_jax.evals.perplexity import windows
from jrt_jax.evals.scoring import target_logprobs
from jrt_jax.generate.buckets import bucket

log = logging.getLogger(__name__)

_DEFAULT_BATCH = 16
_DEFAULT_MAX_LENGTH = 2048
_MIN_BUCKET = 16


def _positive_int(name: str, value) -> int:
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"jrt-jax: {name} must be a positive integer; got {value!r}")
    return value


class JRTJaxLM(TemplateLM):
    """lm-eval's `LM` interface over a jrt-jax model (see the module docstring for model_args and the rules)."""

    def __init__(self, pretrained: str | None = None, batch_size=1, max_batch_size=None, device=None,
                 max_length=None, stride=None, rope_scaling=None, dtype=None, prefix_token_id=None,
                 max_gen_toks: int = 256, chunk: int = 512, **unknown):
        super().__init__()
        if unknown:
            raise ValueError(f"jrt-jax: unknown model_args {', '.join(sorted(unknown))}; known: pretrained, "
                             "batch_size, max_length, stride, rope_scaling, dtype, prefix_token_id, "
                             "max_gen_toks, chunk")
        if not pretrained:
            raise ValueError("jrt-jax: model_args need pretrained=PATH (a converted folder, .gguf file, jrt "
                             "train run directory or preset)")
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            log.warning("jrt-jax: batch_size=%s is not measured; using %d", batch_size, _DEFAULT_BATCH)
            batch_size = _DEFAULT_BATCH
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self.chunk = _positive_int("chunk", chunk)
        if max_length is not None and _positive_int("max_length", max_length) < 2:
            raise ValueError(f"jrt-jax: max_length must be >= 2; got {max_length}")
        if stride is not None and max_length is not None and _positive_int("stride", stride) >= int(max_length):
            raise ValueError(f"jrt-jax: stride={stride} must be < max_length={max_length} (a window's first token "
                             "is context only, so stride = max_length would leave tokens unscored)")
        if isinstance(rope_scaling, str):
            rope_scaling = loading.parse_rope_scaling(rope_scaling)
        elif rope_scaling is not None and not isinstance(rope_scaling, dict):
            raise ValueError(f"jrt-jax: rope_scaling must be a JSON object; got {rope_scaling!r}")
        self.model, self.tokenizer, self.description = loading.load_model(str(pretrained),
                                                                          rope_scaling=rope_scaling, dtype=dtype)
        self.max_length = max(2, _positive_int("max_length", max_length if max_length is not None
                                               else self._default_max_length()))
        self.stride = _positive_int("stride", stride if stride is not None else self.max_length - 1)
        if self.stride >= self.max_length:
            raise ValueError(f"jrt-jax: stride={self.stride} must be < max_length={self.max_length} (a window's "
                             "first token is context only, so stride = max_length would leave tokens unscored)")
        self._custom_prefix = None if prefix_token_id is None else int(prefix_token_id)
        # JRT-RNN: the prefix linear attention's encoder reads its first enc_len tokens non-causally.
        self._enc_len = getattr(self.model, "encoder_len", None)
        self._generator = None
        if device is not None:
            log.debug("jrt-jax: device=%s ignored (JAX uses its default backend)", device)

    def _default_max_length(self) -> int:
        trained = getattr(self.model, "trained_length", None)  # Llama: max_position_embeddings × RoPE factor
        if trained:
            return int(trained)
        limit = getattr(self.model, "max_length", None)  # JRT / Based: config.max_seq_len (None: unbounded)
        return int(limit) if limit else _DEFAULT_MAX_LENGTH

    # ---- the TemplateLM interface --------------------------------------------------------------------------

    @property
    def eot_token_id(self):
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self):
        if self._custom_prefix is not None:
            return self._custom_prefix
        bos = getattr(self.tokenizer, "bos_id", None)
        token = bos if bos is not None else self.tokenizer.eos_id
        if token is None:
            raise ValueError("jrt-jax: the tokenizer has neither bos_id nor eos_id; give model_args "
                             "prefix_token_id=ID (the token an empty context is conditioned on)")
        return token

    @property
    def tokenizer_name(self) -> str:
        return f"jrt-jax:{self.description}"

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return list(self.tokenizer.encode(string))

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    # ---- scoring ---------------------------------------------------------------------------------------------

    def _score_rows(self, rows, bar=None) -> list[tuple[float, bool]]:
        """(sum of log p over the row's targets, all targets greedy) per row.

        rows: (tokens [n], targets [n] with -1 where nothing is scored, enc_len or None). Rows are grouped by
        padded length and scored `batch_size` at a time, padded on the right (and with empty rows up to
        `batch_size`). A JRT-RNN batch whose rows all use the forward's default encoder length compiles the
        path perplexity() uses; any other batch passes one encoder length per row (`target_logprobs`), so a length
        bucket compiles at most twice, not once per context length.
        """
        out: list[tuple[float, bool] | None] = [None] * len(rows)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, (tokens, _, _) in enumerate(rows):
            groups[bucket(len(tokens), min_bucket=_MIN_BUCKET, cap=self.max_length)].append(i)
        for length, members in sorted(groups.items(), key=lambda kv: -kv[0]):
            default = None if self._enc_len is None else min(self._enc_len, length)
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                tokens = np.zeros((self.batch_size, length), np.int32)
                targets = np.full((self.batch_size, length), -1, np.int32)
                for r, i in enumerate(batch):
                    t, y, _ = rows[i]
                    tokens[r, :len(t)] = t
                    targets[r, :len(y)] = y
                enc_len = None
                if default is not None:
                    wanted = {default if rows[i][2] is None else rows[i][2] for i in batch}
                    if wanted != {default}:
                        per_row = np.full((self.batch_size,), default, np.int32)
                        for r, i in enumerate(batch):
                            per_row[r] = default if rows[i][2] is None else rows[i][2]
                        enc_len = per_row
                logp, greedy = target_logprobs(self.model, tokens, targets, chunk=min(self.chunk, length),
                                               enc_len=enc_len)
                for r, i in enumerate(batch):
                    valid = targets[r] >= 0
                    out[i] = (float(logp[r].sum(dtype=np.float64)), bool(greedy[r][valid].all()))
                if bar is not None:
                    bar.update(len(batch))
        return out

    def _bar(self, total: int, desc: str, disable: bool):
        return tqdm(total=total, desc=desc, file=sys.stderr, disable=disable or self.rank != 0)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) or None, context ids, continuation ids), from TemplateLM."""
        rows, where, answers = [], [], [None] * len(requests)
        for k, (_, context, continuation) in enumerate(requests):
            if not continuation:
                answers[k] = (0.0, True)
                continue
            if len(continuation) > self.max_length:
                raise ValueError(f"jrt-jax: a continuation of {len(continuation)} tokens does not fit "
                                 f"max_length={self.max_length}")
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            n, m = len(whole) - 1, len(continuation)
            tokens = np.asarray(whole[:-1], np.int64)
            targets = np.full(n, -1, np.int64)
            targets[n - m:] = whole[n + 1 - m:]
            enc_len = None if self._enc_len is None else min(self._enc_len, n + 1 - m)
            rows.append((tokens, targets, enc_len))
            where.append(k)
        bar = self._bar(len(rows), "jrt-jax loglikelihood", disable_tqdm)
        try:
            for k, answer in zip(where, self._score_rows(rows, bar)):
                answers[k] = answer
        finally:
            bar.close()
        for (pair, _, _), answer in zip(requests, answers):
            if pair is not None:
                self.cache_hook.add_partial("loglikelihood", pair, answer)
        return answers

    def rolling_token_ids(self, string: str) -> list[int]:
        """The ids `loglikelihood_rolling` scores: [prefix token] + the text's ids (the prefix is not scored)."""
        return [self.prefix_token_id] + self.tok_encode(string)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Per document: the sum of log p over its tokens = −perplexity(rolling_token_ids(text),
        context=max_length, stride=stride).nll_sum (windows batched across documents)."""
        rows, owner = [], []
        for k, (string,) in enumerate(req.args for req in requests):
            ids = np.asarray(self.rolling_token_ids(string), np.int64)
            if len(ids) < 2:  # an empty text: nothing to score
                continue
            for w in windows(len(ids), self.max_length, self.stride):
                n = w.end - w.begin
                targets = np.full(n, -1, np.int64)
                # input position i (absolute w.begin + i) predicts token w.begin + i + 1, as in perplexity()
                targets[w.first_scored - 1 - w.begin:n - 1] = ids[w.first_scored:w.end]
                # the encoder holds only context the window does not score, as perplexity() does
                enc_len = None if self._enc_len is None else max(1, min(self._enc_len, w.first_scored - w.begin))
                rows.append((ids[w.begin:w.end], targets, enc_len))
                owner.append(k)
        totals = [0.0] * len(requests)
        bar = self._bar(len(rows), "jrt-jax loglikelihood_rolling (windows)", disable_tqdm)
        try:
            for k, (logp, _) in zip(owner, self._score_rows(rows, bar)):
                totals[k] += logp
        finally:
            bar.close()
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation ------------------------------------------------------------------------------------------

    def _options(self, gen_kwargs: dict) -> tuple[tuple[str, ...], int, tuple[float, int, float]]:
        kwargs = copy.deepcopy(gen_kwargs) if gen_kwargs else {}
        until = kwargs.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif not (isinstance(until, (list, tuple)) and all(isinstance(s, str) for s in until)):
            raise ValueError(f"jrt-jax: gen_kwargs 'until' must be a string or a list of strings; got {until!r}")
        max_gen_toks = _positive_int("max_gen_toks", kwargs.pop("max_gen_toks", self.max_gen_toks))
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        top_k = int(kwargs.pop("top_k", 0) or 0)
        top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
        if not do_sample:
            temperature, top_k, top_p = 0.0, 0, 1.0
        if kwargs:
            log.warning("jrt-jax: ignoring generation options %s", ", ".join(sorted(kwargs)))
        return tuple(s for s in until if s), max_gen_toks, (temperature, top_k, top_p)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from jrt_jax.generate import Generator, SamplingParams

        if self._generator is None:
            self._generator = Generator(self.model)
        groups: dict[tuple, list[tuple[int, list[int]]]] = defaultdict(list)
        for k, (context, gen_kwargs) in enumerate(req.args for req in requests):
            until, max_gen_toks, sampling = self._options(gen_kwargs)
            budget = self.max_length - max_gen_toks
            if budget < 1:
                raise ValueError(f"jrt-jax: max_gen_toks={max_gen_toks} leaves no room for a prompt within "
                                 f"max_length={self.max_length}")
            ids = self.tok_encode(context)[-budget:] or [self.prefix_token_id]
            groups[(until, max_gen_toks, sampling)].append((k, ids))
        texts: list[str | None] = [None] * len(requests)
        eos = self.tokenizer.eos_id
        bar = self._bar(len(requests), "jrt-jax generate_until", disable_tqdm)
        try:
            for (until, max_gen_toks, (temperature, top_k, top_p)), members in groups.items():
                members.sort(key=lambda m: -len(m[1]))  # similar lengths share a prompt bucket
                sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
                for start in range(0, len(members), self.batch_size):
                    batch = members[start:start + self.batch_size]
                    prompts = [ids for _, ids in batch]
                    prompts += [prompts[-1]] * (self.batch_size - len(prompts))  # one compiled batch size
                    result = self._generator.generate(
                        prompts, max_new_tokens=max_gen_toks, stop_strings=list(until), sampling=sampling,
                        detokenize=self.tokenizer.decode, stop_tokens=[] if eos is None else [eos])
                    for (k, _), text in zip(batch, result.texts):
                        texts[k] = text
                    bar.update(len(batch))
        finally:
            bar.close()
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts


# Registered under "jrt-jax" when imported; `python -m` registers the class of the module it imports below, not
# this `__main__` copy (lm-eval's registry refuses a second, different class under one name).
if __name__ != "__main__":
    register_model("jrt-jax")(JRTJaxLM)


# ---- command line --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, prog: str = "python -m jrt_jax.evals.lm_eval_adapter") -> int:
    """Run lm-eval's own command line (`lm_eval.__main__.cli_evaluate`) with "jrt-jax" registered.

    Errors end as every jrt command's (`jrt_jax.cli.run_command`: one line on stderr, exit status 2 for bad input,
    1 for a failure, 130 / 143 when interrupted; JRT_TRACEBACK=1 also prints the traceback); lm-eval's argument
    errors and --help keep their own output and exit status.
    """
    from jrt_jax.cli import run_command

    def evaluate(args):
        from lm_eval.__main__ import cli_evaluate

        saved = sys.argv
        sys.argv = [prog, *args]  # lm-eval's HarnessCLI reads sys.argv (and inserts "run" when no subcommand)
        try:
            cli_evaluate()
        except (ValueError, TypeError, OSError):
            raise
        except Exception as e:  # noqa: BLE001  a task's own error (a template, a dataset): the input is at fault
            raise ValueError(f"{type(e).__name__}: {e}") from e
        finally:
            sys.argv = saved
        return 0

    return run_command(evaluate, argv, prog=prog)


if __name__ == "__main__":
    from jrt_jax.evals.lm_eval_adapter import main as _main  # the importable module: registers "jrt-jax"

    sys.exit(_main())
