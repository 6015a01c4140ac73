"""What the charrnn benchmarks share: configs, a training step, the matmul bound, timing, tables.

A *config* is ``K,H,B,T``: vocabulary size, hidden size, batch size (parallel streams) and
sequence length (BPTT steps). One *training step* is what training does with each chunk:
``loss_and_flat_grad`` (forward, softmax, loss, BPTT), gradient clipping and an Adam update.

The *matmul bound* of a config is the throughput the step would reach if it did nothing but its
matrix products, with the same shapes and layouts as ``charrnn.model.RNN`` uses, at this machine's
BLAS speed: T products (B, H+1) @ (H+1, H) for the recurrence, T-1 products (B, H) @ (H, H)^T
for its gradient, and one product each over all T*B rows for the logits, [dV; dc], do V^T and
[dW; db]. It is measured in the same run, interleaved with the step, so both see the same load.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmark the checkout, installed or not

import numpy as np

from charrnn.model import RNN
from charrnn.optim import Adam, clip_grad_norm_
from charrnn.output import default_num_classes, frequency_classes
from charrnn.threads import get_threads, set_threads, set_workers

CONFIGS = ((65, 256, 32, 64), (65, 512, 64, 100), (4000, 256, 32, 64))


def parse_config(text: str) -> tuple[int, int, int, int]:
    """``"K,H,B,T"`` -> (K, H, B, T), all positive."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise ValueError(f"a config is K,H,B,T (four positive integers), got {text!r}")
    return values  # type: ignore[return-value]


def parse_threads(text: str) -> list[int]:
    """``"1,2"`` -> [1, 2]."""
    values = [int(v) for v in text.split(",")]
    if not values or min(values) < 1:
        raise ValueError(f"threads must be positive integers, got {text!r}")
    return values


def random_ids(K: int, shape, seed: int = 0) -> np.ndarray:
    """Token ids drawn with Zipf-like frequencies (as in text), int64 of ``shape``."""
    rng = np.random.default_rng(seed)
    weights = zipf_counts(K)
    return rng.choice(K, size=shape, p=weights / weights.sum())


def zipf_counts(K: int) -> np.ndarray:
    """The expected counts (per unit of text) of ``random_ids``: Zipf-like, 1/rank."""
    return 1.0 / np.arange(1, K + 1)


def output_config(K: int, output: str = "full", num_classes: int | None = None) -> dict | None:
    """The RNN's ``output`` argument: None for the full softmax, else classes binned by the
    frequencies of ``random_ids`` (``num_classes``, default about sqrt(K))."""
    if output == "full":
        return None
    C = num_classes or default_num_classes(K)
    return {"output": "classes", "class_of": frequency_classes(zipf_counts(K), C).tolist()}


class TrainingStep:
    """One RNN, its Adam optimizer and a chunk of ids; ``run(n)`` takes n training steps.

    ``threads`` (BLAS threads) and ``workers`` (stream workers) are set at the start of each run,
    so that runs with different settings can take turns.
    """

    def __init__(
        self, K: int, H: int, B: int, T: int, seed: int = 0, threads: int | None = None, workers: int = 1,
        output: str = "full", num_classes: int | None = None,
    ):
        self.threads, self.workers = threads, workers
        self.model = RNN(K, H, seed=seed, dtype=np.float32, output=output_config(K, output, num_classes))
        self.optimizer = Adam(self.model.num_params)
        ids = random_ids(K, (B, T + 1), seed)
        self.inputs, self.targets = ids[:, :-1], ids[:, 1:]
        self.s = self.model.zero_state(B)
        self.chars = B * T

    def run(self, steps: int) -> float:
        """Take ``steps`` steps; returns the last loss."""
        use(self.threads, self.workers)
        loss = 0.0
        for _ in range(steps):
            loss, g, self.s = self.model.loss_and_flat_grad(self.inputs, self.targets, self.s)
            clip_grad_norm_(g, 5.0)
            self.optimizer.step(self.model.theta, g, 1e-3)
        return loss


class MatmulBound:
    """The matrix products of one training step (see the module docstring), on random arrays."""

    def __init__(self, K: int, H: int, B: int, T: int, seed: int = 0, threads: int | None = None):
        self.threads = threads
        rng = np.random.default_rng(seed)
        f32 = np.float32
        N = T * B
        self.T, self.B, self.chars = T, B, B * T
        self.S = rng.uniform(-1, 1, (T + 1, B, H + 1)).astype(f32)  # states [s_t, 1]
        self.Wb = rng.uniform(-0.1, 0.1, (H + 1, H)).astype(f32)
        self.Vc = rng.uniform(-0.1, 0.1, (H + 1, K)).astype(f32)
        self.a = np.empty((B, H), f32)
        self.o = np.empty((N, K), f32)
        self.do = rng.uniform(-1e-3, 1e-3, (N, K)).astype(f32)
        self.dVc = np.empty((H + 1, K), f32)
        self.da = np.empty((N, H), f32)
        self.dWb = np.empty((H + 1, H), f32)
        self.from_next = np.empty((B, H), f32)

    def run(self, steps: int) -> None:
        use(self.threads, 1)
        T, B = self.T, self.B
        S, Wb, Vc, a, from_next = self.S, self.Wb, self.Vc, self.a, self.from_next
        S_flat = S.reshape(-1, S.shape[2])
        H = Wb.shape[1]
        WT = Wb[:H].T
        da = self.da.reshape(T, B, H)
        for _ in range(steps):
            for t in range(T):
                np.matmul(S[t], Wb, out=a)  # the recurrence
            np.matmul(S_flat[B:], Vc, out=self.o)  # logits
            np.matmul(S_flat[B:].T, self.do, out=self.dVc)  # [dV; dc]
            np.matmul(self.do, Vc[:H].T, out=self.da)  # do V^T
            for t in range(T - 2, -1, -1):
                np.matmul(da[t + 1], WT, out=from_next)  # da_{t+1} W^T
            np.matmul(S_flat[: T * B].T, self.da, out=self.dWb)  # [dW; db]


def timed(fn, steps: int) -> tuple[float, float]:
    """Wall-clock and this thread's CPU seconds for ``fn(steps)``."""
    t0, c0 = time.perf_counter(), time.thread_time()
    fn(steps)
    return time.perf_counter() - t0, time.thread_time() - c0


def median_rates(runs: dict, chars: dict, steps: int, repeats: int, cpu: dict | None = None) -> dict:
    """Interleave ``repeats`` timings of each ``runs[name](steps)``; median chars/s by name.

    Each run is warmed up once first. Interleaving puts every name under the same machine load.
    If ``cpu`` is a dict, it receives chars per second of this thread's CPU time by name: the
    speed with the time other processes held the core taken out (meaningful when all the work
    runs on the calling thread: one BLAS thread, one worker).
    """
    for fn in runs.values():
        fn(1)
    times: dict = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, steps))
    if cpu is not None:
        cpu.update({name: chars[name] * steps / statistics.median(c for _, c in ts) for name, ts in times.items()})
    return {name: chars[name] * steps / statistics.median(w for w, _ in ts) for name, ts in times.items()}


def use(threads: int | None, workers: int = 1) -> None:
    """Set the BLAS threads (None: leave them) and the stream workers of this process."""
    if threads is not None:
        with_threads(threads)
    set_workers(workers)


def with_threads(n: int) -> None:
    """Set the BLAS threads of this process, or exit with a message if it cannot be done."""
    if not set_threads(n) or get_threads() != n:
        sys.exit(f"could not set the BLAS threads to {n} at run time (no controllable BLAS found)")


def print_table(headers: list[str], rows: list[list], file=sys.stdout) -> None:
    """A plain text table, columns right-aligned (first column left)."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, row in enumerate(cells):
        line = "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        print(line.rstrip(), file=file)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=file)
    file.flush()


def config_name(config) -> str:
    K, H, B, T = config
    return f"K={K} H={H} B={B} T={T}"


def machine_load() -> str:
    """The 1-minute load average and the CPU count, to judge how noisy a run was."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return f"{os.cpu_count()} CPUs"
    return f"load average {load:.2f} on {os.cpu_count()} CPUs"


class BusyCore:
    """A context that keeps one core busy with a Python busy loop, killed on exit whatever happens."""

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)  # let the scheduler see it
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()
        return False


def step_and_draw(model, seed: int = 0):
    """A run(steps) function: one model.step and one inverse-CDF draw per token (B=1)."""
    rng = np.random.default_rng(seed)
    K = model.vocab_size
    state = {"s": model.zero_state(1), "x": 1}

    def run(steps):
        s, x = state["s"], state["x"]
        for _ in range(steps):
            p, s = model.step(x, s)  # (1, K), (1, H)
            cdf = p[0].cumsum()
            x = min(int(cdf.searchsorted(rng.random() * cdf[-1], side="right")), K - 1)  # inverse CDF
        state["s"], state["x"] = s, x

    return run
