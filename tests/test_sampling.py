"""Sampling and prediction: reproducible, the options do what they say, CJK prompts continue right."""

import itertools

import numpy as np
import pytest

from charrnn import sampling
from charrnn.model import RNN
from charrnn.optim import Adam, clip_grad_norm_
from charrnn.sampling import (
    beam_search,
    draw,
    encode_prompt,
    generate,
    generate_many,
    next_candidates,
    read_prompt,
    sampling_distribution,
)
from charrnn.tokenizer import Tokenizer

from samples import CHINESE

CORPUS = CHINESE + "\n"  # 我喜欢学习数学。我喜欢学习语言，也喜欢写字。


@pytest.fixture(scope="module")
def chinese():
    """A tiny RNN overfit on CORPUS (about 0.3 s): windows of 12 characters, each from the zero
    state, so that it continues a short prompt read from the zero state as the corpus does."""
    tok = Tokenizer.fit(CORPUS)
    ids = tok.encode(CORPUS * 20)
    m = RNN(tok.vocab_size, 32, seed=0, dtype=np.float64)
    opt, rng, T = Adam(m.num_params, dtype=np.float64), np.random.default_rng(0), 12
    for _ in range(300):
        window = ids[rng.integers(0, len(ids) - T - 1, 16)[:, None] + np.arange(T + 1)]  # (16, T+1)
        loss, g, _ = m.loss_and_flat_grad(window[:, :-1], window[:, 1:])
        clip_grad_norm_(g, 5.0)
        opt.step(m.theta, g, 0.02)
    assert loss < 0.2
    return m, tok


@pytest.fixture
def untrained():
    """A random model over a small mixed vocabulary: broad distributions, so samples vary."""
    tok = Tokenizer.fit("abcdefgh 我喜欢\n")
    return RNN(tok.vocab_size, 8, seed=3, dtype=np.float64), tok


def sample(m, tok, prompt, n, **kw):
    return "".join(generate(m, tok, prompt, n, **kw))


# -- reproducibility and the decoding options -----------------------------------------------------


def test_same_seed_same_output(untrained):
    m, tok = untrained
    a = sample(m, tok, "ab", 200, rng=7)
    assert a == sample(m, tok, "ab", 200, rng=7)
    assert a == sample(m, tok, "ab", 200, rng=np.random.default_rng(7))
    assert a != sample(m, tok, "ab", 200, rng=8)
    assert len(a) == 200  # char level: one character per token


def test_greedy_is_deterministic_and_equals_temperature_zero(untrained):
    m, tok = untrained
    g = sample(m, tok, "abc", 50, greedy=True, rng=1)
    assert g == sample(m, tok, "abc", 50, greedy=True, rng=2)
    assert g == sample(m, tok, "abc", 50, temperature=0, rng=3)


def test_greedy_follows_the_argmax_step_by_step(untrained):
    m, tok = untrained
    g = sample(m, tok, "ab", 20, greedy=True)
    s, x = None, tok.encode("ab")
    out = []
    for i in x:
        p, s = m.step(np.array([i]), s)
    for _ in range(20):
        p[0, 0] = 0  # the unknown token is never produced
        i = int(p[0].argmax())
        out.append(tok.tokens[i])
        p, s = m.step(np.array([i]), s)
    assert g == "".join(out)


def test_top_k_1_and_tiny_top_p_equal_greedy(untrained):
    m, tok = untrained
    g = sample(m, tok, "我", 60, greedy=True)
    assert sample(m, tok, "我", 60, top_k=1, rng=5) == g
    assert sample(m, tok, "我", 60, top_p=1e-9, rng=6) == g


def test_temperature_sharpens_and_flattens(rng):
    p = rng.dirichlet(np.ones(12), size=4)  # (4, 12)

    def entropy(q):
        q = q[q > 0]
        return -(q * np.log(q)).sum()

    q_half, q_one, q_two = (sampling_distribution(p, t) for t in (0.5, 1.0, 2.0))
    for i in range(4):
        assert entropy(q_half[i]) < entropy(q_one[i]) < entropy(q_two[i])
        assert q_half[i].max() > q_one[i].max() > q_two[i].max()
    # temperature 1 is the model's distribution with the unknown id masked out, renormalized
    expected = p.copy()
    expected[:, 0] = 0
    np.testing.assert_allclose(q_one, expected / expected.sum(1, keepdims=True), rtol=1e-12)


def test_top_k_keeps_the_k_most_probable_and_clamps(rng):
    p = rng.dirichlet(np.ones(10), size=5)
    q = sampling_distribution(p, 1.0, top_k=3)
    assert ((q > 0).sum(1) == 3).all()
    masked = p.copy()
    masked[:, 0] = 0
    top3 = np.argsort(-masked, axis=1)[:, :3]
    assert (np.take_along_axis(q, top3, 1).sum(1) > 1 - 1e-12).all()
    np.testing.assert_allclose(sampling_distribution(p, 1.0, top_k=1000), sampling_distribution(p, 1.0))


def test_top_p_keeps_the_smallest_nucleus():
    p = np.array([[0.05, 0.5, 0.3, 0.1, 0.05]])  # id 0 is masked: the rest renormalizes to /0.95
    q = sampling_distribution(p, 1.0, top_p=0.8)
    # 0.5/0.95 = 0.526 < 0.8, + 0.3/0.95 = 0.842 >= 0.8: the nucleus is {1, 2}
    np.testing.assert_allclose(q[0], [0, 0.5 / 0.8, 0.3 / 0.8, 0, 0])
    assert (sampling_distribution(p, 1.0, top_p=1.0) > 0).sum() == 4


def test_draw_follows_the_distribution():
    q = np.tile([0.0, 0.2, 0.0, 0.8], (20000, 1))
    x = draw(q, np.random.default_rng(0))
    assert set(np.unique(x)) == {1, 3}
    assert abs((x == 3).mean() - 0.8) < 0.02


def test_the_unknown_token_is_never_sampled(untrained):
    m, tok = untrained
    m.c[0] = 50.0  # the model all but insists on the unknown token
    text = sample(m, tok, "ab", 300, rng=0, temperature=3.0)
    assert "\ufffd" not in text and len(text) == 300
    assert all(t != "\ufffd" for t, _ in next_candidates(m, tok, "ab", top=tok.vocab_size))


@pytest.mark.parametrize(
    "options",
    [{"temperature": -1}, {"temperature": float("nan")}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"stop": ""}],
)
def test_bad_options_are_value_errors(untrained, options):
    m, tok = untrained
    with pytest.raises(ValueError):
        generate(m, tok, "a", 5, **options)


def test_length_zero_and_negative(untrained):
    m, tok = untrained
    assert sample(m, tok, "a", 0) == ""
    with pytest.raises(ValueError):
        generate(m, tok, "a", -1)


# -- prompts ----------------------------------------------------------------------------------


def test_unknown_prompt_policies(untrained):
    m, tok = untrained
    prompt = "abZ我Qc"  # Z and Q are not in the vocabulary
    np.testing.assert_array_equal(encode_prompt(tok, prompt), tok.encode(prompt))
    assert (encode_prompt(tok, prompt, "replace") == 0).sum() == 2
    np.testing.assert_array_equal(encode_prompt(tok, prompt, "skip"), tok.encode("ab我c"))
    with pytest.raises(ValueError, match="'Z', 'Q'"):
        encode_prompt(tok, prompt, "error")
    with pytest.raises(ValueError):
        encode_prompt(tok, prompt, "ignore")
    assert sample(m, tok, prompt, 30, rng=1, unknown="skip") == sample(m, tok, "ab我c", 30, rng=1)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        generate(m, tok, prompt, 5, unknown="error")


def test_empty_prompt_reads_a_newline(untrained):
    m, tok = untrained
    assert sample(m, tok, "", 40, rng=4) == sample(m, tok, "\n", 40, rng=4)
    no_newline = Tokenizer.fit("xyz")
    m2 = RNN(no_newline.vocab_size, 4, seed=0)
    assert len(sample(m2, no_newline, "", 10, rng=0)) == 10


def test_prompt_read_in_chunks_equals_step_by_step(untrained, monkeypatch):
    m, tok = untrained
    ids = tok.encode("abc我喜欢 defgh\n" * 7)
    s = None
    for i in ids:
        p_slow, s = m.step(np.array([i]), s)
    monkeypatch.setattr(sampling, "PROMPT_CHUNK", 5)  # many chunks, the last one partial
    p, s_fast = read_prompt(m, tok, ids)
    np.testing.assert_allclose(p, p_slow, rtol=1e-12)
    np.testing.assert_allclose(s_fast, s, rtol=1e-12)


def test_prompt_longer_than_a_megabyte(chinese):
    m, tok = chinese
    prompt = "我喜欢学习数学。" * 50000  # 1.2 MB of UTF-8
    assert len(prompt.encode()) > 1_000_000
    assert sample(m, tok, prompt + "我喜欢", 2, greedy=True) == "学习"


def test_chinese_prompt_continues_the_corpus(chinese):
    m, tok = chinese
    assert sample(m, tok, "我喜欢", 2, greedy=True) == "学习"
    assert sample(m, tok, "也喜欢", 3, greedy=True) == "写字。"
    assert sample(m, tok, "我喜欢学习数", 2, greedy=True) == "学。"
    # sampling at a low temperature stays on the corpus too
    assert sample(m, tok, "我喜欢", 2, temperature=0.3, rng=0) == "学习"


# -- stop strings and parallel samples ----------------------------------------------------------


def test_stop_string_is_included_and_ends_the_sample(chinese):
    m, tok = chinese
    assert sample(m, tok, "也喜欢", 100, greedy=True, stop="。") == "写字。"
    assert sample(m, tok, "我喜欢学习数", 100, greedy=True, stop="我喜") == "学。我喜"
    assert sample(m, tok, "我喜欢学习数", 3, greedy=True, stop="我喜") == "学。我"  # length comes first


def test_stop_string_cuts_a_word_token():
    tok = Tokenizer.fit("hello world ", level="word")
    m = RNN(tok.vocab_size, 4, seed=0)
    m.c[tok.id_of("hello")] = 30.0  # always "hello"
    assert sample(m, tok, "hello", 10, greedy=True, stop="ll") == "hell"
    assert sample(m, tok, "hello", 10, greedy=True, stop="oh") == "helloh"  # across two tokens


def test_num_samples_in_parallel(untrained, chinese):
    m, tok = untrained
    steps = list(generate_many(m, tok, "ab", 50, 4, rng=0))
    assert len(steps) == 50 and all(len(pieces) == 4 for pieces in steps)
    texts = ["".join(col) for col in zip(*steps)]
    assert len(set(texts)) == 4  # different samples
    again = ["".join(col) for col in zip(*generate_many(m, tok, "ab", 50, 4, rng=0))]
    assert texts == again
    greedy = ["".join(col) for col in zip(*generate_many(m, tok, "ab", 30, 3, greedy=True))]
    assert greedy == [sample(m, tok, "ab", 30, greedy=True)] * 3
    # each sample stops at its own stop string; finished samples yield ""
    mc, tc = chinese
    steps = list(generate_many(mc, tc, "我", 40, 3, rng=1, temperature=1.5, stop="。"))
    for col in zip(*steps):
        text = "".join(col)
        assert text.endswith("。") and text.count("。") == 1
        end = col.index("。")
        assert all(piece == "" for piece in col[end + 1 :])  # nothing after its stop string
    assert any(steps[-1]) and len(steps) < 40  # ends with the last sample to stop


# -- prediction -------------------------------------------------------------------------------


def test_next_candidates_are_the_model_probabilities_sorted(untrained):
    m, tok = untrained
    cands = next_candidates(m, tok, "ab", top=4)
    probs, _ = read_prompt(m, tok, tok.encode("ab"))
    assert len(cands) == 4
    assert [p for _, p in cands] == sorted((p for _, p in cands), reverse=True)
    for text, p in cands:
        assert p == pytest.approx(probs[0, tok.id_of(text)], rel=1e-12)
    assert len(next_candidates(m, tok, "ab", top=100)) == tok.vocab_size - 1
    with pytest.raises(ValueError):
        next_candidates(m, tok, "ab", top=0)


def test_next_candidates_chinese(chinese):
    m, tok = chinese
    (first, p1), (second, p2) = next_candidates(m, tok, "我喜欢学习", top=2)
    assert {first, second} == {"数", "语"}  # the two ways the corpus goes on
    assert p1 + p2 > 0.95


def exhaustive(m, tok, text, chars):
    """Every path of ``chars`` known tokens, with its probability, by brute force."""
    p0, s0 = read_prompt(m, tok, tok.encode(text))
    results = []
    for path in itertools.product(range(1, tok.vocab_size), repeat=chars):
        p, s, prob = p0, s0, 1.0
        for i, x in enumerate(path):
            prob *= p[0, x]
            if i < chars - 1:
                p, s = m.step(np.array([x]), s)
        results.append((tok.decode(path), prob))
    return sorted(results, key=lambda r: -r[1])


def test_beam_search_agrees_with_exhaustive_search(untrained):
    m, tok = untrained  # K = 13: 144 paths of two tokens
    truth = exhaustive(m, tok, "ab", 2)
    beams = beam_search(m, tok, "ab", chars=2, beam_width=tok.vocab_size, top=5)
    assert [t for t, _ in beams] == [t for t, _ in truth[:5]]
    np.testing.assert_allclose([p for _, p in beams], [p for _, p in truth[:5]], rtol=1e-10)
    narrow = beam_search(m, tok, "ab", chars=2, beam_width=3, top=3)
    assert [p for _, p in narrow] == sorted((p for _, p in narrow), reverse=True)
    assert narrow[0][1] <= truth[0][1] * (1 + 1e-12)
    assert all(len(t) == 2 for t, _ in narrow)


def test_beam_search_next_word_chinese(chinese):
    m, tok = chinese
    results = beam_search(m, tok, "我喜欢", chars=2, top=3)
    assert results[0][0] == "学习" and results[0][1] > 0.9
    assert [p for _, p in results] == sorted((p for _, p in results), reverse=True)
    words = [t for t, _ in beam_search(m, tok, "我喜欢学习", chars=2, top=2)]
    assert set(words) == {"数学", "语言"}
    with pytest.raises(ValueError):
        beam_search(m, tok, "我", chars=0)
    with pytest.raises(ValueError):
        beam_search(m, tok, "我", chars=2, beam_width=2, top=5)


# -- the class-factored head: two-stage draws and exact candidates ---------------------------------


@pytest.fixture(params=["unknown in a class of three", "unknown alone in its class"])
def classed(request):
    """A random RNN with the class head over 12 tokens in 4 classes, and its vocabulary."""
    tok = Tokenizer.fit("abcdefghij我")  # K = 12, id 0 the unknown
    if request.param == "unknown alone in its class":
        class_of = [3, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1]
    else:
        class_of = [1, 0, 2, 1, 3, 3, 0, 1, 2, 0, 2, 3]
    m = RNN(tok.vocab_size, 6, seed=5, dtype=np.float64, output={"output": "classes", "class_of": class_of})
    m.theta[...] = np.random.default_rng(2).normal(0, 0.8, m.theta.shape)  # sharp, uneven distributions
    return m, tok


def test_the_two_stage_draw_is_one_inverse_cdf_over_the_tokens_in_class_order(classed):
    """Class then token, with one uniform number: the very id that one inverse CDF gives over the
    masked full distribution laid out class by class."""
    m, tok = classed
    rng = np.random.default_rng(0)
    s1, _ = m.step_state(rng.integers(0, tok.vocab_size, 500), rng.uniform(-1, 1, (500, m.state_size)))
    x = sampling.draw_by_class(m, s1, np.random.default_rng(7))
    q = sampling_distribution(m.head.step_probs(m.head_part(m.theta), s1))  # (500, K), id 0 masked
    order = m.head.order
    j, _ = sampling.inverse_cdf(q[:, order], np.random.default_rng(7).random(500))
    np.testing.assert_array_equal(x, order[j])
    assert (x != 0).all()
    # one stream at a time (the scalar path sampling one stream takes) draws the same ids
    rng = np.random.default_rng(7)
    one_by_one = [sampling.draw_by_class(m, s1[i : i + 1], rng)[0] for i in range(len(s1))]
    np.testing.assert_array_equal(one_by_one, x)


def test_the_two_stage_draw_follows_the_full_distribution(classed):
    m, tok = classed
    s1, _ = m.step_state(np.array([3]), np.random.default_rng(1).uniform(-1, 1, (1, m.state_size)))
    n = 200_000
    x = sampling.draw_by_class(m, np.repeat(s1, n, axis=0), np.random.default_rng(3))
    q = sampling_distribution(m.step(np.array([3]), np.random.default_rng(1).uniform(-1, 1, (1, m.state_size)))[0])[0]
    assert q[0] == 0 and (x != 0).all()
    seen = np.bincount(x, minlength=tok.vocab_size)[1:]
    expected = n * q[1:]
    chi2 = ((seen - expected) ** 2 / expected).sum()
    assert chi2 < 40  # 10 degrees of freedom: p < 1e-5 of failing by chance


def test_sampling_takes_the_two_stage_draw_only_at_temperature_1(classed):
    m, tok = classed
    assert sampling.draws_by_class(m, 1.0, None, None)
    assert sampling.draws_by_class(m, 1.0, tok.vocab_size, 1.0)  # cuts that keep everything
    for options in [(0.0, None, None), (0.7, None, None), (1.0, 3, None), (1.0, None, 0.9)]:
        assert not sampling.draws_by_class(m, *options)
    assert not sampling.draws_by_class(RNN(tok.vocab_size, 6, seed=0), 1.0, None, None)  # full head
    # generate at temperature 1 is the sequence of two-stage draws, step by step
    got = list(generate_many(m, tok, "ab", 30, 3, rng=11))
    s1, _, s = sampling.read_prompt_state(m, tok, tok.encode("ab"))
    s1, s = np.repeat(s1, 3, axis=0), np.repeat(s, 3, axis=0)
    rng, want = np.random.default_rng(11), []
    for _ in range(30):
        x = sampling.draw_by_class(m, s1, rng)
        want.append([tok.tokens[i] for i in x])
        s1, _, s = m.step_hidden(x, s)
    assert got == want
    # and the other settings still work on the full distribution, never producing the unknown
    for options in [dict(temperature=0.7), dict(top_k=3), dict(top_p=0.8), dict(greedy=True)]:
        text = sample(m, tok, "ab", 40, rng=0, **options)
        assert len(text) == 40 and "\0" not in text


def test_next_candidates_with_the_class_head_are_the_true_top_tokens(classed):
    """The product of the two factors, ranked over all K tokens: checked against log_probs."""
    m, tok = classed
    ids = tok.encode("abc我d")
    logp, _ = m.log_probs(ids[None, :])  # (1, T, K)
    p = np.exp(logp[0, -1])
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    p[0] = -1.0
    truth = np.argsort(-p, kind="stable")[:5]
    cands = next_candidates(m, tok, "abc我d", top=5)
    assert [tok.id_of(t) for t, _ in cands] == list(truth)
    np.testing.assert_allclose([q for _, q in cands], p[truth], rtol=1e-10)
