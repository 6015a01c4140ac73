"""The command line: every command through click's CliRunner, and real processes for pipes and signals."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import charrnn
from charrnn.cli import SPARKS, TRAIN_FIELDS, cli, sparkline

from samples import CHINESE, ENGLISH

ROOT = Path(charrnn.__file__).resolve().parent.parent  # the package under test (installed or not)
REPO = Path(__file__).resolve().parent.parent  # the checkout: bundled corpora and test data
TEXT = (CHINESE + "\n" + ENGLISH + "\n") * 30  # about 6 KB, Chinese and English
TINY = ["--hidden-size", "24", "--seq-len", "16", "--batch-size", "8", "--lr", "0.01", "--eval-every", "40"]


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2 mixes stderr into stdout by default
    except TypeError:
        return CliRunner()


def invoke(*args, input=None, env=None):
    return runner().invoke(cli, [str(a) for a in args], input=input, env=env or {"CHARRNN_MODEL": None})


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k != "CHARRNN_MODEL"}
    e.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    return e


def charrnn_process(*args, cwd, input=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *map(str, args)],
        cwd=cwd, input=input, capture_output=True, env=env(), timeout=timeout,
    )


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def train_tiny(tmp_path_factory, name: str, *options):
    """A tiny model of TEXT trained through the CLI: (store directory, corpus path, stderr)."""
    d = tmp_path_factory.mktemp(name)
    corpus = d / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    store = d / "model"
    result = invoke("train", corpus, "-m", store, *options, *TINY, "--steps", "120")
    assert result.exit_code == 0, result.stderr
    return store, corpus, result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained through the CLI: (store directory, corpus path)."""
    return train_tiny(tmp_path_factory, "cli")[:2]


# -- start-up -------------------------------------------------------------------------------------


def test_version_and_help_import_no_numpy():
    code = "import sys, charrnn.cli; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=ROOT)
    assert out.stdout.strip() == "False"
    result = invoke("--version")
    assert result.exit_code == 0 and charrnn.__version__ in result.stdout
    for command in ("train", "sample", "evaluate", "predict", "info"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "--model" in result.stdout


def test_train_help_states_the_train_config_defaults():
    from charrnn.train import TrainConfig

    defaults = TrainConfig()
    command = cli.commands["train"]
    stated = 0
    for param in command.params:
        if param.name in TRAIN_FIELDS and param.help and (m := re.search(r"\[default: ([^\]]+)\]", param.help)):
            value = getattr(defaults, TRAIN_FIELDS[param.name])
            assert m.group(1) == str(value), param.name
            stated += 1
        if param.name in TRAIN_FIELDS:
            unset = param.default is None or "UNSET" in repr(param.default)  # click >= 8.3: a sentinel
            assert unset, f"--{param.name}: TrainConfig owns the default"
    assert stated >= 15


def test_usage_errors_exit_2(trained):
    store, corpus = trained
    for args in (
        ["sample", "-m", store, "--top-p", "0"],
        ["sample", "-m", store, "--temperature", "-1"],
        ["sample", "-m", store, "--seed", "a", "--seed-file", corpus],
        ["train", corpus, "--lr", "0"],
        ["train", corpus, "--resume", "--fine-tune"],
        ["predict", "-m", store, "--top", "0"],
        ["nonsense"],
    ):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_no_model_yet_is_one_line(tmp_path):
    for command in (["sample"], ["info"], ["predict", "--text", "a"], ["evaluate", __file__]):
        result = invoke(*command, "-m", tmp_path / "none")
        assert result.exit_code == 1
        assert "train one first" in one_error_line(result)


def test_model_from_the_environment(trained):
    store, _ = trained
    result = runner().invoke(cli, ["sample", "-n", "5"], env={"CHARRNN_MODEL": str(store)})
    assert result.exit_code == 0, result.stderr


# -- train ----------------------------------------------------------------------------------------


def test_train_writes_a_store_and_nothing_on_stdout(trained):
    store, _ = trained
    assert (store / "store.json").is_file()
    assert any(p.name.startswith("ckpt-") for p in store.iterdir())
    result = invoke("info", "-m", store, "--json")
    assert json.loads(result.stdout)["step"] == 120


def test_train_progress_goes_to_stderr(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    result = invoke("train", corpus, "-m", tmp_path / "m", *TINY, "--steps", "80")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert re.search(r"step +40 +loss [\d.]+ nats +val [\d.]+ bpc", result.stderr)
    assert "stopped (steps) at step 80" in result.stderr
    quiet = invoke("train", corpus, "-m", tmp_path / "q", *TINY, "--steps", "5", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_train_resume_fine_tune_and_overwrite(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    m = tmp_path / "m"
    assert invoke("train", corpus, "-m", m, *TINY, "--steps", "10").exit_code == 0
    again = invoke("train", corpus, "-m", m, *TINY, "--steps", "10")
    assert again.exit_code == 1 and "--resume" in one_error_line(again)
    resumed = invoke("train", corpus, "-m", m, "--steps", "10", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "starting at step 10" in resumed.stderr
    other = tmp_path / "other.txt"
    other.write_text(CHINESE * 40, encoding="utf-8")
    refused = invoke("train", other, "-m", m, "--steps", "5", "--resume")
    assert refused.exit_code == 1 and "--fine-tune" in one_error_line(refused)
    tuned = invoke("train", other, "-m", m, "--steps", "5", "--fine-tune")
    assert tuned.exit_code == 0, tuned.stderr
    listing = json.loads(invoke("info", "-m", m, "--json").stdout)["checkpoints"]
    assert [c["step"] for c in listing if "latest" in c["marks"]] == [25]
    fresh = invoke("train", corpus, "-m", m, *TINY, "--steps", "3", "--overwrite")
    assert fresh.exit_code == 0
    assert json.loads(invoke("info", "-m", m, "--json").stdout)["step"] == 3


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        (b"good text \xe4\xb8\xad then \xff bad", "not valid UTF-8 (byte offset 19)"),
        (b"", "empty"),
        ("short text".encode(), "fewer than one batch"),
    ],
)
def test_train_corpus_mistakes_are_one_line(tmp_path, content, message):
    corpus = tmp_path / "c.txt"
    if content is not None:
        corpus.write_bytes(content)
    result = invoke("train", corpus, "-m", tmp_path / "m", *TINY, "--steps", "5")
    assert result.exit_code == 1
    assert message in one_error_line(result)
    assert not (tmp_path / "m").exists()  # a failed first run leaves no empty store behind


def test_train_needs_a_store_directory(trained, tmp_path):
    store, corpus = trained
    ckpt = next(store.glob("ckpt-*.npz"))
    result = invoke("train", corpus, "-m", ckpt, "--steps", "1")
    assert result.exit_code == 1 and "store directory" in one_error_line(result)


def test_train_divergence_keeps_the_last_good_checkpoint(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    m = tmp_path / "m"
    args = ["--optimizer", "sgd", "--lr", "1e38", "--clip", "0", "--save-every", "1", "--hidden-size", "8"]
    result = invoke("train", corpus, "-m", m, "--seq-len", "8", "--batch-size", "4", *args, "--steps", "50")
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]  # after the line that describes the run
    assert "diverged" in line and "last good checkpoint" in line
    assert "Warning" not in result.stderr and "Traceback" not in result.stderr
    assert invoke("info", "-m", m).exit_code == 0  # what was kept loads


# -- sample ---------------------------------------------------------------------------------------


def test_sample_is_reproducible_and_has_the_asked_length(trained):
    store, _ = trained
    a = invoke("sample", "-m", store, "-n", "80", "--random-seed", "3", "--seed", "我喜欢")
    b = invoke("sample", "-m", store, "-n", "80", "--random-seed", "3", "--seed", "我喜欢")
    assert a.exit_code == 0 and a.stdout == b.stdout and a.stderr == ""
    assert len(a.stdout) in (80, 81)  # a newline is added unless the sample ends with one
    greedy = invoke("sample", "-m", store, "-n", "30", "--greedy", "--seed", "我")
    assert greedy.stdout == invoke("sample", "-m", store, "-n", "30", "-t", "0", "--seed", "我").stdout


def test_sample_unknown_prompt_policies(trained):
    store, _ = trained
    warned = invoke("sample", "-m", store, "-n", "10", "--seed", "我喜欢猫狗")
    assert warned.exit_code == 0
    warning = one_error_line(warned)
    assert "warning" in warning and "'猫' '狗'" in warning
    skipped = invoke("sample", "-m", store, "-n", "10", "--seed", "我喜欢猫狗", "--unknown", "skip")
    assert skipped.exit_code == 0 and skipped.stderr == ""
    refused = invoke("sample", "-m", store, "-n", "10", "--seed", "我喜欢猫狗", "--unknown", "error")
    assert refused.exit_code == 1 and "'猫', '狗'" in one_error_line(refused)


def test_sample_seed_file_stdin_stop_and_num_samples(trained, tmp_path):
    store, _ = trained
    piped = invoke("sample", "-m", store, "-n", "40", "--seed-file", "-", "--random-seed", "1", input="我喜欢".encode())
    direct = invoke("sample", "-m", store, "-n", "40", "--seed", "我喜欢", "--random-seed", "1")
    assert piped.exit_code == 0 and piped.stdout == direct.stdout
    seed_file = tmp_path / "seed.txt"
    seed_file.write_bytes(b"ok \xff")
    bad = invoke("sample", "-m", store, "--seed-file", seed_file)
    assert bad.exit_code == 1 and "byte offset 3" in one_error_line(bad)
    stopped = invoke("sample", "-m", store, "-n", "500", "--seed", "我", "--stop", "。", "--greedy")
    assert stopped.stdout.rstrip("\n").endswith("。") and stopped.stdout.count("。") == 1
    three = invoke("sample", "-m", store, "-n", "30", "--num-samples", "3", "--random-seed", "2", "--seed", "The")
    assert three.exit_code == 0
    assert len(three.stdout) >= 3 * 30


# -- evaluate -------------------------------------------------------------------------------------


def test_evaluate_table_and_json(trained):
    store, corpus = trained
    table = invoke("evaluate", "-m", store, corpus)
    assert table.exit_code == 0, table.stderr
    names = [line.split()[0] for line in table.stdout.splitlines()]
    assert names == ["loss", "bits/char", "perplexity", "top-1", "top-5", "chars", "unknown"]
    result = invoke("evaluate", "-m", store, corpus, "--json")
    data = json.loads(result.stdout)
    for key in ("loss_nats", "bits_per_char", "perplexity", "accuracy_top1", "accuracy_top5", "chars", "unknown_chars"):
        assert key in data
    assert data["chars"] == len(TEXT) - 1 and data["unknown_chars"] == 0
    assert data["bits_per_char"] == pytest.approx(data["loss_nats"] / math.log(2))
    assert f"{data['bits_per_char']:.4f}" in table.stdout
    piped = invoke("evaluate", "-m", store, "-", "--json", input=TEXT.encode())
    assert json.loads(piped.stdout)["loss_nats"] == pytest.approx(data["loss_nats"])


def test_evaluate_dynamic(trained):
    store, corpus = trained
    static = json.loads(invoke("evaluate", "-m", store, corpus, "--json", "--num-streams", "1").stdout)
    result = invoke("evaluate", "-m", store, corpus, "--json", "--dynamic", "--dynamic-lr", "0.003")
    assert result.exit_code == 0, result.stderr
    dynamic = json.loads(result.stdout)
    assert dynamic["chars"] == static["chars"] and dynamic["dynamic_updates"] > 0
    assert dynamic["bits_per_char"] < static["bits_per_char"]  # the corpus repeats itself
    assert invoke("evaluate", "-m", store, corpus, "--dynamic-lr", "0.1").exit_code == 2


def test_evaluate_counts_unknown_characters(trained, tmp_path):
    store, _ = trained
    f = tmp_path / "new.txt"
    f.write_text("我喜欢猫。我喜欢狗。", encoding="utf-8")
    result = invoke("evaluate", "-m", store, f, "--json")
    data = json.loads(result.stdout)
    assert data["unknown_chars"] == 2 and data["chars"] == 9
    assert "2 scored chars (22.2%) are not in the vocabulary" in one_error_line(result)
    missing = invoke("evaluate", "-m", store, tmp_path / "nope.txt")
    assert missing.exit_code == 1 and "not found" in one_error_line(missing)


@pytest.fixture(scope="module")
def trained_words(tmp_path_factory):
    """A tiny word-level model trained through the CLI: (store directory, corpus path, stderr)."""
    return train_tiny(tmp_path_factory, "words", "--level", "word")


def test_word_level_figures_compare_with_the_char_level(trained_words):
    store, corpus, stderr = trained_words
    assert re.search(r"step +40 +loss [\d.]+ nats +val [\d.]+ bits/word +[\d,]+ words/s", stderr)
    data = json.loads(invoke("evaluate", "-m", store, corpus, "--json").stdout)
    assert data["level"] == "word" and data["unknown_tokens"] == data["unknown_chars"] == 0
    assert data["chars"] == len(TEXT) - 1  # the first token, 我, is not scored
    assert data["tokens"] < data["chars"] / 2
    assert data["bits_per_char"] * data["chars"] == pytest.approx(data["bits_per_token"] * data["tokens"])
    assert data["perplexity"] == pytest.approx(2 ** data["bits_per_token"])  # per word
    table = invoke("evaluate", "-m", store, corpus)
    names = [line.split()[0] for line in table.stdout.splitlines()]
    assert names == ["loss", "bits/char", "bits/word", "perplexity", "top-1", "top-5", "words", "chars", "unknown"]
    assert f"{data['bits_per_token']:.4f}" in table.stdout and f"{data['bits_per_char']:.4f}" in table.stdout


def test_word_level_predicts_words(trained_words):
    store, _, _ = trained_words
    result = invoke("predict", "-m", store, "--text", "The quick brown", "--json")
    cands = [c["text"] for c in json.loads(result.stdout)["candidates"]]
    assert cands[0] == " fox"
    assert " " not in cands


def test_info_quotes_the_words_of_a_word_vocabulary(trained_words):
    store, _, _ = trained_words
    line = next(x for x in invoke("info", "-m", store).stdout.splitlines() if x.startswith("vocabulary"))
    assert '" fox"' in line and '"\\n"' in line and "words (the unknown one included)" in line


def test_word_unknowns_count_words_and_their_characters(trained_words, tmp_path):
    store, _, _ = trained_words
    f = tmp_path / "new.txt"
    f.write_text("The quick zebra jumps over the lazy elephant.", encoding="utf-8")
    result = invoke("evaluate", "-m", store, f, "--json")
    data = json.loads(result.stdout)
    assert data["unknown_tokens"] == 2 and data["unknown_chars"] == len(" zebra elephant")
    assert data["chars"] == len("The quick zebra jumps over the lazy elephant.") - len("The")
    assert "2 scored words (" in one_error_line(result)


OLD_WORDS = REPO / "tests" / "data" / "word-scheme1.txt"
OLD_MODEL = REPO / "tests" / "data" / "word-scheme1.npz"  # saved before word schemes (tests/data/README.md)


def test_an_old_word_model_reads_text_as_it_was_trained_to():
    data = json.loads(invoke("evaluate", "-m", OLD_MODEL, OLD_WORDS, "--json").stdout)
    # the figures the old charrnn gave: the same words, scored the same
    assert data["tokens"] == 999 and data["loss_nats"] == pytest.approx(1.9332942647618931, rel=1e-6)
    assert data["chars"] == len(OLD_WORDS.read_text()) - len("the")
    result = invoke("predict", "-m", OLD_MODEL, "--text", "the cat", "--json")
    cands = [(c["text"], round(c["prob"], 4)) for c in json.loads(result.stdout)["candidates"]]
    assert cands[:3] == [(" ", 0.2319), ("the", 0.1246), (".", 0.1005)]


# -- predict --------------------------------------------------------------------------------------


def test_predict_json_lines_from_stdin(trained):
    store, _ = trained
    result = invoke("predict", "-m", store, "--json", "--top", "3", input="我喜欢\nThe quick\n\n".encode())
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert "我喜欢" in lines[0]  # ensure_ascii=False: readable CJK
    for line, expected in zip(lines, ["我喜欢", "The quick", ""]):
        obj = json.loads(line)
        assert obj["input"] == expected
        probs = [c["prob"] for c in obj["candidates"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)


def test_predict_beam_search_and_table(trained):
    store, _ = trained
    result = invoke("predict", "-m", store, "--text", "我喜欢", "--chars", "2", "--top", "4", "--json")
    cands = json.loads(result.stdout)["candidates"]
    assert len(cands) == 4 and all(len(c["text"]) == 2 for c in cands)
    table = invoke("predict", "-m", store, "--text", "我喜欢", "--chars", "2", "--top", "4")
    lines = table.stdout.splitlines()
    assert lines[0] == '"我喜欢"' and len(lines) == 5
    assert all(re.fullmatch(r'  \d\.\d{4}  ".*"', line) for line in lines[1:])


# -- info -----------------------------------------------------------------------------------------


def test_info_text_and_json(trained):
    store, corpus = trained
    result = invoke("info", "-m", store)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for label in ("model", "size", "vocabulary", "trained", "corpus", "best val", "val curve", "checkpoints in"):
        assert label in out
    assert "120 steps" in out and "corpus.txt" in out
    curve = re.search(r"val curve +(\S+)", out).group(1)
    assert len(curve) == 3 and set(curve) <= set(SPARKS)  # validations at steps 40, 80, 120
    data = json.loads(invoke("info", "-m", store, "--json").stdout)
    assert data["vocab_size"] == len(set(TEXT)) + 1 and data["params"] > 0
    assert [p["step"] for p in data["val_curve"]] == [40, 80, 120]
    ckpt = next(store.glob("ckpt-*.npz"))
    single = invoke("info", "-m", ckpt)
    assert single.exit_code == 0 and "checkpoints in" not in single.stdout


def test_info_shows_the_whole_curve_when_best_is_not_latest(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    m = tmp_path / "m"
    args = ["--hidden-size", "8", "--seq-len", "8", "--batch-size", "4", "--eval-every", "5", "--save-every", "5"]
    assert invoke("train", corpus, "-m", m, *args, "--steps", "10").exit_code == 0
    index = json.loads((m / "store.json").read_text())
    index["best"] = "ckpt-000000005.npz"  # as if validation had got worse after step 5
    (m / "store.json").write_text(json.dumps(index))
    out = invoke("info", "-m", m).stdout
    assert "trained     5 steps (the store's latest: step 10)" in out
    assert "over 2 validations" in out
    assert re.search(r"ckpt-000000005.npz .* best\n .*ckpt-000000010.npz .* latest", out)


def test_sparkline():
    assert sparkline([]) == ""
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert sparkline([1.0, 1.0]) == "▁▁"
    assert len(sparkline(list(range(1000)), width=50)) == 50


# -- real processes -------------------------------------------------------------------------------


def test_process_train_then_sample_with_default_paths(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    trained = charrnn_process("train", "corpus.txt", *TINY, "--steps", "30", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr.decode()
    assert (tmp_path / "charrnn-model" / "store.json").is_file()
    sampled = charrnn_process("sample", "-n", "50", "--seed", "我喜欢", cwd=tmp_path)
    assert sampled.returncode == 0 and sampled.stderr == b""
    assert len(sampled.stdout.decode("utf-8")) in (50, 51)


def test_process_stdin_corpus_and_evaluate_json(tmp_path):
    trained = charrnn_process("train", "-", "-m", "m", *TINY, "--steps", "20", cwd=tmp_path, input=TEXT.encode())
    assert trained.returncode == 0, trained.stderr.decode()
    info = json.loads(charrnn_process("info", "-m", "m", "--json", cwd=tmp_path).stdout)
    assert info["corpus"]["names"] == ["-"] and info["corpus"]["chars"] == len(TEXT)
    out = charrnn_process("evaluate", "-m", "m", "--json", "-", cwd=tmp_path, input=TEXT.encode())
    data = json.loads(out.stdout)
    assert {"loss_nats", "bits_per_char", "perplexity", "accuracy_top1", "accuracy_top5", "chars", "unknown_chars"} <= set(data)


def test_process_predict_stdin_lines_answers_each_line_at_once(trained):
    store, _ = trained
    proc = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "predict", "-m", str(store), "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )
    try:
        answers = []
        for line in ("我喜欢", "学习"):
            proc.stdin.write((line + "\n").encode())
            proc.stdin.flush()
            answers.append(json.loads(proc.stdout.readline().decode("utf-8")))  # before stdin closes
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert [a["input"] for a in answers] == ["我喜欢", "学习"]
    assert all(len(a["candidates"]) == 5 for a in answers)


def test_process_sample_into_a_closed_pipe_is_quiet(trained, tmp_path):
    store, _ = trained
    script = (
        f'"{sys.executable}" -m charrnn sample -m "{store}" -n 100000 2>err.txt | head -c 100 > out.txt; '
        'echo "${PIPESTATUS[0]}" > status.txt'
    )
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env(), timeout=60, check=True)
    assert len((tmp_path / "out.txt").read_bytes()) == 100
    assert (tmp_path / "err.txt").read_text() == ""
    assert (tmp_path / "status.txt").read_text().strip() == "0"


def test_process_ctrl_c_saves_and_exits_130(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    proc = subprocess.Popen(
        # --epochs: a small text would otherwise end after its 12 passes before the signal comes
        [sys.executable, "-m", "charrnn", "train", "corpus.txt", "-m", "m", *TINY, "--max-time", "60", "--epochs", "10000",
         "--save-every", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )
    try:
        proc.stderr.readline()  # the run is described once training is about to start
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()
    assert "stopped (interrupted)" in err.decode() and b"Traceback" not in err
    assert list((tmp_path / "m").glob("ckpt-*.npz"))


def test_dynamic_adaptation_for_sample_and_predict(tmp_path):
    """--dynamic (sample) and --adapt (predict) learn from a text first; output stays clean."""
    from click.testing import CliRunner

    from charrnn.cli import cli

    corpus = tmp_path / "c.txt"
    corpus.write_text("我喜欢学习数学。我喜欢看书。" * 60 + "the cat sat on the mat. " * 40, encoding="utf-8")
    model = tmp_path / "m"
    runner = CliRunner()
    r = runner.invoke(cli, ["train", str(corpus), "-m", str(model), "--hidden-size", "16", "--steps", "20",
                            "--seq-len", "16", "--batch-size", "4", "-q"])
    assert r.exit_code == 0, r.output
    prompt = tmp_path / "p.txt"
    prompt.write_text("我喜欢学习数学。" * 20, encoding="utf-8")
    r = runner.invoke(cli, ["sample", "-m", str(model), "--seed-file", str(prompt), "--dynamic", "-n", "5", "--random-seed", "1"])
    assert r.exit_code == 0, r.output
    assert "adapted to the prompt" in r.stderr and "adapted" not in r.stdout
    r = runner.invoke(cli, ["predict", "-m", str(model), "--adapt", str(prompt), "--text", "我喜欢", "--json"])
    assert r.exit_code == 0, r.output
    assert "adapted to" in r.stderr
    import json as _json

    assert _json.loads(r.stdout)["candidates"]
    r = runner.invoke(cli, ["sample", "-m", str(model), "--seed", "我", "--dynamic"])
    assert r.exit_code == 1 and "too short" in r.stderr


# -- the class-factored output layer --------------------------------------------------------------


@pytest.fixture(scope="module")
def chinese_classes(tmp_path_factory):
    """A model trained through the CLI on the bundled Chinese text (~1,400 distinct characters,
    so ``--output auto`` picks the class head)."""
    store = tmp_path_factory.mktemp("classes") / "model"
    corpus = REPO / "corpora" / "chinese.txt"
    result = invoke("train", corpus, "-m", store, *TINY, "--steps", "40", "-q")
    assert result.exit_code == 0, result.stderr
    return store, corpus


def test_auto_trains_the_class_head_on_chinese_and_every_command_uses_it(chinese_classes, tmp_path):
    store, corpus = chinese_classes
    info = json.loads(invoke("info", "-m", store, "--json").stdout)
    K = info["vocab_size"]
    assert K > 1000 and info["output"] == {"kind": "classes", "num_classes": round(math.sqrt(K))}
    assert "class_of" not in info["model"]  # K numbers: in the checkpoint, not on the screen
    text = invoke("info", "-m", store).stdout
    assert re.search(rf"^output +{round(math.sqrt(K))} frequency classes of \d+ to \d+ tokens", text, re.M)
    for options in ([], ["-t", "0.8"], ["--top-k", "5"], ["--greedy"]):
        sampled = invoke("sample", "-m", store, "-n", "30", "--random-seed", "1", "--seed", "我们", *options)
        assert sampled.exit_code == 0, sampled.stderr
        assert len(sampled.stdout) == 31 and sampled.stdout.endswith("\n")
    again = invoke("sample", "-m", store, "-n", "30", "--random-seed", "1", "--seed", "我们")
    assert again.stdout == invoke("sample", "-m", store, "-n", "30", "--random-seed", "1", "--seed", "我们").stdout
    part = tmp_path / "part.txt"
    part.write_text(corpus.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    scored = json.loads(invoke("evaluate", "-m", store, part, "--json").stdout)
    assert 0 < scored["bits_per_char"] < math.log2(K)
    dynamic = invoke("evaluate", "-m", store, part, "--json", "--dynamic")
    assert dynamic.exit_code == 0, dynamic.stderr
    predicted = json.loads(invoke("predict", "-m", store, "--text", "我们", "--top", "3", "--json").stdout)
    probs = [c["prob"] for c in predicted["candidates"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)


def test_output_full_and_num_classes_through_the_cli(tmp_path):
    corpus = REPO / "corpora" / "chinese.txt"
    full = invoke("train", corpus, "-m", tmp_path / "full", *TINY, "--steps", "2", "-q", "--output", "full")
    assert full.exit_code == 0, full.stderr
    assert json.loads(invoke("info", "-m", tmp_path / "full", "--json").stdout)["output"] == {"kind": "full"}
    assert "full softmax over" in invoke("info", "-m", tmp_path / "full").stdout
    some = invoke("train", corpus, "-m", tmp_path / "c", *TINY, "--steps", "2", "-q", "--num-classes", "7")
    assert some.exit_code == 0, some.stderr
    info = json.loads(invoke("info", "-m", tmp_path / "c", "--json").stdout)
    assert info["output"] == {"kind": "classes", "num_classes": 7}
    # resuming keeps the checkpoint's head, whatever the command line says
    resumed = invoke("train", corpus, "-m", tmp_path / "c", "--steps", "1", "-q", "--resume", "--output", "full")
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(invoke("info", "-m", tmp_path / "c", "--json").stdout)["output"]["num_classes"] == 7
    assert invoke("train", corpus, "-m", tmp_path / "x", "--output", "tree").exit_code == 2
    assert invoke("train", corpus, "-m", tmp_path / "x", "--num-classes", "0").exit_code == 2


def test_the_auto_threshold_in_the_help_is_the_one_in_force():
    from charrnn.output import AUTO_CLASSES_FROM

    (param,) = [p for p in cli.commands["train"].params if p.name == "output"]
    assert f"auto: classes from {AUTO_CLASSES_FROM} tokens" in param.help
