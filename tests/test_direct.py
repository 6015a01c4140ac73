"""Hashed n-gram direct connections: gradients by central differences, state carried exactly."""

import numpy as np
import pytest

from charrnn.cells import build_model
from charrnn.direct import Direct, ngram_hashes, next_history, plan_rows

CLASS_OF = [2, 0, 1, 1, 0, 2, 2, 1]


def make_problem(cell="rnn", output=None, K=8, H=4, B=3, T=5, order=3, seed=0):
    rng = np.random.default_rng(seed)
    config = {"cell": cell, "vocab_size": K, "hidden_size": H, **(output or {})}
    probe = build_model(config, seed=None)
    rows = [5] * len(probe.head.widths)  # few rows: collisions are exercised too
    m = build_model({**config, "direct": {"order": order, "rows": rows}}, seed=seed, dtype=np.float64)
    m.theta[...] = rng.normal(0, 0.5, m.theta.shape)
    m.direct.table[...] = rng.normal(0, 0.5, m.direct.table.shape)
    inputs = rng.integers(0, K, (B, T))
    targets = rng.integers(0, K, (B, T))
    s0 = m.zero_state(B)
    s0[:, : m.cell_state_size] = rng.uniform(-0.8, 0.8, (B, m.cell_state_size))
    s0[:, m.cell_state_size :] = rng.integers(0, K + 1, (B, order - 1))  # some history, some none
    return m, inputs, targets, s0


def dense_direct_grad(m):
    """The pending sparse gradient of the tables as one dense vector laid out like ``table``."""
    g = np.zeros_like(m.direct.table)
    for j, (rows, dD) in m.direct.sparse_grad().items():
        m.direct.view(g, j)[rows] += dD
    return g


OUTPUTS = [None, {"output": "classes", "class_of": CLASS_OF}]


@pytest.mark.parametrize("output", OUTPUTS, ids=["full", "classes"])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_gradient_check_of_the_tables_and_the_network(cell, output):
    m, inputs, targets, s0 = make_problem(cell, output)
    _, g, _ = m.loss_and_flat_grad(inputs, targets, s0)
    gD = dense_direct_grad(m) / inputs.size  # the tables are trained on the sum over positions
    eps = 1e-5
    for flat, analytic in ((m.direct.table, gD), (m.theta, g)):
        num = np.zeros_like(flat)
        for k in range(flat.size):
            old = flat[k]
            flat[k] = old + eps
            up = m.loss_and_flat_grad(inputs, targets, s0)[0]
            flat[k] = old - eps
            down = m.loss_and_flat_grad(inputs, targets, s0)[0]
            flat[k] = old
            num[k] = (up - down) / (2 * eps)
        err = np.abs(analytic - num).max() / max(np.abs(num).max(), 1e-12)
        assert err < 1e-6
    assert np.count_nonzero(gD) > 0


@pytest.mark.parametrize("output", OUTPUTS, ids=["full", "classes"])
def test_chunks_carry_the_history_exactly(output):
    """Reading a text in chunks gives the same probabilities as reading it at once."""
    m, inputs, _, s0 = make_problem("rnn", output, T=9)
    p_whole, _, s_whole = m.forward(inputs, s0)
    p1, _, s = m.forward(inputs[:, :4], s0)
    p2, _, s = m.forward(inputs[:, 4:], s)
    B = inputs.shape[0]
    joined = np.concatenate([p1.reshape(4, B, -1), p2.reshape(5, B, -1)]).reshape(9 * B, -1)
    np.testing.assert_allclose(joined, p_whole, atol=1e-12)
    np.testing.assert_allclose(s, s_whole, atol=1e-12)


@pytest.mark.parametrize("output", OUTPUTS, ids=["full", "classes"])
def test_step_matches_forward(output):
    m, inputs, _, s0 = make_problem("gru", output, T=6)
    p, _, s_end = m.forward(inputs, s0)
    s = s0
    B = inputs.shape[0]
    for t in range(6):
        probs, s = m.step(inputs[:, t], s)
        np.testing.assert_allclose(probs, p.reshape(6, B, -1)[t], atol=1e-12)
    np.testing.assert_allclose(s, s_end, atol=1e-12)


def test_the_tables_change_the_prediction_and_learn():
    m, inputs, targets, s0 = make_problem("rnn", T=8)
    m.direct.table[...] = 0.0
    before = m.loss_and_flat_grad(inputs, targets, s0)[0]
    for _ in range(50):
        m.loss_and_flat_grad(inputs, targets, s0)
        m.direct.update(0.1)
    after = m.loss_and_flat_grad(inputs, targets, s0)[0]
    assert after < before - 0.5  # the tables alone memorize the n-grams of this chunk


def test_hashes_depend_on_the_context_of_each_order():
    history = np.array([[0, 0], [3, 4]], dtype=np.float32)  # stream 0 has no history yet
    x = np.array([[5, 5], [6, 6]])  # (T, B)
    g = ngram_hashes(history, x, 3)  # (T*B, 3)
    assert g.shape == (4, 3) and g.dtype == np.uint64
    assert g[0, 0] == g[1, 0]  # order 1: both streams read 5 at t=0
    assert g[0, 1] != g[1, 1]  # order 2: none vs id 3 before it
    np.testing.assert_array_equal(next_history(history, x), [[6, 7], [6, 7]])


def test_plan_rows_fits_the_budget():
    rows = plan_rows([65], 1)
    assert rows == [(1 << 20) // 4 // 65]
    rows = plan_rows([3, 1, 4, 10], 1, masses=[0.5, 0.3, 0.2])
    assert rows[1] == 0 and min(rows[2:]) > 0  # a one-token class needs no table
    assert sum(r * w for r, w in zip(rows, [3, 1, 4, 10])) <= (1 << 20) // 4


def test_config_round_trip():
    m, *_ = make_problem("rnn", OUTPUTS[1])
    again = build_model(m.config(), seed=None)
    assert again.direct.config() == m.direct.config()
    assert again.state_size == m.state_size == m.hidden_size + 2
    with pytest.raises(ValueError):
        Direct([3], [1, 2], 2)


def test_two_stage_sampling_sees_the_direct_connections():
    """With the class head and direct connections, the class-then-token draw is the draw from the
    full distribution (the tables included) that one inverse CDF over it gives."""
    from charrnn import sampling

    m, *_ = make_problem("rnn", OUTPUTS[1], K=8, order=3)
    m.direct.table[...] *= 8  # make the tables matter
    rng = np.random.default_rng(5)
    s = m.zero_state(400)
    x = rng.integers(0, 8, 400)
    for _ in range(3):  # some history in the state
        _, s = m.step(x, s)
        x = rng.integers(0, 8, 400)
    probs, _ = m.step(x, s)
    s1, g, _ = m.step_hidden(x, s)
    assert g is not None
    u_rng = np.random.default_rng(9)
    got = sampling.draw_by_class(m, s1, u_rng)  # without the hashes: the tables ignored
    got_g = sampling.draw_by_class(m, s1, np.random.default_rng(9), g)
    q = sampling.sampling_distribution(probs)[:, m.head.order]  # in class order, as the draw walks it
    want = m.head.order[sampling.draw(q, np.random.default_rng(9))]
    np.testing.assert_array_equal(got_g, want)
    assert (got != want).any()


def test_a_short_text_gets_no_larger_table_than_it_can_fill():
    assert plan_rows([65], 64, positions=1000, order=6) == [6000]
    assert plan_rows([65], 64, positions=10**7, order=6) == [(64 << 20) // 4 // 65]
    rows = plan_rows([3, 2, 5], 64, masses=[10, 0], positions=10, order=2)
    assert rows == [20, 20, 1]  # class logits: 10 positions x 2 orders; an unseen class: one row
