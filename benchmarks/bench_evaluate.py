"""Forward-only throughput (scoring a text) against training throughput, in chars/s.

Scoring needs no gradient, so it reads the text as many parallel streams (B large) and runs only
the forward pass: the recurrence's products get B rows each, and the backward pass and the
optimizer are gone. Rows: a training step at the training config; ``RNN.forward`` and
``RNN.log_probs`` on ``--streams`` streams; and ``charrnn.evaluate.evaluate`` end to end on a
text of ``--chars`` random ids, once per step (loss, bits per char, top-1/top-5 accuracy). The last column is
each row's speed over training's.

    python benchmarks/bench_evaluate.py
    python benchmarks/bench_evaluate.py --config 4000,256,32,64 --streams 512 --threads 2
"""

from __future__ import annotations

import argparse

import harness

from charrnn.model import RNN


def forward_run(model: RNN, B: int, T: int, method: str, workers: int = 1):
    ids = harness.random_ids(model.vocab_size, (B, T), seed=1)
    state = {"s": model.zero_state(B)}

    def run(steps):
        harness.use(None, workers)
        for _ in range(steps):
            if method == "forward":
                _, _, state["s"] = model.forward(ids, state["s"])
            else:
                _, state["s"] = model.log_probs(ids, state["s"])

    return run


def evaluate_run(model: RNN, chars: int, B: int, T: int, workers: int = 1):
    from charrnn.evaluate import evaluate

    ids = harness.random_ids(model.vocab_size, chars + 1, seed=2)

    def run(steps):
        harness.use(None, workers)
        for _ in range(steps):
            evaluate(model, None, ids, num_streams=B, seq_len=T)

    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=harness.parse_config, default=harness.CONFIGS[0], metavar="K,H,B,T",
                        help="the training config (default: 65,256,32,64)")
    parser.add_argument("--streams", type=int, default=256, help="parallel streams when scoring (default: 256)")
    parser.add_argument("--seq-len", type=int, default=64, help="steps per scoring chunk (default: 64)")
    parser.add_argument("--chars", type=int, default=50_000, help="text length for evaluate() (default: 50000)")
    parser.add_argument("--threads", type=harness.parse_threads, default=[1], metavar="N[,N...]",
                        help="BLAS thread counts to try (default: 1)")
    parser.add_argument("--workers", type=harness.parse_threads, default=[1], metavar="N[,N...]",
                        help="stream workers to try when scoring (default: 1)")
    parser.add_argument("--steps", type=int, default=5, help="chunks per timed run (default: 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts (default: 3)")
    args = parser.parse_args(argv)

    K, H, B, T = args.config
    Bs, Ts = args.streams, args.seq_len
    print(f"# bench_evaluate: {harness.machine_load()}, float32, median of {args.repeats} runs")
    rows = []
    for n in args.threads:
        harness.with_threads(n)
        model = RNN(K, H, seed=0)
        runs = {f"train B={B} T={T}": harness.TrainingStep(K, H, B, T).run}
        chars = {f"train B={B} T={T}": B * T}
        for w in args.workers:
            tag = f", {w} workers" if w > 1 else ""
            runs[f"RNN.forward B={Bs} T={Ts}{tag}"] = forward_run(model, Bs, Ts, "forward", w)
            runs[f"RNN.log_probs B={Bs} T={Ts}{tag}"] = forward_run(model, Bs, Ts, "log_probs", w)
            runs[f"evaluate() B={Bs} T={Ts}{tag}"] = evaluate_run(model, args.chars, Bs, Ts, w)
            chars.update({name: Bs * Ts for name in runs if name not in chars})
            chars[f"evaluate() B={Bs} T={Ts}{tag}"] = args.chars
        rates = harness.median_rates(runs, chars, args.steps, args.repeats)
        train = next(iter(rates.values()))
        for name, rate in rates.items():
            rows.append([name, n, f"{rate:,.0f}", f"{rate / train:.1f}x"])
    harness.print_table([f"K={K} H={H}", "threads", "chars/s", "vs train"], rows)


if __name__ == "__main__":
    main()
