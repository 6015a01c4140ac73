"""Training on a busy machine: chars/s with 1 and 2 BLAS threads, idle and with one core busy.

A second process spinning in ``while True: pass`` takes one core (it is always killed, whatever
happens). A recurrent step is T small matrix products in a row; a 2-thread OpenBLAS meets its
worker at the end of each one, and when that worker has to share its core the wait can cost
much more than the product. The table shows each thread count idle and busy, and the default
thread policy (``charrnn.threads.default_threads``) busy against 1 thread idle: it should keep at
least half.

    python benchmarks/bench_busy.py
    python benchmarks/bench_busy.py --configs 65,512,64,100 --steps 3
"""

from __future__ import annotations

import argparse

import harness

from charrnn.threads import default_threads


def measure(config, threads: int, steps: int, repeats: int) -> float:
    harness.with_threads(threads)
    step = harness.TrainingStep(*config)
    return harness.median_rates({"train": step.run}, {"train": step.chars}, steps, repeats)["train"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", type=harness.parse_config,
                        default=[harness.CONFIGS[0], harness.CONFIGS[1]], metavar="K,H,B,T",
                        help="configs to run (default: 65,256,32,64 and 65,512,64,100)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed run (default: 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts (default: 3)")
    args = parser.parse_args(argv)

    print(f"# bench_busy: {harness.machine_load()} before the busy loop, float32, "
          f"median of {args.repeats} x {args.steps} steps")
    rows = []
    for config in args.configs:
        default = default_threads(config[1], config[2])
        idle = {n: measure(config, n, args.steps, args.repeats) for n in (1, 2)}
        with harness.BusyCore():
            busy = {n: measure(config, n, args.steps, args.repeats) for n in (1, 2)}
            busy_default = busy.get(default) or measure(config, default, args.steps, args.repeats)
        for n in (1, 2):
            rows.append([harness.config_name(config), n, f"{idle[n]:,.0f}", f"{busy[n]:,.0f}",
                         f"{busy[n] / idle[n]:.2f}", f"{idle[n] / idle[1]:.2f}"])
        ratio = busy_default / idle[1]
        rows.append([harness.config_name(config), f"default={default}", "", f"{busy_default:,.0f}",
                     "", f"{ratio:.2f} busy ({'ok' if ratio >= 0.5 else 'BELOW 0.5'})"])
    harness.print_table(["config", "threads", "idle chars/s", "busy chars/s", "busy/idle", "vs 1 thread idle"],
                        rows)


if __name__ == "__main__":
    main()
