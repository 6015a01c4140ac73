"""Tokenizer: code points not bytes, deterministic ids, unknowns, round trips, vectorized encoding."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.tokenizer import UNKNOWN, WORD_SCHEME, Tokenizer, count_tokens, split_words, split_words_v1, token_boundary

from samples import CHINESE, ENGLISH, MIXED


def test_code_points_not_bytes():
    tok = Tokenizer.fit("我喜欢学习数学")
    assert len(tok.encode("我喜欢学习数学")) == 7
    assert tok.vocab_size == 1 + 6  # 学 appears twice


@pytest.mark.parametrize("text", [ENGLISH, CHINESE, MIXED, "🙂🙃👍🏽 e\u0301"])
def test_round_trip(text):
    tok = Tokenizer.fit(text)
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert tok.decode(ids) == text
    assert (ids > 0).all()


def test_ids_are_sorted_by_code_point_whatever_the_order():
    a = Tokenizer.fit("cab我")
    b = Tokenizer.fit("我bca")
    assert a.tokens == b.tokens == [UNKNOWN, "a", "b", "c", "我"]


def test_ids_are_the_same_in_another_process():
    tok = Tokenizer.fit(MIXED)
    code = (
        "import json,sys; from charrnn.tokenizer import Tokenizer;"
        "t=Tokenizer.fit(sys.stdin.read()); print(json.dumps(t.encode(sys.argv[1]).tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, MIXED], input=MIXED, capture_output=True, text=True,
        encoding="utf-8", check=True, env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert json.loads(out.stdout) == tok.encode(MIXED).tolist()


def test_unknown_characters_map_to_id_zero():
    tok = Tokenizer.fit("abc")
    ids = tok.encode("abxc我")
    assert ids.tolist() == [1, 2, 0, 3, 0]
    assert tok.decode(ids) == f"ab{UNKNOWN}c{UNKNOWN}"
    assert tok.unknown_tokens("abxc我x") == ["x", "我"]


def test_min_count_sends_rare_characters_to_unknown():
    tok = Tokenizer.fit("aaabbc", min_count=2)
    assert tok.tokens == [UNKNOWN, "a", "b"]
    assert tok.encode("c").tolist() == [0]


def test_max_vocab_keeps_the_most_frequent():
    tok = Tokenizer.fit("aaaabbbccd", max_vocab=3)
    assert tok.tokens == [UNKNOWN, "a", "b"]


def test_vectorized_encoder_equals_plain_loop(rng):
    text = "".join(rng.choice(list(MIXED + CHINESE), 5000))
    tok = Tokenizer.fit(text[:2500])
    index = {t: i for i, t in enumerate(tok.tokens)}
    loop = [index.get(ch, 0) for ch in text]
    assert tok.encode(text).tolist() == loop


def test_counts_over_chunks_equal_counts_of_the_whole():
    text = MIXED * 3 + CHINESE
    whole = count_tokens([text])
    chunks = count_tokens([text[i : i + 7] for i in range(0, len(text), 7)])
    assert whole == chunks


def test_word_level_attaches_the_space_before_a_word_to_it():
    assert split_words("Hello, world 42!") == ["Hello", ",", " world", " 4", "2", "!"]
    assert split_words("I love you.") == ["I", " love", " you", "."]
    assert split_words("I love you ,too") == ["I", " love", " you", " ,", "too"]


def test_word_level_whitespace_runs_and_newlines():
    assert split_words("a  b") == ["a", " ", " b"]  # the last space goes with the word
    assert split_words("a\nb") == ["a", "\n", "b"]  # a newline is never glued to a word
    assert split_words("a.\n\nThe end") == ["a", ".", "\n", "\n", "The", " end"]  # one token per line end
    assert split_words("a\n  b") == ["a", "\n", " ", " b"]
    assert split_words("a \r\n\t\n") == ["a", " \r\n", "\t\n"]
    assert split_words("a \tb \n") == ["a", " \t", "b", " \n"]
    assert split_words("end ") == ["end", " "]


def test_word_level_contractions_digits_marks():
    assert split_words("don't we'll I'M o'er") == ["don", "'t", " we", "'ll", " I", "'M", " o", "'", "er"]
    assert split_words("it\u2019s") == ["it", "\u2019s"]
    assert split_words("in 1999") == ["in", " 1", "9", "9", "9"]  # a number is never unknown
    assert split_words("cafe\u0301 नमस्ते") == ["cafe\u0301", " नमस्ते"]  # accents and vowel signs stay in the word
    assert split_words("x_y") == ["x", "_", "y"]


def test_word_level_keeps_each_ideograph_and_kana_alone():
    assert split_words("我喜欢学习 math") == ["我", "喜", "欢", "学", "习", " math"]
    assert split_words("math 我") == ["math", " ", "我"]  # no " 我": one token per ideograph
    assert split_words("我喜欢猫。你呢？") == ["我", "喜", "欢", "猫", "。", "你", "呢", "？"]
    assert split_words("私はりんごが好き") == ["私", "は", "り", "ん", "ご", "が", "好", "き"]


def test_scheme_1_splits_as_before():
    assert split_words_v1("Hello, world 42!") == ["Hello", ",", " ", "world", " ", "42", "!"]
    assert split_words_v1("我喜欢学习 math") == ["我", "喜", "欢", "学", "习", " ", "math"]


def test_a_word_level_text_has_fewer_tokens_and_predicts_words():
    new, old = split_words(ENGLISH), split_words_v1(ENGLISH)
    assert len(new) < 0.7 * len(old)
    assert " " not in new[:-1]  # every single space went with a word (ENGLISH ends with one)


@pytest.mark.parametrize("text", [ENGLISH, CHINESE, MIXED])
def test_word_level_round_trip(text):
    tok = Tokenizer.fit(text, level="word")
    assert tok.level == "word"
    assert tok.decode(tok.encode(text)) == text


def test_word_level_unknown_and_max_vocab():
    tok = Tokenizer.fit("the cat the dog the end", level="word", max_vocab=3)
    assert tok.tokens == [UNKNOWN, " cat", " the"]  # " the" twice, then ties by code point
    assert tok.decode(tok.encode("the cat the bird")) == f"{UNKNOWN} cat the{UNKNOWN}"


def test_word_vocabulary_remembers_its_scheme():
    tok = Tokenizer.fit("the cat", level="word")
    assert tok.scheme == WORD_SCHEME == 2
    assert tok.to_dict()["scheme"] == 2
    assert "scheme" not in Tokenizer.fit("abc").to_dict() and Tokenizer.fit("abc").scheme is None


def test_a_word_vocabulary_saved_before_schemes_splits_as_it_did():
    # exactly what to_dict wrote before word schemes existed
    old = {"level": "word", "unknown": UNKNOWN, "tokens": sorted(set(split_words_v1(ENGLISH)))}
    tok = Tokenizer.from_dict(json.loads(json.dumps(old)))
    assert tok.scheme == 1
    assert tok.decode(tok.encode(ENGLISH)) == ENGLISH
    assert [tok.tokens[i] for i in tok.encode("the fox. the")] == ["the", " ", "fox", ".", " ", "the"]
    assert tok.to_dict() == {**old, "scheme": 1}
    assert Tokenizer.from_dict(tok.to_dict()) == tok
    assert tok != Tokenizer(tok.tokens, "word")  # the same tokens split another way


def test_an_unknown_scheme_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="scheme 3 is unknown to this charrnn.*upgrade charrnn"):
        Tokenizer.from_dict({"level": "word", "scheme": 3, "tokens": ["a"]})


@pytest.mark.parametrize("level", ["char", "word"])
def test_serializes_to_json_and_back(level):
    tok = Tokenizer.fit(MIXED, level=level)
    d = json.loads(json.dumps(tok.to_dict()))
    assert Tokenizer.from_dict(d) == tok


@pytest.mark.parametrize(
    "bad",
    [None, {}, {"tokens": "abc"}, {"tokens": ["b", "a"]}, {"tokens": ["a", "a"]},
     {"tokens": ["ab"], "level": "char"}, {"tokens": ["a"], "level": "byte"}, {"tokens": [""]},
     {"tokens": ["a"], "level": "word", "scheme": "2"}, {"tokens": ["a"], "level": "word", "scheme": [2]},
     {"tokens": ["a"], "level": "word", "scheme": True}, {"tokens": ["a"], "level": "char", "scheme": 1}],
)
def test_from_dict_refuses_malformed(bad):
    with pytest.raises(ValueError):
        Tokenizer.from_dict(bad)


def test_bad_arguments():
    with pytest.raises(ValueError):
        Tokenizer.fit("abc", level="byte")
    with pytest.raises(ValueError):
        Tokenizer.fit("abc", min_count=0)


no_surrogates = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(no_surrogates)
def test_any_text_round_trips_at_char_level(text):
    tok = Tokenizer.fit(text)
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(no_surrogates)
def test_any_text_round_trips_at_word_level(text):
    assert "".join(split_words(text)) == text
    assert "".join(split_words_v1(text)) == text
    tok = Tokenizer.fit(text, level="word")
    assert tok.decode(tok.encode(text)) == text


# text rich in what the word rules care about: spaces, newlines, apostrophes, digits, marks, ideographs
wordy = st.text(st.sampled_from(list(" \n\t  ab'\u2019sTl1\u0301,.我学はカ🙂")) | st.characters(exclude_categories=("Cs",)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(wordy, st.data())
def test_text_cut_at_a_token_boundary_splits_as_the_whole(text, data):
    """Both schemes: the pieces on either side of ``token_boundary`` give the tokens of the whole."""
    cut = token_boundary(text)
    assert 0 <= cut <= len(text)
    for split in (split_words, split_words_v1):
        assert split(text[:cut]) + split(text[cut:]) == split(text)
    # and any earlier boundary too: cut the head again
    head = text[: data.draw(st.integers(0, cut))]
    cut2 = token_boundary(head)
    for split in (split_words, split_words_v1):
        assert split(text[:cut2]) + split(text[cut2:]) == split(text)


@settings(max_examples=200, deadline=None)
@given(wordy)
def test_text_read_line_by_line_splits_as_the_whole(text):
    """No token spans a line end, so scoring or predicting line by line sees the tokens of the whole."""
    lines = text.split("\n")
    pieces = [line + "\n" for line in lines[:-1]] + [lines[-1]]
    assert [w for piece in pieces for w in split_words(piece)] == split_words(text)


@pytest.mark.parametrize("text", [ENGLISH, CHINESE, MIXED])
def test_samples_round_trip_at_word_level_in_both_schemes(text):
    for split in (split_words, split_words_v1):
        assert "".join(split(text)) == text


@settings(max_examples=100, deadline=None)
@given(no_surrogates, no_surrogates)
def test_encoding_unseen_text_matches_loop(train, text):
    tok = Tokenizer.fit(train)
    index = {t: i for i, t in enumerate(tok.tokens)}
    assert tok.encode(text).tolist() == [index.get(ch, 0) if ch != UNKNOWN else 0 for ch in text]
