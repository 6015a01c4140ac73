"""The output layer: from the top hidden state s_t to the next-token distribution p_t.

Every network here ends in one of these heads. Its parameters come last in the model's flat
``theta``; the head works on that tail (``flat``) and on the matching tail of a gradient vector
(``gflat``). The hidden rows come with a column of ones, ``S1 = [s, 1]`` (N, H+1), so that each
bias rides inside its matrix product: ``[s, 1] [V; c] = s V + c``.

``full`` -- one softmax over all K tokens:

    o = s V + c,   p = softmax(o)                              V (H, K), c (K,)

``classes`` -- the tokens are cut into C classes and the distribution factored exactly
(Mikolov's class-based output layer; p still sums to one over all K tokens):

    q = s Q + d                 class logits                   Q (H, C), d (C,)
    o = s V + c                 token logits, used within one class only
    p(y | s) = softmax(q)[k(y)] * softmax(o[members(k(y))])[y]

A training row then costs H (C + |class of its target|) multiply-adds instead of H K. V's
columns are kept in class order (column j is token ``order[j]``), so each class is a contiguous
block of columns ``V[:, start[k]:start[k+1]]``. With C = 1 the head computes exactly ``full``.

Backward, with N rows of which the loss is a mean over ``total``:

    full:     do = (p - onehot(y)) / total,   [dV; dc] = S1^T do,   ds = do V^T
    classes:  dq = (softmax(q) - onehot(k(y))) / total,   [dQ; dd] = S1^T dq,   ds = dq Q^T
              and for each class k, over the rows r whose target is in k:
              do_r = (softmax(o_r[members(k)]) - onehot(y_r)) / total
              [dV; dc][:, members(k)] += S1_r^T do_r,   ds_r += do_r V[:, members(k)]^T
"""

from __future__ import annotations

import math

import numpy as np

OUTPUTS = ("full", "classes")


# -- numerics shared by every head -------------------------------------------------------------

# Row-wise passes over a large (N, K) array go block by block, each block a few MiB, so that the
# passes after the first find it in cache (1.3x on the softmax of 2048 x 4000 floats).
BLOCK_BYTES = 4 << 20
BLOCK_ABOVE_BYTES = 16 << 20


def row_blocks(o: np.ndarray) -> list[slice]:
    """Slices of the rows of a 2-D ``o``: all of them, or blocks of about BLOCK_BYTES if o is large."""
    if o.nbytes <= BLOCK_ABOVE_BYTES or o.ndim != 2:
        return [slice(None)]
    rows = max(1, BLOCK_BYTES // max(1, o.shape[1] * o.itemsize))
    return [slice(i, i + rows) for i in range(0, len(o), rows)]


def softmax_(o: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, computed in place in ``o``; returns ``o``."""
    for rows in row_blocks(o):
        block = o[rows]
        block -= block.max(axis=-1, keepdims=True)
        np.exp(block, out=block)
        block /= block.sum(axis=-1, keepdims=True)
    return o


def log_softmax_(o: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, in place in ``o``; returns ``o``.

    ``o - max - log(sum(exp(o - max)))``: exact for probabilities that would underflow, and one
    ``log`` per row instead of one per entry.
    """
    o -= o.max(axis=-1, keepdims=True)
    z = np.exp(o).sum(axis=-1, keepdims=True)
    o -= np.log(z)
    return o


def log_softmax(o: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (a new array, same shape)."""
    return log_softmax_(np.array(o, copy=True))


def softmax_cross_entropy_(o: np.ndarray, y: np.ndarray, total: int | None = None) -> tuple[float, np.ndarray]:
    """Softmax and the cross-entropy gradient in one go, in place in the logits o.

    o: (N, K) logits (overwritten by do = (softmax(o) - onehot(y)) / total), y: (N,) ints,
    ``total`` the number of rows the loss is a mean over (default N; more when o holds one group
    of a batch's rows). Returns sum(-log p[y]) / total, from the logits (``log sum exp - o_y``,
    exact even where p[y] underflows), and do.
    """
    total = len(y) if total is None else total
    loss = 0.0
    for rows in row_blocks(o):
        block, y_block = o[rows], y[rows]
        hit = (np.arange(len(y_block)), y_block)
        block -= block.max(axis=-1, keepdims=True)
        o_y = block[hit].astype(np.float64)  # shifted logit of each target
        np.exp(block, out=block)
        z = block.sum(axis=-1, keepdims=True)  # (rows, 1)
        loss += float((np.log(z[:, 0].astype(np.float64)) - o_y).sum())
        z *= total
        block /= z  # p / total
        block[hit] -= 1.0 / total
    return loss / total, o


def target_log_softmax(o: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log softmax(o)[y] per row, float64 (N,), without writing the whole log-softmax; o is kept."""
    m = o.max(axis=-1, keepdims=True)
    z = np.exp(o - m).sum(axis=-1, dtype=np.float64)
    return o[np.arange(len(y)), y].astype(np.float64) - m[:, 0] - np.log(z)


# -- the heads ---------------------------------------------------------------------------------


def _initialize_block(block: np.ndarray, rng: np.random.Generator) -> None:
    """A weight-and-bias block [M; m] (H+1, n): M uniform in +-1/sqrt(H), m zero."""
    H = len(block) - 1
    block[:H] = rng.uniform(-1.0, 1.0, block[:H].shape) / np.sqrt(H)
    block[H] = 0.0


class FullHead:
    """``o = s V + c``, ``p = softmax(o)`` over all K tokens (see the module docstring)."""

    kind = "full"

    def __init__(self, vocab_size: int, hidden_size: int):
        self.vocab_size, self.hidden_size = int(vocab_size), int(hidden_size)
        K, H = self.vocab_size, self.hidden_size
        self.shapes = {"V": (H, K), "c": (K,)}
        self.widths = [K]  # the blocks of the logits, for direct connections (charrnn.direct)
        self.direct = None  # a charrnn.direct.Direct, when the model has n-gram direct connections

    @property
    def num_params(self) -> int:
        return (self.hidden_size + 1) * self.vocab_size

    def config(self) -> dict:
        return {}

    def initialize(self, flat: np.ndarray, rng: np.random.Generator) -> None:
        """V uniform in +-1/sqrt(H) (the softmax starts near uniform), c zero."""
        _initialize_block(self._Vc(flat), rng)

    def _Vc(self, flat: np.ndarray) -> np.ndarray:
        n = (self.hidden_size + 1) * self.vocab_size
        return flat[:n].reshape(self.hidden_size + 1, self.vocab_size)  # [V; c]

    def _direct(self, j: int, g: np.ndarray | None) -> np.ndarray | None:
        """The direct connections' logits of block j for n-gram hashes g (N, order), or None."""
        return None if self.direct is None or g is None else self.direct.logits(j, g)

    def logits(self, flat: np.ndarray, S1: np.ndarray, out: np.ndarray | None = None, g=None) -> np.ndarray:
        """o = [s, 1] [V; c] (+ direct connections of hashes g): S1 (N, H+1) -> (N, K)."""
        o = np.matmul(S1, self._Vc(flat), out=out)
        direct = self._direct(0, g)
        if direct is not None:
            o += direct
        return o

    def probs(self, flat: np.ndarray, S1: np.ndarray, g=None) -> np.ndarray:
        """p (N, K) for rows S1 (N, H+1) (and n-gram hashes g (N, order) with direct connections)."""
        return softmax_(self.logits(flat, S1, g=g))

    def log_probs(self, flat: np.ndarray, S1: np.ndarray, g=None) -> np.ndarray:
        """log p (N, K) for rows S1 (N, H+1)."""
        return log_softmax_(self.logits(flat, S1, g=g))

    def step_probs(self, flat: np.ndarray, s1: np.ndarray, g=None) -> np.ndarray:
        """p (B, K) for a few rows s1 (B, H+1): one sampling step."""
        o = self.logits(flat, s1, g=g)
        if len(o) == 1:  # one stream (sampling): whole-array reductions are cheaper than per-row ones
            o -= o.max()
            np.exp(o, out=o)
            o /= o.sum()
            return o
        return softmax_(o)

    def target_log_probs(self, flat: np.ndarray, S1: np.ndarray, y: np.ndarray, g=None) -> np.ndarray:
        """log p[y] (N,), float64, for rows S1 (N, H+1) and targets y (N,)."""
        return target_log_softmax(self.logits(flat, S1, g=g), y)

    def loss_and_grad(self, flat, S1, y, total, gflat, work=None, g=None, sink=None) -> tuple[float, np.ndarray]:
        """sum(-log p[y]) / total, with the head's gradient written into ``gflat`` (every entry)
        and dE/ds (N, H) returned. S1 (N, H+1), y (N,). ``work(name, shape)`` gives scratch.
        With direct connections, g (N, order) are the n-gram hashes and the tables' sparse
        gradient is appended to the list ``sink``."""
        o = self.logits(flat, S1, None if work is None else work("o", (len(S1), self.vocab_size)), g=g)
        loss, do = softmax_cross_entropy_(o, y, total)
        if self.direct is not None and g is not None:
            self.direct.add_grad(sink, 0, g, do, total)
        return loss, self.backward_logits(flat, S1, do, gflat, work)

    def backward_logits(self, flat, S1, do, gflat, work=None) -> np.ndarray:
        """From do = dE/do (N, K): [dV; dc] = S1^T do into ``gflat``; returns ds = do V^T (N, H)."""
        H = self.hidden_size
        np.matmul(S1.T, do, out=self._Vc(gflat))
        out = None if work is None else work("ds", (len(do), H))
        return np.matmul(do, self._Vc(flat)[:H].T, out=out)


class ClassHead(FullHead):
    """The class-factored softmax (see the module docstring).

    ``class_of`` (K,) gives each token's class in [0, C); classes must be non-empty. ``order``
    (K,) lists the tokens class by class, ``start`` (C+1,) where each class begins in it, and
    ``where`` (K,) the column of V of each token (the inverse of ``order``).
    """

    kind = "classes"

    def __init__(self, vocab_size: int, hidden_size: int, class_of):
        super().__init__(vocab_size, hidden_size)
        class_of = np.asarray(class_of, dtype=np.int64)
        K, H = self.vocab_size, self.hidden_size
        if class_of.shape != (K,) or K == 0 or class_of.min() < 0:
            raise ValueError(f"class_of must assign a class in [0, C) to each of the {K} tokens")
        C = int(class_of.max()) + 1
        sizes = np.bincount(class_of, minlength=C)
        if (sizes == 0).any():
            raise ValueError("every class must hold at least one token")
        self.num_classes = C
        self.class_of = class_of
        self.order = np.argsort(class_of, kind="stable")  # (K,) tokens, class by class
        self.where = np.empty(K, dtype=np.int64)
        self.where[self.order] = np.arange(K)  # column of V of each token
        self.start = np.concatenate([[0], np.cumsum(sizes)])  # (C+1,)
        self.shapes = {"V": (H, K), "c": (K,), "Q": (H, C), "d": (C,)}
        self.widths = [C, *sizes.tolist()]  # direct-connection blocks: class logits, then each class

    @property
    def num_params(self) -> int:
        return (self.hidden_size + 1) * (self.vocab_size + self.num_classes)

    def config(self) -> dict:
        return {"class_of": self.class_of.tolist()}

    def initialize(self, flat: np.ndarray, rng: np.random.Generator) -> None:
        """V and Q uniform in +-1/sqrt(H), c and d zero."""
        super().initialize(flat, rng)
        _initialize_block(self._Qd(flat), rng)

    def _Qd(self, flat: np.ndarray) -> np.ndarray:
        n = (self.hidden_size + 1) * self.vocab_size
        return flat[n : self.num_params].reshape(self.hidden_size + 1, self.num_classes)  # [Q; d]

    def _groups(self, y: np.ndarray):
        """The rows of each class's targets: yields (k, rows) for every class that has some."""
        k = self.class_of[y]
        by_class = np.argsort(k, kind="stable")
        bounds = np.searchsorted(k[by_class], np.arange(self.num_classes + 1))
        for cls in np.flatnonzero(np.diff(bounds)):
            yield int(cls), by_class[bounds[cls] : bounds[cls + 1]]

    def _class_logits(self, flat: np.ndarray, S1: np.ndarray, g=None) -> np.ndarray:
        """q = [s, 1] [Q; d] (+ direct connections): (N, C)."""
        q = np.matmul(S1, self._Qd(flat))
        direct = self._direct(0, g)
        if direct is not None:
            q += direct
        return q

    def _token_logits(self, flat: np.ndarray, S1: np.ndarray, k: int, g=None) -> np.ndarray:
        """The logits of class k's tokens (+ direct connections): (N, size_k), class order."""
        o = S1 @ self._Vc(flat)[:, self.start[k] : self.start[k + 1]]
        direct = self._direct(1 + k, g)
        if direct is not None:
            o += direct
        return o

    def log_probs(self, flat: np.ndarray, S1: np.ndarray, g=None) -> np.ndarray:
        """log p (N, K), token-id order: log softmax(q)[k] + log softmax(o within k)."""
        logq = log_softmax_(self._class_logits(flat, S1, g))  # (N, C)
        o = np.empty((len(S1), self.vocab_size), dtype=S1.dtype)  # class order
        for k in range(self.num_classes):
            o[:, self.start[k] : self.start[k + 1]] = log_softmax_(self._token_logits(flat, S1, k, g)) + logq[:, k : k + 1]
        return o[:, self.where]

    def probs(self, flat: np.ndarray, S1: np.ndarray, g=None) -> np.ndarray:
        """p (N, K), token-id order."""
        return np.exp(self.log_probs(flat, S1, g))

    step_probs = probs

    def target_log_probs(self, flat: np.ndarray, S1: np.ndarray, y: np.ndarray, g=None) -> np.ndarray:
        """log p[y] (N,), float64, at H (C + class size) per row."""
        out = target_log_softmax(self._class_logits(flat, S1, g), self.class_of[y])
        for cls, rows in self._groups(y):
            o = self._token_logits(flat, S1[rows], cls, None if g is None else g[rows])
            out[rows] += target_log_softmax(o, self.where[y[rows]] - self.start[cls])
        return out

    def loss_and_grad(self, flat, S1, y, total, gflat, work=None, g=None, sink=None) -> tuple[float, np.ndarray]:
        """As ``FullHead.loss_and_grad``, at H (C + class size) per row instead of H K."""
        H = self.hidden_size
        Vc, Qd, gVc, gQd = self._Vc(flat), self._Qd(flat), self._Vc(gflat), self._Qd(gflat)
        direct = self.direct if g is not None else None
        q = self._class_logits(flat, S1, g)  # (N, C) class logits
        loss, dq = softmax_cross_entropy_(q, self.class_of[y], total)
        if direct is not None:
            direct.add_grad(sink, 0, g, dq, total)
        np.matmul(S1.T, dq, out=gQd)  # [dQ; dd] = S1^T dq
        ds = np.matmul(dq, Qd[:H].T, out=None if work is None else work("ds", (len(S1), H)))  # dq Q^T
        gVc[...] = 0.0
        for cls, rows in self._groups(y):
            a, b = self.start[cls], self.start[cls + 1]
            S_r, g_r = S1[rows], None if g is None else g[rows]  # (n, H+1), (n, order)
            loss_k, do = softmax_cross_entropy_(self._token_logits(flat, S_r, cls, g_r), self.where[y[rows]] - a, total)
            if direct is not None:
                direct.add_grad(sink, 1 + cls, g_r, do, total)
            loss += loss_k
            gVc[:, a:b] = S_r.T @ do  # [dV; dc] of the class's columns
            ds[rows] += do @ Vc[:H, a:b].T
        return loss, ds

    def backward_logits(self, flat, S1, do, gflat, work=None):
        raise TypeError("the class-factored head has no full logits to take a gradient from")

    def class_probs(self, flat: np.ndarray, s1: np.ndarray, g=None) -> np.ndarray:
        """softmax(q) (B, C), float64, for a few rows s1 (B, H+1) (and n-gram hashes g (B, N)
        with direct connections): the first factor, at H C per row."""
        return softmax_(self._class_logits(flat, s1, g).astype(np.float64))  # (B, C)

    def member_probs(self, flat: np.ndarray, s1: np.ndarray, k: int, g=None) -> np.ndarray:
        """softmax(o within class k) (B, size of k), float64, for rows s1 (B, H+1): the second
        factor, at H |k| per row. Column j is token ``order[start[k] + j]``."""
        return softmax_(self._token_logits(flat, s1, k, g).astype(np.float64))  # (B, |k|)


def frequency_classes(counts, num_classes: int) -> np.ndarray:
    """Mikolov's frequency binning: class_of (K,) for token counts (K,).

    Tokens sorted by count (most frequent first) are cut into ``num_classes`` runs of about
    equal probability mass, so frequent tokens sit in small classes and rare ones in large
    classes; every class gets at least one token. Tokens never seen go to the last class.
    """
    counts = np.asarray(counts, dtype=np.float64)
    K = len(counts)
    C = max(1, min(int(num_classes), K))
    by_count = np.argsort(-counts, kind="stable")
    mass = counts[by_count]
    total = mass.sum()
    cum = (np.cumsum(mass) - mass) / total if total > 0 else np.arange(K) / K  # mass before each
    cls = np.minimum((cum * C).astype(np.int64), C - 1)
    # Force at least one token per class: class j can start no later than position K - (C - j).
    cls = np.maximum(cls, np.arange(K) - (K - C))
    cls = np.minimum(cls, np.arange(K))
    cls = np.maximum.accumulate(cls)
    # Renumber so that the classes used are 0..C'-1 with no gaps.
    _, cls = np.unique(cls, return_inverse=True)
    class_of = np.empty(K, dtype=np.int64)
    class_of[by_count] = cls
    return class_of


def default_num_classes(vocab_size: int) -> int:
    """C for a vocabulary of K tokens: about sqrt(K)."""
    return max(1, int(round(math.sqrt(vocab_size))))


def make_head(vocab_size: int, hidden_size: int, config: dict | None = None):
    """The head a model config describes: ``output`` "full" (default) or "classes" with ``class_of``."""
    config = config or {}
    kind = config.get("output", "full")
    if kind == "full":
        return FullHead(vocab_size, hidden_size)
    if kind == "classes":
        if "class_of" not in config:
            raise ValueError("a class-factored output needs its class_of assignment")
        return ClassHead(vocab_size, hidden_size, config["class_of"])
    raise ValueError(f"unknown output {kind!r}; choose one of {', '.join(OUTPUTS)}")


# -- choosing the head for a training run -----------------------------------------------------

# ``auto`` picks the class head from this vocabulary size up. Measured with bench_output.py
# (H=256 B=32 T=64, one thread, classes/full training tokens/s, two runs): K=128 0.90x / 0.99x,
# 160 1.11x, 192 1.11x / 1.07x, 256 1.12x / 1.24x, 384 2.67x (see docs/performance.md); below,
# the class head's extra product and per-class loop cost about what the H K it saves.
AUTO_CLASSES_FROM = 192


def resolve_output(output: str, vocab_size: int) -> str:
    """The head a run uses: ``output`` "full" or "classes" as given, "auto" by vocabulary size."""
    if output == "auto":
        return "classes" if vocab_size >= AUTO_CLASSES_FROM else "full"
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; choose one of auto, {', '.join(OUTPUTS)}")
    return output


def output_config(output: str, counts, num_classes: int | None = None) -> dict:
    """The model config's output part for token ``counts`` (K,): {} for the full softmax (what
    older checkpoints hold), else frequency classes (``num_classes``, default about sqrt(K))."""
    counts = np.asarray(counts)
    if resolve_output(output, len(counts)) == "full":
        return {}
    C = default_num_classes(len(counts)) if num_classes is None else num_classes
    return {"output": "classes", "class_of": frequency_classes(counts, C).tolist()}
