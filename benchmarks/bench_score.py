"""Scoring lines (``charrnn score``): batched against a line-by-line loop and against ``evaluate``.

The text is ``--bytes`` of a corpus (default: the bundled English one), its whitespace collapsed
and cut into lines of ``--line-chars`` characters. Rows, in chars/s and lines/s (a line's
newline counts as a char):

* ``score, batched``: ``charrnn.score.LineScorer`` on blocks of ``--block-lines`` lines, each
  line on its own (sorted by length, up to 256 lines per forward pass, padding masked);
* ``score, line by line``: the same per-line definition with one forward pass per line
  (``max_streams=1``), on the first ``--loop-lines`` lines: what scoring without batching costs;
* ``score --context``: one stream through the lines, on the first ``--loop-lines`` lines;
* ``evaluate()``: ``charrnn.evaluate.evaluate`` on the whole text (64 streams, T=256), which also
  ranks every target for the top-1/top-5 accuracy.

The last columns are each row's speed over the line-by-line loop's and over evaluate's. One
model, float32, random weights of the given hidden size (speed does not depend on the weights).

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_score.py
    python benchmarks/bench_score.py --hidden-size 512 --bytes 200000
"""

from __future__ import annotations

import argparse
import re
import statistics

import harness
import numpy as np

from charrnn.corpus import default_corpus_path
from charrnn.evaluate import evaluate
from charrnn.model import RNN
from charrnn.score import LineScorer
from charrnn.tokenizer import Tokenizer


def make_lines(path, num_bytes: int, line_chars: int) -> list[str]:
    """About ``num_bytes`` of the corpus (repeated if short), as lines of ``line_chars`` chars + newline."""
    text = re.sub(r"\s+", " ", open(path, encoding="utf-8").read())
    lines_needed = num_bytes // (line_chars + 1) + 1
    text = text * (lines_needed * line_chars // max(1, len(text)) + 1)
    return [text[i : i + line_chars] + "\n" for i in range(0, lines_needed * line_chars, line_chars)]


def timed_rate(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of fn() (after one warm-up call on the caller's side)."""
    return statistics.median(harness.timed(lambda _: fn(), 1)[0] for _ in range(repeats))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=str(default_corpus_path()), help="text to cut into lines (default: the bundled English corpus)")
    parser.add_argument("--bytes", type=int, default=1_000_000, help="size of the text (default: 1000000)")
    parser.add_argument("--line-chars", type=int, default=40, help="characters per line, its newline aside (default: 40)")
    parser.add_argument("--hidden-size", type=int, default=256, help="H (default: 256)")
    parser.add_argument("--block-lines", type=int, default=25_000, help="lines per LineScorer.score call (default: 25000, about 1 MB as the CLI reads a file)")
    parser.add_argument("--loop-lines", type=int, default=2_000, help="lines timed for the line-by-line and context rows (default: 2000)")
    parser.add_argument("--workers", type=int, default=1, help="stream workers (default: 1)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row; the median counts (default: 1)")
    args = parser.parse_args(argv)

    lines = make_lines(args.corpus, args.bytes, args.line_chars)
    text = "".join(lines)
    tok = Tokenizer.fit(text)
    model = RNN(tok.vocab_size, args.hidden_size, seed=0, dtype=np.float32)
    harness.use(None, args.workers)
    few = lines[: args.loop_lines]

    def batched(block):
        scorer = LineScorer(model, tok)
        for i in range(0, len(block), args.block_lines):
            scorer.score(block[i : i + args.block_lines])

    rows = {  # name -> (the lines it scores, how)
        "score, batched": (lines, lambda: batched(lines)),
        "score, line by line": (few, lambda: LineScorer(model, tok, max_streams=1).score(few)),
        "score --context": (few, lambda: LineScorer(model, tok, context=True).score(few)),
        "evaluate()": (lines, lambda: evaluate(model, tok, tok.encode(text))),
    }
    LineScorer(model, tok).score(lines[:300])  # warm-up: first-touch of the work arrays
    evaluate(model, tok, tok.encode("".join(lines[:300])))
    rates = {}
    for name, (scored, fn) in rows.items():
        seconds = timed_rate(fn, args.repeats)
        chars = sum(map(len, scored)) - (name == "evaluate()")  # evaluate does not score the first char
        rates[name] = (len(scored) / seconds, chars / seconds)
    loop, whole = rates["score, line by line"][1], rates["evaluate()"][1]
    print(
        f"# bench_score: {harness.machine_load()}, K={tok.vocab_size} H={args.hidden_size} float32, "
        f"{len(text):,} chars in {len(lines):,} lines of {args.line_chars}+1, {args.workers} worker(s)"
    )
    table = [
        [name, f"{len(rows[name][0]):,}", f"{lps:,.0f}", f"{cps:,.0f}", f"{cps / loop:.1f}x", f"{cps / whole:.2f}x"]
        for name, (lps, cps) in rates.items()
    ]
    harness.print_table(["", "lines", "lines/s", "chars/s", "vs loop", "vs evaluate"], table)


if __name__ == "__main__":
    main()
