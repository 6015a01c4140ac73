"""Stacked recurrent networks: LSTM, GRU and a multi-layer tanh RNN, with embedding and dropout.

Every network here has L layers of H units over a vocabulary of K tokens. Layer l reads an input
row x^l_t and its own previous output h^l_{t-1}; its output h^l_t, after dropout, is the input
of layer l + 1; the output of the last layer gives the next-token probabilities:

    x^1_t = onehot(x_t)                    no embedding: x^1_t U1 is the row lookup U1[x_t]
    x^1_t = Emb[x_t]                       with embedding_size E: a row of the table Emb (K, E)
    a^l_t = x^l_t U_l + b_l + h^l_{t-1} W_l   all gate pre-activations of the step    (B, G H)
    h^l_t = cell(a^l_t, state^l_{t-1})     the cell of the class (its docstring)   (B, H)
    x^{l+1}_t = drop(h^l_t)                inverted dropout between layers
    o_t = drop(h^L_t) V + c,  p_t = softmax(o_t)                                    (B, K)

Shapes: Emb (K, E); U1 (K, G H) without embedding, (E, G H) with it; U_l (H, G H) for l > 1;
W_l (H, G H); b_l (G H,); V (H, K); c (K,). G is the number of gate blocks: 1 (RNN), 3 (GRU),
4 (LSTM). All are views of the flat vector ``theta``, laid out in the order
``Emb, U1, W1, b1, ..., UL, WL, bL, V, c``.

Dropout: ``drop(h) = h * mask / (1 - p)``, mask ~ Bernoulli(1 - p) drawn afresh for every
position, only when ``forward`` is given an ``rng`` (training). With ``rng=None`` (evaluation,
sampling) drop is the identity. The recurrent path h^l_{t-1} -> h^l_t is never dropped, and
the state carried between chunks holds the undropped h.

The carried state is one array s (B, S), the layers side by side, layer 1 first:

    LSTM:      s = [h^1 | m^1 | h^2 | m^2 | ... | h^L | m^L]     S = 2 H L   (m: memory cell)
    GRU, RNN:  s = [h^1 | h^2 | ... | h^L]                       S = H L

so for the LSTM the columns [2Hl, 2Hl + H) are h^{l+1} and [2Hl + H, 2H(l+1)) are m^{l+1}.

Time-major throughout: each layer computes its input term x^l_t U_l + b_l for all T B rows in
one matrix product (a row lookup for layer 1 without embedding), so only h^l_{t-1} W_l, one
(B, H) @ (H, G H) product, runs inside the loop over t. The output layer is one product over all
rows. Backward walks each layer's steps in reverse to get the pre-activation gradients da^l_t,
then forms dU_l, dW_l, db_l as single products over all T B rows after the loop.

``build_model(config)`` makes any of them from a ``config()`` dict; the plain case (cell "rnn",
one layer, no dropout, no embedding) is exactly ``charrnn.model.RNN``.
"""

from __future__ import annotations

import numpy as np

from charrnn.model import RNN, Model, embedding_grad
from charrnn.output import make_head

CELLS = ("rnn", "lstm", "gru")


def sigmoid(a: np.ndarray) -> np.ndarray:
    """The logistic function 1 / (1 + e^-a) as 0.5 (1 + tanh(a / 2)): never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _exp_gates_(a: np.ndarray, scale: np.ndarray) -> None:
    """In place, a <- 1 / (1 + exp(scale * a)): the sigmoid where scale is -1, and where scale is
    -2 the value (1 + tanh a) / 2, from which tanh a = 2 value - 1.

    One exp over the whole gate block is markedly cheaper than np.tanh per gate. exp may reach
    inf for very negative pre-activations; 1 / (1 + inf) = 0 is then the exact limit.
    """
    a *= scale
    np.exp(a, out=a)
    a += 1.0
    np.reciprocal(a, out=a)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A uniformly random (n, n) orthogonal matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


class Stacked(Model):
    """What the stacked cells share: layers, embedding, dropout, output layer, state packing.

    A subclass sets ``cell`` (its name), ``gates`` (G, blocks in a^l_t), ``blocks`` (H-wide
    blocks of state per layer), ``recurrent_gain`` and implements ``_layer_forward``,
    ``_layer_backward`` and ``_layer_step`` for one layer.
    """

    cell: str
    gates: int
    blocks: int
    recurrent_gain = 1.0

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int = 1,
        embedding_size: int | None = None,
        dropout: float = 0.0,
        seed: int = 0,
        dtype=np.float32,
        output: dict | None = None,
        direct: dict | None = None,
    ):
        self.vocab_size = _positive_int("vocab_size", vocab_size)  # K
        self.hidden_size = _positive_int("hidden_size", hidden_size)  # H, units per layer
        self.num_layers = _positive_int("num_layers", num_layers)  # L
        self.embedding_size = (  # E, or None: layer 1 looks up rows of U1 directly
            None if embedding_size is None else _positive_int("embedding_size", embedding_size)
        )
        is_number = isinstance(dropout, (int, float, np.floating)) and not isinstance(dropout, bool)
        if not is_number or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)  # p, the probability of zeroing a unit, training only
        self.seed = None if seed is None else int(seed)  # None: zero weights, to be loaded
        K, H, E, GH = self.vocab_size, self.hidden_size, self.embedding_size, self.gates * self.hidden_size
        shapes = {} if E is None else {"Emb": (K, E)}
        for l in range(1, self.num_layers + 1):
            rows = H if l > 1 else (K if E is None else E)
            shapes.update({f"U{l}": (rows, GH), f"W{l}": (H, GH), f"b{l}": (GH,)})
        self.head = make_head(K, H, output)  # the output layer (charrnn.output): V, c, ...
        shapes.update(self.head.shapes)
        self.shapes = shapes
        self._allocate(dtype)
        self._attach_direct(direct)
        if seed is not None:
            self.initialize(np.random.default_rng(seed))

    @property
    def cell_state_size(self) -> int:
        """blocks * H * L (see the module docstring for the packing)."""
        return self.blocks * self.hidden_size * self.num_layers

    def _state_columns(self, l: int) -> slice:
        """The columns of s holding the state of layer l (0-based)."""
        width = self.blocks * self.hidden_size
        return slice(l * width, (l + 1) * width)

    def config(self) -> dict:
        return {
            "cell": self.cell,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "embedding_size": self.embedding_size,
            "dropout": self.dropout,
            **self.output_config(),
        }

    def initialize(self, rng: np.random.Generator) -> None:
        """Draw fresh parameters: Emb uniform in +-1; U_l uniform in +-1/sqrt(fan-in) (fan-in H
        for the layer-1 lookup, as in ``model.RNN``); each H-wide block of W_l an independent
        random orthogonal matrix times ``recurrent_gain``; V uniform in +-1/sqrt(H); biases zero
        except where ``_initial_bias`` says otherwise (the LSTM forget gate)."""
        H, G = self.hidden_size, self.gates
        if self.embedding_size is not None:
            self.params["Emb"][...] = rng.uniform(-1.0, 1.0, self.params["Emb"].shape)
        for l in range(1, self.num_layers + 1):
            U = self.params[f"U{l}"]
            fan_in = self.embedding_size if (l == 1 and self.embedding_size is not None) else H
            U[...] = rng.uniform(-1.0, 1.0, U.shape) / np.sqrt(fan_in)
            blocks = [_orthogonal(rng, H) for _ in range(G)]
            self.params[f"W{l}"][...] = self.recurrent_gain * np.hstack(blocks)
            self.params[f"b{l}"][...] = self._initial_bias()
        self.head.initialize(self.head_part(self.theta), rng)

    def _initial_bias(self) -> np.ndarray:
        return np.zeros(self.gates * self.hidden_size)

    def _dropout_mask(self, rng: np.random.Generator, shape) -> np.ndarray:
        """mask / (1 - p) with mask ~ Bernoulli(1 - p), one array (inverted dropout: E[drop(h)] = h)."""
        u = rng.random(shape, dtype=self.dtype)
        return np.multiply(u >= self.dropout, self.dtype.type(1.0 / (1.0 - self.dropout)), out=u)

    def hidden_forward(self, inputs: np.ndarray, s0: np.ndarray, rng=None):
        """Run T steps. inputs (B, T) ints, s0 (B, S) -> S1 (T*B, H+1) time-major rows
        [drop(h^L_t), 1] for the output layer, cache, s_T (B, S).

        ``rng`` (a ``np.random.Generator``) turns dropout on; masks are drawn layer by layer, so
        the same generator state gives the same masks.
        """
        x = np.ascontiguousarray(inputs.T)  # (T, B): time-major
        T, B = x.shape
        H, GH, E = self.hidden_size, self.gates * self.hidden_size, self.embedding_size
        dropping = rng is not None and self.dropout > 0.0
        s_last = np.empty((B, self.cell_state_size), dtype=self.dtype)
        X = None  # (T*B, D): the input rows x^l_t of the current layer; None for the U1 lookup
        layer_inputs, layer_caches, masks = [], [], []
        for l in range(self.num_layers):
            U, W, b = self.params[f"U{l + 1}"], self.params[f"W{l + 1}"], self.params[f"b{l + 1}"]
            if l > 0:
                A = X @ U  # (T*B, GH): x^l_t U_l for all rows in one product
            elif E is not None:
                X = self.params["Emb"][x.reshape(-1)]  # (T*B, E): x^1_t = Emb[x_t]
                A = X @ U
            else:
                A = U[x.reshape(-1)]  # (T*B, GH): onehot(x_t) U1 = U1[x_t], a row lookup
            A += b
            layer_inputs.append(X)
            cols = self._state_columns(l)
            h, cache = self._layer_forward(A.reshape(T, B, GH), s0[:, cols], W, s_last[:, cols])
            layer_caches.append(cache)
            Y = h[1:]  # (T, B, H): h^l_1 .. h^l_T
            mask = self._dropout_mask(rng, Y.shape) if dropping else None
            if mask is not None:
                Y = Y * mask  # x^{l+1}_t = drop(h^l_t)
            masks.append(mask)
            X = Y.reshape(T * B, H)
        S1 = np.empty((T * B, H + 1), dtype=self.dtype)  # [drop(h^L_t), 1]: o_t = S1 [V; c]
        S1[:, :H] = X
        S1[:, H] = 1.0
        return S1, (x, layer_inputs, layer_caches, masks), s_last

    def hidden_backward(self, ds: np.ndarray, cache, grads: dict[str, np.ndarray]) -> None:
        """BPTT through one chunk from ds = dE/d drop(h^L_t) (T*B, H), given by the output layer;
        fills the layers' entries of ``grads`` in place."""
        x, layer_inputs, layer_caches, masks = cache
        T, B = x.shape
        H, GH = self.hidden_size, self.gates * self.hidden_size
        dY = ds  # (T*B, H): dE/d drop(h^L_t)
        for l in range(self.num_layers - 1, -1, -1):
            U, W = self.params[f"U{l + 1}"], self.params[f"W{l + 1}"]
            if masks[l] is not None:
                dY *= masks[l].reshape(T * B, H)  # through drop: dh = d drop(h) * mask / (1 - p)
            dA, dR = self._layer_backward(dY.reshape(T, B, H), layer_caches[l], W)
            dA = dA.reshape(T * B, GH)  # dE/da^l_t through the input term x^l_t U_l + b_l
            h = layer_caches[l][0]  # (T+1, B, H): h^l_0 .. h^l_T
            # dW_l = sum_t h^l_{t-1}^T dR_t, dR_t = dE/d(h^l_{t-1} W_l) (= da^l_t but in the GRU)
            np.matmul(h[:-1].reshape(T * B, H).T, dR.reshape(T * B, GH), out=grads[f"W{l + 1}"])
            grads[f"b{l + 1}"][...] = dA.sum(axis=0)  # db_l = sum_t da^l_t
            X = layer_inputs[l]
            if X is None:
                embedding_grad(x.reshape(-1), dA, grads["U1"])  # dU1[x_t] += da^1_t
                continue
            np.matmul(X.T, dA, out=grads[f"U{l + 1}"])  # dU_l = sum_t x^l_t^T da^l_t
            dX = dA @ U.T  # (T*B, D): dE/dx^l_t
            if l > 0:
                dY = dX  # x^l_t = drop(h^{l-1}_t)
            else:
                embedding_grad(x.reshape(-1), dX, grads["Emb"])  # dEmb[x_t] += dx^1_t

    def step_state(self, x, s=None):
        """One time step, no dropout: x (B,) ints, s (B, S) or None -> ([h^L_t, 1] (B, H+1), s).

        Written directly from the equations (not through ``forward``), so that the tests can
        hold the two against each other.
        """
        x = np.asarray(x).reshape(-1)
        if s is None:
            s = np.zeros((len(x), self.cell_state_size), dtype=self.dtype)
        s_new = np.empty_like(s, dtype=self.dtype)
        h = None  # the output of the layer below
        for l in range(self.num_layers):
            U, W, b = self.params[f"U{l + 1}"], self.params[f"W{l + 1}"], self.params[f"b{l + 1}"]
            if h is not None:
                ax = h @ U
            elif self.embedding_size is not None:
                ax = self.params["Emb"][x] @ U
            else:
                ax = U[x]
            cols = self._state_columns(l)
            h, s_new[:, cols] = self._layer_step(ax + b, s[:, cols], W)
        return np.hstack([h, np.ones((len(h), 1), dtype=self.dtype)]), s_new

    def _layer_forward(self, A, s0_l, W, s_out):
        """One layer over T steps. A (T, B, G H) holds x_t U + b and is overwritten; s0_l
        (B, blocks H); the last state is written into s_out. Returns h (T+1, B, H) with h[0] the
        initial h, and a cache whose first item is h."""
        raise NotImplementedError

    def _layer_backward(self, dh, cache, W):
        """dh (T, B, H): dE/dh_t from above (overwritten). Returns (dA, dR), both (T, B, G H):
        dE/d(x_t U + b) and dE/d(h_{t-1} W)."""
        raise NotImplementedError

    def _layer_step(self, ax, s_l, W):
        """One step of one layer: ax = x U + b (B, G H), s_l (B, blocks H) -> (h, new s_l)."""
        raise NotImplementedError


class StackedRNN(Stacked):
    """L layers of Elman tanh units, with dropout between them and on the output.

        a_t = x_t U + b + h_{t-1} W          (B, H)
        h_t = tanh(a_t)

    Backward, with dh_t = dE/dh_t from the layer above plus from step t+1:

        da_t = dh_t * (1 - h_t^2)
        dh_{t-1} += da_t W^T

    Initialization as in ``Stacked.initialize``, with W = 0.9 times a random orthogonal matrix
    (the gain of ``model.RNN``). With one layer, no embedding and no dropout this is the same
    network as ``model.RNN`` with the same flat layout (U1, W1, b1, V, c = U, W, b, V, c), but
    ``build_model`` returns ``model.RNN`` for that case.
    """

    cell = "rnn"
    gates = 1
    blocks = 1
    recurrent_gain = 0.9

    def _layer_forward(self, A, s0_l, W, s_out):
        T, B, H = A.shape
        h = np.empty((T + 1, B, H), dtype=self.dtype)
        h[0] = s0_l
        for t in range(T):
            a = A[t]
            a += h[t] @ W  # a_t = x_t U + b + h_{t-1} W
            np.tanh(a, out=h[t + 1])  # h_t = tanh(a_t)
        s_out[...] = h[T]
        return h, (h,)

    def _layer_backward(self, dh, cache, W):
        (h,) = cache
        T = dh.shape[0]
        WT = np.ascontiguousarray(W.T)
        tanh_grad = h[1:] * h[1:]  # (T, B, H)
        np.subtract(1.0, tanh_grad, out=tanh_grad)  # 1 - h_t^2, all t at once
        da = dh  # reuse the buffer: da_t overwrites dh_t
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                da[t] += da[t + 1] @ WT  # dh_t += da_{t+1} W^T
            da[t] *= tanh_grad[t]  # da_t = dh_t * (1 - h_t^2)
        return da, da

    def _layer_step(self, ax, s_l, W):
        h = np.tanh(ax + s_l @ W)
        return h, h


class LSTM(Stacked):
    """Long short-term memory layers (gates i, f, g, r; memory cell m), stacked, with dropout.

        a_t = x_t U + b + h_{t-1} W  = [a_i | a_f | a_g | a_r]       (B, 4H)
        i_t = sigmoid(a_i)            input gate
        f_t = sigmoid(a_f)            forget gate
        g_t = tanh(a_g)               candidate
        r_t = sigmoid(a_r)            read (output) gate
        m_t = f_t * m_{t-1} + i_t * g_t                              memory cell  (B, H)
        h_t = r_t * tanh(m_t)                                        output       (B, H)

    (The memory cell is often written c; here c is the output bias, so it is m.) Backward, with
    dh_t = dE/dh_t from the layer above plus dA_{t+1} W^T from step t+1, and dm_{T+1} = 0:

        dm_t  = dh_t * r_t * (1 - tanh(m_t)^2) + dm_{t+1} * f_{t+1}
        da_i  = dm_t * g_t * i_t (1 - i_t)
        da_f  = dm_t * m_{t-1} * f_t (1 - f_t)
        da_g  = dm_t * i_t * (1 - g_t^2)
        da_r  = dh_t * tanh(m_t) * r_t (1 - r_t)
        dh_{t-1} += da_t W^T

    The gate derivatives i (1 - i), ..., 1 - g^2 do not depend on the gradient, so they are
    computed for all t at once before the loop. Initialization as in ``Stacked.initialize``: each of the four
    (H, H) blocks of W an independent random orthogonal matrix; b zero except the forget block,
    b_f = 1, so that the cell starts out remembering.
    """

    cell = "lstm"
    gates = 4
    blocks = 2

    def _initial_bias(self) -> np.ndarray:
        H = self.hidden_size
        b = np.zeros(4 * H)
        b[H : 2 * H] = 1.0  # forget gate
        return b

    def _layer_forward(self, A, s0_l, W, s_out):
        T, B, GH = A.shape
        H = GH // 4
        h = np.empty((T + 1, B, H), dtype=self.dtype)
        m = np.empty((T + 1, B, H), dtype=self.dtype)
        h[0], m[0] = s0_l[:, :H], s0_l[:, H:]
        tanh_m = np.empty((T, B, H), dtype=self.dtype)
        ig = np.empty((B, H), dtype=self.dtype)
        scale = np.full(GH, -1.0, dtype=self.dtype)
        scale[2 * H : 3 * H] = -2.0  # the g block: tanh(a) = 2 sigmoid(2a) - 1
        with np.errstate(over="ignore"):
            for t in range(T):
                a = A[t]  # (B, 4H), becomes [i | f | g | r]
                a += h[t] @ W  # a_t = x_t U + b + h_{t-1} W
                _exp_gates_(a, scale)  # i, f, r = sigmoid; g block = sigmoid(2 a_g)
                g = a[:, 2 * H : 3 * H]
                g *= 2.0
                g -= 1.0  # g_t = tanh(a_g)
                np.multiply(a[:, H : 2 * H], m[t], out=m[t + 1])
                np.multiply(a[:, :H], g, out=ig)
                m[t + 1] += ig  # m_t = f_t * m_{t-1} + i_t * g_t
                np.tanh(m[t + 1], out=tanh_m[t])
                np.multiply(a[:, 3 * H :], tanh_m[t], out=h[t + 1])  # h_t = r_t * tanh(m_t)
        s_out[:, :H], s_out[:, H:] = h[T], m[T]
        return h, (h, A, m, tanh_m)

    def _layer_backward(self, dh, cache, W):
        h, gate, m, tanh_m = cache  # gate (T, B, 4H) = [i | f | g | r]
        T, B, GH = gate.shape
        H = GH // 4
        # The gate derivatives of every step in two full passes: sigmoid' = s (1 - s) for i, f,
        # r, then 1 - g^2 over the g block.
        D = np.subtract(1.0, gate)
        D *= gate
        D_g = D[..., 2 * H : 3 * H]
        np.multiply(gate[..., 2 * H : 3 * H], gate[..., 2 * H : 3 * H], out=D_g)
        np.subtract(1.0, D_g, out=D_g)
        dm_dh = tanh_m * tanh_m
        np.subtract(1.0, dm_dh, out=dm_dh)
        dm_dh *= gate[..., 3 * H :]  # r_t * (1 - tanh(m_t)^2), all t
        dA = np.empty_like(gate)
        WT = np.ascontiguousarray(W.T)
        dm = np.empty((B, H), dtype=self.dtype)
        tmp = np.empty((B, H), dtype=self.dtype)
        for t in range(T - 1, -1, -1):
            dh_t, G, dG = dh[t], gate[t], dA[t]  # dG: first d(i, f, g, r), then da_t in place
            if t < T - 1:
                dh_t += dA[t + 1] @ WT  # dh_t += da_{t+1} W^T
                dm *= gate[t + 1, :, H : 2 * H]
                np.multiply(dh_t, dm_dh[t], out=tmp)
                dm += tmp  # dm_t = dh_t r_t (1 - tanh(m_t)^2) + dm_{t+1} f_{t+1}
            else:
                np.multiply(dh_t, dm_dh[t], out=dm)
            np.multiply(dm, G[:, 2 * H : 3 * H], out=dG[:, :H])  # di = dm_t g_t
            np.multiply(dm, m[t], out=dG[:, H : 2 * H])  # df = dm_t m_{t-1}
            np.multiply(dm, G[:, :H], out=dG[:, 2 * H : 3 * H])  # dg = dm_t i_t
            np.multiply(dh_t, tanh_m[t], out=dG[:, 3 * H :])  # dr = dh_t tanh(m_t)
            dG *= D[t]  # da_i, da_f, da_g, da_r
        return dA, dA

    def _layer_step(self, ax, s_l, W):
        H = self.hidden_size
        h, m = s_l[:, :H], s_l[:, H:]
        a = ax + h @ W
        i, f = sigmoid(a[:, :H]), sigmoid(a[:, H : 2 * H])
        g, r = np.tanh(a[:, 2 * H : 3 * H]), sigmoid(a[:, 3 * H :])
        m = f * m + i * g
        h = r * np.tanh(m)
        return h, np.hstack([h, m])


class GRU(Stacked):
    """Gated recurrent unit layers (reset gate r, update gate z, candidate n), stacked, with dropout.

        a_t = x_t U + b  = [a_r | a_z | a_n]        w_t = h_{t-1} W  = [w_r | w_z | w_n]   (B, 3H)
        r_t = sigmoid(a_r + w_r)                    reset gate
        z_t = sigmoid(a_z + w_z)                    update gate
        n_t = tanh(a_n + r_t * w_n)                 candidate
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}       output and state                     (B, H)

    The reset gate multiplies h_{t-1} W_n after the product (as in cuDNN and PyTorch), so one
    (B, H) @ (H, 3H) product gives all three recurrent terms of a step. Backward, with
    dh_t = dE/dh_t from the layer above plus from step t+1:

        da_n = dh_t * (1 - z_t) * (1 - n_t^2)
        da_z = dh_t * (h_{t-1} - n_t) * z_t (1 - z_t)
        da_r = da_n * w_n * r_t (1 - r_t)
        dw_t = [da_r | da_z | da_n * r_t]           (dE/d(h_{t-1} W))
        dh_{t-1} += dh_t * z_t + dw_t W^T

    dU and db come from da_t = [da_r | da_z | da_n], dW from dw_t. Initialization as in
    ``Stacked.initialize``: each of the three (H, H) blocks of W an independent random
    orthogonal matrix, b zero.
    """

    cell = "gru"
    gates = 3
    blocks = 1

    def _layer_forward(self, A, s0_l, W, s_out):
        T, B, GH = A.shape
        H = GH // 3
        h = np.empty((T + 1, B, H), dtype=self.dtype)
        h[0] = s0_l
        w = np.empty((T, B, GH), dtype=self.dtype)  # w_t = h_{t-1} W, kept for backward
        tmp = np.empty((B, H), dtype=self.dtype)
        minus_one = self.dtype.type(-1.0)
        with np.errstate(over="ignore"):
            for t in range(T):
                np.matmul(h[t], W, out=w[t])  # w_t = h_{t-1} W
                rz = A[t, :, : 2 * H]
                rz += w[t, :, : 2 * H]
                _exp_gates_(rz, minus_one)  # r_t, z_t = sigmoid(a_r + w_r), sigmoid(a_z + w_z)
                n = A[t, :, 2 * H :]
                np.multiply(rz[:, :H], w[t, :, 2 * H :], out=tmp)
                n += tmp
                np.tanh(n, out=n)  # n_t = tanh(a_n + r_t * w_n)
                np.subtract(h[t], n, out=tmp)
                tmp *= rz[:, H:]
                np.add(n, tmp, out=h[t + 1])  # h_t = n_t + z_t (h_{t-1} - n_t)
        s_out[...] = h[T]
        return h, (h, A, w)

    def _layer_backward(self, dh, cache, W):
        h, gate, w = cache  # gate (T, B, 3H) = [r | z | n]
        T, B, GH = gate.shape
        H = GH // 3
        # The gate derivatives of every step in two full passes: sigmoid' = s (1 - s) for r, z,
        # then 1 - n^2 over the n block.
        D = np.subtract(1.0, gate)
        D *= gate
        D_n = D[..., 2 * H :]
        np.multiply(gate[..., 2 * H :], gate[..., 2 * H :], out=D_n)
        np.subtract(1.0, D_n, out=D_n)
        dA = np.empty_like(gate)  # [da_r | da_z | da_n]
        dR = np.empty_like(gate)  # dw_t = [da_r | da_z | da_n * r_t]
        WT = np.ascontiguousarray(W.T)
        dh_direct = np.empty((B, H), dtype=self.dtype)
        for t in range(T - 1, -1, -1):
            dh_t, G, dG = dh[t], gate[t], dA[t]
            if t < T - 1:
                dh_t += dh_direct
                dh_t += dR[t + 1] @ WT  # dh_t += dh_{t+1} z_{t+1} + dw_{t+1} W^T
            np.subtract(h[t], G[:, 2 * H :], out=dG[:, H : 2 * H])
            dG[:, H : 2 * H] *= dh_t  # dz = dh_t (h_{t-1} - n_t)
            np.subtract(1.0, G[:, H : 2 * H], out=dG[:, 2 * H :])
            dG[:, 2 * H :] *= dh_t  # dn = dh_t (1 - z_t)
            dG[:, H:] *= D[t, :, H:]  # da_z, da_n
            da_n = dG[:, 2 * H :]
            np.multiply(da_n, w[t, :, 2 * H :], out=dG[:, :H])
            dG[:, :H] *= D[t, :, :H]  # da_r = da_n w_n r_t (1 - r_t)
            dR[t, :, : 2 * H] = dG[:, : 2 * H]
            np.multiply(da_n, G[:, :H], out=dR[t, :, 2 * H :])  # dw_n = da_n r_t
            np.multiply(dh_t, G[:, H : 2 * H], out=dh_direct)
        return dA, dR

    def _layer_step(self, ax, s_l, W):
        H = self.hidden_size
        w = s_l @ W
        r = sigmoid(ax[:, :H] + w[:, :H])
        z = sigmoid(ax[:, H : 2 * H] + w[:, H : 2 * H])
        n = np.tanh(ax[:, 2 * H :] + r * w[:, 2 * H :])
        h = (1.0 - z) * n + z * s_l
        return h, h


MODELS = {"rnn": StackedRNN, "lstm": LSTM, "gru": GRU}
_REQUIRED = ("cell", "vocab_size", "hidden_size")
_OPTIONAL = {"num_layers": 1, "embedding_size": None, "dropout": 0.0}
_OUTPUT = ("output", "class_of", "direct")  # the output layer's settings (charrnn.output.make_head)


def build_model(config: dict, seed: int | None = 0, dtype=np.float32) -> Model:
    """The network a config describes, freshly initialized from ``seed`` (None: zero weights,
    for a checkpoint about to fill them, without the cost of initializing).

    config: {"cell": "rnn" | "lstm" | "gru", "vocab_size": K, "hidden_size": H, and optionally
    "num_layers": L (1), "embedding_size": E or None (None), "dropout": p (0.0)} -- exactly what
    ``config()`` of every model returns. Cell "rnn" with one layer, no embedding and no dropout
    gives ``model.RNN``; anything else a class of this module. Unknown or missing keys, an
    unknown cell or bad values raise ValueError.
    """
    unknown = sorted(set(config) - set(_REQUIRED) - set(_OPTIONAL) - set(_OUTPUT))
    if unknown:
        raise ValueError(f"unknown model setting(s): {', '.join(unknown)}")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ValueError(f"the model config lacks {', '.join(missing)}")
    cell = config["cell"]
    if cell not in MODELS:
        raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
    options = {k: config.get(k, default) for k, default in _OPTIONAL.items()}
    output = {k: config[k] for k in _OUTPUT[:2] if k in config}
    direct = config.get("direct")
    plain = options["num_layers"] == 1 and options["embedding_size"] is None and options["dropout"] == 0.0
    if cell == "rnn" and plain and not isinstance(options["num_layers"], bool):
        return RNN(config["vocab_size"], config["hidden_size"], seed=seed, dtype=dtype, output=output, direct=direct)  # the plain case
    return MODELS[cell](config["vocab_size"], config["hidden_size"], seed=seed, dtype=dtype, output=output, direct=direct, **options)
