"""The training loop: truncated BPTT over B streams, periodic validation, checkpoints, exact resume.

``Trainer`` owns everything that changes while training (model, optimizer, RNG, data cursor,
carried state, history). ``Trainer.run()`` is a generator: it yields a ``Progress`` record after
every step, validation and save, and never prints; the front end decides how to show them. To
stop early (Ctrl-C, SIGTERM), set ``trainer.stop_requested = True``: the loop finishes the current
step, saves, and ends with ``reason == "interrupted"``.

Resuming is exact: a checkpoint holds the weights, the optimizer buffers, the RNG state, the data
cursor and the carried hidden state, so N steps, save, resume, N more steps give the same weights
as 2N steps in one run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from charrnn.checkpoint import Checkpoint, ModelStore
from charrnn.data import Batches
from charrnn.model import DTYPES, Model
from charrnn.output import OUTPUTS, output_config
from charrnn.optim import SCHEDULES, Optimizer, clip_grad_norm_, learning_rate, make_optimizer
from charrnn.tokenizer import Tokenizer

DEFAULT_MAX_TIME = 600.0  # seconds, when neither steps, epochs nor max_time is given
# A run limited by time also ends after this many passes over the text (unless --epochs says
# otherwise), and its cosine schedule anneals over whichever comes first. Measured: the default
# models are at their best when annealed over 10 to 13 passes (tiny-Shakespeare 2.104 bpc after
# 13; sanguo 6.500 after 10) and overfit when they keep a high learning rate for longer (the
# same models annealed over 10 minutes on 2 cores, 55 and 25 passes: 2.150 and 6.559, their best
# long before the end).
AUTO_MAX_EPOCHS = 12.0
COUNT_CHUNK = 1 << 20  # ids counted at a time when placing tokens in output classes


@dataclass
class TrainConfig:
    """Every setting of a training run, with its default (one place for all of them)."""

    # model
    cell: str = "rnn"  # rnn | lstm | gru
    hidden_size: int = 256  # H, units per layer
    num_layers: int = 1  # stacked recurrent layers
    embedding_size: int | None = None  # E; None: the first layer looks up its input rows directly
    dropout: float | None = None  # inverted dropout between layers and on the output, in [0, 1);
    #                               None: by output layer (AUTO_DROPOUT)
    dtype: str = "float32"  # float32 (fast) | float64 (for checks)
    # the output layer (charrnn.output): full softmax | classes (exact class-factored softmax,
    # H (C + class size) per token instead of H K) | auto: classes from AUTO_CLASSES_FROM tokens
    output: str = "auto"
    num_classes: int | None = None  # C for the class head; None: about sqrt(K)
    # hashed n-gram direct connections to the output layer (charrnn.direct)
    direct_order: int | None = None  # N: n-grams of orders 1..N; 0 turns them off; None: by the
    #                                   output layer (AUTO_DIRECT_ORDER)
    direct_size: float = 64.0  # MB of float32 table (the Adagrad accumulator takes as much again)
    direct_lr: float = 0.1  # Adagrad step of the tables (follows the schedule like lr)
    # tokenizer
    level: str = "char"  # char | word
    min_count: int = 1  # tokens seen fewer times map to the unknown id
    unknown_rate: float = 1e-3  # fraction of training tokens replaced by the unknown id (noise)
    max_vocab: int | None = None  # cap on the vocabulary size (unknown included)
    # optimization
    seq_len: int = 64  # T, BPTT length in tokens
    batch_size: int = 32  # B, parallel streams
    optimizer: str = "adam"  # adam | adagrad | sgd
    lr: float = 3e-3  # base learning rate (the peak, for a decaying schedule)
    # auto: cosine over the time budget when a run is limited by time (the default), constant when
    # by --steps/--epochs, so that N steps + N resumed steps = 2N steps exactly | constant |
    # cosine (over this invocation's budget) | exponential
    schedule: str = "auto"
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps
    decay_every: int = 1000  # exponential schedule: steps per factor of decay_rate
    decay_rate: float = 0.5
    weight_decay: float = 0.0  # decoupled (AdamW) weight decay
    clip: float = 5.0  # max global gradient norm; 0 disables
    # length of the run (the first limit reached ends it)
    steps: int | None = None  # steps in this invocation
    epochs: float | None = None  # total passes over the training split
    max_time: float | None = None  # seconds of wall time in this invocation (DEFAULT_MAX_TIME if
    #                                 no limit at all is given)
    patience: int | None = None  # early stop after this many validations without improvement
    # validation and saving
    val_fraction: float = 0.1  # last fraction of the corpus held out
    eval_every: int = 200  # steps between validations (0: only at the end)
    eval_max_tokens: int = 2_000_000  # cap on validation tokens scored each time
    save_every: int = 500  # steps between checkpoints (0: only at the end)
    keep: int = 3  # checkpoints kept in the store besides the best
    seed: int = 0  # initialization, data order and dropout

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for an impossible setting."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name.replace('_', '-')} must be a finite number, not {value}")
        positive = ("hidden_size", "num_layers", "seq_len", "batch_size", "lr", "decay_every")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive")
        for name in ("steps", "epochs", "max_time", "patience", "embedding_size", "max_vocab", "num_classes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive")
        if not 0.0 <= self.unknown_rate < 0.5:
            raise ValueError("unknown-rate must be in [0, 0.5)")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val-fraction must be in [0, 1)")
        if self.schedule not in ("auto", *SCHEDULES):
            raise ValueError(f"schedule must be one of auto, {', '.join(SCHEDULES)}")
        if self.output not in ("auto", *OUTPUTS):
            raise ValueError(f"output must be one of auto, {', '.join(OUTPUTS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        if self.min_count < 1:
            raise ValueError("min-count must be at least 1")
        if (self.direct_order or 0) < 0 or self.direct_size <= 0 or self.direct_lr <= 0:
            raise ValueError("direct-order cannot be negative; direct-size and direct-lr must be positive")
        if self.clip < 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("clip, weight-decay and warmup-steps cannot be negative")

    def model_config(self, vocab_size: int, counts=None) -> dict:
        """The model config for K = ``vocab_size`` tokens; ``counts`` (K,), the training split's
        token counts, place the tokens in classes when the class head is used (default: all equal)."""
        counts = np.ones(vocab_size) if counts is None else counts
        output = output_config(self.output, counts, self.num_classes)
        dropout = AUTO_DROPOUT[output.get("output", "full")] if self.dropout is None else self.dropout
        return {
            "cell": self.cell,
            "vocab_size": vocab_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "embedding_size": self.embedding_size,
            "dropout": dropout,
            **output,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Progress:
    """One record of what the loop did; ``event`` is step, eval, save or done."""

    event: str
    step: int
    epoch: float
    train_loss: float | None = None  # nats per token, this step
    val_bpc: float | None = None  # bits per token on the validation split, latest
    best_val_bpc: float | None = None
    lr: float = 0.0
    tokens_per_sec: float = 0.0
    elapsed: float = 0.0  # seconds in this invocation
    fraction_done: float | None = None  # of this invocation's budget, when one is known
    path: str | None = None  # the checkpoint written, for "save"
    reason: str | None = None  # why the run ended, for "done"


class DivergedError(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


# The n-gram order of the direct connections when --direct-order is not given, by output layer:
# measured with 5-minute runs (benchmarks/bench_quality.py; docs/models.md). A small alphabet
# (English characters, full softmax) gains up to order 6 (tiny-Shakespeare: order 4 2.197, 6
# 2.106, 8 2.126 bpc); a large one (Chinese characters, class head) has far more distinct
# contexts per order and is best at 3 (sanguo: 3 6.600, 4 6.601, 6 6.648 bpc).
AUTO_DIRECT_ORDER = {"full": 6, "classes": 3}
# Dropout when --dropout is not given, by output layer, measured the same way: the n-gram tables
# take over the memorizing, and the network overfits less with dropout on its output (tiny-
# Shakespeare: 0 2.106, 0.2 2.104 bpc and a steady curve; sanguo, whose 3,891 characters give a
# large model for 536k characters of text: 0 6.730, 0.3 6.600, 0.5 6.500 bpc).
AUTO_DROPOUT = {"full": 0.2, "classes": 0.5}


def make_model(config: TrainConfig, vocab_size: int, counts: np.ndarray | None = None) -> Model:
    """A freshly initialized model for ``config``; ``counts`` (K,), the training split's token
    counts (``token_counts``), place the tokens in classes when the class head is used and size
    the direct connections' tables of a class-factored head by how often each class is the target."""
    from charrnn.cells import build_model

    model_config = config.model_config(vocab_size, counts)
    order = config.direct_order
    if order is None:
        order = AUTO_DIRECT_ORDER[model_config.get("output", "full")]
    if order:
        model_config["direct"] = direct_config(order, config.direct_size, model_config, counts)
    return build_model(model_config, seed=config.seed, dtype=DTYPES[config.dtype])


def token_counts(config: TrainConfig, train_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each token occurs in the training split (K,), as training will show them: the
    unknown id 0 also stands for the ``unknown_rate`` noise, so it counts at least that often
    (otherwise it would sit among the rarest tokens, in the largest class, whatever the noise)."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for chunk in _id_chunks(train_ids):  # in chunks: the ids may be a memmap of GBs
        counts += np.bincount(chunk, minlength=vocab_size)
    counts[0] = max(counts[0], config.unknown_rate * len(train_ids))
    return counts


def _id_chunks(ids: np.ndarray) -> Iterator[np.ndarray]:
    """The ids in chunks of COUNT_CHUNK. A memmap that starts where its file's map starts (the
    cached ids, or a prefix of them) is read through a file handle instead of through the map: the
    pages of a map stay in the process's resident memory once touched (2 GB of it, for the ids of
    a 1 GB text), while a file read leaves them to the page cache."""
    base = ids.base if isinstance(ids, np.memmap) else None
    mapped = getattr(base, "ctypes", None)
    if isinstance(ids, np.memmap) and ids.filename and (mapped is None or mapped.data == ids.ctypes.data):
        with open(ids.filename, "rb") as f:
            f.seek(ids.offset)
            for a in range(0, len(ids), COUNT_CHUNK):
                yield np.fromfile(f, dtype=ids.dtype, count=min(COUNT_CHUNK, len(ids) - a))
        return
    for a in range(0, len(ids), COUNT_CHUNK):
        yield ids[a : a + COUNT_CHUNK]


def direct_config(order: int, size_mb: float, model_config: dict, counts: np.ndarray | None) -> dict:
    """{"order", "rows"} of the direct connections for a model config (without them)."""
    from charrnn.direct import plan_rows
    from charrnn.output import make_head

    head = make_head(model_config["vocab_size"], model_config["hidden_size"], model_config)
    masses = None
    if head.kind == "classes" and counts is not None:
        masses = np.bincount(head.class_of, weights=np.asarray(counts, dtype=np.float64), minlength=head.num_classes)
    positions = None if counts is None else int(np.sum(counts))
    return {"order": int(order), "rows": plan_rows(head.widths, size_mb, masses, positions, order)}


def validation_bpc(model: Model, ids: np.ndarray, seq_len: int, max_tokens: int, num_streams: int = 64) -> float:
    """Bits per token of ``model`` on ``ids`` (forward only, state carried across chunks).

    Per token, not per character (the name is historical): for a word-level model, bits per
    word. That is all early stopping and the best checkpoint need.
    """
    from charrnn.evaluate import evaluate

    if len(ids) < 2:
        return float("nan")
    ids = ids[: max_tokens + 1]
    return float(evaluate(model, None, ids, num_streams=num_streams, seq_len=max(seq_len, 128))["bits_per_token"])


@dataclass
class Trainer:
    """A training run in progress (see the module docstring)."""

    config: TrainConfig
    model: Model
    tokenizer: Tokenizer
    train_ids: np.ndarray
    val_ids: np.ndarray
    store: ModelStore | None = None
    corpus: dict = field(default_factory=dict)  # name, size, sha256: kept in checkpoints
    optimizer: Optimizer | None = None
    step: int = 0  # steps taken so far, over all invocations
    chunk: int = 0  # data cursor: the next chunk of the current epoch
    epoch: int = 0  # completed passes over the training split
    history: list = field(default_factory=list)  # [{"step", "train_loss", "val_bpc"}]
    best_val_bpc: float | None = None
    evals_since_best: int = 0
    stop_requested: bool = False
    schedule_progress: float | None = None  # fraction of the budget done, for the cosine schedule
    # data parallelism: average the flat gradient in place across processes and return the mean
    # loss (an MPI allreduce); and which of the batch's streams this process owns
    reduce_gradient: Callable[[np.ndarray, float], float] | None = None
    # and the direct connections' sparse gradient, summed over processes: {j: (rows, dD)}
    reduce_direct: Callable | None = None
    streams: slice = field(default_factory=lambda: slice(None))
    # (charrnn.distributed sets these too) every process's (reason to stop, fraction of the
    # budget done) -> the pair they all share, so that they end at the same step and follow the
    # same schedule although their clocks differ; every process's part of a checkpoint -> the
    # whole checkpoint on the process that saves (None on the others); validation split among
    # processes; a generator for dropout of this process's own (else ``rng``, which must stay the
    # same in every process: it draws the unknown-token noise for the whole batch)
    agree_stop: Callable[[str | None, float | None], tuple[str | None, float | None]] | None = None
    gather_checkpoint: Callable[[Checkpoint], Checkpoint | None] | None = None
    score_validation: Callable[[Model, np.ndarray, int, int], float] | None = None
    restored_meta: dict | None = field(default=None, repr=False)  # of the checkpoint restored
    notes: list[str] = field(default_factory=list)  # one-line notices for the user (``prepare``'s)
    dropout_rng: np.random.Generator | None = field(default=None, repr=False)

    def __post_init__(self):
        c = self.config
        self.batches = Batches(self.train_ids, c.batch_size, c.seq_len)
        if self.optimizer is None:
            self.optimizer = make_optimizer(c.optimizer, self.model.num_params, self.model.dtype, c.weight_decay)
        self.rng = np.random.default_rng(c.seed)
        num_streams = len(range(c.batch_size)[self.streams])
        self.s = self.model.zero_state(num_streams)

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """The whole state of the run as a checkpoint."""
        opt_state = self.optimizer.state_dict()
        arrays = {"state": self.s.copy()}
        if self.model.direct is not None:  # the tables travel with the model; their Adagrad sums here
            arrays["direct.accum"] = self.model.direct.accum.copy()
        arrays.update({f"optimizer.{k}": v for k, v in opt_state.pop("buffers").items()})
        meta = {
            "train_config": asdict(self.config),
            "step": self.step,
            "cursor": {"epoch": self.epoch, "chunk": self.chunk},
            "history": self.history,
            "best_val_bpc": self.best_val_bpc,
            "evals_since_best": self.evals_since_best,
            "optimizer": opt_state,
            "rng": self.rng.bit_generator.state,
            "corpus": self.corpus,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return Checkpoint(model=self.model, tokenizer=self.tokenizer, meta=meta, arrays=arrays)

    def restore(self, ckpt: Checkpoint, data_too: bool = True) -> None:
        """Continue from ``ckpt``: weights, optimizer, RNG, history; and cursor and state if
        ``data_too`` (False for fine-tuning on another corpus)."""
        meta = self.restored_meta = ckpt.meta
        self.model.theta[...] = ckpt.model.theta
        if self.model.direct is not None:  # the tables and their Adagrad sums (loaded with the model)
            self.model.direct.table[...] = ckpt.model.direct.table
            self.model.direct.accum[...] = ckpt.model.direct.accum
        opt = dict(meta["optimizer"])
        opt["buffers"] = {k.split(".", 1)[1]: v for k, v in ckpt.arrays.items() if k.startswith("optimizer.")}
        if opt.get("name") == self.optimizer.name:
            self.optimizer.load_state_dict(opt)
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        self.rng.bit_generator.state = meta["rng"]
        if data_too:
            self.best_val_bpc = meta.get("best_val_bpc")
            self.evals_since_best = int(meta.get("evals_since_best", 0))
            self.epoch = int(meta["cursor"]["epoch"])
            self.chunk = int(meta["cursor"]["chunk"])
            state = ckpt.arrays.get("state")
            if state is not None and state.shape == self.s.shape:
                self.s = state.astype(self.model.dtype)

    def save(self) -> str | None:
        """Save to the store (if any); the latest validation result decides "best"."""
        if self.store is None and self.gather_checkpoint is None:
            return None
        ckpt = self.checkpoint()
        if self.gather_checkpoint is not None:  # collective: every process calls save
            ckpt = self.gather_checkpoint(ckpt)
        if self.store is None or ckpt is None:
            return None
        # only a score of these very weights may make this checkpoint the best
        last = self.history[-1] if self.history else {}
        val_bpc = last.get("val_bpc") if last.get("step") == self.step else None
        return str(self.store.save(ckpt, val_bpc=val_bpc))

    # -- the loop -------------------------------------------------------------------------------

    def train_step(self) -> tuple[float, float]:
        """One chunk of truncated BPTT and one update; returns (loss, learning rate)."""
        c = self.config
        if self.chunk >= self.batches.num_chunks:  # a new pass: streams start over from zero state
            self.chunk, self.epoch = 0, self.epoch + 1
            self.s = self.model.zero_state(self.s.shape[0])
        inputs, targets = self.batches.chunk(self.chunk, self.streams)
        if c.unknown_rate:
            inputs, targets = self._unknown_noise(inputs, targets)
        rng = (self.rng if self.dropout_rng is None else self.dropout_rng) if getattr(self.model, "dropout", 0.0) else None
        loss, g, s_last = self.model.loss_and_flat_grad(inputs, targets, self.s, rng)
        if self.reduce_gradient is not None:
            loss = self.reduce_gradient(g, loss)
        norm = clip_grad_norm_(g, c.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise DivergedError(
                f"training diverged at step {self.step + 1} (loss {loss}, gradient norm {norm}); "
                "lower the learning rate (--lr) or clip gradients harder (--clip)"
            )
        lr = learning_rate(
            self.step, c.lr, self.schedule, self._total_steps(), c.warmup_steps,
            decay_rate=c.decay_rate, decay_every=c.decay_every, progress=self.schedule_progress,
        )
        self.optimizer.step(self.model.theta, g, lr)
        if self.model.direct is not None:  # the tables' own sparse step, on the schedule of lr
            direct = self.model.direct
            grads = direct.sparse_grad() if self.reduce_direct is None else self.reduce_direct(direct)
            direct.update(c.direct_lr * lr / c.lr, grads)
        self.s = s_last
        self.chunk += 1
        self.step += 1
        return loss, lr

    def _unknown_noise(self, inputs: np.ndarray, targets: np.ndarray):
        """Replace a random ``unknown_rate`` of the tokens by the unknown id 0.

        The model thus learns a small, honest probability for "a token I have not seen" and how
        to read one in a prompt, instead of pricing an unseen character at dozens of bits. The
        mask is drawn for the whole batch and then cut to this process's streams, so it is the
        same whatever the number of processes.
        """
        B, T = self.config.batch_size, self.config.seq_len
        mask = self.rng.random((B, T + 1)) < self.config.unknown_rate  # the window: inputs + last target
        mask = mask[self.streams]
        window = np.concatenate([inputs[:, :1], targets], axis=1)
        window[mask] = 0
        return window[:, :-1], window[:, 1:]

    @property
    def schedule(self) -> str:
        """The schedule in force: "auto" is cosine for time-limited runs, else constant."""
        c = self.config
        if c.schedule != "auto":
            return c.schedule
        return "cosine" if c.steps is None and c.epochs is None else "constant"

    def _total_steps(self) -> int | None:
        if self.config.epochs:
            return int(self.config.epochs * self.batches.num_chunks)
        return None

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.chunk / self.batches.num_chunks

    def validate(self) -> float:
        c = self.config
        score = self.score_validation or validation_bpc
        bpc = score(self.model, self.val_ids, c.seq_len, c.eval_max_tokens)
        improved = self.best_val_bpc is None or bpc < self.best_val_bpc
        if improved:
            self.best_val_bpc, self.evals_since_best = bpc, 0
        else:
            self.evals_since_best += 1
        return bpc

    def run(self) -> Iterator[Progress]:
        """Train until a limit is reached, yielding Progress records; validates and saves at the end."""
        c = self.config
        budget = _Budget(c, self.step, self.epochs_done)
        tokens_per_step = self.batches.batch_size * c.seq_len
        loss, lr, val_bpc, losses = None, 0.0, None, []
        while (reason := self._stop_reason(budget)) is None:
            loss, lr = self.train_step()
            losses.append(loss)
            rate = budget.steps_done(self) * tokens_per_step / max(budget.elapsed(), 1e-9)
            yield self._progress("step", loss, val_bpc, lr, rate, budget)
            improved = False
            if c.eval_every and self.step % c.eval_every == 0:
                val_bpc = self._evaluate_and_record(float(np.mean(losses)))
                improved = self.evals_since_best == 0 and val_bpc is not None
                losses = []
                yield self._progress("eval", loss, val_bpc, lr, rate, budget)
            # a new best is saved at once (with saving on): a model that overfits early keeps it
            if c.save_every and (self.step % c.save_every == 0 or improved):
                yield self._progress("save", loss, val_bpc, lr, rate, budget, path=self.save())
        rate = budget.steps_done(self) * tokens_per_step / max(budget.elapsed(), 1e-9)
        if budget.steps_done(self) > 0:
            if losses:
                val_bpc = self._evaluate_and_record(float(np.mean(losses)))
                yield self._progress("eval", loss, val_bpc, lr, rate, budget)
            path = self.save()
            if path:
                yield self._progress("save", loss, val_bpc, lr, rate, budget, path=path)
        yield self._progress("done", loss, val_bpc, lr, rate, budget, reason=reason)

    def _stop_reason(self, budget: _Budget) -> str | None:
        """Why to stop now (None: go on); also sets the schedule's progress for the next step."""
        reason, progress = budget.reason(self), budget.fraction(self)
        if self.agree_stop is not None:
            reason, progress = self.agree_stop(reason, progress)
        self.schedule_progress = progress
        return reason

    def _evaluate_and_record(self, mean_loss: float) -> float | None:
        record = {"step": self.step, "train_loss": round(mean_loss, 5)}
        val_bpc = None
        if len(self.val_ids) > 1:
            val_bpc = self.validate()
            record["val_bpc"] = round(val_bpc, 5)
        self.history.append(record)
        return val_bpc

    def _progress(self, event, loss, val_bpc, lr, rate, budget, **extra) -> Progress:
        return Progress(
            event=event, step=self.step, epoch=self.epochs_done, train_loss=loss, val_bpc=val_bpc,
            best_val_bpc=self.best_val_bpc, lr=lr, tokens_per_sec=rate, elapsed=budget.elapsed(),
            fraction_done=budget.fraction(self), **extra,
        )


class _Budget:
    """The limits of one invocation: steps, epochs, wall time, patience."""

    def __init__(self, config: TrainConfig, step: int, epochs_done: float):
        from dataclasses import replace

        if config.steps is None and config.epochs is None and config.max_time is None:
            config = replace(config, max_time=DEFAULT_MAX_TIME)
        if config.steps is None and config.epochs is None:  # limited by time: AUTO_MAX_EPOCHS too
            config = replace(config, epochs=AUTO_MAX_EPOCHS if epochs_done < AUTO_MAX_EPOCHS else None)
        self.config, self.start_step, self.start_epochs = config, step, epochs_done
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def steps_done(self, trainer: Trainer) -> int:
        return trainer.step - self.start_step

    def fraction(self, trainer: Trainer) -> float | None:
        c, parts = self.config, []
        if c.steps:
            parts.append(self.steps_done(trainer) / c.steps)
        if c.max_time:
            parts.append(self.elapsed() / c.max_time)
        if c.epochs and c.epochs > self.start_epochs:
            parts.append((trainer.epochs_done - self.start_epochs) / (c.epochs - self.start_epochs))
        return min(1.0, max(parts)) if parts else None

    def reason(self, trainer: Trainer) -> str | None:
        c = self.config
        if trainer.stop_requested:
            return "interrupted"
        if c.steps is not None and self.steps_done(trainer) >= c.steps:
            return "steps"
        if c.epochs is not None and trainer.epochs_done >= c.epochs:
            return "epochs"
        if c.max_time is not None and self.elapsed() >= c.max_time:
            return "max-time"
        if c.patience is not None and trainer.evals_since_best >= c.patience:
            return "early-stop"
        return None


def prepare(
    config: TrainConfig,
    corpus_names: list[str],
    store: ModelStore | None,
    *,
    resume: bool = False,
    fine_tune: bool = False,
    encoding_errors: str = "strict",
    stdin=None,
    fit: Collection[str] | None = None,
) -> Trainer:
    """Everything before the first step: read the corpus, build or restore the run.

    A new run builds the vocabulary from the corpus. ``resume`` continues the store's latest
    checkpoint exactly, and refuses a different corpus (by its SHA-256) unless ``fine_tune``,
    which keeps the model and its vocabulary and starts reading the new corpus from the top.
    ``fit`` names the settings (of ``charrnn.data.FITTED``: batch_size, seq_len, val_fraction)
    that may shrink to a text too short for them (``charrnn.data.fit_to_text``; the others, chosen
    by the user, are named in the error if they do not fit; None: no fitting, and resuming keeps
    the run's own); ``trainer.notes`` then says what changed. Raises ValueError (CorpusError,
    CheckpointError) with a one-line reason.
    """
    from charrnn.corpus import encode_cached, scan
    from charrnn.data import fit_to_text, split_train_val

    config.validate()
    ckpt = None
    if resume or fine_tune:
        if store is None:
            raise ValueError("resuming needs a model store (--model)")
        ckpt = store.load(prefer="latest")
        saved = TrainConfig.from_dict(ckpt.meta.get("train_config", {}))
        # the architecture and vocabulary come from the checkpoint, the run's limits from now
        architecture = ("cell", "hidden_size", "num_layers", "embedding_size", "dtype", "output", "num_classes")
        for name in (*architecture, "level", "min_count", "max_vocab", "direct_order", "direct_size"):
            setattr(config, name, getattr(saved, name))
        if not fine_tune:
            for name in ("batch_size", "seq_len", "val_fraction", "seed"):
                setattr(config, name, getattr(saved, name))
    corpus = scan(corpus_names, config.level, encoding_errors, stdin=stdin)
    if ckpt is not None:
        tokenizer = ckpt.tokenizer
        saved_hash = (ckpt.meta.get("corpus") or {}).get("sha256")
        if not fine_tune and saved_hash != corpus.sha256:
            raise ValueError(
                "this corpus differs from the one the model was trained on (SHA-256 mismatch); "
                "use --fine-tune to continue training on a new corpus"
            )
    else:
        from charrnn.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_counts(corpus.counts, config.level, config.min_count, config.max_vocab)
    cache = store.directory / "cache" if store is not None else None
    ids = encode_cached(corpus, tokenizer, cache)
    note = None
    if fit is not None and not (resume and not fine_tune):
        unit = "characters" if config.level == "char" else "words"
        config.batch_size, config.seq_len, config.val_fraction, note = fit_to_text(
            len(ids), config.batch_size, config.seq_len, config.val_fraction, tuple(fit), unit
        )
    train_ids, val_ids = split_train_val(ids, config.val_fraction)
    if ckpt is not None:
        model = ckpt.model
    else:
        model = make_model(config, tokenizer.vocab_size, token_counts(config, train_ids, tokenizer.vocab_size))
    # the head in use, not "auto": what the checkpoint's settings say and a resumed run keeps
    config.output = model.head.kind
    config.num_classes = getattr(model.head, "num_classes", None)
    trainer = Trainer(config, model, tokenizer, train_ids, val_ids, store=store, corpus=corpus.describe())
    if note:
        trainer.notes.append(note)
    if ckpt is not None:
        trainer.restore(ckpt, data_too=not fine_tune)
        if fine_tune:  # scores on the old corpus say nothing about the new one
            store.forget_best()
    return trainer
