"""Optimizers: each lowers a loss, clipping bounds the norm, state round-trips exactly."""

import numpy as np
import pytest

from charrnn.optim import OPTIMIZERS, Adam, clip_grad_norm_, learning_rate, make_optimizer


def quadratic_grad(theta, target):
    return theta - target


@pytest.mark.parametrize("name,lr", [("adam", 0.05), ("adagrad", 0.5), ("sgd", 0.05)])
def test_optimizers_minimize_a_quadratic(name, lr):
    rng = np.random.default_rng(0)
    target = rng.normal(size=20)
    theta = np.zeros(20)
    opt = make_optimizer(name, 20, dtype=np.float64)
    for _ in range(500):
        opt.step(theta, quadratic_grad(theta, target), lr)
    assert np.abs(theta - target).max() < 1e-2


def test_adam_first_step_moves_each_coordinate_by_lr():
    theta = np.zeros(3)
    Adam(3, dtype=np.float64).step(theta, np.array([1.0, -2.0, 1e-3]), 0.1)
    np.testing.assert_allclose(theta, [-0.1, 0.1, -0.1], rtol=1e-4)


def test_decoupled_weight_decay_shrinks_weights_without_gradient():
    theta = np.ones(4)
    opt = make_optimizer("adam", 4, dtype=np.float64, weight_decay=0.1)
    opt.step(theta, np.zeros(4), 0.5)
    np.testing.assert_allclose(theta, 0.95)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_round_trip_resumes_exactly(name):
    rng = np.random.default_rng(1)
    grads = rng.normal(size=(10, 8)).astype(np.float32)
    a_theta = np.zeros(8, np.float32)
    a = make_optimizer(name, 8)
    for g in grads:
        a.step(a_theta, g, 0.01)
    b_theta = np.zeros(8, np.float32)
    b = make_optimizer(name, 8)
    for g in grads[:5]:
        b.step(b_theta, g, 0.01)
    c = make_optimizer(name, 8)
    c.load_state_dict(b.state_dict())
    for g in grads[5:]:
        c.step(b_theta, g, 0.01)
    np.testing.assert_array_equal(a_theta, b_theta)


def test_load_state_refuses_other_optimizer():
    with pytest.raises(ValueError):
        make_optimizer("sgd", 3).load_state_dict(make_optimizer("adam", 3).state_dict())


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="choose one of"):
        make_optimizer("rmsprop", 3)


def test_clip_grad_norm():
    g = np.array([3.0, 4.0])
    assert clip_grad_norm_(g, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.linalg.norm(g), 1.0, rtol=1e-9)
    g = np.array([0.3, 0.4])
    clip_grad_norm_(g, 1.0)
    np.testing.assert_allclose(g, [0.3, 0.4])
    clip_grad_norm_(g, None)
    np.testing.assert_allclose(g, [0.3, 0.4])


def test_learning_rate_schedules():
    assert learning_rate(5, 0.1) == 0.1
    assert learning_rate(0, 0.1, warmup_steps=10) == pytest.approx(0.01)
    assert learning_rate(9, 0.1, warmup_steps=10) == pytest.approx(0.1)
    assert learning_rate(100, 0.1, "cosine", total_steps=100) == pytest.approx(0.01)
    assert learning_rate(50, 0.1, "cosine", total_steps=100) == pytest.approx(0.055)
    assert learning_rate(1000, 0.1, "exponential", decay_rate=0.5, decay_every=1000) == pytest.approx(0.05)
    assert learning_rate(10**6, 0.1, "exponential") == pytest.approx(0.01)
    with pytest.raises(ValueError):
        learning_rate(0, 0.1, "linear")


def test_cosine_along_budget_progress():
    assert learning_rate(7, 0.1, "cosine", progress=0.0) == pytest.approx(0.1)
    assert learning_rate(7, 0.1, "cosine", progress=0.5) == pytest.approx(0.055)
    assert learning_rate(7, 0.1, "cosine", progress=1.0) == pytest.approx(0.01)
