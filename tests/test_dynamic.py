"""Dynamic evaluation: scores before it learns, and adapts to text that repeats itself."""

import numpy as np
import pytest

from charrnn.dynamic import DynamicConfig, DynamicUpdater, dynamic_evaluate
from charrnn.evaluate import evaluate
from charrnn.model import RNN
from charrnn.tokenizer import Tokenizer

from samples import CHINESE


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghij我喜欢学习")
    phrase = "".join(rng.choice(alphabet, 40))  # a random phrase the model never trained on
    text = phrase * 12
    tok = Tokenizer.fit("".join(alphabet) + CHINESE)
    return RNN(tok.vocab_size, 32, seed=0), tok, tok.encode(text)


def test_dynamic_evaluation_adapts_to_a_repeating_text(setup):
    model, tok, ids = setup
    static = evaluate(model, tok, ids, num_streams=1, seq_len=20)
    dynamic = dynamic_evaluate(model, tok, ids, DynamicConfig(lr=1e-2, seq_len=20))
    assert dynamic["chars"] == static["chars"] == len(ids) - 1
    assert dynamic["dynamic_updates"] == int(np.ceil((len(ids) - 1) / 20))
    assert dynamic["bits_per_char"] < 0.8 * static["bits_per_char"]


def test_each_chunk_is_scored_before_it_is_trained_on(setup):
    """Chunk k's score depends only on chunks before it: change chunk k's targets' future and
    its own score must not move, while training on it must change the weights."""
    model, tok, ids = setup
    T = 20
    first = dynamic_evaluate(RNN(tok.vocab_size, 32, seed=0), tok, ids[: T + 1], DynamicConfig(lr=3e-3, seq_len=T))
    static_first = evaluate(RNN(tok.vocab_size, 32, seed=0), tok, ids[: T + 1], num_streams=1, seq_len=T)
    assert first["loss_nats"] == pytest.approx(static_first["loss_nats"], rel=1e-6)
    two = dynamic_evaluate(RNN(tok.vocab_size, 32, seed=0), tok, ids[: 2 * T + 1], DynamicConfig(lr=3e-3, seq_len=T))
    one_then_static = RNN(tok.vocab_size, 32, seed=0)
    updater = DynamicUpdater(one_then_static, DynamicConfig(lr=3e-3, seq_len=T))
    x, y = ids[None, :T], ids[None, 1 : T + 1]
    _, s = one_then_static.log_probs(x)
    updater(x, y, one_then_static.zero_state(1))
    logp, _ = one_then_static.log_probs(ids[None, T : 2 * T], s)
    second = -np.take_along_axis(logp[0], ids[T + 1 : 2 * T + 1, None], 1).sum()
    total = first["loss_nats"] * T + second
    assert two["loss_nats"] * 2 * T == pytest.approx(total, rel=1e-5)


def test_decay_pulls_back_to_the_trained_weights(setup):
    model, tok, ids = setup
    theta0 = model.theta.copy()
    free = RNN(tok.vocab_size, 32, seed=0)
    dynamic_evaluate(free, tok, ids, DynamicConfig(lr=3e-3, seq_len=20))
    held = RNN(tok.vocab_size, 32, seed=0)
    dynamic_evaluate(held, tok, ids, DynamicConfig(lr=3e-3, seq_len=20, decay=0.5))
    assert np.abs(held.theta - theta0).sum() < np.abs(free.theta - theta0).sum()


def test_bad_settings():
    with pytest.raises(ValueError):
        DynamicConfig(lr=0).validate()
    with pytest.raises(ValueError):
        DynamicConfig(decay=1.0).validate()


def test_default_step_size_follows_the_cell():
    from charrnn.cells import build_model
    from charrnn.dynamic import default_lr

    assert default_lr(RNN(5, 4)) == 1e-4
    assert default_lr(build_model({"cell": "lstm", "vocab_size": 5, "hidden_size": 4})) == 1e-3
    updater = DynamicUpdater(RNN(5, 4), DynamicConfig())
    assert updater.config.lr == 1e-4


def test_dynamic_evaluation_updates_the_direct_connections():
    """A text that repeats itself: the n-gram tables learn it as it is read, and score it better."""
    from charrnn.cells import build_model
    from charrnn.dynamic import DynamicConfig, dynamic_evaluate
    from charrnn.evaluate import evaluate

    rng = np.random.default_rng(0)
    phrase = rng.integers(1, 20, 37)
    ids = np.tile(phrase, 30)
    m = build_model({"cell": "rnn", "vocab_size": 20, "hidden_size": 8, "direct": {"order": 3, "rows": [512]}}, seed=1)
    static = evaluate(m, None, ids, num_streams=1)
    table = m.direct.table.copy()
    dynamic = dynamic_evaluate(m, None, ids, DynamicConfig())
    assert np.count_nonzero(m.direct.table - table) > 0
    assert dynamic["bits_per_char"] < static["bits_per_char"] - 1.0
