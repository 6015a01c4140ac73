"""Batching: streams are contiguous across chunks, targets are inputs shifted by one."""

import numpy as np
import pytest

from charrnn.data import MIN_TOKENS, Batches, fit_to_text, split_train_val, stream_chunks


def test_streams_are_contiguous_across_chunks():
    ids = np.arange(1000)
    batches = Batches(ids, batch_size=4, seq_len=10)
    L = batches.stream_len
    assert L == 999 // 4
    rows = [np.concatenate([x[i] for x, _ in batches]) for i in range(4)]
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(row, np.arange(i * L, i * L + batches.num_chunks * 10))


def test_targets_are_inputs_shifted_by_one():
    ids = np.random.default_rng(0).integers(0, 50, 500)
    for x, y in Batches(ids, 3, 7):
        assert x.shape == y.shape == (3, 7)
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    x, y = Batches(ids, 3, 7).chunk(2)
    L = (500 - 1) // 3
    np.testing.assert_array_equal(x[1], ids[L + 14 : L + 21])
    np.testing.assert_array_equal(y[1], ids[L + 15 : L + 22])


def test_memmap_gives_the_same_chunks(tmp_path):
    ids = np.random.default_rng(1).integers(0, 4000, 3000).astype(np.uint16)
    path = tmp_path / "ids.bin"
    ids.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    for (a, b), (c, d) in zip(Batches(ids, 5, 16), Batches(mm, 5, 16)):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_stream_subset_for_a_rank():
    ids = np.arange(2000)
    full = Batches(ids, 8, 5)
    x, y = full.chunk(3)
    xs, ys = full.chunk(3, streams=slice(4, 8))
    np.testing.assert_array_equal(xs, x[4:])
    np.testing.assert_array_equal(ys, y[4:])


def test_too_short_for_one_batch():
    with pytest.raises(ValueError, match="fewer than one batch"):
        Batches(np.arange(20), 4, 10)


def test_split_train_val():
    train, val = split_train_val(np.arange(100), 0.1)
    assert len(train) == 90 and len(val) == 10 and val[0] == 90
    with pytest.raises(ValueError):
        split_train_val(np.arange(10), 1.0)


@pytest.mark.parametrize("n,B,T", [(1000, 7, 13), (50, 8, 100), (2, 4, 4), (101, 10, 10)])
def test_stream_chunks_score_every_prediction_once(n, B, T):
    ids = np.arange(n)
    seen = np.concatenate([x.ravel() for x, _ in stream_chunks(ids, B, T)])
    targets = np.concatenate([y.ravel() for _, y in stream_chunks(ids, B, T)])
    assert sorted(seen.tolist()) == list(range(n - 1))
    assert sorted(targets.tolist()) == list(range(1, n))


def test_fit_to_text_leaves_settings_that_fit_alone():
    assert fit_to_text(3000, 32, 64, 0.1) == (32, 64, 0.1, None)


def test_fit_to_text_shrinks_what_it_may():
    B, T, vf, note = fit_to_text(45, 32, 64, 0.1, unit="characters")
    assert (B, T, vf) == (1, 44, 0.0) and B * T + 1 <= 45
    assert note == ("the text is short (45 characters): training with batch size 1 instead of 32, "
                    "sequence length 44 instead of 64, no validation part (too short to hold one out)")
    B, T, vf, note = fit_to_text(200, 32, 64, 0.1)  # room for a validation part of 20: kept
    assert (B, T, vf) == (2, 64, 0.1) and B * T + 1 <= 180 and "20 tokens held out for validation" in note
    assert fit_to_text(7, 32, 64, 0.1)[:3] == (1, 6, 0.0)
    assert fit_to_text(MIN_TOKENS, 32, 64, 0.1)[:3] == (1, MIN_TOKENS - 1, 0.0)


def test_fit_to_text_never_changes_a_given_setting():
    B, T, vf, _ = fit_to_text(45, 8, 64, 0.1, adjustable=("seq_len", "val_fraction"))
    assert B == 8 and T == 5 and vf == 0.0
    B, T, vf, _ = fit_to_text(45, 32, 16, 0.1, adjustable=("batch_size", "val_fraction"))
    assert (B, T, vf) == (2, 16, 0.0)
    with pytest.raises(ValueError, match=r"with --batch-size 8 and --seq-len 16; give smaller values"):
        fit_to_text(45, 8, 16, 0.1, adjustable=("val_fraction",))
    with pytest.raises(ValueError, match=r"with --batch-size 50;"):
        fit_to_text(45, 50, 64, 0.1, adjustable=("seq_len", "val_fraction"))
    with pytest.raises(ValueError, match=r"with --seq-len 64 and --val-fraction 0.5 \(holding out 50\);"):
        fit_to_text(100, 32, 64, 0.5, adjustable=("batch_size",))


def test_fit_to_text_refuses_a_handful_of_tokens():
    for n in range(MIN_TOKENS):
        with pytest.raises(ValueError, match=f"the text has {n} characters, too few to learn from; a text to train on needs at least {MIN_TOKENS} characters"):
            fit_to_text(n, 32, 64, 0.1, unit="characters")
