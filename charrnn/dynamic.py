"""Dynamic evaluation: the model keeps learning from the text it is scoring.

The text is read in chunks of T tokens, in order. Each chunk is first *scored* with the current
weights, and only then the model takes one gradient step on that chunk, so no token is ever seen
before it is predicted: the score is an honest prediction score, as a compressor's would be.
Recurring names, phrases and style within the text are picked up as they appear.

The update (after Krause et al., 2018, "Dynamic evaluation of neural sequence models") is an
RMS-normalized gradient step plus a decay that pulls the weights back towards the trained ones,
so the model adapts to recent text without forgetting what it learned in training:

    v     <- beta v + (1 - beta) g^2                 running mean square of the gradient
    theta <- theta - lr g / (sqrt(v) + eps) + decay (theta_0 - theta)

A model with n-gram direct connections (``charrnn.direct``) also updates its tables, with their
own sparse Adagrad step ``direct_lr``: the text's own n-grams are learnt as they recur.

With ``num_streams`` = 1 (the default) the whole text is one stream read front to back, which is
what adaptation needs; more streams are faster but each update then mixes far-apart places.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from charrnn.evaluate import evaluate
from charrnn.optim import clip_grad_norm_


@dataclass
class DynamicConfig:
    """Settings of dynamic evaluation (defaults chosen by measurement on tiny-Shakespeare)."""

    lr: float | None = None  # step size of the RMS-normalized update; None: by cell (below)
    decay: float = 0.0  # pull towards the trained weights per update, in [0, 1)
    beta: float = 0.99  # running mean square of the gradient
    eps: float = 1e-8
    seq_len: int = 50  # T: tokens scored between two updates
    num_streams: int = 1  # B: parallel streams of the text
    clip: float = 5.0  # global gradient-norm clip per update
    direct_lr: float = 1.0  # Adagrad step of the n-gram tables per update (models that have them)

    def validate(self) -> None:
        if self.lr is not None and not self.lr > 0:
            raise ValueError("dynamic learning rate must be positive")
        if not 0 <= self.decay < 1:
            raise ValueError("dynamic decay must be in [0, 1)")
        if not self.direct_lr > 0:
            raise ValueError("dynamic direct learning rate must be positive")
        if self.seq_len < 1 or self.num_streams < 1:
            raise ValueError("dynamic seq-len and streams must be positive")


# Step sizes measured on tiny-Shakespeare's validation text, models trained 10 minutes
# (benchmarks/bench_quality.py --dynamic-lr 1e-4 3e-4 1e-3): the tanh RNN is best at 1e-4
# (2.335 -> 2.189 bpc; 3e-4 gives 2.262, 1e-3 2.830), the LSTM at 1e-3 (2.315 -> 2.162 bpc;
# 1e-4 gives 2.213).
DEFAULT_LR = {"rnn": 1e-4, "lstm": 1e-3, "gru": 1e-3}
# With hashed n-gram direct connections (the default since), measured on 5-minute models with
# direct_lr 0.2: the tanh RNN with the full softmax is best at 3e-4 (tiny-Shakespeare 1.989 bpc;
# 1e-4 with direct_lr 0.1 1.999, 1e-3 2.020), with the class head at 1e-3 (sanguo 6.178; 3e-4
# with direct_lr 0.1 6.237, 1e-4 6.322). The tables' step, with those: tiny-Shakespeare's
# 10-minute default model 0.2 1.993, 0.3 1.979, 0.5 1.963, 1.0 1.953, 2.0 2.002; sanguo's
# 5-minute model 0.2 6.178, 0.5 6.123, 1.0 6.071, 2.0 6.068. Adagrad's sums, carried over from
# training, already make the steps of well-known rows small: a large step adapts the rest.
DIRECT_LR = {"full": 3e-4, "classes": 1e-3}


def default_lr(model) -> float:
    """The measured best dynamic-evaluation step size for the model's cell and output layer."""
    if getattr(model, "direct", None) is not None and model.config().get("cell", "rnn") == "rnn":
        return DIRECT_LR[model.head.kind]
    return DEFAULT_LR.get(model.config().get("cell", "rnn"), 1e-4)


class DynamicUpdater:
    """The per-chunk update; call it after a chunk is scored: ``updater(inputs, targets, s0)``."""

    def __init__(self, model, config: DynamicConfig):
        config.validate()
        if config.lr is None:
            from dataclasses import replace

            config = replace(config, lr=default_lr(model))
        self.model, self.config = model, config
        self.theta0 = model.theta.copy()
        self.v = np.zeros_like(model.theta)
        self.updates = 0

    def __call__(self, inputs: np.ndarray, targets: np.ndarray, s0: np.ndarray) -> None:
        c, theta = self.config, self.model.theta
        _, g, _ = self.model.loss_and_flat_grad(inputs, targets, s0)
        direct = self.model.direct
        if not np.isfinite(g).all():
            if direct is not None:
                direct.pending = []
            return  # never let one odd chunk poison the weights
        if direct is not None:  # the n-gram tables learn the text's own n-grams as it goes (as PPM does)
            direct.update(c.direct_lr)
        clip_grad_norm_(g, c.clip)
        self.v *= c.beta
        self.v += (1 - c.beta) * g * g
        self.updates += 1
        v_hat = self.v / (1 - c.beta**self.updates)
        theta -= c.lr * g / (np.sqrt(v_hat) + c.eps)
        if c.decay:
            theta += c.decay * (self.theta0 - theta)


def dynamic_evaluate(
    model, tokenizer, ids: np.ndarray, config: DynamicConfig | None = None, scored_chars: int | None = None
) -> dict:
    """Score ``ids`` (N,) with dynamic evaluation; the same metrics as ``evaluate`` (``scored_chars``
    as there).

    ``model``'s weights change as it reads (pass a copy to keep the original); the returned dict
    has the keys of ``charrnn.evaluate.METRICS`` plus ``dynamic_updates``.
    """
    config = config or DynamicConfig()
    updater = DynamicUpdater(model, config)
    metrics = evaluate(
        model, tokenizer, ids, num_streams=config.num_streams, seq_len=config.seq_len,
        scored_chars=scored_chars, after_chunk=updater,
    )
    metrics["dynamic_updates"] = updater.updates
    return metrics
