"""What the hashed n-gram direct connections cost: per training step, and per step under MPI.

In one process: the training step (forward, backward, Adam, and the tables' sparse Adagrad) of
the default model with and without its n-gram tables, taking turns on the same chunks of a text.
Under ``mpiexec -n R``: what a step's exchange of the tables' gradient costs, sending only the
rows the step touched (``World.reduce_direct``), against one dense Allreduce of the whole table,
measured in the same run.

    python benchmarks/bench_direct.py                                  # one process
    mpiexec -n 2 python benchmarks/bench_direct.py --mpi               # the exchange
"""

from __future__ import annotations

import argparse
import sys
import time

import harness  # noqa: F401  (puts the checkout first on sys.path)
import numpy as np

from charrnn.cells import build_model
from charrnn.data import Batches
from charrnn.direct import plan_rows
from charrnn.optim import Adam
from charrnn.output import make_head
from charrnn.tokenizer import Tokenizer

SHAKESPEARE = harness.REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def default_models(text: str, order: int, size_mb: float):
    """The tokenizer and the default model's config, with and without n-gram tables."""
    tok = Tokenizer.fit([text])
    K = tok.vocab_size
    config = {"cell": "rnn", "vocab_size": K, "hidden_size": 256}
    rows = plan_rows(make_head(K, 256, config).widths, size_mb)
    return tok, config, {**config, "direct": {"order": order, "rows": rows}}


class Training:
    """A model, its optimizer and a text's chunks; ``run(n)`` takes n training steps."""

    def __init__(self, config: dict, batches: Batches):
        self.model, self.batches, self.k = build_model(config, seed=0), batches, 0
        self.optimizer = Adam(self.model.num_params)
        self.s = self.model.zero_state(batches.batch_size)
        self.chars = batches.batch_size * batches.seq_len

    def run(self, steps: int) -> None:
        for _ in range(steps):
            x, y = self.batches.chunk(self.k % self.batches.num_chunks)
            self.k += 1
            _, g, self.s = self.model.loss_and_flat_grad(x, y, self.s)
            self.optimizer.step(self.model.theta, g, 1e-3)
            if self.model.direct is not None:
                self.model.direct.update(0.1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--order", type=int, default=6)
    p.add_argument("--size-mb", type=float, default=64)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--mpi", action="store_true", help="measure the exchange between MPI ranks")
    args = p.parse_args(argv)
    harness.with_threads(1)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tok, plain, direct = default_models(text, args.order, args.size_mb)
    ids = tok.encode(text[:300_000])
    if not args.mpi:
        batches = Batches(ids, 32, 64)
        runs = {"plain": Training(plain, batches), "direct": Training(direct, batches)}
        runs["direct"].run(args.steps)  # the tables' pages touched once, as in a long run
        rates = harness.median_rates({k: r.run for k, r in runs.items()}, {k: r.chars for k, r in runs.items()},
                                     steps=5, repeats=max(3, args.steps // 10))  # taking turns
        print(f"# bench_direct: {harness.machine_load()}, K={tok.vocab_size} H=256 B=32 T=64, "
              f"order {args.order}, {args.size_mb:g} MB table, 1 thread, median of interleaved runs")
        print(f"without tables {rates['plain']:,.0f} chars/s, with tables {rates['direct']:,.0f} chars/s: "
              f"a step costs {rates['plain'] / rates['direct']:.2f}x")
        return
    from charrnn.distributed import connect

    world = connect(True)
    batches = Batches(ids[world.rank :: world.size], 32 // world.size, 64)
    model = build_model(direct, seed=0)
    s = model.zero_state(batches.batch_size)
    dense = np.empty_like(model.direct.table)
    sparse_t, dense_t, rows = [], [], []
    for k in range(args.steps):
        x, y = batches.chunk(k % batches.num_chunks)
        _, _, s = model.loss_and_flat_grad(x, y, s)
        world.comm.Barrier()
        t0 = time.perf_counter()
        grads = world.reduce_direct(model.direct)
        sparse_t.append(time.perf_counter() - t0)
        rows.append(sum(len(r) for r, _ in grads.values()))
        model.direct.update(0.1, grads)
        world.comm.Barrier()
        t0 = time.perf_counter()
        world.comm.Allreduce(model.direct.table, dense, op=world.MPI.SUM)
        dense_t.append(time.perf_counter() - t0)
    if world.is_root:
        ts, td = np.median(sparse_t), np.median(dense_t)
        print(f"# bench_direct --mpi: {world.size} ranks, {model.direct.table.nbytes / 2**20:.0f} MB table, "
              f"order {args.order}, B=32 T=64 in all, median of {args.steps} steps")
        print(f"touched rows exchanged {ts * 1e3:.1f} ms (about {np.median(rows):,.0f} rows); "
              f"dense Allreduce of the table {td * 1e3:.1f} ms: {td / ts:.1f}x slower")
    world.finish()


if __name__ == "__main__":
    sys.exit(main())
