"""charrnn against PyTorch on the CPU: training chars/s and per-step sampling, measured in one run.

PyTorch's model is the usual one: nn.Embedding(K, H) + nn.RNN(H, H, tanh) + nn.Linear(H, K),
trained with cross-entropy, gradient clipping at 5 and Adam, the state carried from chunk to
chunk (detached), as charrnn trains. Sampling draws one token per step from B=1 stream. The two
libraries take turns run by run, at the same thread count, and the table shows charrnn/torch.

For large vocabularies, PyTorch's own factored output layer: nn.Embedding + nn.RNN +
nn.AdaptiveLogSoftmaxWithLoss (cutoffs K/20 and K/4, div_value 4, on Zipf-distributed ids)
against charrnn's class-factored head (C about sqrt(K)), forward and backward pass only (no
optimizer step), at H=256 B=32 T=64 and K = 6,000, 10,000, 50,000 (``--adaptive-vocab``).

PyTorch is not a dependency of charrnn; without it this script says so and exits. To install the
CPU build: ``pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu``.

    python benchmarks/bench_torch.py                    # the three configs, 1 thread
    python benchmarks/bench_torch.py --threads 2 --configs 65,256,32,64
"""

from __future__ import annotations

import argparse
import sys
import time

import harness


def torch_training(torch, K, H, B, T, seed=0):
    """A run(steps) function for PyTorch's Embedding + RNN + Linear + Adam on random ids."""
    nn = torch.nn
    torch.manual_seed(seed)
    emb, rnn, out = nn.Embedding(K, H), nn.RNN(H, H, batch_first=True), nn.Linear(H, K)
    params = [*emb.parameters(), *rnn.parameters(), *out.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    ids = torch.from_numpy(harness.random_ids(K, (B, T + 1), seed))
    inputs, targets = ids[:, :-1], ids[:, 1:].reshape(-1)
    state = {"h": torch.zeros(1, B, H)}

    def run(steps):
        for _ in range(steps):
            hs, h = rnn(emb(inputs), state["h"])  # (B, T, H)
            loss = nn.functional.cross_entropy(out(hs).reshape(-1, K), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            state["h"] = h.detach()

    return run


def torch_adaptive(torch, K, H, B, T, seed=0):
    """A run(steps) function: forward and backward of Embedding + RNN + AdaptiveLogSoftmaxWithLoss."""
    nn = torch.nn
    torch.manual_seed(seed)
    emb, rnn = nn.Embedding(K, H), nn.RNN(H, H, batch_first=True)
    head = nn.AdaptiveLogSoftmaxWithLoss(H, K, cutoffs=[K // 20, K // 4], div_value=4.0)
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    ids = torch.from_numpy(harness.random_ids(K, (B, T + 1), seed))  # Zipf: frequent ids first, as cutoffs assume
    inputs, targets = ids[:, :-1], ids[:, 1:].reshape(-1)
    state = {"h": torch.zeros(1, B, H)}

    def run(steps):
        for _ in range(steps):
            for p in params:
                p.grad = None
            hs, h = rnn(emb(inputs), state["h"])  # (B, T, H)
            head(hs.reshape(-1, H), targets).loss.backward()
            state["h"] = h.detach()

    return run


def charrnn_forward_backward(K, H, B, T, seed=0):
    """A run(steps) function: charrnn's loss_and_flat_grad with the class head (forward, BPTT)."""
    step = harness.TrainingStep(K, H, B, T, seed=seed, threads=None, output="classes")

    def run(steps):
        for _ in range(steps):
            _, _, step.s = step.model.loss_and_flat_grad(step.inputs, step.targets, step.s)

    return run


def torch_sampling(torch, K, H, seed=0):
    """A run(steps) function drawing one token per step from PyTorch's model (B=1)."""
    nn = torch.nn
    torch.manual_seed(seed)
    emb, rnn, out = nn.Embedding(K, H), nn.RNN(H, H), nn.Linear(H, K)
    state = {"h": torch.zeros(1, 1, H), "x": torch.zeros(1, 1, dtype=torch.long)}

    def run(steps):
        with torch.no_grad():
            h, x = state["h"], state["x"]
            for _ in range(steps):
                o, h = rnn(emb(x), h)  # (1, 1, H)
                p = torch.softmax(out(o[0]), dim=-1)  # (1, K)
                x = torch.multinomial(p, 1)  # (1, 1)
            state["h"], state["x"] = h, x

    return run


def charrnn_sampling(K, H, seed=0):
    """A run(steps) function drawing one token per step from charrnn's RNN (B=1)."""
    from charrnn.model import RNN

    return harness.step_and_draw(RNN(K, H, seed=seed), seed)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", type=harness.parse_config, default=list(harness.CONFIGS),
                        metavar="K,H,B,T", help="training configs (default: the three of the issue)")
    parser.add_argument("--sample-vocab", type=harness.parse_threads, default=[65, 4000], metavar="K[,K...]",
                        help="vocabulary sizes for sampling at H=256 (default: 65,4000)")
    parser.add_argument("--adaptive-vocab", type=harness.parse_threads, default=[6000, 10000, 50000],
                        metavar="K[,K...]", help="vocabulary sizes against AdaptiveLogSoftmaxWithLoss at "
                        "H=256 B=32 T=64 (default: 6000,10000,50000)")
    parser.add_argument("--threads", type=harness.parse_threads, default=[1], metavar="N[,N...]",
                        help="threads for both libraries (default: 1)")
    parser.add_argument("--workers", type=int, default=1,
                        help="charrnn's stream workers in training (default: 1; torch has no such setting)")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed run (default: 5)")
    parser.add_argument("--sample-steps", type=int, default=2000, help="sampling steps per timed run (default: 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts (default: 3)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench_torch: PyTorch is not installed; skipping. "
              "Install the CPU build with: pip install torch==2.13.0", file=sys.stderr)
        return

    print(f"# bench_torch: torch {torch.__version__}, {harness.machine_load()}, float32, "
          f"median of {args.repeats} runs")
    rows = []
    for n in args.threads:
        harness.with_threads(n)
        torch.set_num_threads(n)
        for config in args.configs:
            B, T = config[2], config[3]
            runs = {"charrnn": harness.TrainingStep(*config, threads=n, workers=args.workers).run,
                    "torch": torch_training(torch, *config)}
            rates = harness.median_rates(runs, {"charrnn": B * T, "torch": B * T}, args.steps, args.repeats)
            rows.append([f"train {harness.config_name(config)}", n, f"{rates['charrnn']:,.0f}",
                         f"{rates['torch']:,.0f}", f"{rates['charrnn'] / rates['torch']:.2f}x"])
        for K in args.adaptive_vocab:
            config = (K, 256, 32, 64)
            runs = {"charrnn": charrnn_forward_backward(*config), "torch": torch_adaptive(torch, *config)}
            rates = harness.median_rates(runs, {"charrnn": 32 * 64, "torch": 32 * 64}, args.steps, args.repeats)
            rows.append([f"fwd+bwd classes vs adaptive {harness.config_name(config)}", n, f"{rates['charrnn']:,.0f}",
                         f"{rates['torch']:,.0f}", f"{rates['charrnn'] / rates['torch']:.2f}x"])
        for K in args.sample_vocab:
            runs = {"charrnn": charrnn_sampling(K, 256), "torch": torch_sampling(torch, K, 256)}
            rates = harness.median_rates(runs, {"charrnn": 1, "torch": 1}, args.sample_steps, args.repeats)
            rows.append([f"sample K={K} H=256 B=1", n, f"{rates['charrnn']:,.0f}", f"{rates['torch']:,.0f}",
                         f"{rates['charrnn'] / rates['torch']:.2f}x"])
    harness.print_table(["workload (chars/s; sampling: steps/s)", "threads", "charrnn", "torch",
                         "charrnn/torch"], rows)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
