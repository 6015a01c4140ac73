"""Training throughput of the two output layers, ``full`` and ``classes``, at each vocabulary size.

For each K (and H, B, T), one RNN with the full softmax and one with the class-factored head
(frequency classes of Zipf-distributed ids, C about sqrt(K) unless ``--classes``) take turns
running ``--steps`` training steps (forward, BPTT, clipping, Adam) on one BLAS thread; the table
gives the median tokens/s of each and their ratio, measured in the same run.

    python benchmarks/bench_output.py                          # char level (65, 3891, 6000) and words
    python benchmarks/bench_output.py --configs 3891,256,32,64 --classes 32,62,100
"""

from __future__ import annotations

import argparse

import harness

CONFIGS = ((65, 256, 32, 64), (500, 256, 32, 64), (3891, 256, 32, 64), (6000, 256, 32, 64),
           (10000, 256, 32, 64), (50000, 256, 32, 64))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", type=harness.parse_config, default=list(CONFIGS),
                        metavar="K,H,B,T", help="configs to run (default: K = 65 to 50,000 at H=256 B=32 T=64)")
    parser.add_argument("--classes", type=harness.parse_threads, default=None, metavar="C[,C...]",
                        help="class counts to try (default: about sqrt(K))")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed run (default: 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts (default: 3)")
    args = parser.parse_args(argv)

    print(f"# bench_output: {harness.machine_load()}, float32, 1 thread, median of {args.repeats} x {args.steps} steps")
    rows = []
    for config in args.configs:
        K = config[0]
        runs, chars = {}, {}
        step = harness.TrainingStep(*config, threads=1)
        runs["full"], chars["full"] = step.run, step.chars
        for C in args.classes or [harness.default_num_classes(K)]:
            step = harness.TrainingStep(*config, threads=1, output="classes", num_classes=C)
            runs[C], chars[C] = step.run, step.chars
        rates = harness.median_rates(runs, chars, args.steps, args.repeats)
        for C in args.classes or [harness.default_num_classes(K)]:
            rows.append([harness.config_name(config), C, f"{rates['full']:,.0f}", f"{rates[C]:,.0f}",
                         f"{rates[C] / rates['full']:.2f}x"])
    harness.print_table(["config", "classes", "full tokens/s", "classes tokens/s", "classes / full"], rows)


if __name__ == "__main__":
    main()
