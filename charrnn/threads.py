"""How many threads the BLAS under NumPy uses, changed at run time (through ``threadpoolctl``).

NumPy's wheels load an OpenBLAS (``libscipy_openblas64_*`` in NumPy 2.x; distributions may link
MKL or BLIS instead). ``threadpoolctl`` finds the BLAS libraries loaded into the process on Linux,
macOS and Windows and sets their thread count; ``set_threads`` asks it to. When no BLAS is found,
``set_threads`` falls back to the environment variables ``OPENBLAS_NUM_THREADS``/
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (which reach only processes started afterwards) and
returns False.

The second knob, ``set_workers(n)``, is the engine's own: it splits the independent streams of a
batch over n Python threads (``stream_groups``, ``parallel_map``), each calling the BLAS on its own
thread. ``default_threads`` says why the BLAS itself stays at one thread by default.
"""

from __future__ import annotations

import os
import threading

import numpy as np

ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _blas_controller():
    """threadpoolctl's controller of the BLAS libraries loaded now (NumPy's first), or None."""
    from threadpoolctl import ThreadpoolController  # here: only commands that train or score need it

    blas = ThreadpoolController().select(user_api="blas")
    blas.lib_controllers.sort(key=lambda lib: "numpy" not in os.path.dirname(lib.filepath))  # stable
    return blas if blas.lib_controllers else None


def blas_libraries() -> list[str]:
    """Paths of the loaded BLAS libraries whose threads this module controls (may be empty)."""
    blas = _blas_controller()
    return [lib.filepath for lib in blas.lib_controllers] if blas else []


def set_threads(n: int) -> bool:
    """Use ``n`` BLAS threads from now on; True if a loaded BLAS took the setting.

    False means no controllable BLAS was found: the environment variables are set instead, so
    only processes started later follow them.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of threads must be a positive integer, got {n!r}")
    blas = _blas_controller()
    if blas is None:
        for var in ENV_VARS:
            os.environ[var] = str(int(n))
        return False
    blas.limit(limits=int(n))  # stays in force: the limiter is not used as a context manager
    return True


def get_threads() -> int | None:
    """The number of threads the loaded BLAS uses now, or None if none could be asked."""
    blas = _blas_controller()
    return int(blas.lib_controllers[0].num_threads) if blas else None


def env_threads() -> int | None:
    """The thread count the user asked for in OPENBLAS_NUM_THREADS or OMP_NUM_THREADS (or MKL's)."""
    for var in ENV_VARS:
        value = os.environ.get(var, "").strip().split(",")[0]
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def default_threads(hidden_size: int, batch_size: int) -> int:
    """The BLAS thread count to train an RNN of ``hidden_size`` on ``batch_size`` streams with.

    A count set by the user in OPENBLAS_NUM_THREADS/OMP_NUM_THREADS/MKL_NUM_THREADS wins;
    otherwise 1, for every shape. Measured on 2 cores (OpenBLAS 0.3.31, float32, training
    chars/s, 1 thread -> 2 threads; benchmarks/bench_train.py and bench_busy.py):

    ========================  =====================  ==============================
    K, H, B, T                machine idle           one core busy
    ========================  =====================  ==============================
    65, 128, 16, 64           --                     181k -> 10k   (18x slower)
    65, 256, 32, 64           98k -> 119k (1.2x)     73k -> 3.6k   (20x slower)
    65, 512, 64, 100          27k -> 57k  (2.1x)     29k -> 15k    (2x slower)
    4000, 256, 32, 64         7.7k -> 13k (1.7x)     6.7k -> 1.9k  (3.5x slower)
    ========================  =====================  ==============================

    Two threads pay only on an idle machine, and when another process holds a core, the T small
    products of each chunk each wait for the descheduled BLAS worker: 2x to 20x slower than one
    thread, and more on a loaded shared machine. One thread never collapses; to use a second core
    safely, split the streams instead (``set_workers``), which meets once per chunk.
    """
    if hidden_size < 1 or batch_size < 1:
        raise ValueError("hidden_size and batch_size must be positive")
    user = env_threads()
    if user is not None:
        return user
    return 1


# -- stream workers ------------------------------------------------------------------------------
#
# The B streams of a batch are independent until their gradients are summed, so the engine can
# hand groups of streams to Python threads, each calling a single-threaded BLAS: NumPy releases
# the GIL inside matrix products and ufuncs. Unlike a multi-threaded BLAS, the threads meet once
# per chunk, not once per product, so a busy core slows them down instead of stalling them.

# With more than one worker, the streams of a batch are split into groups of at least this many.
MIN_STREAMS_PER_WORKER = 8

_workers = 1  # the library's default: no splitting unless asked (``default_workers`` for the CLI)
_pool = None
_pool_lock = threading.Lock()


def set_workers(n: int) -> None:
    """Split the streams of each batch over ``n`` threads from now on (1: no splitting)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of workers must be a positive integer, got {n!r}")
    global _workers
    _workers = int(n)


def get_workers() -> int:
    """The number of threads the streams of a batch are split over."""
    return _workers


def default_workers(hidden_size: int, batch_size: int) -> int:
    """How many stream workers to run B=``batch_size`` streams of an RNN of ``hidden_size`` with.

    1 if the user set a thread count in the environment (OPENBLAS_NUM_THREADS and the like: they
    manage threads themselves) or if there are fewer than 2 * MIN_STREAMS_PER_WORKER streams;
    otherwise one worker per CPU this process may run on, at most one per MIN_STREAMS_PER_WORKER
    streams. Measured on 2 cores with other jobs running (training chars/s, 1 BLAS thread each,
    benchmarks/bench_busy.py; "busy" = one more process spinning on a core):

    ========================  =============================  ============================
    K, H, B, T                1 worker -> 2 workers, idle    2 workers busy / 1 idle
    ========================  =============================  ============================
    65, 256, 32, 64           70k -> 84k (1.19x)             0.81
    65, 512, 64, 100          33k -> 47k (1.42x)             0.99
    65, 256, 256, 64 (eval)   293k -> 472k (1.61x)           --
    ========================  =============================  ============================

    Two workers never collapsed the way a 2-thread BLAS does (0.26-0.28 of its idle speed busy).
    """
    if hidden_size < 1 or batch_size < 1:
        raise ValueError("hidden_size and batch_size must be positive")
    if env_threads() is not None:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, batch_size // MIN_STREAMS_PER_WORKER))


def stream_groups(batch_size: int, min_streams: int) -> list[slice]:
    """Contiguous groups of the ``batch_size`` streams, one per worker, each of >= ``min_streams``."""
    n = max(1, min(_workers, batch_size // max(1, min_streams)))
    bounds = [batch_size * i // n for i in range(n + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(n)]


def parallel_map(fn, items: list) -> list:
    """``[fn(item) for item in items]``, the items run at once on worker threads and the caller's."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    import concurrent.futures  # here, not at the top: it costs ~10 ms of start-up

    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < len(items) - 1:
            _pool = concurrent.futures.ThreadPoolExecutor(len(items) - 1, thread_name_prefix="charrnn")
        pool = _pool
    futures = [pool.submit(fn, item) for item in items[:-1]]
    last = fn(items[-1])
    return [f.result() for f in futures] + [last]
