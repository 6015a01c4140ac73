"""Data-parallel scaling: training throughput with 1 and 2 MPI ranks, and where communication wins.

For each hidden size H, runs ``mpiexec -n R`` (R = 1, 2; one BLAS thread per rank) of this file as
a worker that trains through ``charrnn.distributed`` exactly as ``charrnn train`` does, with the
global batch B shared among the ranks, and measures per step: the whole step, the gradient
Allreduce inside it (P + 1 floats), the two-number Allreduce that agrees on stopping, and a
validation pass. The single-rank run also times the compute of one step alone, t(b), at several
per-rank batch sizes b (streams of T tokens).

Then it estimates when communication would dominate on many machines: a ring Allreduce of n
bytes over R ranks moves 2 (R-1)/R n bytes through each link, about 2n for large R, so it takes
2n / bandwidth (plus latency); it outweighs the compute of a step on networks slower than
2n / t(b). Other processes on the machine only add time, so the best of several steps is the
cleaner measure of cost; the median shows what a busy machine gives.

    python benchmarks/bench_mpi.py                        # H = 128, 512, 1024; B = 32, T = 64
    python benchmarks/bench_mpi.py --hidden-sizes 256 --batch-size 64 --corpus big.txt
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

GBIT = 1e9 / 8  # bytes per second in one Gbit/s
NETWORKS = (1, 10, 100)  # Gbit/s


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] + xs[(n - 1) // 2]) / 2


def worker(args) -> None:
    """One rank of a measured run (under mpiexec); rank 0 prints one JSON line on stdout."""
    import numpy as np

    from charrnn import distributed
    from charrnn.checkpoint import ModelStore
    from charrnn.train import TrainConfig

    world = distributed.connect(True)
    config = TrainConfig(
        hidden_size=args.hidden_size, batch_size=args.batch_size, seq_len=args.seq_len,
        eval_every=0, save_every=0, steps=args.steps,
    )
    trainer = distributed.prepare(world, config, [args.corpus], ModelStore(args.store), lock=False)
    reduce = trainer.reduce_gradient
    reduce_times = []

    def timed_reduce(g, loss):
        t0 = time.perf_counter()
        mean = reduce(g, loss)
        reduce_times.append(time.perf_counter() - t0)
        return mean

    trainer.reduce_gradient = timed_reduce
    for _ in range(3):  # warm-up
        trainer.train_step()
    world.comm.Barrier()
    reduce_times.clear()
    step_times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        trainer.train_step()
        step_times.append(time.perf_counter() - t0)

    # the Allreduce alone (all ranks enter together), and the stop agreement
    P = trainer.model.num_params
    buf = np.zeros(P + 1, np.float32)
    allreduce_times = []
    for _ in range(20):
        world.comm.Barrier()
        t0 = time.perf_counter()
        world.comm.Allreduce(world.MPI.IN_PLACE, buf, op=world.MPI.SUM)
        allreduce_times.append(time.perf_counter() - t0)
    world.comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(200):
        world.agree_stop(None, 0.5)
    agree = (time.perf_counter() - t0) / 200

    # validation: shared among the ranks
    world.comm.Barrier()
    t0 = time.perf_counter()
    trainer.validate()
    validate = time.perf_counter() - t0

    # compute of one step alone, at several per-rank batch sizes (on one rank: the others wait)
    compute = None
    if world.is_root and args.compute:
        rng = np.random.default_rng(0)
        K, T = trainer.tokenizer.vocab_size, config.seq_len
        points = []
        for b in (4, 16, 64):
            x, y = rng.integers(0, K, (b, T)), rng.integers(0, K, (b, T))
            trainer.model.loss_and_flat_grad(x, y)
            times = []
            for _ in range(max(5, args.steps // 3)):
                t0 = time.perf_counter()
                trainer.model.loss_and_flat_grad(x, y)
                times.append(time.perf_counter() - t0)
            points.append((b, min(times)))  # the least disturbed: other processes only add time
        compute = points
    world.finish()

    if world.is_root:
        print(json.dumps({
            "ranks": world.size, "H": args.hidden_size, "K": trainer.tokenizer.vocab_size, "P": P,
            "B": config.batch_size, "T": config.seq_len,
            "step": median(step_times), "best_step": min(step_times), "reduce_in_step": median(reduce_times),
            "allreduce": median(allreduce_times), "best_allreduce": min(allreduce_times), "agree": agree,
            "validate": validate, "val_tokens": len(trainer.val_ids), "compute": compute,
        }))


def launch(ranks: int, hidden_size: int, args, store: Path) -> dict:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install 'charrnn[mpi]'")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [
        mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker", "--hidden-size", str(hidden_size),
        "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--steps", str(args.steps),
        "--corpus", args.corpus, "--store", str(store),
    ] + (["--compute"] if ranks == 1 else [])
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"mpiexec -n {ranks} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    from charrnn.corpus import default_corpus_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden-sizes", default="128,512,1024", help="H values, comma-separated")
    parser.add_argument("--batch-size", type=int, default=32, help="B, global streams (shared by the ranks)")
    parser.add_argument("--seq-len", type=int, default=64, help="T")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run (after 3 warm-up)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; the fastest is shown")
    parser.add_argument("--corpus", default=str(default_corpus_path()))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compute", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hidden-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    print(
        f"corpus {Path(args.corpus).name}, B={args.batch_size} T={args.seq_len}, float32, 1 BLAS thread per rank, "
        f"median of {args.steps} steps, best of {args.repeat} runs, {os.cpu_count()} cores, "
        f"load average before {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for H in (int(h) for h in args.hidden_sizes.split(",")):
            one, two = (
                min((launch(R, H, args, Path(tmp) / "store") for _ in range(args.repeat)), key=lambda r: r["step"])
                for R in (1, 2)
            )  # the run with the lowest median step time
            rows.append((one, two))
    print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    BT = args.batch_size * args.seq_len
    print("\n## 1 vs 2 ranks on this machine\n")
    print(
        "| H | params P | Allreduce bytes | ranks | step ms, median (best) | of which Allreduce ms | chars/s, median (best) "
        "| speed-up, median (best) | validation ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for one, two in rows:
        for r in (one, two):
            print(
                f"| {r['H']} | {r['P']:,} | {4 * (r['P'] + 1):,} | {r['ranks']} | {1e3 * r['step']:.1f} "
                f"({1e3 * r['best_step']:.1f}) | {1e3 * r['reduce_in_step']:.2f} | {BT / r['step']:,.0f} "
                f"({BT / r['best_step']:,.0f}) | {one['step'] / r['step']:.2f} ({one['best_step'] / r['best_step']:.2f}) "
                f"| {1e3 * r['validate']:.0f} |"
            )
    print("\n## The Allreduce alone, 2 ranks (shared memory)\n")
    print("| H | bytes | Allreduce ms, median (best) | GB/s at best | stop agreement us |")
    print("|---|---|---|---|---|")
    for _, two in rows:
        n = 4 * (two["P"] + 1)
        print(
            f"| {two['H']} | {n:,} | {1e3 * two['allreduce']:.3f} ({1e3 * two['best_allreduce']:.3f}) | "
            f"{n / two['best_allreduce'] / 1e9:.2f} | {1e6 * two['agree']:.1f} |"
        )
    print("\n## When communication dominates on many machines\n")
    points = [b for b, _ in rows[0][0]["compute"]]
    print(
        f"t(b): compute (forward + backward) of one step on one rank for b streams of T = {args.seq_len}, best of "
        "several; the Allreduce of n bytes over many machines takes about 2n / bandwidth; communication "
        "dominates on networks slower than 2n / t(b).\n"
    )
    print(
        "| H | n = gradient bytes | " + " | ".join(f"Allreduce ms at {g} Gbit/s" for g in NETWORKS) + " | "
        + " | ".join(f"t({b}) ms" for b in points) + " | "
        + " | ".join(f"dominates below, b = {b}" for b in points) + " |"
    )
    print("|---|---|" + "---|" * (len(NETWORKS) + 2 * len(points)))
    for one, _ in rows:
        n = 4 * (one["P"] + 1)
        comm = [f"{1e3 * 2 * n / (g * GBIT):.2f}" for g in NETWORKS]
        compute = [f"{1e3 * t:.1f}" for _, t in one["compute"]]
        below = [f"{2 * n / t / GBIT:.2f} Gbit/s" for _, t in one["compute"]]
        print(f"| {one['H']} | {n:,} | " + " | ".join(comm + compute + below) + " |")


if __name__ == "__main__":
    main()
