"""The Elman recurrent network, vectorized over B parallel streams, with truncated BPTT.

With row vectors, for each time step t of a chunk of T steps (x_t an int id, U[x_t] a row of U):

    a_t = s_{t-1} W + U[x_t] + b        pre-activation                  (B, H)
    s_t = tanh(a_t)                     hidden state                    (B, H)
    o_t = s_t V + c                     logits                          (B, K)
    p_t = softmax(o_t)                  next-token probabilities        (B, K)
    E   = -(1/(B T)) sum_t sum_B log p_t[y_t]   mean cross-entropy, nats per token

Backward (BPTT), with ds_t the gradient of E reaching s_t from above and from step t+1:

    do_t = (p_t - onehot(y_t)) / (B T)                      (B, K)
    dV   = sum_t s_t^T do_t,      dc = sum_t do_t
    ds_t = do_t V^T + da_{t+1} W^T                          (B, H)
    da_t = ds_t * (1 - s_t^2)                               (B, H)
    dW   = sum_t s_{t-1}^T da_t,  db = sum_t da_t,  dU[x_t] += da_t

The gradient is truncated at the chunk boundary: s_0 (the state carried in from the previous
chunk) is a constant, so nothing flows into it. The forward value is exact; only the gradient
ignores how s_0 depended on the weights.

All parameters live in one flat vector ``theta`` (and gradients in one flat vector of the same
layout), of which ``U, W, b, V, c`` are views: optimizers update the whole model in a few
vectorized operations, and a distributed run averages gradients with a single reduction.
"""

from __future__ import annotations

import threading

import numpy as np

from charrnn.output import (  # noqa: F401  (re-exported: the numerics every model uses)
    BLOCK_ABOVE_BYTES,
    BLOCK_BYTES,
    log_softmax,
    log_softmax_,
    make_head,
    row_blocks,
    softmax_,
    softmax_cross_entropy_,
)
from charrnn.direct import Direct, ngram_hashes, next_history
from charrnn.threads import MIN_STREAMS_PER_WORKER, parallel_map, stream_groups

DTYPES = {"float32": np.float32, "float64": np.float64}


# Up to this vocabulary size the embedding gradient is one matrix product with a one-hot
# matrix (2 K flops per entry of da, at BLAS speed); above it, a scatter-add (np.add.at).
ONE_HOT_MAX_VOCAB = 96



def embedding_grad(x: np.ndarray, da: np.ndarray, dU: np.ndarray, work: np.ndarray | None = None) -> None:
    """dU[x[n]] += da[n] for every row n, duplicates summed; no Python loop over rows.

    x: (N,) ints, da: (N, H), dU: (K, H), updated in place. A small vocabulary (K up to
    ``ONE_HOT_MAX_VOCAB``) uses ``dU += onehot(x)^T da``, one matrix product; a larger one
    ``np.add.at`` on the flattened 1-D view of dU, several times faster than the row-wise form.
    ``work``, optional, is a (K, N) scratch array of dU's dtype for the one-hot matrix.
    """
    x = np.asarray(x).reshape(-1)
    K, H = dU.shape
    if K <= ONE_HOT_MAX_VOCAB and dU.flags.c_contiguous:
        onehot = np.zeros((K, len(x)), dtype=dU.dtype) if work is None else work  # (K, N)
        onehot[...] = 0.0
        onehot[x, np.arange(len(x))] = 1.0  # onehot[x[n], n] = 1
        dU += onehot @ da
        return
    flat_index = (x.astype(np.intp)[:, None] * H + np.arange(H)).ravel()
    np.add.at(dU.reshape(-1), flat_index, da.reshape(-1))


def embedding_grad_scatter(x: np.ndarray, da: np.ndarray, dU: np.ndarray) -> None:
    """``embedding_grad`` by scatter-add alone, whatever K (the reference for its fast path)."""
    H = dU.shape[1]
    flat_index = (np.asarray(x).reshape(-1).astype(np.intp)[:, None] * H + np.arange(H)).ravel()
    np.add.at(dU.reshape(-1), flat_index, da.reshape(-1))


def cross_entropy_grad_(p: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean -log p[y] and its gradient with respect to the logits, computed in place in p.

    p: (N, K) softmax probabilities (overwritten by do = (p - onehot(y)) / N), y: (N,) ints.
    """
    N = len(y)
    rows = np.arange(N)
    p_y = p[rows, y]
    loss = -float(np.log(np.maximum(p_y, np.finfo(p.dtype).tiny)).astype(np.float64).mean())
    p[rows, y] -= 1.0
    p /= N
    return loss, p


class Model:
    """What every network here shares: named parameters as views of one flat vector ``theta``,
    and an output layer ``head`` (``charrnn.output``) whose parameters come last in ``theta``.

    A subclass sets ``shapes`` (name -> shape, the head's last) and ``head``, and implements
    ``initialize``, ``hidden_forward``, ``hidden_backward``, ``step_state`` and ``state_size``.
    The carried state is always one array (B, S).
    """

    shapes: dict[str, tuple[int, ...]]
    direct: Direct | None = None  # hashed n-gram direct connections (charrnn.direct), trained apart

    def _attach_direct(self, config: dict | None) -> None:
        """Give the model direct connections, {"order": N, "rows": [R_j per block of the head]}."""
        if config:
            self.direct = Direct(self.head.widths, config["rows"], config["order"], dtype=self.dtype)
            self.head.direct = self.direct

    @property
    def history_size(self) -> int:
        """The state's last columns: the N-1 tokens the direct connections' n-grams need."""
        return 0 if self.direct is None else self.direct.order - 1

    @property
    def state_size(self) -> int:
        """S: the cell's state, then the token history of the direct connections."""
        return self.cell_state_size + self.history_size

    def _split_state(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the cell's part (B, S_cell), the token history (B, N-1)) of a state (B, S)."""
        return s[:, : self.cell_state_size], s[:, self.cell_state_size :]

    def _hashes(self, history: np.ndarray, x: np.ndarray) -> np.ndarray | None:
        """The n-gram hashes (T*B, N) of inputs x (T, B) after ``history``, None without direct."""
        return None if self.direct is None else ngram_hashes(history, x, self.direct.order)

    def _join_state(self, s_cell: np.ndarray, history: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The state after reading x (T, B): the cell's last state and the updated history."""
        if self.direct is None:
            return s_cell
        return np.concatenate([s_cell, next_history(history, x)], axis=1)

    def _allocate(self, dtype) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError("dtype must be float32 or float64")
        self.theta = np.zeros(self.num_params, dtype=self.dtype)
        self.params = self.unflatten(self.theta)

    @property
    def num_params(self) -> int:
        """The number of scalar parameters."""
        return sum(int(np.prod(s)) for s in self.shapes.values())

    def head_part(self, flat: np.ndarray) -> np.ndarray:
        """The tail of a flat vector laid out like ``theta`` that holds the output layer."""
        return flat[self.num_params - self.head.num_params :]

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Views of a flat vector laid out like ``theta``, by parameter name."""
        views, offset = {}, 0
        for name, shape in self.shapes.items():
            n = int(np.prod(shape))
            views[name] = flat[offset : offset + n].reshape(shape)
            offset += n
        return views

    def __getattr__(self, name):
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name, value):
        params = self.__dict__.get("params")
        if params is not None and name in params:
            params[name][...] = value  # keep the view into theta
        else:
            super().__setattr__(name, value)

    def zero_state(self, batch_size: int) -> np.ndarray:
        """The initial state of ``batch_size`` streams, (B, S), all zeros."""
        return np.zeros((batch_size, self.state_size), dtype=self.dtype)

    def output_config(self) -> dict:
        """The output layer's part of ``config()``: nothing for the full softmax without direct
        connections (so older checkpoints and configs read the same)."""
        config = {} if self.head.kind == "full" else {"output": self.head.kind, **self.head.config()}
        if self.direct is not None:
            config["direct"] = self.direct.config()
        return config

    def loss_and_grads(self, inputs, targets, s0=None, rng=None):
        """Mean cross-entropy (nats per token), gradients by name, and the last state.

        inputs, targets: int arrays (B, T); s0: (B, S) or None for zeros; rng: a
        ``np.random.Generator`` turns on training-time noise (dropout) in models that have it,
        None means deterministic. Returns
        ``(loss, grads, s_last)``: grads maps each parameter name to an array of its shape
        (views of one fresh flat vector), s_last is (B, S), to carry into the next chunk.
        """
        loss, g, s_last = self.loss_and_flat_grad(inputs, targets, s0, rng)
        return loss, self.unflatten(g), s_last

    def loss_and_flat_grad(self, inputs, targets, s0=None, rng=None):
        """Like ``loss_and_grads``, with the gradient as one flat vector laid out like ``theta``.

        With several stream workers (``charrnn.threads``), each group of streams runs forward
        and backward on its own thread into its own gradient (each a part of the mean over all
        B*T positions), and the gradients are summed in group order. Dropout masks then come
        from one generator per group, seeded from ``rng`` in group order, so they do not depend
        on which thread runs first.
        """
        inputs, targets, s0 = self._check(inputs, targets, s0)
        B, T = inputs.shape
        groups = stream_groups(B, MIN_STREAMS_PER_WORKER)
        if rng is None or len(groups) == 1:
            rngs = [rng] * len(groups)
        else:
            rngs = [np.random.default_rng(seed) for seed in rng.integers(0, 2**63, len(groups))]

        def run(k: int):
            group = groups[k]
            x, y = inputs[group], targets[group]
            s_cell, history = self._split_state(s0[group])
            S1, cache, s_last = self.hidden_forward(x, s_cell, rngs[k])
            g = np.zeros_like(self.theta)
            hashes, sink = self._hashes(history, x.T), []
            loss, ds = self.head.loss_and_grad(
                self.head_part(self.theta), S1, y.T.reshape(-1), B * T, self.head_part(g), g=hashes, sink=sink
            )
            self.hidden_backward(ds, cache, self.unflatten(g))
            return loss, g, self._join_state(s_last, history, x.T), sink

        return self._combine_groups(parallel_map(run, list(range(len(groups)))))

    def _combine_groups(self, results: list) -> tuple[float, np.ndarray, np.ndarray]:
        """(loss, flat gradient, last state (B, S)) from the groups' (loss, g, s_last, sink), in
        group order: losses and gradients summed, states stacked, and the direct connections'
        sparse gradients queued in that order, so that their update is deterministic."""
        loss, g, _, _ = results[0]
        for loss_k, g_k, _, _ in results[1:]:
            loss += loss_k
            g += g_k
        if self.direct is not None:
            self.direct.pending = [item for *_, sink in results for item in sink]
        s_last = results[0][2] if len(results) == 1 else np.concatenate([r[2] for r in results])
        return loss, g, s_last

    def forward(self, inputs: np.ndarray, s0: np.ndarray, rng=None):
        """Run T steps. inputs (B, T) ints, s0 (B, S) -> p (T*B, K) time-major, cache, s_T (B, S)."""
        inputs, _, s0 = self._check(inputs, None, s0)
        s_cell, history = self._split_state(s0)
        S1, cache, s_last = self.hidden_forward(inputs, s_cell, rng)
        hashes = self._hashes(history, inputs.T)
        p = self.head.probs(self.head_part(self.theta), S1, hashes)
        return p, (S1, hashes, cache), self._join_state(s_last, history, inputs.T)

    def backward(self, do: np.ndarray, cache, grads: dict[str, np.ndarray]) -> None:
        """BPTT from do = dE/do (T*B, K) (full softmax only); fills ``grads`` (zeroed) in place;
        the direct connections' sparse gradient goes to ``direct.pending``."""
        S1, hashes, hidden_cache = cache
        g = np.zeros_like(self.theta)
        ds = self.head.backward_logits(self.head_part(self.theta), S1, do, self.head_part(g))
        if self.direct is not None:
            self.direct.pending = []
            self.direct.add_grad(self.direct.pending, 0, hashes, do, 1)
        self.hidden_backward(ds, hidden_cache, self.unflatten(g))
        for name, view in self.unflatten(g).items():
            grads[name][...] = view

    def _check(self, inputs, targets, s0):
        inputs = np.asarray(inputs)
        if inputs.ndim != 2:
            raise ValueError(f"inputs must be (B, T), got shape {inputs.shape}")
        if targets is not None:
            targets = np.asarray(targets)
            if targets.shape != inputs.shape:
                raise ValueError(f"targets {targets.shape} must match inputs {inputs.shape}")
        B = inputs.shape[0]
        if s0 is None:
            s0 = self.zero_state(B)
        elif s0.shape != (B, self.state_size):
            raise ValueError(f"s0 must be ({B}, {self.state_size}), got {s0.shape}")
        return inputs, targets, np.asarray(s0, dtype=self.dtype)

    def log_probs(self, inputs, s0=None):
        """Forward only: log p for every position, (B, T, K), and the last state (B, S)."""
        inputs, _, s0 = self._check(inputs, None, s0)
        B, T = inputs.shape
        s_cell, history = self._split_state(s0)
        S1, _, s_last = self.hidden_forward(inputs, s_cell)
        logp = self.head.log_probs(self.head_part(self.theta), S1, self._hashes(history, inputs.T))  # (T*B, K)
        return logp.reshape(T, B, -1).transpose(1, 0, 2), self._join_state(s_last, history, inputs.T)

    def target_log_probs(self, inputs, targets, s0=None):
        """Forward only: log p[target] for every position, (B, T) float64, and the last state.

        Cheaper than ``log_probs`` for the class-factored head (H (C + class size) per row).
        """
        inputs, targets, s0 = self._check(inputs, targets, s0)
        B, T = inputs.shape
        s_cell, history = self._split_state(s0)
        S1, _, s_last = self.hidden_forward(inputs, s_cell)
        hashes = self._hashes(history, inputs.T)
        logp = self.head.target_log_probs(self.head_part(self.theta), S1, targets.T.reshape(-1), hashes)
        return logp.reshape(T, B).T, self._join_state(s_last, history, inputs.T)

    def step(self, x, s=None):
        """One time step for sampling: x (B,) ints, s (B, S) or None -> probs (B, K), new s (B, S)."""
        s1, hashes, s_new = self.step_hidden(x, s)
        return self.head.step_probs(self.head_part(self.theta), s1, hashes), s_new

    def step_hidden(self, x, s=None):
        """One time step up to the output layer: x (B,) ints, s (B, S) or None -> ([s_t, 1]
        (B, H+1), the n-gram hashes (B, N) of the direct connections or None, new s (B, S))."""
        x = np.asarray(x).reshape(-1)
        s = self.zero_state(len(x)) if s is None else np.asarray(s, dtype=self.dtype)
        s_cell, history = self._split_state(s)
        s1, s_new = self.step_state(x, s_cell)
        return s1, self._hashes(history, x[None, :]), self._join_state(s_new, history, x[None, :])

    def config(self) -> dict:
        """The constructor arguments (JSON-able), enough to rebuild this architecture."""
        raise NotImplementedError


class RNN(Model):
    """Elman RNN: ``s_t = tanh(s_{t-1} W + U[x_t] + b)``, ``p_t = softmax(s_t V + c)``.

    Shapes: U (K, H), W (H, H), b (H,), then the output layer's (``charrnn.output``): V (H, K),
    c (K,) for the full softmax. The state is s, (B, H).

    Initialization (deterministic given ``seed``): U and V uniform in +-1/sqrt(H) (Xavier-like
    fan scaling, small so that tanh starts in its linear range and the softmax starts near
    uniform); W a random orthogonal matrix scaled by 0.9, so the recurrence neither explodes nor
    vanishes at the start (spectral radius just below 1); biases zero.

    Each bias rides inside its matrix product: in ``theta`` b follows W and c follows V, so
    ``[W; b]`` is one (H+1, H) matrix and ``[V; c]`` one (H+1, K) matrix, and the states are kept
    with a column of ones, ``[s_t, 1]`` (B, H+1). Then ``[s_{t-1}, 1] [W; b] = s_{t-1} W + b``,
    ``[s_t, 1] [V; c] = o_t``, and the gradients come out of one product each:
    ``[dW; db] = sum_t [s_{t-1}, 1]^T da_t`` and ``[dV; dc] = sum_t [s_t, 1]^T do_t``.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        seed: int | None = 0,
        dtype=np.float32,
        output: dict | None = None,
        direct: dict | None = None,
    ):
        """``seed`` None leaves the weights zero, for a checkpoint about to fill them. ``output``:
        the head's config (``charrnn.output.make_head``), None for the full softmax."""
        if vocab_size < 1 or hidden_size < 1:
            raise ValueError("vocab_size and hidden_size must be positive")
        self.vocab_size, self.hidden_size = int(vocab_size), int(hidden_size)
        self.seed = None if seed is None else int(seed)
        K, H = self.vocab_size, self.hidden_size
        self.head = make_head(K, H, output)
        self.shapes = {"U": (K, H), "W": (H, H), "b": (H,), **self.head.shapes}
        self._allocate(dtype)
        self._attach_direct(direct)
        if seed is not None:
            self.initialize(np.random.default_rng(seed))

    @property
    def cell_state_size(self) -> int:
        return self.hidden_size

    def config(self) -> dict:
        return {"cell": "rnn", "vocab_size": self.vocab_size, "hidden_size": self.hidden_size, **self.output_config()}

    def initialize(self, rng: np.random.Generator) -> None:
        """Draw fresh parameters (see the class docstring for the scheme)."""
        H = self.hidden_size
        scale = 1.0 / np.sqrt(H)
        self.U = rng.uniform(-scale, scale, self.U.shape)
        self.head.initialize(self.head_part(self.theta), rng)
        q, r = np.linalg.qr(rng.standard_normal((H, H)))
        self.W = 0.9 * q * np.sign(np.diag(r))  # sign fix: a uniformly random orthogonal matrix
        self.b = 0.0

    def _blocks(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of a flat vector laid out like ``theta``: U (K, H), [W; b] (H+1, H), the head's tail."""
        K, H = self.vocab_size, self.hidden_size
        i, j = K * H, K * H + (H + 1) * H
        return flat[:i].reshape(K, H), flat[i:j].reshape(H + 1, H), flat[j:]

    def _step_views(self) -> tuple[np.ndarray, ...]:
        """U, W, b and the head's tail as views of ``theta``, made once (``step`` runs once per
        sampled token)."""
        views = self.__dict__.get("_views")
        if views is None or views[0] is not self.theta:
            U, Wb, head = self._blocks(self.theta)
            H = self.hidden_size
            views = (self.theta, U, Wb[:H], Wb[H], head)
            self.__dict__["_views"] = views
        return views[1:]

    def _work(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A scratch array of this thread, kept from call to call: fresh memory costs a page fault
        per 4 KiB on first touch (several ms per training step of a small model). One per name
        and thread; a new shape replaces it."""
        workspace = self.__dict__.setdefault("_workspace", {})
        key = (threading.get_ident(), name)
        buf = workspace.get(key)
        if buf is None or buf.shape != shape:
            buf = workspace[key] = np.empty(shape, dtype=self.dtype)
        return buf

    def _states(self, x: np.ndarray, s0: np.ndarray, S: np.ndarray | None = None) -> np.ndarray:
        """The recurrence: x (T, B) ids, s0 (B, H) -> S (T+1, B, H+1), S[t] = [s_t, 1], S[0] = [s0, 1].

        ``S`` is filled if given, else a new array.
        """
        T, B = x.shape
        K, H = self.vocab_size, self.hidden_size
        if x.size and (x.min() < 0 or x.max() >= K):
            raise ValueError(f"token ids must be in [0, {K}), got ids from {x.min()} to {x.max()}")
        U, Wb, _ = self._blocks(self.theta)
        if S is None:
            S = np.empty((T + 1, B, H + 1), dtype=self.dtype)
        S[:, :, H] = 1.0
        S[0, :, :H] = s0
        Ux = np.take(U, x, axis=0, out=self._work("Ux", (T, B, H)), mode="clip")  # U[x_t], every t
        a = self._work("a", (B, H))
        for t in range(T):
            np.matmul(S[t], Wb, out=a)  # a_t = s_{t-1} W + b     (B, H)
            a += Ux[t]  # ... + U[x_t]
            np.tanh(a, out=S[t + 1, :, :H])  # s_t = tanh(a_t)
        return S

    def hidden_forward(self, inputs: np.ndarray, s0: np.ndarray, rng=None):
        """The recurrence alone: inputs (B, T), s0 (B, H) -> S1 (T*B, H+1) rows [s_t, 1]
        time-major, cache, s_T (B, H). ``rng`` is accepted for the common interface (no dropout)."""
        x = np.asarray(inputs).T  # (T, B): time-major, so each step reads contiguous rows
        T, B = x.shape
        S = self._states_groups(x, np.asarray(s0, dtype=self.dtype))
        return S[1:].reshape(T * B, -1), (x, S), S[-1, :, : self.hidden_size].copy()

    def _states_groups(self, x: np.ndarray, s0: np.ndarray) -> np.ndarray:
        """``_states`` with the streams split over the stream workers."""
        T, B = x.shape
        groups = stream_groups(B, MIN_STREAMS_PER_WORKER)
        if len(groups) == 1:
            return self._states(x, s0)
        S = np.empty((T + 1, B, self.hidden_size + 1), dtype=self.dtype)

        def run(group: slice) -> None:  # each worker writes its own streams of S
            S[:, group] = self._states(np.ascontiguousarray(x[:, group]), s0[group])

        parallel_map(run, groups)
        return S

    def hidden_backward(self, ds: np.ndarray, cache, grads: dict[str, np.ndarray]) -> None:
        """BPTT from ds = dE/ds_t (T*B, H) given by the head; writes dU, dW, db into ``grads``."""
        x, S = cache
        g = np.empty_like(self.theta)
        self._bptt(ds, x, S, g)
        views = self.unflatten(g)
        for name in ("U", "W", "b"):
            grads[name][...] = views[name]

    def _bptt(self, ds: np.ndarray, x: np.ndarray, S: np.ndarray, g: np.ndarray) -> None:
        """BPTT into the U, W, b part of ``g`` (a flat vector like ``theta``; those entries all
        overwritten). ds (T*B, H): dE/ds_t from the head, overwritten by da."""
        T1, B, H1 = S.shape
        T, H, N = T1 - 1, H1 - 1, (T1 - 1) * B
        _, Wb, _ = self._blocks(self.theta)
        dU, dWb, _ = self._blocks(g)
        S_flat = S.reshape(T1 * B, H1)  # rows [s_t, 1], t = 0..T
        da = ds.reshape(T, B, H)
        dtanh = np.multiply(S[1:, :, :H], S[1:, :, :H], out=self._work("dtanh", (T, B, H)))
        np.subtract(1.0, dtanh, out=dtanh)  # 1 - s_t^2, (T, B, H), for all t at once
        WT = Wb[:H].T
        from_next = self._work("from_next", (B, H))
        da[T - 1] *= dtanh[T - 1]
        for t in range(T - 2, -1, -1):
            np.matmul(da[t + 1], WT, out=from_next)  # da_{t+1} W^T
            da[t] += from_next  # ds_t = do_t V^T + da_{t+1} W^T
            da[t] *= dtanh[t]  # da_t = ds_t * (1 - s_t^2)
        da_flat = da.reshape(N, H)
        np.matmul(S_flat[:N].T, da_flat, out=dWb)  # [dW; db] = sum_t [s_{t-1}, 1]^T da_t
        dU[...] = 0.0
        work = self._work("onehot", (len(dU), N)) if len(dU) <= ONE_HOT_MAX_VOCAB else None
        embedding_grad(x.reshape(-1), da_flat, dU, work)  # dU[x_t] += da_t

    def loss_and_flat_grad(self, inputs, targets, s0=None, rng=None):
        """Like ``Model.loss_and_flat_grad``, with scratch arrays kept between calls.

        With several workers, each group of streams runs forward and backward on its own thread
        into its own gradient (already divided by all B*T rows), and the gradients are summed.
        """
        inputs, targets, s0 = self._check(inputs, targets, s0)
        x, y = inputs.T, targets.T  # (T, B)
        T, B = x.shape
        head = self.head_part(self.theta)
        s_cell, history = self._split_state(s0)

        def run(group: slice):
            x_g = np.ascontiguousarray(x[:, group])  # (T, B_g)
            B_g = x_g.shape[1]
            S = self._states(x_g, s_cell[group], self._work("S", (T + 1, B_g, self.hidden_size + 1)))
            g = np.empty_like(self.theta)
            S1 = S[1:].reshape(T * B_g, -1)
            hashes, sink = self._hashes(history[group], x_g), []
            loss, ds = self.head.loss_and_grad(
                head, S1, y[:, group].reshape(-1), T * B, self.head_part(g), self._work, hashes, sink
            )
            self._bptt(ds, x_g, S, g)
            return loss, g, self._join_state(S[-1, :, : self.hidden_size].copy(), history[group], x_g), sink

        return self._combine_groups(parallel_map(run, stream_groups(B, MIN_STREAMS_PER_WORKER)))

    def step_state(self, x, s=None):
        """One step of the recurrence: x (B,) ints, s (B, H) or None -> ([s_t, 1] (B, H+1), s_t (B, H))."""
        x = np.asarray(x).reshape(-1)
        s = np.zeros((len(x), self.hidden_size), self.dtype) if s is None else np.asarray(s, dtype=self.dtype)
        U, W, b, _ = self._step_views()
        s1 = np.empty((len(x), self.hidden_size + 1), dtype=self.dtype)
        a = np.matmul(s, W, out=s1[:, :-1])  # (B, H)
        a += U.take(x, axis=0)
        a += b
        np.tanh(a, out=a)  # s_t = tanh(s_{t-1} W + U[x_t] + b)
        s1[:, -1] = 1.0
        return s1, a
