"""Scoring lines one by one: the bits each line costs, for ranking, rescoring and spotting odd lines.

What is scored, exactly. A line is its characters and its line ending, as read (the last line of
a text may have none). Each of its tokens is predicted from what precedes it:

* **on its own** (the default), a line starts from the zero state reading ``start_token`` (the
  token the sampler reads before an empty prompt: a newline if the vocabulary has one), as if
  it began a text right after a line break; so every token of the line is scored, the first one
  included, and no line depends on another;
* **in context** (``context=True``), the state is carried from line to line: the first line
  starts as above, and every later line is predicted from all the lines before it. The lines
  then form one text, and the sum of their bits equals what ``charrnn.evaluate.evaluate`` finds
  on ``start_token + text`` with ``num_streams=1`` (its total nats / ln 2), to float tolerance.

bits = -sum log2 p(token); tokens = the number of tokens scored (the line ending counts);
bits_per_char = bits / tokens (0 for a line of no tokens, which only an empty last line
without an ending can be). Tokens the vocabulary lacks are scored as the unknown id 0, like in
``evaluate``, and counted in ``unknown_tokens``. For a word-level model, "char" means a token.

How it is fast. Lines are scored a block at a time (``LineScorer.score``). On their own, the
block's lines are sorted by length and cut into batches of similar lengths (at most
``MAX_STREAMS`` lines, the longest at most about twice the shortest), each batch one (B, T)
forward pass with the shorter lines padded at the end and the padding masked out: the network
is causal, so padding after a line cannot change its scores. Results come back in input order.
In context each line needs the state the previous one left, so the block is one stream read in
chunks, as ``evaluate`` reads one stream: exact, but the recurrence runs one token at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from charrnn.sampling import start_token

MAX_STREAMS = 256  # lines scored side by side in one forward pass (B)
MAX_FLOATS = 1 << 21  # bound on the B x T x K log-probabilities held at once (8 MiB in float32)
STREAM_CHUNK = 4096  # tokens per forward pass in context (one stream): bounds memory at that x K
BLOCK_LINES = 4096  # lines per block in ``score_lines``


@dataclass(frozen=True)
class LineScore:
    """One line's score (see the module docstring); ``line`` is the line as given."""

    line: str
    bits: float
    tokens: int
    unknown_tokens: int

    @property
    def bits_per_char(self) -> float:
        return self.bits / self.tokens if self.tokens else 0.0


def _target_log_probs(model, inputs: np.ndarray, targets: np.ndarray, s0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ln p(target) at every position: inputs, targets (B, T) ints, s0 (B, S) -> (B, T) float64, s_T (B, S).

    The one place that asks the model for probabilities: the head's own target log-probabilities
    (``Model.target_log_probs``), which never write the whole (B, T, K) log-softmax and, with the
    class-factored head, never compute the logits of the other classes.
    """
    return model.target_log_probs(inputs, targets, s0)


def _encode_lines(tokenizer, lines: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ids of all lines, one after another (N,) int64, and each line's token count (L,)."""
    if tokenizer.level == "char":  # one encoding of the whole block; a line's tokens are its code points
        lengths = np.fromiter((len(line) for line in lines), dtype=np.int64, count=len(lines))
        ids = np.asarray(tokenizer.encode("".join(lines)), dtype=np.int64)
        if len(ids) == lengths.sum():
            return ids, lengths
    pieces = [np.asarray(tokenizer.encode(line), dtype=np.int64) for line in lines]
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    return (np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)), lengths


def length_batches(sorted_lengths: np.ndarray, max_streams: int = MAX_STREAMS) -> list[slice]:
    """Cut lengths sorted in ascending order into runs of at most ``max_streams``, each run's
    longest at most max(2 x, 16 +) its shortest, so that padding stays a small share."""
    batches, i, n = [], 0, len(sorted_lengths)
    while i < n:
        shortest = int(sorted_lengths[i])
        end = int(np.searchsorted(sorted_lengths, max(2 * shortest, shortest + 16), side="right"))
        j = min(i + max_streams, end)
        batches.append(slice(i, j))
        i = j
    return batches


class LineScorer:
    """Scores blocks of lines with ``model`` (see the module docstring); ``score`` is the entry.

    In context the state (and the last token read) carries from one ``score`` call to the next,
    so a text may be given a block at a time.
    """

    def __init__(self, model, tokenizer, *, context: bool = False, max_streams: int = MAX_STREAMS, max_floats: int = MAX_FLOATS):
        K = getattr(model, "vocab_size", None)
        if K is not None and tokenizer.vocab_size != K:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model predicts {K}")
        if tokenizer.vocab_size < 2:
            raise ValueError("the vocabulary holds no token besides the unknown one")
        if max_streams < 1 or max_floats < 1:
            raise ValueError("max_streams and max_floats must be at least 1")
        self.model, self.tokenizer, self.context = model, tokenizer, bool(context)
        self.max_streams, self.max_floats = int(max_streams), int(max_floats)
        self.vocab_size = tokenizer.vocab_size
        self.start = start_token(tokenizer)
        self._state = model.zero_state(1)  # in context: the state after the lines so far (1, S)
        self._last = self.start  # ... and the last token read

    def score(self, lines: Sequence[str]) -> list[LineScore]:
        """The scores of ``lines`` (each with its line ending, if any), in the same order."""
        lines = list(lines)
        if not lines:
            return []
        ids, lengths = _encode_lines(self.tokenizer, lines)
        nats = self._nats_in_context(ids) if self.context else self._nats_on_their_own(ids, lengths)
        line_of = np.repeat(np.arange(len(lines)), lengths)  # (N,) the line of each token
        bits = np.bincount(line_of, weights=nats, minlength=len(lines)) / math.log(2)
        unknown = np.bincount(line_of, weights=ids == 0, minlength=len(lines))
        return [
            LineScore(line, float(b), int(n), int(u))
            for line, b, n, u in zip(lines, bits, lengths, unknown)
        ]

    def _nats_on_their_own(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """-ln p of every token (N,) float64, each line from the start, in batches of similar lengths."""
        nats = np.zeros(len(ids), dtype=np.float64)
        starts = np.cumsum(lengths) - lengths  # (L,) where each line's ids begin
        order = np.argsort(lengths, kind="stable")
        order = order[lengths[order] > 0]
        for batch in length_batches(lengths[order], self.max_streams):
            rows = order[batch]  # (B,) lines of this batch
            L = lengths[rows]  # (B,)
            B, T = len(rows), int(L[-1])  # sorted: the last line is the longest
            position = np.arange(T)
            mask = position < L[:, None]  # (B, T) real tokens, padding after
            index = starts[rows, None] + np.minimum(position, L[:, None] - 1)  # (B, T) into ids
            targets = ids[index]  # (B, T); padding repeats a line's last token
            inputs = np.empty_like(targets)
            inputs[:, 0] = self.start
            inputs[:, 1:] = targets[:, :-1]
            logp, _ = self._chunked(inputs, targets, self.model.zero_state(B))  # (B, T)
            nats[index[mask]] = -logp[mask]
        return nats

    def _nats_in_context(self, ids: np.ndarray) -> np.ndarray:
        """-ln p of every token (N,) float64, as one stream continuing the lines before."""
        if len(ids) == 0:
            return np.zeros(0, dtype=np.float64)
        inputs = np.concatenate([[self._last], ids[:-1]])[None, :]  # (1, N)
        logp, self._state = self._chunked(inputs, ids[None, :], self._state, STREAM_CHUNK)
        self._last = int(ids[-1])
        return -logp[0].astype(np.float64)

    def _chunked(self, inputs: np.ndarray, targets: np.ndarray, s: np.ndarray, max_steps: int = 1 << 62):
        """``_target_log_probs`` over (B, T) a few steps at a time (B x steps x K <= max_floats, and
        steps <= max_steps), the state carried: logp (B, T) float64 and the last state (B, S)."""
        B, T = inputs.shape
        steps = max(1, min(max_steps, self.max_floats // (B * self.vocab_size)))
        logp = np.empty((B, T), dtype=np.float64)
        for t0 in range(0, T, steps):
            logp[:, t0 : t0 + steps], s = _target_log_probs(self.model, inputs[:, t0 : t0 + steps], targets[:, t0 : t0 + steps], s)
        return logp, s


def score_lines(
    model, tokenizer, lines: Iterable[str], *, context: bool = False, block_lines: int = BLOCK_LINES
) -> Iterator[LineScore]:
    """Score each of ``lines`` (each with its line ending, if any), yielding results in order.

    The lines are read ``block_lines`` at a time, each block scored in batches (see the module
    docstring); memory stays bounded whatever the number of lines.
    """
    if block_lines < 1:
        raise ValueError("block_lines must be at least 1")
    scorer = LineScorer(model, tokenizer, context=context)
    block: list[str] = []
    for line in lines:
        block.append(line)
        if len(block) >= block_lines:
            yield from scorer.score(block)
            block = []
    yield from scorer.score(block)


def split_lines(text: str) -> list[str]:
    """``text`` cut after each newline, the newlines kept: ``"".join(split_lines(t)) == t``.

    Only "\\n" ends a line (a "\\r" before it is part of the line, a lone "\\r" is a character).
    """
    lines = text.split("\n")
    last = lines.pop()
    return [line + "\n" for line in lines] + ([last] if last else [])
