"""Training throughput of the recurrent cells, in characters per second.

One training step is what training does with each chunk: forward, backward, gradient clipping
and an Adam update, here on random ids (B, T) over a vocabulary of K. The models take turns step
by step, so a change in machine load affects them all alike. Prints, per model, the median time
of the forward and backward passes and of the whole step, and B*T / step time.

    python benchmarks/bench_cells.py                       # rnn, lstm, gru at H=256, B=32, T=64
    python benchmarks/bench_cells.py --models lstm-2%0.2,gru+64 --hidden-size 512

Model specs: a cell name (rnn, lstm, gru), then optionally -L for L layers, +E for an embedding
of size E, %p for dropout p (on, as in training). BLAS runs on one thread unless
OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS / MKL_NUM_THREADS) is set in the environment.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # must precede the NumPy import

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from charrnn.cells import build_model  # noqa: E402
from charrnn.model import cross_entropy_grad_  # noqa: E402
from charrnn.optim import Adam, clip_grad_norm_  # noqa: E402


def parse_spec(spec: str, K: int, H: int) -> dict:
    """'lstm-2+64%0.2' -> the config of a 2-layer LSTM with embedding size 64 and dropout 0.2."""
    config = {"vocab_size": K, "hidden_size": H, "num_layers": 1, "embedding_size": None, "dropout": 0.0}
    rest = spec
    if "%" in rest:
        rest, p = rest.split("%", 1)
        config["dropout"] = float(p)
    if "+" in rest:
        rest, e = rest.split("+", 1)
        config["embedding_size"] = int(e)
    if "-" in rest:
        rest, n = rest.split("-", 1)
        config["num_layers"] = int(n)
    config["cell"] = rest
    return config


class Run:
    """One model under test: its optimizer, carried state and timings (seconds per step)."""

    def __init__(self, spec: str, K: int, H: int, B: int, dtype: str):
        self.spec, self.config = spec, parse_spec(spec, K, H)
        self.model = build_model(self.config, seed=0, dtype=dtype)
        self.opt = Adam(self.model.num_params, dtype=self.model.dtype)
        self.s = self.model.zero_state(B)
        self.rng = np.random.default_rng(1) if self.config["dropout"] else None  # dropout on
        self.forward, self.backward, self.total = [], [], []

    def step(self, inputs: np.ndarray, targets: np.ndarray, record: bool) -> None:
        """forward, backward, clip, Adam: what training does with one chunk."""
        m = self.model
        t0 = time.perf_counter()
        xs, ys, s = m._check(inputs, targets, self.s)
        p, cache, self.s = m.forward(xs, s, self.rng)
        t1 = time.perf_counter()
        _, do = cross_entropy_grad_(p, ys.T.reshape(-1))
        g = np.zeros_like(m.theta)
        m.backward(do, cache, m.unflatten(g))
        t2 = time.perf_counter()
        clip_grad_norm_(g, 5.0)
        self.opt.step(m.theta, g, 1e-3)
        t3 = time.perf_counter()
        if record:
            self.forward.append(t1 - t0)
            self.backward.append(t2 - t1)
            self.total.append(t3 - t0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Training throughput of the recurrent cells.")
    parser.add_argument("--models", default="rnn,lstm,gru", help="comma-separated specs (see the module doc)")
    parser.add_argument("--hidden-size", type=int, default=256, help="H, units per layer")
    parser.add_argument("--batch-size", type=int, default=32, help="B, parallel streams")
    parser.add_argument("--seq-len", type=int, default=64, help="T, steps per chunk")
    parser.add_argument("--vocab-size", type=int, default=65, help="K")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model, after 2 warm-up steps")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args(argv)

    B, T, K, H = args.batch_size, args.seq_len, args.vocab_size, args.hidden_size
    rng = np.random.default_rng(0)
    inputs, targets = rng.integers(0, K, (B, T)), rng.integers(0, K, (B, T))
    runs = [Run(spec.strip(), K, H, B, args.dtype) for spec in args.models.split(",")]
    for i in range(args.steps + 2):
        for run in runs:
            run.step(inputs, targets, record=i >= 2)
    print(
        f"B={B} T={T} K={K} H={H} {args.dtype}; BLAS threads: {os.environ['OPENBLAS_NUM_THREADS']}; "
        f"numpy {np.__version__}; median of {args.steps} steps"
    )
    print(f"{'model':<16}{'params':>10}{'forward ms':>12}{'backward ms':>13}{'step ms':>10}{'chars/s':>10}")
    for run in runs:
        fwd, bwd, step = (float(np.median(x)) for x in (run.forward, run.backward, run.total))
        print(
            f"{run.spec:<16}{run.model.num_params:>10,}{fwd * 1e3:>12.1f}{bwd * 1e3:>13.1f}"
            f"{step * 1e3:>10.1f}{B * T / step:>10,.0f}"
        )


if __name__ == "__main__":
    main()
