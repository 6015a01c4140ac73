"""Prediction quality within a time budget: validation bits per character of `charrnn train`.

Each row runs the real command line, ``charrnn train CORPUS --max-time SECONDS [options]``, in a
fresh store, then scores the held-out tail (the last 10% of the text, the part `train`
validates on) with ``charrnn evaluate`` twice: static, and with ``--dynamic``. The figures are
exactly what a user running those commands gets. Rows can run side by side (``--jobs 2``, one
core each: the two runs share the machine alike) or one at a time on all cores.

    python benchmarks/bench_quality.py --minutes 10                           # the defaults, both corpora
    python benchmarks/bench_quality.py --corpus sanguo --minutes 5 --jobs 2 \\
        --row "defaults" --row "no n-grams=--direct-order 0"
    python benchmarks/bench_quality.py --sweep --minutes 5 --jobs 2           # the sweep in docs/models.md

A row is ``NAME=OPTIONS`` (options as `charrnn train` takes them) or just a name from ``SWEEP``.
The corpora are ../shared/corpora/{tinyshakespeare,sanguo}.txt beside the checkout (never part of
the project); ``--corpus`` also takes a path.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"

# The sweep behind the defaults (docs/models.md): each row changes one thing from the defaults.
SWEEP = {
    "defaults": "",
    "no n-grams": "--direct-order 0",
    "n-grams order 4": "--direct-order 4",
    "n-grams order 8": "--direct-order 8",
    "n-gram lr 0.3": "--direct-lr 0.3",
    "dropout 0.3": "--dropout 0.3",
    "no dropout": "--dropout 0",
    "H=512": "--hidden-size 512",
    "lstm": "--cell lstm",
    "full softmax": "--output full",
}


def corpus_path(name: str) -> Path:
    path = Path(name)
    return path if path.exists() else CORPORA / f"{name}.txt"


def held_out_tail(corpus: Path, workdir: Path, val_fraction: float = 0.1) -> Path:
    """The last ``val_fraction`` of the characters, as `train` splits a character-level text."""
    text = corpus.read_text(encoding="utf-8")
    n_val = int(round(len(text) * val_fraction))
    tail = workdir / f"{corpus.stem}.val.txt"
    tail.write_text(text[len(text) - n_val :], encoding="utf-8")
    return tail


def charrnn(*args: str, threads: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if threads == 1:
        env["OPENBLAS_NUM_THREADS"] = "1"
        if args[0] == "train":
            args = (*args, "--threads", "1", "--workers", "1")
    return subprocess.run([sys.executable, "-m", "charrnn", *args], env=env, capture_output=True, text=True)


def run_row(name: str, options: str, corpus: Path, tail: Path, seconds: float, workdir: Path, threads: int) -> dict:
    store = workdir / f"m-{corpus.stem}-{abs(hash(name))}"
    t0 = time.perf_counter()
    trained = charrnn("train", str(corpus), "-m", str(store), "--max-time", str(seconds), "-q",
                      *shlex.split(options), threads=threads)
    if trained.returncode:
        return {"row": name, "error": trained.stderr.strip().splitlines()[-1:]}
    wall = time.perf_counter() - t0
    info = json.loads(charrnn("info", "-m", str(store), "--json", threads=threads).stdout)
    static = json.loads(charrnn("evaluate", "-m", str(store), str(tail), "--json", threads=threads).stdout)
    dynamic = json.loads(charrnn("evaluate", "-m", str(store), str(tail), "--dynamic", "--json", threads=threads).stdout)
    return {
        "row": name, "options": options, "corpus": corpus.stem, "minutes": seconds / 60, "steps": info["step"],
        "train_wall_s": round(wall, 1), "static_bpc": round(static["bits_per_char"], 3),
        "dynamic_bpc": round(dynamic["bits_per_char"], 3),
    }


def parse_row(text: str) -> tuple[str, str]:
    if "=" in text:
        name, options = text.split("=", 1)
        return name.strip(), options.strip()
    if text not in SWEEP:
        raise SystemExit(f"unknown row {text!r}: give NAME=OPTIONS or one of {', '.join(SWEEP)}")
    return text, SWEEP[text]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", action="append", help="tinyshakespeare, sanguo or a path (default: both)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per row (default: 10)")
    parser.add_argument("--row", action="append", type=parse_row, help="NAME=OPTIONS or a SWEEP name (default: defaults)")
    parser.add_argument("--sweep", action="store_true", help="run every row of SWEEP")
    parser.add_argument("--jobs", type=int, default=1, help="rows side by side, one core each (default: 1, all cores)")
    args = parser.parse_args(argv)
    rows = list(SWEEP.items()) if args.sweep else (args.row or [("defaults", "")])
    corpora = [corpus_path(c) for c in (args.corpus or ["tinyshakespeare", "sanguo"])]
    threads = 1 if args.jobs > 1 else 0
    print(f"# bench_quality: {args.minutes} min per row, {'one core each, ' + str(args.jobs) + ' side by side' if args.jobs > 1 else 'all cores'}")
    print(f"{'corpus':<16} {'row':<18} {'steps':>7} {'static bpc':>11} {'dynamic bpc':>12}  options")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tails = {c: held_out_tail(c, workdir) for c in corpora}
        jobs = [(name, options, c) for c in corpora for name, options in rows]
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futures = [pool.submit(run_row, n, o, c, tails[c], args.minutes * 60, workdir, threads) for n, o, c in jobs]
            for f in futures:
                r = f.result()
                if "error" in r:
                    print(f"{'':<16} {r['row']:<18} failed: {r['error']}", flush=True)
                    continue
                print(f"{r['corpus']:<16} {r['row']:<18} {r['steps']:>7} {r['static_bpc']:>11.3f} {r['dynamic_bpc']:>12.3f}  "
                      f"{r['options'] or '(none)'}", flush=True)


if __name__ == "__main__":
    main()
