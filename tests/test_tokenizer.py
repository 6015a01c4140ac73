"""Tokenizer: code points not bytes, deterministic ids, unknowns, round trips, vectorized encoding."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.tokenizer import UNKNOWN, Tokenizer, count_tokens, split_words

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


def test_word_level_splits_words_and_cjk_ideographs():
    assert split_words("Hello, world 42!") == ["Hello", ",", " ", "world", " ", "42", "!"]
    assert split_words("我喜欢学习 math") == ["我", "喜", "欢", "学", "习", " ", "math"]


@pytest.mark.parametrize("text", [ENGLISH, CHINESE, MIXED])
def test_word_level_round_trip(text):
    tok = Tokenizer.fit(text, level="word")
    assert tok.level == "word"
    assert tok.decode(tok.encode(text)) == text


def test_word_level_unknown_and_max_vocab():
    tok = Tokenizer.fit("the cat the dog the end", level="word", max_vocab=3)
    assert tok.tokens == [UNKNOWN, " ", "the"]
    assert tok.decode(tok.encode("the bird")) == f"the {UNKNOWN}"


@pytest.mark.parametrize("level", ["char", "word"])
def test_serializes_to_json_and_back(level):
    tok = Tokenizer.fit(MIXED, level=level)
    d = json.loads(json.dumps(tok.to_dict()))
    assert Tokenizer.from_dict(d) == tok


@pytest.mark.parametrize(
    "bad",
    [None, {}, {"tokens": "abc"}, {"tokens": ["b", "a"]}, {"tokens": ["a", "a"]},
     {"tokens": ["ab"], "level": "char"}, {"tokens": ["a"], "level": "byte"}, {"tokens": [""]}],
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
    tok = Tokenizer.fit(text, level="word")
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(no_surrogates, no_surrogates)
def test_encoding_unseen_text_matches_loop(train, text):
    tok = Tokenizer.fit(train)
    index = {t: i for i, t in enumerate(tok.tokens)}
    assert tok.encode(text).tolist() == [index.get(ch, 0) if ch != UNKNOWN else 0 for ch in text]
