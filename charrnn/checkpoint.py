"""The checkpoint file format and the model store (a directory of checkpoints).

One checkpoint is one self-contained ``.npz`` (a zip of ``.npy`` arrays), loaded with
``allow_pickle=False`` so that loading never executes code:

    meta.json       uint8 (N,)  UTF-8 JSON: format version, model config, tokenizer, training
                                config, step, cursor, metrics history, optimizer hyperparameters
                                and step count, RNG state, corpus description and hash
    theta           float (P,)  every model parameter, flat (see ``charrnn.model.Model``)
    state           float (B,S) the hidden state carried into the next training chunk
    optimizer.NAME  float (P,)  the optimizer's buffers (Adam: m and v), for exact resume

Before any array is read, its ``.npy`` header is checked against what the metadata implies
(dtype and shape; the parameter count is worked out from the model description, without building
the model), and every member must be stored uncompressed within the file, so a hostile or damaged
file fails with a clear error and never makes us allocate more than the file holds. Writes are
atomic: a temporary file in the same directory, fsync, rename, fsync of the directory. Weights
holding NaN or infinity are never written.

The store is a directory holding ``ckpt-<step>.npz`` files and ``store.json``, which names the
latest and the best (lowest validation bits per character) checkpoints. ``train.lock`` guards it
against two training runs at once: an operating-system lock taken through ``filelock`` (``flock``
on Linux and macOS, ``msvcrt.locking`` on Windows), which the system drops when its process dies.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn import __version__
from charrnn.model import DTYPES, Model
from charrnn.tokenizer import Tokenizer

FORMAT = "charrnn-checkpoint"
FORMAT_VERSION = 1
STORE_FILE = "store.json"
LOCK_FILE = "train.lock"
MAX_META_BYTES = 64 << 20  # a vocabulary of a million words fits easily
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.npz$")
_TMP_RE = re.compile(r"^\..+\.(\d+)\.tmp$")  # what atomic_file writes before renaming


class CheckpointError(ValueError):
    """A checkpoint or store that cannot be used, with a one-line reason for the user."""


class NonFiniteWeightsError(CheckpointError):
    """The weights to save hold NaN or infinity (training diverged); nothing was written."""


class SaveError(CheckpointError):
    """A checkpoint or pointer could not be written (a full disk, no permission); the files
    already in the store are untouched."""


@dataclass
class Checkpoint:
    """Everything needed to use a model, and to resume training it exactly.

    ``arrays`` holds the training arrays besides theta ("state", "optimizer.m", ...);
    ``meta`` the JSON metadata (see the module docstring).
    """

    model: Model
    tokenizer: Tokenizer
    meta: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def count_params(config: dict) -> int:
    """P, the parameter count of the model ``config`` describes, worked out without building it.

    The shapes are those of ``charrnn.cells.Stacked`` (``model.RNN`` is its one-layer rnn case):
    Emb (K, E) if E; per layer l, U_l (rows, G*H) with rows K, E or H, W_l (H, G*H), b_l (G*H,);
    then V (H, K), c (K,); and for the class-factored head (``output`` "classes") Q (H, C), d (C,),
    with C one more than the largest class in ``class_of``. G is the cell's number of gates.
    """
    from charrnn.cells import MODELS

    cell = config.get("cell", "rnn")
    if cell not in MODELS:
        raise CheckpointError(f"unknown model cell {cell!r}")
    K, H = config["vocab_size"], config["hidden_size"]
    L, E = config.get("num_layers") or 1, config.get("embedding_size")
    GH = MODELS[cell].gates * H
    first_rows = K if E is None else E
    per_layer = H * GH + GH  # W_l and b_l
    return (0 if E is None else K * E) + first_rows * GH + (L - 1) * H * GH + L * per_layer + H * K + K + _head_extra(config)


def _head_extra(config: dict) -> int:
    """The parameters the output layer holds besides V and c: (H+1) C for the class head."""
    output = config.get("output", "full")
    if output == "full":
        return 0
    class_of = config.get("class_of")
    if output != "classes" or not isinstance(class_of, list) or len(class_of) != config["vocab_size"]:
        raise CheckpointError(f"bad output layer description ({output!r}, its classes)")
    if not all(isinstance(k, int) and 0 <= k < len(class_of) for k in class_of):
        raise CheckpointError("bad class assignment of the output layer")
    return (config["hidden_size"] + 1) * (max(class_of) + 1)


def _direct_size(config: dict, path: Path) -> int:
    """Entries in the direct connections' tables that ``config`` describes (0: none)."""
    direct = config.get("direct")
    if not direct:
        return 0
    try:
        K = int(config["vocab_size"])
        if config.get("output", "full") == "classes":
            class_of = np.asarray(config["class_of"], dtype=np.int64)
            widths = [int(class_of.max()) + 1, *np.bincount(class_of).tolist()]
        else:
            widths = [K]
        rows = [int(r) for r in direct["rows"]]
        if len(rows) != len(widths) or min(rows) < 0 or int(direct["order"]) < 1:
            raise ValueError("rows do not match the output layer")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad direct connections in metadata ({e})") from None
    return sum(w * r for w, r in zip(widths, rows))


def build_model(config: dict, dtype) -> Model:
    """The model a config describes (any cell), with zero weights about to be loaded."""
    from charrnn.cells import build_model as build_any_model

    return build_any_model(config, seed=None, dtype=dtype)


# -- writing ------------------------------------------------------------------------------------


def save_checkpoint(path: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically; the file at ``path`` is never left half-written."""
    path = Path(path)
    if not np.isfinite(ckpt.model.theta).all():
        raise NonFiniteWeightsError(f"the weights hold NaN or infinity; {path.name} was not written")
    meta = dict(ckpt.meta)
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        charrnn_version=__version__,
        model=ckpt.model.config(),
        dtype=ckpt.model.dtype.name,
        tokenizer=ckpt.tokenizer.to_dict(),
        arrays={k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in ckpt.arrays.items()},
    )
    meta_bytes = json.dumps(meta, ensure_ascii=False, allow_nan=False).encode("utf-8")
    members = {"meta.json": np.frombuffer(meta_bytes, dtype=np.uint8), "theta": ckpt.model.theta}
    if ckpt.model.direct is not None:
        if not np.isfinite(ckpt.model.direct.table).all():
            raise NonFiniteWeightsError(f"the direct connections hold NaN or infinity; {path.name} was not written")
        members["direct.table"] = ckpt.model.direct.table
    members.update(ckpt.arrays)
    with atomic_file(path, "wb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for name, array in members.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return path


@contextmanager
def atomic_file(path: Path, mode: str = "wb", **kwargs):
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On any failure (a full disk, Ctrl-C) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj) -> None:
    """Write a small JSON file atomically (temporary file, fsync, rename)."""
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)


# -- reading ------------------------------------------------------------------------------------


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and validate one checkpoint file; raises CheckpointError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        with zipfile.ZipFile(path) as zf:
            _check_members(zf, path)
            return _load(zf, path)
    except CheckpointError as e:
        if str(e).startswith(str(path)):
            raise
        raise CheckpointError(f"{path}: {e}") from None  # say which file (a store holds several)
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path} is not a charrnn checkpoint (not a valid .npz file; truncated?)") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.LargeZipFile) as e:
        raise CheckpointError(f"{path} is damaged or not a charrnn checkpoint ({type(e).__name__}: {e})") from None


def _check_members(zf: zipfile.ZipFile, path: Path) -> None:
    """Every member stored uncompressed and within the file: no member can make us allocate more
    than the file holds (a compressed member could expand a thousandfold or more)."""
    size = path.stat().st_size
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path}: member {info.filename!r} is compressed; charrnn checkpoints store arrays uncompressed")
        if info.file_size != info.compress_size or info.file_size > size:
            raise CheckpointError(f"{path}: member {info.filename!r} declares more bytes than the file holds (truncated?)")


def _read_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple | None) -> np.ndarray:
    """Read one ``.npy`` member after checking its header: no pickles, no surprise sizes."""
    try:
        info = zf.getinfo(name + ".npy")
    except KeyError:
        raise CheckpointError(f"checkpoint lacks the array {name!r}") from None
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            header_shape, fortran, header_dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            header_shape, fortran, header_dtype = np.lib.format.read_array_header_2_0(f)
        else:  # pragma: no cover - numpy only writes the versions above
            raise CheckpointError(f"array {name!r} has an unknown .npy version {version}")
        if header_dtype.hasobject:
            raise CheckpointError(f"array {name!r} holds Python objects; refusing to load it (no pickle)")
        if header_dtype != dtype:
            raise CheckpointError(f"array {name!r} has dtype {header_dtype}, expected {dtype}")
        if shape is not None and tuple(header_shape) != tuple(shape):
            raise CheckpointError(f"array {name!r} has shape {tuple(header_shape)}, expected {tuple(shape)}")
        nbytes = math.prod(int(n) for n in header_shape) * header_dtype.itemsize  # no overflow
        if nbytes > info.file_size:
            raise CheckpointError(f"array {name!r} declares {nbytes} bytes but the file holds fewer (truncated?)")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise CheckpointError(f"array {name!r} is truncated")
    array = np.frombuffer(data, dtype=header_dtype).reshape(header_shape, order="F" if fortran else "C")
    return array.copy()


def _load(zf: zipfile.ZipFile, path: Path) -> Checkpoint:
    try:
        info = zf.getinfo("meta.json.npy")
    except KeyError:
        raise CheckpointError(f"{path} is not a charrnn checkpoint (no metadata)") from None
    if info.file_size > MAX_META_BYTES:
        raise CheckpointError(f"{path}: metadata is implausibly large ({info.file_size} bytes)")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        meta_shape, _, meta_dtype = read_header(f)
    if meta_dtype != np.uint8 or len(meta_shape) != 1:
        raise CheckpointError(f"{path}: metadata is not a UTF-8 byte array")
    raw = _read_member(zf, "meta.json", np.dtype(np.uint8), meta_shape)
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a charrnn checkpoint")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this charrnn ({__version__}) reads up to "
            f"{FORMAT_VERSION}: upgrade charrnn"
        )
    try:
        tokenizer = Tokenizer.from_dict(meta["tokenizer"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: bad vocabulary in metadata ({e})") from None
    config = meta.get("model")
    if not isinstance(config, dict) or meta.get("dtype") not in DTYPES:
        raise CheckpointError(f"{path}: bad model description in metadata")
    if config.get("vocab_size") != tokenizer.vocab_size:
        raise CheckpointError(
            f"{path}: vocabulary ({tokenizer.vocab_size} tokens) and weights "
            f"(vocab_size {config.get('vocab_size')}) disagree"
        )
    sizes = [config.get(k) for k in ("hidden_size", "num_layers", "embedding_size")]
    if not all(v is None or (isinstance(v, int) and 0 < v <= 1 << 16) for v in sizes):
        raise CheckpointError(f"{path}: implausible model sizes in metadata")
    dtype = np.dtype(DTYPES[meta["dtype"]])
    if "theta.npy" not in zf.namelist():
        raise CheckpointError(f"{path}: checkpoint lacks the weights")
    # Check the parameter count against the file before building (and allocating) the model.
    try:
        num_params = count_params(config)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model description in metadata ({e})") from None
    if num_params * dtype.itemsize > zf.getinfo("theta.npy").file_size:
        raise CheckpointError(f"{path}: weights are truncated or do not match the model")
    theta = _read_member(zf, "theta", dtype, (num_params,))
    direct_size = _direct_size(config, path)
    if direct_size:  # checked against the file before the model allocates its tables
        if "direct.table.npy" not in zf.namelist():
            raise CheckpointError(f"{path}: checkpoint lacks the direct connections' tables")
        if direct_size * dtype.itemsize > zf.getinfo("direct.table.npy").file_size:
            raise CheckpointError(f"{path}: direct connections are truncated or do not match the model")
        table = _read_member(zf, "direct.table", dtype, (direct_size,))
    try:
        model = build_model(config, dtype)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build the model it describes ({e})") from None
    if model.num_params != num_params:  # pragma: no cover - count_params mirrors the cells
        raise CheckpointError(f"{path}: the model holds {model.num_params} parameters, not {num_params}")
    model.theta[...] = theta
    if direct_size:
        model.direct.table[...] = table
        if not np.isfinite(table).all():
            raise CheckpointError(f"{path}: direct connections hold NaN or infinity")
    arrays = {}
    for name, spec in (meta.get("arrays") or {}).items():
        try:
            arrays[name] = _read_member(zf, name, np.dtype(spec["dtype"]), tuple(spec["shape"]))
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: bad array description for {name!r} ({e})") from None
    if not np.isfinite(model.theta).all():
        raise CheckpointError(f"{path}: weights hold NaN or infinity")
    accum = arrays.get("direct.accum")
    if model.direct is not None and accum is not None and accum.shape == model.direct.accum.shape:
        model.direct.accum[...] = accum  # the tables' Adagrad sums: dynamic evaluation goes on from them
    return Checkpoint(model=model, tokenizer=tokenizer, meta=meta, arrays=arrays, path=path)


# -- the store ----------------------------------------------------------------------------------


class StoreLockedError(CheckpointError):
    """Another training run holds the store."""


class ModelStore:
    """A directory of checkpoints with pointers to the latest and the best."""

    def __init__(self, directory: Path, keep: int = 3):
        self.directory = Path(directory)
        self.keep = max(1, int(keep))
        self._lock = None  # a filelock.FileLock while we hold the store

    # pointers
    def index(self) -> dict:
        """The contents of store.json ({} if missing or unreadable)."""
        try:
            with open(self.directory / STORE_FILE, encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def checkpoints(self) -> list[Path]:
        """The checkpoint files in the store, oldest step first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _CKPT_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def path_for(self, step: int) -> Path:
        return self.directory / f"ckpt-{step:09d}.npz"

    def save(self, ckpt: Checkpoint, val_bpc: float | None = None) -> Path:
        """Save a checkpoint, update the pointers, and drop old ones (never the best).

        A write that fails (SaveError, naming the file and the reason) leaves the checkpoints
        and pointers already in the store as they were.
        """
        path = self.path_for(ckpt.step)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, ckpt)
        except OSError as e:
            raise SaveError(f"cannot save {path}: {e.strerror or e}") from None
        index = self.index()
        index["latest"] = path.name
        best_ok = index.get("best") and (self.directory / index["best"]).exists()
        if val_bpc is not None and (not best_ok or val_bpc <= index.get("best_val_bpc", float("inf"))):
            index["best"], index["best_val_bpc"] = path.name, float(val_bpc)
        try:
            write_json_atomic(self.directory / STORE_FILE, index)
        except OSError as e:
            raise SaveError(f"cannot update {self.directory / STORE_FILE}: {e.strerror or e}") from None
        self._prune(index)
        return path

    def forget_best(self) -> None:
        """Drop the best pointer (its score was measured on another corpus)."""
        index = self.index()
        if index.pop("best", None) is not None:
            index.pop("best_val_bpc", None)
            write_json_atomic(self.directory / STORE_FILE, index)

    def _prune(self, index: dict) -> None:
        protected = {index.get("latest"), index.get("best")}
        old = [p for p in self.checkpoints() if p.name not in protected]
        for p in old[: max(0, len(old) - (self.keep - 1))]:
            p.unlink(missing_ok=True)

    def resolve(self, prefer: str = "best") -> Path:
        """The checkpoint to use: the best (or latest) by the pointers, else the newest file."""
        if not self.directory.exists():
            raise CheckpointError(f"no model at {self.directory} (train one first: charrnn train CORPUS)")
        index = self.index()
        order = ("best", "latest") if prefer == "best" else ("latest", "best")
        for key in order:
            name = index.get(key)
            if isinstance(name, str) and (self.directory / name).is_file():
                return self.directory / name
        files = self.checkpoints()
        if files:
            return files[-1]
        if any(self.directory.iterdir()):
            raise CheckpointError(f"{self.directory} holds no charrnn checkpoints")
        raise CheckpointError(f"no model in {self.directory} yet (train one first: charrnn train CORPUS)")

    def load(self, prefer: str = "best") -> Checkpoint:
        """Load the checkpoint ``resolve`` names; if it is damaged, fall back to older ones."""
        first = self.resolve(prefer)
        try:
            return load_checkpoint(first)
        except CheckpointError as error:
            for p in reversed(self.checkpoints()):
                if p != first:
                    try:
                        return load_checkpoint(p)
                    except CheckpointError:
                        continue
            raise error

    # locking
    def lock(self) -> None:
        """Take the training lock (released when the process ends, even by kill -9).

        Also checks that the directory is writable (a clear error now, not at the first save)
        and removes temporary files that a killed run left behind.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create the model directory {self.directory}: {e.strerror or e}") from None
        filelock = _filelock()
        lock = filelock.FileLock(self.directory / LOCK_FILE, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise StoreLockedError(
                f"another training run is using {self.directory} (lock file {LOCK_FILE}); "
                "wait for it or choose another --model"
            ) from None
        except OSError as e:
            raise CheckpointError(f"cannot write to the model directory {self.directory}: {e.strerror or e}") from None
        self._lock = lock
        try:
            probe = self.directory / f".write-test.{os.getpid()}.tmp"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            probe.unlink()
        except OSError as e:
            self.unlock()
            raise CheckpointError(f"cannot write to the model directory {self.directory}: {e.strerror or e}") from None
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Delete ``.NAME.PID.tmp`` files (see ``atomic_file``) of processes that no longer run."""
        for directory in (self.directory, self.directory / "cache"):
            if not directory.is_dir():
                continue
            for p in directory.iterdir():
                m = _TMP_RE.match(p.name)
                if m and not _process_alive(int(m.group(1))):
                    p.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release(force=True)
            self._lock = None


def _filelock():
    """The filelock module, imported when a store is locked (it costs ~20 ms, which reading a
    model need not pay). Where there is no fcntl (and not Windows), filelock warns that it falls
    back to a lock file of its own; it breaks those of dead processes, so there is nothing for the
    user to do about it and the warning is not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import filelock
    return filelock


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (``os.kill(pid, 0)`` would terminate it on Windows)."""
    import psutil

    try:
        return pid == os.getpid() or psutil.pid_exists(pid)
    except (OSError, OverflowError, ValueError):
        return True  # cannot tell (or not a pid at all): leave its file alone


def open_model(path: Path, prefer: str = "best") -> Checkpoint:
    """Load what a ``-m/--model`` path names: a checkpoint file, or a store directory."""
    path = Path(path)
    if path.is_dir():
        return ModelStore(path).load(prefer)
    if not path.exists():
        raise CheckpointError(f"no model at {path} (train one first: charrnn train CORPUS)")
    return load_checkpoint(path)
