"""Prediction quality: validation bits per character within a training-time budget.

Reproduces the quality table of docs/models.md on tiny-Shakespeare (train = first 90% of the
characters, validation = the last 10%, as nanoGPT splits it). Only training steps count against
the budget; validation runs outside the clock. The best validation result is reported (early
stopping), and with --dynamic the best weights are then scored again with dynamic evaluation.

    python benchmarks/bench_quality.py --cell rnn --minutes 5
    python benchmarks/bench_quality.py --cell lstm --minutes 10 --dynamic

Reference points (validation bpc): unigram 4.83, Kneser-Ney 7-gram 2.19, PPMd order 6 2.03.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


from charrnn.corpus import encode_cached, scan
from charrnn.dynamic import DynamicConfig, dynamic_evaluate
from charrnn.evaluate import evaluate
from charrnn.threads import set_threads
from charrnn.tokenizer import Tokenizer
from charrnn.train import Trainer, TrainConfig, make_model

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(SHAKESPEARE), help="text file (default: tiny-Shakespeare)")
    p.add_argument("--minutes", type=float, default=5.0, help="training-time budget")
    p.add_argument("--cell", default="rnn", choices=["rnn", "lstm", "gru"])
    p.add_argument("--hidden-size", type=int, default=None, help="default: TrainConfig's")
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--embedding-size", type=int, default=None)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--min-lr-fraction", type=float, default=1.0,
                   help="decay the learning rate along a cosine over the time budget down to this "
                        "fraction of --lr (1.0 = constant)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--eval-every", type=float, default=30.0, help="seconds of training between validations")
    p.add_argument("--dynamic", action="store_true", help="also score the best weights with dynamic evaluation")
    p.add_argument("--dynamic-lr", type=float, nargs="+", default=[DynamicConfig.lr],
                   help="one or more step sizes to try (each from the best weights)")
    p.add_argument("--dynamic-decay", type=float, default=DynamicConfig.decay)
    p.add_argument("--dynamic-seq-len", type=int, default=DynamicConfig.seq_len)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    overrides = {k: v for k, v in {
        "cell": args.cell, "hidden_size": args.hidden_size, "num_layers": args.num_layers,
        "embedding_size": args.embedding_size, "dropout": args.dropout, "batch_size": args.batch_size,
        "seq_len": args.seq_len, "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed,
    }.items() if v is not None}
    config = TrainConfig(**overrides, eval_every=0, save_every=0)
    config.validate()

    corpus = scan([args.corpus])
    tokenizer = Tokenizer.from_counts(corpus.counts)
    ids = encode_cached(corpus, tokenizer, None)
    n_train = int(len(ids) * 0.9)
    train_ids, val_ids = ids[:n_train], ids[n_train:]
    model = make_model(config, tokenizer.vocab_size)
    trainer = Trainer(config, model, tokenizer, train_ids, val_ids)
    print(f"# {config.cell} H={config.hidden_size} L={config.num_layers} E={config.embedding_size} "
          f"dropout={config.dropout} B={config.batch_size} T={config.seq_len} lr={config.lr} "
          f"params={model.num_params:,} budget={args.minutes} min", file=sys.stderr)

    budget, trained, next_eval = args.minutes * 60.0, 0.0, args.eval_every
    best_bpc, best_theta, best_at, curve = math.inf, model.theta.copy(), 0.0, []
    base_lr = config.lr
    while trained < budget:
        progress = trained / budget
        factor = args.min_lr_fraction + (1 - args.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
        trainer.config.lr = base_lr * factor
        t0 = time.perf_counter()
        trainer.train_step()
        trained += time.perf_counter() - t0
        if trained >= next_eval or trained >= budget:
            next_eval += args.eval_every
            bpc = evaluate(model, None, val_ids, num_streams=64, seq_len=256)["bits_per_char"]
            curve.append((round(trained, 1), round(bpc, 4)))
            print(f"  {trained:7.1f} s  step {trainer.step:6d}  epoch {trainer.epochs_done:5.2f}  "
                  f"val {bpc:.4f} bpc", file=sys.stderr)
            if bpc < best_bpc:
                best_bpc, best_at = bpc, trained
                best_theta[...] = model.theta
    result = {
        "cell": config.cell, "hidden_size": config.hidden_size, "num_layers": config.num_layers,
        "params": model.num_params, "minutes": args.minutes, "steps": trainer.step,
        "epochs": round(trainer.epochs_done, 2),
        "chars_per_sec": round(trainer.step * config.batch_size * config.seq_len / trained),
        "val_bpc": round(best_bpc, 4), "best_at_seconds": round(best_at, 1), "curve": curve,
    }
    if args.dynamic:
        for lr in args.dynamic_lr:
            model.theta[...] = best_theta
            t0 = time.perf_counter()
            dyn = dynamic_evaluate(model, tokenizer, val_ids, DynamicConfig(
                lr=lr, decay=args.dynamic_decay, seq_len=args.dynamic_seq_len))
            bpc = round(dyn["bits_per_char"], 4)
            result.setdefault("dynamic", []).append({"lr": lr, "val_bpc": bpc, "seconds": round(time.perf_counter() - t0, 1)})
            if bpc < result.get("dynamic_val_bpc", math.inf):
                result["dynamic_val_bpc"], result["dynamic_lr"] = bpc, lr
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            if k != "curve":
                print(f"{k:>16}: {v}")
    return result


if __name__ == "__main__":
    main()
