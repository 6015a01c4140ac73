"""The training loop: progress records, exact resume, divergence, stopping, early stopping."""

import numpy as np
import pytest

from charrnn.checkpoint import ModelStore, open_model
from charrnn.train import DivergedError, TrainConfig, prepare

from samples import CHINESE, ENGLISH

TEXT = (ENGLISH + CHINESE) * 20


def small_config(**kw):
    base = dict(hidden_size=16, seq_len=8, batch_size=4, eval_every=5, save_every=5, lr=0.01, val_fraction=0.1, dropout=0.0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return str(p)


def run(trainer):
    return list(trainer.run())


def test_run_yields_progress_and_saves(tmp_path, corpus):
    store = ModelStore(tmp_path / "m")
    trainer = prepare(small_config(steps=12), [corpus], store)
    records = run(trainer)
    events = [r.event for r in records]
    assert events.count("step") == 12
    assert events[-1] == "done" and records[-1].reason == "steps"
    assert "eval" in events and "save" in events
    assert all(r.train_loss > 0 for r in records if r.event == "step")
    assert records[-1].val_bpc is not None
    ckpt = open_model(tmp_path / "m", prefer="latest")
    assert ckpt.step == 12
    assert [h["step"] for h in ckpt.meta["history"]] == [5, 10, 12]
    np.testing.assert_array_equal(ckpt.model.theta, trainer.model.theta)


def test_training_lowers_the_loss(tmp_path, corpus):
    trainer = prepare(small_config(steps=150, eval_every=50, save_every=0, hidden_size=32), [corpus], None)
    records = [r for r in run(trainer) if r.event == "eval"]
    assert records[-1].val_bpc < records[0].val_bpc < np.log2(trainer.tokenizer.vocab_size)


@pytest.mark.parametrize("cfg", [dict(), dict(optimizer="adagrad", lr=0.1), dict(optimizer="sgd", lr=0.1)])
def test_resume_is_exact(tmp_path, corpus, cfg):
    # 2N steps in one run ...
    cfg = dict(cfg, batch_size=16, seq_len=32)  # 7 chunks per epoch: the run wraps around twice
    one = prepare(small_config(steps=14, **cfg), [corpus], ModelStore(tmp_path / "one"))
    assert one.batches.num_chunks < 7 * 2
    run(one)
    # ... equal N steps, then N more after resuming from the store (the epoch wraps in between)
    store = ModelStore(tmp_path / "two")
    run(prepare(small_config(steps=7, **cfg), [corpus], store))
    resumed = prepare(small_config(steps=7, **cfg), [corpus], ModelStore(tmp_path / "two"), resume=True)
    assert resumed.step == 7
    run(resumed)
    np.testing.assert_array_equal(resumed.model.theta, one.model.theta)
    np.testing.assert_array_equal(resumed.s, one.s)
    assert [h["step"] for h in resumed.history] == [5, 7, 10, 14]


def test_resume_refuses_another_corpus_unless_fine_tuning(tmp_path, corpus):
    store = ModelStore(tmp_path / "m")
    run(prepare(small_config(steps=3), [corpus], store))
    other = tmp_path / "other.txt"
    other.write_text(TEXT[::-1], encoding="utf-8")
    with pytest.raises(ValueError, match="--fine-tune"):
        prepare(small_config(steps=3), [str(other)], store, resume=True)
    tuned = prepare(small_config(steps=3), [str(other)], store, fine_tune=True)
    assert tuned.step == 3 and tuned.chunk == 0
    run(tuned)
    assert open_model(tmp_path / "m", prefer="latest").step == 6


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus):
    store = ModelStore(tmp_path / "m")
    trainer = prepare(small_config(steps=5), [corpus], store)
    run(trainer)
    good = open_model(tmp_path / "m", prefer="latest")
    trainer = prepare(small_config(steps=50), [corpus], store, resume=True)
    trainer.model.W[0, 0] = np.nan
    with pytest.raises(DivergedError, match="diverged at step 6.*--lr"):
        run(trainer)
    after = open_model(tmp_path / "m", prefer="latest")
    assert after.step == good.step
    np.testing.assert_array_equal(after.model.theta, good.model.theta)


def test_stop_request_saves_and_ends(tmp_path, corpus):
    trainer = prepare(small_config(steps=1000), [corpus], ModelStore(tmp_path / "m"))
    records = []
    for r in trainer.run():
        records.append(r)
        if r.event == "step" and r.step == 3:
            trainer.stop_requested = True
    assert records[-1].reason == "interrupted" and records[-1].step == 3
    assert open_model(tmp_path / "m", prefer="latest").step == 3


def test_early_stopping_on_patience(tmp_path, corpus):
    trainer = prepare(small_config(steps=2000, lr=0.5, eval_every=2, patience=2, save_every=0), [corpus], None)
    records = run(trainer)
    assert records[-1].reason == "early-stop"
    assert records[-1].step < 2000


def test_time_and_epoch_limits(tmp_path, corpus):
    t = prepare(small_config(epochs=1.0, eval_every=0, save_every=0), [corpus], None)
    records = run(t)
    assert records[-1].reason == "epochs" and t.step == t.batches.num_chunks
    t = prepare(small_config(max_time=0.3, eval_every=0, save_every=0), [corpus], None)
    records = run(t)
    assert records[-1].reason == "max-time" and 0.3 <= records[-1].elapsed < 5


def test_bad_config_is_refused(corpus):
    with pytest.raises(ValueError, match="hidden-size must be positive"):
        prepare(small_config(hidden_size=0), [corpus], None)
    with pytest.raises(ValueError, match="fewer than one batch"):
        prepare(small_config(batch_size=1000, seq_len=100), [corpus], None)


def test_unknown_noise_teaches_a_sane_price_for_unseen_characters(tmp_path, corpus):

    unseen = "The quick 狐 brown fox" * 3  # 狐 is not in the corpus
    prices = {}
    for rate in (0.0, 0.02):
        t = prepare(small_config(steps=300, eval_every=0, save_every=0, hidden_size=32, unknown_rate=rate), [corpus], None)
        run(t)
        ids = t.tokenizer.encode(unseen)
        logp, _ = t.model.log_probs(ids[None, :-1])
        at = np.nonzero(ids[1:] == 0)[0]
        prices[rate] = -logp[0, at, 0].mean() / np.log(2)  # bits for the unseen character
    assert prices[0.02] < 10 < prices[0.0]


def test_unknown_noise_mask_is_the_same_for_any_split_of_streams(corpus):
    t = prepare(small_config(unknown_rate=0.3), [corpus], None)
    x, y = t.batches.chunk(0)
    state = t.rng.bit_generator.state
    full_x, full_y = t._unknown_noise(x.copy(), y.copy())
    t.rng.bit_generator.state = state
    t.streams = slice(2, 4)
    half_x, half_y = t._unknown_noise(x[2:4].copy(), y[2:4].copy())
    np.testing.assert_array_equal(half_x, full_x[2:4])
    np.testing.assert_array_equal(half_y, full_y[2:4])
    assert (full_x == 0).mean() > 0.2
    np.testing.assert_array_equal(full_x[:, 1:], full_y[:, :-1])


def test_fine_tuning_forgets_the_old_best(tmp_path, corpus):
    store = ModelStore(tmp_path / "m")
    run(prepare(small_config(steps=5), [corpus], store))
    assert "best" in store.index()
    other = tmp_path / "other.txt"
    other.write_text(TEXT[::-1], encoding="utf-8")
    t = prepare(small_config(steps=3, eval_every=0, save_every=0), [str(other)], store, fine_tune=True)
    assert "best" not in store.index() and t.best_val_bpc is None
    run(t)
    assert store.index()["best"] == store.index()["latest"]


def test_only_a_fresh_score_marks_the_best(tmp_path, corpus):
    store = ModelStore(tmp_path / "m")
    run(prepare(small_config(steps=7, eval_every=5, save_every=6), [corpus], store))
    # step 6 was saved with no score of its own; step 7 (the end) was validated
    assert store.index()["best"] in ("ckpt-000000005.npz", "ckpt-000000007.npz")


@pytest.mark.parametrize("name", ["lr", "epochs", "max_time", "clip", "dropout"])
def test_non_finite_settings_are_refused(name):
    with pytest.raises(ValueError, match="finite"):
        small_config(**{name: float("inf")}).validate()
    with pytest.raises(ValueError, match="finite"):
        small_config(**{name: float("nan")}).validate()


def test_auto_schedule_is_cosine_over_time_and_constant_over_steps(corpus):
    assert prepare(small_config(max_time=5), [corpus], None).schedule == "cosine"
    assert prepare(small_config(), [corpus], None).schedule == "cosine"  # the default time limit
    assert prepare(small_config(steps=5), [corpus], None).schedule == "constant"
    assert prepare(small_config(epochs=1.0, schedule="exponential"), [corpus], None).schedule == "exponential"
    with pytest.raises(ValueError, match="schedule"):
        small_config(schedule="linear").validate()


# -- the output layer -----------------------------------------------------------------------------


def test_resume_is_exact_with_the_class_head(tmp_path, corpus):
    cfg = dict(batch_size=16, seq_len=32, output="classes", num_classes=5)
    one = prepare(small_config(steps=14, **cfg), [corpus], ModelStore(tmp_path / "one"))
    assert one.model.head.kind == "classes" and one.model.head.num_classes == 5
    run(one)
    run(prepare(small_config(steps=7, **cfg), [corpus], ModelStore(tmp_path / "two")))
    # the output settings come from the checkpoint, whatever this invocation says
    resumed = prepare(small_config(steps=7, batch_size=16, seq_len=32), [corpus], ModelStore(tmp_path / "two"), resume=True)
    assert resumed.config.output == "classes" and resumed.config.num_classes == 5
    run(resumed)
    np.testing.assert_array_equal(resumed.model.theta, one.model.theta)
    np.testing.assert_array_equal(resumed.s, one.s)


def test_auto_output_picks_classes_from_the_threshold(tmp_path, corpus):
    from charrnn.output import AUTO_CLASSES_FROM, resolve_output

    assert resolve_output("auto", AUTO_CLASSES_FROM - 1) == "full"
    assert resolve_output("auto", AUTO_CLASSES_FROM) == "classes"
    small = prepare(small_config(steps=1), [corpus], None)  # a few dozen characters
    assert small.tokenizer.vocab_size < AUTO_CLASSES_FROM
    assert small.model.head.kind == "full" and small.config.output == "full"
    many = tmp_path / "many.txt"
    alphabet = [chr(0x4E00 + i) for i in range(AUTO_CLASSES_FROM)]
    many.write_text("".join(np.random.default_rng(0).choice(alphabet, 5000)), encoding="utf-8")
    big = prepare(small_config(steps=1), [str(many)], None)
    assert big.model.head.kind == "classes" and big.config.output == "classes"
    assert big.config.num_classes == round(np.sqrt(big.tokenizer.vocab_size))
    forced = prepare(small_config(steps=1, output="full"), [str(many)], None)
    assert forced.model.head.kind == "full"


def test_classes_come_from_the_training_split_counts(corpus):
    from charrnn.output import frequency_classes
    from charrnn.train import token_counts

    config = small_config(steps=1, output="classes", num_classes=6, unknown_rate=0.1)
    trainer = prepare(config, [corpus], None)
    counts = np.bincount(trainer.train_ids, minlength=trainer.tokenizer.vocab_size).astype(float)
    assert counts[0] == 0  # min-count 1: no unknown token in the text itself ...
    expected = token_counts(config, trainer.train_ids, trainer.tokenizer.vocab_size)
    assert expected[0] == pytest.approx(0.1 * len(trainer.train_ids))  # ... but the noise makes some
    np.testing.assert_array_equal(trainer.model.head.class_of, frequency_classes(expected, 6))
    assert frequency_classes(counts, 6)[0] == 5  # by its count in the text: among the rarest
    assert trainer.model.head.class_of[0] < 2  # by its count in training: among the most frequent


def test_bad_output_settings_are_refused(corpus):
    with pytest.raises(ValueError, match="output must be one of"):
        prepare(small_config(output="softmax"), [corpus], None)
    with pytest.raises(ValueError, match="num-classes must be positive"):
        prepare(small_config(num_classes=0), [corpus], None)


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_is_exact_with_direct_connections(tmp_path, corpus, workers):
    """The n-gram tables, their Adagrad sums and the token history in the state all resume."""
    from charrnn import threads

    cfg = dict(batch_size=16, seq_len=32, direct_order=3, direct_size=0.25)
    threads.set_workers(workers)
    try:
        one = prepare(small_config(steps=14, **cfg), [corpus], ModelStore(tmp_path / "one"))
        run(one)
        run(prepare(small_config(steps=7, **cfg), [corpus], ModelStore(tmp_path / "two")))
        resumed = prepare(small_config(steps=7, **cfg), [corpus], ModelStore(tmp_path / "two"), resume=True)
        run(resumed)
    finally:
        threads.set_workers(1)
    assert one.model.direct is not None and np.count_nonzero(one.model.direct.table) > 0
    np.testing.assert_array_equal(resumed.model.theta, one.model.theta)
    np.testing.assert_array_equal(resumed.model.direct.table, one.model.direct.table)
    np.testing.assert_array_equal(resumed.model.direct.accum, one.model.direct.accum)
    np.testing.assert_array_equal(resumed.s, one.s)


def test_direct_connections_lower_the_validation_loss(tmp_path, corpus):
    """Same steps, same network: the n-gram tables help from the first minute."""
    plain = prepare(small_config(steps=60, eval_every=60, save_every=0, hidden_size=16, direct_order=0), [corpus], None)
    direct = prepare(small_config(steps=60, eval_every=60, save_every=0, hidden_size=16, direct_order=4, direct_size=1),
                     [corpus], None)
    bpc_plain = [r for r in run(plain) if r.event == "eval"][-1].val_bpc
    bpc_direct = [r for r in run(direct) if r.event == "eval"][-1].val_bpc
    assert bpc_direct < bpc_plain - 0.1


def test_the_defaults_follow_the_output_layer(corpus):
    """Left unset, dropout and the n-gram order are chosen by the output layer, as measured."""
    from charrnn.train import AUTO_DIRECT_ORDER, AUTO_DROPOUT, make_model

    for output, K in (("full", 65), ("classes", 400)):
        config = TrainConfig(hidden_size=8, output=output)
        m = make_model(config, K, np.arange(K, 0, -1.0))
        assert m.config()["dropout"] == AUTO_DROPOUT[output]
        assert m.direct.order == AUTO_DIRECT_ORDER[output]
    m = make_model(TrainConfig(hidden_size=8, dropout=0.0, direct_order=0), 65)
    assert m.direct is None and type(m).__name__ == "RNN"


def test_a_run_limited_by_time_also_ends_after_twelve_passes(tmp_path, corpus):
    """A small text is not trained on for ever: the time budget's cosine anneals over at most
    AUTO_MAX_EPOCHS passes, and the run ends there; --epochs or --steps choose otherwise."""
    from charrnn.train import AUTO_MAX_EPOCHS

    trainer = prepare(small_config(max_time=600, eval_every=0, save_every=0, batch_size=16, seq_len=32), [corpus], None)
    records = run(trainer)
    assert records[-1].reason == "epochs" and trainer.epochs_done == pytest.approx(AUTO_MAX_EPOCHS, abs=0.2)
    lrs = [r.lr for r in records if r.event == "step"]
    assert lrs[-1] < 0.2 * lrs[0]  # annealed over the passes, not over the 600 s
    again = prepare(small_config(epochs=AUTO_MAX_EPOCHS + 2, eval_every=0, save_every=0, batch_size=16, seq_len=32), [corpus], None)
    assert run(again)[-1].reason == "epochs" and again.epochs_done >= AUTO_MAX_EPOCHS + 2
