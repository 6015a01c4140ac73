"""The RNN: gradients proven by central differences, vectorized code equal to a slow loop."""

import itertools

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
    from samples import REPEATED_TOKENIZER, overfit_repeated_string

    loss = overfit_repeated_string(RNN(REPEATED_TOKENIZER.vocab_size, 48, seed=0))
    assert loss < 0.05


# -- fast paths against the plain ones --------------------------------------------------------------

from charrnn.model import (
    ONE_HOT_MAX_VOCAB,
    Model,
    cross_entropy_grad_,
    embedding_grad_scatter,
    softmax_,
    softmax_cross_entropy_,
)


@pytest.mark.parametrize("K", [7, 300])
def test_fused_training_path_equals_plain_path(K):
    """RNN.loss_and_flat_grad (fused softmax + loss) equals forward, cross_entropy_grad_, backward."""
    m, inputs, targets, s0 = make_problem(K=K, H=6, B=3, T=5, seed=21)
    loss, g, s_last = m.loss_and_flat_grad(inputs, targets, s0)
    loss2, g2, s_last2 = Model.loss_and_flat_grad(m, inputs, targets, s0)
    assert loss == pytest.approx(loss2, rel=1e-12)
    np.testing.assert_allclose(g, g2, rtol=1e-10, atol=1e-15)
    np.testing.assert_array_equal(s_last, s_last2)


def test_gradient_check_large_vocabulary():
    """K above the one-hot limit: the embedding gradient takes the scatter-add path."""
    K = ONE_HOT_MAX_VOCAB + 4
    m, inputs, targets, s0 = make_problem(K=K, H=3, B=2, T=3, seed=17)
    _, grads, _ = m.loss_and_grads(inputs, targets, s0)
    num = numerical_grads(m, inputs, targets, s0)
    for name in ("U", "W", "b", "V", "c"):
        assert relative_error(grads[name], num[name]) < 1e-6, name


@pytest.mark.parametrize("K", [3, ONE_HOT_MAX_VOCAB, ONE_HOT_MAX_VOCAB + 1, 4000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_grad_paths_equal_row_loop(K, dtype, rng):
    H, N = 5, 300
    x = rng.integers(0, min(K, 20), N)  # many duplicates
    da = rng.normal(size=(N, H)).astype(dtype)
    start = rng.normal(size=(K, H)).astype(dtype)  # accumulates into what is there
    fast, scatter, slow = start.copy(), start.copy(), start.astype(np.float64)
    embedding_grad(x, da, fast)
    embedding_grad_scatter(x, da, scatter)
    for n in range(N):
        slow[x[n]] += da[n]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert fast.dtype == dtype
    np.testing.assert_allclose(fast, slow, rtol=tol, atol=tol)
    np.testing.assert_allclose(scatter, slow, rtol=tol, atol=tol)


@pytest.mark.parametrize("K", [2, 65, 4000])
def test_softmax_cross_entropy_equals_two_steps(K, rng):
    N = 50
    o = rng.normal(0, 4, (N, K))
    y = rng.integers(0, K, N)
    loss, do = softmax_cross_entropy_(o.copy(), y)
    loss2, do2 = cross_entropy_grad_(softmax_(o.copy()), y)
    assert loss == pytest.approx(loss2, rel=1e-12)
    np.testing.assert_allclose(do, do2, rtol=1e-12, atol=1e-15)  # (p - 1)/N vs p/N - 1/N: rounding


def test_softmax_cross_entropy_is_exact_where_p_underflows():
    o = np.array([[0.0, -200.0]], dtype=np.float32)  # p[1] = e^-200 underflows float32
    loss, _ = softmax_cross_entropy_(o, np.array([1]))
    assert loss == pytest.approx(200.0, rel=1e-6)


def test_log_probs_equal_log_of_forward():
    m, inputs, _, s0 = make_problem(K=9, seed=23)
    logp, s_last = m.log_probs(inputs, s0)
    p, _, s_last2 = m.forward(inputs, s0)
    B, T = inputs.shape
    np.testing.assert_allclose(logp, np.log(p).reshape(T, B, -1).transpose(1, 0, 2), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(s_last, s_last2)


def test_backward_fills_a_dict_of_separate_arrays():
    m, inputs, targets, s0 = make_problem(seed=25)
    _, g, _ = m.loss_and_flat_grad(inputs, targets, s0)
    p, cache, _ = m.forward(inputs, s0)
    _, do = cross_entropy_grad_(p, targets.T.reshape(-1))
    grads = {k: np.full(v.shape, 7.0) for k, v in m.params.items()}  # not views of one vector, not zeroed
    m.backward(do, cache, grads)
    for name, view in m.unflatten(g).items():
        np.testing.assert_allclose(grads[name], view, rtol=1e-12, atol=1e-15)


def test_float32_model_never_promotes_to_float64():
    m = RNN(40, 8, seed=0)  # float32
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 40, (3, 5)).astype(np.int32)
    s0 = rng.uniform(-1, 1, (3, 8))  # float64 given: taken as float32
    loss, g, s_last = m.loss_and_flat_grad(inputs, inputs, s0)
    p, _, s_fwd = m.forward(inputs, s0)
    logp, s_lp = m.log_probs(inputs, s0)
    probs, s_step = m.step(inputs[:, 0], s0)
    probs1, s_step1 = m.step(inputs[:1, 0], s0[:1])
    for a in (g, s_last, p, s_fwd, logp, s_lp, probs, s_step, probs1, s_step1):
        assert a.dtype == np.float32
    assert isinstance(loss, float)


def test_step_one_stream_equals_batched_step():
    m, inputs, _, s0 = make_problem(seed=27)
    probs, s = m.step(inputs[:, 0], s0)
    for i in range(len(s0)):
        probs1, s1 = m.step(inputs[i : i + 1, 0], s0[i : i + 1])
        np.testing.assert_allclose(probs1, probs[i : i + 1], rtol=1e-12)
        np.testing.assert_allclose(s1, s[i : i + 1], rtol=1e-12)


def test_step_sees_parameter_updates():
    """step caches views of theta: in-place updates (an optimizer step) must show through."""
    m = RNN(6, 4, seed=0)
    before, _ = m.step(np.array([1]))
    m.theta += 0.5
    after, _ = m.step(np.array([1]))
    expected_s = np.tanh(m.U[1] + m.b)[None]
    o = expected_s @ m.V + m.c
    np.testing.assert_allclose(after, np.exp(o) / np.exp(o).sum(), rtol=1e-5)
    assert not np.allclose(before, after)


# -- streams split over worker threads ------------------------------------------------------------

from charrnn import threads
from charrnn.model import MIN_STREAMS_PER_WORKER


@pytest.fixture
def workers():
    """Set the number of stream workers for one test, restoring 1 after."""
    yield threads.set_workers
    threads.set_workers(1)


@pytest.mark.parametrize("n", [2, 3])
def test_split_streams_equal_one_thread(n, workers):
    m, inputs, targets, s0 = make_problem(K=11, H=7, B=n * MIN_STREAMS_PER_WORKER + 1, T=6, seed=31)
    loss1, g1, s1 = m.loss_and_flat_grad(inputs, targets, s0)
    p1, cache1, sf1 = m.forward(inputs, s0)
    logp1, sl1 = m.log_probs(inputs, s0)
    workers(n)
    assert len(threads.stream_groups(len(inputs), MIN_STREAMS_PER_WORKER)) == n
    loss2, g2, s2 = m.loss_and_flat_grad(inputs, targets, s0)
    p2, cache2, sf2 = m.forward(inputs, s0)
    logp2, sl2 = m.log_probs(inputs, s0)
    assert loss2 == pytest.approx(loss1, rel=1e-12)
    np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-15)
    for a, b in [(s2, s1), (p2, p1), (sf2, sf1), (logp2, logp1), (sl2, sl1), (cache2[0], cache1[0])]:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    # the cache of a split forward feeds the (single-threaded) backward as well
    _, do = cross_entropy_grad_(p2, targets.T.reshape(-1))
    grads = {k: np.zeros_like(v) for k, v in m.params.items()}
    m.backward(do, cache2, grads)
    for name, view in m.unflatten(g1).items():
        np.testing.assert_allclose(grads[name], view, rtol=1e-10, atol=1e-15)


def test_split_streams_float32_and_cjk_training(workers):
    """Training with two workers on CJK text reaches the same loss as with one."""
    from charrnn.data import Batches
    from charrnn.tokenizer import Tokenizer

    text = "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。" * 30
    tok = Tokenizer.fit(text)
    batches = Batches(tok.encode(text), batch_size=2 * MIN_STREAMS_PER_WORKER, seq_len=8)
    losses = {}
    for n in (1, 2):
        workers(n)
        m = RNN(tok.vocab_size, 16, seed=0)
        s = m.zero_state(batches.batch_size)
        for k in range(3):
            x, y = batches.chunk(k)
            loss, g, s = m.loss_and_flat_grad(x, y, s)
            m.theta -= 0.5 * g
            assert g.dtype == np.float32 and s.dtype == np.float32
        losses[n] = loss
    assert losses[2] == pytest.approx(losses[1], rel=1e-5)


def test_few_streams_are_not_split(workers):
    workers(4)
    assert threads.stream_groups(2 * MIN_STREAMS_PER_WORKER - 1, MIN_STREAMS_PER_WORKER) == [slice(0, 15)]
    assert threads.stream_groups(1, MIN_STREAMS_PER_WORKER) == [slice(0, 1)]
    groups = threads.stream_groups(100, MIN_STREAMS_PER_WORKER)
    assert len(groups) == 4 and groups[0].start == 0 and groups[-1].stop == 100
    assert all(a.stop == b.start for a, b in itertools.pairwise(groups))


def test_blocked_softmax_equals_whole(monkeypatch, rng):
    """Large arrays go through the softmax in row blocks: the same numbers as in one go."""
    import charrnn.output as model

    o = rng.normal(0, 3, (37, 50)).astype(np.float32)
    y = rng.integers(0, 50, 37)
    whole_p = softmax_(o.copy())
    whole = softmax_cross_entropy_(o.copy(), y)
    monkeypatch.setattr(model, "BLOCK_ABOVE_BYTES", 0)
    monkeypatch.setattr(model, "BLOCK_BYTES", 5 * 50 * 4)  # blocks of 5 rows, the last one of 2
    assert len(model.row_blocks(o)) == 8
    np.testing.assert_allclose(softmax_(o.copy()), whole_p, rtol=1e-6)
    blocked = softmax_cross_entropy_(o.copy(), y)
    assert blocked[0] == pytest.approx(whole[0], rel=1e-12)
    np.testing.assert_allclose(blocked[1], whole[1], rtol=1e-6, atol=1e-9)
