"""Optimizers, gradient clipping and learning-rate schedules, on flat parameter vectors.

Every optimizer updates ``theta`` in place from a gradient ``g`` of the same shape (the flat
vectors of ``charrnn.model.Model``), so one update is a handful of vectorized operations
whatever the number of parameter arrays. Their state is a dict of arrays and numbers
(``state_dict``/``load_state_dict``) that a checkpoint stores and restores exactly.
"""

from __future__ import annotations

import math

import numpy as np


def clip_grad_norm_(g: np.ndarray, max_norm: float | None) -> float:
    """Scale ``g`` in place so its global L2 norm is at most ``max_norm``; returns the norm before.

    ``max_norm`` None or <= 0 disables clipping (the norm is still returned).
    """
    norm = float(np.sqrt(np.dot(g, g)))  # BLAS dot accumulates float32 well enough for a clip
    if max_norm and max_norm > 0 and norm > max_norm:
        g *= max_norm / (norm + 1e-12)
    return norm


class Optimizer:
    """Base class: ``step(theta, g, lr)`` updates theta in place; the state is saved exactly."""

    name = "base"

    def __init__(self, weight_decay: float = 0.0):
        self.weight_decay = float(weight_decay)  # decoupled (AdamW-style): theta -= lr * wd * theta
        self.t = 0  # number of steps taken

    def step(self, theta: np.ndarray, g: np.ndarray, lr: float) -> None:
        self.t += 1
        if self.weight_decay:
            theta *= 1.0 - lr * self.weight_decay
        self._update(theta, g, lr)

    def _update(self, theta: np.ndarray, g: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def _buffers(self) -> dict[str, np.ndarray]:
        return {}

    def hyperparameters(self) -> dict:
        return {"weight_decay": self.weight_decay}

    def state_dict(self) -> dict:
        """{"name", "t", "hyperparameters", "buffers": {name: array}}, enough to resume exactly."""
        return {
            "name": self.name,
            "t": self.t,
            "hyperparameters": self.hyperparameters(),
            "buffers": {k: v.copy() for k, v in self._buffers().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (buffers must match the current shapes)."""
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")
        self.t = int(state["t"])
        for k, buf in self._buffers().items():
            saved = np.asarray(state["buffers"][k])
            if saved.shape != buf.shape:
                raise ValueError(f"optimizer buffer {k} has shape {saved.shape}, expected {buf.shape}")
            buf[...] = saved


class SGD(Optimizer):
    """SGD with (heavy-ball) momentum: ``m = mu m + g;  theta -= lr m``."""

    name = "sgd"

    def __init__(self, size: int, dtype=np.float32, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(weight_decay)
        self.momentum = float(momentum)
        self.m = np.zeros(size, dtype=dtype)

    def _update(self, theta, g, lr):
        self.m *= self.momentum
        self.m += g
        theta -= lr * self.m

    def _buffers(self):
        return {"m": self.m}

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum}


class Adagrad(Optimizer):
    """Adagrad, the classic char-rnn choice: ``G += g^2;  theta -= lr g / sqrt(G + eps)``."""

    name = "adagrad"

    def __init__(self, size: int, dtype=np.float32, eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(weight_decay)
        self.eps = float(eps)
        self.G = np.zeros(size, dtype=dtype)

    def _update(self, theta, g, lr):
        self.G += g * g
        theta -= lr * g / np.sqrt(self.G + self.eps)

    def _buffers(self):
        return {"G": self.G}

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps": self.eps}


class Adam(Optimizer):
    """Adam with bias correction; with ``weight_decay`` it is AdamW (decoupled decay).

    ``m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  theta -= lr mhat / (sqrt(vhat) + eps)``.
    """

    name = "adam"

    def __init__(
        self,
        size: int,
        dtype=np.float32,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(weight_decay)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m = np.zeros(size, dtype=dtype)
        self.v = np.zeros(size, dtype=dtype)
        self._work = np.empty(size, dtype=dtype)  # scratch: no fresh allocation per step

    def _update(self, theta, g, lr):
        b1, b2, m, v, work = self.beta1, self.beta2, self.m, self.v, self._work
        m *= b1
        np.multiply(g, 1.0 - b1, out=work)
        m += work  # m = b1 m + (1 - b1) g
        v *= b2
        np.multiply(g, g, out=work)
        work *= 1.0 - b2
        v += work  # v = b2 v + (1 - b2) g^2
        step = lr * math.sqrt(1.0 - b2**self.t) / (1.0 - b1**self.t)  # bias correction folded in
        np.sqrt(v, out=work)
        work += self.eps * math.sqrt(1.0 - b2**self.t)
        np.divide(m, work, out=work)
        work *= step
        theta -= work

    def _buffers(self):
        return {"m": self.m, "v": self.v}

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS = {"adam": Adam, "adagrad": Adagrad, "sgd": SGD}


def make_optimizer(name: str, size: int, dtype=np.float32, weight_decay: float = 0.0, **kwargs) -> Optimizer:
    """An optimizer by name (``adam``, ``adagrad`` or ``sgd``) for a flat vector of ``size``."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}") from None
    return cls(size, dtype=dtype, weight_decay=weight_decay, **kwargs)


SCHEDULES = ("constant", "cosine", "exponential")


def learning_rate(
    step: int,
    base_lr: float,
    schedule: str = "constant",
    total_steps: int | None = None,
    warmup_steps: int = 0,
    min_lr_fraction: float = 0.1,
    decay_rate: float = 0.5,
    decay_every: int = 1000,
    progress: float | None = None,
) -> float:
    """The learning rate for step ``step`` (0-based): linear warm-up, then the schedule.

    constant: base_lr. cosine: from base_lr down to base_lr * min_lr_fraction at total_steps, or
    along ``progress`` (the fraction of a run's budget done, in [0, 1]) when that is given
    instead; with neither, constant. exponential: base_lr * decay_rate^(step/decay_every),
    never below base_lr * min_lr_fraction.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    floor = base_lr * min_lr_fraction
    if schedule == "cosine" and (total_steps or progress is not None):
        if total_steps:
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0.0, progress))
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "exponential":
        return max(floor, base_lr * decay_rate ** ((step - warmup_steps) / decay_every))
    return base_lr
