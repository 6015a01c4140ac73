"""Properties (hypothesis) and a fuzz of the command line.

* The tokenizer gives back any Unicode text: astral characters, combining marks, CJK.
* A checkpoint saved and loaded holds bit-identical weights, and ``charrnn sample`` from the
  file draws exactly what the model in memory draws for the same ``--random-seed``.
* Sampling never yields NaN nor the unknown token, whatever the temperature (down to subnormal
  numbers), top-k and top-p.
* Every command, given randomly generated option values (zero, negative and huge integers, NaN
  and infinite floats, CJK and empty strings, files that are not what they should be), exits
  0, 1, 2 or 130, prints no traceback, no NumPy warning and no "internal error".

The option values are valid seven times in ten, else zero, negative, huge, NaN, infinite or
text; never the moderate values that would only make a valid run slow (a hidden size of 20,000
is a legitimate, long run: it is refused only if it cannot fit in memory); every training run
is capped by ``--max-time``. CHARRNN_FUZZ_SCALE multiplies the number of examples.
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from charrnn.cells import build_model
from charrnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from charrnn.cli import cli
from charrnn.sampling import generate, sampling_distribution
from charrnn.tokenizer import Tokenizer, split_words

from samples import CHINESE, ENGLISH

TEXT = (CHINESE + "\n" + ENGLISH + "\n") * 30
FUZZ_SCALE = float(os.environ.get("CHARRNN_FUZZ_SCALE", "1"))  # e.g. 10 for a long hunt


def fuzz(examples: int):
    return settings(
        max_examples=max(1, int(examples * FUZZ_SCALE)), deadline=None,
        suppress_health_check=[HealthCheck.too_slow], database=None,
    )


def invoke(args, input=None):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2 mixes stderr into stdout by default
    except TypeError:
        runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], input=input, env={"CHARRNN_MODEL": None}, catch_exceptions=True)


# -- the tokenizer --------------------------------------------------------------------------------

combining = st.characters(categories=("Mn", "Mc", "Me"))  # accents, vowel signs, enclosing marks
astral = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, exclude_categories=("Cs",))
cjk = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
anything = st.characters(exclude_categories=("Cs",))  # every code point but lone surrogates
unicode_text = st.text(st.one_of(combining, astral, cjk, anything), max_size=300)


@settings(max_examples=150, deadline=None)
@given(unicode_text, st.sampled_from(["char", "word"]))
def test_tokenizer_round_trips_astral_and_combining_text(text, level):
    tok = Tokenizer.fit(text, level=level)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    if level == "char":
        assert len(ids) == len(text)  # one id per code point: 🐈 and é's combining accent count once
    else:
        assert "".join(split_words(text)) == text
    again = Tokenizer.from_dict(tok.to_dict())
    assert again.decode(again.encode(text)) == text


# -- checkpoints ----------------------------------------------------------------------------------

configs = st.fixed_dictionaries(
    {
        "cell": st.sampled_from(["rnn", "lstm", "gru"]),
        "hidden_size": st.integers(1, 12),
        "num_layers": st.integers(1, 3),
        "embedding_size": st.none() | st.integers(1, 6),
        "dropout": st.sampled_from([0.0, 0.25]),
    }
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs, st.sampled_from(["float32", "float64"]), st.integers(0, 2**32 - 1), st.integers(0, 2**63 - 1), st.text(st.one_of(cjk, astral, anything), min_size=1, max_size=40))
def test_checkpoint_round_trip_is_bit_identical_and_samples_alike(config, dtype, init_seed, sample_seed, text):
    tok = Tokenizer.fit(TEXT[:200] + text)
    model = build_model({**config, "vocab_size": tok.vocab_size}, seed=init_seed, dtype=np.dtype(dtype))
    rng = np.random.default_rng(init_seed)
    model.theta[...] = rng.standard_normal(model.num_params)  # every bit pattern, not just the init
    arrays = {"state": rng.standard_normal((3, model.state_size)).astype(dtype), "optimizer.m": rng.random(model.num_params).astype(dtype)}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ckpt.npz"
        save_checkpoint(path, Checkpoint(model, tok, meta={"step": 3}, arrays=arrays))
        back = load_checkpoint(path)
        assert back.model.theta.dtype == model.theta.dtype
        assert back.model.theta.tobytes() == model.theta.tobytes()
        assert all(back.arrays[k].tobytes() == v.tobytes() for k, v in arrays.items())
        assert back.tokenizer == tok and back.model.config() == model.config()
        prompt = text[:5]
        result = invoke(["sample", "-m", path, "-n", "30", "--random-seed", sample_seed, "--seed", prompt, "--unknown", "skip"])
        assert result.exit_code == 0, result.stderr
    expected = "".join(generate(model, tok, prompt, 30, rng=sample_seed, unknown="skip"))
    assert result.stdout == expected + ("" if expected.endswith("\n") else "\n")


# -- sampling -------------------------------------------------------------------------------------

temperatures = st.one_of(
    st.just(0.0), st.floats(min_value=0, max_value=1e308, allow_nan=False, allow_infinity=False, allow_subnormal=True),
    st.sampled_from([5e-324, 1e-320, 1e-300, 1e-30, 0.5, 1.0, 2.0, 1e30]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 40), temperatures, st.none() | st.integers(1, 100), st.none() | st.floats(min_value=1e-300, max_value=1.0, exclude_min=False),
    st.integers(0, 2**32 - 1),
)
def test_sampling_never_gives_nan_nor_the_unknown_token(K, temperature, top_k, top_p, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((3, K)) * rng.choice([0.01, 1.0, 100.0])
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # NumPy would warn of these
        q = sampling_distribution(probs, temperature, top_k, top_p)
    assert np.isfinite(q).all() and (q >= 0).all()
    np.testing.assert_allclose(q.sum(axis=1), 1.0)
    assert (q[:, 0] == 0).all()
    if temperature <= 1:  # (a huge temperature may flatten the order into ties)
        best = probs[:, 1:].argmax(axis=1) + 1
        assert (q[np.arange(3), best] > 0).all()  # the most probable real token stays possible


# -- the command line, fuzzed ---------------------------------------------------------------------

huge_ints = st.integers(10**9, 10**30)
bad_ints = st.one_of(st.integers(-5, 0), huge_ints)
bad_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -1.0, 1e-320, 5e-324, 1e300, float("nan"), float("inf"), float("-inf")]),
)
texts = st.one_of(
    st.text(max_size=30),
    st.text(st.one_of(cjk, astral), max_size=10),
    st.sampled_from(["", " ", "-", "--", "我喜欢", "\n", "nan", "1e999", "0x10", "-1"]),
)


def mostly(valid, *invalid):
    """Valid values seven times in ten, else zero/negative/huge/NaN/infinite values or junk text."""
    wrong = st.one_of(*invalid, texts)
    return st.integers(0, 9).flatmap(lambda i: valid if i < 7 else wrong)


def ints(lo, hi, bad=bad_ints):
    return mostly(st.integers(lo, hi), bad)


def reals(lo, hi, bad=bad_floats):
    return mostly(st.floats(lo, hi, exclude_max=True), bad)


def choice(*choices):
    return mostly(st.sampled_from(choices))


def options(spec: dict, flags: tuple = (), max_size: int = 5):
    """A random subset of options (in random order) with random values, plus random flags."""
    pairs = st.lists(st.sampled_from(sorted(spec)), unique=True, max_size=max_size).flatmap(
        lambda names: st.tuples(*[st.tuples(st.just(n), spec[n]) for n in names])
    )
    return st.tuples(pairs, st.lists(st.sampled_from(flags), unique=True) if flags else st.just([]))


def as_args(drawn) -> list[str]:
    pairs, flags = drawn
    args = []
    for name, value in pairs:
        args += [name, str(value)]
    return args + list(flags)


TRAIN = {
    "--hidden-size": ints(1, 24),
    "--num-layers": ints(1, 3),
    "--embedding-size": ints(1, 8),
    "--cell": choice("rnn", "lstm", "gru"),
    "--dtype": choice("float32", "float64"),
    "--level": choice("char", "word"),
    "--dropout": reals(0, 1),
    "--min-count": ints(1, 5, st.one_of(bad_ints, st.integers(10**6, 10**9))),
    "--max-vocab": ints(2, 60),
    "--unknown-rate": reals(0, 0.5),
    "--seq-len": ints(1, 24),
    "--batch-size": ints(1, 12),
    "--optimizer": choice("adam", "adagrad", "sgd"),
    "--lr": mostly(st.sampled_from([1e-5, 1e-3, 0.01, 0.1, 10.0, 1e30, 1e300]), bad_floats),  # huge: divergence
    "--schedule": choice("constant", "cosine", "exponential"),
    "--warmup-steps": ints(0, 50),
    "--weight-decay": reals(0, 1),
    "--clip": reals(0, 10),
    "--steps": ints(1, 20),
    "--epochs": reals(0.01, 3),
    "--patience": ints(1, 3),
    "--val-fraction": reals(0, 0.5),
    "--eval-every": ints(0, 5),
    "--save-every": ints(0, 5),
    "--keep": ints(1, 4),
    "--random-seed": ints(0, 2**64),
    "--threads": ints(1, 2),
    "--encoding-errors": choice("strict", "replace", "ignore"),
}
SAMPLE = {
    "-n": ints(0, 60, st.integers(-5, -1)),  # a huge length is a legitimate endless stream
    "-t": reals(0, 3),
    "--top-k": ints(1, 100),
    "--top-p": mostly(st.floats(1e-9, 1.0), bad_floats),
    "--random-seed": ints(0, 2**64),
    "--num-samples": ints(1, 4, st.one_of(st.integers(-5, 0), st.integers(10**12, 10**30))),
    "--seed": texts,
    "--stop": texts,
    "--unknown": choice("replace", "skip", "error"),
}
PREDICT = {
    "--text": texts,
    "--top": ints(1, 50),
    "--chars": ints(1, 3, st.integers(-5, 0)),
    "--beam-width": ints(1, 64),
}
EVALUATE = {
    "--num-streams": ints(1, 100),
    "--dynamic-lr": mostly(st.sampled_from([1e-5, 1e-3, 1.0, 1e300]), bad_floats),
    "--encoding-errors": choice("strict", "replace", "ignore"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained store, a good corpus and files that are not what they should be."""
    d = tmp_path_factory.mktemp("fuzz")
    corpus = d / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    (d / "binary.bin").write_bytes(b"\x00\x01\x02 binary")
    (d / "latin1.txt").write_bytes("café crème".encode("latin-1") * 20)
    (d / "empty.txt").write_bytes(b"")
    (d / "directory").mkdir()
    store = d / "model"
    result = invoke(["train", corpus, "-m", store, "--hidden-size", "16", "--seq-len", "16", "--batch-size", "8", "--steps", "10", "-q"])
    assert result.exit_code == 0, result.stderr
    files = [corpus, d / "binary.bin", d / "latin1.txt", d / "empty.txt", d / "directory", d / "missing.txt", "-"]
    models = [store, next(store.glob("ckpt-*.npz")), d / "directory", d / "missing", corpus]
    return {"dir": d, "corpus": corpus, "store": store, "files": files, "models": models}


def check_outcome(result, args):
    event(f"{args[0]} exit {result.exit_code}")  # pytest --hypothesis-show-statistics
    out = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert result.exit_code in (0, 1, 2, 130), (args, result.exit_code, result.stderr)
    assert "Traceback" not in out, args
    assert "internal error" not in out, (args, result.stderr)  # a bug the catch-all hid
    assert "Warning" not in result.stderr, (args, result.stderr)  # NumPy warnings leaking out
    if result.exit_code in (1, 2):
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and result.stderr.rstrip().splitlines()[-1] == errors[0], (args, result.stderr)


def pick(world, key):
    return st.sampled_from(range(len(world[key]))).map(lambda i: world[key][i])


@fuzz(60)
@given(data=st.data())
def test_fuzz_train(world, data):
    drawn = data.draw(options(TRAIN, ("--resume", "--fine-tune", "--overwrite", "-q")))
    corpus = data.draw(st.sampled_from([world["corpus"]] * 4 + world["files"]))
    with tempfile.TemporaryDirectory() as d:
        model = Path(d) / "m"
        if data.draw(st.booleans()):  # an existing store (resume, fine-tune, overwrite)
            shutil.copytree(world["store"], model)
        args = ["train", str(corpus), "-m", str(model), *as_args(drawn), "--max-time", "0.3"]
        result = invoke(args, input=TEXT.encode())
        check_outcome(result, args)


@fuzz(100)
@given(data=st.data())
def test_fuzz_sample(world, data):
    drawn = data.draw(options(SAMPLE, ("--greedy", "--dynamic")))
    model = data.draw(st.sampled_from([world["store"]] * 4 + world["models"]))
    seed_file = data.draw(st.none() | st.sampled_from(world["files"]))
    args = ["sample", "-m", str(model), *as_args(drawn)] + (["--seed-file", str(seed_file)] if seed_file else [])
    check_outcome(invoke(args, input="我喜欢".encode()), args)


@fuzz(60)
@given(data=st.data())
def test_fuzz_predict(world, data):
    drawn = data.draw(options(PREDICT, ("--json",)))
    model = data.draw(st.sampled_from([world["store"]] * 4 + world["models"]))
    adapt = data.draw(st.none() | st.sampled_from(world["files"]))
    stdin = data.draw(st.text(st.one_of(cjk, anything), max_size=60))
    args = ["predict", "-m", str(model), *as_args(drawn)] + (["--adapt", str(adapt)] if adapt else [])
    check_outcome(invoke(args, input=stdin.encode("utf-8", "surrogatepass")), args)


@fuzz(60)
@given(data=st.data())
def test_fuzz_evaluate_and_info(world, data):
    model = data.draw(st.sampled_from([world["store"]] * 4 + world["models"]))
    if data.draw(st.booleans()):
        args = ["info", "-m", str(model)] + data.draw(st.sampled_from([[], ["--json"]]))
    else:
        files = data.draw(st.lists(st.sampled_from([world["corpus"]] * 6 + world["files"]), min_size=0, max_size=3))
        drawn = data.draw(options(EVALUATE, ("--json", "--dynamic")))
        args = ["evaluate", *map(str, files), "-m", str(model), *as_args(drawn)]
    check_outcome(invoke(args, input=TEXT.encode()), args)
