"""Checkpoints: exact round trips, atomic writes, refusing damaged and hostile files; the store."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from charrnn.checkpoint import (
    FORMAT_VERSION, Checkpoint, CheckpointError, ModelStore, StoreLockedError, load_checkpoint,
    open_model, save_checkpoint,
)
from charrnn.model import RNN
from charrnn.tokenizer import Tokenizer

from samples import MIXED

OLD_WORD_MODEL = Path(__file__).parent / "data" / "word-scheme1.npz"  # see tests/data/README.md


def make_ckpt(step=7, H=8, dtype=np.float32):
    tok = Tokenizer.fit(MIXED)
    m = RNN(tok.vocab_size, H, seed=step, dtype=dtype)
    arrays = {"state": np.ones((2, H), dtype), "optimizer.m": np.full(m.num_params, 0.5, dtype)}
    return Checkpoint(m, tok, meta={"step": step, "history": [{"step": step, "val_bpc": 2.5}]}, arrays=arrays)


def test_round_trip_is_bit_identical(tmp_path):
    ckpt = make_ckpt(dtype=np.float64)
    save_checkpoint(tmp_path / "a.npz", ckpt)
    back = load_checkpoint(tmp_path / "a.npz")
    np.testing.assert_array_equal(back.model.theta, ckpt.model.theta)
    assert back.model.theta.dtype == np.float64
    assert back.tokenizer == ckpt.tokenizer
    assert back.step == 7 and back.meta["format_version"] == FORMAT_VERSION
    for k, v in ckpt.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], v)


def test_is_a_plain_npz_loadable_without_pickle(tmp_path):
    save_checkpoint(tmp_path / "a.npz", make_ckpt())
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        meta = json.loads(z["meta.json"].tobytes())
        assert meta["format"] == "charrnn-checkpoint" and z["theta"].ndim == 1


def test_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    save_checkpoint(path, make_ckpt(step=1))
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, make_ckpt(step=2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary left behind


def rewrite(src, dst, replace):
    """Copy an npz, replacing some members' bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = replace.get(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)


def npy_bytes(array):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=True)
    return buf.getvalue()


def test_refuses_pickled_object_arrays_without_running_them(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    good = tmp_path / "good.npz"
    save_checkpoint(good, make_ckpt())
    evil = tmp_path / "evil.npz"
    rewrite(good, evil, {"state.npy": npy_bytes(np.array([Payload()], dtype=object))})
    with pytest.raises(CheckpointError, match="objects"):
        load_checkpoint(evil)
    assert not marker.exists()


def meta_of(path):
    with np.load(path, allow_pickle=False) as z:
        return json.loads(z["meta.json"].tobytes())


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda m: m.update(format_version=FORMAT_VERSION + 1), "upgrade charrnn"),
        (lambda m: m.update(format="something"), "not a charrnn checkpoint"),
        (lambda m: m["model"].update(hidden_size=9), "truncated or do not match|shape"),
        (lambda m: m["model"].update(vocab_size=3), "disagree"),
        (lambda m: m["model"].update(hidden_size=10**9), "implausible"),
        (lambda m: m["tokenizer"].update(tokens=["b", "a"]), "vocabulary"),
        (lambda m: m.update(dtype="int8"), "model description"),
    ],
)
def test_refuses_inconsistent_metadata(tmp_path, change, message):
    good = tmp_path / "good.npz"
    save_checkpoint(good, make_ckpt())
    meta = meta_of(good)
    change(meta)
    bad = tmp_path / "bad.npz"
    raw = json.dumps(meta).encode()
    rewrite(good, bad, {"meta.json.npy": npy_bytes(np.frombuffer(raw, np.uint8))})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad)


def test_refuses_bad_json_wrong_dtype_and_huge_declared_sizes(tmp_path):
    good = tmp_path / "good.npz"
    save_checkpoint(good, make_ckpt())
    bad = tmp_path / "bad.npz"
    rewrite(good, bad, {"meta.json.npy": npy_bytes(np.frombuffer(b"{not json", np.uint8))})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(bad)
    rewrite(good, bad, {"theta.npy": npy_bytes(np.zeros(3, np.int64))})
    with pytest.raises(CheckpointError, match="dtype|truncated"):
        load_checkpoint(bad)
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (4_000_000_000,)})
    huge = buf.getvalue() + b"\0" * 64  # declares 16 GB, holds 64 bytes
    for member in ("theta.npy", "state.npy"):
        rewrite(good, bad, {member: huge})
        with pytest.raises(CheckpointError, match="shape|fewer|truncated"):
            load_checkpoint(bad)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.999])
def test_refuses_truncated_files(tmp_path, cut):
    good = tmp_path / "good.npz"
    save_checkpoint(good, make_ckpt())
    data = good.read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_refuses_random_bytes_and_missing(tmp_path):
    p = tmp_path / "r.npz"
    p.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CheckpointError, match="not a charrnn checkpoint"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")


def test_store_pointers_best_latest_and_pruning(tmp_path):
    store = ModelStore(tmp_path / "m", keep=2)
    for step, bpc in [(1, 3.0), (2, 2.0), (3, 2.5), (4, 2.6), (5, 2.7)]:
        store.save(make_ckpt(step=step), val_bpc=bpc)
    index = store.index()
    assert index["best"] == "ckpt-000000002.npz" and index["latest"] == "ckpt-000000005.npz"
    names = [p.name for p in store.checkpoints()]
    assert names == ["ckpt-000000002.npz", "ckpt-000000004.npz", "ckpt-000000005.npz"]
    assert open_model(tmp_path / "m").step == 2
    assert open_model(tmp_path / "m", prefer="latest").step == 5
    assert open_model(tmp_path / "m" / "ckpt-000000004.npz").step == 4


def test_store_errors(tmp_path):
    with pytest.raises(CheckpointError, match="train one first"):
        open_model(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="train one first"):
        open_model(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no charrnn checkpoints"):
        open_model(tmp_path / "other")


def test_store_falls_back_when_the_pointed_file_is_damaged(tmp_path):
    store = ModelStore(tmp_path / "m")
    store.save(make_ckpt(step=1), val_bpc=2.0)
    store.save(make_ckpt(step=2), val_bpc=3.0)
    (tmp_path / "m" / "ckpt-000000001.npz").write_bytes(b"garbage")
    assert open_model(tmp_path / "m").step == 2


def test_lock_refuses_a_second_trainer(tmp_path):
    a, b = ModelStore(tmp_path / "m"), ModelStore(tmp_path / "m")
    a.lock()
    with pytest.raises(StoreLockedError, match="another training run"):
        b.lock()
    a.unlock()
    b.lock()
    b.unlock()


def test_loading_does_not_initialize_the_model(tmp_path, monkeypatch):
    """Loading builds the model with zero weights and fills them: no costly initialization (a QR
    of H x H) before the first sampled character."""
    save_checkpoint(tmp_path / "a.npz", make_ckpt())
    calls = []
    monkeypatch.setattr(RNN, "initialize", lambda self, rng: calls.append(rng))
    back = load_checkpoint(tmp_path / "a.npz")
    assert calls == [] and np.abs(back.model.theta).sum() > 0


def test_a_word_checkpoint_saved_before_schemes_keeps_its_splitting(tmp_path):
    ckpt = load_checkpoint(OLD_WORD_MODEL)
    assert "scheme" not in ckpt.meta["tokenizer"]  # written by the old code
    tok = ckpt.tokenizer
    assert tok.level == "word" and tok.scheme == 1
    assert [tok.tokens[i] for i in tok.encode("the cat sat.")] == ["the", " ", "cat", " ", "sat", "."]
    save_checkpoint(tmp_path / "again.npz", ckpt)  # saved again, it says which scheme it uses
    again = load_checkpoint(tmp_path / "again.npz")
    assert again.meta["tokenizer"]["scheme"] == 1 and again.tokenizer == tok


def test_a_word_scheme_from_the_future_is_one_clear_error(tmp_path):
    ckpt = load_checkpoint(OLD_WORD_MODEL)
    ckpt.tokenizer.scheme = 99
    save_checkpoint(tmp_path / "future.npz", ckpt)
    with pytest.raises(CheckpointError, match=r"scheme 99 is unknown to this charrnn .*upgrade charrnn"):
        load_checkpoint(tmp_path / "future.npz")
