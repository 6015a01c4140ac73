"""Reading training text: validation with precise errors, and a compact id file cached on disk.

A corpus is one or more UTF-8 files (or standard input) read as one text. ``scan`` reads it once
in chunks: it checks the encoding (a clear error with the byte offset of the first bad byte),
refuses binary files, hashes the bytes (SHA-256, so a resumed run can tell the corpus changed) and
counts the tokens (to build a vocabulary). ``encode_cached`` then encodes it, chunk by chunk, into
a flat file of ids beside the model, named by the corpus hash and the vocabulary, and returns it
as an ``np.memmap``: the next run with the same corpus reuses it, a changed corpus gets a new one,
and memory stays bounded whatever the corpus size. The second reading hashes the bytes again: a
file that changed in between (a log still being written) is a clear error, never a vocabulary
and ids that disagree.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn.checkpoint import atomic_file
from charrnn.tokenizer import Tokenizer, count_tokens, token_boundary

CHUNK_BYTES = 8 << 20  # read and encode 8 MiB at a time
ENCODING_ERRORS = ("strict", "replace", "ignore")


class CorpusError(ValueError):
    """A corpus that cannot be used, with a one-line reason for the user."""


def default_corpus_path() -> Path:
    """The bundled English corpus, installed with the package (or beside it in a checkout)."""
    try:
        from importlib.resources import files

        path = Path(str(files("charrnn.corpora") / "english.txt"))
        if path.is_file():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "corpora" / "english.txt"


@dataclass
class Corpus:
    """What ``scan`` learned of a corpus: its sources, size, hash and token counts."""

    names: list[str]
    sha256: str
    num_bytes: int
    num_chars: int
    counts: dict[str, int] = field(repr=False)
    level: str = "char"
    encoding_errors: str = "strict"
    _stdin: bytes | None = field(default=None, repr=False)

    def describe(self) -> dict:
        """A JSON-able summary for checkpoints."""
        return {
            "names": self.names,
            "sha256": self.sha256,
            "bytes": self.num_bytes,
            "chars": self.num_chars,
        }

    def texts(self) -> Iterator[str]:
        """The text again, as decoded chunks (see ``iter_texts``); CorpusError at the end if the
        bytes differ from what ``scan`` read (a file changed in between)."""
        digest = hashlib.sha256()
        yield from iter_texts(self.names, self.encoding_errors, self._stdin, self.level, on_bytes=digest.update)
        if digest.hexdigest() != self.sha256:
            where = "standard input" if self.names == ["-"] else ", ".join(self.names)
            raise CorpusError(f"the corpus changed while it was being read: {where}; train again once it is complete")


def _open(name: str, stdin_bytes: bytes | None):
    if name == "-":
        return io.BytesIO(stdin_bytes or b"")
    path = Path(name)
    if not path.exists():
        raise CorpusError(f"corpus not found: {name}")
    if path.is_dir():
        raise CorpusError(f"corpus is a directory, not a file: {name}")
    try:
        return open(path, "rb")
    except PermissionError:
        raise CorpusError(f"corpus is not readable (permission denied): {name}") from None
    except OSError as e:
        raise CorpusError(f"cannot read corpus {name}: {e.strerror or e}") from None


def iter_texts(
    names: list[str],
    encoding_errors: str = "strict",
    stdin_bytes: bytes | None = None,
    level: str = "char",
    chunk_bytes: int = CHUNK_BYTES,
    on_bytes: Callable[[bytes], object] | None = None,
) -> Iterator[str]:
    """Decode the sources in order, ``chunk_bytes`` at a time, yielding text pieces.

    UTF-8 errors raise CorpusError naming the file and the byte offset (unless
    ``encoding_errors`` is "replace" or "ignore"); a NUL byte marks a binary file. For word
    level, pieces are cut at a token boundary (``charrnn.tokenizer.token_boundary``: before the
    whitespace that ends a word, or at an ideograph), so that the pieces split into the same
    tokens as the whole text.
    ``on_bytes`` (a hash's ``update``) sees every raw chunk, so one reading both decodes and
    hashes.
    """
    if encoding_errors not in ENCODING_ERRORS:
        raise CorpusError(f"encoding errors must be one of {', '.join(ENCODING_ERRORS)}")
    carry = ""
    for name in names:
        decoder = codecs.getincrementaldecoder("utf-8")(errors=encoding_errors)
        offset = 0
        with _open(name, stdin_bytes) as f:
            while True:
                try:
                    raw = f.read(chunk_bytes)
                except OSError as e:
                    raise CorpusError(f"cannot read corpus {name}: {e.strerror or e}") from None
                if on_bytes is not None:
                    on_bytes(raw)
                nul = raw.find(b"\0")
                if nul >= 0:
                    raise CorpusError(
                        f"{name} looks like a binary file (NUL byte at byte offset {offset + nul}), not text"
                    )
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:
                    where = offset - len(decoder.getstate()[0]) + e.start
                    raise CorpusError(
                        f"{name} is not valid UTF-8 (byte offset {max(where, 0)}); "
                        "use --encoding-errors replace to go on anyway"
                    ) from None
                offset += len(raw)
                if level == "word" and text:
                    text, carry = _cut_at_token_boundary(carry + text, final=not raw)
                if text:
                    yield text
                if not raw:
                    break
    if carry:
        yield carry


def _cut_at_token_boundary(text: str, final: bool) -> tuple[str, str]:
    """(the piece to yield now, the rest to carry into the next one)."""
    if final:
        return text, ""
    cut = token_boundary(text)
    return text[:cut], text[cut:]


def scan(names: list[str], level: str = "char", encoding_errors: str = "strict", stdin=None) -> Corpus:
    """Read the corpus once: validate, hash and count tokens. ``-`` reads standard input."""
    if not names:
        raise CorpusError("no corpus given")
    stdin_bytes = None
    if "-" in names:
        if names.count("-") > 1:
            raise CorpusError("standard input (-) can be read only once")
        stdin_bytes = (stdin or sys.stdin.buffer).read()
    digest, num_bytes = hashlib.sha256(), 0

    def hash_bytes(raw: bytes) -> None:
        nonlocal num_bytes
        digest.update(raw)
        num_bytes += len(raw)

    # one reading validates, hashes and counts: whatever the file does meanwhile, all three agree
    counting = _Counting(iter_texts(names, encoding_errors, stdin_bytes, level, on_bytes=hash_bytes))
    counts = count_tokens(counting, level)
    corpus = Corpus(
        names=list(names),
        sha256=digest.hexdigest(),
        num_bytes=num_bytes,
        num_chars=counting.num_chars,
        counts=counts,
        level=level,
        encoding_errors=encoding_errors,
        _stdin=stdin_bytes,
    )
    where = "standard input" if names == ["-"] else ", ".join(names)
    if corpus.num_chars == 0:
        raise CorpusError(f"corpus is empty: {where}")
    if all(token.isspace() for token in counts):
        raise CorpusError(f"corpus holds only whitespace: {where}")
    return corpus


class _Counting:
    """Pass text pieces through, counting their characters."""

    def __init__(self, texts: Iterator[str]):
        self.texts, self.num_chars = texts, 0

    def __iter__(self):
        for text in self.texts:
            self.num_chars += len(text)
            yield text


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def encode_cached(corpus: Corpus, tokenizer: Tokenizer, cache_dir: Path | None) -> np.ndarray:
    """The ids of the whole corpus as an ``np.memmap``, encoded once and cached in ``cache_dir``.

    The file name holds the corpus hash and a hash of the vocabulary, so a cached file is reused
    only for the same text and the same tokenizer. With ``cache_dir`` None the ids are encoded in
    memory instead.
    """
    dtype = id_dtype(tokenizer.vocab_size)
    if cache_dir is None:
        return np.concatenate([tokenizer.encode(t).astype(dtype) for t in corpus.texts()])
    vocab_hash = hashlib.sha256(json.dumps(tokenizer.to_dict(), ensure_ascii=False).encode()).hexdigest()
    path = Path(cache_dir) / f"ids-{corpus.sha256[:16]}-{vocab_hash[:12]}.{dtype.name}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as f:
            for text in corpus.texts():
                f.write(tokenizer.encode(text).astype(dtype).tobytes())
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
