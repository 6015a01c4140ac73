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

import numpy as np

DTYPES = {"float32": np.float32, "float64": np.float64}


def log_softmax(o: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (a new array, same shape)."""
    z = o - o.max(axis=-1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


def softmax_(o: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, computed in place in ``o``; returns ``o``."""
    o -= o.max(axis=-1, keepdims=True)
    np.exp(o, out=o)
    o /= o.sum(axis=-1, keepdims=True)
    return o


def embedding_grad(x: np.ndarray, da: np.ndarray, dU: np.ndarray) -> None:
    """dU[x[n]] += da[n] for every row n, duplicates summed; no Python loop over rows.

    x: (N,) ints, da: (N, H), dU: (K, H), updated in place. Uses ``np.add.at`` on the flattened
    1-D view of dU, which is several times faster than the row-wise form.
    """
    H = dU.shape[1]
    flat_index = (x.astype(np.intp)[:, None] * H + np.arange(H)).ravel()
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
    """What every network here shares: named parameters as views of one flat vector ``theta``.

    A subclass sets ``shapes`` (name -> shape) and implements ``initialize``, ``forward``,
    ``backward``, ``step`` and ``state_size``. The carried state is always one array (B, S).
    """

    shapes: dict[str, tuple[int, ...]]

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
        """Like ``loss_and_grads``, with the gradient as one flat vector laid out like ``theta``."""
        inputs, targets, s0 = self._check(inputs, targets, s0)
        p, cache, s_last = self.forward(inputs, s0, rng)
        loss, do = cross_entropy_grad_(p, targets.T.reshape(-1))
        g = np.zeros_like(self.theta)
        self.backward(do, cache, self.unflatten(g))
        return loss, g, s_last

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
        p, _, s_last = self.forward(inputs, s0)
        logp = np.log(np.maximum(p, np.finfo(p.dtype).tiny))  # (T*B, K), time-major
        return logp.reshape(T, B, -1).transpose(1, 0, 2), s_last

    def config(self) -> dict:
        """The constructor arguments (JSON-able), enough to rebuild this architecture."""
        raise NotImplementedError


class RNN(Model):
    """Elman RNN: ``s_t = tanh(s_{t-1} W + U[x_t] + b)``, ``p_t = softmax(s_t V + c)``.

    Shapes: U (K, H), W (H, H), b (H,), V (H, K), c (K,). The state is s, (B, H).

    Initialization (deterministic given ``seed``): U and V uniform in +-1/sqrt(H) (Xavier-like
    fan scaling, small so that tanh starts in its linear range and the softmax starts near
    uniform); W a random orthogonal matrix scaled by 0.9, so the recurrence neither explodes nor
    vanishes at the start (spectral radius just below 1); biases zero.
    """

    def __init__(self, vocab_size: int, hidden_size: int, seed: int = 0, dtype=np.float32):
        if vocab_size < 1 or hidden_size < 1:
            raise ValueError("vocab_size and hidden_size must be positive")
        self.vocab_size, self.hidden_size, self.seed = int(vocab_size), int(hidden_size), int(seed)
        K, H = self.vocab_size, self.hidden_size
        self.shapes = {"U": (K, H), "W": (H, H), "b": (H,), "V": (H, K), "c": (K,)}
        self._allocate(dtype)
        self.initialize(np.random.default_rng(seed))

    @property
    def state_size(self) -> int:
        return self.hidden_size

    def config(self) -> dict:
        return {"cell": "rnn", "vocab_size": self.vocab_size, "hidden_size": self.hidden_size}

    def initialize(self, rng: np.random.Generator) -> None:
        """Draw fresh parameters (see the class docstring for the scheme)."""
        H = self.hidden_size
        scale = 1.0 / np.sqrt(H)
        self.U = rng.uniform(-scale, scale, self.U.shape)
        self.V = rng.uniform(-scale, scale, self.V.shape)
        q, r = np.linalg.qr(rng.standard_normal((H, H)))
        self.W = 0.9 * q * np.sign(np.diag(r))  # sign fix: a uniformly random orthogonal matrix
        self.b = 0.0
        self.c = 0.0

    def forward(self, inputs: np.ndarray, s0: np.ndarray, rng=None):
        """Run T steps. inputs (B, T) ints, s0 (B, H) -> p (T*B, K) time-major, cache, s_T.

        ``rng`` is accepted for the common interface; the vanilla RNN has no dropout.
        """
        U, W, b, V, c = self.U, self.W, self.b, self.V, self.c
        x = inputs.T  # (T, B): time-major, so each step reads contiguous rows
        T, B = x.shape
        s = U[x]  # (T, B, H): the input term U[x_t] of every step, a row lookup
        s += b
        prev = s0
        for t in range(T):
            a_t = s[t]
            a_t += prev @ W  # a_t = s_{t-1} W + U[x_t] + b
            np.tanh(a_t, out=a_t)  # s_t = tanh(a_t), in place
            prev = a_t
        o = s.reshape(T * B, -1) @ V  # (T*B, K): the output layer as one product over all rows
        o += c
        p = softmax_(o)
        return p, (x, s0, s), s[-1].copy()

    def backward(self, do: np.ndarray, cache, grads: dict[str, np.ndarray]) -> None:
        """BPTT through one chunk. do (T*B, K) = dE/do; fills ``grads`` (zeroed) in place."""
        x, s0, s = cache
        T, B, H = s.shape
        W, V = self.W, self.V
        s_flat = s.reshape(T * B, H)
        np.matmul(s_flat.T, do, out=grads["V"])  # dV = sum_t s_t^T do_t
        grads["c"][...] = do.sum(axis=0)  # dc = sum_t do_t
        da = (do @ V.T).reshape(T, B, H)  # ds_t from the output, for all t at once; becomes da
        da_next = None
        for t in range(T - 1, -1, -1):
            ds_t = da[t]
            if da_next is not None:
                ds_t += da_next @ W.T  # ds_t = do_t V^T + da_{t+1} W^T
            ds_t *= 1.0 - s[t] * s[t]  # da_t = ds_t * (1 - s_t^2), in place
            da_next = ds_t
        da_flat = da.reshape(T * B, H)
        grads["W"][...] = s0.T @ da[0]  # dW = sum_t s_{t-1}^T da_t
        if T > 1:
            grads["W"] += s[:-1].reshape((T - 1) * B, H).T @ da[1:].reshape((T - 1) * B, H)
        grads["b"][...] = da_flat.sum(axis=0)  # db = sum_t da_t
        embedding_grad(x.reshape(-1), da_flat, grads["U"])  # dU[x_t] += da_t

    def step(self, x, s=None):
        """One time step for sampling: x (B,) ints, s (B, H) or None -> probs (B, K), new s (B, H)."""
        x = np.asarray(x).reshape(-1)
        if s is None:
            s = self.zero_state(len(x))
        s = np.tanh(s @ self.W + self.U[x] + self.b)
        o = s @ self.V
        o += self.c
        return softmax_(o), s
