"""The RNN: gradients proven by central differences, vectorized code equal to a slow loop."""

import numpy as np
import pytest

from charrnn.model import RNN, embedding_grad, log_softmax


def numerical_grads(model, inputs, targets, s0, eps=1e-5):
    """Central differences of the mean loss with respect to every scalar parameter (float64)."""
    g = np.zeros_like(model.theta)
    for i in range(model.theta.size):
        old = model.theta[i]
        model.theta[i] = old + eps
        up, _, _ = model.loss_and_flat_grad(inputs, targets, s0)
        model.theta[i] = old - eps
        down, _, _ = model.loss_and_flat_grad(inputs, targets, s0)
        model.theta[i] = old
        g[i] = (up - down) / (2 * eps)
    return model.unflatten(g)


def relative_error(a, b):
    return np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-12)


def make_problem(K=7, H=6, B=3, T=6, seed=0):
    rng = np.random.default_rng(seed)
    m = RNN(K, H, seed=seed, dtype=np.float64)
    m.theta[...] = rng.normal(0, 0.5, m.theta.shape)  # larger than init: exercise tanh's curvature
    inputs = rng.integers(0, K, (B, T))
    targets = rng.integers(0, K, (B, T))
    s0 = rng.uniform(-0.8, 0.8, (B, H))
    return m, inputs, targets, s0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_check_every_parameter(seed):
    m, inputs, targets, s0 = make_problem(seed=seed)
    _, grads, _ = m.loss_and_grads(inputs, targets, s0)
    num = numerical_grads(m, inputs, targets, s0)
    for name in ("U", "W", "b", "V", "c"):
        err = relative_error(grads[name], num[name])
        assert err < 1e-6, f"{name}: relative error {err:.2e}"


def test_gradient_check_repeated_inputs():
    """Every stream reads the same id: the embedding gradient must sum duplicates."""
    m, inputs, targets, s0 = make_problem(K=4, H=5, B=2, T=5, seed=3)
    inputs[...] = 2
    _, grads, _ = m.loss_and_grads(inputs, targets, s0)
    num = numerical_grads(m, inputs, targets, s0)
    assert relative_error(grads["U"], num["U"]) < 1e-6
    assert np.count_nonzero(np.abs(grads["U"]).sum(1)) == 1


def slow_loss_and_grads(m, inputs, targets, s0):
    """Obviously correct: one example, one time step at a time, the equations as written."""
    U, W, b, V, c = m.U, m.W, m.b, m.V, m.c
    B, T = inputs.shape
    grads = {k: np.zeros_like(v) for k, v in m.params.items()}
    loss, s_last = 0.0, np.zeros_like(s0)
    for i in range(B):
        s = [s0[i]]
        ps = []
        for t in range(T):
            s.append(np.tanh(s[-1] @ W + U[inputs[i, t]] + b))
            o = s[-1] @ V + c
            p = np.exp(o - o.max())
            p /= p.sum()
            ps.append(p)
            loss -= np.log(p[targets[i, t]])
        s_last[i] = s[-1]
        ds_next = np.zeros_like(s0[i])
        for t in reversed(range(T)):
            do = ps[t].copy()
            do[targets[i, t]] -= 1
            do /= B * T
            grads["V"] += np.outer(s[t + 1], do)
            grads["c"] += do
            ds = do @ V.T + ds_next
            da = ds * (1 - s[t + 1] ** 2)
            grads["W"] += np.outer(s[t], da)
            grads["b"] += da
            grads["U"][inputs[i, t]] += da
            ds_next = da @ W.T
    return loss / (B * T), grads, s_last


def test_vectorized_equals_loop():
    m, inputs, targets, s0 = make_problem(K=11, H=8, B=4, T=7, seed=5)
    loss, grads, s_last = m.loss_and_grads(inputs, targets, s0)
    loss2, grads2, s_last2 = slow_loss_and_grads(m, inputs, targets, s0)
    assert loss == pytest.approx(loss2, rel=1e-12)
    np.testing.assert_allclose(s_last, s_last2, rtol=1e-12, atol=1e-14)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads2[name], rtol=1e-10, atol=1e-14)


def test_step_matches_forward_and_carries_state():
    m, inputs, targets, s0 = make_problem(seed=7)
    logp, s_last = m.log_probs(inputs, s0)
    s = s0
    for t in range(inputs.shape[1]):
        p, s = m.step(inputs[:, t], s)
        np.testing.assert_allclose(np.log(p), logp[:, t], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s, s_last, rtol=1e-12)


def test_chunked_forward_equals_one_long_forward():
    """Carrying s from chunk to chunk gives the same forward values as one long chunk."""
    m, inputs, targets, s0 = make_problem(B=2, T=8, seed=9)
    logp_all, s_all = m.log_probs(inputs, s0)
    logp_a, s_mid = m.log_probs(inputs[:, :3], s0)
    logp_b, s_end = m.log_probs(inputs[:, 3:], s_mid)
    np.testing.assert_allclose(np.concatenate([logp_a, logp_b], 1), logp_all, rtol=1e-12)
    np.testing.assert_allclose(s_end, s_all, rtol=1e-12)


def test_loss_is_mean_cross_entropy():
    m, inputs, targets, s0 = make_problem(seed=11)
    logp, _ = m.log_probs(inputs, s0)
    expected = -np.take_along_axis(logp, targets[..., None], 2).mean()
    loss, _, _ = m.loss_and_grads(inputs, targets, s0)
    assert loss == pytest.approx(expected, rel=1e-12)


def test_fresh_model_predicts_near_uniform():
    m = RNN(50, 32, seed=0)
    loss, _, _ = m.loss_and_grads(np.zeros((2, 10), int), np.ones((2, 10), int))
    assert abs(loss - np.log(50)) < 0.1


def test_init_is_deterministic_and_float32_by_default():
    a, b = RNN(10, 16, seed=3), RNN(10, 16, seed=3)
    assert a.theta.dtype == np.float32
    np.testing.assert_array_equal(a.theta, b.theta)
    assert not np.array_equal(a.theta, RNN(10, 16, seed=4).theta)
    assert a.U.shape == (10, 16) and a.W.shape == (16, 16) and a.b.shape == (16,)
    assert a.V.shape == (16, 10) and a.c.shape == (10,)
    assert np.all(np.abs(np.linalg.eigvals(a.W.astype(np.float64))) < 1.0)


def test_parameters_are_views_of_theta():
    m = RNN(5, 4, seed=0)
    m.W = np.eye(4)
    assert np.shares_memory(m.W, m.theta)
    np.testing.assert_array_equal(m.W, np.eye(4))


def test_float32_gradients_close_to_float64():
    m64, inputs, targets, s0 = make_problem(seed=13)
    m32 = RNN(m64.vocab_size, m64.hidden_size, dtype=np.float32)
    m32.theta[...] = m64.theta
    l64, g64, _ = m64.loss_and_grads(inputs, targets, s0)
    l32, g32, _ = m32.loss_and_grads(inputs, targets, s0.astype(np.float32))
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:
        assert g32[k].dtype == np.float32
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-5)


def test_embedding_grad_equals_row_loop(rng):
    K, H, N = 9, 5, 200
    x = rng.integers(0, K, N)
    da = rng.normal(size=(N, H))
    fast = np.zeros((K, H))
    embedding_grad(x, da, fast)
    slow = np.zeros((K, H))
    for n in range(N):
        slow[x[n]] += da[n]
    np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_log_softmax_is_stable():
    o = np.array([[1000.0, 0.0, -1000.0]])
    out = log_softmax(o)
    assert np.isfinite(out).all() and out[0, 0] == pytest.approx(0.0)


def test_bad_shapes_are_refused():
    m = RNN(5, 4)
    with pytest.raises(ValueError):
        m.loss_and_grads(np.zeros(5, int), np.zeros(5, int))
    with pytest.raises(ValueError):
        m.loss_and_grads(np.zeros((2, 3), int), np.zeros((2, 3), int), np.zeros((3, 4)))


def test_small_model_overfits_a_repeated_string():
    from charrnn.data import Batches
    from charrnn.optim import Adam, clip_grad_norm_
    from charrnn.tokenizer import Tokenizer

    text = "我喜欢学习数学, and I like maths. " * 40
    tok = Tokenizer.fit(text)
    ids = tok.encode(text)
    m = RNN(tok.vocab_size, 48, seed=0)
    opt = Adam(m.num_params)
    batches = Batches(ids, batch_size=4, seq_len=25)
    s = m.zero_state(4)
    for step in range(300):
        k = step % batches.num_chunks
        if k == 0:
            s = m.zero_state(4)
        x, y = batches.chunk(k)
        loss, g, s = m.loss_and_flat_grad(x, y, s)
        clip_grad_norm_(g, 5.0)
        opt.step(m.theta, g, 0.01)
    assert loss < 0.05
