"""Platforms without fcntl and /proc (Windows, macOS), simulated on this one; the libraries that
replaced the hand-written platform code (filelock, threadpoolctl, psutil)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import charrnn
from samples import CHINESE, ENGLISH

ROOT = Path(charrnn.__file__).resolve().parent.parent
SIMULATION = Path(__file__).resolve().parent / "no_fcntl_no_proc.py"
TEXT = (CHINESE + "\n" + ENGLISH + "\n") * 30
TINY = ["--hidden-size", "24", "--seq-len", "16", "--batch-size", "8", "--lr", "0.01", "--eval-every", "20"]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="simulates Windows and macOS on a Unix")


def simulated(code: str, *args, cwd: Path, log: Path, input=None, timeout=60):
    """Run ``code`` in a Python process that has no fcntl and cannot read /proc."""
    env = {k: v for k, v in os.environ.items() if k != "CHARRNN_MODEL"}
    env.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", PYTHONIOENCODING="utf-8", CHARRNN_SIM_LOG=str(log))
    prelude = f"import runpy; runpy.run_path({str(SIMULATION)!r})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code, *map(str, args)],
        cwd=cwd, input=input, capture_output=True, text=True, env=env, timeout=timeout,
    )


CHARRNN = "import runpy; runpy.run_module('charrnn', run_name='__main__')"


def charrnn_accesses(log: Path) -> list[str]:
    """The /proc accesses the simulation refused to charrnn's own code."""
    if not log.exists():
        return []
    package = str(Path(charrnn.__file__).resolve().parent)
    return [line for line in log.read_text(encoding="utf-8").splitlines() if package in line.split("\t")[-1]]


def ok(result):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    return result


def test_every_command_runs_without_fcntl_and_proc(tmp_path):
    log = tmp_path / "refused.txt"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = lambda *args, **kw: simulated(CHARRNN, *args, cwd=tmp_path, log=log, **kw)  # noqa: E731

    train = ok(run("train", corpus, "-m", "m", *TINY, "--steps", "40"))
    assert "stopped (steps) at step 40" in train.stderr
    sample = ok(run("sample", "-m", "m", "--seed", "我喜欢", "-n", "30", "--random-seed", "1"))
    assert len(sample.stdout.strip()) > 0
    evaluate = ok(run("evaluate", corpus, "-m", "m", "--json"))
    assert '"bits_per_char"' in evaluate.stdout
    predict = ok(run("predict", "-m", "m", "--top", "3", input="我喜\nThe quick\n"))
    assert predict.stdout.count("\n  ") == 6  # three candidates for each of the two lines
    assert simulated("import fcntl", cwd=tmp_path, log=log).returncode != 0  # the simulation really blocks it
    assert charrnn_accesses(log) == []


def test_threads_and_memory_guard_without_proc(tmp_path):
    log = tmp_path / "refused.txt"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    code = (
        "import sys\nfrom charrnn.cli import main\nfrom charrnn.threads import get_threads\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    print('exit', e.code, 'threads', get_threads())\n"
    )
    result = simulated(code, "train", corpus, "-m", "m", *TINY, "--steps", "2", "--threads", "2", "-q", cwd=tmp_path, log=log)
    assert result.stdout.split() == ["exit", "0", "threads", "2"], result.stderr
    huge = simulated(CHARRNN, "train", corpus, "-m", "big", "--hidden-size", "100000", "--steps", "1", cwd=tmp_path, log=log)
    assert huge.returncode == 1
    assert "needs about" in huge.stderr and "of memory, but" in huge.stderr and "GB is available" in huge.stderr
    assert len(huge.stderr.strip().splitlines()) == 1 and "Traceback" not in huge.stderr
    assert charrnn_accesses(log) == []


def test_lock_refuses_a_second_writer_without_fcntl(tmp_path):
    """A process holding the store's lock makes a second training run fail with one line; once the
    holder is killed (its lock left behind), training takes the store."""
    log = tmp_path / "refused.txt"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CHARRNN_MODEL"}
    env.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", CHARRNN_SIM_LOG=str(log))
    hold = (
        f"import runpy, sys; runpy.run_path({str(SIMULATION)!r})\n"
        "from charrnn.checkpoint import ModelStore\n"
        "store = ModelStore('m'); store.lock(); print('locked', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=tmp_path, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        second = simulated(CHARRNN, "train", corpus, "-m", "m", *TINY, "--steps", "2", cwd=tmp_path, log=log)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            "Error: another training run is using m (lock file train.lock); wait for it or choose another --model"
        ]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    after = ok(simulated(CHARRNN, "train", corpus, "-m", "m", *TINY, "--steps", "2", cwd=tmp_path, log=log))
    assert "stopped (steps) at step 2" in after.stderr
    assert charrnn_accesses(log) == []


def test_available_memory_is_what_psutil_says_within_the_limits():
    import psutil

    from charrnn.cli import _available_memory

    available = _available_memory()
    assert available is not None and 0 < available <= psutil.virtual_memory().available * 1.05 + (64 << 20)


def test_stale_temporaries_of_dead_processes_go(tmp_path):
    """A killed run's ``.NAME.PID.tmp`` goes when the store is next locked; a live process's stays."""
    from charrnn.checkpoint import ModelStore

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    store = ModelStore(tmp_path / "m")
    store.directory.mkdir()
    stale, live = store.directory / f".ckpt.npz.{dead_pid}.tmp", store.directory / f".ckpt.npz.{os.getppid()}.tmp"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    store.lock()
    store.unlock()
    assert not stale.exists() and live.exists()
