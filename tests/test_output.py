"""The output layer: the class-factored head is exact, its gradients are right, C = 1 is full."""

import numpy as np
import pytest

from charrnn.cells import CELLS, MODELS, build_model
from charrnn.model import RNN
from charrnn.output import ClassHead, FullHead, default_num_classes, frequency_classes, make_head


def relative_error(a, b):
    return np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-12)


def numerical_flat_grad(m, inputs, targets, s0, eps=1e-5):
    num = np.zeros_like(m.theta)
    for k in range(m.theta.size):
        old = m.theta[k]
        m.theta[k] = old + eps
        up = m.loss_and_flat_grad(inputs, targets, s0)[0]
        m.theta[k] = old - eps
        down = m.loss_and_flat_grad(inputs, targets, s0)[0]
        m.theta[k] = old
        num[k] = (up - down) / (2 * eps)
    return num


CLASS_OF = [2, 0, 1, 1, 0, 2, 2, 1]  # K = 8 tokens in 3 classes, interleaved on purpose


def classes(class_of=CLASS_OF):
    return {"output": "classes", "class_of": list(class_of)}


def make_problem(cell, num_layers=1, K=8, H=4, B=3, T=5, seed=0, output=None):
    rng = np.random.default_rng(seed)
    config = {"cell": cell, "vocab_size": K, "hidden_size": H, "num_layers": num_layers, **(output or classes())}
    m = build_model(config, seed=seed, dtype=np.float64)
    m.theta[...] = rng.normal(0, 0.5, m.theta.shape)
    inputs = rng.integers(0, K, (B, T))
    targets = rng.integers(0, K, (B, T))
    s0 = rng.uniform(-0.8, 0.8, (B, m.state_size))
    return m, inputs, targets, s0


@pytest.mark.parametrize("cell, num_layers", [("rnn", 1), ("rnn", 2), ("lstm", 1), ("gru", 2)])
def test_gradient_check_with_the_class_head(cell, num_layers):
    m, inputs, targets, s0 = make_problem(cell, num_layers)
    assert m.head.kind == "classes"
    _, g, _ = m.loss_and_flat_grad(inputs, targets, s0)
    num = numerical_flat_grad(m, inputs, targets, s0)
    grads, nums = m.unflatten(g), m.unflatten(num)
    assert {"V", "c", "Q", "d"} <= set(grads)
    for name in grads:
        err = relative_error(grads[name], nums[name])
        assert err < 1e-6, f"{name}: relative error {err:.2e}"


def test_gradient_check_when_a_class_has_no_target():
    m, inputs, targets, s0 = make_problem("rnn")
    targets[...] = 3  # only class 1 is ever a target: the other classes' V columns get zero gradient
    _, g, _ = m.loss_and_flat_grad(inputs, targets, s0)
    num = numerical_flat_grad(m, inputs, targets, s0)
    assert relative_error(g, num) < 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_probabilities_over_all_tokens_sum_to_one(cell, rng):
    K, H = 300, 16
    class_of = frequency_classes(rng.zipf(1.3, K).astype(float), default_num_classes(K))
    m = build_model({"cell": cell, "vocab_size": K, "hidden_size": H, **classes(class_of)}, seed=1)
    inputs = rng.integers(0, K, (4, 7))
    s0 = rng.uniform(-1, 1, (4, m.state_size)).astype(np.float32)
    p, _, _ = m.forward(inputs, s0)
    assert p.dtype == np.float32 and p.shape == (28, K)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    probs, _ = m.step(inputs[:, 0], s0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_class_factorization_is_the_product_of_two_softmaxes(rng):
    """log p from the head equals the equations written out for one row at a time."""
    K, H = 8, 5
    head = ClassHead(K, H, CLASS_OF)
    flat = rng.normal(0, 1, head.num_params)
    S1 = np.hstack([rng.normal(0, 1, (6, H)), np.ones((6, 1))])
    logp = head.log_probs(flat, S1)
    V = flat[: (H + 1) * K].reshape(H + 1, K)  # class order
    Q = flat[(H + 1) * K :].reshape(H + 1, 3)
    for n in range(6):
        q = S1[n] @ Q
        pq = np.exp(q - q.max()) / np.exp(q - q.max()).sum()
        for y in range(K):
            k = CLASS_OF[y]
            members = [t for t in head.order if CLASS_OF[t] == k]
            o = np.array([S1[n] @ V[:, head.where[t]] for t in members])
            within = np.exp(o - o.max()) / np.exp(o - o.max()).sum()
            expected = np.log(pq[k] * within[members.index(y)])
            assert logp[n, y] == pytest.approx(expected, abs=1e-12)
    y = rng.integers(0, K, 6)
    np.testing.assert_allclose(head.target_log_probs(flat, S1, y), logp[np.arange(6), y], atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_one_class_is_the_full_softmax(cell, rng):
    K, H = 9, 6
    full = build_model({"cell": cell, "vocab_size": K, "hidden_size": H, "num_layers": 2}, seed=4, dtype=np.float64)
    one = build_model(
        {**full.config(), "output": "classes", "class_of": [0] * K}, seed=None, dtype=np.float64
    )
    one.theta[: full.num_params] = full.theta  # the same layout, plus Q (H, 1) and d (1,)
    inputs, targets = rng.integers(0, K, (3, 5)), rng.integers(0, K, (3, 5))
    loss_full, g_full, s_full = full.loss_and_flat_grad(inputs, targets)
    loss_one, g_one, s_one = one.loss_and_flat_grad(inputs, targets)
    assert loss_one == pytest.approx(loss_full, rel=1e-12)
    np.testing.assert_allclose(g_one[: full.num_params], g_full, atol=1e-12)
    np.testing.assert_allclose(g_one[full.num_params :], 0.0, atol=1e-12)  # one class: no say
    np.testing.assert_allclose(one.forward(inputs, None)[0], full.forward(inputs, None)[0], atol=1e-12)


def test_target_log_probs_equal_log_probs_at_the_targets(rng):
    for output in (None, classes()):
        m, inputs, targets, s0 = make_problem("rnn", output=output or {})
        logp, s_last = m.log_probs(inputs, s0)
        lt, s_last2 = m.target_log_probs(inputs, targets, s0)
        np.testing.assert_allclose(lt, np.take_along_axis(logp, targets[..., None], 2)[..., 0], atol=1e-12)
        np.testing.assert_allclose(s_last2, s_last)


def test_loss_is_mean_negative_log_probability():
    m, inputs, targets, s0 = make_problem("lstm")
    loss, _, _ = m.loss_and_flat_grad(inputs, targets, s0)
    lt, _ = m.target_log_probs(inputs, targets, s0)
    assert loss == pytest.approx(-lt.mean(), rel=1e-12)


def test_workers_split_the_class_head_exactly(monkeypatch):
    from samples import one_and_two_workers

    m, inputs, targets, s0 = make_problem("rnn", B=8, K=8)
    one, two = one_and_two_workers(monkeypatch, lambda: m.loss_and_flat_grad(inputs, targets, s0))
    assert two[0] == pytest.approx(one[0], rel=1e-12)
    np.testing.assert_allclose(two[1], one[1], atol=1e-12)


def test_frequency_classes_bin_by_mass():
    counts = np.array([100, 1, 50, 25, 0, 12, 6, 3, 2, 1])
    class_of = frequency_classes(counts, 3)
    assert sorted(set(class_of)) == [0, 1, 2]
    assert class_of[0] == 0  # the most frequent token sits alone-ish in the first class
    assert class_of[4] == class_of.max()  # never seen: the last class
    order = np.argsort(-counts, kind="stable")
    assert (np.diff(class_of[order]) >= 0).all()  # classes are runs of the frequency order
    # more classes than tokens: one token each
    assert sorted(frequency_classes(counts[:3], 10)) == [0, 1, 2]
    assert list(frequency_classes(np.zeros(4), 2)) in ([0, 0, 1, 1],)


def test_make_head_refuses_bad_configs():
    assert isinstance(make_head(5, 3), FullHead)
    with pytest.raises(ValueError, match="class_of"):
        make_head(5, 3, {"output": "classes"})
    with pytest.raises(ValueError, match="unknown output"):
        make_head(5, 3, {"output": "tree"})
    with pytest.raises(ValueError, match="at least one token"):
        ClassHead(4, 3, [0, 2, 2, 0])
    with pytest.raises(ValueError, match="each of the 4 tokens"):
        ClassHead(4, 3, [0, 1, 1])


def test_config_round_trip_keeps_the_classes():
    m = RNN(8, 4, seed=2, output=classes())
    again = build_model(m.config(), seed=None)
    assert again.head.kind == "classes" and list(again.head.class_of) == CLASS_OF
    assert again.num_params == m.num_params
    assert type(build_model({**m.config(), "num_layers": 2})) is MODELS["rnn"]
