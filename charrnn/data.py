"""Batches for truncated BPTT: an id stream cut into B contiguous streams, read T steps at a time.

The N ids are split into B streams of L = (N - 1) // B consecutive ids each (stream i starts at
id i*L). Chunk k holds, for every stream, the ids [k*T, k*T + T) of that stream as inputs and the
ids one further on as targets. So the hidden state of stream i at the end of chunk k is exactly
the right initial state of stream i for chunk k + 1, as in the classic char-rnn.

Everything reads by fancy indexing, so an ``np.memmap`` of ids works as well as an in-memory
array: only the pages a chunk needs are touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


MIN_TOKENS = 5  # a text shorter than this has nothing to learn from
MIN_VAL_TOKENS = 16  # a held-out part shorter than this says nothing: none is held out instead
FITTED = ("batch_size", "seq_len", "val_fraction")  # the settings ``fit_to_text`` may change


def fit_to_text(
    n_tokens: int, batch_size: int, seq_len: int, val_fraction: float, adjustable=FITTED, unit: str = "tokens"
) -> tuple[int, int, float, str | None]:
    """(B, T, val_fraction, note): the settings shrunk to a text of ``n_tokens`` too short for them.

    Only the settings named in ``adjustable`` change (the others were chosen by the user). When
    the training part (after the validation part) holds fewer than B*T + 1 tokens: the validation
    part is dropped if it would hold fewer than MIN_VAL_TOKENS; then T shrinks to what the
    training part holds (T <= n_train - 1), then B to the streams of T tokens that fit. ``note``
    says in one line what changed (None if nothing did). Raises ValueError for a text shorter than
    MIN_TOKENS, or when a setting that may not change does not fit; the message names it as the
    command line does (``--batch-size``).
    """
    if n_tokens < MIN_TOKENS:
        raise ValueError(
            f"the text has {n_tokens} {unit}, too few to learn from; a text to train on needs at least "
            f"{MIN_TOKENS} {unit}"
        )

    def n_val(fraction: float) -> int:
        return int(round(n_tokens * fraction))

    B, T, vf = batch_size, seq_len, val_fraction
    if n_tokens - n_val(vf) >= B * T + 1:
        return B, T, vf, None
    if "val_fraction" in adjustable and vf > 0 and (n_val(vf) < MIN_VAL_TOKENS or n_tokens - n_val(vf) < MIN_TOKENS):
        vf = 0.0
    n_train = n_tokens - n_val(vf)
    if n_train < MIN_TOKENS:  # only a given --val-fraction can do this
        raise ValueError(
            f"the text has {n_tokens} {unit}; --val-fraction {vf} holds out {n_val(vf)} and leaves {n_train} to "
            f"train on, fewer than {MIN_TOKENS}; give a smaller --val-fraction, or leave it out"
        )
    given = [f"--{name.replace('_', '-')} {value}" for name, value in (("batch_size", B), ("seq_len", T)) if name not in adjustable]
    if "val_fraction" not in adjustable and vf > 0:
        given.append(f"--val-fraction {vf} (holding out {n_val(vf)})")
    if "seq_len" in adjustable:
        T = max(1, min(T, (n_train - 1) // (1 if "batch_size" in adjustable else B)))
    if "batch_size" in adjustable:
        B = max(1, min(B, (n_train - 1) // T))
    if n_train < B * T + 1:
        held = f", after {n_val(vf)} held out for validation" if n_val(vf) and "val_fraction" in adjustable else ""
        named = ", ".join(given[:-1]) + " and " + given[-1] if len(given) > 1 else given[0]
        raise ValueError(
            f"the text has {n_tokens} {unit}, fewer than one batch needs ({B * T + 1} = batch size {B} x sequence "
            f"length {T} + 1{held}) with {named}; give smaller values, or leave them out to have them fitted to "
            "the text"
        )
    changes = [f"{what} {new} instead of {old}" for what, new, old in (("batch size", B, batch_size), ("sequence length", T, seq_len)) if new != old]
    if vf != val_fraction:
        changes.append("no validation part (too short to hold one out)")
    elif n_val(vf):
        changes.append(f"{n_val(vf)} {unit} held out for validation")
    return B, T, vf, f"the text is short ({n_tokens} {unit}): training with {', '.join(changes)}"


def split_train_val(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The first (1 - val_fraction) of the ids for training, the rest for validation (views)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    n_val = int(round(len(ids) * val_fraction))
    n_train = len(ids) - n_val
    return ids[:n_train], ids[n_train:]


class Batches:
    """(inputs, targets) chunks of shape (B, T) over B contiguous streams of an id array.

    ids: (N,) ints (array or memmap). ``num_chunks`` is the number of full chunks in one pass
    (an epoch); ``chunk(k)`` is chunk k, 0 <= k < num_chunks. ``streams`` selects a subset of the
    B streams (a slice or index array), for a data-parallel rank that owns only some of them.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        if batch_size < 1 or seq_len < 1:
            raise ValueError("batch_size and seq_len must be positive")
        self.ids, self.batch_size, self.seq_len = ids, int(batch_size), int(seq_len)
        self.stream_len = (len(ids) - 1) // self.batch_size  # L
        self.num_chunks = self.stream_len // self.seq_len
        if self.num_chunks < 1:
            need = self.batch_size * self.seq_len + 1
            raise ValueError(
                f"the text has {len(ids)} tokens, fewer than one batch needs "
                f"({need} = batch size {batch_size} x sequence length {seq_len} + 1)"
            )
        self._starts = np.arange(self.batch_size, dtype=np.int64) * self.stream_len  # (B,)

    def chunk(self, k: int, streams=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Chunk k: inputs and targets, (B', T) int arrays for the selected streams."""
        if not 0 <= k < self.num_chunks:
            raise IndexError(f"chunk {k} out of range [0, {self.num_chunks})")
        T = self.seq_len
        index = self._starts[streams, None] + (k * T + np.arange(T + 1))  # (B', T+1)
        window = np.asarray(self.ids[index.ravel()], dtype=np.int64).reshape(index.shape)
        return window[:, :-1], window[:, 1:]  # targets are the inputs shifted by one

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for k in range(self.num_chunks):
            yield self.chunk(k)

    def __len__(self) -> int:
        return self.num_chunks


def stream_chunks(ids: np.ndarray, num_streams: int, seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every prediction of ``ids`` exactly once, as (inputs, targets) chunks of (B, <=T).

    For scoring (evaluation): like ``Batches`` but the last chunk may be shorter than T, and
    ``num_streams`` is reduced so that no stream is empty. The (N-1) - B*L predictions that do
    not fit the B equal streams are yielded last, as one extra stream of its own.
    """
    n_pred = len(ids) - 1
    if n_pred < 1:
        return
    B = max(1, min(int(num_streams), n_pred))
    L = n_pred // B
    starts = np.arange(B, dtype=np.int64) * L
    for t0 in range(0, L, seq_len):
        T = min(seq_len, L - t0)
        index = starts[:, None] + (t0 + np.arange(T + 1))
        window = np.asarray(ids[index.ravel()], dtype=np.int64).reshape(index.shape)
        yield window[:, :-1], window[:, 1:]
    tail = B * L
    if tail < n_pred:
        window = np.asarray(ids[tail:], dtype=np.int64)[None, :]
        for t0 in range(0, window.shape[1] - 1, seq_len):
            piece = window[:, t0 : t0 + seq_len + 1]
            yield piece[:, :-1], piece[:, 1:]
