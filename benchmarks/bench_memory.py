"""Bounded memory on a big corpus: peak resident memory of `charrnn train` on a ~1 GB text.

Builds a corpus by repeating a text (tiny-Shakespeare, or --source) up to --size-mb, then runs
`charrnn train BIG --steps N` twice in a fresh store: the first run encodes the corpus once, in
chunks, into a cached id file beside the model; the second (--resume) reuses it. For each run it
prints the wall time and the peak resident memory (ru_maxrss of the child), next to the corpus
size, so the ratio shows that memory does not grow with the corpus.

    python benchmarks/bench_memory.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def make_corpus(source: Path, path: Path, size_mb: int) -> int:
    block = source.read_bytes()
    target = size_mb << 20
    with open(path, "wb") as f:
        written = 0
        while written < target:
            f.write(block)
            written += len(block)
    return written


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"charrnn failed: {proc.stderr.read().decode(errors='replace').strip()}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1024, help="corpus size in MiB (default 1024)")
    p.add_argument("--source", type=Path, default=SHAKESPEARE, help="text to repeat")
    p.add_argument("--steps", type=int, default=20, help="training steps per run")
    p.add_argument("--workdir", type=Path, default=None, help="where to put the corpus (default: a temp dir)")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(dir=args.workdir))
    try:
        big = work / "big.txt"
        size = make_corpus(args.source, big, args.size_mb)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        base = [sys.executable, "-m", "charrnn", "train", str(big), "-m", str(work / "model"),
                "--steps", str(args.steps), "--eval-every", "0", "--save-every", "0", "-q"]
        first = run(base, env)
        second = run(base + ["--resume"], env)
        cache = list((work / "model" / "cache").iterdir())
        print(f"corpus: {size / 2**20:,.0f} MiB; cached ids: {sum(c.stat().st_size for c in cache) / 2**20:,.0f} MiB")
        print(f"{'run':<34} {'wall s':>8} {'peak RSS MB':>12} {'RSS / corpus':>13}")
        for name, (secs, rss) in (("first (encodes, then trains)", first), ("second (--resume, cached ids)", second)):
            print(f"{name:<34} {secs:8.1f} {rss:12.0f} {rss * 2**20 / size:12.1%}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
