"""Tokenizers: text to token ids and back, in Rust.

``Tokenizer`` is a byte-level BPE tokenizer, token-for-token identical to tiktoken on the same
ranks. Build one from the bundled data (``Tokenizer.builtin("gpt2")``) or from a tiktoken rank
file (``Tokenizer.from_tiktoken(path, pattern, special_tokens)``).

A tokenizer is immutable: share one across threads, pickle it to worker processes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from ferrolm import _core
from ferrolm._data import data_path

__all__ = ["GPT2_PATTERN", "Tokenizer", "builtin_names"]

#: GPT-2's split pattern (the one tiktoken's ``gpt2`` encoding and OpenAI's encoder.py use).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

_BUILTINS: dict[str, tuple[str, str, dict[str, int]]] = {
    "gpt2": ("gpt2.tiktoken", GPT2_PATTERN, {"<|endoftext|>": 50256}),
}


def builtin_names() -> list[str]:
    """The names ``Tokenizer.builtin`` accepts."""
    return sorted(_BUILTINS)


class Tokenizer(_core.Tokenizer):
    """A byte-level BPE tokenizer.

    ``encode(text)`` / ``decode(ids)`` follow tiktoken, including its handling of special
    tokens written in the text (``allowed_special`` / ``disallowed_special``).
    ``encode_batch`` and ``decode_batch`` run in parallel on ferrolm's thread pool.
    """

    _builtin_name: str | None = None

    @classmethod
    def builtin(cls, name: str) -> Tokenizer:
        """A tokenizer from the data bundled with ferrolm, offline: ``"gpt2"``.

        Built once per process and shared (tokenizers are immutable).
        """
        return _builtin(cls, name)

    @classmethod
    def from_tiktoken(
        cls,
        path: str | os.PathLike[str],
        pattern: str = GPT2_PATTERN,
        special_tokens: Mapping[str, int] | None = None,
    ) -> Tokenizer:
        """A tokenizer from a tiktoken rank file (lines of ``<base64 token> <rank>``), the split
        pattern that goes with it, and its special tokens (``{text: id}``).

        A pattern ferrolm cannot run in linear time (look-around other than GPT-2's, possessive
        quantifiers) raises ``ferrolm.FormatError`` naming it.
        """
        path = os.fspath(path)
        with open(path, "rb") as f:
            data = f.read()
        return cls(data, pattern, dict(special_tokens or {}), os.path.basename(path))

    @property
    def special_tokens_set(self) -> set[str]:
        """The special tokens' texts (tiktoken's ``special_tokens_set``)."""
        return set(self.special_tokens)

    @property
    def n_vocab(self) -> int:
        """tiktoken's name for ``vocab_size``."""
        return int(self.vocab_size)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._builtin_name is not None:
            return (_builtin, (type(self), self._builtin_name))
        return (
            type(self),
            (self.to_tiktoken_bytes(), self.pattern, self.special_tokens, self.name),
        )

    def __repr__(self) -> str:
        return f"<ferrolm.Tokenizer {self.name!r} vocab_size={self.vocab_size}>"


_builtin_cache: dict[tuple[type[Tokenizer], str], Tokenizer] = {}
_builtin_lock = threading.Lock()


def _builtin(cls: type[Tokenizer], name: str) -> Tokenizer:
    try:
        filename, pattern, specials = _BUILTINS[name]
    except KeyError:
        raise ValueError(
            f"no built-in tokenizer named {name!r}; available: {', '.join(builtin_names())}"
        ) from None
    with _builtin_lock:
        tok = _builtin_cache.get((cls, name))
        if tok is None:
            with open(data_path(filename), "rb") as f:
                tok = cls(f.read(), pattern, specials, name)
            tok._builtin_name = name
            _builtin_cache[(cls, name)] = tok
    return tok
