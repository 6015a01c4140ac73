"""Scoring lines: the batched scorer equals a slow per-line loop, --context adds up to evaluate,
and ``charrnn score`` behaves like the other commands (stdin, -, files, JSON, bad bytes, pipes)."""

import json
import math
import signal
import subprocess
import sys

import numpy as np
import pytest

from charrnn.cells import build_model
from charrnn.checkpoint import Checkpoint, save_checkpoint
from charrnn.evaluate import evaluate
from charrnn.model import RNN
from charrnn.sampling import start_token
from charrnn.score import LineScorer, length_batches, score_lines, split_lines
from charrnn.tokenizer import Tokenizer

from samples import CHINESE, ENGLISH, MIXED
from test_cli import env, invoke, one_error_line

ENGLISH_LINES = "The quick brown fox jumps.\nover the lazy dog\n\nA dog. A fox!\nfox fox fox fox fox fox fox fox fox fox fox\n"
CHINESE_LINES = "我喜欢学习数学。\n我喜欢学习语言，\n\n也喜欢写字。\n学\n"
TEXT = ENGLISH_LINES + CHINESE_LINES + MIXED  # MIXED has a tab and ends without a newline
VOCAB = ENGLISH + CHINESE + MIXED + ENGLISH_LINES + CHINESE_LINES


def make_model(text=VOCAB, H=12, seed=0, level="char", cell="rnn"):
    tok = Tokenizer.fit(text, level=level)
    m = build_model({"cell": cell, "vocab_size": tok.vocab_size, "hidden_size": H}, seed=seed, dtype=np.float64)
    m.theta[...] = np.random.default_rng(seed).normal(0, 0.4, m.theta.shape)  # sharper than init
    return m, tok


def slow_line_scores(m, tok, lines, context=False):
    """Obviously correct: one token at a time with model.step, each line from the start token."""
    results, s, last = [], None, start_token(tok)
    for line in lines:
        if not context:
            s, last = None, start_token(tok)
        nats, ids = 0.0, tok.encode(line)
        for y in ids:
            p, s = m.step(np.array([last]), s)
            nats -= math.log(p[0, y])
            last = y
        results.append((nats / math.log(2), len(ids), int((ids == 0).sum())))
    return results


def assert_same(fast, slow):
    assert len(fast) == len(slow)
    for r, (bits, tokens, unknown) in zip(fast, slow):
        assert r.bits == pytest.approx(bits, rel=1e-9, abs=1e-9)
        assert (r.tokens, r.unknown_tokens) == (tokens, unknown)


# -- the library ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [ENGLISH_LINES, CHINESE_LINES, TEXT])
@pytest.mark.parametrize("max_streams, max_floats", [(256, 1 << 21), (3, 1 << 21), (1, 1 << 21), (4, 200)])
def test_batched_equals_a_slow_per_line_loop(text, max_streams, max_floats):
    """Whatever the batching (max_floats=200 also cuts lines into chunks of a few steps)."""
    m, tok = make_model()
    lines = split_lines(text)
    fast = LineScorer(m, tok, max_streams=max_streams, max_floats=max_floats).score(lines)
    assert [r.line for r in fast] == lines
    assert_same(fast, slow_line_scores(m, tok, lines))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_other_cells_and_word_level(cell):
    m, tok = make_model(cell=cell, H=8)
    lines = split_lines(TEXT)
    assert_same(LineScorer(m, tok, max_streams=2).score(lines), slow_line_scores(m, tok, lines))
    m, tok = make_model(level="word", H=8)
    lines = split_lines(TEXT)
    assert_same(list(score_lines(m, tok, lines, block_lines=3)), slow_line_scores(m, tok, lines))


def test_the_class_factored_head():
    from charrnn.output import frequency_classes

    tok = Tokenizer.fit(VOCAB)
    counts = np.bincount(tok.encode(VOCAB), minlength=tok.vocab_size)
    m = RNN(tok.vocab_size, 10, dtype=np.float64, output={"output": "classes", "class_of": frequency_classes(counts, 5)})
    m.theta[...] = np.random.default_rng(3).normal(0, 0.4, m.theta.shape)
    lines = split_lines(TEXT)
    assert_same(LineScorer(m, tok, max_streams=4).score(lines), slow_line_scores(m, tok, lines))


@pytest.mark.parametrize("block_lines", [1, 4, 1000])
@pytest.mark.parametrize("level", ["char", "word"])
def test_context_lines_add_up_to_evaluate_with_the_start_token_in_front(block_lines, level):
    m, tok = make_model(level=level)
    lines = split_lines(TEXT)
    results = list(score_lines(m, tok, lines, context=True, block_lines=block_lines))
    assert_same(results, slow_line_scores(m, tok, lines, context=True))
    ids = np.concatenate([[start_token(tok)], tok.encode(TEXT)])
    whole = evaluate(m, tok, ids, num_streams=1, seq_len=7)
    assert sum(r.bits for r in results) == pytest.approx(whole["bits_per_char"] * whole["chars"], rel=1e-10)
    assert sum(r.tokens for r in results) == whole["tokens"]
    assert sum(r.unknown_tokens for r in results) == whole["unknown_tokens"]


def test_empty_lines_unknown_characters_and_a_last_line_without_newline():
    m, tok = make_model(text="abc\n")
    results = LineScorer(m, tok).score(["\n", "ab🙂c\n", "zz", ""])
    assert [(r.tokens, r.unknown_tokens) for r in results] == [(1, 0), (5, 1), (2, 2), (0, 0)]
    assert results[0].bits > 0 and results[0].bits_per_char == results[0].bits
    assert results[3].bits == 0 and results[3].bits_per_char == 0
    assert LineScorer(m, tok).score([]) == []
    assert_same(results, slow_line_scores(m, tok, ["\n", "ab🙂c\n", "zz", ""]))


def test_a_line_does_not_depend_on_its_neighbours_by_default():
    m, tok = make_model()
    alone = LineScorer(m, tok).score(["我喜欢学习数学。\n"])[0].bits
    among = LineScorer(m, tok).score(split_lines(TEXT) + ["我喜欢学习数学。\n"])[-1].bits
    assert among == pytest.approx(alone, rel=1e-12)


def test_length_batches_bound_streams_and_padding():
    lengths = np.sort(np.random.default_rng(0).integers(1, 500, 3000))
    batches = length_batches(lengths, max_streams=64)
    assert batches[0].start == 0 and batches[-1].stop == len(lengths)
    assert all(a.stop == b.start for a, b in zip(batches, batches[1:]))
    for b in batches:
        run = lengths[b]
        assert 1 <= len(run) <= 64 and run[-1] <= max(2 * run[0], run[0] + 16)


def test_split_lines_keeps_every_character():
    for text in ["", "a", "a\n", "a\r\nb", "\n\n", TEXT]:
        lines = split_lines(text)
        assert "".join(lines) == text and all(line.count("\n") <= 1 for line in lines)
    assert split_lines("a\rb\n\nc") == ["a\rb\n", "\n", "c"]


def test_a_tokenizer_that_does_not_match_the_model_is_refused():
    m, _ = make_model()
    with pytest.raises(ValueError, match="tokens but the model predicts"):
        LineScorer(m, Tokenizer.fit("ab"))


# -- the command line -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A float64 checkpoint file of the test model, and its tokenizer's scorer for reference."""
    m, tok = make_model()
    path = tmp_path_factory.mktemp("score") / "model.npz"
    save_checkpoint(path, Checkpoint(m, tok, meta={"step": 1}))
    return path, m, tok


def test_cli_prints_bits_bits_per_char_and_the_line(model_file, tmp_path):
    path, m, tok = model_file
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    result = invoke("score", tmp_path / "a.txt", "-m", path)
    assert result.exit_code == 0, result.stderr
    rows = [line.split("\t", 2) for line in result.stdout.splitlines()]
    expected = LineScorer(m, tok).score(split_lines(TEXT))
    assert [text for _, _, text in rows] == [r.line.rstrip("\n") for r in expected]
    assert [float(bits) for bits, _, _ in rows] == pytest.approx([r.bits for r in expected], abs=1e-4)
    assert [float(bpc) for _, bpc, _ in rows] == pytest.approx([r.bits_per_char for r in expected], abs=1e-4)
    assert result.stderr == ""


def test_cli_json_keys_stdin_dash_and_several_files(model_file, tmp_path):
    path, m, tok = model_file
    (tmp_path / "en.txt").write_text(ENGLISH_LINES, encoding="utf-8")
    (tmp_path / "zh.txt").write_text(CHINESE_LINES.rstrip("\n"), encoding="utf-8")  # no final newline
    from_stdin = invoke("score", "-m", path, "--json", input=CHINESE_LINES.encode())
    from_dash = invoke("score", "-m", path, "--json", "-", input=CHINESE_LINES.encode())
    assert from_stdin.exit_code == from_dash.exit_code == 0
    assert from_stdin.stdout == from_dash.stdout
    both = invoke("score", "-m", path, "--json", tmp_path / "en.txt", "-", tmp_path / "zh.txt", input="学\n".encode())
    assert both.exit_code == 0, both.stderr
    objects = [json.loads(line) for line in both.stdout.splitlines()]
    assert all(set(o) == {"text", "bits", "bits_per_char", "tokens", "unknown_tokens"} for o in objects)
    texts = ENGLISH_LINES.splitlines() + ["学"] + CHINESE_LINES.splitlines()
    assert [o["text"] for o in objects] == texts
    assert objects[-1]["tokens"] == 1 and objects[-2]["tokens"] == 7  # "学" without, "也喜欢写字。" with its newline
    lines = split_lines(ENGLISH_LINES) + ["学\n"] + split_lines(CHINESE_LINES.rstrip("\n"))
    assert [o["bits"] for o in objects] == pytest.approx([r.bits for r in LineScorer(m, tok).score(lines)], rel=1e-12)


def test_cli_context_adds_up_to_evaluate_of_the_text_after_a_newline(model_file, tmp_path):
    path, _, _ = model_file
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n" + TEXT, encoding="utf-8")
    scored = invoke("score", "-m", path, "--json", "--context", tmp_path / "a.txt")
    assert scored.exit_code == 0, scored.stderr
    bits = sum(json.loads(line)["bits"] for line in scored.stdout.splitlines())
    whole = json.loads(invoke("evaluate", "-m", path, "--json", "--num-streams", "1", tmp_path / "b.txt").stdout)
    assert bits == pytest.approx(whole["bits_per_char"] * whole["chars"], rel=1e-10)


def test_cli_warns_about_unknown_characters(model_file):
    path, _, _ = model_file
    result = invoke("score", "-m", path, "--json", input="fox 🦊\n".encode())
    assert result.exit_code == 0
    assert json.loads(result.stdout)["unknown_tokens"] == 1
    assert "1 scored chars (16.7%) are not in the vocabulary" in one_error_line(result)


def test_cli_invalid_utf8_stops_after_the_good_lines_or_is_replaced(model_file, tmp_path):
    path, _, _ = model_file
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"The fox.\nA dog\n\xff\xfe fox\nover\n")
    result = invoke("score", "-m", path, bad)
    assert result.exit_code == 1
    assert [line.split("\t")[2] for line in result.stdout.splitlines()] == ["The fox.", "A dog"]
    assert one_error_line(result) == (
        f"Error: {bad} is not valid UTF-8 (line 3, byte offset 15); use --encoding-errors replace to go on anyway"
    )
    result = invoke("score", "-m", path, "--json", "--encoding-errors", "replace", bad)
    assert result.exit_code == 0
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["text"] for o in objects] == ["The fox.", "A dog", "\ufffd\ufffd fox", "over"]
    assert objects[2]["unknown_tokens"] == 2
    result = invoke("score", "-m", path, "--json", "--encoding-errors", "ignore", bad)
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()][2] == " fox"
    result = invoke("score", "-m", path, input=b"fox\n\xe4\xb8\n")
    assert "standard input is not valid UTF-8 (line 2, byte offset 4)" in one_error_line(result)


def test_cli_refuses_missing_files_directories_binary_files_and_two_stdins(model_file, tmp_path):
    path, _, _ = model_file
    (tmp_path / "bin.dat").write_bytes(b"fox\nab\0cd\n")
    cases = [
        ((tmp_path / "missing.txt",), "file not found"),
        ((tmp_path,), "is a directory"),
        ((tmp_path / "bin.dat",), "looks like a binary file (NUL byte on line 2, byte offset 6)"),
    ]
    for args, message in cases:
        result = invoke("score", "-m", path, *args)
        assert result.exit_code == 1 and message in one_error_line(result), result.stderr
    result = invoke("score", "-m", path, "-", "-", input=b"fox\n")
    assert result.exit_code == 2 and "standard input (-) can be read only once" in result.stderr


def test_cli_empty_input_prints_nothing(model_file):
    path, _, _ = model_file
    result = invoke("score", "-m", path, input=b"")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


def test_process_into_head_is_quiet(model_file, tmp_path):
    path, _, _ = model_file
    (tmp_path / "many.txt").write_text("The quick brown fox.\n" * 200_000, encoding="utf-8")
    script = (
        f'"{sys.executable}" -m charrnn score -m "{path}" many.txt 2>err.txt | head -n 2 > out.txt; '
        'echo "${PIPESTATUS[0]}" > status.txt'
    )
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env(), timeout=60, check=True)
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 2
    assert (tmp_path / "err.txt").read_text() == ""
    assert (tmp_path / "status.txt").read_text().strip() == "0"


def test_process_scores_each_line_as_it_arrives_and_ctrl_c_exits_130(model_file):
    path, _, _ = model_file
    proc = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "score", "-m", str(path), "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )
    try:
        answers = []
        for line in ("我喜欢", "the fox"):
            proc.stdin.write((line + "\n").encode())
            proc.stdin.flush()
            answers.append(json.loads(proc.stdout.readline().decode("utf-8")))  # before stdin closes
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert [a["text"] for a in answers] == ["我喜欢", "the fox"]
    assert proc.returncode == 130
    assert err.decode().strip() == "charrnn: interrupted"
