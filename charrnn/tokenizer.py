"""Text <-> token ids, at the level of Unicode code points (``level="char"``) or words.

Id 0 is always the reserved *unknown* token: every character (or word) the vocabulary does not
hold encodes to it, and it decodes to ``UNKNOWN`` (U+FFFD, the Unicode replacement character).
The other ids follow the tokens sorted by code point, so the same corpus always gives the same
ids, in any process, whatever the order in which its characters were first seen.

Character level works on code points, never bytes: ``"我喜欢学习数学"`` is 7 tokens. Encoding is
vectorized: the text is turned into an array of code points once (via UTF-32) and mapped through a
dense lookup table, so no Python loop ever runs over characters.

Word level (splitting scheme 2, ``split_words``) makes one token of each word *with the space
before it*, as GPT-2's pre-tokenizer does, so that a model predicts words (``" love"``,
``" you"``), not spaces. Its tokens are, tried in this order at each position:

* a contraction: ``'s 't 're 've 'm 'll 'd`` (either apostrophe, any case) not followed by a letter;
* a word: one optional space, then a letter, then letters and combining marks (``" café"``);
* a digit: one optional space and one digit (``" 1999"`` is ``" 1" "9" "9" "9"``: numbers are
  never unknown, and cost no vocabulary);
* a CJK ideograph or a kana, alone and without a space (Chinese and Japanese use no spaces, so
  a run would glue words together; a space before one is a token of its own);
* any other character (punctuation, symbols, emoji code points), with one optional space;
* a line end: a newline with the spaces and tabs before it (``"\\n"``, ``" \\n"``); a blank
  line is a token of its own, so no token spans a line end and a text read line by line splits
  as the whole;
* a run of other whitespace, less its last space when that space belongs to the next token:
  ``"a  b"`` is ``"a" " " " b"``.

Every character belongs to exactly one token, so ``"".join(split_words(text)) == text`` and
``decode(encode(text)) == text`` whenever every token of ``text`` is in the vocabulary. A token
never runs from a non-whitespace character into whitespace, nor into or out of an ideograph:
text cut at such a place splits into the same tokens as the whole (``token_boundary``).

Scheme 1 (word vocabularies saved before scheme 2; their dict has no ``"scheme"``) made every
space and punctuation mark a token of its own; it is kept, so those models still read text as
they were trained to (``split_words_v1``).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from itertools import repeat

import numpy as np

UNKNOWN = "\ufffd"
LEVELS = ("char", "word")

WORD_SCHEME = 2  # the word splitting scheme of new vocabularies (see the module docstring)

# CJK ideographs (unified, extension A-F, compatibility): each one is a word of its own.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# ... and, in scheme 2, each kana (hiragana, katakana, their extensions and half-width forms)
_KANA = "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"
_WORD_RE_V1 = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+|.", re.DOTALL)


def code_points(text: str) -> np.ndarray:
    """The code points of ``text`` as a uint32 array (N,), without a Python loop."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def split_words(text: str) -> list[str]:
    """Split ``text`` into word-level tokens (scheme 2); ``"".join(split_words(t)) == t`` for any ``t``."""
    return _word_re_v2().findall(text)


def split_words_v1(text: str) -> list[str]:
    """Scheme 1: runs of letters/digits, single CJK ideographs, every other character alone."""
    return _WORD_RE_V1.findall(text)


# scheme -> the pattern whose matches, left to right, are the tokens
WORD_PATTERNS: dict[int, Callable[[], re.Pattern]] = {1: lambda: _WORD_RE_V1, 2: lambda: _word_re_v2()}


@cache
def _word_re_v2() -> re.Pattern:
    """The scheme-2 pattern, built on first use (listing the combining marks takes ~10 ms)."""
    ideo = _CJK + _KANA
    letter = rf"[^\W\d_{ideo}]"  # a word character, but no digit, underscore or ideograph
    mark = f"[{_mark_ranges()}]"
    return re.compile(
        rf"['\u2019](?i:s|t|re|ve|m|ll|d)(?!{letter}|{mark})"  # contraction
        rf"| ?{letter}+(?:{mark}+{letter}*)*"  # word, with the space before it (a letter, then letters and marks)
        rf"| ?\d"  # one digit
        rf"|[{ideo}]"  # one ideograph or kana
        rf"| ?[^\s{ideo}]"  # any other character
        rf"|[^\S\n]*\n"  # the end of a line, with the spaces before it: a token never spans a line end
        rf"|[^\S\n]+(?= [^\s{ideo}])|[^\S\n]+",  # other whitespace, leaving a last space to the next token
        re.DOTALL,
    )


def _mark_ranges() -> str:
    """The combining marks (categories Mn, Mc, Me) as character-class ranges.

    Python's ``\\w`` leaves them out, so without them a word would end at every accent of
    decomposed text and at every vowel sign of Hindi. Marks live in planes 0, 1 and 14 only.
    """
    ranges: list[list[int]] = []
    for cp in (*range(0x20000), *range(0xE0000, 0xE1000)):
        if unicodedata.category(chr(cp))[0] == "M":
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
    return "".join(re.escape(chr(a)) + (f"-{re.escape(chr(b))}" if b > a else "") for a, b in ranges)


def token_boundary(text: str) -> int:
    """The last place in ``text`` (0 if none) where a word-level token surely ends, in either scheme.

    That is before a whitespace character that follows a non-whitespace one, or before or after
    a CJK ideograph: the text before it and the text from it split into the same tokens as the
    whole, so a long text can be split in pieces there.
    """
    m = _BOUNDARY_RE.search(text)
    return m.end() if m else 0


_BOUNDARY_RE = re.compile(rf".*(?:\S(?=\s)|[{_CJK}](?=.)|.(?=[{_CJK}]))", re.DOTALL)


class Tokenizer:
    """A vocabulary of tokens and the maps between text and ids.

    ``tokens[i]`` is the text of id ``i``; ``tokens[0]`` is ``UNKNOWN``. ``scheme`` is the word
    splitting scheme (``WORD_PATTERNS``; None at the char level): a word vocabulary keeps the
    scheme it was built with, so a saved model reads text as it was trained to.
    """

    def __init__(self, tokens: Iterable[str], level: str = "char", scheme: int | None = None):
        if level not in LEVELS:
            raise ValueError(f"unknown tokenizer level {level!r}; choose one of {', '.join(LEVELS)}")
        if level == "char" and scheme is not None:
            raise ValueError("a character-level tokenizer has no word splitting scheme")
        if level == "word":
            scheme = WORD_SCHEME if scheme is None else scheme
            if scheme not in WORD_PATTERNS:
                known = " and ".join(str(k) for k in WORD_PATTERNS)
                raise ValueError(
                    f"word splitting scheme {scheme!r} is unknown to this charrnn (it knows {known}): upgrade charrnn"
                )
        self.scheme = scheme
        self._pattern = None if level == "char" else WORD_PATTERNS[scheme]()
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

    def split(self, text: str) -> list[str]:
        """The tokens of ``text`` (known or not), as this tokenizer cuts it; they join to ``text``."""
        return list(text) if self._pattern is None else self._pattern.findall(text)

    def first_token(self, text: str) -> str:
        """The first token of ``text`` ("" if empty), without splitting the rest."""
        if self._pattern is None or not text:
            return text[:1]
        return self._pattern.match(text).group()

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text`` as an int32 array (N,); unknown tokens give id 0."""
        if self.level == "char":
            cps = code_points(text)
            table = self._table
            return table[np.minimum(cps, len(table) - 1)]  # the last slot of the table is 0
        words = self.split(text)
        return np.fromiter(map(self._index.get, words, repeat(0)), dtype=np.int32, count=len(words))

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids (unknown ids become U+FFFD)."""
        tokens = self.tokens
        return "".join(tokens[i] for i in np.asarray(ids, dtype=np.int64).ravel())

    def id_of(self, token: str) -> int:
        """The id of one token (0 if it is not in the vocabulary)."""
        return self._index.get(token, 0)

    def unknown_tokens(self, text: str) -> list[str]:
        """The distinct tokens of ``text`` that the vocabulary does not hold, in order of first use."""
        pieces = text if self.level == "char" else self.split(text)
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
        scheme = {} if self.scheme is None else {"scheme": self.scheme}
        return {"level": self.level, **scheme, "unknown": UNKNOWN, "tokens": self.tokens[1:]}

    @classmethod
    def from_dict(cls, d: dict) -> Tokenizer:
        """Rebuild a tokenizer saved with ``to_dict``; raises ValueError on a malformed dict.

        A word vocabulary without a ``"scheme"`` was saved before schemes existed: scheme 1.
        """
        if not isinstance(d, dict) or not isinstance(d.get("tokens"), list):
            raise ValueError("tokenizer description must be a dict with a list of tokens")
        if not all(isinstance(t, str) and t for t in d["tokens"]):
            raise ValueError("tokenizer tokens must be non-empty strings")
        if len(set(d["tokens"])) != len(d["tokens"]):
            raise ValueError("tokenizer tokens must be distinct")
        level = d.get("level", "char")
        scheme = d.get("scheme", 1 if level == "word" else None)
        if scheme is not None and (not isinstance(scheme, int) or isinstance(scheme, bool)):
            raise ValueError(f"tokenizer scheme must be a whole number, not {scheme!r}")
        tok = cls(d["tokens"], level, scheme)
        if tok.tokens[1:] != d["tokens"]:
            raise ValueError("tokenizer tokens are not in canonical (sorted) order")
        return tok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and (self.level, self.scheme, self.tokens) == (
            other.level, other.scheme, other.tokens
        )

    def __repr__(self) -> str:
        scheme = "" if self.scheme is None else f", scheme={self.scheme}"
        return f"Tokenizer(level={self.level!r}{scheme}, vocab_size={self.vocab_size})"


def count_tokens(texts: Iterable[str], level: str = "char") -> dict[str, int]:
    """Count tokens over text chunks; character counts use ``np.bincount``, not a Python loop.

    Words are split with the newest scheme. For word level, chunks should be cut at a
    ``token_boundary``, or a word may be counted in two halves.
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
