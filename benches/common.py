"""Shared helpers for the benches: timing (medians of repeats), the machine line, the table."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

Timing = tuple[float, float, float]  # median, min, max seconds


def timed(fn: Callable[[], object], repeat: int) -> Timing:
    """Median, min and max wall time of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def per_call(fn: Callable[[], object], repeat: int, calls: int) -> Timing:
    """``timed`` of a loop of ``calls`` calls, divided by ``calls``."""

    def loop() -> None:
        for _ in range(calls):
            fn()

    med, lo, hi = timed(loop, repeat)
    return med / calls, lo / calls, hi / calls


def interleaved(fns: list[Callable[[], object]], repeat: int, calls: int = 1) -> list[Timing]:
    """``per_call`` of each of ``fns``, their runs taken in turns (A B A B ...), so that a
    slow phase of a noisy machine falls on every engine alike; a pause before each run lets
    the previous engine's spinning worker threads go idle."""

    def loop(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls

    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for t, fn in zip(times, fns, strict=True):
            time.sleep(0.05)
            t.append(loop(fn))
    return [(statistics.median(t), min(t), max(t)) for t in times]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


class Table:
    """Rows of ferrolm against one peer; prints medians with [min..max] and the time ratio."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.rows: list[tuple[str, str, str, str]] = []

    @staticmethod
    def _cell(t: Timing, unit: Callable[[float], str]) -> str:
        lo, hi = sorted((t[1], t[2]), key=lambda x: float(unit(x).split()[0]))
        return f"{unit(t[0])} [{unit(lo).split()[0]}..{unit(hi).split()[0]}]"

    def add(self, what: str, ours: Timing, peer: Timing, unit: Callable[[float], str]) -> None:
        self.rows.append(
            (what, self._cell(ours, unit), self._cell(peer, unit), f"{peer[0] / ours[0]:.2f}x")
        )

    def print(self) -> None:
        head = ("workload", "ferrolm", self.peer, f"{self.peer} time / ferrolm time")
        table = [head, *self.rows]
        w = [max(len(r[i]) for r in table) for i in range(4)]
        print()
        for r in table:
            print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())


def rate(n_bytes: int) -> Callable[[float], str]:
    return lambda s: f"{n_bytes / 1e6 / s:.1f} MB/s"


def micros(s: float) -> str:
    return f"{s * 1e6:.2f} us"


def millis(s: float) -> str:
    return f"{s * 1e3:.2f} ms"
