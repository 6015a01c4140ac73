"""What the tests share: small texts (English, Chinese, a mix with emoji and accents), and
a check that a model can learn."""

ENGLISH = "The quick brown fox jumps over the lazy dog. " * 4
CHINESE = "我喜欢学习数学。我喜欢学习语言，也喜欢写字。"
MIXED = "Hello, 世界! 🙂 naïve café — 我喜欢 Python 3.11\n\ttabs"


def overfit_repeated_string(model, steps: int = 300) -> float:
    """Train ``model`` (built for the vocabulary of ``REPEATED``) with Adam on that repeated
    CJK/English string; returns the last training loss, in nats per character."""
    from charrnn.data import Batches
    from charrnn.optim import Adam, clip_grad_norm_

    ids = REPEATED_TOKENIZER.encode(REPEATED)
    opt = Adam(model.num_params)
    batches = Batches(ids, batch_size=4, seq_len=25)
    s = model.zero_state(4)
    for step in range(steps):
        k = step % batches.num_chunks
        if k == 0:
            s = model.zero_state(4)
        x, y = batches.chunk(k)
        loss, g, s = model.loss_and_flat_grad(x, y, s)
        clip_grad_norm_(g, 5.0)
        opt.step(model.theta, g, 0.01)
    return loss


REPEATED = "我喜欢学习数学, and I like maths. " * 40


def _tokenizer():
    from charrnn.tokenizer import Tokenizer

    return Tokenizer.fit(REPEATED)


REPEATED_TOKENIZER = _tokenizer()


def one_and_two_workers(monkeypatch, run):
    """``run()`` with one stream worker, then with two (groups of 2 streams allowed): (one, two)."""
    from charrnn import threads

    monkeypatch.setattr("charrnn.model.MIN_STREAMS_PER_WORKER", 2)
    threads.set_workers(1)
    one = run()
    threads.set_workers(2)
    try:
        return one, run()
    finally:
        threads.set_workers(1)
