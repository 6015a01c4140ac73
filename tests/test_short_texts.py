"""Short texts train: a poem, a seven-character sentence. The batch size, sequence length and
validation part are fitted to them with one line on stderr; options the user gave never change."""

import json

import pytest

from test_cli import invoke, one_error_line

POEM = "The quick brown fox jumps over the lazy dog.\n"  # 45 characters
SHORT_NOTE = ("charrnn: the text is short ({n} characters): training with batch size 1 instead of 32, "
              "sequence length {t} instead of 64, no validation part (too short to hold one out)")


def train_and_sample(tmp_path, text: str, *options):
    corpus = tmp_path / "c.txt"
    corpus.write_text(text, encoding="utf-8")
    trained = invoke("train", corpus, "-m", tmp_path / "m", "--hidden-size", "32", "--steps", "60", "-q", *options)
    sample = invoke("sample", "-m", tmp_path / "m", "--seed", text[:1], "-n", "20", "--random-seed", "0")
    return trained, sample


@pytest.mark.parametrize("text", [POEM, "我喜欢学习数学", "床前明月光，疑是地上霜。"])
def test_a_short_text_trains_with_one_line_saying_how(tmp_path, text):
    trained, sample = train_and_sample(tmp_path, text)
    assert trained.exit_code == 0, trained.stderr
    assert trained.stderr.splitlines() == [SHORT_NOTE.format(n=len(text), t=len(text) - 1)]
    info = json.loads(invoke("info", "-m", tmp_path / "m", "--json").stdout)
    assert info["step"] == 60
    assert sample.exit_code == 0, sample.stderr
    generated = sample.stdout.removesuffix("\n")
    assert len(generated) == 20 and set(generated) <= set(text)  # it learned this text's characters


def test_a_paragraph_keeps_a_validation_part(tmp_path):
    text = POEM * 5  # 225 characters: 22 held out, 203 to train on
    trained, sample = train_and_sample(tmp_path, text)
    assert trained.exit_code == 0, trained.stderr
    assert trained.stderr.splitlines() == [
        "charrnn: the text is short (225 characters): training with batch size 3 instead of 32, "
        "22 characters held out for validation"
    ]
    info = json.loads(invoke("info", "-m", tmp_path / "m", "--json").stdout)
    assert info["best_val_bpc"] is not None  # validated on the held-out part
    assert sample.exit_code == 0


def test_a_text_long_enough_gets_no_note(tmp_path):
    trained, _ = train_and_sample(tmp_path, POEM * 60)  # 2,700 characters: 2,430 to train on >= 32 x 64 + 1
    assert trained.exit_code == 0 and trained.stderr == ""


@pytest.mark.parametrize("text, unit", [("hi!", "characters"), ("数学", "characters"), ("", None)])
def test_a_handful_of_characters_is_refused(tmp_path, text, unit):
    corpus = tmp_path / "c.txt"
    corpus.write_text(text, encoding="utf-8")
    result = invoke("train", corpus, "-m", tmp_path / "m", "--steps", "5")
    assert result.exit_code == 1
    line = one_error_line(result)
    if unit:
        assert line == (f"Error: the text has {len(text)} characters, too few to learn from; "
                        "a text to train on needs at least 5 characters")
    assert not (tmp_path / "m").exists()


def test_words_are_counted_as_words(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("one two", encoding="utf-8")
    result = invoke("train", corpus, "-m", tmp_path / "m", "--level", "word", "--steps", "5")
    assert result.exit_code == 1
    assert "too few to learn from; a text to train on needs at least 5 words" in one_error_line(result)


def test_given_options_are_kept_or_named(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(POEM, encoding="utf-8")
    m = tmp_path / "m"
    both = invoke("train", corpus, "-m", m, "--batch-size", "8", "--seq-len", "16", "--steps", "5")
    assert both.exit_code == 1
    assert one_error_line(both) == (
        "Error: the text has 45 characters, fewer than one batch needs (129 = batch size 8 x sequence length 16 + 1) "
        "with --batch-size 8 and --seq-len 16; give smaller values, or leave them out to have them fitted to the text"
    )
    too_long = invoke("train", corpus, "-m", m, "--seq-len", "100", "--steps", "5")
    assert too_long.exit_code == 1 and "with --seq-len 100;" in one_error_line(too_long)
    held = invoke("train", corpus, "-m", m, "--val-fraction", "0.95", "--steps", "5")
    assert held.exit_code == 1
    assert one_error_line(held) == (
        "Error: the text has 45 characters; --val-fraction 0.95 holds out 43 and leaves 2 to train on, fewer "
        "than 5; give a smaller --val-fraction, or leave it out"
    )
    assert not m.exists()
    kept = invoke("train", corpus, "-m", m, "--batch-size", "4", "--hidden-size", "16", "--steps", "3", "-q")
    assert kept.exit_code == 0, kept.stderr
    assert kept.stderr.splitlines() == [
        "charrnn: the text is short (45 characters): training with sequence length 11 instead of 64, "
        "no validation part (too short to hold one out)"
    ]
    saved = json.loads(invoke("info", "-m", m, "--json").stdout)
    assert saved["step"] == 3
    resumed = invoke("train", corpus, "-m", m, "--resume", "--steps", "2", "-q")  # the fitted settings are the run's
    assert resumed.exit_code == 0 and resumed.stderr == "", resumed.stderr
