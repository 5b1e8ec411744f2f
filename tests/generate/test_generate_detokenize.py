"""Streamed detokenization: the incremental text equals full decoding after every token, on random streams that
split multi-byte UTF-8 characters across tokens, for byte, byte-level BPE and SentencePiece-style decoders; stop
strings behave as with full decoding; the work per token does not grow with the stream."""

from __future__ import annotations

import random
import time

import pytest

from jrt_jax.generate.stopping import IncrementalDetokenizer, TextTracker
from jrt_jax.tokenizer import ByteTokenizer

CHARS = "aZ09 .\n" + "éßø" + "€中文ᚠ" + "😀🎉𝄞"  # 1-, 2-, 3- and 4-byte UTF-8


def byte_stream(rng: random.Random, n: int) -> list[int]:
    """Byte ids of random text (characters split into single bytes), with invalid bytes and specials mixed in."""
    out = []
    while len(out) < n:
        r = rng.random()
        if r < 0.05:
            out.append(rng.choice([0xFF, 0xC0, 0x80, 0xBF, 0xF8]))  # never valid / lone continuation
        elif r < 0.08:
            out.append(rng.choice([256, 257]))  # specials: decode to nothing
        elif r < 0.12:
            out += list(rng.choice(CHARS[7:]).encode())[: rng.randint(1, 3)]  # truncated multi-byte char
        else:
            out += list(rng.choice(CHARS).encode())
    return out[:n]


def _naive_tracker_run(detokenize, tokens, stops):
    """The previous TextTracker: full decoding and a whole-text stop-string search after every token."""
    ids = []
    for k, t in enumerate(tokens):
        ids.append(t)
        text = detokenize(ids)
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            return text[:cut], k
    return detokenize(ids), None


def _check_stream(detokenize, tokens):
    d = IncrementalDetokenizer(detokenize)
    for k, t in enumerate(tokens):
        d.add(t)
        want = detokenize(tokens[: k + 1])
        assert d.text == want, (k, tokens[max(0, k - 8): k + 1], d.text[-20:], want[-20:])
        assert len(d) == len(want)
    return d


def test_byte_tokenizer_streams_equal_full_decoding():
    tok = ByteTokenizer()
    for seed in range(120):
        rng = random.Random(seed)
        d = _check_stream(tok.decode, byte_stream(rng, rng.randint(1, 400)))
        assert d.rewinds == 0


def _byte_level_tokenizer(rng: random.Random):
    """A `tokenizers` byte-level BPE whose vocabulary holds every byte plus random byte strings cut at arbitrary
    offsets of UTF-8 text (so tokens start and end inside characters), decoded by the ByteLevel decoder."""
    from tokenizers import Tokenizer, decoders, models

    def bytes_to_unicode():
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        return dict(zip(bs, map(chr, cs)))

    table = bytes_to_unicode()
    pieces = {bytes([b]) for b in range(256)}
    text = "".join(rng.choice(CHARS) for _ in range(400)).encode()
    while len(pieces) < 600:
        i = rng.randrange(len(text))
        pieces.add(text[i:i + rng.randint(2, 6)])
    pieces = sorted(pieces)
    vocab = {"".join(table[b] for b in p): i for i, p in enumerate(pieces)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.decoder = decoders.ByteLevel()
    return tok, len(pieces)


def test_byte_level_bpe_streams_equal_full_decoding():
    rng = random.Random(7)
    tok, size = _byte_level_tokenizer(rng)

    def decode(ids):
        return tok.decode(list(ids), skip_special_tokens=False)

    for seed in range(60):
        r = random.Random(100 + seed)
        d = _check_stream(decode, [r.randrange(size) for _ in range(r.randint(1, 300))])
        assert d.rewinds == 0


def _sentencepiece_tokenizer():
    """A Llama-style tokenizer.json decoder: ▁ → space, byte-fallback tokens <0xNN>, fused, one leading space
    stripped (the first token's; so decoding a window alone differs from decoding it in context)."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    for word in ["▁the", "▁cat", "s", "▁", "é", "▁€", "中", "▁sat", "ing", "\n", "▁é"]:
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<0x00>"))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok, vocab


@pytest.mark.parametrize("garbage", [0.0, 0.1])
def test_sentencepiece_style_streams_equal_full_decoding(garbage):
    """Words, multi-byte characters spelled as byte-fallback tokens (adjacent ones form one group, which the
    decoder shows as U+FFFD per byte while it is not valid UTF-8) and, with `garbage`, invalid bytes."""
    tok, vocab = _sentencepiece_tokenizer()
    words = [i for w, i in vocab.items() if not w.startswith("<0x")]

    def decode(ids):
        return tok.decode(list(ids), skip_special_tokens=False)

    rewinds = 0
    for seed in range(60):
        rng = random.Random(seed)
        tokens = []
        while len(tokens) < 200:
            r = rng.random()
            if r < garbage:
                tokens.append(rng.choice([0xFF, 0x80, 0x41, 0xC3]))
            elif r < 0.3:
                tokens += list(rng.choice(CHARS[7:]).encode())
            else:
                tokens.append(rng.choice(words))
        rewinds += _check_stream(decode, tokens).rewinds
    print(f"byte-fallback groups rewritten by the decoder: {rewinds} rewinds over 60 streams")


def test_decoder_rewriting_older_text_is_followed():
    tok, vocab = _sentencepiece_tokenizer()

    def decode(ids):
        return tok.decode(list(ids), skip_special_tokens=False)

    # A byte-fallback group that is valid ("AB") and then turns invalid: the decoder rewrites "AB" to U+FFFD x 3.
    d = _check_stream(decode, [vocab["▁cat"], 0x41, 0x42, 0xE2, vocab["s"], 0x41])
    assert d.rewinds >= 1 and d.text == "cat\ufffd\ufffd\ufffdsA"


def _llama2_style_tokenizer():
    """A Llama-2-style tokenizer built in-test: a BPE with byte fallback whose ids are <unk>, <s>, </s>, then the
    256 byte tokens <0x00>…<0xFF> (ids 3…258), then a few words; the Llama-2 decoder (▁ → space, ByteFallback,
    Fuse, Strip one leading space)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for word in ["▁the", "▁cat", "s", "▁", "é", "▁€", "中", "▁sat", "ing", "▁é", "▁▁", "a", "t", "at"]:
        vocab[word] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "▁"), ("a", "t")], byte_fallback=True,
                               unk_token="<unk>"))
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok, vocab


def _byte_heavy_stream(rng: random.Random, vocab: dict, n: int) -> list[int]:
    """Random ids of a `_llama2_style_tokenizer`: any id at all, runs of byte tokens spelling whole, truncated or
    invalid UTF-8 (control bytes, spaces, lone continuations, 0xFF), words and specials."""
    words = [i for w, i in vocab.items() if not w.startswith("<")]
    out = []
    while len(out) < n:
        r = rng.random()
        if r < 0.25:
            out.append(rng.randrange(len(vocab)))
        elif r < 0.45:
            out += [3 + b for b in rng.choice(CHARS).encode()]
        elif r < 0.55:
            out += [3 + b for b in rng.choice(CHARS[7:]).encode()][: rng.randint(1, 3)]
        elif r < 0.65:
            out.append(3 + rng.choice([0x00, 0x01, 0x1B, 0x20, 0x7F, 0x80, 0xBF, 0xC0, 0xC3, 0xE2, 0xF0, 0xFF]))
        elif r < 0.7:
            out.append(rng.randrange(3))
        else:
            out.append(rng.choice(words))
    return out[:n]


def _stream(detokenize, tokens, stops=()):
    """Stream `tokens` through a TextTracker: (the pieces of every `add`, the `flush`); checks on the way that
    what was emitted is always a prefix of the full decoding of the whole stream (never taken back)."""
    whole = detokenize(tokens)
    tr = TextTracker(detokenize, stops)
    pieces = []
    for t in tokens:
        pieces.append(tr.add(t))
        assert whole.startswith("".join(pieces)), (tokens, pieces)
    return pieces, tr.flush()


@pytest.mark.parametrize("skip_special", [False, True])
def test_streamed_byte_fallback_text_equals_full_decoding(skip_special):
    """Issue 25: with a byte-fallback decoder a later invalid byte rewrites a whole group of byte tokens as one
    U+FFFD per byte, so streaming the group's text (raw control bytes, "é", a space) as it arrived differed from
    the full decode. The concatenation of the streamed pieces and the flush must equal ``decode(all tokens)``
    and nothing emitted may ever differ from it — for random streams, with specials decoded or skipped (skipped,
    the bytes around a special join into one group). The detokenizer's text is exact after every token."""
    tok, vocab = _llama2_style_tokenizer()

    def decode(ids):
        return tok.decode(list(ids), skip_special_tokens=skip_special)

    streamed_early = 0
    for seed in range(150):
        rng = random.Random(1000 + seed)
        tokens = _byte_heavy_stream(rng, vocab, rng.randint(1, 120))
        pieces, tail = _stream(decode, tokens)
        assert "".join(pieces) + tail == decode(tokens), seed
        streamed_early += bool("".join(pieces))
        if not skip_special or seed % 5 == 0:
            _check_stream(decode, tokens)
    assert streamed_early > 100  # text is still streamed, not all held to the end


def test_streaming_holds_text_that_a_later_byte_can_rewrite():
    tok, vocab = _llama2_style_tokenizer()

    def decode(ids):
        return tok.decode(list(ids), skip_special_tokens=False)

    b = lambda x: 3 + x  # the id of byte token <0xNN>
    assert IncrementalDetokenizer(decode).probe == b(0x80)  # the first id that decodes alone to U+FFFD
    # a control byte then an invalid byte: nothing before the end, then two U+FFFD (not "\x01" + U+FFFD)
    assert _stream(decode, [b(0x01), b(0x80)]) == (["", ""], "\ufffd\ufffd")
    # a word is final at once; "é" spelled in bytes is held, and a stray continuation byte rewrites it
    assert _stream(decode, [vocab["▁cat"], b(0xC3), b(0xA9), b(0x80)]) == (["cat", "", "", ""], "\ufffd" * 3)
    # a following word ends the byte group: everything is final, nothing is left for the flush
    assert _stream(decode, [vocab["▁cat"], b(0xC3), b(0xA9), vocab["s"]]) == (["cat", "", "", "és"], "")
    # a lone space byte after a word whose leading space the decoder would strip alone, then rewritten
    tokens = [vocab["▁cat"], vocab["▁"], b(0x20), b(0xC4)]
    assert decode(tokens) == "cat \ufffd\ufffd"
    assert _check_stream(decode, tokens).text == decode(tokens)
    assert "".join(_stream(decode, tokens)[0]) + _stream(decode, tokens)[1] == decode(tokens)


@pytest.mark.parametrize("stops", [["\n"], ["at", " c"], ["\ufffd\ufffd"]])
def test_streamed_byte_fallback_with_stop_strings_matches_full_decoding(stops):
    """With stop strings the streamed text (never containing a stop string) plus the flush is the full decoding
    cut before the first stop string, as the previous whole-text search found it."""
    tok, vocab = _llama2_style_tokenizer()

    def decode(ids):
        return tok.decode(list(ids), skip_special_tokens=False)

    for seed in range(80):
        rng = random.Random(2000 + seed)
        tokens = _byte_heavy_stream(rng, vocab, rng.randint(1, 100))
        want_text, want_stop = _naive_tracker_run(decode, tokens, stops)
        tr = TextTracker(decode, stops)
        out, stop_at = "", None
        for k, t in enumerate(tokens):
            out += tr.add(t)
            assert want_text.startswith(out) and not any(s in out for s in stops), (seed, k)
            if tr.stopped:
                stop_at = k
                break
        out += tr.flush()
        assert (out, stop_at) == (want_text, want_stop), seed


def test_streamed_text_equals_full_decoding_for_other_decoders():
    """Byte-level BPE and `ByteTokenizer` (decoders that never rewrite): streamed pieces + flush = full decode,
    and a stream that ends in a complete character leaves nothing for the flush."""
    tok, size = _byte_level_tokenizer(random.Random(11))

    def decode(ids):
        return tok.decode(list(ids), skip_special_tokens=False)

    byte_tok = ByteTokenizer()
    for seed in range(60):
        rng = random.Random(3000 + seed)
        tokens = [rng.randrange(size) for _ in range(rng.randint(1, 150))]
        pieces, tail = _stream(decode, tokens)
        assert "".join(pieces) + tail == decode(tokens)
        tokens = byte_stream(rng, rng.randint(1, 200))
        pieces, tail = _stream(byte_tok.decode, tokens)
        assert "".join(pieces) + tail == byte_tok.decode(tokens)
    assert _stream(byte_tok.decode, list("héllo".encode())) == (["h", "", "é", "l", "l", "o"], "")


@pytest.mark.parametrize("stops", [["\n"], ["€€", "ab"], ["😀a", "é"], ["zzzz"]])
def test_text_tracker_matches_full_decoding_with_stop_strings(stops):
    tok = ByteTokenizer()
    for seed in range(80):
        rng = random.Random(seed)
        tokens = byte_stream(rng, rng.randint(1, 300))
        want_text, want_stop = _naive_tracker_run(tok.decode, tokens, stops)
        tr = TextTracker(tok.decode, stops)
        out, stop_at = "", None
        for k, t in enumerate(tokens):
            out += tr.add(t)
            assert want_text.startswith(out), (seed, k)  # nothing emitted is ever taken back or cut
            assert not any(s in out for s in stops)  # never emits a stop string
            if tr.stopped:
                stop_at = k
                break
        out += tr.flush()
        assert stop_at == want_stop, (seed, stop_at, want_stop)
        assert tr.text == want_text and out == want_text


def _work(detokenize, tokens) -> tuple[int, float]:
    """(token ids passed to the decoder, seconds) to stream `tokens` through a TextTracker."""
    seen = 0

    def counting(ids):
        nonlocal seen
        seen += len(ids)
        return detokenize(ids)

    tr = TextTracker(counting, ["\n\n\n"])
    t0 = time.perf_counter()
    for t in tokens:
        tr.add(t)
    tr.flush()
    return seen, time.perf_counter() - t0


@pytest.mark.parametrize("kind", ["text", "garbage", "split_chars", "specials"])
def test_work_per_token_is_bounded(kind):
    tok = ByteTokenizer()
    rng = random.Random(3)
    n = 20000
    if kind == "text":
        tokens = byte_stream(rng, n)
    elif kind == "garbage":
        tokens = [0xFF] * n  # every prefix ends in U+FFFD: the window must still be split
    elif kind == "split_chars":
        tokens = list(("€" * n).encode())[:n]
    else:
        tokens = [256, 257] * (n // 2)
    seen, seconds = _work(tok.decode, tokens)
    print(f"{kind}: {seen / n:.1f} decoded ids per token, {n / seconds:,.0f} tokens/s")
    assert seen <= 40 * n


def test_streaming_2000_tokens_is_faster_than_full_decoding():
    """The issue's case: 2000 streamed tokens through a byte-level BPE; the old tracker re-decoded everything."""
    tok, size = _byte_level_tokenizer(random.Random(1))
    rng = random.Random(2)
    tokens = [rng.randrange(size) for _ in range(2000)]

    def decode(ids):
        return tok.decode(list(ids), skip_special_tokens=False)

    t0 = time.perf_counter()
    ids = []
    for t in tokens:  # what the previous TextTracker did per token
        ids.append(t)
        decode(ids)
    full = time.perf_counter() - t0
    _, incremental = _work(decode, tokens)
    print(f"2000 tokens: full re-decoding {2000 / full:,.0f} tok/s, incremental {2000 / incremental:,.0f} tok/s")
    assert incremental < full
