"""LSTM, GRU and the stacked RNN: gradients proven by central differences, step() equal to
forward(), dropout only in training, configs that rebuild the same network."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.cells import CELLS, LSTM, MODELS, StackedRNN, build_model
from charrnn.model import RNN

# (num_layers, embedding_size, dropout): with and without each of layers, embedding, dropout
ARCHITECTURES = [(1, None, 0.0), (2, 3, 0.0), (2, None, 0.4), (1, 3, 0.5)]


def relative_error(a, b):
    return np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-12)


def make_problem(cell, num_layers=2, embedding_size=None, dropout=0.0, K=5, H=3, B=3, T=6, seed=0):
    """A float64 model with large random parameters (to exercise the curvature of the gates),
    random inputs and targets, and a non-zero initial state."""
    rng = np.random.default_rng(seed)
    m = MODELS[cell](K, H, num_layers, embedding_size, dropout, seed=seed, dtype=np.float64)
    m.theta[...] = rng.normal(0, 0.5, m.theta.shape)
    inputs = rng.integers(0, K, (B, T))
    targets = rng.integers(0, K, (B, T))
    s0 = rng.uniform(-0.8, 0.8, (B, m.state_size))
    return m, inputs, targets, s0


def fixed_rng(seed=99):
    """A Generator that is re-seeded before each use, so every evaluation draws the same masks."""
    gen = np.random.default_rng(seed)
    start = gen.bit_generator.state

    def reset():
        gen.bit_generator.state = start
        return gen

    return reset


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers, embedding_size, dropout", ARCHITECTURES)
def test_gradient_check_every_parameter(cell, num_layers, embedding_size, dropout):
    m, inputs, targets, s0 = make_problem(cell, num_layers, embedding_size, dropout, T=5)
    rng = fixed_rng() if dropout else (lambda: None)
    loss, g, _ = m.loss_and_flat_grad(inputs, targets, s0, rng())
    if dropout:
        assert loss != m.loss_and_flat_grad(inputs, targets, s0)[0]  # the masks are in play
    eps, num = 1e-5, np.zeros_like(g)
    for k in range(m.theta.size):
        old = m.theta[k]
        m.theta[k] = old + eps
        up = m.loss_and_flat_grad(inputs, targets, s0, rng())[0]
        m.theta[k] = old - eps
        down = m.loss_and_flat_grad(inputs, targets, s0, rng())[0]
        m.theta[k] = old
        num[k] = (up - down) / (2 * eps)
    grads, nums = m.unflatten(g), m.unflatten(num)
    assert set(grads) == set(m.shapes)
    for name in grads:
        err = relative_error(grads[name], nums[name])
        assert err < 1e-6, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("cell", CELLS)
def test_step_matches_forward(cell):
    m, inputs, _, s0 = make_problem(cell, num_layers=2, embedding_size=4, dropout=0.3, K=7, H=5, T=6)
    logp, s_last = m.log_probs(inputs, s0)
    s = s0
    for t in range(inputs.shape[1]):
        p, s = m.step(inputs[:, t], s)
        np.testing.assert_allclose(np.log(p), logp[:, t], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s, s_last, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_step_from_no_state(cell):
    m = build_model({"cell": cell, "vocab_size": 6, "hidden_size": 4, "num_layers": 2})
    p, s = m.step(np.array([1, 2]), None)
    assert p.shape == (2, 6) and s.shape == (2, m.state_size) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_chunked_forward_equals_one_long_forward(cell):
    m, inputs, _, s0 = make_problem(cell, num_layers=2, embedding_size=3, B=2, T=8)
    logp_all, s_all = m.log_probs(inputs, s0)
    logp_a, s_mid = m.log_probs(inputs[:, :3], s0)
    logp_b, s_end = m.log_probs(inputs[:, 3:], s_mid)
    np.testing.assert_allclose(np.concatenate([logp_a, logp_b], 1), logp_all, rtol=1e-12)
    np.testing.assert_allclose(s_end, s_all, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    cell=st.sampled_from(CELLS),
    num_layers=st.integers(1, 3),
    embedding_size=st.none() | st.integers(1, 4),
    B=st.integers(1, 3),
    T=st.integers(1, 7),
    data=st.data(),
)
def test_any_split_into_chunks_gives_the_same_forward(cell, num_layers, embedding_size, B, T, data):
    m, inputs, _, s0 = make_problem(cell, num_layers, embedding_size, dropout=0.3, B=B, T=T, H=4)
    cut = data.draw(st.integers(0, T), label="cut")
    logp, s_all = m.log_probs(inputs, s0)
    s = s0
    if cut > 0:
        logp_a, s = m.log_probs(inputs[:, :cut], s0)
        np.testing.assert_allclose(logp_a, logp[:, :cut], rtol=1e-11, atol=1e-13)
    if cut < T:
        logp_b, s = m.log_probs(inputs[:, cut:], s)
        np.testing.assert_allclose(logp_b, logp[:, cut:], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(s, s_all, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("cell", CELLS)
def test_state_packing(cell):
    """The last layer's h sits where the docstring says: the last prediction is computed from it."""
    m, inputs, _, s0 = make_problem(cell, num_layers=3, H=4)
    H, L = m.hidden_size, m.num_layers
    assert m.state_size == (2 if cell == "lstm" else 1) * H * L
    logp, s_last = m.log_probs(inputs, s0)
    start = (2 * H if cell == "lstm" else H) * (L - 1)
    o = s_last[:, start : start + H] @ m.V + m.c
    np.testing.assert_allclose(o - np.log(np.exp(o).sum(1, keepdims=True)), logp[:, -1], rtol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_only_when_an_rng_is_given(cell):
    m, inputs, targets, s0 = make_problem(cell, num_layers=2, dropout=0.5)
    logp, s_eval = m.log_probs(inputs, s0)
    expected = -np.take_along_axis(logp, targets[..., None], 2).mean()
    loss_eval, _, s1 = m.loss_and_grads(inputs, targets, s0)  # rng None: evaluation
    assert loss_eval == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(s1, s_eval)
    a = m.loss_and_grads(inputs, targets, s0, np.random.default_rng(1))
    b = m.loss_and_grads(inputs, targets, s0, np.random.default_rng(1))
    c = m.loss_and_grads(inputs, targets, s0, np.random.default_rng(2))
    assert a[0] == b[0] and a[0] != loss_eval and a[0] != c[0]
    first = m._state_columns(0)  # layer 1 sees no dropout: its state is the evaluation one
    np.testing.assert_array_equal(a[2][:, first], s_eval[:, first])
    assert not np.allclose(a[2], s_eval)  # the layers above read dropped inputs
    no_dropout = MODELS[cell](m.vocab_size, m.hidden_size, 2, dtype=np.float64)
    no_dropout.theta[...] = m.theta
    assert no_dropout.loss_and_grads(inputs, targets, s0, np.random.default_rng(1))[0] == loss_eval


def test_dropout_mask_is_inverted():
    m = LSTM(5, 4, dropout=0.25)
    mask = m._dropout_mask(np.random.default_rng(0), (200, 50, 40))
    assert mask.dtype == np.float32
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert (mask == 0).mean() == pytest.approx(0.25, abs=0.01)
    assert mask.mean() == pytest.approx(1.0, abs=0.01)


def test_one_layer_stacked_rnn_is_model_rnn():
    """Same flat layout, same function: the plain case really is model.RNN."""
    m, inputs, targets, s0 = make_problem("rnn", num_layers=1, K=6, H=4)
    r = RNN(6, 4, dtype=np.float64)
    assert list(r.shapes.values()) == list(m.shapes.values())
    r.theta[...] = m.theta
    loss_m, g_m, s_m = m.loss_and_flat_grad(inputs, targets, s0)
    loss_r, g_r, s_r = r.loss_and_flat_grad(inputs, targets, s0)
    assert loss_m == pytest.approx(loss_r, rel=1e-12)
    np.testing.assert_allclose(g_m, g_r, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(s_m, s_r, rtol=1e-12)


def test_build_model_plain_rnn_is_model_rnn():
    m = build_model({"cell": "rnn", "vocab_size": 9, "hidden_size": 8}, seed=3)
    assert type(m) is RNN
    np.testing.assert_array_equal(m.theta, RNN(9, 8, seed=3).theta)
    assert type(build_model({**m.config(), "num_layers": 1, "dropout": 0.0})) is RNN
    assert type(build_model({**m.config(), "num_layers": 2})) is StackedRNN
    assert type(build_model({**m.config(), "dropout": 0.1})) is StackedRNN
    assert type(build_model({**m.config(), "embedding_size": 4})) is StackedRNN


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers, embedding_size, dropout", ARCHITECTURES)
def test_config_round_trip(cell, num_layers, embedding_size, dropout):
    m = build_model(
        {"cell": cell, "vocab_size": 11, "hidden_size": 6, "num_layers": num_layers,
         "embedding_size": embedding_size, "dropout": dropout},
        seed=5, dtype=np.float64,
    )
    config = json.loads(json.dumps(m.config()))
    again = build_model(config, seed=5, dtype=np.float64)
    assert type(again) is type(m) and again.config() == m.config() and config["cell"] == cell
    assert again.shapes == m.shapes
    np.testing.assert_array_equal(again.theta, m.theta)


def test_build_model_refuses_bad_configs():
    good = {"cell": "lstm", "vocab_size": 5, "hidden_size": 4}
    with pytest.raises(ValueError, match="choose one of rnn, lstm, gru"):
        build_model({**good, "cell": "transformer"})
    with pytest.raises(ValueError, match="lacks hidden_size"):
        build_model({"cell": "gru", "vocab_size": 5})
    with pytest.raises(ValueError, match="unknown model setting"):
        build_model({**good, "layers": 2})
    for bad in ({"num_layers": 0}, {"num_layers": 1.5}, {"embedding_size": 0}, {"dropout": 1.0},
                {"dropout": -0.1}, {"hidden_size": 0}, {"vocab_size": True}):
        with pytest.raises(ValueError):
            build_model({**good, **bad})


@pytest.mark.parametrize("cell", CELLS)
def test_init_is_deterministic_float32_orthogonal(cell):
    config = {"cell": cell, "vocab_size": 7, "hidden_size": 8, "num_layers": 2, "embedding_size": 3}
    a = build_model(config, seed=1)
    b = build_model(a.config(), seed=1)
    assert a.theta.dtype == np.float32
    np.testing.assert_array_equal(a.theta, b.theta)
    assert not np.array_equal(a.theta, build_model(a.config(), seed=2).theta)
    H, G = 8, a.gates
    gain = 0.9 if cell == "rnn" else 1.0
    for l in (1, 2):
        W = a.params[f"W{l}"].astype(np.float64)
        assert W.shape == (H, G * H)
        for k in range(G):
            block = W[:, k * H : (k + 1) * H] / gain
            np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
        expected_b = np.zeros(G * H)
        if cell == "lstm":
            expected_b[H : 2 * H] = 1.0  # forget gate
        np.testing.assert_array_equal(a.params[f"b{l}"], expected_b)
    assert a.U1.shape == (3, G * H) and a.U2.shape == (H, G * H) and a.Emb.shape == (7, 3)


@pytest.mark.parametrize("cell", CELLS)
def test_fresh_model_predicts_near_uniform(cell):
    m = build_model({"cell": cell, "vocab_size": 50, "hidden_size": 32, "num_layers": 2, "dropout": 0.2})
    loss, _, _ = m.loss_and_grads(np.zeros((2, 10), int), np.ones((2, 10), int))
    assert abs(loss - np.log(50)) < 0.1


@pytest.mark.parametrize("cell", CELLS)
def test_float32_gradients_close_to_float64(cell):
    m64, inputs, targets, s0 = make_problem(cell, num_layers=2, embedding_size=3, seed=13)
    m32 = MODELS[cell](m64.vocab_size, m64.hidden_size, 2, 3, dtype=np.float32)
    m32.theta[...] = m64.theta
    l64, g64, s64 = m64.loss_and_grads(inputs, targets, s0)
    l32, g32, s32 = m32.loss_and_grads(inputs, targets, s0.astype(np.float32))
    assert l32 == pytest.approx(l64, rel=1e-5) and s32.dtype == np.float32
    for k in g64:
        assert g32[k].dtype == np.float32
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-5)


def test_extreme_preactivations_stay_finite():
    """exp in the gates may overflow to inf; the gates must still come out exactly 0 or 1."""
    for cell in ("lstm", "gru"):
        m = build_model({"cell": cell, "vocab_size": 4, "hidden_size": 3})
        m.theta[...] = np.random.default_rng(0).choice([-300.0, 300.0], m.theta.shape)
        loss, g, s = m.loss_and_flat_grad(np.array([[0, 1, 2, 3]]), np.array([[1, 2, 3, 0]]))
        assert np.isfinite(g).all() and np.isfinite(s).all() and np.isfinite(loss)


def test_lstm_overfits_a_repeated_chinese_string():
    from samples import REPEATED_TOKENIZER, overfit_repeated_string

    loss = overfit_repeated_string(LSTM(REPEATED_TOKENIZER.vocab_size, 48, seed=0))
    assert loss < 0.05


@pytest.mark.parametrize("cell", CELLS)
def test_stream_workers_split_the_gated_cells_exactly(cell, monkeypatch):
    """Two workers, each with half the streams, give the one-worker loss and gradient; with
    dropout the masks come from per-group generators, the same whichever thread runs first."""
    from samples import one_and_two_workers

    m, inputs, targets, s0 = make_problem(cell, num_layers=2, B=8)
    one, two = one_and_two_workers(monkeypatch, lambda: m.loss_and_flat_grad(inputs, targets, s0))
    m_drop, *_ = make_problem(cell, num_layers=2, dropout=0.3, B=8)
    _, (a, b) = one_and_two_workers(  # with two workers, twice: the same masks
        monkeypatch, lambda: [m_drop.loss_and_flat_grad(inputs, targets, s0, np.random.default_rng(3)) for _ in "ab"]
    )
    assert two[0] == pytest.approx(one[0], rel=1e-12)
    np.testing.assert_allclose(two[1], one[1], atol=1e-12)
    np.testing.assert_allclose(two[2], one[2], atol=1e-12)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
