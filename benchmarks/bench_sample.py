"""Sampling speed with one stream (B=1): steps per second of ``RNN.step`` and of ``generate``.

Three rows per vocabulary size K (H=256 by default): ``RNN.step`` alone; a step plus drawing the
next id by inverse CDF (what ``bench_torch.py`` compares with PyTorch); and the library's
``charrnn.sampling.generate`` end to end (temperature 1, tokens decoded to text). With
``--classes``, two more rows for the same K with the class-factored head (C about sqrt(K)): a
step plus the two-stage draw (class, then token; ``charrnn.sampling.draw_by_class``), and
``generate``, which takes that draw; the last column is the speed-up over the full head's row.

    python benchmarks/bench_sample.py
    python benchmarks/bench_sample.py --vocab 65,4000 --hidden-size 512 --threads 1,2
    python benchmarks/bench_sample.py --vocab 6000 --classes
"""

from __future__ import annotations

import argparse
import itertools

import harness
import numpy as np

from charrnn.model import RNN


def step_only(model: RNN):
    state = {"s": model.zero_state(1)}
    x = np.array([1])

    def run(steps):
        s = state["s"]
        for _ in range(steps):
            _, s = model.step(x, s)
        state["s"] = s

    return run


def step_and_draw_by_class(model: RNN, seed: int = 0):
    """A run(steps) function: one step of the recurrence and one two-stage draw per token (B=1)."""
    from charrnn.sampling import draw_by_class

    rng = np.random.default_rng(seed)
    state = {"s": model.zero_state(1), "x": np.array([1])}

    def run(steps):
        s, x = state["s"], state["x"]
        for _ in range(steps):
            s1, g, s = model.step_hidden(x, s)  # (1, H+1), n-gram hashes or None, (1, S)
            x = draw_by_class(model, s1, rng, g)
        state["s"], state["x"] = s, x

    return run


def library_generate(model: RNN, seed: int = 0):
    from charrnn.sampling import generate
    from charrnn.tokenizer import Tokenizer

    tokenizer = Tokenizer([chr(0x4E00 + i) for i in range(model.vocab_size - 1)])  # K-1 ideographs + unknown

    def run(steps):
        for _ in itertools.islice(generate(model, tokenizer, "一", steps, rng=seed), steps):
            pass

    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=harness.parse_threads, default=[65, 4000], metavar="K[,K...]",
                        help="vocabulary sizes (default: 65,4000)")
    parser.add_argument("--hidden-size", type=int, default=256, help="H (default: 256)")
    parser.add_argument("--threads", type=harness.parse_threads, default=[1], metavar="N[,N...]",
                        help="BLAS thread counts to try (default: 1)")
    parser.add_argument("--classes", action="store_true", help="also time the class-factored head")
    parser.add_argument("--steps", type=int, default=2000, help="steps per timed run (default: 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts (default: 3)")
    args = parser.parse_args(argv)

    print(f"# bench_sample: {harness.machine_load()}, float32, B=1, median of {args.repeats} x {args.steps} steps")
    rows = []
    for n in args.threads:
        harness.with_threads(n)
        for K in args.vocab:
            model = RNN(K, args.hidden_size, seed=0)
            runs = {"step": step_only(model), "step + draw": harness.step_and_draw(model), "generate": library_generate(model)}
            if args.classes:
                classed = RNN(K, args.hidden_size, seed=0, output=harness.output_config(K, "classes"))
                runs["classes: step + draw"] = step_and_draw_by_class(classed)
                runs["classes: generate"] = library_generate(classed)
            rates = harness.median_rates(runs, dict.fromkeys(runs, 1), args.steps, args.repeats)
            for name, rate in rates.items():
                full = rates[name.removeprefix("classes: ")] if name.startswith("classes") else None
                speedup = f"{rate / full:.2f}x" if full else ""
                rows.append([f"K={K} H={args.hidden_size}", n, name, f"{rate:,.0f}", f"{1e6 / rate:.1f}", speedup])
    harness.print_table(["model", "threads", "what", "steps/s", "us/step", "classes / full"], rows)


if __name__ == "__main__":
    main()
