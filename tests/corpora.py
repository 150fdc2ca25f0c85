"""Text for parity tests and benches: the shared corpora when present, else CPython's stdlib."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_corpus_dir() -> Path | None:
    """``$FERROLM_CORPORA`` or ``../shared/data/corpora`` next to the repository, if present."""
    env = os.environ.get("FERROLM_CORPORA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / "corpora"]:
        if cand.is_dir():
            return cand
    return None


def stdlib_code(limit: int = 4 << 20) -> str:
    """The first ``limit`` bytes of CPython's sorted top-level stdlib ``*.py`` files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    size = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text.encode())
        if size >= limit:
            break
    return "".join(parts).encode()[:limit].decode("utf-8", errors="ignore")


def corpora() -> dict[str, str]:
    """Name -> text of every corpus available on this machine."""
    out = {"stdlib-code": stdlib_code()}
    d = shared_corpus_dir()
    if d is not None:
        for name in ("en-fortunes.txt", "zh-fortunes.txt"):
            p = d / name
            if p.is_file():
                out[name] = p.read_text(encoding="utf-8", errors="replace")
    return out
