"""Training on a busy machine: chars/s with 1 and 2 threads, idle and with one core busy.

A second process spinning in ``while True: pass`` takes one core (it is always killed, whatever
happens). A recurrent step is T small matrix products in a row; a 2-thread OpenBLAS meets its
worker at the end of each one, and when that worker has to share its core the wait can cost
much more than the product. Two stream workers (``charrnn.threads.set_workers``: groups of
streams on two Python threads, each with a 1-thread BLAS) meet once per chunk instead. The table
shows each setting idle and busy, and the default policy (``charrnn.threads.default_threads``,
one worker) busy against 1 thread idle: it should keep at least half.

    python benchmarks/bench_busy.py
    python benchmarks/bench_busy.py --configs 65,512,64,100 --steps 3
"""

from __future__ import annotations

import argparse

import harness

from charrnn.threads import default_threads

SETTINGS = ((1, 1), (2, 1), (1, 2))  # (BLAS threads, stream workers)


def measure(config, settings, steps: int, repeats: int) -> dict:
    """Median chars/s by (threads, workers), the settings taking turns."""
    runs = {st: harness.TrainingStep(*config, threads=st[0], workers=st[1]).run for st in settings}
    return harness.median_rates(runs, dict.fromkeys(runs, config[2] * config[3]), steps, repeats)


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
        default = (default_threads(config[1], config[2]), 1)
        settings = tuple(dict.fromkeys((*SETTINGS, default)))
        idle = measure(config, settings, args.steps, args.repeats)
        with harness.BusyCore():
            busy = measure(config, settings, args.steps, args.repeats)
        for st in SETTINGS:
            rows.append([harness.config_name(config), st[0], st[1], f"{idle[st]:,.0f}", f"{busy[st]:,.0f}",
                         f"{busy[st] / idle[st]:.2f}", f"{idle[st] / idle[(1, 1)]:.2f}"])
        ratio = busy[default] / idle[(1, 1)]
        rows.append([harness.config_name(config), f"default={default[0]}", default[1], "", f"{busy[default]:,.0f}",
                     "", f"{ratio:.2f} busy ({'ok' if ratio >= 0.5 else 'BELOW 0.5'})"])
    harness.print_table(["config", "threads", "workers", "idle chars/s", "busy chars/s", "busy/idle",
                         "vs 1 thread idle"], rows)


if __name__ == "__main__":
    main()
