"""The examples of the README and of every page in docs/ run as written.

Every ``$ command`` line of a file's indented or fenced shell examples is run, in order, in a
scratch directory of that file's own, holding the files the examples name (the start of the
bundled corpora as english.txt and chinese.txt, a Latin-1 file, no missing.txt) and the two models
that the long training examples would make (charrnn-model from chinese.txt, english-model),
trained once with a short budget and copied into each directory. Quick commands run exactly as
written; training commands whose budget is long (more than QUICK_SECONDS of --max-time, or no
limit at all) are the only ones skipped. A command shown with an "Error:" or "Usage:" line after
it must fail with exit status 1 or 2; every other command must succeed. Every ```python block
is executed too (the Python API page must have some).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
QUICK_SECONDS = 20
SKIP_WORDS = ("mpiexec", "pip install", "curl", "wget", "python -m wikiextractor", "git clone", "echo $?")


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def shell_examples(text: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown after it) for every ``$ `` line of a page."""
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


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A directory with what the examples name, and the environment to run them in."""
    d = tmp_path_factory.mktemp("prepared")
    # the bundled corpora, cut short so that every example runs in seconds
    for name, chars in (("english.txt", 40_000), ("chinese.txt", 8_000)):
        text = (ROOT / "corpora" / name).read_text(encoding="utf-8")[:chars]
        (d / name).write_text(text, encoding="utf-8")
    (d / "latin1.txt").write_bytes("naïve café".encode("latin-1"))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONIOENCODING="utf-8", PYTHONPATH=str(ROOT))
    env.pop("CHARRNN_MODEL", None)
    # `charrnn` runs this checkout's code, installed or not
    bindir = tmp_path_factory.mktemp("bin")
    (bindir / "charrnn").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m charrnn "$@"\n')
    (bindir / "charrnn").chmod(0o755)
    env["PATH"] = f"{bindir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # the models that the long training examples would make, trained briefly, once for all pages
    for args in (["chinese.txt"], ["english.txt", "-m", "english-model"]):
        subprocess.run(
            [sys.executable, "-m", "charrnn", "train", *args, "--hidden-size", "64", "--steps", "60",
             "--seq-len", "32", "--batch-size", "16", "-q"],
            cwd=d, env=env, check=True, capture_output=True,
        )
    return d, env


@pytest.fixture(scope="module")
def scratch(prepared, tmp_path_factory):
    """scratch(page): that page's own copy of the prepared directory, kept across its examples."""
    d, env = prepared
    dirs: dict[str, Path] = {}

    def for_page(page: str) -> tuple[Path, dict]:
        if page not in dirs:
            dirs[page] = tmp_path_factory.mktemp("page") / "scratch"
            shutil.copytree(d, dirs[page])
        return dirs[page], env

    return for_page


EXAMPLES = [
    (page_id(page), command, shown)
    for page in PAGES
    for command, shown in shell_examples(page.read_text(encoding="utf-8"))
]
PYTHON_BLOCKS = [
    (page_id(page), i, block)
    for page in PAGES
    for i, block in enumerate(python_blocks(page.read_text(encoding="utf-8")))
]


def test_pages_have_examples():
    readme = [c for p, c, _ in EXAMPLES if p == "README.md"]
    assert any("charrnn train" in c for c in readme) and any("charrnn sample" in c for c in readme)
    assert len(EXAMPLES) >= 15
    assert any(p == "docs/api.md" for p, _, _ in PYTHON_BLOCKS)


def test_docs_pages_are_linked_from_the_readme():
    text = README.read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        assert f"](docs/{page.name}" in text, page.name


@pytest.mark.parametrize("page,command,shown", EXAMPLES, ids=[f"{p}: {c[:60]}" for p, c, _ in EXAMPLES])
def test_example_runs(scratch, page, command, shown):
    d, env = scratch(page)
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
        if error is not None:  # the message starts as the page says
            assert error.split(":")[1].strip().split()[0] in r.stderr, r.stderr
    else:
        assert r.returncode == 0, (r.returncode, r.stderr)


@pytest.mark.parametrize("page,index,block", PYTHON_BLOCKS, ids=[f"{p}: block {i + 1}" for p, i, _ in PYTHON_BLOCKS])
def test_python_example_runs(page, index, block):
    r = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
