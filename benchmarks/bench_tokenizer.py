"""Character-level encoding speed: tiny-Shakespeare repeated to 100 MB, in chars/s.

The vocabulary is fitted on the corpus once; the timed part is ``Tokenizer.encode`` of the whole
repeated text (median of ``--repeats``). The ids are checked against a plain Python loop
(``tokenizer.id_of`` per character) on a slice of the text, and against encoding that slice alone.

    python benchmarks/bench_tokenizer.py
    python benchmarks/bench_tokenizer.py path/to/corpus.txt --megabytes 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import harness
import numpy as np

from charrnn.tokenizer import Tokenizer

SHAKESPEARE = "/work/shared/corpora/tinyshakespeare.txt"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", default=None,
                        help=f"a UTF-8 text (default: {SHAKESPEARE}, else the corpus bundled in corpora/)")
    parser.add_argument("--megabytes", type=float, default=100.0, help="repeat the text to this many MB (default: 100)")
    parser.add_argument("--check", type=int, default=200_000, help="chars checked against a loop (default: 200000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts (default: 3)")
    args = parser.parse_args(argv)

    path = args.path
    if path is None:
        candidates = [SHAKESPEARE, *sorted(str(p) for p in (harness.REPO / "corpora").glob("*.txt"))]
        path = next(p for p in candidates if harness.Path(p).exists())
    with open(path, encoding="utf-8") as f:
        corpus = f.read()
    tokenizer = Tokenizer.fit(corpus)
    target = int(args.megabytes * 1e6)
    copies = -(-target // len(corpus.encode("utf-8")))
    text = corpus * copies
    megabytes = len(text.encode("utf-8")) / 1e6

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ids = tokenizer.encode(text)
        times.append(time.perf_counter() - t0)
    rate = len(text) / statistics.median(times)

    start = len(corpus) // 3  # a slice that starts inside the first copy and runs into the next ones
    piece = text[start : start + args.check]
    loop = np.array([tokenizer.id_of(ch) for ch in piece], dtype=np.int64)
    same = np.array_equal(ids[start : start + len(piece)], loop) and np.array_equal(tokenizer.encode(piece), loop)

    print(f"# bench_tokenizer: {harness.machine_load()}, {path}, vocabulary {tokenizer.vocab_size}")
    harness.print_table(
        ["text", "chars", "encode s (median)", "chars/s", "ids == loop"],
        [[f"{copies} copies, {megabytes:.0f} MB", f"{len(text):,}", f"{statistics.median(times):.3f}",
          f"{rate:,.0f}", f"{'yes' if same else 'NO'} ({len(piece):,} chars)"]],
    )
    if not same:
        raise SystemExit("encode() disagrees with the per-character loop")


if __name__ == "__main__":
    main()
