"""The terminal progress bar."""

from __future__ import annotations

import io

import pytest

from ferrolm._progress import Progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_draws_on_a_terminal_and_ends_the_line() -> None:
    out = FakeTTY()
    with Progress(10, "loading", stream=out, min_interval=0.0) as p:
        for _ in range(10):
            p.update()
    text = out.getvalue()
    assert text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    assert last.startswith("loading: 100% |" + "#" * 24 + "| 10/10 [")


def test_silent_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERROLM_PROGRESS", raising=False)
    out = io.StringIO()
    with Progress(5, "x", stream=out) as p:
        p.update(5)
    assert out.getvalue() == "" and p.count == 5


def test_env_forces_it_on_or_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERROLM_PROGRESS", "1")
    assert Progress(1, "x", stream=io.StringIO()).enabled
    monkeypatch.setenv("FERROLM_PROGRESS", "0")
    assert not Progress(1, "x", stream=FakeTTY()).enabled


def test_throttled_redraws() -> None:
    out = FakeTTY()
    p = Progress(1000, "x", stream=out, min_interval=3600.0)
    for _ in range(1000):
        p.update()
    assert out.getvalue().count("\r") == 1  # only the first update drew
    p.close()
    assert out.getvalue().count("\r") == 2


def test_unknown_total_and_validation() -> None:
    p = Progress(None, "reading", unit="B", enabled=False)
    p.update(2048)
    assert p.render().startswith("reading: 2048 B [")
    half = Progress(4, "h", enabled=False)
    half.update(2)
    assert " 50% |" + "#" * 12 + "-" * 12 + "| 2/4" in half.render()
    with pytest.raises(ValueError):
        Progress(-1, "bad")
