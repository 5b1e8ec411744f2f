"""`jrt generate` (jrt_jax.generate.cli.main): streamed output, JRT-Prompt flags, clear errors."""

from __future__ import annotations

import pytest

from jrt_jax.generate import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_streams_text(capsys):
    code, out, err = run(capsys, "--preset", "llama-tiny", "--prompt", "Hello", "--max-new-tokens", "6",
                         "--tokenizer", "bytes", "--echo", "--stats", "--no-eos-stop")
    assert code == 0 and out.startswith("Hello") and out.endswith("\n")
    assert "6 tokens" in err and "compilations" in err


def test_generate_sampling_seed_is_reproducible(capsys):
    args = ["--preset", "llama-tiny", "--prompt", "abc", "--prompt", "de", "--max-new-tokens", "8",
            "--temperature", "2.0", "--top-p", "0.9", "--top-k", "50", "--tokenizer", "bytes", "--no-eos-stop"]
    _, a, _ = run(capsys, *args, "--seed", "1")
    _, b, _ = run(capsys, *args, "--seed", "1")
    assert a == b and a.startswith("[0] ") and "\n[1] " in a


def test_prefill_chunk_gives_the_same_text(capsys):
    args = ["--preset", "llama-tiny", "--prompt", "a longer prompt than one chunk", "--prompt", "short",
            "--max-new-tokens", "6", "--tokenizer", "bytes", "--no-eos-stop"]
    code, one, _ = run(capsys, *args)
    code_chunked, chunked, _ = run(capsys, *args, "--prefill-chunk", "8")
    assert code == code_chunked == 0 and chunked == one


def test_jrt_prompt_flags(capsys):
    code, out, _ = run(capsys, "--preset", "llama-tiny", "--jrt-prompt", "--question", "Who?", "--context",
                       "Ann met Bo.", "--max-new-tokens", "4", "--tokenizer", "bytes", "--echo")
    assert code == 0 and out.startswith("Who? Ann met Bo.\nAnn met Bo. Who?")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "gpt-5", "--prompt", "x"], "unknown preset 'gpt-5'"),
        (["--checkpoint", "/nonexistent", "--prompt", "x"], "--model '/nonexistent': no such file or directory"),
        (["--model", "/nonexistent", "--prompt", "x"], "--model '/nonexistent': no such file or directory and not a "
         "named checkpoint"),
        (["--model", "jrt-tiny", "--prompt", "x"], "--model 'jrt-tiny': no such file or directory; jrt-tiny is a "
         "preset (random weights): give --preset jrt-tiny for it, or the path of the checkpoint you meant"),
        (["--preset", "llama-tiny", "--tokenizer", "bytes"], "give --prompt"),
        (["--preset", "llama-tiny", "--jrt-prompt", "--question", "q", "--tokenizer", "bytes"], "--context"),
        (["--preset", "llama-tiny", "--prompt", "x", "--top-p", "0", "--tokenizer", "bytes"], "top_p"),
        (["--preset", "llama-tiny", "--prompt", "x", "--max-new-tokens", "10000000000"],
         "--max-new-tokens must be in [1, 1,000,000]; got 10,000,000,000"),
        (["--preset", "llama-tiny", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens must be in"),
        (["--preset", "llama-tiny", "--prompt", "x", "--stop", ""], "an empty stop string"),
        (["--preset", "llama-tiny", "--prompt", "x", "--prefill-chunk", "0"], "--prefill-chunk must be >= 1"),
        (["--preset", "llama-tiny", "--prompt", "x", "--max-new-tokens", "lots"],
         "argument --max-new-tokens: invalid int value: 'lots' (see jrt generate --help)"),
    ],
)
def test_cli_errors(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("jrt generate: error: ") and message in lines[0]


def test_list_presets(capsys):
    code, out, _ = run(capsys, "--list-presets")
    assert code == 0 and "jrt-360m" in out and "356.58 M" in out and "smollm2-135m" in out
