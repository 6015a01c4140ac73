"""BLAS threads at run time: set then get on the loaded library, env fallbacks, the default policy."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn import threads


@pytest.fixture
def restore_threads():
    before = threads.get_threads()
    yield
    if before is not None:
        threads.set_threads(before)


def test_numpy_blas_is_found():
    libraries = threads.blas_libraries()
    assert libraries, "no controllable BLAS found under NumPy"
    assert all(os.path.exists(p) for p in libraries)


@pytest.mark.parametrize("n", [2, 3, 1])
def test_set_then_get(n, restore_threads):
    assert threads.set_threads(n) is True
    assert threads.get_threads() == n


def test_products_stay_right_after_changing_threads(restore_threads):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 100))
    expected = np.einsum("ij,jk->ik", a, b)  # not through BLAS
    for n in (1, 2):
        threads.set_threads(n)
        np.testing.assert_allclose(a @ b, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", None, True])
def test_bad_counts_are_refused(bad):
    with pytest.raises(ValueError):
        threads.set_threads(bad)


def test_env_threads_reads_user_settings(monkeypatch):
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert threads.env_threads() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.env_threads() == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # OpenBLAS's own variable wins over OpenMP's
    assert threads.env_threads() == 2
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "junk")
    assert threads.env_threads() == 3


def test_default_is_one_thread_unless_the_user_says(monkeypatch):
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    for H, B in [(64, 1), (256, 32), (512, 64), (1024, 256)]:
        assert threads.default_threads(H, B) == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert threads.default_threads(256, 32) == 2
    with pytest.raises(ValueError):
        threads.default_threads(0, 32)


def test_without_a_blas_the_environment_is_the_fallback(monkeypatch):
    monkeypatch.setattr(threads, "_blas_controller", lambda: None)
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert threads.set_threads(3) is False
    assert threads.get_threads() is None
    assert all(os.environ[var] == "3" for var in threads.ENV_VARS)


def test_env_setting_reaches_a_fresh_process():
    """OPENBLAS_NUM_THREADS read at load time shows through get_threads in a new interpreter."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    code = "from charrnn.threads import get_threads; print(get_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "1"


def test_workers_set_then_get():
    try:
        threads.set_workers(3)
        assert threads.get_workers() == 3
    finally:
        threads.set_workers(1)
    assert threads.get_workers() == 1
    for bad in (0, -2, 1.5, None):
        with pytest.raises(ValueError):
            threads.set_workers(bad)


def test_parallel_map_keeps_order_and_raises():
    import threading

    names = threads.parallel_map(lambda i: (i, threading.current_thread().name), list(range(4)))
    assert [i for i, _ in names] == [0, 1, 2, 3]
    assert len({name for _, name in names}) > 1  # really on several threads
    assert threads.parallel_map(lambda i: i * 2, [5]) == [10]

    def fail(i):
        if i == 0:
            raise ValueError("boom")
        return i

    with pytest.raises(ValueError, match="boom"):
        threads.parallel_map(fail, [0, 1])


def test_default_workers(monkeypatch):
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert threads.default_workers(256, 32) == 2
    assert threads.default_workers(256, 2 * threads.MIN_STREAMS_PER_WORKER - 1) == 1
    assert threads.default_workers(256, 1) == 1
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert threads.default_workers(256, 4 * threads.MIN_STREAMS_PER_WORKER) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user manages threads: no splitting
    assert threads.default_workers(256, 64) == 1
    with pytest.raises(ValueError):
        threads.default_workers(256, 0)
