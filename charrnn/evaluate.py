"""Scoring a model on a text: loss, bits per token and per character, perplexity, top-1/top-5 accuracy.

Every token of the text except the first is predicted from everything before it, exactly once:
the first token is not scored (nothing precedes it), so a text of N tokens gives N - 1
predictions. The text is cut into ``num_streams`` contiguous streams read ``seq_len`` steps at a
time (``charrnn.data.stream_chunks``), the state carried from chunk to chunk, so each prediction
sees the whole text before it within its stream (the first prediction of each stream starts from
the zero state). It is a forward pass only, one batch of B streams at a time.

Unknown tokens (id 0: characters or words the vocabulary lacks) are scored like any other: a
target with id 0 counts as correct when the model gives the unknown token its probability.
``unknown_tokens`` says how many targets were unknown (``unknown_chars``: how many characters of
text they stand for), so that a low loss on a text full of unknowns is not mistaken for a good
model.

Per token and per character: ``loss_nats``, ``bits_per_token``, ``perplexity`` and the accuracies
are per scored token (a word, for a word-level model); ``bits_per_char`` spreads the same total
over the characters of text those tokens cover, so models of the same text at different levels
compare: bits_per_char x chars == bits_per_token x tokens. At the char level the two are equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from charrnn.data import stream_chunks

METRICS = (
    "loss_nats", "bits_per_char", "bits_per_token", "perplexity", "accuracy_top1", "accuracy_top5",
    "chars", "tokens", "unknown_chars", "unknown_tokens",
)
MAX_FLOATS = 1 << 23  # bound on B x T x K probabilities held at once (32 MiB in float32)


def evaluate(
    model,
    tokenizer,
    ids: np.ndarray,
    *,
    num_streams: int = 64,
    seq_len: int = 256,
    scored_chars: int | None = None,
    after_chunk: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> dict:
    """Score ``model`` on the token ids (N,) of a text; returns a dict with the keys of ``METRICS``.

    loss_nats: mean -ln p(target), nats per token; bits_per_token = loss_nats / ln 2;
    perplexity = exp(loss_nats), per token; accuracy_top1/5: the fraction of targets that fewer
    than 1/5 other tokens reach (a tie counts against the target, so a uniform model is never
    right); tokens: the number of predictions (N - 1); unknown_tokens: how many targets were the
    unknown id 0; chars: the characters of text the targets cover; bits_per_char = total bits /
    chars; unknown_chars: the characters the unknown targets cover.

    ``scored_chars`` is that number of characters, the text's length less its first token's.
    Without it, each token counts the characters of its text in the vocabulary and each unknown
    one counts one: exact at the char level, and at the word level when no target is unknown.
    ``tokenizer`` (or None) checks that it matches the model and gives the tokens' lengths
    (without it, every token counts one character). ``after_chunk``,
    if given, is called as ``after_chunk(inputs, targets, s0)`` after each chunk (B, T) has been
    scored and before the next: the hook for dynamic evaluation, which trains on a chunk once it
    has been scored (it may update ``model.theta`` in place).
    """
    ids = np.asarray(ids) if not isinstance(ids, np.ndarray) else ids
    if len(ids) < 2:
        raise ValueError("the text must hold at least 2 tokens to score (the first is never scored)")
    K = getattr(model, "vocab_size", None)
    if tokenizer is not None and K is not None and tokenizer.vocab_size != K:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model predicts {K}")
    if num_streams < 1 or seq_len < 1:
        raise ValueError("num_streams and seq_len must be at least 1")
    B = max(1, min(int(num_streams), len(ids) - 1))
    if K is not None:  # keep B x T x K within MAX_FLOATS; the result does not depend on T
        seq_len = max(1, min(int(seq_len), MAX_FLOATS // (B * K)))

    nats = 0.0
    top1 = top5 = unknown = count = 0
    s = None
    for inputs, targets in stream_chunks(ids, num_streams, seq_len):  # (B, T) each
        B, T = inputs.shape
        if s is None or s.shape[0] != B:
            s = model.zero_state(B)  # a new set of streams (the tail) starts afresh
        s0 = s
        p, _, s = model.forward(inputs, s0)  # p (T*B, K), time-major
        y = targets.T.reshape(-1)  # (T*B,), the same order as the rows of p
        p_y = p[np.arange(len(y)), y]  # (T*B,)
        nats -= float(np.log(np.maximum(p_y, np.finfo(p.dtype).tiny)).sum(dtype=np.float64))
        rank = (p >= p_y[:, None]).sum(axis=1) - 1  # other tokens ranked at or above the target
        top1 += int((rank < 1).sum())
        top5 += int((rank < 5).sum())
        unknown += int((y == 0).sum())
        count += len(y)
        if after_chunk is not None:
            after_chunk(inputs, targets, s0)

    known_chars = count - unknown  # what the known targets cover: one character each, or ...
    if tokenizer is not None and tokenizer.level != "char":  # ... the length of each one's text
        lengths = np.array([len(t) for t in tokenizer.tokens], dtype=np.int64)
        lengths[0] = 0
        known_chars = int(lengths[ids[1:]].sum())  # every target is ids[1:], each scored once
    chars = known_chars + unknown if scored_chars is None else int(scored_chars)
    if chars < known_chars + unknown:
        raise ValueError(f"scored_chars ({chars}) is fewer than the characters of the scored tokens")
    loss = nats / count
    return {
        "loss_nats": loss,
        "bits_per_char": nats / chars / math.log(2),  # the same float as bits_per_token when chars == count
        "bits_per_token": loss / math.log(2),
        "perplexity": math.exp(loss),  # finite: p_y >= the smallest float, so loss <= 709
        "accuracy_top1": top1 / count,
        "accuracy_top5": top5 / count,
        "chars": chars,
        "tokens": count,
        "unknown_chars": chars - known_chars,
        "unknown_tokens": unknown,
    }
