"""Data-parallel training over MPI (mpi4py): the B streams of a batch shared among R ranks.

Launched as ``mpiexec -n R charrnn train CORPUS``, every rank (process) holds the whole model.
The global batch of B streams is cut into R equal contiguous parts: rank r owns the streams
[r B/R, (r+1) B/R), reads only those from the memory-mapped id cache, and computes the gradient
of its own mean loss. One ``Allreduce`` per step sums the flat gradient (P numbers, with the
loss as one more) and divides by R. Each part holds B/R streams, so the mean of the R means is
the mean over all B streams: every rank applies the update one process would apply to the whole
batch, and the weights stay identical on all ranks (checked at every save). One more
``Allreduce`` of two numbers per step lets the ranks agree on when to stop and where the
schedule is (the time limit is rank 0's clock; Ctrl-C on any rank stops all of them at the same
step). The run's random generator stays the same on every rank (the unknown-token noise is drawn
for the whole batch, then cut to the rank's streams); dropout noise comes from a generator of
each rank's own.

Rank 0 alone reads the corpus to build the vocabulary, builds the id cache, takes the store's
lock, and reads and writes checkpoints; it sends the other ranks what they need (settings,
vocabulary, weights, optimizer buffers, carried state) by broadcast, so they never touch the
store. A checkpoint holds the full (B, S) carried state gathered from all ranks and every rank's
dropout generator: a resumed run continues exactly (with another number of ranks, or in one
process, it continues up to float rounding; dropout noise is then drawn afresh).

Validation is shared too: rank r scores its part of the validation streams, and one Allreduce
sums the log-losses, giving one process's bits per character.

A rank that fails must not leave the others waiting forever in a collective. From ``connect``
until the trainer's ``run()`` ends, an exception on a rank prints one line naming the rank and calls
MPI_Abort, which ends every rank; a rank that exits any other way in that time aborts the job
from an ``atexit`` handler; a killed rank is noticed by mpiexec, which ends the others.
Checkpoints are written atomically, so the last one stays intact. What every rank raises at the
same moment (a mistake found by rank 0 while setting up, a diverged loss) ends the job normally.

Everything travels as NumPy buffers (metadata as UTF-8 JSON bytes): no pickle. ``mpi4py`` is
imported only when a run is distributed (``connect``), never in a normal run.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from charrnn.checkpoint import Checkpoint, ModelStore, build_model
from charrnn.model import DTYPES, Model
from charrnn.tokenizer import Tokenizer
from charrnn.train import DivergedError, TrainConfig, Trainer
from charrnn.train import prepare as prepare_one

INSTALL_HINT = "pip install 'charrnn[mpi]'"
# where launchers announce the number of processes they started: Open MPI, MPICH/Intel MPI
# (hydra, also Slurm's PMI), MVAPICH
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
# the reasons Trainer.run stops for, in increasing priority when ranks disagree
STOP_REASONS = (None, "steps", "epochs", "early-stop", "max-time", "interrupted")


class JobError(ValueError):
    """A failure every rank learns of at the same moment, so that the job can end normally: on
    the ranks other than 0 when rank 0 failed to set up (rank 0 raises its own error and reports
    it; here ``reported_elsewhere`` is True), and on every rank when the weights differ."""

    def __init__(self, message: str, reported_elsewhere: bool = False):
        super().__init__(message)
        self.reported_elsewhere = reported_elsewhere


def launched_size(environ=None) -> int:
    """How many processes an MPI launcher (mpiexec, mpirun, srun) started, read from the
    variables it sets; 1 when no launcher says so."""
    env = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        value = str(env.get(name, "")).strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def connect(distributed: bool | None = None, environ=None) -> World | None:
    """The MPI world to train in, or None to train in this process alone, as always.

    ``distributed`` None detects it: a launch by mpiexec of more than one process. True insists
    (a single process is then a world of one); False never uses MPI. mpi4py is imported only
    when a world is returned. Raises ValueError (one line) when MPI is wanted and mpi4py is
    missing, or when the mpiexec that started us belongs to another MPI than mpi4py's.
    """
    if distributed is False:
        return None
    size = launched_size(environ)
    if distributed is None and size <= 1:
        return None
    why = "--distributed was given" if distributed else f"mpiexec started {size} processes"
    try:
        from mpi4py import MPI
    except ImportError:
        raise ValueError(f"{why}, but mpi4py is not installed: {INSTALL_HINT} (or pass --no-distributed)") from None
    except (RuntimeError, OSError) as e:  # mpi4py present, its MPI library not loadable
        raise ValueError(f"{why}, but MPI cannot start ({e}): {INSTALL_HINT}") from None
    comm = MPI.COMM_WORLD
    if size > 1 and comm.Get_size() != size:
        raise ValueError(
            f"mpiexec started {size} processes but MPI sees {comm.Get_size()}: that mpiexec belongs to "
            f"another MPI than mpi4py's; use the mpiexec installed with it (beside {sys.executable})"
        )
    world = World(comm, MPI)
    world.busy = True  # from now on a rank that ends early would strand the others
    atexit.register(world._abort_if_busy)  # runs before mpi4py finalizes MPI
    return world


def shares(n: int, size: int) -> list[slice]:
    """n items cut into ``size`` contiguous parts whose lengths differ by at most one."""
    base, extra = divmod(n, size)
    bounds = [r * base + min(r, extra) for r in range(size + 1)]
    return [slice(bounds[r], bounds[r + 1]) for r in range(size)]


class World:
    """The ranks of one MPI job (``comm``, usually COMM_WORLD), as this rank sees them."""

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.host = MPI.Get_processor_name()
        self.busy = False  # the other ranks count on this one (from connect to the end of run)
        self._buffer: np.ndarray | None = None  # (P + 1,): the gradient and the loss

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def streams(self, batch_size: int) -> slice:
        """The B/R streams of a batch of B that this rank owns; ValueError unless R divides B."""
        if batch_size % self.size:
            raise ValueError(
                f"batch size {batch_size} cannot be shared equally by {self.size} ranks: "
                f"choose a multiple of {self.size} (--batch-size)"
            )
        return shares(batch_size, self.size)[self.rank]

    # -- collectives ----------------------------------------------------------------------------

    def reduce_gradient(self, g: np.ndarray, loss: float) -> float:
        """Average the flat gradient g (P,) over the ranks in place; returns the mean loss.

        One Allreduce of a single buffer of P + 1 numbers (the loss rides along as the last).
        """
        P = g.size
        if self._buffer is None or self._buffer.size != P + 1 or self._buffer.dtype != g.dtype:
            self._buffer = np.empty(P + 1, dtype=g.dtype)
        buf = self._buffer
        buf[:P] = g
        buf[P] = loss
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        np.multiply(buf[:P], 1.0 / self.size, out=g)
        return float(buf[P]) / self.size

    def reduce_direct(self, direct) -> dict:
        """The direct connections' sparse gradient summed over the ranks, the same on each:
        {j: (rows, dD)} as ``Direct.sparse_grad`` gives, from this rank's ``direct.pending``.

        Only the rows a step touched travel (not the tables): the row counts per block in one
        Allgather, then the rows and their gradients in one Allgatherv each.
        """
        local = direct.sparse_grad()
        J, widths = len(direct.widths), direct.widths
        counts = np.array([len(local[j][0]) if j in local else 0 for j in range(J)], np.int64)
        all_counts = np.empty((self.size, J), np.int64)
        self.comm.Allgather(counts, all_counts)
        rows = np.concatenate([local[j][0] for j in range(J) if j in local] or [np.zeros(0, np.int64)])
        values = np.concatenate([local[j][1].reshape(-1) for j in range(J) if j in local] or [np.zeros(0, direct.table.dtype)])
        row_counts = all_counts.sum(axis=1)
        value_counts = (all_counts * np.array(widths)).sum(axis=1)
        all_rows = np.empty(int(row_counts.sum()), np.int64)
        all_values = np.empty(int(value_counts.sum()), values.dtype)
        self.comm.Allgatherv(rows.astype(np.int64), [all_rows, row_counts])
        self.comm.Allgatherv(values, [all_values, value_counts])
        pending, r0, v0 = [], 0, 0  # every rank's rows, rank by rank, as one pending list
        for rank in range(self.size):
            for j in range(J):
                n = int(all_counts[rank, j])
                if n:
                    dD = all_values[v0 : v0 + n * widths[j]].reshape(n, widths[j])
                    pending.append((j, all_rows[r0 : r0 + n, None], dD))
                r0, v0 = r0 + n, v0 + n * widths[j]
        return direct.sparse_grad(pending)

    def agree_stop(self, reason: str | None, progress: float | None) -> tuple[str | None, float | None]:
        """The reason to stop and the fraction of the budget done that every rank shares (one
        Allreduce of two numbers): rank 0's, or an interruption on any rank. Only rank 0's clock
        counts for the time limit and the schedule; the other limits are the same on all ranks."""
        local = reason if self.is_root or reason == "interrupted" else None
        code = STOP_REASONS.index(local) if local in STOP_REASONS else len(STOP_REASONS)
        shared = np.array([code, (-1.0 if progress is None else progress) if self.is_root else -2.0])
        self.comm.Allreduce(self.MPI.IN_PLACE, shared, op=self.MPI.MAX)
        c = int(shared[0])
        reason = STOP_REASONS[c] if c < len(STOP_REASONS) else (reason or "stopped")
        return reason, (None if shared[1] < 0 else float(shared[1]))

    def bcast_array_(self, a: np.ndarray) -> np.ndarray:
        """Overwrite ``a`` (contiguous) with rank 0's array of the same shape and dtype."""
        self.comm.Bcast(a, root=0)
        return a

    def bcast_json(self, obj=None):
        """Rank 0's JSON-able ``obj``, on every rank."""
        if self.is_root:
            data = np.frombuffer(bytearray(json.dumps(obj, ensure_ascii=False).encode("utf-8")), np.uint8)
            n = np.array([data.size], np.int64)
        else:
            n = np.zeros(1, np.int64)
        self.comm.Bcast(n, root=0)
        if not self.is_root:
            data = np.empty(int(n[0]), np.uint8)
        self.comm.Bcast(data, root=0)
        return json.loads(data.tobytes().decode("utf-8"))

    def gather_json(self, obj) -> list | None:
        """Every rank's JSON-able ``obj`` as a list on rank 0 (None on the others)."""
        data = np.frombuffer(bytearray(json.dumps(obj).encode("utf-8")), np.uint8)
        counts = np.zeros(self.size, np.int64) if self.is_root else None
        self.comm.Gather(np.array([data.size], np.int64), counts, root=0)
        if not self.is_root:
            self.comm.Gatherv(data, None, root=0)
            return None
        received = np.empty(int(counts.sum()), np.uint8)
        self.comm.Gatherv(data, [received, counts.tolist()], root=0)
        ends = np.cumsum(counts)
        return [json.loads(received[e - n : e].tobytes().decode("utf-8")) for n, e in zip(counts, ends)]

    def gather_rows(self, part: np.ndarray) -> np.ndarray | None:
        """The rows (B/R, S) of every rank stacked in rank order, (B, S), on rank 0."""
        part = np.ascontiguousarray(part)
        full = np.empty((part.shape[0] * self.size,) + part.shape[1:], part.dtype) if self.is_root else None
        self.comm.Gather(part, full, root=0)
        return full

    def check_same_weights(self, theta: np.ndarray) -> None:
        """Raise JobError on every rank if the ranks' weights are not bit for bit the same."""
        crc = zlib.crc32(np.ascontiguousarray(theta).view(np.uint8))
        bounds = np.array([crc, -crc], np.int64)  # max and -min of the checksums
        self.comm.Allreduce(self.MPI.IN_PLACE, bounds, op=self.MPI.MAX)
        if bounds[0] == -bounds[1]:
            return
        high, low = theta.astype(np.float64), theta.astype(np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, high, op=self.MPI.MAX)
        self.comm.Allreduce(self.MPI.IN_PLACE, low, op=self.MPI.MIN)
        raise JobError(
            f"the weights differ between ranks (by up to {float((high - low).max()):.3g}): "
            "this MPI's Allreduce does not give every rank the same sum",
            reported_elsewhere=not self.is_root,
        )

    def validation_bpc(self, model: Model, ids: np.ndarray, seq_len: int, max_tokens: int, num_streams: int = 64) -> float:
        """``charrnn.train.validation_bpc`` shared among the ranks (collective): bits per token.

        The same streams and chunks as one process (``charrnn.evaluate``); rank r scores its
        contiguous part of the streams, the last rank also the tail, and one Allreduce sums the
        log-losses and counts.
        """
        from charrnn.data import stream_chunks
        from charrnn.evaluate import MAX_FLOATS

        if len(ids) < 2:
            return float("nan")
        ids = ids[: max_tokens + 1]
        n_pred = len(ids) - 1
        B = max(1, min(int(num_streams), n_pred))
        T = max(seq_len, 128)
        K = getattr(model, "vocab_size", None)
        if K is not None:  # as evaluate does: the chunking must be the one a single process uses
            T = max(1, min(T, MAX_FLOATS // (B * K)))
        main_chunks = -(-(n_pred // B) // T)  # the chunks of the B streams; the tail comes after
        rows = shares(B, self.size)[self.rank]
        totals = np.zeros(2)  # nats, predictions
        s = None
        for k, (inputs, targets) in enumerate(stream_chunks(ids, B, T)):  # (B, T) each
            if k >= main_chunks:  # the leftover predictions: one stream of its own
                if self.rank != self.size - 1:
                    break
                rows = slice(None)
                if k == main_chunks:
                    s = None
            x, y = inputs[rows], targets[rows]
            if x.shape[0] == 0:
                continue
            if s is None:
                s = model.zero_state(x.shape[0])
            p, _, s = model.forward(x, s)  # p (T*B', K), time-major
            y = y.T.reshape(-1)
            p_y = p[np.arange(len(y)), y]
            totals[0] -= float(np.log(np.maximum(p_y, np.finfo(p.dtype).tiny)).sum(dtype=np.float64))
            totals[1] += len(y)
        self.comm.Allreduce(self.MPI.IN_PLACE, totals, op=self.MPI.SUM)
        return float(totals[0] / totals[1] / math.log(2))

    def abort(self, why: str) -> None:
        """Say on stderr why this rank fails, then end every rank of the job (MPI_Abort)."""
        os.write(2, f"charrnn: rank {self.rank} of {self.size} ({self.host}) {why}; stopping all ranks\n".encode())
        self.comm.Abort(1)
        os._exit(1)  # MPI_Abort may return before the launcher ends this process

    def finish(self) -> None:
        """Wait for every rank, then let this one end freely (``Trainer.run()`` of a prepared
        trainer does this itself; call it after driving training steps by hand)."""
        self.comm.Barrier()
        self.busy = False

    def _abort_if_busy(self) -> None:
        if self.busy:
            self.abort("ended while the other ranks still needed it")


# -- setting up a run ---------------------------------------------------------------------------


def prepare(
    world: World,
    config: TrainConfig | Callable[[], TrainConfig],
    corpus_names: list[str],
    store: ModelStore | None,
    *,
    resume: bool = False,
    fine_tune: bool = False,
    encoding_errors: str = "strict",
    lock: bool = True,
) -> Trainer:
    """Everything before the first step of a distributed run (collective: every rank calls it).

    Rank 0 takes the store's lock (if ``lock``) and does what ``charrnn.train.prepare`` does:
    read the corpus, build the vocabulary and the id cache, build or restore the run. It then
    sends the other ranks the settings, vocabulary, weights, optimizer buffers and carried state;
    they open the id cache rank 0 built (a machine that cannot see it encodes the corpus once,
    into the same path). Each rank keeps only its B/R streams. The corpus must be files (not
    standard input, which mpiexec hands to rank 0 alone).

    ``config`` and ``store`` are used on rank 0 only. ``config`` may be a function returning the
    settings: rank 0 calls it under the lock, so it may read the store (a resumed run's settings)
    and refuse to go on. If rank 0 fails before the others hear from it, it raises its own error
    and the others raise JobError (``reported_elsewhere``); a later failure on any rank aborts
    the job (see the module docstring). The returned trainer's ``run()`` is guarded the same way.
    """
    world.busy = True
    if world.is_root:
        try:
            if "-" in corpus_names:
                raise ValueError(
                    "a distributed run cannot read the corpus from standard input (mpiexec hands it to rank 0 "
                    "alone, and may give up on a large one): give the corpus as a file"
                )
            if lock and store is not None:
                store.lock()
            if callable(config):
                config = config()
            trainer = prepare_one(
                config, corpus_names, store, resume=resume, fine_tune=fine_tune, encoding_errors=encoding_errors
            )
            world.streams(trainer.config.batch_size)  # refuse a batch the ranks cannot share
            setup = _describe(trainer)
        except BaseException as e:
            world.bcast_json({"error": _one_line(e)})
            world.busy = False  # every rank ends here
            raise
        world.bcast_json(setup)
    else:
        setup = world.bcast_json()
        if "error" in setup:
            world.busy = False
            raise JobError(setup["error"], reported_elsewhere=True)
    with _abort_on_failure(world):
        ids = _open_ids(world, setup, corpus_names, encoding_errors)  # collective; None on rank 0
        if not world.is_root:
            trainer = _rebuild(setup, ids)
        full_state = _send_numbers(world, trainer, setup)
        _attach(world, trainer, full_state, setup, store)
    return trainer


def _one_line(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _describe(trainer: Trainer) -> dict:
    """What the other ranks need to build rank 0's run, as JSON (the numbers follow apart)."""
    ids = trainer.train_ids
    path = getattr(ids, "filename", None)  # the id cache, when rank 0 has a store
    opt = trainer.optimizer.state_dict()
    buffers = opt.pop("buffers")
    meta = trainer.restored_meta or {}
    return {
        "config": asdict(trainer.config),
        "tokenizer": trainer.tokenizer.to_dict(),
        "model": trainer.model.config(),
        "dtype": trainer.model.dtype.name,
        "state_size": trainer.model.state_size,
        "corpus": trainer.corpus,
        "ids": {
            "path": str(path) if path else None,
            "count": len(trainer.train_ids) + len(trainer.val_ids),
            "train": len(trainer.train_ids),
            "dtype": ids.dtype.name,
        },
        "run": {
            "step": trainer.step,
            "epoch": trainer.epoch,
            "chunk": trainer.chunk,
            "history": trainer.history,
            "best_val_bpc": trainer.best_val_bpc,
            "evals_since_best": trainer.evals_since_best,
            "optimizer": opt,
            "buffers": sorted(buffers),
            "rng": trainer.rng.bit_generator.state,
            "rank_rngs": meta.get("rank_rngs"),
        },
    }


def _open_ids(world: World, setup: dict, corpus_names: list[str], encoding_errors: str) -> np.ndarray | None:
    """The corpus ids (N,) on a rank other than 0: rank 0's id cache as an ``np.memmap``.

    A machine that cannot see that file (no shared filesystem) encodes the corpus itself, once
    per machine (its first rank, while the others wait), into the same path; without a store
    (no cache) each rank encodes it in memory. The corpus must then be at the same path on every
    machine, and is checked against rank 0's by its SHA-256. Collective; None on rank 0.
    """
    info = setup["ids"]
    dtype, count, path = np.dtype(info["dtype"]), int(info["count"]), info["path"]
    node = world.comm.Split_type(world.MPI.COMM_TYPE_SHARED, key=world.rank)  # ranks on this machine
    try:
        if path is not None and node.Get_rank() == 0 and not _cache_ready(path, count, dtype):
            _encode_here(setup, corpus_names, encoding_errors, Path(path).parent)
        node.Barrier()  # the machine's first rank has written the cache (if it had to)
    finally:
        node.Free()
    if world.is_root:
        return None
    if path is None:
        ids = _encode_here(setup, corpus_names, encoding_errors, None)
    elif _cache_ready(path, count, dtype):
        ids = np.memmap(path, dtype=dtype, mode="r") if count else np.zeros(0, dtype)
    else:
        raise ValueError(f"rank {world.rank} on {world.host} cannot read the id cache {path}")
    if len(ids) != count:
        raise ValueError(f"rank {world.rank} on {world.host} reads {len(ids)} tokens, rank 0 {count}")
    return ids


def _cache_ready(path: str, count: int, dtype: np.dtype) -> bool:
    p = Path(path)
    return p.is_file() and p.stat().st_size == count * dtype.itemsize


def _encode_here(setup: dict, corpus_names: list[str], encoding_errors: str, cache_dir: Path | None) -> np.ndarray:
    """Encode the corpus on this machine with rank 0's vocabulary, after checking it is the same
    text (SHA-256); into ``cache_dir`` (the path rank 0 used) or in memory."""
    from charrnn.corpus import encode_cached, scan

    config = setup["config"]
    corpus = scan(corpus_names, config["level"], encoding_errors)
    if corpus.sha256 != setup["corpus"].get("sha256"):
        raise ValueError(f"the corpus {', '.join(corpus_names)} on this machine differs from rank 0's (SHA-256)")
    return encode_cached(corpus, Tokenizer.from_dict(setup["tokenizer"]), cache_dir)


def _rebuild(setup: dict, ids: np.ndarray) -> Trainer:
    """Rank 0's run on another rank, before the weights, buffers and state arrive."""
    config = TrainConfig.from_dict(setup["config"])
    model = build_model(setup["model"], DTYPES[setup["dtype"]])  # zero weights, broadcast next
    n_train = int(setup["ids"]["train"])
    trainer = Trainer(
        config, model, Tokenizer.from_dict(setup["tokenizer"]), ids[:n_train], ids[n_train:],
        store=None, corpus=setup["corpus"],
    )
    run = setup["run"]
    trainer.step, trainer.epoch, trainer.chunk = int(run["step"]), int(run["epoch"]), int(run["chunk"])
    trainer.history = list(run["history"])
    trainer.best_val_bpc = run["best_val_bpc"]
    trainer.evals_since_best = int(run["evals_since_best"])
    return trainer


def _send_numbers(world: World, trainer: Trainer, setup: dict) -> np.ndarray:
    """Rank 0's weights and optimizer buffers into every rank's run; returns the full carried
    state (B, S), the same on every rank."""
    world.bcast_array_(trainer.model.theta)
    if trainer.model.direct is not None:  # the n-gram tables and their Adagrad sums
        world.bcast_array_(trainer.model.direct.table)
        world.bcast_array_(trainer.model.direct.accum)
    opt = dict(setup["run"]["optimizer"])
    if world.is_root:
        opt["buffers"] = trainer.optimizer.state_dict()["buffers"]
    else:
        opt["buffers"] = {name: np.empty(trainer.model.num_params, trainer.model.dtype) for name in setup["run"]["buffers"]}
    for name in setup["run"]["buffers"]:
        world.bcast_array_(np.ascontiguousarray(opt["buffers"][name]))
    if not world.is_root:
        trainer.optimizer.load_state_dict(opt)
    B, S = trainer.config.batch_size, int(setup["state_size"])
    full = np.ascontiguousarray(trainer.s, dtype=trainer.model.dtype) if world.is_root else np.empty((B, S), trainer.model.dtype)
    return world.bcast_array_(full)


def _attach(world: World, trainer: Trainer, full_state: np.ndarray, setup: dict, store: ModelStore | None) -> None:
    """Make ``trainer`` this rank's share of the job: its streams and state, its random
    generator, and the hooks that reduce, agree, gather and validate across the ranks."""
    trainer.streams = world.streams(trainer.config.batch_size)
    trainer.s = full_state[trainer.streams].copy()
    trainer.store = store if world.is_root else None
    # the run's generator stays the same on every rank (it draws noise for the whole batch);
    # dropout noise comes from a generator of each rank's own
    trainer.rng.bit_generator.state = setup["run"]["rng"]
    trainer.dropout_rng = np.random.default_rng([trainer.config.seed, world.rank, trainer.step])
    rngs = setup["run"]["rank_rngs"]
    if isinstance(rngs, list) and len(rngs) == world.size:  # resuming a run of as many ranks
        trainer.dropout_rng.bit_generator.state = rngs[world.rank]
    trainer.reduce_gradient = world.reduce_gradient
    trainer.reduce_direct = world.reduce_direct
    trainer.agree_stop = world.agree_stop
    trainer.score_validation = world.validation_bpc

    def gather_checkpoint(ckpt: Checkpoint) -> Checkpoint | None:
        full = world.gather_rows(ckpt.arrays["state"])
        rngs = world.gather_json(trainer.dropout_rng.bit_generator.state)
        world.check_same_weights(trainer.model.theta)
        if not world.is_root:
            return None
        ckpt.arrays["state"] = full
        ckpt.meta["rank_rngs"] = rngs
        ckpt.meta["ranks"] = world.size
        return ckpt

    trainer.gather_checkpoint = gather_checkpoint
    run = trainer.run
    trainer.run = lambda: _guarded_run(world, run())  # this instance's run, guarded


# -- failures -----------------------------------------------------------------------------------


@contextmanager
def _abort_on_failure(world: World):
    """An exception (or Ctrl-C) escaping the block ends every rank, with one line on stderr;
    except JobError and DivergedError, which every rank raises at the same step."""
    try:
        yield
    except (JobError, DivergedError):
        world.busy = False
        raise
    except GeneratorExit:  # the caller dropped run() (its own error): abort when it exits
        raise
    except BaseException as e:  # noqa: BLE001 - even SystemExit must not leave the others waiting
        if isinstance(e, KeyboardInterrupt):
            world.abort("was interrupted")
        world.abort(f"failed: {e}" if isinstance(e, ValueError) else f"failed: {type(e).__name__}: {e}")


def _guarded_run(world: World, records: Iterator) -> Iterator:
    """``Trainer.run()`` for one rank of a job: a failure in it ends every rank."""
    with _abort_on_failure(world):
        yield from records
    world.busy = False  # every rank has finished (and rank 0 has saved)
