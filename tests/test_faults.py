"""Faults during training, with real processes: kill -9 at random moments (many of them inside a
save), SIGTERM and Ctrl-C. Whatever happens, the store holds a checkpoint that loads, never an
older one than before, and ``--resume`` goes on from it.

CHARRNN_KILL_TRIALS sets the number of kill -9 trials (default 30, about 30 s on one core);
CHARRNN_KILL_SEED their random seed.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import charrnn
from charrnn.checkpoint import CheckpointError, ModelStore, load_checkpoint, open_model

from samples import CHINESE, ENGLISH

ROOT = Path(charrnn.__file__).resolve().parent.parent
TEXT = (CHINESE + "\n" + ENGLISH + "\n") * 30
# A constant learning rate: the killed runs are limited by time, and "auto" would make that a
# cosine over the clock, which no step-limited reference run could repeat bit for bit.
TINY = ["--hidden-size", "16", "--seq-len", "16", "--batch-size", "4", "--lr", "0.01", "--schedule", "constant"]
TRIALS = int(os.environ.get("CHARRNN_KILL_TRIALS", "30"))
SEED = int(os.environ.get("CHARRNN_KILL_SEED", "0"))


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k != "CHARRNN_MODEL"}
    e.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    return e


def train_process(store: Path, corpus: Path, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "charrnn", "train", str(corpus), "-m", str(store), *TINY, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )


def temporaries(store: Path) -> list[Path]:
    return [p for p in store.rglob("*.tmp")] if store.exists() else []


def latest_step(store: Path) -> int | None:
    """The step of the checkpoint --resume would continue (None: no checkpoint yet)."""
    if not list(store.glob("ckpt-*.npz")):
        return None
    return open_model(store, prefer="latest").step


def wait_for_a_save(store: Path, deadline: float) -> bool:
    """Poll until a save is under way (its temporary file exists)."""
    while time.monotonic() < deadline:
        try:
            if any(name.startswith(".ckpt-") and name.endswith(".tmp") for name in os.listdir(store)):
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    return False


def wait_for_first_checkpoint(store: Path, deadline: float) -> None:
    """Poll until the store holds a checkpoint (or the deadline passes)."""
    while time.monotonic() < deadline and not list(store.glob("ckpt-*.npz")):
        time.sleep(0.01)


def test_kill_9_at_random_moments_never_loses_a_checkpoint(tmp_path):
    """Kill -9 a run that saves every step, again and again (at random times, and as soon as a
    save is seen under way), each time resuming the same store. After every kill each checkpoint
    file in the store loads, the latest never goes back, and --resume continues from it. In the
    end the weights equal, bit for bit, those of one run that was never killed."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    store = tmp_path / "m"
    rng = random.Random(SEED)
    stats = dict(trials=0, in_save=0, before_first_save=0, left_temporaries=0, resumes=0, losses=0)
    step = None  # the latest step the store holds
    for trial in range(TRIALS):
        resume = ["--resume"] if step is not None else []
        proc = train_process(store, corpus, *resume, "--save-every", "1", "--eval-every", "2", "--keep", "2", "--max-time", "60", "-q")
        start = time.monotonic()
        try:
            if trial % 2 and step is not None:  # right inside a save
                stats["in_save"] += wait_for_a_save(store, start + 5.0)
            elif trial == 0:  # before the first checkpoint: the next run starts afresh
                time.sleep(rng.uniform(0.05, 0.3))
            else:  # anywhere: start-up, reading the corpus, a step, a save, validation
                if step is None:  # on a loaded machine start-up can outlast any fixed delay
                    wait_for_first_checkpoint(store, start + 30.0)
                time.sleep(rng.uniform(0.0, 1.2))
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == -signal.SIGKILL, err.decode()  # it was still running
        stats["trials"] += 1
        stats["left_temporaries"] += any(p.name.endswith(f".{proc.pid}.tmp") for p in temporaries(store))
        for path in sorted(store.glob("ckpt-*.npz")):
            load_checkpoint(path)  # every checkpoint file is whole (atomic rename)
        try:
            now = latest_step(store)
        except CheckpointError:
            now = None
        if step is not None and (now is None or now < step):
            stats["losses"] += 1
        assert step is None or (now is not None and now >= step), (trial, step, now)
        stats["before_first_save"] += now is None
        step = now
        if step is not None and (trial % 5 == 4 or trial == TRIALS - 1):  # resume to the end
            done = subprocess.run(
                [sys.executable, "-m", "charrnn", "train", str(corpus), "-m", str(store), "--resume", "--steps", "2"],
                capture_output=True, env=env(), timeout=60,
            )
            assert done.returncode == 0, done.stderr.decode()
            assert f"starting at step {step}" in done.stderr.decode()
            assert latest_step(store) == step + 2
            assert not temporaries(store)  # what killed runs left behind is gone
            stats["resumes"] += 1
            step += 2
    print(f"kill -9 trials: {stats}")
    assert stats["losses"] == 0
    assert step is not None, "no run ever saved a checkpoint"
    reference = subprocess.run(
        [sys.executable, "-m", "charrnn", "train", str(corpus), "-m", str(tmp_path / "ref"), *TINY, "--steps", str(step), "--save-every", "0", "-q"],
        capture_output=True, env=env(), timeout=120,
    )
    assert reference.returncode == 0, reference.stderr.decode()
    killed, never = open_model(store, prefer="latest"), open_model(tmp_path / "ref", prefer="latest")
    assert killed.step == never.step == step
    assert killed.model.theta.tobytes() == never.model.theta.tobytes()  # exact resume, 30 times over
    assert stats["in_save"] >= TRIALS // 4  # many kills did land inside a save
    assert stats["left_temporaries"] >= 1  # ... and some of them mid-write


def run_until_started(store: Path, corpus: Path, *args) -> subprocess.Popen:
    proc = train_process(store, corpus, *args)
    line = proc.stderr.readline().decode()  # the run is described once training is about to start
    assert line.startswith("charrnn: rnn"), line
    return proc


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_then_exits(tmp_path, sig, code):
    """SIGTERM (a service manager, a batch system) and Ctrl-C: finish the step, save, exit 143/130;
    the checkpoint saved is the step the message names, and --resume continues from it."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    store = tmp_path / "m"
    proc = run_until_started(store, corpus, "--max-time", "60", "--save-every", "0", "--eval-every", "0")
    try:
        time.sleep(0.4)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    err = err.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    m = re.search(r"charrnn: stopped \(interrupted\) at step (\d+), validation [\d.]+ bits/char; saved (\S+)", err)
    assert m, err
    step, path = int(m.group(1)), Path(m.group(2))
    assert step > 0 and load_checkpoint(path).step == step
    assert latest_step(store) == step
    resumed = subprocess.run(
        [sys.executable, "-m", "charrnn", "train", str(corpus), "-m", str(store), "--resume", "--steps", "1", "-q"],
        capture_output=True, env=env(), timeout=60,
    )
    assert resumed.returncode == 0 and latest_step(store) == step + 1


def test_stale_temporaries_of_a_killed_run_are_removed_but_not_a_live_ones(tmp_path):
    """What kill -9 leaves mid-write (.ckpt-*.npz.PID.tmp) goes when the store is next locked, unless
    the process that writes it is alive."""
    store = ModelStore(tmp_path / "m")
    (tmp_path / "m" / "cache").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / "m" / f".ckpt-000000007.npz.{dead_pid}.tmp", tmp_path / "m" / "cache" / f".ids-ab.uint16.{dead_pid}.tmp"]
    live = tmp_path / "m" / f".store.json.{os.getppid()}.tmp"
    for p in [*stale, live]:
        p.write_bytes(b"half")
    store.lock()
    store.unlock()
    assert not any(p.exists() for p in stale)
    assert live.exists()
