"""Training tokenizers: learn a byte-level BPE or a WordPiece vocabulary from your own text.

``train_bpe`` and ``train_wordpiece`` return a ``Tokenizer`` ready to use, and write a Hugging
Face ``tokenizer.json`` (``save=``, or ``tok.save(path)`` later) that ``tokenizers`` and
``transformers`` load and encode identically. Counting runs in parallel on ferrolm's thread
pool with the GIL released; a progress bar shows on a terminal.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ferrolm import _core
from ferrolm._errors import FormatError
from ferrolm._progress import Progress
from ferrolm.tokenizer import GPT2_PATTERN, Tokenizer

__all__ = ["BERT_SPECIAL_TOKENS", "train_bpe", "train_wordpiece"]

#: BERT's special tokens, in the order bert-base vocabularies give them ids 0 to 4.
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _gather(texts_or_files: Iterable[str | os.PathLike[str]] | os.PathLike[str]) -> list[str]:
    """The texts to train on: each ``str`` is a text, each path (``pathlib.Path`` or another
    ``os.PathLike``) a UTF-8 file read whole."""
    if isinstance(texts_or_files, str):
        raise TypeError(
            "expected a list of texts or of paths, got a single str; pass [text], or "
            "pathlib.Path(...) for a file"
        )
    if isinstance(texts_or_files, os.PathLike):
        texts_or_files = [texts_or_files]
    out: list[str] = []
    for item in texts_or_files:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, os.PathLike):
            path = Path(item)
            data = path.read_bytes()  # FileNotFoundError names the path
            try:
                out.append(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise FormatError(
                    f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"
                ) from None
        else:
            raise TypeError(f"expected str texts or os.PathLike files, got {type(item).__name__}")
    return out


#: Rust's stage names -> (progress bar label, unit).
_STAGES = {"counting": ("counting words", "B"), "merging": ("learning merges", "merge")}


class _Bars:
    """One progress bar per training stage, fed from Rust's ``(stage, done, total)`` reports."""

    def __init__(self, enabled: bool | None) -> None:
        self._enabled = enabled
        self._lock = threading.Lock()
        self._stage: str | None = None
        self._bar: Progress | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            if stage != self._stage:
                self.close()
                desc, unit = _STAGES.get(stage, (stage, "it"))
                self._stage = stage
                self._bar = Progress(total, desc, unit=unit, enabled=self._enabled)
            assert self._bar is not None
            if done > self._bar.count:
                self._bar.update(done - self._bar.count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _check_int(name: str, value: int, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")


def _run(
    trainer: Callable[..., tuple[str, int, int, int]],
    texts_or_files: Iterable[str | os.PathLike[str]] | os.PathLike[str],
    vocab_size: int,
    name: str,
    show_progress: bool | None,
    save: str | os.PathLike[str] | None,
    **options: Any,
) -> Tokenizer:
    """Runs a Rust trainer with progress bars; wraps (and saves) the tokenizer.json it returns."""
    texts = _gather(texts_or_files)
    bars = _Bars(show_progress)
    try:
        json_text, *_ = trainer(texts, vocab_size, progress=bars, **options)
    finally:
        bars.close()
    tok = Tokenizer(json_text.encode("utf-8"), "tokenizer.json", name=name)
    if save is not None:
        tok.save(save)
    return tok


def train_bpe(
    texts_or_files: Iterable[str | os.PathLike[str]] | os.PathLike[str],
    vocab_size: int,
    *,
    special_tokens: Iterable[str] = ("<|endoftext|>",),
    pattern: str = GPT2_PATTERN,
    min_frequency: int = 2,
    show_progress: bool | None = None,
    save: str | os.PathLike[str] | None = None,
) -> Tokenizer:
    """Learns a byte-level BPE tokenizer (GPT-2 style) from texts or files.

    The vocabulary is the special tokens (ids 0, 1, ...), the 256 bytes, then one token per
    merge, until it holds ``vocab_size`` tokens or no pair of symbols occurs ``min_frequency``
    times. ``pattern`` is the pre-tokenizer's split pattern (GPT-2's by default; any pattern
    ``Tokenizer.from_tiktoken`` accepts). Items of ``texts_or_files`` that are ``str`` are
    texts; ``pathlib.Path`` items are UTF-8 files.

    ``save``: also write the ``tokenizer.json`` there (a file path, or a folder to write
    ``tokenizer.json`` into). ``show_progress``: ``None`` shows bars on a terminal only.
    """
    _check_int("vocab_size", vocab_size, 1)
    _check_int("min_frequency", min_frequency, 0)
    return _run(
        _core.train_bpe,
        texts_or_files,
        vocab_size,
        "trained-bpe",
        show_progress,
        save,
        pattern=pattern,
        special_tokens=list(special_tokens),
        min_frequency=min_frequency,
    )


def train_wordpiece(
    texts_or_files: Iterable[str | os.PathLike[str]] | os.PathLike[str],
    vocab_size: int = 30522,
    *,
    special_tokens: Iterable[str] = BERT_SPECIAL_TOKENS,
    unk_token: str = "[UNK]",
    lowercase: bool = True,
    min_frequency: int = 2,
    continuing_subword_prefix: str = "##",
    max_input_chars_per_word: int = 100,
    show_progress: bool | None = None,
    save: str | os.PathLike[str] | None = None,
) -> Tokenizer:
    """Learns a BERT WordPiece tokenizer from texts or files, as ``tokenizers``'
    ``WordPieceTrainer`` does: BERT's normalizer (``lowercase`` also strips accents) and
    pre-tokenizer, then BPE over characters, ``##`` marking those inside a word.

    The vocabulary is the special tokens (ids 0, 1, ...), the characters of the corpus, then
    one token per merge, up to ``vocab_size``. ``[CLS] ... [SEP]`` is added around each text
    when both are special tokens. ``save`` and ``show_progress`` as in ``train_bpe``.
    """
    _check_int("vocab_size", vocab_size, 1)
    _check_int("min_frequency", min_frequency, 0)
    _check_int("max_input_chars_per_word", max_input_chars_per_word, 1)
    return _run(
        _core.train_wordpiece,
        texts_or_files,
        vocab_size,
        "trained-wordpiece",
        show_progress,
        save,
        special_tokens=list(special_tokens),
        unk_token=unk_token,
        lowercase=lowercase,
        min_frequency=min_frequency,
        prefix=continuing_subword_prefix,
        max_input_chars_per_word=max_input_chars_per_word,
    )
