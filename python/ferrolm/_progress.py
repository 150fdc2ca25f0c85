"""A dependency-free progress bar for long work (loading, quantizing, benchmarks).

Drawn on stderr only when stderr is a terminal (or when asked), redrawn at most ten times a
second, and erased-free: the final state stays on its line. Set ``FERROLM_PROGRESS=0`` to turn it
off everywhere, ``=1`` to force it on.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress"]

_BAR_WIDTH = 24


def _fmt_seconds(s: float) -> str:
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """``with Progress(total, "loading") as p: ... p.update(k)``.

    ``total`` may be ``None`` when unknown (then only the count and rate are shown).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        enabled: bool | None = None,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
    ) -> None:
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0 or None, got {total}")
        self.total = total
        self.desc = desc
        self.unit = unit
        self.count = 0
        self._stream = stream if stream is not None else sys.stderr
        if enabled is None:
            env = os.environ.get("FERROLM_PROGRESS", "")
            if env in ("0", "1"):
                enabled = env == "1"
            else:
                isatty = getattr(self._stream, "isatty", None)
                enabled = bool(isatty and isatty())
        self.enabled = enabled
        self._min_interval = min_interval
        self._start = time.monotonic()
        self._last_draw = float("-inf")
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self._last_draw >= self._min_interval:
            self._draw(now)

    def render(self, now: float | None = None) -> str:
        """The bar's current line (without the carriage return)."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        rate_s = f"{rate:.1f} {self.unit}/s"
        if self.total:
            frac = min(self.count / self.total, 1.0)
            filled = int(frac * _BAR_WIDTH)
            bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
            eta = (self.total - self.count) / rate if rate > 0 else 0.0
            return (
                f"{self.desc}: {frac * 100:3.0f}% |{bar}| {self.count}/{self.total} "
                f"[{_fmt_seconds(elapsed)}<{_fmt_seconds(max(eta, 0.0))}, {rate_s}]"
            )
        return f"{self.desc}: {self.count} {self.unit} [{_fmt_seconds(elapsed)}, {rate_s}]"

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self._stream.write("\r" + self.render(now))
        self._stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
