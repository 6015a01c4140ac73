"""Training throughput of charrnn's RNN (chars/s) against the matmul bound of the same shapes.

For each config K,H,B,T and each BLAS thread count: the median over ``--repeats`` runs of
``--steps`` training steps (forward, BPTT, clipping, Adam) on random ids, the matmul bound (the
same step's matrix products alone, see ``harness.py``) measured interleaved with it, and the
fraction of the bound reached.

    python benchmarks/bench_train.py                      # the three configs of the issue, 1 thread
    python benchmarks/bench_train.py --threads 1,2 --configs 65,256,32,64
"""

from __future__ import annotations

import argparse

import harness


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", type=harness.parse_config, default=list(harness.CONFIGS),
                        metavar="K,H,B,T", help="configs to run (default: the three of the issue)")
    parser.add_argument("--threads", type=harness.parse_threads, default=[1], metavar="N[,N...]",
                        help="BLAS thread counts to try (default: 1)")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed run (default: 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts (default: 3)")
    args = parser.parse_args(argv)

    print(f"# bench_train: {harness.machine_load()}, float32, median of {args.repeats} x {args.steps} steps")
    rows = []
    for config in args.configs:
        for n in args.threads:
            harness.with_threads(n)
            step, bound = harness.TrainingStep(*config), harness.MatmulBound(*config)
            rates = harness.median_rates({"train": step.run, "bound": bound.run},
                                         {"train": step.chars, "bound": bound.chars}, args.steps, args.repeats)
            rows.append([harness.config_name(config), n, f"{rates['train']:,.0f}", f"{rates['bound']:,.0f}",
                         f"{rates['train'] / rates['bound']:.0%}"])
    harness.print_table(["config", "threads", "train chars/s", "bound chars/s", "of bound"], rows)


if __name__ == "__main__":
    main()
