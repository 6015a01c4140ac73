"""Bad input of every kind, end to end through the CLI: one line on stderr, the right exit code,
never a traceback, and a model that was saved is never lost or damaged.

The table ``CASES`` is the troubleshooting table of docs/reliability.md: each row names a
situation, the command run, the exit code and the message. Rows that need more than one command
(permissions, a full disk, a file that grows while it is read, hostile checkpoints that must not
allocate or execute anything) have tests of their own below the table.
"""

import errno
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

import charrnn
from charrnn.checkpoint import FORMAT_VERSION, count_params, open_model
from charrnn.cli import cli

from samples import CHINESE, ENGLISH

ROOT = Path(charrnn.__file__).resolve().parent.parent
TEXT = (CHINESE + "\n" + ENGLISH + "\n") * 30  # about 6 KB, Chinese and English
TINY = ["--hidden-size", "16", "--seq-len", "16", "--batch-size", "8", "--eval-every", "20"]


def invoke(*args, input=None):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2 mixes stderr into stdout by default
    except TypeError:
        runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], input=input, env={"CHARRNN_MODEL": None})


def error_line(stderr: str, code: int) -> str:
    """The one line a failure prints (click's "Usage:"/"Try" hint lines aside for usage errors)."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code == 2:
        lines = [line for line in lines if not line.startswith(("Usage:", "Try '"))]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(("Error:", "charrnn:")), lines[0]
    return lines[0]


def check(result, code: int, pattern: str | None) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    if pattern is None:  # a success that must stay quiet
        assert result.stderr == ""
        return ""
    line = error_line(result.stderr, code)
    assert re.search(pattern, line), line
    return line


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k != "CHARRNN_MODEL"}
    e.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    return e


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file of a store (the cache aside), with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name != "train.lock"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny model trained through the CLI: its store, its one checkpoint file and its corpus."""
    d = tmp_path_factory.mktemp("reliability")
    corpus = d / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    store = d / "model"
    result = invoke("train", corpus, "-m", store, *TINY, "--steps", "20", "-q")
    assert result.exit_code == 0, result.stderr
    (ckpt,) = store.glob("ckpt-*.npz")
    return SimpleNamespace(store=store, ckpt=ckpt, corpus=corpus)


# -- crafting damaged and hostile checkpoints -----------------------------------------------------


def npy_bytes(array, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def members_of(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def write_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def meta_of(members: dict[str, bytes]) -> dict:
    return json.loads(np.load(io.BytesIO(members["meta.json.npy"]), allow_pickle=False).tobytes())


def with_meta(members: dict[str, bytes], change) -> dict[str, bytes]:
    meta = meta_of(members)
    change(meta)
    raw = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return {**members, "meta.json.npy": npy_bytes(raw)}


class Payload:
    """Unpickling this creates the file ``marker``: proof that code ran."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled(marker: Path) -> bytes:
    payload = Payload()
    payload.marker = str(marker)
    return npy_bytes(np.array([payload], dtype=object), allow_pickle=True)


def damaged(model, tmp: Path, kind: str) -> Path:
    """A copy of the fixture's checkpoint, damaged in the way ``kind`` names."""
    good = members_of(model.ckpt)
    theta = np.load(io.BytesIO(good["theta.npy"]), allow_pickle=False)
    out = tmp / f"{kind}.npz"
    if kind == "truncated":
        out.write_bytes(model.ckpt.read_bytes()[: model.ckpt.stat().st_size // 2])
    elif kind == "random":
        out.write_bytes(np.random.default_rng(0).bytes(20_000))
    elif kind == "text":
        out.write_text(TEXT, encoding="utf-8")
    elif kind == "newer":
        write_zip(out, with_meta(good, lambda m: m.update(format_version=FORMAT_VERSION + 1)))
    elif kind == "theta-shape":
        write_zip(out, {**good, "theta.npy": npy_bytes(theta[:-3])})
    elif kind == "theta-dtype":
        write_zip(out, {**good, "theta.npy": npy_bytes(theta.astype(np.float64))})
    elif kind == "state-shape":
        state = np.load(io.BytesIO(good["state.npy"]), allow_pickle=False)
        write_zip(out, {**good, "state.npy": npy_bytes(state[:, :-1])})
    elif kind == "bad-json":
        write_zip(out, {**good, "meta.json.npy": npy_bytes(np.frombuffer(b'{"format": "charrnn-', np.uint8))})
    elif kind == "meta-not-bytes":
        write_zip(out, {**good, "meta.json.npy": npy_bytes(np.zeros(4, np.float32))})
    elif kind == "vocab-disagrees":
        def one_more_token(meta):  # a valid vocabulary, one token longer than the weights
            tokens = meta["tokenizer"]["tokens"]
            tokens[1:] = sorted([*tokens[1:], "狐"])

        write_zip(out, with_meta(good, one_more_token))
    elif kind == "no-weights":
        write_zip(out, {k: v for k, v in good.items() if k != "theta.npy"})
    elif kind == "nan-weights":
        write_zip(out, {**good, "theta.npy": npy_bytes(np.where(np.arange(len(theta)) == 5, np.nan, theta).astype(theta.dtype))})
    elif kind == "compressed":
        write_zip(out, good, zipfile.ZIP_DEFLATED)
    elif kind in ("pickle-state", "pickle-theta", "pickle-meta"):
        member = {"pickle-state": "state.npy", "pickle-theta": "theta.npy", "pickle-meta": "meta.json.npy"}[kind]
        write_zip(out, {**good, member: pickled(tmp / "pwned")})
    elif kind == "pickle-declared":  # the metadata itself asks for an object array
        members = with_meta(good, lambda m: m["arrays"]["state"].update(dtype="object"))
        write_zip(out, {**members, "state.npy": pickled(tmp / "pwned")})
    elif kind == "huge-theta-header":  # declares 4e9 floats (16 GB), holds a few bytes
        write_zip(out, {**good, "theta.npy": npy_header((4_000_000_000,)) + b"\0" * 64})
    elif kind == "huge-state":  # metadata and header agree on 10^10 x 10^10 floats
        members = with_meta(good, lambda m: m["arrays"]["state"].update(shape=[10**10, 10**10]))
        write_zip(out, {**members, "state.npy": npy_header((10**10, 10**10)) + b"\0" * 64})
    elif kind == "huge-model":  # a plausible hidden size the file does not hold
        write_zip(out, with_meta(good, lambda m: m["model"].update(hidden_size=3000)))
    elif kind == "absurd-model":
        write_zip(out, with_meta(good, lambda m: m["model"].update(hidden_size=10**12)))
    else:  # pragma: no cover
        raise AssertionError(kind)
    return out


# -- the table ------------------------------------------------------------------------------------


@dataclass
class Case:
    """One situation: the command (a function of the fixture and a fresh directory), the exit code
    and a pattern the one line on stderr must match (None: a success with a quiet stderr)."""

    name: str
    args: object  # (model, tmp) -> list of arguments
    code: int
    pattern: str | None


def corpus_file(data: bytes | str | None, name="corpus.txt"):
    def make(model, tmp):
        path = tmp / name
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        elif data is not None:
            path.write_bytes(data)
        return path

    return make


def train(corpus_maker, *options):
    return lambda model, tmp: ["train", corpus_maker(model, tmp), "-m", tmp / "m", *TINY, "--steps", "2", "-q", *options]


def train_ok(*options):
    return lambda model, tmp: ["train", model.corpus, "-m", tmp / "m", *TINY, "--steps", "1", "-q", *options]


def on_model(command, *options, path=None):
    """``command`` on the fixture's store (or on a path made by ``path(model, tmp)``)."""
    return lambda model, tmp: [*command.split(), "-m", path(model, tmp) if path else model.store, *options]


def on_damaged(kind, command="sample -n 5"):
    return on_model(command, path=lambda model, tmp: damaged(model, tmp, kind))


def dir_with(*names):
    def make(model, tmp):
        d = tmp / "dir"
        d.mkdir()
        for name in names:
            (d / name).write_text("not a model\n")
        return d

    return make


BAD_UTF8 = "我喜欢".encode() + b"\xff\xfe rest of the text"  # the bad byte at offset 9
MB = 1 << 20

CASES = [
    # the corpus
    Case("corpus missing", train(lambda m, t: t / "missing.txt"), 1, r"corpus not found: .*missing\.txt"),
    Case("corpus is a directory", train(lambda m, t: t), 1, r"corpus is a directory, not a file"),
    Case("corpus empty", train(corpus_file(b"")), 1, r"corpus is empty"),
    Case("corpus whitespace only", train(corpus_file(" \n\t\n  \r\n")), 1, r"corpus holds only whitespace"),
    Case("corpus shorter than a batch", train(corpus_file("我喜欢学习数学。")), 1, r"the text has \d characters, fewer than one batch needs \(129 = batch size 8 x sequence length 16 \+ 1\) with --batch-size 8 and --seq-len 16; give smaller values, or leave them out to have them fitted to the text"),
    Case("corpus not UTF-8", train(corpus_file(BAD_UTF8)), 1, r"corpus\.txt is not valid UTF-8 \(byte offset 9\); use --encoding-errors replace to go on anyway"),
    Case("corpus not UTF-8, late", train(corpus_file(TEXT.encode() + b"\xc0")), 1, rf"not valid UTF-8 \(byte offset {len(TEXT.encode())}\)"),
    Case("corpus binary (NUL bytes)", train(corpus_file(b"PK\x03\x04\x00\x00binary")), 1, r"looks like a binary file \(NUL byte at byte offset 4\), not text"),
    Case("corpus not UTF-8, replaced", train(corpus_file(TEXT.encode() + b"\xff" + TEXT.encode()), "--encoding-errors", "replace"), 0, None),
    Case("evaluate: file missing", on_model("evaluate", "nope.txt"), 1, r"corpus not found: nope\.txt"),
    Case("evaluate: binary file", lambda m, t: ["evaluate", "-m", m.store, corpus_file(b"\x7fELF\x02\x01\x01\x00")(m, t)], 1, r"binary file \(NUL byte at byte offset 7\)"),
    Case("evaluate: not UTF-8", lambda m, t: ["evaluate", "-m", m.store, corpus_file(BAD_UTF8)(m, t)], 1, r"byte offset 9"),
    Case("prompt file missing", on_model("sample", "--seed-file", "nope.txt"), 1, r"file not found: nope\.txt"),
    Case("prompt file is a directory", lambda m, t: ["sample", "-m", m.store, "--seed-file", t], 1, r"is a directory, not a file"),
    Case("prompt file not UTF-8", lambda m, t: ["predict", "-m", m.store, "--adapt", corpus_file(BAD_UTF8)(m, t)], 1, r"is not valid UTF-8 \(byte offset 9\)"),
    # options: sizes, steps, lengths, rates
    Case("hidden size 0", train_ok("--hidden-size", "0"), 2, r"'--hidden-size': 0 is not in the range x>=1"),
    Case("hidden size negative", train_ok("--hidden-size", "-16"), 2, r"'--hidden-size': -16 is not in the range x>=1"),
    Case("layers 0", train_ok("--num-layers", "0"), 2, r"'--num-layers' / '--layers': 0 is not in the range"),
    Case("embedding size 0", train_ok("--embedding-size", "0"), 2, r"'--embedding-size': 0"),
    Case("batch size 0", train_ok("--batch-size", "0"), 2, r"'--batch-size': 0"),
    Case("seq-len negative", train_ok("--seq-len", "-1"), 2, r"'--seq-len': -1"),
    Case("steps 0", train_ok("--steps", "0"), 2, r"'--steps': 0 is not in the range x>=1"),
    Case("steps negative", train_ok("--steps", "-5"), 2, r"'--steps': -5"),
    Case("epochs 0", train_ok("--epochs", "0"), 2, r"'--epochs': 0\.0 is not in the range x>0"),
    Case("max-time negative", train_ok("--max-time", "-1"), 2, r"'--max-time': -1\.0"),
    Case("learning rate 0", train_ok("--lr", "0"), 2, r"'--lr': 0\.0 is not in the range x>0"),
    Case("learning rate negative", train_ok("--lr", "-0.01"), 2, r"'--lr': -0\.01"),
    Case("learning rate NaN", train_ok("--lr", "nan"), 2, r"'--lr': 'nan' is not a finite number"),
    Case("learning rate infinite", train_ok("--lr", "inf"), 2, r"'--lr': 'inf' is not a finite number"),
    Case("epochs infinite", train_ok("--epochs", "inf"), 2, r"'--epochs': 'inf' is not a finite number"),
    Case("clip NaN", train_ok("--clip", "nan"), 2, r"'--clip': 'nan' is not a finite number"),
    Case("dropout 1", train_ok("--dropout", "1"), 2, r"'--dropout': 1\.0 is not in the range 0<=x<1"),
    Case("validation share 1", train_ok("--val-fraction", "1"), 2, r"'--val-fraction'"),
    Case("patience 0", train_ok("--patience", "0"), 2, r"'--patience': 0"),
    Case("random seed negative", train_ok("--random-seed", "-1"), 2, r"'--random-seed': -1"),
    Case("unknown optimizer", train_ok("--optimizer", "rmsprop"), 2, r"'--optimizer': 'rmsprop' is not one of 'adam', 'adagrad', 'sgd'"),
    Case("unknown level", train_ok("--level", "byte"), 2, r"'--level': 'byte' is not one of 'char', 'word'"),
    Case("unknown cell", train_ok("--cell", "transformer"), 2, r"'--cell': 'transformer' is not one of"),
    Case("resume and fine-tune", train_ok("--resume", "--fine-tune"), 2, r"--resume and --fine-tune exclude each other"),
    Case("a model too big for memory", train_ok("--hidden-size", str(10**7)), 1, r"training 1 x 10000000 rnn units needs about [\d.]+ GB of memory, but .* is available; choose a smaller --hidden-size"),
    Case("length negative", on_model("sample", "-n", "-1"), 2, r"'-n' / '--length': -1"),
    Case("temperature negative", on_model("sample", "-t", "-0.5"), 2, r"'-t' / '--temperature': -0\.5 is not in the range x>=0"),
    Case("temperature NaN", on_model("sample", "-t", "nan"), 2, r"'nan' is not a finite number"),
    Case("temperature infinite", on_model("sample", "-t", "inf"), 2, r"'inf' is not a finite number"),
    Case("top-p 0", on_model("sample", "--top-p", "0"), 2, r"'--top-p': 0\.0 is not in the range 0<x<=1"),
    Case("top-p above 1", on_model("sample", "--top-p", "1.5"), 2, r"'--top-p': 1\.5 is not in the range 0<x<=1"),
    Case("top-p negative", on_model("sample", "--top-p", "-0.2"), 2, r"'--top-p': -0\.2"),
    Case("top-p NaN", on_model("sample", "--top-p", "nan"), 2, r"'--top-p': 'nan' is not a finite number"),
    Case("top-k 0", on_model("sample", "--top-k", "0"), 2, r"'--top-k': 0 is not in the range x>=1"),
    Case("top-k above the vocabulary: clamped", on_model("sample", "-n", "20", "--top-k", str(10**9)), 0, None),
    Case("samples 0", on_model("sample", "--num-samples", "0"), 2, r"'--num-samples': 0"),
    Case("samples too many for memory", on_model("sample", "--num-samples", str(10**12)), 1, r"drawing 1,000,000,000,000 samples of 500 tokens at once needs about .* ask for fewer --num-samples"),
    Case("empty stop string", on_model("sample", "--stop", ""), 2, r"--stop: must not be empty"),
    Case("top 0", on_model("predict", "--text", "a", "--top", "0"), 2, r"'--top': 0"),
    Case("chars 0", on_model("predict", "--text", "a", "--chars", "0"), 2, r"'--chars': 0"),
    Case("beam narrower than top", on_model("predict", "--text", "a", "--beam-width", "2"), 2, r"--beam-width: must be at least --top \(5\)"),
    Case("streams 0", lambda m, t: ["evaluate", "-m", m.store, m.corpus, "--num-streams", "0"], 2, r"'--num-streams': 0"),
    Case("dynamic rate without --dynamic", lambda m, t: ["evaluate", "-m", m.store, m.corpus, "--dynamic-lr", "0.1"], 2, r"--dynamic-lr needs --dynamic"),
    Case("dynamic rate infinite", lambda m, t: ["evaluate", "-m", m.store, m.corpus, "--dynamic", "--dynamic-lr", "inf"], 2, r"'inf' is not a finite number"),
    Case("dynamic evaluation diverges", lambda m, t: ["evaluate", "-m", m.store, m.corpus, "--dynamic", "--dynamic-lr", "1e300"], 1, r"dynamic evaluation diverged .*use a smaller --dynamic-lr"),
    Case("unknown command", lambda m, t: ["fly"], 2, r"No such command 'fly'"),
    Case("unknown option", on_model("sample", "--colour"), 2, r"No such option:? '?--colour"),
    # the model path
    Case("model missing", on_model("sample", path=lambda m, t: t / "nowhere"), 1, r"no model at .*nowhere \(train one first: charrnn train CORPUS\)"),
    Case("model: empty directory", on_model("info", path=dir_with()), 1, r"no model in .*dir yet \(train one first"),
    Case("model: a directory of something else", on_model("predict --text a", path=dir_with("photo.jpg", "notes.txt")), 1, r"dir holds no charrnn checkpoints"),
    Case("model: newer format version", on_damaged("newer"), 1, rf"has checkpoint format version {FORMAT_VERSION + 1}; this charrnn \(.*\) reads up to {FORMAT_VERSION}: upgrade charrnn"),
    Case("model: truncated", on_damaged("truncated"), 1, r"truncated\.npz is not a charrnn checkpoint \(not a valid \.npz file; truncated\?\)"),
    Case("model: random bytes", on_damaged("random", "info"), 1, r"random\.npz is not a charrnn checkpoint"),
    Case("model: a text file", on_damaged("text", "evaluate corpus.txt"), 1, r"text\.npz is not a charrnn checkpoint"),
    Case("model: weights of the wrong shape", on_damaged("theta-shape"), 1, r"weights are truncated or do not match the model|array 'theta' has shape"),
    Case("model: weights of the wrong dtype", on_damaged("theta-dtype"), 1, r"array 'theta' has dtype float64, expected float32"),
    Case("model: state of the wrong shape", on_damaged("state-shape", "info"), 1, r"array 'state' has shape \(8, 20\), expected \(8, 21\)"),
    Case("model: metadata not JSON", on_damaged("bad-json"), 1, r"metadata is not valid JSON"),
    Case("model: metadata not bytes", on_damaged("meta-not-bytes"), 1, r"metadata is not a UTF-8 byte array"),
    Case("model: vocabulary and weights disagree", on_damaged("vocab-disagrees"), 1, r"vocabulary \(45 tokens\) and weights \(vocab_size 44\) disagree"),
    Case("model: no weights", on_damaged("no-weights"), 1, r"checkpoint lacks the weights"),
    Case("model: NaN weights", on_damaged("nan-weights", "predict --text a"), 1, r"weights hold NaN or infinity"),
    Case("model: compressed members", on_damaged("compressed"), 1, r"member 'meta\.json\.npy' is compressed; charrnn checkpoints store arrays uncompressed"),
    # hostile checkpoints (see also the tests below: nothing runs, nothing big is allocated)
    Case("hostile: pickled state", on_damaged("pickle-state"), 1, r"array 'state' has dtype object, expected float32|holds Python objects"),
    Case("hostile: pickled weights", on_damaged("pickle-theta"), 1, r"weights are truncated or do not match the model|array 'theta' holds Python objects"),
    Case("hostile: pickled metadata", on_damaged("pickle-meta"), 1, r"metadata is not a UTF-8 byte array"),
    Case("hostile: metadata asks for objects", on_damaged("pickle-declared"), 1, r"array 'state' holds Python objects; refusing to load it \(no pickle\)"),
    Case("hostile: 16 GB of weights declared", on_damaged("huge-theta-header"), 1, r"weights are truncated or do not match the model|shape"),
    Case("hostile: 10^20 state floats declared", on_damaged("huge-state"), 1, r"array 'state' declares 400000000000000000000 bytes but the file holds fewer"),
    Case("hostile: hidden size the file lacks", on_damaged("huge-model"), 1, r"weights are truncated or do not match the model"),
    Case("hostile: absurd hidden size", on_damaged("absurd-model"), 1, r"implausible model sizes in metadata"),
    # the prompt
    Case("prompt: unseen characters", on_model("sample", "-n", "10", "--seed", "我爱猫🐈"), 0, None),  # warns: see below
    Case("prompt: unseen characters refused", on_model("sample", "-n", "10", "--seed", "我爱猫", "--unknown", "error"), 1, r"the prompt holds 2 token\(s\) not in the vocabulary: '爱', '猫'"),
    Case("prompt: empty", on_model("sample", "-n", "10", "--seed", ""), 0, None),
    Case("prompt: empty, predict", on_model("predict", "--text", ""), 0, None),
    Case("prompt: over a megabyte", on_model("sample", "-n", "10", "--seed", "我喜欢学习数学。" * (MB // 20)), 0, None),
    Case("prompt: over a megabyte, predict", on_model("predict", "--chars", "2", "--text", "The quick brown fox. " * (MB // 20)), 0, None),
    Case("prompt: adapt to text too short", on_model("sample", "--seed", "我", "--dynamic"), 1, r"the prompt is too short to learn from \(it needs at least 2 chars\)"),
]
CASES[next(i for i, c in enumerate(CASES) if c.name == "prompt: unseen characters")].pattern = (
    r"charrnn: warning: 3 prompt char\(s\) not in the vocabulary, read as unknown: '爱' '猫' '🐈'"
)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_table(case, model, tmp_path, monkeypatch):
    monkeypatch.chdir(model.corpus.parent)  # relative names (nope.txt, corpus.txt) resolve here
    args = case.args(model, tmp_path)
    result = invoke(*args)
    check(result, case.code, case.pattern)
    if case.name.startswith("hostile"):
        assert not (tmp_path / "pwned").exists()  # nothing was unpickled
    if args[0] == "train" and case.code != 0:
        assert not (tmp_path / "m").exists()  # a failed first run leaves no store behind
    if case.name.startswith(("prompt: over", "top-k above")):
        assert result.stdout.strip()


def test_the_table_covers_every_command_and_code(model, tmp_path):
    commands = set()
    for i, case in enumerate(CASES):
        (tmp_path / str(i)).mkdir()
        commands.add(str(case.args(model, tmp_path / str(i))[0]))
    assert {"train", "sample", "predict", "evaluate", "info"} <= commands
    assert {c.code for c in CASES} == {0, 1, 2}
    assert len(CASES) >= 80


def test_top_k_above_the_vocabulary_is_clamped(model):
    """top-k larger than the vocabulary samples exactly as no top-k at all (it is clamped)."""
    plain = invoke("sample", "-m", model.store, "-n", "60", "--random-seed", "5", "--seed", "我")
    clamped = invoke("sample", "-m", model.store, "-n", "60", "--random-seed", "5", "--seed", "我", "--top-k", str(10**6))
    assert plain.exit_code == clamped.exit_code == 0
    assert clamped.stdout == plain.stdout and "\ufffd" not in plain.stdout


def test_encoding_errors_replace_goes_on(model, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(TEXT.encode() + "café".encode("latin-1") + TEXT.encode())
    refused = invoke("train", bad, "-m", tmp_path / "m", *TINY, "--steps", "1", "-q")
    line = check(refused, 1, r"byte offset \d+\); use --encoding-errors replace")
    assert f"byte offset {len(TEXT.encode()) + 3})" in line  # the é
    for policy in ("replace", "ignore"):  # é becomes U+FFFD (the unknown token) or nothing
        ok = invoke("train", bad, "-m", tmp_path / policy, *TINY, "--steps", "1", "-q", "--encoding-errors", policy)
        check(ok, 0, None)
        info = json.loads(invoke("info", "-m", tmp_path / policy, "--json").stdout)
        assert info["vocab_size"] == len(set(TEXT)) + 1
        assert info["corpus"]["chars"] == 2 * len(TEXT) + 3 + (policy == "replace")


# -- the corpus: huge, changing, unreadable -------------------------------------------------------


def test_a_50_megabyte_single_line_trains_in_bounded_memory(tmp_path):
    """One 50 MB line (no newline at all): read in chunks, ids on disk; peak memory stays far
    below what reading it whole would take (~500 MB: bytes, text, UTF-32 code points, ids)."""
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghij klmnopqrstuvwxyz,.", np.uint8)
    line = tmp_path / "line.txt"
    line.write_bytes(letters[rng.integers(0, len(letters), 50 * 1_000_000, dtype=np.uint8)].tobytes())
    code = (  # the peak of this process since exec: VmHWM (ru_maxrss would count the forked parent)
        "import re, resource, sys\n"
        "from charrnn.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "try:\n    peak = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "except OSError:\n    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(code, peak)\n"
    )
    args = ["train", str(line), "-m", str(tmp_path / "m"), *TINY, "--steps", "2", "--val-fraction", "0.001", "-q"]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env(), timeout=120)
    assert "Traceback" not in out.stderr
    exit_code, maxrss = out.stdout.split()
    peak_mb = int(maxrss) / 1024 if sys.platform != "darwin" else int(maxrss) / MB
    assert exit_code in ("0", "None"), out.stderr
    table_mb = 2 * 64  # the n-gram table and its Adagrad sums at their default size, which 50 MB of text fills
    assert peak_mb < 320 + table_mb, f"peak {peak_mb:.0f} MB"
    info = json.loads(invoke("info", "-m", tmp_path / "m", "--json").stdout)
    assert info["corpus"]["bytes"] == 50_000_000 and info["step"] == 2


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_corpus_that_grows_while_read_is_a_clear_error(model, tmp_path, monkeypatch, command):
    """The corpus is read twice (validate + hash + count, then encode). If it changes in between
    (a log still being written), the run stops: the vocabulary, the hash and the ids must agree."""
    import charrnn.corpus as corpus_module

    corpus = tmp_path / "growing.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    real_open, opened = corpus_module._open, []

    def open_and_grow(name, stdin_bytes):
        if name == str(corpus):
            if opened:  # every reading after the first finds more text
                with open(corpus, "a", encoding="utf-8") as f:
                    f.write("新的一行 appended while charrnn reads\n")
            opened.append(name)
        return real_open(name, stdin_bytes)

    monkeypatch.setattr(corpus_module, "_open", open_and_grow)
    if command == "train":
        result = invoke("train", corpus, "-m", tmp_path / "m", *TINY, "--steps", "2", "-q")
    else:
        result = invoke("evaluate", "-m", model.store, corpus)
    check(result, 1, r"the corpus changed while it was being read: .*growing\.txt; train again once it is complete")
    assert len(opened) >= 2
    assert not (tmp_path / "m").exists()  # no store, no cached ids of a text nobody saw whole
    monkeypatch.setattr(corpus_module, "_open", real_open)
    if command == "train":  # once the file holds still, it trains
        check(invoke("train", corpus, "-m", tmp_path / "m", *TINY, "--steps", "2", "-q"), 0, None)


# -- permissions: real ones, even as root ---------------------------------------------------------


def without_file_permissions(tmp: Path) -> list[str] | None:
    """A command prefix under which file permissions apply: nothing for a normal user; for root,
    setpriv dropping the capabilities that bypass them (None if that is impossible here)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search", "--"]
    locked = tmp / "probe.txt"
    locked.write_text("x")
    locked.chmod(0)
    probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(locked)!r}).read()"], capture_output=True)
    locked.unlink()
    return prefix if probe.returncode != 0 else None


def run_restricted(args, cwd):
    prefix = without_file_permissions(cwd)
    if prefix is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
    return subprocess.run(
        [*prefix, sys.executable, "-m", "charrnn", *map(str, args)], cwd=cwd, capture_output=True, env=env(), timeout=60,
    )


def test_unreadable_corpus(tmp_path):
    corpus = tmp_path / "secret.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    corpus.chmod(0)
    out = run_restricted(["train", corpus, "-m", tmp_path / "m", *TINY, "--steps", "1", "-q"], tmp_path)
    assert out.returncode == 1
    line = error_line(out.stderr.decode(), 1)
    assert re.fullmatch(r"Error: corpus is not readable \(permission denied\): .*secret\.txt", line)


def test_unreadable_checkpoint(model, tmp_path):
    ckpt = tmp_path / "private.npz"
    shutil.copy(model.ckpt, ckpt)
    ckpt.chmod(0)
    out = run_restricted(["sample", "-m", ckpt, "-n", "5"], tmp_path)
    assert out.returncode == 2  # click checks -m/--model paths for readability: a usage error
    line = error_line(out.stderr.decode(), 2)
    assert re.fullmatch(r"Error: Invalid value for '-m' / '--model' .*: Path '.*private\.npz' is not readable\.", line)


def test_unwritable_model_directory(model, tmp_path):
    """A new store under a read-only directory, and a read-only store asked to --resume: one line
    at once (not after training), and the old checkpoint stays exactly as it was."""
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o500)
    out = run_restricted(["train", model.corpus, "-m", parent / "m", *TINY, "--steps", "1", "-q"], tmp_path)
    assert out.returncode == 1
    line = error_line(out.stderr.decode(), 1)
    assert re.fullmatch(r"Error: cannot create the model directory .*readonly/m: Permission denied", line)

    store = tmp_path / "store"
    shutil.copytree(model.store, store)
    before = files_of(store)
    store.chmod(0o500)
    out = run_restricted(["train", model.corpus, "-m", store, "--resume", "--steps", "3", "-q"], tmp_path)
    store.chmod(0o700)
    assert out.returncode == 1
    line = error_line(out.stderr.decode(), 1)
    assert re.fullmatch(r"Error: cannot write to the model directory .*store: Permission denied", line)
    assert files_of(store) == before
    assert open_model(store).step == 20


# -- a full disk ----------------------------------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def half_then_no_space(real):
    """np.lib.format.write_array that writes half of the array, then finds the disk full."""

    def write_array(fp, array, *args, **kwargs):
        buf = io.BytesIO()
        real(buf, array, *args, **kwargs)
        fp.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        no_space()

    return write_array


@pytest.mark.parametrize("where", ["checkpoint data", "fsync", "store pointer", "overwriting a checkpoint"])
def test_a_full_disk_keeps_the_old_checkpoint(model, tmp_path, monkeypatch, where):
    """--resume on a full disk: the save fails with "No space left on device", the store's files
    are byte for byte what they were (no half-written checkpoint, no temporary left), and once
    there is room again --resume goes on from the same checkpoint."""
    import builtins

    store = tmp_path / "m"
    shutil.copytree(model.store, store)
    if where == "overwriting a checkpoint":
        # as after kill -9 between writing ckpt-21 and moving the pointer: ckpt-21 is complete
        check(invoke("train", model.corpus, "-m", store, "--resume", "--steps", "1", "-q"), 0, None)
        index = json.loads((store / "store.json").read_text())
        index["latest"] = index["best"] = "ckpt-000000020.npz"
        (store / "store.json").write_text(json.dumps(index))
    before = files_of(store)
    if where in ("checkpoint data", "overwriting a checkpoint"):
        monkeypatch.setattr(np.lib.format, "write_array", half_then_no_space(np.lib.format.write_array))
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", no_space)
    else:
        real_open = builtins.open

        def open_no_space(file, mode="r", *args, **kwargs):
            if ".store.json." in str(file) and "w" in mode:
                no_space()
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_no_space)
    result = invoke("train", model.corpus, "-m", store, "--resume", "--steps", "3", "--save-every", "1", "-q")
    what = r"cannot update .*store\.json" if where == "store pointer" else r"cannot save .*ckpt-000000021\.npz"
    check(result, 1, rf"{what}: No space left on device; the last good checkpoint is kept: .*ckpt-000000020\.npz")
    monkeypatch.undo()
    after = files_of(store)
    if where == "store pointer":  # the checkpoint got written, the pointer did not move
        assert after.pop("ckpt-000000021.npz")
    assert after == before
    assert not [p for p in store.rglob("*.tmp")]
    assert open_model(store, prefer="latest").step == 20
    resumed = invoke("train", model.corpus, "-m", store, "--resume", "--steps", "2")
    assert resumed.exit_code == 0 and "starting at step 20" in resumed.stderr
    assert open_model(store, prefer="latest").step == 22


# -- training that goes wrong ---------------------------------------------------------------------


def test_weights_that_overflow_are_never_saved(model, tmp_path):
    """A learning rate so large that one update makes the weights infinite: the run stops naming the
    step and the remedy, the NaN weights are not written, and the checkpoint named loads."""
    store = tmp_path / "m"
    shutil.copytree(model.store, store)
    before = files_of(store)
    result = invoke(
        "train", model.corpus, "-m", store, "--resume", "--steps", "5", "--save-every", "1",
        "--optimizer", "sgd", "--lr", "1e300", "--clip", "0", "-q",
    )
    line = check(result, 1, r"training diverged at step 21 \(the weights hold NaN or infinity\); lower the learning rate \(--lr\) or clip gradients harder \(--clip\); the last good checkpoint is kept: (.*)$")
    kept = Path(re.search(r"kept: (.*)$", line).group(1))
    assert kept.name == "ckpt-000000020.npz" and open_model(kept).step == 20
    assert files_of(store) == before


def test_two_training_runs_on_one_store(model, tmp_path):
    """While one run trains, a second one on the same store refuses at once (the lock file); the
    first goes on undisturbed and saves."""
    store = tmp_path / "m"
    shutil.copytree(model.store, store)
    first = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "train", str(model.corpus), "-m", str(store), "--resume", "--max-time", "60", "--save-every", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )
    try:
        assert b"starting at step 20" in first.stderr.readline()  # it holds the lock from here on
        second = invoke("train", model.corpus, "-m", store, "--resume", "--steps", "1")
        check(second, 1, r"another training run is using .*m \(lock file train\.lock\); wait for it or choose another --model")
        fresh = invoke("train", model.corpus, "-m", store, *TINY, "--steps", "1", "--overwrite")
        check(fresh, 1, r"another training run is using")  # --overwrite must not delete under it
        first.send_signal(2)
        _, err = first.communicate(timeout=30)
    finally:
        first.kill()
    assert first.returncode == 130, err.decode()
    saved = re.search(r"saved (\S+\.npz)", err.decode()).group(1)
    assert open_model(Path(saved)).step > 20


def test_param_count_without_building_matches_the_models():
    """count_params (used to check a checkpoint before allocating) agrees with every cell."""
    from charrnn.cells import build_model

    for cell in ("rnn", "lstm", "gru"):
        for layers, emb in [(1, None), (2, None), (1, 5), (3, 4)]:
            config = {"cell": cell, "vocab_size": 11, "hidden_size": 6, "num_layers": layers, "embedding_size": emb, "dropout": 0.0}
            assert count_params(config) == build_model(config).num_params, config
            classes = {**config, "output": "classes", "class_of": [0, 3, 1, 2, 2, 1, 0, 3, 3, 1, 0]}
            assert count_params(classes) == build_model(classes).num_params, classes


@pytest.mark.parametrize(
    "output",
    [
        {"output": "classes"},  # no assignment
        {"output": "classes", "class_of": [0, 1]},  # not one class per token
        {"output": "classes", "class_of": "0,1"},
        {"output": "heads"},
    ],
)
def test_a_bad_output_layer_description_is_refused_in_one_line(model, tmp_path, output):
    def change(meta):
        meta["model"].update(output)

    bad = write_zip(tmp_path / "bad.npz", with_meta(members_of(model.ckpt), change))
    check(invoke("info", "-m", bad), 1, r"bad output layer description")


def test_a_class_assignment_out_of_range_is_refused(model, tmp_path):
    def change(meta):
        K = meta["model"]["vocab_size"]
        meta["model"].update(output="classes", class_of=[0] * (K - 1) + [10**12])

    bad = write_zip(tmp_path / "bad.npz", with_meta(members_of(model.ckpt), change))
    check(invoke("info", "-m", bad), 1, r"bad class assignment")


@pytest.mark.parametrize("kind", ["huge-model", "huge-theta-header", "huge-state", "declared-member-size"])
def test_absurd_declared_sizes_allocate_nothing_big(model, tmp_path, kind):
    """A checkpoint that declares far more than it holds fails before any large allocation
    (traced: NumPy reports its buffers to tracemalloc)."""
    if kind == "declared-member-size":
        bad = declared_size_lie(model, tmp_path)
    else:
        bad = damaged(model, tmp_path, kind)
    tracemalloc.start()
    try:
        result = invoke("info", "-m", bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    check(result, 1, r"truncated|do not match|declares|holds fewer|shape")
    legit = 2 * open_model(model.ckpt).model.direct.table.nbytes  # the model's own n-gram table, read first
    assert peak < 8 * MB + legit, f"{peak / MB:.1f} MB allocated"


def declared_size_lie(model, tmp: Path) -> Path:
    """A checkpoint for a 20000-unit model whose zip directory claims the 1.6 GB of weights are
    there (they are not: a header and 64 bytes). Reading it as declared would allocate 1.6 GB."""
    members = with_meta(members_of(model.ckpt), lambda m: m["model"].update(hidden_size=20000))
    config = meta_of(members)["model"]
    P = count_params(config)
    members["theta.npy"] = npy_header((P,)) + b"\0" * 64
    out = write_zip(tmp / "lie.npz", members)
    data = bytearray(out.read_bytes())
    with zipfile.ZipFile(out) as z:
        names = [info.filename for info in z.infolist()]
        start = z.start_dir
    offset = start
    for name in names:  # walk the central directory to the theta entry
        assert data[offset : offset + 4] == b"PK\x01\x02"
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[offset + 28 : offset + 34])
        if name == "theta.npy":
            struct.pack_into("<II", data, offset + 20, P * 4 + 128, P * 4 + 128)  # sizes claimed
        offset += 46 + name_len + extra_len + comment_len
    out.write_bytes(bytes(data))
    return out


def test_refused_pickles_never_run(model, tmp_path):
    """Loading through every command: the payload (which creates a file when unpickled) never runs."""
    for kind in ("pickle-state", "pickle-theta", "pickle-meta", "pickle-declared"):
        bad = damaged(model, tmp_path, kind)
        for command in (["info"], ["sample", "-n", "3"], ["predict", "--text", "a"], ["evaluate", str(model.corpus)]):
            result = invoke(*command, "-m", bad)
            check(result, 1, r"Python objects|dtype object|not a UTF-8 byte array|weights are truncated")
        assert not (tmp_path / "pwned").exists()
    np.load(tmp_path / "pickle-state.npz", allow_pickle=True)["state"]  # the payload is real:
    assert (tmp_path / "pwned").exists()  # NumPy with pickles allowed runs it


# -- output ---------------------------------------------------------------------------------------


def test_stdout_closed_early_is_quiet_for_every_command(model, tmp_path):
    """``| head``: each command stops at once, exit 0, nothing on stderr."""
    lines = "\n".join(["我喜欢", "The quick"] * 3000) + "\n"
    (tmp_path / "lines.txt").write_text(lines, encoding="utf-8")
    commands = {
        "sample": f'sample -m "{model.store}" -n 200000 --num-samples 2',
        "predict": f'predict -m "{model.store}" --json < lines.txt',
        "info": f'info -m "{model.store}"',
    }
    for name, command in commands.items():
        script = f'"{sys.executable}" -m charrnn {command} 2>err.txt | head -c 10 > out.txt; echo "${{PIPESTATUS[0]}}" > status.txt'
        subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env(), timeout=60, check=True)
        assert len((tmp_path / "out.txt").read_bytes()) == 10, name
        assert (tmp_path / "err.txt").read_text() == "", name
        assert (tmp_path / "status.txt").read_text().strip() == "0", name


def test_an_internal_error_is_still_one_line(model, monkeypatch):
    """A bug (an exception nobody expected) still gives one line and exit 1, never a traceback."""
    import charrnn.sampling as sampling

    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(sampling, "generate_many", broken)
    result = invoke("sample", "-m", model.store)
    check(result, 1, r"internal error \(ZeroDivisionError: float division by zero\); please report it")


def test_memory_guard_uses_what_the_machine_has(model, tmp_path, monkeypatch):
    """The estimate is compared with the memory available now; a run that fits is not refused."""
    import charrnn.cli as cli_module

    available = cli_module._available_memory()
    assert available is None or available > 0
    monkeypatch.setattr(cli_module, "_available_memory", lambda: 40 * MB)
    big = invoke("train", model.corpus, "-m", tmp_path / "m", "--hidden-size", "1500", "--steps", "1", "-q")
    check(big, 1, r"training 1 x 1500 rnn units needs about [\d.]+ MB of memory, but 40\.0 MB is available")
    check(invoke("train", model.corpus, "-m", tmp_path / "m", *TINY, "--steps", "1", "-q"), 0, None)
    many = invoke("sample", "-m", model.store, "-n", "5", "--num-samples", "300000")
    check(many, 1, r"drawing 300,000 samples of 5 tokens at once needs about [\d.]+ MB")
