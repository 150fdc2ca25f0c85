"""Tokenizers: text to token ids and back, in Rust.

``Tokenizer`` is either a byte-level BPE tokenizer, token-for-token identical to tiktoken on the
same ranks, or a WordPiece (BERT) tokenizer identical to Hugging Face ``tokenizers``.

- ``Tokenizer.builtin("gpt2")`` / ``Tokenizer.builtin("bert-base-uncased")``: offline, from the
  data bundled with ferrolm;
- ``Tokenizer.from_file(path)``: a ``tokenizer.json``, ``vocab.txt`` or ``*.tiktoken`` file;
- ``Tokenizer.from_pretrained(dir_or_name)``: a model folder, or a name found in the local
  Hugging Face cache (never the network);
- ``Tokenizer.from_tiktoken(path, pattern, special_tokens)``: any tiktoken rank file.

A tokenizer is immutable: share one across threads, pickle it to worker processes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ferrolm import _core
from ferrolm._data import data_path
from ferrolm._errors import FormatError

__all__ = ["GPT2_PATTERN", "Tokenizer", "builtin_names"]

#: GPT-2's split pattern (the one tiktoken's ``gpt2`` encoding and OpenAI's encoder.py use).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# name -> (bundled file, kind, constructor options)
_BUILTINS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": (
        "gpt2.tiktoken",
        "tiktoken",
        {"pattern": GPT2_PATTERN, "special_tokens": {"<|endoftext|>": 50256}},
    ),
    "bert-base-uncased": ("bert-base-uncased-vocab.txt", "vocab.txt", {"lowercase": True}),
}


def builtin_names() -> list[str]:
    """The names ``Tokenizer.builtin`` accepts."""
    return sorted(_BUILTINS)


class Tokenizer(_core.Tokenizer):
    """A byte-level BPE or WordPiece tokenizer.

    ``encode(text)`` / ``decode(ids)``; for BPE, special tokens written in the text follow
    tiktoken (``allowed_special`` / ``disallowed_special``); for WordPiece they follow Hugging
    Face tokenizers, and ``encode`` adds ``[CLS] ... [SEP]`` unless
    ``add_special_tokens=False``. ``encode_batch`` and ``decode_batch`` run in parallel on
    ferrolm's thread pool.
    """

    _builtin_name: str | None = None

    def __init__(
        self,
        data: bytes,
        kind: str,
        *,
        pattern: str | None = None,
        special_tokens: Mapping[str, int] | None = None,
        name: str = "tokenizer",
        lowercase: bool = True,
    ) -> None:
        # The native constructor already built the tokenizer; keep what rebuilds it (pickle).
        self._args: tuple[bytes, str, dict[str, Any]] = (
            data,
            kind,
            {
                "pattern": pattern,
                "special_tokens": dict(special_tokens) if special_tokens else None,
                "name": name,
                "lowercase": lowercase,
            },
        )

    @classmethod
    def builtin(cls, name: str) -> Tokenizer:
        """A tokenizer from the data bundled with ferrolm, offline: ``"gpt2"`` or
        ``"bert-base-uncased"``. Built once per process and shared (tokenizers are immutable).
        """
        return _builtin(cls, name)

    @classmethod
    def from_tiktoken(
        cls,
        path: str | os.PathLike[str],
        pattern: str = GPT2_PATTERN,
        special_tokens: Mapping[str, int] | None = None,
    ) -> Tokenizer:
        """A BPE tokenizer from a tiktoken rank file (lines of ``<base64 token> <rank>``), the
        split pattern that goes with it, and its special tokens (``{text: id}``).

        A pattern ferrolm cannot run in linear time (look-around other than GPT-2's, possessive
        quantifiers) raises ``ferrolm.FormatError`` naming it.
        """
        p = Path(path)
        return cls(
            p.read_bytes(),
            "tiktoken",
            pattern=pattern,
            special_tokens=dict(special_tokens or {}),
            name=p.name,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, lowercase: bool | None = None) -> Tokenizer:
        """A tokenizer from one file: a Hugging Face ``tokenizer.json``, a BERT ``vocab.txt``
        (``lowercase`` defaults to the ``do_lower_case`` of a ``tokenizer_config.json`` beside
        it, else True) or a tiktoken ``*.tiktoken`` rank file (GPT-2's split pattern).
        """
        p = Path(path)
        if p.suffix == ".tiktoken":
            return cls.from_tiktoken(p)
        data = p.read_bytes()  # FileNotFoundError names the path
        if p.suffix == ".json" and p.name != "vocab.json":
            return cls(data, "tokenizer.json", name=p.name)
        if p.suffix == ".txt":
            if lowercase is None:
                lowercase = _config_lowercase(p.parent)
            return cls(data, "vocab.txt", name=p.name, lowercase=lowercase)
        raise FormatError(
            f"{p}: unsupported tokenizer file; ferrolm reads tokenizer.json, vocab.txt and "
            "*.tiktoken files (GPT-2 vocab.json + merges.txt are not supported yet)"
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str]) -> Tokenizer:
        """A tokenizer from a model folder (``tokenizer.json``, else ``vocab.txt``), or from a
        model name found in the local Hugging Face cache. Never uses the network: a name not in
        the cache is a ``FileNotFoundError`` saying where ferrolm looked.
        """
        folder = _resolve_model_dir(name_or_path)
        for candidate in ("tokenizer.json", "vocab.txt"):
            if (folder / candidate).is_file():
                return cls.from_file(folder / candidate)
        if (folder / "vocab.json").is_file():
            raise FormatError(
                f"{folder}: has vocab.json + merges.txt but no tokenizer.json; "
                "GPT-2-style vocab.json + merges.txt are not supported yet"
            )
        raise FileNotFoundError(
            2, "no tokenizer.json or vocab.txt in the model folder", str(folder)
        )

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
        data, kind, opts = self._args
        return (_rebuild, (type(self), data, kind, opts))

    def __repr__(self) -> str:
        return f"<ferrolm.Tokenizer {self.name!r} {self.kind} vocab_size={self.vocab_size}>"


def _rebuild(cls: type[Tokenizer], data: bytes, kind: str, opts: dict[str, Any]) -> Tokenizer:
    return cls(data, kind, **opts)


def _config_lowercase(folder: Path) -> bool:
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get("do_lower_case", True)
        except (ValueError, OSError) as e:
            raise FormatError(f"{cfg}: {e}") from None
        return bool(value)
    return True


def _hf_cache_dirs() -> list[Path]:
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return [Path(env["HF_HUB_CACHE"])]
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return [Path(env["HUGGINGFACE_HUB_CACHE"])]
    home = Path(env["HF_HOME"]) if env.get("HF_HOME") else Path.home() / ".cache" / "huggingface"
    return [home / "hub"]


def _resolve_model_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """A local folder as given, or the newest snapshot of a cached hub model."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    name = os.fspath(name_or_path)
    looked: list[str] = [str(p.resolve())]
    if "/" in name or not p.exists():
        repo = "models--" + name.replace("/", "--")
        for cache in _hf_cache_dirs():
            snapshots = cache / repo / "snapshots"
            looked.append(str(snapshots))
            ref = cache / repo / "refs" / "main"
            if ref.is_file():
                snap = snapshots / ref.read_text().strip()
                if snap.is_dir():
                    return snap
            if snapshots.is_dir():
                dirs = sorted(
                    (d for d in snapshots.iterdir() if d.is_dir()),
                    key=lambda d: d.stat().st_mtime,
                )
                if dirs:
                    return dirs[-1]
    raise FileNotFoundError(
        2,
        f"{name!r} is not a local folder nor a model in the Hugging Face cache "
        f"(ferrolm never downloads); looked in: {', '.join(looked)}",
        name,
    )


_builtin_cache: dict[tuple[type[Tokenizer], str], Tokenizer] = {}
_builtin_lock = threading.Lock()


def _builtin(cls: type[Tokenizer], name: str) -> Tokenizer:
    try:
        filename, kind, opts = _BUILTINS[name]
    except KeyError:
        raise ValueError(
            f"no built-in tokenizer named {name!r}; available: {', '.join(builtin_names())}"
        ) from None
    with _builtin_lock:
        tok = _builtin_cache.get((cls, name))
        if tok is None:
            tok = cls(data_path(filename).read_bytes(), kind, name=name, **opts)
            tok._builtin_name = name
            _builtin_cache[(cls, name)] = tok
    return tok
