"""Data-parallel training over MPI: 2 ranks give 1 rank's weights, resume, failures, detection.

The MPI tests launch ``mpiexec -n 2 python tests/test_distributed.py SPEC`` (this file is also
the driver each rank runs: see ``drive``), and are skipped when mpi4py is not installed. The
detection tests run without MPI and never import mpi4py into the test process.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from samples import CHINESE, ENGLISH

TEXT = (ENGLISH + CHINESE) * 30  # about 7,000 characters, a third of them Chinese

has_mpi4py = importlib.util.find_spec("mpi4py") is not None


def mpiexec_path() -> str | None:
    """The mpiexec installed beside this Python (the mpich wheel puts it there), else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(
    not has_mpi4py or mpiexec_path() is None, reason="needs mpi4py and mpiexec: pip install 'charrnn[mpi]'"
)


# -- the driver each rank runs (what the CLI's train command does, without click) ----------------


def drive(spec: dict) -> int:
    """Train as the spec says on this rank; the root writes its final weights to spec["out"].

    spec["fail"] = {"rank", "step", "how"} makes that rank fail at that step: "inside" raises in
    the training step, "raise" in the loop over the records, "exit" leaves quietly, "kill" is
    kill -9.
    """
    from charrnn import distributed
    from charrnn.checkpoint import ModelStore
    from charrnn.train import TrainConfig

    world = distributed.connect(spec.get("distributed", True))
    store = ModelStore(spec["store"]) if spec.get("store") else None
    fail = spec.get("fail") or {}
    try:
        trainer = distributed.prepare(
            world, TrainConfig(**spec["config"]), spec["corpus"], store, resume=spec.get("resume", False)
        )
    except distributed.JobError as e:
        return 1 if e.reported_elsewhere else print(f"Error: {e}", file=sys.stderr) or 1
    except ValueError as e:  # rank 0's own mistake, which the others heard of
        print(f"Error: {e}", file=sys.stderr)
        return 1
    if fail.get("how") == "inside" and world.rank == fail["rank"]:
        step = trainer.train_step

        def failing_step():
            if trainer.step + 1 == fail["step"]:
                raise OSError(28, "No space left on device")
            return step()

        trainer.train_step = failing_step
    for record in trainer.run():
        if record.event == "step" and world.rank == fail.get("rank") and record.step == fail.get("step"):
            if fail["how"] == "kill":
                os.kill(os.getpid(), 9)
            if fail["how"] == "exit":
                return 0
            raise RuntimeError("injected failure")
    if world.is_root:
        np.save(spec["out"], trainer.model.theta)
        print(json.dumps({"reason": record.reason, "step": trainer.step}), file=sys.stderr)
    return 0


def launch(spec: dict, tmp_path: Path, ranks: int = 2, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the driver under ``mpiexec -n ranks`` with one BLAS thread per rank."""
    import charrnn

    spec_path = tmp_path / f"spec-{time.monotonic_ns()}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(charrnn.__file__).parent.parent), env.get("PYTHONPATH", "")])
    command = [mpiexec_path(), "-n", str(ranks), sys.executable, str(HERE), str(spec_path)]
    return subprocess.run(
        command, check=False, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


# -- tests with MPI -------------------------------------------------------------------------------

# 10 chunks an epoch; no dropout, so that 2 ranks and 1 process draw no masks and must agree
CONFIG = {"hidden_size": 32, "seq_len": 32, "batch_size": 16, "eval_every": 5, "save_every": 5, "lr": 0.01, "dropout": 0.0}
DIRECT = {"direct_order": 3, "direct_size": 0.25}  # with hashed n-gram direct connections


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A corpus; 2 ranks for 24 steps (two epochs), and 2 ranks for the first 12 steps."""
    if not has_mpi4py or mpiexec_path() is None:
        pytest.skip("needs mpi4py and mpiexec")
    tmp = tmp_path_factory.mktemp("mpi")
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    for name, steps, extra in (("two24", 24, {}), ("two12", 12, {}), ("direct24", 24, DIRECT)):
        spec = {
            "corpus": [str(corpus)], "store": str(tmp / name), "config": dict(CONFIG, steps=steps, **extra),
            "out": str(tmp / f"{name}.npy"), "distributed": None,  # detected from mpiexec's variables
        }
        result = launch(spec, tmp)
        assert result.returncode == 0, result.stderr
    return tmp


def one_process(runs, name, steps, resume=False, **extra):
    from charrnn.checkpoint import ModelStore
    from charrnn.train import TrainConfig, prepare

    trainer = prepare(TrainConfig(**dict(CONFIG, steps=steps, **extra)), [str(runs / "corpus.txt")], ModelStore(runs / name), resume=resume)
    records = list(trainer.run())
    assert records[-1].reason == "steps"
    return trainer


def latest(path):
    from charrnn.checkpoint import open_model

    return open_model(path, prefer="latest")


@needs_mpi
def test_two_ranks_give_the_weights_of_one_rank(runs):
    one = one_process(runs, "one24", 24)
    two = latest(runs / "two24")
    assert two.step == 24 and two.meta["ranks"] == 2 and one.batches.num_chunks == 10
    difference = float(np.abs(two.model.theta - one.model.theta).max())
    print(f"2 ranks vs 1 rank after 24 Adam steps (float32): max |weight difference| = {difference:.3g}")
    assert difference < 2e-5
    np.testing.assert_allclose(two.model.theta, one.model.theta, rtol=1e-4, atol=2e-5)
    # the saved state is the full (B, H) array, gathered from both ranks in stream order
    assert two.arrays["state"].shape == one.s.shape == (16, one.model.state_size)
    np.testing.assert_allclose(two.arrays["state"], one.s, atol=1e-4)
    # validation shared between the ranks scores what one process scores
    assert [h["step"] for h in two.meta["history"]] == [h["step"] for h in one.history] == [5, 10, 15, 20, 24]
    np.testing.assert_allclose(
        [h["val_bpc"] for h in two.meta["history"]], [h["val_bpc"] for h in one.history], rtol=1e-5
    )
    np.testing.assert_array_equal(np.load(runs / "two24.npy"), two.model.theta)


@needs_mpi
def test_two_ranks_with_the_class_head_give_the_weights_of_one_rank(runs, tmp_path):
    """The class-factored head under MPI: the class assignment rank 0 makes from the counts
    reaches every rank, and 2 ranks train what 1 process trains."""
    from charrnn.checkpoint import ModelStore
    from charrnn.train import TrainConfig, prepare

    config = dict(CONFIG, steps=12, output="classes", num_classes=6)
    spec = {"corpus": [str(runs / "corpus.txt")], "store": str(tmp_path / "two"), "config": config,
            "out": str(tmp_path / "two.npy")}
    result = launch(spec, tmp_path)
    assert result.returncode == 0, result.stderr
    one = prepare(TrainConfig(**config), [str(runs / "corpus.txt")], ModelStore(tmp_path / "one"))
    list(one.run())
    two = latest(tmp_path / "two")
    assert two.meta["ranks"] == 2 and two.model.head.kind == one.model.head.kind == "classes"
    np.testing.assert_array_equal(two.model.head.class_of, one.model.head.class_of)
    np.testing.assert_allclose(two.model.theta, one.model.theta, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(
        [h["val_bpc"] for h in two.meta["history"]], [h["val_bpc"] for h in one.history], rtol=1e-5
    )


def test_two_ranks_train_the_direct_connections_of_one_rank(runs):
    """Each rank sends only the table rows its streams touched; the tables stay identical."""
    one = one_process(runs, "direct-one24", 24, **DIRECT)
    two = latest(runs / "direct24")
    assert two.model.direct is not None and np.count_nonzero(two.model.direct.table) > 0
    np.testing.assert_allclose(two.model.theta, one.model.theta, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(two.model.direct.table, one.model.direct.table, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(two.arrays["direct.accum"], one.model.direct.accum, rtol=1e-3, atol=1e-9)


@needs_mpi
def test_resuming_under_mpi_is_exact(runs, tmp_path):
    shutil.copytree(runs / "two12", tmp_path / "m")
    spec = {
        "corpus": [str(runs / "corpus.txt")], "store": str(tmp_path / "m"), "config": dict(CONFIG, steps=12),
        "out": str(tmp_path / "out.npy"), "resume": True,
    }
    result = launch(spec, tmp_path)
    assert result.returncode == 0, result.stderr
    resumed, straight = latest(tmp_path / "m"), latest(runs / "two24")
    assert resumed.step == 24
    np.testing.assert_array_equal(resumed.model.theta, straight.model.theta)
    np.testing.assert_array_equal(resumed.arrays["state"], straight.arrays["state"])
    np.testing.assert_array_equal(resumed.arrays["optimizer.m"], straight.arrays["optimizer.m"])
    # the resumed run also validated at the end of its first half, step 12
    assert [h["step"] for h in resumed.meta["history"]] == [5, 10, 12, 15, 20, 24]
    later = [h["val_bpc"] for h in resumed.meta["history"] if h["step"] > 12]
    assert later == [h["val_bpc"] for h in straight.meta["history"] if h["step"] > 12]


@needs_mpi
def test_a_run_moves_between_one_and_two_ranks(runs, tmp_path):
    # 2 ranks -> 1 process: the checkpoint holds the whole carried state
    shutil.copytree(runs / "two12", runs / "two12-then-one")
    alone = one_process(runs, "two12-then-one", 12, resume=True)
    straight = latest(runs / "two24")
    np.testing.assert_allclose(alone.model.theta, straight.model.theta, rtol=1e-4, atol=2e-5)
    # 1 process -> 2 ranks: each rank takes its rows of the state
    one_process(runs, "one12-then-two", 12)
    spec = {
        "corpus": [str(runs / "corpus.txt")], "store": str(runs / "one12-then-two"), "config": dict(CONFIG, steps=12),
        "out": str(tmp_path / "out.npy"), "resume": True,
    }
    result = launch(spec, tmp_path)
    assert result.returncode == 0, result.stderr
    both = latest(runs / "one12-then-two")
    assert both.step == 24
    np.testing.assert_allclose(both.model.theta, straight.model.theta, rtol=1e-4, atol=2e-5)


@needs_mpi
def test_resume_is_exact_with_dropout_noise_drawn_per_rank(runs, tmp_path):
    config = dict(CONFIG, cell="lstm", hidden_size=16, num_layers=2, dropout=0.3)
    base = {"corpus": [str(runs / "corpus.txt")], "out": str(tmp_path / "out.npy")}
    for name, steps, resume in (("straight", 14, False), ("halves", 7, False), ("halves", 7, True)):
        spec = dict(base, store=str(tmp_path / name), config=dict(config, steps=steps), resume=resume)
        result = launch(spec, tmp_path)
        assert result.returncode == 0, result.stderr
    straight, halves = latest(tmp_path / "straight"), latest(tmp_path / "halves")
    assert halves.step == straight.step == 14
    np.testing.assert_array_equal(halves.model.theta, straight.model.theta)
    np.testing.assert_array_equal(halves.arrays["state"], straight.arrays["state"])
    # the two ranks draw different noise: their generators are in different states
    first, second = straight.meta["rank_rngs"]
    assert first["state"] != second["state"]


@needs_mpi
def test_the_time_limit_and_the_schedule_follow_rank_0s_clock(runs, tmp_path):
    config = dict(CONFIG, max_time=1.0, epochs=10000, schedule="cosine", save_every=0)  # time binds first
    spec = {"corpus": [str(runs / "corpus.txt")], "store": str(tmp_path / "m"), "config": config, "out": str(tmp_path / "w.npy")}
    result = launch(spec, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.strip().splitlines()[-1])["reason"] == "max-time"
    ckpt = latest(tmp_path / "m")  # saving checked that both ranks hold the same weights
    assert ckpt.step > 0 and ckpt.meta["ranks"] == 2


@needs_mpi
def test_without_a_store_every_rank_encodes_the_corpus(runs, tmp_path):
    from charrnn.train import TrainConfig, prepare

    spec = {"corpus": [str(runs / "corpus.txt")], "store": None, "config": dict(CONFIG, steps=6), "out": str(tmp_path / "w.npy")}
    result = launch(spec, tmp_path)
    assert result.returncode == 0, result.stderr
    one = prepare(TrainConfig(**dict(CONFIG, steps=6)), [str(runs / "corpus.txt")], None)
    list(one.run())
    np.testing.assert_allclose(np.load(tmp_path / "w.npy"), one.model.theta, rtol=1e-4, atol=2e-5)


@needs_mpi
@pytest.mark.parametrize(
    "config, corpus, message",
    [
        (dict(CONFIG, batch_size=15), "corpus.txt", "batch size 15 cannot be shared equally by 2 ranks"),
        (CONFIG, "missing.txt", "corpus not found"),
        (CONFIG, "-", "a distributed run cannot read the corpus from standard input"),
    ],
)
def test_a_mistake_found_by_rank_0_ends_every_rank_with_one_message(runs, tmp_path, config, corpus, message):
    name = corpus if corpus == "-" else str(runs / corpus)
    spec = {"corpus": [name], "store": str(tmp_path / "m"), "config": dict(config, steps=3), "out": None}
    result = launch(spec, tmp_path, timeout=30)
    assert result.returncode == 1
    assert result.stderr.count(message) == 1, result.stderr
    assert "Abort" not in result.stderr


@needs_mpi
@pytest.mark.parametrize("how, rank", [("inside", 0), ("raise", 1), ("exit", 1), ("kill", 0), ("kill", 1)])
def test_a_failing_rank_stops_the_whole_job_and_keeps_the_last_checkpoint(runs, tmp_path, how, rank):
    spec = {
        "corpus": [str(runs / "corpus.txt")], "store": str(tmp_path / "m"), "config": dict(CONFIG, steps=1000),
        "out": None, "fail": {"rank": rank, "step": 8, "how": how},
    }
    started = time.monotonic()
    result = launch(spec, tmp_path, timeout=45)  # a hang would raise TimeoutExpired
    err = result.stderr
    assert result.returncode != 0, err
    assert time.monotonic() - started < 30
    if how == "inside":  # the rank names itself and its error in one line
        assert "charrnn: rank 0 of 2" in err and "failed: OSError: [Errno 28] No space left" in err, err
    # Python's traceback, then the rank aborts the job as it exits. On a loaded machine the abort
    # can cut the dying rank's stderr short, so either of its two messages is enough.
    if how == "raise":
        assert "Traceback" in err or "ended while the other ranks still needed it" in err, err
    if how == "exit":
        assert "charrnn: rank 1 of 2" in err and "ended while the other ranks still needed it" in err, err
    ckpt = latest(tmp_path / "m")  # saved at step 5, intact
    assert ckpt.step == 5 and ckpt.arrays["state"].shape == (16, ckpt.model.state_size)


def cli_has_distributed() -> bool:
    from charrnn.cli import train

    return any(param.name == "distributed" for param in train.params)


@needs_mpi
def test_the_cli_trains_under_mpiexec_and_only_rank_0_speaks(runs, tmp_path):
    if not cli_has_distributed():
        pytest.skip("charrnn train has no --distributed yet")
    import charrnn

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(Path(charrnn.__file__).parent.parent))
    base = [mpiexec_path(), "-n", "2", sys.executable, "-m", "charrnn", "train", str(runs / "corpus.txt")]
    args = ["-m", str(tmp_path / "m"), "--steps", "6", "--hidden-size", "16", "--eval-every", "3"]

    def charrnn_train(*extra):
        return subprocess.run(
            base + args + list(extra), check=False, env=env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=60,
        )

    result = charrnn_train("--batch-size", "16")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("charrnn: stopped (steps) at step 6") == 1, result.stderr
    assert latest(tmp_path / "m").meta["ranks"] == 2
    result = charrnn_train("--resume")
    assert result.returncode == 0 and latest(tmp_path / "m").step == 12, result.stderr
    result = charrnn_train("--batch-size", "15")  # the store holds a model: one error, from rank 0
    assert result.returncode == 1 and result.stderr.count("Error:") == 1, result.stderr


# -- tests without MPI ----------------------------------------------------------------------------


def test_the_launcher_size_is_read_from_its_variables():
    from charrnn.distributed import launched_size

    assert launched_size({}) == 1
    assert launched_size({"PMI_SIZE": "4", "PMI_RANK": "2"}) == 4  # MPICH, Intel MPI (hydra)
    assert launched_size({"OMPI_COMM_WORLD_SIZE": "8"}) == 8  # Open MPI
    assert launched_size({"PMI_SIZE": "", "MV2_COMM_WORLD_SIZE": "3"}) == 3
    assert launched_size({"PMI_SIZE": "x"}) == 1


def test_a_normal_run_never_imports_mpi4py(monkeypatch):
    from charrnn.distributed import connect

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # importing it would now raise ImportError
    assert connect(None, environ={}) is None
    assert connect(None, environ={"PMI_SIZE": "1"}) is None  # mpiexec -n 1: as today
    assert connect(False, environ={"PMI_SIZE": "4"}) is None  # --no-distributed


def test_a_clear_error_when_mpi_is_wanted_without_mpi4py(monkeypatch):
    from charrnn.distributed import connect

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ValueError, match=r"--distributed was given, but mpi4py is not installed: pip install 'charrnn\[mpi\]'"):
        connect(True, environ={})
    with pytest.raises(ValueError, match="mpiexec started 4 processes, but mpi4py is not installed"):
        connect(None, environ={"PMI_SIZE": "4"})


def test_training_in_one_process_imports_no_mpi(tmp_path):
    code = (
        "import sys\n"
        "from charrnn import distributed\n"
        "from charrnn.train import TrainConfig, prepare\n"
        "assert distributed.connect() is None\n"
        f"t = prepare(TrainConfig(hidden_size=8, seq_len=8, batch_size=4, steps=3), [{str(tmp_path / 'c.txt')!r}], None)\n"
        "list(t.run())\n"
        "print('mpi4py' in sys.modules)\n"
    )
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MV2_"))}
    import charrnn

    env["PYTHONPATH"] = str(Path(charrnn.__file__).parent.parent)
    result = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_machine_without_rank_0s_cache_encodes_the_same_corpus_itself(tmp_path):
    from charrnn.checkpoint import ModelStore
    from charrnn.distributed import _describe, _encode_here
    from charrnn.train import TrainConfig, prepare

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    trainer = prepare(TrainConfig(hidden_size=8, seq_len=8, batch_size=4), [str(corpus)], ModelStore(tmp_path / "m"))
    setup = json.loads(json.dumps(_describe(trainer)))  # what rank 0 sends
    cache = Path(setup["ids"]["path"])
    assert cache.parent == tmp_path / "m" / "cache"
    # another machine: the same corpus at the same path, no store -> the same ids, at the same name
    ids = _encode_here(setup, [str(corpus)], "strict", tmp_path / "elsewhere")
    assert Path(ids.filename).name == cache.name
    np.testing.assert_array_equal(ids, np.concatenate([trainer.train_ids, trainer.val_ids]))
    # ... but not another text under the same name
    corpus.write_text(TEXT.replace("我", "你"), encoding="utf-8")
    with pytest.raises(ValueError, match="differs from rank 0's"):
        _encode_here(setup, [str(corpus)], "strict", tmp_path / "third")


@pytest.mark.parametrize("n, size", [(16, 2), (64, 3), (5, 8), (1, 1), (7, 7)])
def test_shares_cut_contiguous_parts_that_differ_by_at_most_one(n, size):
    from charrnn.distributed import shares

    parts = shares(n, size)
    assert len(parts) == size and parts[0].start == 0 and parts[-1].stop == n
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
    lengths = [p.stop - p.start for p in parts]
    assert max(lengths) - min(lengths) <= 1 and sum(lengths) == n


if __name__ == "__main__":
    sys.exit(drive(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))

