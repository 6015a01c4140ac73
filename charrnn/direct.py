"""Hashed n-gram direct connections: a count model's memory inside the network's output layer.

Mikolov's RNNME adds to the logits a weight for every (recent n-gram, next token) pair, read
from a fixed-size hashed table and trained with the network. For position t with input x_t and
the tokens before it, and each order n = 1..N:

    g_n(t) = hash(x_{t-n+1}, ..., x_t)                      the n-gram ending at x_t
    o_t   += sum_n D_j[row_j(g_n(t))]                       for each block j of the logits

The output layer's logits come in *blocks*: the full softmax has one block (all K token logits);
the class-factored head has one block of C class logits and one block per class holding that
class's token logits. Block j has its own table D_j (R_j rows, as wide as the block), so a
context's row of class k is only ever read and trained when the target's class is k. Hash
collisions share a row, as in any hashed model. All tables are views of one flat vector
``table`` (``R_j x width_j`` each, in block order).

The gradient of D_j is a scatter-add: dD_j[row_j(g_n(t))] += do_t^j for every position and
order, the logit gradient of that block. Only the rows a step touched change, so the tables are
trained apart from ``theta`` with a sparse Adagrad: for each touched row r,

    A_j[r] += dD_j[r]^2,     D_j[r] -= lr * dD_j[r] / sqrt(A0 + A_j[r])

with ``accum`` (the A_j) laid out like ``table``, dD the gradient of the loss summed (not
averaged) over the batch's positions, and A0 = ``ACCUM0``. Adagrad suits the counts-like features: rows
seen often take small steps, rows seen once take a large one.

The n-gram needs the N - 1 tokens before each chunk: the model carries them in the last N - 1
columns of its state, as id + 1 (0: no token yet, at the start of a stream), exact in float32.
"""

from __future__ import annotations

import numpy as np

# Odd 64-bit constants (from the golden ratio and splitmix64) for mixing token ids into hashes.
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)
_MIX3 = np.uint64(0x94D049BB133111EB)

DEFAULT_ORDER = 6  # N: orders 1..N
DEFAULT_SIZE_MB = 64  # float32 table; the Adagrad accumulator takes as much again
DEFAULT_LR = 0.1  # Adagrad step for the tables
# The Adagrad sums start from ACCUM0 (per-position gradients are p - onehot(y), in [-1, 1]): a row
# seen once moves by about lr times its gradient, as in SGD, instead of by lr times its sign;
# unlikely tokens' entries barely move on one sighting.
ACCUM0 = 1.0


def ngram_hashes(history: np.ndarray, x: np.ndarray, order: int) -> np.ndarray:
    """g_n(t) for every position and order: history (B, N-1) ids + 1 (0: none), x (T, B) ids ->
    (T*B, N) uint64, time-major rows like the hidden rows, column n-1 for order n."""
    T, B = x.shape
    z = np.concatenate([history.T.astype(np.uint64), x.astype(np.uint64) + np.uint64(1)])  # (N-1+T, B)
    out = np.empty((T, B, order), dtype=np.uint64)
    h = np.full((T, B), np.uint64(order), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for n in range(1, order + 1):
            h = (h + z[order - n : order - n + T]) * _MIX  # fold in the token n-1 steps back
            h ^= h >> np.uint64(29)
            out[:, :, n - 1] = h
    return out.reshape(T * B, order)


def next_history(history: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The last N-1 tokens (as id + 1) after reading x (T, B): history (B, N-1) -> (B, N-1)."""
    keep = history.shape[1]
    if keep == 0:
        return history.copy()
    z = np.concatenate([history, x.T.astype(history.dtype) + 1], axis=1)  # (B, N-1+T)
    return z[:, -keep:].copy()


class Direct:
    """The hashed tables of one model (see the module docstring).

    ``widths`` (J,) the blocks' widths, ``rows`` (J,) their tables' row counts (0: no table for
    that block), ``order`` N. ``table`` and ``accum`` are flat float arrays; ``pending`` holds
    the sparse gradients of the last ``loss_and_flat_grad`` until ``update`` applies them.
    """

    def __init__(self, widths, rows, order: int, dtype=np.float32):
        self.widths = [int(w) for w in widths]
        self.rows = [int(r) for r in rows]
        if len(self.widths) != len(self.rows) or order < 1 or min(self.rows, default=0) < 0:
            raise ValueError("direct connections need an order >= 1 and a row count per block")
        self.order = int(order)
        sizes = [w * r for w, r in zip(self.widths, self.rows)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.table = np.zeros(int(self.offsets[-1]), dtype=dtype)
        self.accum = np.zeros_like(self.table)
        self.pending: list = []

    @property
    def size(self) -> int:
        """Entries in all tables."""
        return int(self.offsets[-1])

    def config(self) -> dict:
        return {"order": self.order, "rows": list(self.rows)}

    def view(self, flat: np.ndarray, j: int) -> np.ndarray:
        """Block j's table as (R_j, width_j), a view of ``flat`` (``table`` or ``accum``)."""
        return flat[self.offsets[j] : self.offsets[j + 1]].reshape(self.rows[j], self.widths[j])

    def row_index(self, j: int, g: np.ndarray) -> np.ndarray:
        """row_j(g): hashes g (..., N) uint64 -> rows of table j, int64 (..., N)."""
        with np.errstate(over="ignore"):
            h = (g ^ np.uint64(j + 1) * _MIX2) * _MIX3
        return ((h >> np.uint64(24)) % np.uint64(self.rows[j])).astype(np.int64)

    def logits(self, j: int, g: np.ndarray) -> np.ndarray | None:
        """sum_n D_j[row_j(g_n)] for hashes g (n, N): (n, width_j), or None if j has no table."""
        if self.rows[j] == 0:
            return None
        D = self.view(self.table, j)
        r = self.row_index(j, g)  # (n, N)
        out = D[r[:, 0]]
        for n in range(1, self.order):
            out += D[r[:, n]]
        return out

    def add_grad(self, sink: list, j: int, g: np.ndarray, do: np.ndarray, total: int) -> None:
        """Record dD_j[row_j(g_n)] += total * do for every row and order: g (n, N), do (n, width_j)
        the gradient of a loss that is a mean over ``total`` positions. The tables are trained on
        the *sum* over positions (each position's p - onehot(y)), so that their step does not
        depend on the batch size or on how the batch is split among processes."""
        if self.rows[j] and len(g):
            sink.append((j, self.row_index(j, g), np.multiply(do, total, dtype=self.table.dtype)))

    def sparse_grad(self, pending: list | None = None) -> dict:
        """The recorded gradients summed by row: {j: (rows (U,) sorted, dD (U, width_j))}.

        ``pending`` (default: ``self.pending``) lists (j, rows (n, k), do (n, width_j)): each of
        the k rows of line i receives do[i]."""
        pending = self.pending if pending is None else pending
        grads = {}
        for j in sorted({p[0] for p in pending}):
            r = np.concatenate([p[1].reshape(-1) for p in pending if p[0] == j])  # (n*N,)
            d = np.concatenate([np.repeat(p[2], p[1].shape[1], axis=0) for p in pending if p[0] == j])
            rows, inverse = np.unique(r, return_inverse=True)
            by_row = np.argsort(inverse, kind="stable")
            starts = np.searchsorted(inverse[by_row], np.arange(len(rows)))
            grads[j] = (rows, np.add.reduceat(d[by_row], starts, axis=0))
        return grads

    def update(self, lr: float, grads: dict | None = None) -> None:
        """Sparse Adagrad on the touched rows (see the module docstring); clears ``pending``."""
        grads = self.sparse_grad() if grads is None else grads
        self.pending = []
        for j, (rows, dD) in grads.items():
            D, A = self.view(self.table, j), self.view(self.accum, j)
            a = A[rows] + dD * dD
            A[rows] = a
            a += ACCUM0
            np.sqrt(a, out=a)
            D[rows] -= lr * dD / a


def plan_rows(widths, size_mb: float, masses=None, positions: int | None = None, order: int = 1) -> list[int]:
    """Row counts R_j for blocks of ``widths`` within ``size_mb`` MB of float32 table.

    One block (the full softmax): all of it. Several (class logits first, then one block per
    class): half to the class logits, half to the classes in proportion to how often each is
    the target (``masses``, counts or shares, default equal); a one-token class needs no table
    (its within-class probability is always 1). With ``positions``, the training split's length,
    no block gets more rows than the text can fill: ``order`` n-grams per position (per position
    whose target is in the class, for a class's block; ``masses`` are then the class counts).
    """
    entries = int(size_mb * (1 << 20) / 4)
    widths = [int(w) for w in widths]
    cap = np.inf if positions is None else max(1, int(positions) * int(order))
    if len(widths) == 1:
        return [int(max(1, min(entries // widths[0], cap)))]
    counts = np.ones(len(widths) - 1) if masses is None else np.asarray(masses, dtype=np.float64)
    shares = counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1.0 / len(counts))
    rows = [int(max(1, min(entries // 2 // widths[0], cap)))]
    for w, share, count in zip(widths[1:], shares, counts):
        fill = np.inf if positions is None or masses is None else max(1.0, count * order)
        rows.append(0 if w == 1 else int(max(1, min(entries / 2 * share / w, fill))))
    return rows
