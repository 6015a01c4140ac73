"""Evaluation: the vectorized scorer equals a slow per-character loop, metrics relate as they should."""

import math

import numpy as np
import pytest

from charrnn.evaluate import METRICS, evaluate
from charrnn.model import RNN
from charrnn.tokenizer import Tokenizer

from samples import CHINESE, ENGLISH, MIXED


def make_model(text, H=12, seed=0, level="char"):
    tok = Tokenizer.fit(text, level=level)
    m = RNN(tok.vocab_size, H, seed=seed, dtype=np.float64)
    m.theta[...] = np.random.default_rng(seed).normal(0, 0.4, m.theta.shape)  # sharper than init
    return m, tok


def slow_metrics(m, ids, num_streams, lengths=None):
    """Obviously correct: each stream (and the tail) from the zero state, one token at a time.

    ``lengths`` (N,): the characters of text of each token (default: one each).
    """
    lengths = [1] * len(ids) if lengths is None else lengths
    n_pred = len(ids) - 1
    B = min(num_streams, n_pred)
    L = n_pred // B
    segments = [(i * L, (i + 1) * L) for i in range(B)]
    if B * L < n_pred:
        segments.append((B * L, n_pred))
    nats, top1, top5, unknown, chars, unknown_chars = 0.0, 0, 0, 0, 0, 0
    for a, b in segments:
        s = None
        for t in range(a, b):
            p, s = m.step(np.array([ids[t]]), s)
            p, y = p[0], ids[t + 1]
            nats -= math.log(p[y])
            others_at_least = sum(1 for k in range(len(p)) if k != y and p[k] >= p[y])
            top1 += others_at_least < 1
            top5 += others_at_least < 5
            unknown += y == 0
            chars += lengths[t + 1]
            unknown_chars += lengths[t + 1] if y == 0 else 0
    loss = nats / n_pred
    return {
        "loss_nats": loss,
        "bits_per_char": nats / math.log(2) / chars,
        "bits_per_token": loss / math.log(2),
        "perplexity": math.exp(loss),
        "accuracy_top1": top1 / n_pred,
        "accuracy_top5": top5 / n_pred,
        "chars": chars,
        "tokens": n_pred,
        "unknown_chars": unknown_chars,
        "unknown_tokens": unknown,
    }


def assert_same(fast, slow):
    assert set(fast) == set(METRICS)
    for key in METRICS:
        assert fast[key] == pytest.approx(slow[key], rel=1e-10), key


@pytest.mark.parametrize("text", [ENGLISH, CHINESE * 5, MIXED * 3])
@pytest.mark.parametrize("num_streams, seq_len", [(1, 7), (4, 5), (7, 256), (1000, 3)])
def test_equals_a_slow_per_character_loop(text, num_streams, seq_len):
    m, tok = make_model(text)
    ids = tok.encode(text)
    assert_same(evaluate(m, tok, ids, num_streams=num_streams, seq_len=seq_len), slow_metrics(m, ids, num_streams))


@pytest.mark.parametrize("text", [ENGLISH, CHINESE * 5, MIXED * 3])
@pytest.mark.parametrize("num_streams, seq_len", [(1, 7), (4, 5), (1000, 3)])
def test_word_level_equals_a_slow_per_word_loop(text, num_streams, seq_len):
    m, tok = make_model(text, level="word")
    ids = tok.encode(text)
    lengths = [len(w) for w in tok.split(text)]
    r = evaluate(m, tok, ids, num_streams=num_streams, seq_len=seq_len)
    assert_same(r, slow_metrics(m, ids, num_streams, lengths))
    assert r["chars"] == len(text) - len(tok.first_token(text)) >= r["tokens"]  # equal in Chinese


@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize("text", [ENGLISH, CHINESE * 5, MIXED * 3])
def test_bits_per_char_times_chars_is_bits_per_token_times_tokens(level, text):
    m, tok = make_model(text, level=level)
    r = evaluate(m, tok, tok.encode(text), num_streams=3)
    assert r["bits_per_char"] * r["chars"] == pytest.approx(r["bits_per_token"] * r["tokens"], rel=1e-12)
    assert r["bits_per_token"] == pytest.approx(r["loss_nats"] / math.log(2))
    assert r["perplexity"] == pytest.approx(2 ** r["bits_per_token"])  # per token (per word)
    if level == "char":
        assert r["bits_per_char"] == r["bits_per_token"]
        assert r["chars"] == r["tokens"] == len(text) - 1
        assert r["unknown_chars"] == r["unknown_tokens"]
    else:
        assert r["tokens"] <= r["chars"] == len(text) - len(tok.split(text)[0])


def test_word_level_unknown_words_count_their_characters():
    m, tok = make_model(ENGLISH, level="word")
    text = "The quick zebra jumps over the lazy elephant."
    ids = tok.encode(text)
    unknown = [w for w in tok.split(text) if tok.id_of(w) == 0]
    assert unknown == [" zebra", " elephant"]
    scored = len(text) - len(tok.first_token(text))
    r = evaluate(m, tok, ids, num_streams=2, scored_chars=scored)
    assert r["unknown_tokens"] == 2 and r["unknown_chars"] == len(" zebra") + len(" elephant")
    assert r["chars"] == scored
    assert_same(r, slow_metrics(m, ids, 2, [len(w) for w in tok.split(text)]))
    # without scored_chars, each unknown word counts one character
    r1 = evaluate(m, tok, ids, num_streams=2)
    assert r1["chars"] == scored - (len(" zebra") - 1) - (len(" elephant") - 1) and r1["unknown_chars"] == 2
    with pytest.raises(ValueError, match="scored_chars"):
        evaluate(m, tok, ids, scored_chars=5)


def test_one_stream_is_one_pass_over_the_whole_text():
    m, tok = make_model(ENGLISH)
    ids = tok.encode(ENGLISH)
    s, nats = None, 0.0
    for x, y in zip(ids[:-1], ids[1:]):
        p, s = m.step(np.array([x]), s)
        nats -= math.log(p[0, y])
    result = evaluate(m, tok, ids, num_streams=1, seq_len=10)
    assert result["loss_nats"] == pytest.approx(nats / (len(ids) - 1), rel=1e-10)
    assert result["chars"] == len(ids) - 1  # the first character is never scored


def test_the_chunk_length_does_not_change_the_result():
    m, tok = make_model(CHINESE * 9)
    ids = tok.encode(CHINESE * 9)
    a = evaluate(m, tok, ids, num_streams=3, seq_len=4)
    b = evaluate(m, tok, ids, num_streams=3, seq_len=1000)
    for key in METRICS:
        assert a[key] == pytest.approx(b[key], rel=1e-12)


def test_metric_relations_and_a_uniform_model():
    m, tok = make_model(ENGLISH)
    r = evaluate(m, tok, tok.encode(ENGLISH))
    assert r["bits_per_char"] == r["bits_per_token"] == pytest.approx(r["loss_nats"] / math.log(2))
    assert r["perplexity"] == pytest.approx(math.exp(r["loss_nats"]))
    assert 0 <= r["accuracy_top1"] <= r["accuracy_top5"] <= 1
    m.theta[...] = 0.0  # every probability 1/K
    u = evaluate(m, tok, tok.encode(ENGLISH))
    assert u["loss_nats"] == pytest.approx(math.log(tok.vocab_size))
    assert u["perplexity"] == pytest.approx(tok.vocab_size)
    assert u["accuracy_top1"] == 0 and u["accuracy_top5"] == 0  # ties count against the target


def test_unknown_characters_are_counted_and_scored():
    m, tok = make_model(CHINESE)
    text = "X" + CHINESE + "猫狗" + CHINESE  # X is the first character: never a target
    ids = tok.encode(text)
    r = evaluate(m, tok, ids, num_streams=2, seq_len=8)
    assert r["unknown_chars"] == r["unknown_tokens"] == 2 and r["chars"] == r["tokens"] == len(ids) - 1
    assert_same(r, slow_metrics(m, ids, 2))


def test_float32_model_agrees_with_float64():
    m64, tok = make_model(MIXED * 4)
    m32 = RNN(tok.vocab_size, 12, dtype=np.float32)
    m32.theta[...] = m64.theta
    ids = tok.encode(MIXED * 4)
    a, b = evaluate(m64, tok, ids, num_streams=3), evaluate(m32, tok, ids, num_streams=3)
    assert a["loss_nats"] == pytest.approx(b["loss_nats"], rel=1e-5)
    assert a["chars"] == b["chars"]


def test_after_chunk_sees_every_chunk_once_after_scoring():
    m, tok = make_model(ENGLISH)
    ids = tok.encode(ENGLISH)
    seen = []

    def after_chunk(inputs, targets, s0):
        assert s0.shape == (inputs.shape[0], m.state_size)
        seen.append(targets.size)

    r = evaluate(m, tok, ids, num_streams=5, seq_len=6, after_chunk=after_chunk)
    assert sum(seen) == r["chars"] == len(ids) - 1


def test_user_mistakes_are_value_errors():
    m, tok = make_model(ENGLISH)
    with pytest.raises(ValueError, match="at least 2"):
        evaluate(m, tok, tok.encode("T"))
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate(m, Tokenizer.fit("ab"), tok.encode(ENGLISH))
    with pytest.raises(ValueError):
        evaluate(m, None, tok.encode(ENGLISH), num_streams=0)
    assert evaluate(m, None, tok.encode("Th"))["chars"] == 1


def test_a_memmap_of_ids_works(tmp_path):
    m, tok = make_model(CHINESE)
    ids = tok.encode(CHINESE * 3)
    path = tmp_path / "ids.bin"
    ids.astype(np.int32).tofile(path)
    mapped = np.memmap(path, dtype=np.int32, mode="r")
    assert evaluate(m, tok, mapped, num_streams=2) == evaluate(m, tok, ids, num_streams=2)
