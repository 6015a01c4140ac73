"""Shell completion: click's scripts for bash, zsh and fish, and real completions, through
``python -m charrnn`` (the console script passes the same program name, so the same variable)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import charrnn

ROOT = Path(charrnn.__file__).resolve().parent.parent


def charrnn_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CHARRNN_MODEL"}
    env.update(PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", **extra)
    return env


def complete(instruction: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charrnn"], capture_output=True, text=True, timeout=60,
                          env=charrnn_env(_CHARRNN_COMPLETE=instruction, **extra))


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_completion_script_is_printed(shell):
    result = complete(f"{shell}_source")
    assert result.returncode == 0, result.stderr
    assert "_charrnn_completion" in result.stdout  # the function the script defines
    assert f"_CHARRNN_COMPLETE={shell}_complete" in result.stdout  # and how it calls charrnn back
    assert result.stderr == ""


def test_commands_and_options_are_completed():
    result = complete("bash_complete", COMP_WORDS="charrnn tr", COMP_CWORD="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["plain,train"]
    result = complete("bash_complete", COMP_WORDS="charrnn train --hidden", COMP_CWORD="2")
    assert result.stdout.split() == ["plain,--hidden-size"]
    result = complete("bash_complete", COMP_WORDS="charrnn train --cell ", COMP_CWORD="3")
    assert result.stdout.split() == ["plain,rnn", "plain,lstm", "plain,gru"]
    # zsh and fish: the format of each line differs between click versions; the command is offered
    result = complete("zsh_complete", COMP_WORDS="charrnn sa", COMP_CWORD="1")
    assert result.returncode == 0 and "sample" in result.stdout and "train" not in result.stdout
    result = complete("fish_complete", COMP_WORDS="charrnn ev", COMP_CWORD="ev")
    assert result.returncode == 0 and "evaluate" in result.stdout and "train" not in result.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_through_the_sourced_script(tmp_path):
    """What a user gets: the script sourced in bash, then <Tab> after ``charrnn tr``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    launcher = bindir / "charrnn"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m charrnn "$@"\n')
    launcher.chmod(0o755)
    script = (
        'eval "$(_CHARRNN_COMPLETE=bash_source charrnn)"\n'
        "COMP_WORDS=(charrnn tr); COMP_CWORD=1; _charrnn_completion charrnn tr charrnn  # as bash calls it\n"
        'echo "${COMPREPLY[@]}"\n'
    )
    env = charrnn_env(PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["train"]
