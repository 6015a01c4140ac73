"""Text <-> token ids, at the level of Unicode code points (``level="char"``) or words.

Id 0 is always the reserved *unknown* token: every character (or word) the vocabulary does not
hold encodes to it, and it decodes to ``UNKNOWN`` (U+FFFD, the Unicode replacement character).
The other ids follow the tokens sorted by code point, so the same corpus always gives the same
ids, in any process, whatever the order in which its characters were first seen.

Character level works on code points, never bytes: ``"我喜欢学习数学"`` is 7 tokens. Encoding is
vectorized: the text is turned into an array of code points once (via UTF-32) and mapped through a
dense lookup table, so no Python loop ever runs over characters.

Word level splits text into runs of letters/digits (a word), single CJK ideographs, and single
other characters (whitespace, punctuation), so ``decode(encode(text)) == text`` whenever every
token of ``text`` is in the vocabulary.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import numpy as np

UNKNOWN = "\ufffd"
LEVELS = ("char", "word")

# CJK ideographs (unified, extension A-F, compatibility): each one is a word of its own.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_WORD_RE = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+|.", re.DOTALL)


def code_points(text: str) -> np.ndarray:
    """The code points of ``text`` as a uint32 array (N,), without a Python loop."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def split_words(text: str) -> list[str]:
    """Split ``text`` into word-level tokens; ``"".join(split_words(t)) == t`` for any ``t``."""
    return _WORD_RE.findall(text)


class Tokenizer:
    """A vocabulary of tokens and the maps between text and ids.

    ``tokens[i]`` is the text of id ``i``; ``tokens[0]`` is ``UNKNOWN``.
    """

    def __init__(self, tokens: Iterable[str], level: str = "char"):
        if level not in LEVELS:
            raise ValueError(f"unknown tokenizer level {level!r}; choose one of {', '.join(LEVELS)}")
        rest = sorted(set(tokens) - {UNKNOWN})
        if level == "char" and any(len(t) != 1 for t in rest):
            raise ValueError("a character-level vocabulary holds single characters only")
        self.level = level
        self.tokens: list[str] = [UNKNOWN, *rest]
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self._table = self._lookup_table() if level == "char" else None

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        texts: str | Iterable[str],
        level: str = "char",
        min_count: int = 1,
        max_vocab: int | None = None,
    ) -> Tokenizer:
        """Build a vocabulary from a text, or from an iterable of text chunks (for big corpora).

        Tokens seen fewer than ``min_count`` times are left out (they encode to the unknown id);
        ``max_vocab`` caps the vocabulary size (unknown included), keeping the most frequent
        tokens, ties broken by code point.
        """
        if isinstance(texts, str):
            texts = [texts]
        counts = count_tokens(texts, level)
        return cls.from_counts(counts, level, min_count, max_vocab)

    @classmethod
    def from_counts(
        cls,
        counts: dict[str, int],
        level: str = "char",
        min_count: int = 1,
        max_vocab: int | None = None,
    ) -> Tokenizer:
        """Build a vocabulary from token counts (see ``fit``)."""
        if min_count < 1:
            raise ValueError("min_count must be at least 1")
        if max_vocab is not None and max_vocab < 2:
            raise ValueError("max_vocab must be at least 2 (the unknown token and one more)")
        kept = sorted((t for t, n in counts.items() if n >= min_count and t != UNKNOWN))
        if max_vocab is not None and len(kept) > max_vocab - 1:
            kept = sorted(kept, key=lambda t: -counts[t])[: max_vocab - 1]  # stable: ties by code point
        return cls(kept, level)

    # -- encoding -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        """K, the number of ids (the unknown token included)."""
        return len(self.tokens)

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text`` as an int32 array (N,); unknown tokens give id 0."""
        if self.level == "char":
            cps = code_points(text)
            table = self._table
            return table[np.minimum(cps, len(table) - 1)]  # the last slot of the table is 0
        index = self._index
        return np.fromiter((index.get(w, 0) for w in split_words(text)), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids (unknown ids become U+FFFD)."""
        tokens = self.tokens
        return "".join(tokens[i] for i in np.asarray(ids, dtype=np.int64).ravel())

    def id_of(self, token: str) -> int:
        """The id of one token (0 if it is not in the vocabulary)."""
        return self._index.get(token, 0)

    def unknown_tokens(self, text: str) -> list[str]:
        """The distinct tokens of ``text`` that the vocabulary does not hold, in order of first use."""
        pieces = text if self.level == "char" else split_words(text)
        return list(dict.fromkeys(p for p in pieces if p not in self._index))

    def _lookup_table(self) -> np.ndarray:
        """A dense map code point -> id, one slot past the largest known code point (id 0)."""
        cps = np.array([ord(t) for t in self.tokens[1:]], dtype=np.int64)
        size = int(cps.max()) + 2 if len(cps) else 1
        table = np.zeros(size, dtype=np.int32)
        table[cps] = np.arange(1, len(cps) + 1, dtype=np.int32)
        return table

    # -- serialization --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-able description from which ``from_dict`` rebuilds the same tokenizer."""
        return {"level": self.level, "unknown": UNKNOWN, "tokens": self.tokens[1:]}

    @classmethod
    def from_dict(cls, d: dict) -> Tokenizer:
        """Rebuild a tokenizer saved with ``to_dict``; raises ValueError on a malformed dict."""
        if not isinstance(d, dict) or not isinstance(d.get("tokens"), list):
            raise ValueError("tokenizer description must be a dict with a list of tokens")
        if not all(isinstance(t, str) and t for t in d["tokens"]):
            raise ValueError("tokenizer tokens must be non-empty strings")
        if len(set(d["tokens"])) != len(d["tokens"]):
            raise ValueError("tokenizer tokens must be distinct")
        tok = cls(d["tokens"], d.get("level", "char"))
        if tok.tokens[1:] != d["tokens"]:
            raise ValueError("tokenizer tokens are not in canonical (sorted) order")
        return tok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and (self.level, self.tokens) == (other.level, other.tokens)

    def __repr__(self) -> str:
        return f"Tokenizer(level={self.level!r}, vocab_size={self.vocab_size})"


def count_tokens(texts: Iterable[str], level: str = "char") -> dict[str, int]:
    """Count tokens over text chunks; character counts use ``np.bincount``, not a Python loop.

    For word level, chunks should be cut at whitespace, or a word may be counted in two halves.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown tokenizer level {level!r}; choose one of {', '.join(LEVELS)}")
    if level == "word":
        words: Counter[str] = Counter()
        for text in texts:
            words.update(split_words(text))
        return dict(words)
    total = np.zeros(0, dtype=np.int64)
    for text in texts:
        n = np.bincount(code_points(text))
        if len(n) > len(total):
            n[: len(total)] += total
            total = n
        else:
            total[: len(n)] += n
    (present,) = np.nonzero(total)
    return {chr(cp): int(total[cp]) for cp in present}
