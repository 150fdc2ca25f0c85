"""The ``ferrolm`` command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import ferrolm
from ferrolm.cli import main


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


@pytest.mark.parametrize("args", [["--help"], ["info", "--help"]])
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
