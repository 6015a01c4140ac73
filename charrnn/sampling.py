"""Generating text and predicting continuations with a trained model.

Two uses share the same machinery:

* **sampling** (``generate``, ``generate_many``): continue a prompt token by token, streaming
  each new token as soon as it is drawn;
* **prediction** (``next_candidates``, ``beam_search``): the most probable next token, or the
  most probable continuations of N tokens (``"我喜欢"`` -> ``"学习"``, ``"数学"``, ...).

The prompt is read in one vectorized forward pass (in chunks of ``PROMPT_CHUNK`` tokens, so a
prompt of many megabytes works in bounded memory); only the new tokens are produced one
``model.step`` at a time.

Policies, in one place:

* **Empty prompt.** The model needs one input token to predict from. With an empty prompt it
  starts from the zero state and reads a newline (as at the start of a paragraph), or a space if
  the vocabulary has no newline, or else the token with id 1. That token is not part of the
  output.
* **Unknown prompt tokens** (not in the vocabulary), chosen by ``unknown``: ``"replace"`` (the
  default) reads them as the unknown id 0, ``"skip"`` drops them, ``"error"`` raises ValueError
  naming them. The library never prints; ``unknown_prompt_tokens`` lets a front end warn.
* **The unknown token is never produced**: sampling masks id 0 out and renormalizes (a model
  with the class-factored head samples at temperature 1 in two stages, class then token, at
  H (C + class size) a step instead of H K, from exactly the same distribution); prediction
  leaves it out of the candidates (the probabilities it reports are the model's own, not
  renormalized, so they are honest: they sum to at most 1).
* **Stop string.** With ``stop``, a sample ends as soon as its generated text (not counting the
  prompt) contains the stop string; the stop string is *included* in the output, and nothing
  after it is (a word-level token that runs past it is cut at its end).
* **Randomness.** Everything random comes from ``rng`` (a ``np.random.Generator`` or a seed):
  the same seed gives the same text. Sampling uses one uniform number per sample and step
  (inverse-CDF), so ``num_samples`` > 1 draws different samples in parallel, each of them
  reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

UNKNOWN_POLICIES = ("replace", "skip", "error")
PROMPT_CHUNK = 4096  # prompt tokens per forward pass: bounds memory at PROMPT_CHUNK x K floats


# -- the prompt -----------------------------------------------------------------------------------


def unknown_prompt_tokens(tokenizer, prompt: str) -> list[str]:
    """The distinct tokens of ``prompt`` that the vocabulary lacks, in order of first use."""
    return tokenizer.unknown_tokens(prompt)


def encode_prompt(tokenizer, prompt: str, unknown: str = "replace") -> np.ndarray:
    """The ids (N,) of ``prompt`` under an unknown-token policy (see the module docstring)."""
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, not {unknown!r}")
    if unknown == "error":
        missing = tokenizer.unknown_tokens(prompt)
        if missing:
            shown = ", ".join(repr(t) for t in missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise ValueError(f"the prompt holds {len(missing)} token(s) not in the vocabulary: {shown}")
    ids = np.asarray(tokenizer.encode(prompt), dtype=np.int64)
    if unknown == "skip":
        ids = ids[ids != 0]
    return ids


def start_token(tokenizer) -> int:
    """The id read before anything else when the prompt is empty: newline, else space, else 1."""
    for text in ("\n", " "):
        i = tokenizer.id_of(text)
        if i:
            return i
    return 1


def read_prompt(model, tokenizer, ids: np.ndarray, s=None):
    """Run the model over prompt ids (N,); returns (probs (1, K) of the next token, state (1, S)).

    All tokens but the last go through ``model.forward`` in chunks of ``PROMPT_CHUNK``; the last
    one goes through ``model.step``, which gives the probabilities of what follows. An empty
    prompt reads ``start_token`` from the zero state.
    """
    last, s = _read_all_but_last(model, tokenizer, ids, s)
    return model.step(last, s)


def read_prompt_state(model, tokenizer, ids: np.ndarray, s=None):
    """As ``read_prompt``, but stops before the output layer: returns ([s_t, 1] (1, H+1), the
    n-gram hashes (1, N) or None, state (1, S)), from which the head gives the next token's
    distribution."""
    last, s = _read_all_but_last(model, tokenizer, ids, s)
    return model.step_hidden(last, s)


def _read_all_but_last(model, tokenizer, ids, s):
    """The prompt's last id (1,) and the state (1, S) after reading all the ones before it."""
    if tokenizer.vocab_size < 2:
        raise ValueError("the vocabulary holds no token besides the unknown one")
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        ids = np.array([start_token(tokenizer)], dtype=np.int64)
    if s is None:
        s = model.zero_state(1)
    for a in range(0, len(ids) - 1, PROMPT_CHUNK):
        chunk = ids[a : min(a + PROMPT_CHUNK, len(ids) - 1)]
        _, _, s = model.forward(chunk[None, :], s)  # (1, T) -> only the last state is kept
    return ids[-1:], s


# -- turning probabilities into choices -----------------------------------------------------------


def check_sampling_options(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError on out-of-range options (a temperature below 0 or not finite, top_k below 1,
    top_p outside (0, 1])."""
    if not 0 <= temperature < float("inf"):  # also refuses NaN
        raise ValueError(f"temperature must be a finite number >= 0, not {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, not {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], not {top_p}")


def sampling_distribution(
    probs: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """The distribution to sample from, (B, K) float64 rows summing to 1.

    In order: the unknown id 0 is masked out; the temperature divides the log-probabilities
    (p ** (1/temperature), renormalized; below 1 sharpens, above 1 flattens); top_k keeps the k
    most probable ids (k clamped to K); top_p keeps the smallest set of most probable ids whose
    mass reaches top_p (the nucleus; the most probable id is always kept). Temperature 0 is
    greedy: all mass on the most probable id.
    """
    logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64), np.finfo(np.float64).tiny))
    logp[:, 0] = -np.inf  # never produce the unknown token
    B, K = logp.shape
    if temperature == 0:
        q = np.zeros_like(logp)
        q[np.arange(B), logp.argmax(axis=1)] = 1.0
        return q
    # Shift before dividing: the most probable id gets 0 and the others a finite or -inf score,
    # never NaN, however close to 0 the temperature is (a tiny one overflows to -inf: greedy).
    with np.errstate(over="ignore"):
        z = (logp - logp.max(axis=1, keepdims=True)) / temperature
    if top_k is not None and top_k < K:
        drop = np.argpartition(-z, top_k, axis=1)[:, top_k:]  # all but the k largest of each row
        np.put_along_axis(z, drop, -np.inf, axis=1)
    z -= z.max(axis=1, keepdims=True)
    q = np.exp(z)
    q /= q.sum(axis=1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-q, axis=1, kind="stable")  # (B, K), most probable first
        sorted_q = np.take_along_axis(q, order, axis=1)
        mass_before = np.cumsum(sorted_q, axis=1) - sorted_q  # mass of the ids ranked above
        keep_sorted = mass_before < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        q = np.where(keep, q, 0.0)
        q /= q.sum(axis=1, keepdims=True)
    return q


def draw(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One id per row of q (B, K) by inverse CDF, one uniform number per row; returns (B,) ints."""
    cdf = np.cumsum(q, axis=1)
    u = rng.random(len(q))[:, None] * cdf[:, -1:]
    ids = (cdf <= u).sum(axis=1)  # the first id whose cumulative mass exceeds u
    # Rounding can push u past the last nonzero mass: fall back to the most probable id there.
    bad = (ids >= q.shape[1]) | (q[np.arange(len(q)), np.minimum(ids, q.shape[1] - 1)] == 0)
    ids[bad] = q[bad].argmax(axis=1)
    return ids


def inverse_cdf(p: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows p (B, n) of nonnegative masses and u (B,) in [0, 1): the index i of each row
    whose cumulative interval [lower, lower + p_i) holds u times the row's total, and where u
    falls inside it, (u * total - lower) / p_i in [0, 1) -- itself a uniform number given i."""
    cdf = np.cumsum(p, axis=1)
    at = u * cdf[:, -1]
    i = (cdf <= at[:, None]).sum(axis=1)  # the first index whose cumulative mass exceeds at
    rows = np.arange(len(p))
    # Rounding can push at past the last nonzero mass: fall back to the most probable index.
    bad = (i >= p.shape[1]) | (p[rows, np.minimum(i, p.shape[1] - 1)] == 0)
    i[bad] = p[bad].argmax(axis=1)
    lower = cdf[rows, i] - p[rows, i]
    inside = np.clip((at - lower) / p[rows, i], 0.0, np.nextafter(1.0, 0.0))
    return i, inside


def draw_by_class(model, s1: np.ndarray, rng: np.random.Generator, g: np.ndarray | None = None) -> np.ndarray:
    """One id per row of s1 (B, H+1) from a model with the class head, at temperature 1, never
    the unknown id 0; returns (B,) ints. Costs H (C + |class drawn| + |class of id 0|) per row
    instead of H K. ``g`` (B, N): the n-gram hashes of a model with direct connections.

    With P = softmax(q) over classes and p_k = softmax(o within k), the distribution sampled is
    p(y) = P[k(y)] p_k(y) / (1 - p(0)), exactly what ``sampling_distribution`` gives at
    temperature 1: the unknown id's mass P[k0] p_k0(0) is taken out of its class k0 (P'[k0] =
    P[k0] (1 - p_k0(0))), the class is drawn from P' by inverse CDF, and the token within it by
    inverse CDF with id 0 masked. Both draws use one uniform number per row: where it fell
    inside the class's interval is uniform again, so the id drawn is the one a single inverse
    CDF over the tokens in class order would give.
    """
    head = model.head
    flat = model.theta[len(model.theta) - head.num_params :]  # the head's tail (model.head_part, quicker)
    k0 = int(head.class_of[0])
    j0 = int(head.where[0] - head.start[k0])  # the unknown id's column within its class
    if len(s1) == 1:
        return np.array([_draw_one_by_class(head, flat, s1, k0, j0, rng.random(), g)])
    P = head.class_probs(flat, s1, g)  # (B, C)
    p_k0 = head.member_probs(flat, s1, k0, g)  # (B, |k0|)
    p_k0[:, j0] = 0.0
    P[:, k0] *= p_k0.sum(axis=1)  # 1 - p_k0(0), computed from the masses that remain
    k, u = inverse_cdf(P, rng.random(len(s1)))
    x = np.empty(len(s1), dtype=np.int64)
    for cls in np.unique(k):
        rows = np.flatnonzero(k == cls)
        p = p_k0[rows] if cls == k0 else head.member_probs(flat, s1[rows], int(cls), None if g is None else g[rows])
        j, _ = inverse_cdf(p, u[rows])
        x[rows] = head.order[head.start[cls] + j]
    return x


def _draw_one_by_class(head, flat, s1, k0: int, j0: int, u: float, g=None) -> int:
    """``draw_by_class`` for one row (sampling one stream), with scalar bookkeeping: the same
    arithmetic, a few microseconds of NumPy calls instead of tens."""
    P = head.class_probs(flat, s1, g)[0]  # (C,)
    p_k0 = head.member_probs(flat, s1, k0, g)[0]  # (|k0|,)
    p_k0[j0] = 0.0
    P[k0] *= p_k0.sum()  # 1 - p_k0(0)
    k, u = _inverse_cdf_one(P, u)
    p = p_k0 if k == k0 else head.member_probs(flat, s1, k, g)[0]
    j, _ = _inverse_cdf_one(p, u)
    return int(head.order[head.start[k] + j])


def _inverse_cdf_one(p: np.ndarray, u: float) -> tuple[int, float]:
    """``inverse_cdf`` for one row p (n,): (index, where u fell inside its interval)."""
    cdf = np.cumsum(p)
    at = u * cdf[-1]
    i = int(cdf.searchsorted(at, side="right"))  # the first index whose cumulative mass exceeds at
    if i >= len(p) or p[i] == 0:  # rounding: the most probable index
        i = int(p.argmax())
    lower = cdf[i] - p[i]
    return i, min(max((at - lower) / p[i], 0.0), 1.0 - 2.0**-53)


def draws_by_class(model, temperature: float, top_k: int | None, top_p: float | None) -> bool:
    """Whether sampling takes the two-stage draw of ``draw_by_class``: a class head, and options
    that leave the distribution as it is (temperature 1, no top-k or top-p cut)."""
    head = getattr(model, "head", None)
    if head is None or head.kind != "classes":
        return False
    return temperature == 1.0 and (top_k is None or top_k >= head.vocab_size) and (top_p is None or top_p >= 1.0)


# -- sampling -------------------------------------------------------------------------------------


def generate_many(
    model,
    tokenizer,
    prompt: str,
    length: int,
    num_samples: int = 1,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    rng=None,
    stop: str | None = None,
    unknown: str = "replace",
) -> Iterator[list[str]]:
    """Continue ``prompt`` with ``num_samples`` samples drawn in parallel (one batch row each).

    Yields, for each new step, a list of ``num_samples`` token texts ("" for a sample that has
    already reached its stop string). Stops after ``length`` tokens, or as soon as every sample has
    met ``stop``. ``greedy`` (or temperature 0) always takes the most probable token. ``rng`` is a
    ``np.random.Generator`` or a seed (None: fresh entropy). See the module docstring for the
    policies on empty prompts, unknown tokens and the stop string.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, not {length}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, not {num_samples}")
    if stop == "":
        raise ValueError("the stop string must not be empty")
    check_sampling_options(temperature, top_k, top_p)
    if greedy:
        temperature = 0.0
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ids = encode_prompt(tokenizer, prompt, unknown)
    return _sample_steps(model, tokenizer, ids, length, num_samples, temperature, top_k, top_p, rng, stop)


def _sample_steps(model, tokenizer, ids, length, B, temperature, top_k, top_p, rng, stop):
    """The generator behind ``generate_many`` (split off so that option errors raise at call time)."""
    if length == 0:
        return
    by_class = draws_by_class(model, temperature, top_k, top_p)
    if by_class:  # two stages (class, then token): never the distribution over all K tokens
        s1, g, s = read_prompt_state(model, tokenizer, ids)  # (1, H+1), (1, N) or None, (1, S)
        s1, s = np.repeat(s1, B, axis=0), np.repeat(s, B, axis=0)  # (B, H+1), (B, S)
        g = None if g is None else np.repeat(g, B, axis=0)
    else:
        probs, s = read_prompt(model, tokenizer, ids)  # (1, K), (1, S)
        probs, s = np.repeat(probs, B, axis=0), np.repeat(s, B, axis=0)  # (B, K), (B, S)
    tokens = tokenizer.tokens
    done = np.zeros(B, dtype=bool)
    tails = [""] * B  # the last len(stop) - 1 characters generated, to find a stop string across tokens
    for n in range(length):
        if by_class:
            x = draw_by_class(model, s1, rng, g)  # (B,)
        else:
            x = draw(sampling_distribution(probs, temperature, top_k, top_p), rng)  # (B,)
        pieces = []
        for i in range(B):
            piece = "" if done[i] else tokens[x[i]]
            if stop is not None and piece:
                window = tails[i] + piece
                at = window.find(stop)
                if at >= 0:
                    piece = piece[: at + len(stop) - len(tails[i])]
                    done[i] = True
                else:
                    tails[i] = window[len(window) - (len(stop) - 1) :] if len(stop) > 1 else ""
            pieces.append(piece)
        yield pieces
        if done.all() or n == length - 1:
            return
        if by_class:
            s1, g, s = model.step_hidden(x, s)
        else:
            probs, s = model.step(x, s)


def generate(model, tokenizer, prompt: str, length: int, **options) -> Iterator[str]:
    """Continue ``prompt`` by up to ``length`` tokens, yielding each token's text as it is drawn.

    Keyword options as for ``generate_many`` (temperature, top_k, top_p, greedy, rng, stop,
    unknown). The prompt itself is not yielded.
    """
    steps = generate_many(model, tokenizer, prompt, length, 1, **options)  # options checked here
    return (pieces[0] for pieces in steps if pieces[0])


# -- prediction -----------------------------------------------------------------------------------


def next_candidates(model, tokenizer, text: str, top: int = 5, unknown: str = "replace") -> list[tuple[str, float]]:
    """The ``top`` most probable next tokens after ``text``: [(token_text, prob)], most probable first.

    The unknown token is left out; probabilities are the model's own (not renormalized).
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, not {top}")
    probs, _ = read_prompt(model, tokenizer, encode_prompt(tokenizer, text, unknown))
    p = np.asarray(probs[0], dtype=np.float64).copy()
    p[0] = -1.0  # below every real probability: never a candidate
    order = np.argsort(-p, kind="stable")[: min(top, len(p) - 1)]
    return [(tokenizer.tokens[i], float(p[i])) for i in order]


def beam_search(
    model,
    tokenizer,
    text: str,
    chars: int = 2,
    beam_width: int | None = None,
    top: int = 5,
    unknown: str = "replace",
) -> list[tuple[str, float]]:
    """The most probable continuations of ``text`` that are ``chars`` tokens long, by beam search.

    Returns up to ``top`` pairs (continuation_text, prob), most probable first, where prob is the
    product of the model's probabilities along the path (the unknown token is never on a path).
    At each step the ``beam_width`` best partial paths are kept (default: max(top, 16)); all beams
    advance together as one batch. With beam_width >= K - 1 the search is exact for chars <= 2.
    """
    if chars < 1:
        raise ValueError(f"chars must be at least 1, not {chars}")
    if top < 1:
        raise ValueError(f"top must be at least 1, not {top}")
    width = max(top, 16) if beam_width is None else beam_width
    if width < top:
        raise ValueError(f"beam_width ({width}) must be at least top ({top})")
    probs, s = read_prompt(model, tokenizer, encode_prompt(tokenizer, text, unknown))
    paths = np.zeros((1, 0), dtype=np.int64)  # (beams, n): the ids of each path so far
    score = np.zeros(1)  # (beams,): log-probability of each path
    for n in range(chars):
        logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64), np.finfo(np.float64).tiny))
        logp[:, 0] = -np.inf
        total = (score[:, None] + logp).ravel()  # (beams * K,): every one-token extension
        K = logp.shape[1]
        keep = min(width, int(np.isfinite(total).sum()))
        best = np.argpartition(-total, keep - 1)[:keep] if keep < len(total) else np.arange(len(total))
        best = best[np.argsort(-total[best], kind="stable")]
        beam, x = best // K, best % K
        paths = np.concatenate([paths[beam], x[:, None]], axis=1)
        score = total[best]
        if n < chars - 1:
            probs, s = model.step(x, s[beam])
    return [(tokenizer.decode(p), float(np.exp(sc))) for p, sc in zip(paths[:top], score[:top])]
