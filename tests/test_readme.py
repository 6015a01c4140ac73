"""The README's examples run as written.

Every ``$ command`` line of the README's indented or fenced shell examples is run, in order, in
a scratch directory holding the files the examples name (the start of the bundled corpora as
english.txt and chinese.txt, a Latin-1 file, no missing.txt). Quick commands run exactly as written; training
commands whose budget is long (more than QUICK_SECONDS of --max-time, or no limit at all) are
the only ones skipped, and the models they would have made are trained beforehand with a short
budget. A command shown with an "Error:" or "Usage:" line after it must fail with exit status 1
or 2; every other command must succeed. The Python block of the API section is executed too.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
QUICK_SECONDS = 20
SKIP_WORDS = ("mpiexec", "pip install", "curl", "wget", "python -m wikiextractor", "git clone", "echo $?")


def shell_examples(text: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown after it) for every ``$ `` line of the README."""
    examples, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*\$ (.+)$", line)
        if not m:
            continue
        shown = []
        for after in lines[i + 1 :]:
            if re.match(r"^\s*\$ ", after) or not after.strip() and shown and not after.startswith("    "):
                break
            if after.startswith("```"):
                break
            shown.append(after.strip())
        examples.append((m.group(1).strip(), shown))
    return examples


def is_long_training(command: str) -> bool:
    if "charrnn train" not in command:
        return False
    words = shlex.split(command.split("|")[-1])
    limits = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--max-time", "--steps", "--epochs")}
    if "--steps" in limits:
        return int(limits["--steps"]) > 2000
    if "--max-time" in limits:
        return float(limits["--max-time"]) > QUICK_SECONDS
    return True


def expected_failure(shown: list[str]) -> bool:
    return any(line.startswith(("Error:", "Usage:")) for line in shown)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    # the bundled corpora, cut short so that every example runs in seconds
    for name, chars in (("english.txt", 40_000), ("chinese.txt", 8_000)):
        text = (ROOT / "corpora" / name).read_text(encoding="utf-8")[:chars]
        (d / name).write_text(text, encoding="utf-8")
    (d / "latin1.txt").write_bytes("naïve café".encode("latin-1"))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    env.pop("CHARRNN_MODEL", None)
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    # the models that the long training examples would make, trained briefly
    for args in (["chinese.txt"], ["english.txt", "-m", "english-model"]):
        subprocess.run(
            [sys.executable, "-m", "charrnn", "train", *args, "--hidden-size", "64", "--steps", "60",
             "--seq-len", "32", "--batch-size", "16", "-q"],
            cwd=d, env=env, check=True, capture_output=True,
        )
    return d, env


EXAMPLES = shell_examples(README.read_text(encoding="utf-8"))


def test_readme_has_shell_examples():
    assert len(EXAMPLES) >= 15
    assert any("charrnn sample" in c for c, _ in EXAMPLES)


@pytest.mark.parametrize("command,shown", EXAMPLES, ids=[c[:60] for c, _ in EXAMPLES])
def test_readme_example_runs(scratch, command, shown):
    d, env = scratch
    if any(w in command for w in SKIP_WORDS):
        pytest.skip("needs the network, MPI or a second machine")
    if is_long_training(command):
        pytest.skip(f"training for more than {QUICK_SECONDS} s")
    if "charrnn" not in command:
        pytest.skip("not a charrnn command")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=d, env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    if expected_failure(shown):
        assert r.returncode in (1, 2), (r.returncode, r.stdout, r.stderr)
        error = next((line for line in shown if line.startswith("Error:")), None)
        if error is not None:  # the message starts as the README says
            assert error.split(":")[1].strip().split()[0] in r.stderr, r.stderr
    else:
        assert r.returncode == 0, (r.returncode, r.stderr)


def test_readme_python_api_example_runs():
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr
