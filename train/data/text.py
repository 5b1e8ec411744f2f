"""Tokenized text from local files, packed into fixed-length sequences.

Files (glob patterns; the name "shakespeare" stands for the plays fetched by `jrt_jax.datasets`) are tokenized
once — GPT-2 BPE or bytes — joined with an end-of-text token, and cut into windows of seq_len + 1 tokens. The
last 5 % of the windows are held out for evaluation. Training visits the windows in a fresh permutation every
epoch; the window of (step, row) is a pure function of the seed, so the data position is just the step.
With data.passkey_fraction > 0 that fraction of the training rows are passkey examples instead (which ones,
and their keys and depths, are again a pure function of (seed, step, row)); the held-out rows stay text.
"""

from __future__ import annotations

import glob
import hashlib
import pathlib

import numpy as np

from jrt_jax.datasets import cache_dir, read_utf8_text, shakespeare_files
from train.data.synthetic import Batch


def _files(patterns) -> list[pathlib.Path]:
    out = []
    for pattern in patterns:
        if pattern == "shakespeare":
            out += shakespeare_files()
        else:
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise ValueError(f"data.text_files: no file matches {pattern!r}")
            out += [pathlib.Path(m) for m in matches]
    return out


def _tokenizer(name: str, checkpoint: str | None = None):
    """data.tokenizer: "auto" is the checkpoint's own tokenizer when fine-tuning one (else GPT-2)."""
    from jrt_jax import tokenizer

    if name == "auto" and checkpoint is not None:
        from jrt_jax.convert import ConversionError, load_tokenizer

        try:
            return load_tokenizer(checkpoint)
        except ConversionError as e:
            raise ValueError(f"data.tokenizer=auto: model.checkpoint {checkpoint} has no tokenizer ({e}); set "
                             "data.tokenizer=gpt2 or bytes") from None
    if name in ("gpt2", "auto"):
        return tokenizer.gpt2_tokenizer()
    return tokenizer.ByteTokenizer()


class TextData:
    def __init__(self, cfg, model_config=None, *, checkpoint: str | None = None):
        self.seq_len = cfg.seq_len
        self.seed = cfg.seed
        self.batch_size = cfg.batch_size
        files = _files(cfg.text_files)
        tok = _tokenizer(cfg.tokenizer, checkpoint)
        self.tokenizer = tok
        self.vocab_needed = tok.vocab_size
        which = f"auto:{checkpoint}" if cfg.tokenizer == "auto" and checkpoint is not None else \
            ("gpt2" if cfg.tokenizer == "auto" else cfg.tokenizer)
        key = hashlib.sha256("|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
                             .encode() + which.encode()).hexdigest()[:16]
        cached = cache_dir() / "tokens" / f"{key}.npy"
        if cached.is_file():
            ids = np.load(cached)
        else:
            parts = []
            for path in files:
                parts.append(np.asarray(tok.encode(read_utf8_text(path, expected="data.text_files: UTF-8 text")),
                                         np.int32))
                parts.append(np.asarray([tok.eos_id if tok.eos_id is not None else 0], np.int32))
            ids = np.concatenate(parts)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp.npy")
            np.save(tmp, ids)
            tmp.replace(cached)
        n = (len(ids) - 1) // self.seq_len
        if n < 2:
            raise ValueError(f"data.text_files hold {len(ids)} tokens: too few for data.seq_len={self.seq_len}")
        self.windows = ids[: n * self.seq_len + 1]
        self.num_eval = max(1, n // 20)
        self.num_train = n - self.num_eval
        self.enc_len = None
        self.passkey_fraction = float(cfg.passkey_fraction)
        self.passkey_header = cfg.passkey_header
        if self.passkey_fraction:
            from jrt_jax.evals.passkey import training_example

            # Fail at construction, not at some later step, when seq_len leaves no room for the example.
            try:
                training_example(tok, self.seq_len + 1, np.random.default_rng(0), header=self.passkey_header)
            except ValueError as exc:
                raise ValueError(f"data.passkey_fraction: data.seq_len={self.seq_len} is too short for a passkey "
                                 f"example ({exc})") from None

    def _window(self, index: int) -> np.ndarray:
        start = index * self.seq_len
        return self.windows[start : start + self.seq_len + 1]

    def batch(self, step: int, rows, split: int = 0) -> Batch:
        out = []
        for r in rows:
            if split == 0:
                g = step * self.batch_size + r
                if self.passkey_fraction:
                    rng = np.random.default_rng([self.seed, 0x9A55, step, r])
                    if rng.random() < self.passkey_fraction:
                        from jrt_jax.evals.passkey import training_example

                        out.append(np.asarray(training_example(self.tokenizer, self.seq_len + 1, rng,
                                                               header=self.passkey_header), np.int32))
                        continue
                epoch, pos = divmod(g, self.num_train)
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_train)
                out.append(self._window(int(perm[pos])))
            else:
                g = (step * self.batch_size + r) % self.num_eval
                out.append(self._window(self.num_train + g))
        w = np.stack(out)
        return Batch(w[:, :-1].astype(np.int32), w[:, 1:].astype(np.int32), None)
