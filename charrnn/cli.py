"""The ``charrnn`` command line: train, sample, evaluate, score, predict, info.

A thin layer over the library. It is the only module that uses click, tqdm, standard input and
standard output. Results go to stdout; progress, warnings and errors go to stderr. Exit codes:
0 success (also when a reader such as ``head`` closes the pipe early), 1 a user mistake or a
diverged run (one line on stderr, never a traceback), 2 a usage error, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM; training saves first, as for Ctrl-C).

NumPy and the library are imported inside the commands, so ``--help`` and ``--version`` start
instantly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
from pathlib import Path

import click

from charrnn import __version__

DEFAULT_MODEL = "charrnn-model"
MODEL_ENV = "CHARRNN_MODEL"
SPARKS = "▁▂▃▄▅▆▇█"

# -- errors, pipes, interrupts ----------------------------------------------------------------


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the final flush at exit cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test runner's buffer)
        pass


class CharrnnGroup(click.Group):
    """A click group that turns the library's errors into one line on stderr, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # the reader went away (charrnn sample | head): a quiet exit
            _silence_stdout()
            raise click.exceptions.Exit(0) from None
        except KeyboardInterrupt:
            click.echo("charrnn: interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except (ValueError, OSError, RuntimeError, MemoryError) as error:
            raise click.ClickException(_one_line(error)) from None
        except Exception as error:  # a bug: still one line; CHARRNN_TRACEBACK=1 shows where
            if os.environ.get("CHARRNN_TRACEBACK"):
                raise
            raise click.ClickException(
                f"internal error ({type(error).__name__}: {_one_line(error)}); please report it "
                "(CHARRNN_TRACEBACK=1 shows where)"
            ) from None


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    if isinstance(error, MemoryError):
        return "out of memory (try a smaller --batch-size, --seq-len or --hidden-size)"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _check_memory(need: int, what: str, hint: str) -> None:
    """A one-line error instead of starting something that cannot fit in memory."""
    available = _available_memory()
    if available is not None and need > available:
        raise click.ClickException(
            f"{what} needs about {_size(need)} of memory, but {_size(available)} is available; {hint}"
        )


def _available_memory() -> int | None:
    """Bytes this process may still allocate: the system's available memory (``psutil``), within
    the cgroup and address-space limits; None where the system does not say.

    The cgroup v2 limit is read by hand because psutil does not read it (its Linux code reads
    ``/proc/meminfo`` only): in a container started with ``--memory``, psutil reports the host's
    memory, and only ``memory.max`` says what the container may use.
    """
    limits = []
    try:
        import psutil

        limits.append(int(psutil.virtual_memory().available))
    except (ImportError, OSError, RuntimeError, AttributeError, ValueError):  # psutil cannot tell here
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    try:
        import resource  # Unix only

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    except (ImportError, OSError, ValueError):
        pass
    return max(0, min(limits)) if limits else None


def _corpus_bytes(names: list[str]) -> int | None:
    """The corpus files' total size in bytes; None when one is standard input or unreadable."""
    try:
        return sum(os.path.getsize(name) for name in names) if names and "-" not in names else None
    except OSError:
        return None


def _training_memory(config, corpus_bytes: int | None = None) -> int:
    """A low estimate of the bytes a training run needs (the vocabulary counted as 2 tokens):
    weights, gradient and optimizer buffers; the float64 draws of the orthogonal initialization;
    the states and gates kept for backpropagation."""
    from charrnn.cells import MODELS
    from charrnn.checkpoint import count_params
    from charrnn.train import AUTO_DIRECT_ORDER

    itemsize = 8 if config.dtype == "float64" else 4
    H, G = config.hidden_size, MODELS[config.cell].gates
    params = count_params(config.model_config(2)) * itemsize * (3 + (config.optimizer == "adam"))
    init = (G + 1) * H * H * 8
    activations = config.batch_size * config.seq_len * (G + 1) * H * config.num_layers * itemsize
    direct = 0  # the n-gram table and its Adagrad sums: no larger than the text can fill (direct.plan_rows)
    if config.direct_order != 0 and corpus_bytes is not None:
        order = config.direct_order or max(AUTO_DIRECT_ORDER.values())
        direct = 2 * min(int(config.direct_size * (1 << 20)), corpus_bytes * order * 2 * itemsize)
    return params + init + activations + direct


class FiniteFloatRange(click.FloatRange):
    """A float range that also refuses NaN and infinity (a usage error, exit 2)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def _warn(message: str) -> None:
    click.echo(f"charrnn: warning: {message}", err=True)


def model_option(fn):
    """-m/--model, shared by every command."""
    return click.option(
        "-m",
        "--model",
        "model_path",
        type=click.Path(path_type=Path),
        default=DEFAULT_MODEL,
        envvar=MODEL_ENV,
        show_default=True,
        show_envvar=True,
        help="The model: a store directory (its best checkpoint, else the latest) or one checkpoint file.",
    )(fn)


def _open(model_path: Path, prefer: str = "best"):
    from charrnn.checkpoint import open_model

    return open_model(model_path, prefer)


def _read_utf8(name: str) -> str:
    """A whole file (``-``: standard input) as text; a one-line error with the byte offset if not UTF-8."""
    if name == "-":
        data = _stdin_bytes().read()
        where = "standard input"
    else:
        try:
            data = Path(name).read_bytes()
        except FileNotFoundError:
            raise click.ClickException(f"file not found: {name}") from None
        except IsADirectoryError:
            raise click.ClickException(f"{name} is a directory, not a file") from None
        where = name
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.ClickException(f"{where} is not valid UTF-8 (byte offset {e.start})") from None


def _stdin_bytes():
    """Standard input as a binary stream (click's get_binary_stream is deprecated)."""
    return sys.stdin.buffer


def _quote(text: str) -> str:
    """Text in double quotes with escapes (JSON string syntax), so spaces and newlines show."""
    return json.dumps(text, ensure_ascii=False)


def _show(token: str) -> str:
    """A token made visible on one line: newline, tab, space and other controls escaped."""
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


# -- the group ------------------------------------------------------------------------------------


@click.group(cls=CharrnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="charrnn")
def cli():
    """Train a recurrent neural network on any UTF-8 text, then sample, score and autocomplete.

    \b
      charrnn train book.txt --max-time 600      # train (Ctrl-C saves and stops)
      charrnn sample --seed "我喜欢" -n 200       # continue a prompt
      charrnn evaluate test.txt                  # bits per character on new text
      charrnn score lines.txt | sort -n          # the bits of each line, to rank them
      echo "我喜欢" | charrnn predict --chars 2   # the likely next characters
      charrnn info                               # what the model is and how it trained

    Every command reads the model from -m/--model (default: ./charrnn-model, or $CHARRNN_MODEL).
    """


# -- train ----------------------------------------------------------------------------------------

# (option, TrainConfig field) pairs whose defaults the help texts state; tests check them.
TRAIN_FIELDS = {
    "cell": "cell",
    "hidden_size": "hidden_size",
    "num_layers": "num_layers",
    "embedding_size": "embedding_size",
    "dropout": "dropout",
    "dtype": "dtype",
    "output": "output",
    "num_classes": "num_classes",
    "direct_order": "direct_order",
    "direct_size": "direct_size",
    "direct_lr": "direct_lr",
    "level": "level",
    "min_count": "min_count",
    "max_vocab": "max_vocab",
    "unknown_rate": "unknown_rate",
    "seq_len": "seq_len",
    "batch_size": "batch_size",
    "optimizer": "optimizer",
    "lr": "lr",
    "schedule": "schedule",
    "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay",
    "clip": "clip",
    "steps": "steps",
    "epochs": "epochs",
    "max_time": "max_time",
    "patience": "patience",
    "val_fraction": "val_fraction",
    "eval_every": "eval_every",
    "save_every": "save_every",
    "keep": "keep",
    "random_seed": "seed",
}
POSITIVE_INT = click.IntRange(min=1)
POSITIVE_FLOAT = FiniteFloatRange(min=0, min_open=True)


@cli.command()
@click.argument("corpus", nargs=-1, type=str)
@model_option
@click.option("--cell", type=click.Choice(["rnn", "lstm", "gru"]), help="Recurrent cell.  [default: rnn]")
@click.option("--hidden-size", type=POSITIVE_INT, help="Units per layer, H.  [default: 256]")
@click.option("--num-layers", "--layers", "num_layers", type=POSITIVE_INT, help="Stacked recurrent layers.  [default: 1]")
@click.option("--embedding-size", type=POSITIVE_INT, help="Input embedding width (none: one-hot rows).")
@click.option("--dropout", type=FiniteFloatRange(0, 1, max_open=True), help="Dropout probability (default: 0.2 with the full softmax, 0.5 with the class head).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), help="Parameter type.  [default: float32]")
@click.option("--output", type=click.Choice(["auto", "full", "classes"]), help="Output layer: one softmax over all tokens, or exact frequency classes (faster for large vocabularies); auto: classes from 192 tokens.  [default: auto]")
@click.option("--num-classes", type=POSITIVE_INT, help="Classes of the class output layer (default: about the square root of the vocabulary size).")
@click.option("--direct-order", type=click.IntRange(min=0), help="Hashed n-gram direct connections to the output, of orders 1..N; 0 = off (default: 6 with the full softmax, 3 with the class head).")
@click.option("--direct-size", type=POSITIVE_FLOAT, help="Megabytes of hashed n-gram table (twice that in memory while training).  [default: 64.0]")
@click.option("--direct-lr", type=POSITIVE_FLOAT, help="Adagrad step of the n-gram tables.  [default: 0.1]")
@click.option("--level", type=click.Choice(["char", "word"]), help="Tokens: characters or words.  [default: char]")
@click.option("--min-count", type=POSITIVE_INT, help="Rarer tokens become unknown.  [default: 1]")
@click.option("--max-vocab", type=click.IntRange(min=2), help="Cap on the vocabulary size.")
@click.option("--unknown-rate", type=FiniteFloatRange(0, 0.5, max_open=True), help="Share of training tokens read as unknown, so unseen ones cost ~10 bits.  [default: 0.001]")
@click.option("--seq-len", type=POSITIVE_INT, help="BPTT length in tokens, T.  [default: 64]")
@click.option("--batch-size", type=POSITIVE_INT, help="Parallel streams, B.  [default: 32]")
@click.option("--optimizer", type=click.Choice(["adam", "adagrad", "sgd"]), help="Update rule.  [default: adam]")
@click.option("--lr", type=POSITIVE_FLOAT, help="Learning rate.  [default: 0.003]")
@click.option("--schedule", type=click.Choice(["auto", "constant", "cosine", "exponential"]), help="Learning-rate schedule; auto: cosine down to a tenth over a time budget, constant when --steps or --epochs is given.  [default: auto]")
@click.option("--warmup-steps", type=click.IntRange(min=0), help="Linear warm-up steps.  [default: 0]")
@click.option("--weight-decay", type=FiniteFloatRange(min=0), help="Decoupled weight decay.  [default: 0.0]")
@click.option("--clip", type=FiniteFloatRange(min=0), help="Max gradient norm, 0 = off.  [default: 5.0]")
@click.option("--steps", type=POSITIVE_INT, help="Stop after this many steps (in this run).")
@click.option("--epochs", type=POSITIVE_FLOAT, help="Stop after this many passes over the corpus (in all).")
@click.option("--max-time", type=POSITIVE_FLOAT, help="Stop after this many seconds (600 if no limit is given).")
@click.option("--patience", type=POSITIVE_INT, help="Stop after this many validations without improvement.")
@click.option("--val-fraction", type=FiniteFloatRange(0, 1, max_open=True), help="Held-out tail.  [default: 0.1]")
@click.option("--eval-every", type=click.IntRange(min=0), help="Steps between validations.  [default: 200]")
@click.option("--save-every", type=click.IntRange(min=0), help="Steps between checkpoints.  [default: 500]")
@click.option("--keep", type=POSITIVE_INT, help="Checkpoints kept besides the best.  [default: 3]")
@click.option("--random-seed", type=click.IntRange(min=0), help="Initialization and data order.  [default: 0]")
@click.option("--resume", is_flag=True, help="Continue the latest checkpoint on the same corpus, with its settings unless given again.")
@click.option("--fine-tune", is_flag=True, help="Continue training the model on a different corpus.")
@click.option("--overwrite", is_flag=True, help="Delete the checkpoints already in the store and start afresh.")
@click.option("--threads", type=POSITIVE_INT, help="BLAS threads (default: $OPENBLAS_NUM_THREADS, else 1).")
@click.option("--workers", type=POSITIVE_INT, help="Stream workers: threads that share out the batch's streams (default: one per core; 1 if $OPENBLAS_NUM_THREADS is set).")
@click.option(
    "--encoding-errors",
    type=click.Choice(["strict", "replace", "ignore"]),
    default="strict",
    show_default=True,
    help="What to do with bytes that are not UTF-8.",
)
@click.option(
    "--distributed/--no-distributed",
    default=None,
    help="Data-parallel training over MPI, one process per rank (pip install 'charrnn[mpi]').  "
    "[default: on when started by mpiexec with several processes]",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def train(corpus, model_path, resume, fine_tune, overwrite, threads, workers, encoding_errors, quiet, distributed, **options):
    """Train a model on CORPUS files (- for standard input; none: the bundled English corpus).

    Progress goes to stderr. Ctrl-C finishes the current step, saves and exits with status 130
    (SIGTERM: the same, status 143).
    With --resume or --fine-tune, the saved run's settings apply except those given again; the
    limits (--steps, --epochs, --max-time, --patience) count from this invocation.
    """
    from charrnn.checkpoint import ModelStore
    from charrnn.corpus import default_corpus_path
    from charrnn.threads import default_threads, default_workers, set_threads, set_workers
    from charrnn.train import TrainConfig, prepare

    if resume and fine_tune:
        raise click.UsageError("--resume and --fine-tune exclude each other (--fine-tune also resumes)")
    if overwrite and (resume or fine_tune):
        raise click.UsageError("--overwrite starts afresh: it cannot go with --resume or --fine-tune")
    if model_path.exists() and not model_path.is_dir():
        raise click.ClickException(f"{model_path} is a file; train needs a store directory for -m/--model")
    store = ModelStore(model_path)
    names = list(corpus) or [str(default_corpus_path())]
    values = {TRAIN_FIELDS[k]: v for k, v in options.items() if v is not None}
    from charrnn import distributed as mpi

    world = mpi.connect(distributed)  # None in a normal run, which never imports mpi4py
    if world is not None:
        return _train_distributed(world, store, names, values, resume, fine_tune, overwrite, threads, encoding_errors, quiet)
    from charrnn.data import FITTED

    fit = [name for name in FITTED if name not in values]  # what the user left to us, fitted to a short text
    if resume or fine_tune:  # the saved run's settings, then what this command line changes
        values = {**_saved_settings(store), **values}
    config = TrainConfig(**values)
    _check_memory(
        _training_memory(config, _corpus_bytes(names)), f"training {config.num_layers} x {config.hidden_size} {config.cell} units",
        "choose a smaller --hidden-size, --num-layers, --batch-size or --seq-len",
    )
    created = not model_path.exists()
    store.lock()
    try:
        _claim_store(store, resume, fine_tune, overwrite)
        trainer = prepare(
            config,
            names,
            store,
            resume=resume,
            fine_tune=fine_tune,
            encoding_errors=encoding_errors,
            stdin=_stdin_bytes() if "-" in names else None,
            fit=fit,
        )
        for note in trainer.notes:
            _warn_info(note)
        set_threads(threads or default_threads(trainer.config.hidden_size, trainer.config.batch_size))
        set_workers(workers or default_workers(trainer.config.hidden_size, trainer.config.batch_size))
        _run_training(trainer, quiet)
    except BaseException:
        if created and not store.checkpoints():  # a failed first run leaves no empty store behind
            store.unlock()
            shutil.rmtree(model_path, ignore_errors=True)
        raise
    finally:
        store.unlock()


def _train_distributed(world, store, names, values, resume, fine_tune, overwrite, threads, encoding_errors, quiet):
    """``train`` as one rank of an MPI job (``mpiexec -n R charrnn train ...``): rank 0 holds the
    store and reports; the other ranks train their share of the batch and stay silent."""
    import contextlib

    from charrnn import distributed as mpi
    from charrnn.threads import default_threads, set_threads
    from charrnn.train import TrainConfig

    created = not store.directory.exists()

    def settings():  # on rank 0 only, holding the store's lock
        saved = _saved_settings(store) if resume or fine_tune else {}
        _claim_store(store, resume, fine_tune, overwrite)
        return TrainConfig(**{**saved, **values})

    try:
        with contextlib.ExitStack() as stack:
            if not world.is_root:  # only rank 0 reports; a rank failing alone still says so as it aborts
                stack.enter_context(contextlib.redirect_stderr(stack.enter_context(open(os.devnull, "w"))))
            trainer = mpi.prepare(
                world, settings, names, store, resume=resume, fine_tune=fine_tune, encoding_errors=encoding_errors
            )
            share = trainer.config.batch_size // world.size  # streams per rank
            set_threads(threads or default_threads(trainer.config.hidden_size, share))
            _run_training(trainer, quiet or not world.is_root)
    except BaseException as error:
        if not world.is_root:  # what every rank met, rank 0 reports
            if isinstance(error, (mpi.JobError, click.ClickException, click.exceptions.Exit)):
                raise click.exceptions.Exit(getattr(error, "exit_code", 1)) from None
            raise
        if created and not store.checkpoints():  # a failed first run leaves no empty store behind
            store.unlock()
            shutil.rmtree(store.directory, ignore_errors=True)
        if isinstance(error, mpi.JobError):
            raise click.ClickException(str(error)) from None
        raise
    finally:
        store.unlock()


def _claim_store(store, resume: bool, fine_tune: bool, overwrite: bool) -> None:
    """Refuse to train over a model by accident; with --overwrite, clear the store first."""
    existing = store.checkpoints()
    if existing and not (resume or fine_tune or overwrite):
        raise click.ClickException(
            f"{store.directory} already holds a model; use --resume to continue it, --fine-tune to train it "
            "on a new corpus, --overwrite to start afresh, or another -m/--model"
        )
    if overwrite:
        for path in existing:
            path.unlink(missing_ok=True)
        (store.directory / "store.json").unlink(missing_ok=True)


RUN_LIMITS = ("steps", "epochs", "max_time", "patience")  # per invocation: never inherited


def _saved_settings(store) -> dict:
    """The training settings of the store's latest checkpoint, without its run-length limits."""
    from charrnn.train import TrainConfig

    saved = store.load(prefer="latest").meta.get("train_config") or {}
    return {k: v for k, v in TrainConfig.from_dict(saved).__dict__.items() if k not in RUN_LIMITS}


def _run_training(trainer, quiet: bool) -> None:
    """Drive ``trainer.run()``, showing progress on stderr; Ctrl-C and SIGTERM stop it cleanly."""
    import numpy as np

    from charrnn.checkpoint import CheckpointError, NonFiniteWeightsError, SaveError
    from charrnn.train import DivergedError

    c = trainer.config
    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=1000, file=sys.stderr, bar_format="{percentage:3.0f}%|{bar:20}| {desc} [{elapsed}<{remaining}]")

    stopped_by = [signal.SIGINT]

    def request_stop(signum, frame):
        trainer.stop_requested = True
        stopped_by[0] = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    def kept() -> str:
        try:
            return f"; the last good checkpoint is kept: {trainer.store.resolve('latest')}"
        except (AttributeError, CheckpointError):
            return "; nothing was saved"

    # SIGTERM where the platform has it (Windows defines it but never delivers it from outside)
    stop_signals = [sig for sig in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if sig is not None]
    previous = {sig: signal.signal(sig, request_stop) for sig in stop_signals}
    _describe_run(trainer, quiet)  # after the handlers: from here on, Ctrl-C saves
    last = saved = None
    try:
        # overflow on the way to a NaN is reported once, as a divergence, not as NumPy warnings
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for record in trainer.run():
                last = record
                if record.event == "save":
                    saved = record
                if bar is not None:
                    _update_bar(bar, record, c.level)
                elif not quiet and record.event == "eval":
                    click.echo(_progress_line(record, c.level), err=True)
    except DivergedError as error:
        raise click.ClickException(f"{error}{kept()}") from None
    except NonFiniteWeightsError:  # the update overflowed: the loss would be NaN at the next step
        raise click.ClickException(
            f"training diverged at step {trainer.step} (the weights hold NaN or infinity); lower the "
            f"learning rate (--lr) or clip gradients harder (--clip){kept()}"
        ) from None
    except SaveError as error:  # a full disk, a directory made read-only meanwhile
        raise click.ClickException(f"{error}{kept()}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if bar is not None:
            bar.close()
    if last is None:
        return
    where = f"; saved {saved.path}" if saved is not None and saved.path else ""
    if not quiet or last.reason == "interrupted":
        val = f", validation {last.val_bpc:.4f} bits/{c.level}" if last.val_bpc is not None else ""
        click.echo(f"charrnn: stopped ({last.reason}) at step {last.step}{val}{where}", err=True)
    if last.reason == "interrupted":
        raise click.exceptions.Exit(128 + stopped_by[0])  # 130 for Ctrl-C, 143 for SIGTERM


def _describe_run(trainer, quiet: bool) -> None:
    if quiet:
        return
    c, m = trainer.config, trainer.model
    config = m.config()
    extras = [f"dropout {config['dropout']:g}"] if config.get("dropout") else []
    if m.head.kind == "classes":
        extras.append(f"{m.head.num_classes} output classes")
    if m.direct is not None:
        extras.append(f"n-grams 1-{m.direct.order} in {m.direct.table.nbytes / 2**20:.1f} MB")
    extras = f" ({', '.join(extras)})" if extras else ""
    click.echo(
        f"charrnn: {c.cell} x{c.num_layers}, hidden {c.hidden_size}{extras}, {m.num_params:,} parameters; "
        f"vocabulary {trainer.tokenizer.vocab_size:,} {c.level}s; {len(trainer.train_ids):,} training and "
        f"{len(trainer.val_ids):,} validation tokens; starting at step {trainer.step}",
        err=True,
    )


def _per_token(level: str) -> str:
    """The unit of a figure in bits per token: "bpc" for characters, "bits/word" for words."""
    return "bpc" if level == "char" else f"bits/{level}"


def _progress_line(r, level: str) -> str:
    # validation is scored per token: bits per character at the char level, per word at the word level
    val = f"  val {r.val_bpc:.4f} {_per_token(level)}" if r.val_bpc is not None else ""
    return f"step {r.step:>7}  loss {r.train_loss:.4f} nats{val}  {r.tokens_per_sec:,.0f} {level}s/s  {r.elapsed:.0f}s"


def _update_bar(bar, r, level: str) -> None:
    val = f" val {r.val_bpc:.3f} {_per_token(level)}" if r.val_bpc is not None else ""
    loss = f" loss {r.train_loss:.3f}" if r.train_loss is not None else ""
    bar.set_description_str(f"step {r.step}{loss}{val} {r.tokens_per_sec:,.0f} {level}s/s", refresh=False)
    if r.fraction_done is not None:
        bar.update(int(r.fraction_done * 1000) - bar.n)


# -- sample ---------------------------------------------------------------------------------------


@cli.command()
@model_option
@click.option("--seed", "seed_text", type=str, help="The prompt to continue (default: none).")
@click.option("--seed-file", type=str, help="Read the prompt from a file (- for standard input).")
@click.option("-n", "--length", type=click.IntRange(min=0), default=500, show_default=True, help="Tokens to generate.")
@click.option("-t", "--temperature", type=FiniteFloatRange(min=0), default=1.0, show_default=True, help="Below 1 is safer, above 1 wilder, 0 greedy.")
@click.option("--top-k", type=POSITIVE_INT, help="Sample only among the k most probable tokens.")
@click.option("--top-p", type=FiniteFloatRange(0, 1, min_open=True), help="Sample only among the most probable tokens holding this mass.")
@click.option("--greedy", is_flag=True, help="Always take the most probable token.")
@click.option("--random-seed", type=click.IntRange(min=0), help="Make the output reproducible.")
@click.option("--num-samples", type=POSITIVE_INT, default=1, show_default=True, help="Samples, drawn in parallel, separated by a blank line.")
@click.option("--stop", type=str, help="End a sample when it produces this string (printed).")
@click.option("--unknown", type=click.Choice(["replace", "skip", "error"]), default="replace", show_default=True, help="Prompt tokens outside the vocabulary: read as unknown, drop, or refuse.")
@click.option("--dynamic", is_flag=True, help="First learn from the prompt (dynamic evaluation), so the sample follows its names and style.")
def sample(model_path, seed_text, seed_file, length, temperature, top_k, top_p, greedy, random_seed, num_samples, stop, unknown, dynamic):
    """Generate text, streamed to stdout as it is drawn.

    The prompt is not repeated in the output. Each sample ends with a newline.
    """
    from charrnn.sampling import generate_many, unknown_prompt_tokens

    if seed_text is not None and seed_file is not None:
        raise click.UsageError("give --seed or --seed-file, not both")
    if stop == "":
        raise click.BadParameter("must not be empty", param_hint="--stop")
    prompt = _read_utf8(seed_file) if seed_file is not None else (seed_text or "")
    ckpt = _open(model_path)
    tok = ckpt.tokenizer
    # per sample: a few float64 rows of K for the sampling distribution, the state, and (samples
    # 2.. are printed at the end) one reference per generated token
    row = 4 * 8 * tok.vocab_size + 2 * ckpt.model.dtype.itemsize * ckpt.model.state_size
    _check_memory(
        num_samples * row + (num_samples - 1) * length * 8, f"drawing {num_samples:,} samples of {length:,} tokens at once",
        "ask for fewer --num-samples or a smaller --length",
    )
    if dynamic:
        _adapt(ckpt, prompt, "the prompt")
    if unknown == "replace":
        missing = unknown_prompt_tokens(tok, prompt)
        if missing:
            shown = " ".join(repr(t) for t in missing[:10]) + (" ..." if len(missing) > 10 else "")
            _warn(f"{len(missing)} prompt {tok.level}(s) not in the vocabulary, read as unknown: {shown}")
    steps = generate_many(
        ckpt.model, tok, prompt, length, num_samples,
        temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
        rng=random_seed, stop=stop, unknown=unknown,
    )
    others = [[] for _ in range(num_samples - 1)]  # samples 2.. are printed once all are drawn
    last = ""
    for pieces in steps:
        if pieces[0]:
            click.echo(pieces[0], nl=False)  # click flushes after each write: a live stream
            last = pieces[0]
        for buf, piece in zip(others, pieces[1:]):
            buf.append(piece)
    if not last.endswith("\n"):
        click.echo()
    for buf in others:
        text = "".join(buf)
        click.echo("\n" + text + ("" if text.endswith("\n") else "\n"), nl=False)


# -- evaluate -------------------------------------------------------------------------------------


@cli.command()
@click.argument("files", nargs=-1, required=True, type=str)
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--num-streams", type=POSITIVE_INT, default=64, show_default=True, help="Parallel streams the text is cut into.")
@click.option(
    "--encoding-errors", type=click.Choice(["strict", "replace", "ignore"]), default="strict", show_default=True,
    help="What to do with bytes that are not UTF-8.",
)
@click.option("--dynamic", is_flag=True, help="Dynamic evaluation: learn from each chunk once it is scored.")
@click.option("--dynamic-lr", type=POSITIVE_FLOAT, help="Step size of dynamic evaluation.  [default: 1e-4 for rnn, 1e-3 for lstm and gru (measured best)]")
def evaluate(files, model_path, as_json, num_streams, encoding_errors, dynamic, dynamic_lr):
    """Score the model on FILES (- for standard input): loss, bits per character, perplexity, accuracy.

    The first token is not scored (nothing precedes it). Tokens outside the vocabulary are scored
    as the unknown token and counted under "unknown". Bits per character count the characters of
    the text, at either level, so word and char models compare; loss, perplexity and accuracy are
    per token (per word for a word model). With --dynamic the model keeps learning from the text
    as it reads it (each chunk is scored before it is learned from).
    """
    from charrnn.corpus import encode_cached, scan
    from charrnn.evaluate import evaluate as score

    ckpt = _open(model_path)
    tok = ckpt.tokenizer
    corpus = scan(
        list(files), tok.level, encoding_errors,
        stdin=_stdin_bytes() if "-" in files else None,
    )
    ids = encode_cached(corpus, tok, None)
    texts = corpus.texts()
    scored_chars = corpus.num_chars - len(tok.first_token(next(texts)))  # the first token is not scored
    texts.close()
    if dynamic:
        from charrnn.dynamic import DynamicConfig

        config = DynamicConfig() if dynamic_lr is None else DynamicConfig(lr=dynamic_lr)
        result = _dynamic(ckpt, ids, config, "dynamic evaluation", "use a smaller --dynamic-lr", scored_chars)
    elif dynamic_lr is not None:
        raise click.UsageError("--dynamic-lr needs --dynamic")
    else:
        from charrnn.threads import default_workers, set_workers

        set_workers(default_workers(getattr(ckpt.model, "hidden_size", 1), num_streams))
        result = score(ckpt.model, tok, ids, num_streams=num_streams, scored_chars=scored_chars)
    unit = tok.level
    if result["unknown_tokens"]:
        share = 100 * result["unknown_tokens"] / result["tokens"]
        _warn(f"{result['unknown_tokens']:,} scored {unit}s ({share:.1f}%) are not in the vocabulary; they count as the unknown token")
    if as_json:
        out = {**result, "files": list(files), "checkpoint": str(ckpt.path), "level": unit}
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    rows = [
        ("loss", f"{result['loss_nats']:.4f} nats/{unit}"),
        ("bits/char", f"{result['bits_per_char']:.4f}"),
        *([(f"bits/{unit}", f"{result['bits_per_token']:.4f}")] if unit != "char" else []),
        ("perplexity", f"{result['perplexity']:.3f}" + (f" (per {unit})" if unit != "char" else "")),
        ("top-1", f"{100 * result['accuracy_top1']:.2f}%"),
        ("top-5", f"{100 * result['accuracy_top5']:.2f}%"),
        (f"{unit}s", f"{result['tokens']:,} scored"),
        *([("chars", f"{result['chars']:,} scored")] if unit != "char" else []),
        ("unknown", f"{result['unknown_tokens']:,}" + (f" {unit}s ({result['unknown_chars']:,} chars)" if unit != "char" else "")),
    ]
    for name, value in rows:
        click.echo(f"{name:<11} {value}")


# -- score ----------------------------------------------------------------------------------------

READ_BYTES = 1 << 20  # at most this much input per block of lines; less when a pipe has less ready
NEWLINE = b"\n"


@cli.command()
@click.argument("files", nargs=-1, type=str)
@model_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: text, bits, bits_per_char, tokens, unknown_tokens.")
@click.option("--context", is_flag=True, help="Carry the state from line to line (and file to file) instead of scoring each line on its own.")
@click.option(
    "--encoding-errors", type=click.Choice(["strict", "replace", "ignore"]), default="strict", show_default=True,
    help="What to do with bytes that are not UTF-8.",
)
def score(files, model_path, as_json, context, encoding_errors):
    """Score each line of FILES (- or none: standard input): bits, bits per character, the line.

    Prints "bits<TAB>bits_per_char<TAB>line" per line (sort -n ranks them), as lines are read.
    Each line is scored on its own, from the state the sampler starts an empty prompt with; its
    characters and its newline are each predicted from what precedes them. With --context, every
    line is predicted from all the lines before it, and the bits add up to what evaluate finds
    for the text with a newline in front (--num-streams 1).
    """
    from charrnn.score import MAX_STREAMS, LineScorer
    from charrnn.threads import default_workers, set_workers

    names = list(files) or ["-"]
    if names.count("-") > 1:
        raise click.UsageError("standard input (-) can be read only once")
    for name in names:
        if name != "-" and not Path(name).exists():
            raise click.ClickException(f"file not found: {name}")
        if name != "-" and Path(name).is_dir():
            raise click.ClickException(f"{name} is a directory, not a file")
    ckpt = _open(model_path)
    tok = ckpt.tokenizer
    scorer = LineScorer(ckpt.model, tok, context=context)
    set_workers(default_workers(getattr(ckpt.model, "hidden_size", 1), MAX_STREAMS))
    if "-" in names and _stdin_bytes().isatty():
        click.echo("charrnn: reading lines to score from the terminal; Ctrl-D ends", err=True)
    failure: list[str] = []
    tokens = unknown = 0
    for block in _line_blocks(names, encoding_errors, failure):
        out = []
        for r in scorer.score(block):
            text = r.line.removesuffix("\n").removesuffix("\r")
            tokens += r.tokens
            unknown += r.unknown_tokens
            if as_json:
                out.append(json.dumps(
                    {"text": text, "bits": r.bits, "bits_per_char": r.bits_per_char, "tokens": r.tokens, "unknown_tokens": r.unknown_tokens},
                    ensure_ascii=False,
                ))
            else:
                out.append(f"{r.bits:.4f}\t{r.bits_per_char:.4f}\t{text}")
        click.echo("\n".join(out))  # one write per block
    if unknown:
        _warn(f"{unknown:,} scored {tok.level}s ({100 * unknown / tokens:.1f}%) are not in the vocabulary; they count as the unknown token")
    if failure:
        raise click.ClickException(failure[0])


def _line_blocks(names: list[str], encoding_errors: str, failure: list[str]):
    """Lists of decoded lines (each with its "\n"; a file's last line may lack it), a block per
    read: whatever is ready, up to READ_BYTES, so that lines arriving slowly are scored at once.

    At a byte that is not UTF-8 (with "strict") or a NUL byte, the lines before its line are
    yielded, the reason is appended to ``failure`` and reading stops.
    """
    for name in names:
        where = "standard input" if name == "-" else name
        f = _stdin_bytes() if name == "-" else open(name, "rb")
        try:
            read = getattr(f, "read1", f.read)
            carry, offset, line_number = b"", 0, 1  # carry: a line begun; offset, line_number: where it starts
            while True:
                raw = read(READ_BYTES)
                data = carry + raw
                cut = data.rfind(b"\n") + 1 if raw else len(data)  # at the end, the last line as it is
                complete, carry = data[:cut], data[cut:]
                if complete:
                    lines, bad = _decode_lines(complete, encoding_errors)
                    if lines:
                        yield lines
                    if bad is not None:
                        at, kind = bad
                        line = f"line {line_number + complete.count(NEWLINE, 0, at)}"
                        failure.append(
                            f"{where} looks like a binary file (NUL byte on {line}, byte offset {offset + at}), not text"
                            if kind == "nul" else
                            f"{where} is not valid UTF-8 ({line}, byte offset {offset + at}); use --encoding-errors replace to go on anyway"
                        )
                        return
                    offset += cut
                    line_number += complete.count(b"\n")
                if not raw:
                    break
        finally:
            if name != "-":
                f.close()


def _decode_lines(data: bytes, encoding_errors: str) -> tuple[list[str], tuple[int, str] | None]:
    """Complete lines of bytes -> (the lines before the first bad one, None or (its byte, "nul" or "utf-8"))."""
    from charrnn.score import split_lines

    nul = data.find(b"\0")
    bad = None if nul < 0 else (nul, "nul")
    good = data if nul < 0 else data[: data.rfind(b"\n", 0, nul) + 1]
    try:
        text = good.decode("utf-8", encoding_errors)
    except UnicodeDecodeError as e:
        bad = (e.start, "utf-8")
        text = good[: good.rfind(b"\n", 0, e.start) + 1].decode("utf-8")
    return split_lines(text), bad


# -- predict --------------------------------------------------------------------------------------


@cli.command()
@model_option
@click.option("--text", type=str, help="The text to continue (default: each line of standard input).")
@click.option("--top", type=POSITIVE_INT, default=5, show_default=True, help="Candidates per input.")
@click.option("--chars", type=POSITIVE_INT, default=1, show_default=True, help="Tokens per candidate (beam search above 1).")
@click.option("--beam-width", type=POSITIVE_INT, help="Paths kept by the beam search (default: max(top, 16)).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input line.")
@click.option("--adapt", "adapt_file", type=str, help="First learn from this text (dynamic evaluation): predictions follow its names and style.")
def predict(model_path, text, top, chars, beam_width, as_json, adapt_file):
    """The most probable continuations of a text, with their probabilities.

    With standard input, every line is one text (without its newline) and gets its answer as soon
    as it is read: a backend for autocompletion. Probabilities are the model's own: for several
    tokens, the product along the path.
    """
    from charrnn.sampling import beam_search, next_candidates

    if beam_width is not None and beam_width < top:
        raise click.BadParameter(f"must be at least --top ({top})", param_hint="--beam-width")
    ckpt = _open(model_path)
    if adapt_file is not None:
        _adapt(ckpt, _read_utf8(adapt_file), adapt_file)

    def answer(line: str) -> None:
        if chars == 1:
            cands = next_candidates(ckpt.model, ckpt.tokenizer, line, top=top)
        else:
            cands = beam_search(ckpt.model, ckpt.tokenizer, line, chars=chars, beam_width=beam_width, top=top)
        if as_json:
            out = {"input": line, "candidates": [{"text": t, "prob": p} for t, p in cands]}
            click.echo(json.dumps(out, ensure_ascii=False))
            return
        click.echo(_quote(line))
        for t, p in cands:
            click.echo(f"  {p:.4f}  {_quote(t)}")

    if text is not None:
        answer(text)
        return
    stdin = _stdin_bytes()
    if stdin.isatty():
        click.echo("charrnn: reading lines to continue from the terminal; Ctrl-D ends", err=True)
    for number, raw in enumerate(iter(stdin.readline, b""), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise click.ClickException(f"standard input line {number} is not valid UTF-8 (byte {e.start} of the line)") from None
        answer(line.removesuffix("\n").removesuffix("\r"))


def _adapt(ckpt, text: str, where: str) -> None:
    """Dynamic evaluation over ``text``: the model's weights adapt to it (in memory only)."""
    from charrnn.dynamic import DynamicConfig

    tok = ckpt.tokenizer
    ids = tok.encode(text)
    if len(ids) < 2:
        raise click.ClickException(f"{where} is too short to learn from (it needs at least 2 {tok.level}s)")
    scored_chars = len(text) - len(tok.first_token(text))
    result = _dynamic(ckpt, ids, DynamicConfig(), f"adapting to {where}", "run without it", scored_chars)
    _warn_info(f"adapted to {where}: {result['tokens']:,} {tok.level}s at {result['bits_per_token']:.3f} bits each")


def _dynamic(ckpt, ids, config, what: str, hint: str, scored_chars: int | None = None) -> dict:
    """Dynamic evaluation; a one-line error (not NaN results and NumPy warnings) if it diverges."""
    import numpy as np

    from charrnn.dynamic import dynamic_evaluate

    with np.errstate(all="ignore"):
        result = dynamic_evaluate(ckpt.model, ckpt.tokenizer, ids, config, scored_chars)
    if not (math.isfinite(result["loss_nats"]) and np.isfinite(ckpt.model.theta).all()):
        raise click.ClickException(f"{what} diverged (the loss or the weights became NaN or infinite); {hint}")
    return result


def _warn_info(message: str) -> None:
    click.echo(f"charrnn: {message}", err=True)


# -- info -----------------------------------------------------------------------------------------


def sparkline(values: list[float], width: int = 60) -> str:
    """Values as a line of block characters, low to high; more than ``width`` values are averaged."""
    if not values:
        return ""
    if len(values) > width:  # average into width buckets
        edges = [round(i * len(values) / width) for i in range(width + 1)]
        values = [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:])]
    lo, hi = min(values), max(values)
    if hi == lo:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / (hi - lo) * len(SPARKS)))] for v in values)


def _describe_output(head) -> str:
    """The output layer in words, for ``info``."""
    if head.kind == "classes":
        sizes = head.start[1:] - head.start[:-1]
        return (f"{head.num_classes:,} frequency classes of {min(sizes):,} to {max(sizes):,} tokens "
                f"(exact class-factored softmax over {head.vocab_size:,} tokens)")
    return f"full softmax over {head.vocab_size:,} tokens"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@cli.command()
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(model_path, as_json):
    """What the model is, what it was trained on, and how training went."""
    from charrnn.checkpoint import ModelStore

    ckpt = _open(model_path)
    meta, model, tok = ckpt.meta, ckpt.model, ckpt.tokenizer
    config = model.config()
    store = ModelStore(model_path) if model_path.is_dir() else None
    index = store.index() if store else {}
    history = meta.get("history") or []
    if store and index.get("latest") and ckpt.path and index["latest"] != ckpt.path.name:
        try:  # the latest checkpoint knows the whole validation curve, past the best one
            history = store.load(prefer="latest").meta.get("history") or history
        except ValueError:
            pass
    curve = [(h["step"], h["val_bpc"]) for h in history if h.get("val_bpc") is not None]
    corpus = meta.get("corpus") or {}
    val_at = dict(curve)
    listing = []
    for path in store.checkpoints() if store else []:
        step = int(path.stem.split("-")[1])
        marks = [k for k in ("best", "latest") if index.get(k) == path.name]
        listing.append({"file": path.name, "step": step, "bytes": path.stat().st_size, "val_bpc": val_at.get(step), "marks": marks})
    vocab = tok.tokens[1:]
    head = model.head
    output = {"kind": head.kind, **({"num_classes": head.num_classes} if head.kind == "classes" else {})}
    summary = {
        "checkpoint": str(ckpt.path),
        "model": {k: v for k, v in config.items() if k != "class_of"},  # K numbers: in the checkpoint
        "output": output,
        "dtype": model.dtype.name,
        "params": model.num_params,
        "param_bytes": model.num_params * model.dtype.itemsize,
        "file_bytes": ckpt.path.stat().st_size if ckpt.path else None,
        "level": tok.level,
        "vocab_size": tok.vocab_size,
        "step": ckpt.step,
        "corpus": corpus,
        "best_val_bpc": meta.get("best_val_bpc"),
        "val_curve": [{"step": s, "val_bpc": v} for s, v in curve],
        "checkpoints": listing,
    }
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    layers = config.get("num_layers", 1)
    if tok.level == "word":  # quoted, since a word carries the space before it
        preview = " ".join(_quote(t) for t in vocab[:30]) + (" ..." if len(vocab) > 30 else "")
    else:
        preview = "".join(_show(t) for t in vocab[:60]) + (" ..." if len(vocab) > 60 else "")
    lines = [
        ("checkpoint", f"{ckpt.path}"),
        ("model", f"{config.get('cell', 'rnn')}, {layers} layer{'s' if layers != 1 else ''} of {config['hidden_size']} units, {model.dtype.name}"),
        ("output", _describe_output(head)),
        ("size", f"{model.num_params:,} parameters ({_size(summary['param_bytes'])}); file {_size(summary['file_bytes'] or 0)}"),
        ("vocabulary", f"{tok.vocab_size:,} {tok.level}s (the unknown one included): {preview}"),
        ("trained", f"{ckpt.step:,} steps" + (f" (the store's latest: step {curve[-1][0]:,})" if curve and curve[-1][0] > ckpt.step else "")),
    ]
    if corpus:
        names = ", ".join(Path(n).name if n != "-" else "stdin" for n in corpus.get("names", []))
        lines.append(("corpus", f"{names}: {corpus.get('bytes', 0):,} bytes, {corpus.get('chars', 0):,} chars, sha256 {str(corpus.get('sha256', ''))[:16]}"))
    best = meta.get("best_val_bpc")
    if best is not None:
        lines.append(("best val", f"{best:.4f} bits/{tok.level}"))
    if curve:
        values = [v for _, v in curve]
        lines.append(("val curve", f"{sparkline(values)}  {values[0]:.3f} -> {values[-1]:.3f} bits/{tok.level} over {len(values)} validations"))
    for name, value in lines:
        click.echo(f"{name:<11} {value}")
    if listing:
        click.echo(f"checkpoints in {model_path}:")
        for item in listing:
            val = f"val {item['val_bpc']:.4f}" if item["val_bpc"] is not None else f"{'val -':<10}"
            click.echo(f"  {item['file']}  step {item['step']:>8,}  {val}  {_size(item['bytes']):>9}  {' '.join(item['marks'])}".rstrip())


def main(argv: list[str] | None = None) -> None:
    """The console script: ``charrnn`` (and ``python -m charrnn``)."""
    cli.main(args=argv, prog_name="charrnn")
