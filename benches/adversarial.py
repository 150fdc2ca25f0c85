"""Adversarial text for the linear-time checks (tests/test_hardening.py on moderate sizes,
benches/bench_adversarial.py up to 2^24 characters): each generator makes exactly `n`
characters from a seed.

- ``one-char``: one letter repeated, no spaces (one piece of the whole length for BPE);
- ``digits``: random digits (number splitting, ``\\p{N}{1,3}``);
- ``whitespace``: runs of spaces, tabs, newlines and other white space (``\\s+(?!\\S)``);
- ``alternating-scripts``: Latin, Cyrillic, Greek, CJK, Arabic, Devanagari letters and digits
  mixed with no spaces (every class boundary);
- ``random-bytes``: random bytes decoded as UTF-8 with replacement (invalid sequences,
  controls, stray continuation bytes);
- ``emoji-zwj``: emoji joined by zero-width joiners and variation selectors, no spaces.
"""

from __future__ import annotations

import random
from collections.abc import Callable

_SCRIPTS = "aZéЖжΩλ中文字بعकख1٣"
_SPACES = " \t\n\r\u00a0\u2003\u3000"
_EMOJI = ["👩", "👨", "👧", "👦", "🏳", "🌈", "❤", "🔥", "👍🏽", "🧑‍🚀"]


def one_char(n: int, seed: int = 0) -> str:
    return "a" * n


def digits(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices("0123456789", k=n))


def whitespace(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices(_SPACES, weights=[8, 2, 2, 1, 1, 1, 1], k=n))


def alternating_scripts(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices(_SCRIPTS, k=n))


def random_bytes(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    have = 0
    while have < n:
        chunk = rng.randbytes(max(64, n - have)).decode("utf-8", errors="replace")
        parts.append(chunk)
        have += len(chunk)
    return "".join(parts)[:n]


def emoji_zwj(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    have = 0
    while have < n:
        e = rng.choice(_EMOJI) + rng.choice(["\u200d", "\u200d", "\ufe0f", ""])
        parts.append(e)
        have += len(e)
    return "".join(parts)[:n]


GENERATORS: dict[str, Callable[..., str]] = {
    "one-char": one_char,
    "digits": digits,
    "whitespace": whitespace,
    "alternating-scripts": alternating_scripts,
    "random-bytes": random_bytes,
    "emoji-zwj": emoji_zwj,
}
