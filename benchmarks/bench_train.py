"""Training throughput of charrnn's RNN (chars/s) against the matmul bound of the same shapes.

For each config K,H,B,T, each BLAS thread count and each number of stream workers: the median over ``--repeats`` runs of
``--steps`` training steps (forward, BPTT, clipping, Adam) on random ids, the matmul bound (the
same step's matrix products alone, see ``harness.py``) measured interleaved with it, and the
fraction of the bound reached, from wall-clock time and, with one thread and one worker, from
the CPU time of the thread (which leaves out the time other processes held the core, so it varies
less on a shared machine). The bound is that of the BLAS thread count; with stream workers
(``charrnn.threads.set_workers``: groups of streams on Python threads, one BLAS thread each) a
step can use more cores than the bound does, and the fraction can pass 100%.

    python benchmarks/bench_train.py                      # the three configs of the issue, 1 thread
    python benchmarks/bench_train.py --threads 1,2 --workers 1,2 --configs 65,256,32,64
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
    parser.add_argument("--workers", type=harness.parse_threads, default=[1], metavar="N[,N...]",
                        help="stream workers to try (default: 1)")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed run (default: 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median counts (default: 5)")
    args = parser.parse_args(argv)

    print(f"# bench_train: {harness.machine_load()}, float32, median of {args.repeats} x {args.steps} steps")
    rows = []
    for config in args.configs:
        runs, chars = {}, {}
        for n in args.threads:
            bound = harness.MatmulBound(*config, threads=n)
            runs[("bound", n)], chars[("bound", n)] = bound.run, bound.chars
            for w in args.workers:
                step = harness.TrainingStep(*config, threads=n, workers=w)
                runs[(n, w)], chars[(n, w)] = step.run, step.chars
        cpu: dict = {}
        rates = harness.median_rates(runs, chars, args.steps, args.repeats, cpu)  # all settings take turns
        for n in args.threads:
            for w in args.workers:
                train, bound = rates[(n, w)], rates[("bound", n)]
                by_cpu = f"{cpu[(n, w)] / cpu[('bound', n)]:.0%}" if n == w == 1 else "--"
                rows.append([harness.config_name(config), n, w, f"{train:,.0f}", f"{bound:,.0f}", f"{train / bound:.0%}",
                             by_cpu])
    harness.print_table(["config", "threads", "workers", "train chars/s", "bound chars/s", "of bound",
                         "of bound (CPU time)"], rows)


if __name__ == "__main__":
    main()
