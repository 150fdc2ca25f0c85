"""Perplexity of a causal language model on a text, by the sliding-window recipe of the
``transformers`` documentation ("Perplexity of fixed-length models"): windows of the model's
context length moved by ``stride`` tokens, each scoring only the tokens the previous windows
did not, the first token of the text never scored.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ferrolm._progress import Progress

__all__ = ["nll_of", "perplexity"]


def nll_of(logits: Any, targets: Any) -> float:
    """The summed negative log-likelihood of ``targets`` (one id per row) under ``logits``
    (``[rows, vocab]``, float64 for precision), by a max-shifted log-sum-exp."""
    import numpy as np

    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float((log_z - logits[np.arange(len(logits)), targets]).sum())


def perplexity(
    model: Any,
    tokenizer: Any,
    text_or_file: str | os.PathLike[str],
    *,
    stride: int | None = None,
    max_length: int | None = None,
    show_progress: bool | None = None,
) -> float:
    """``exp`` of the mean negative log-likelihood per scored token.

    ``text_or_file``: a text, or a path (``pathlib.Path`` / ``os.PathLike``) to a UTF-8 file.
    ``max_length``: the window (default: the model's context, at most 1024 tokens); ``stride``:
    how far each window moves (default 512, at most ``max_length``).
    """
    import numpy as np

    if isinstance(text_or_file, os.PathLike):
        text = Path(text_or_file).read_text(encoding="utf-8")
    elif isinstance(text_or_file, str):
        text = text_or_file
    else:
        raise TypeError(f"expected a str or a path, got {type(text_or_file).__name__}")
    n_ctx = model.config.get("n_ctx", model.config.get("n_positions"))
    window = int(max_length or min(int(n_ctx), 1024))
    if stride is None:
        stride = min(512, window)
    if window < 2:
        raise ValueError(f"max_length must be at least 2, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and max_length ({window}), got {stride}")
    try:  # tiktoken-style BPE: special-token text is ordinary text here
        ids = tokenizer.encode(text, disallowed_special=())
    except ValueError:  # Hugging Face-style: no template tokens around the text
        ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < 2:
        raise ValueError("the text has fewer than 2 tokens: nothing to score")
    nll_sum = 0.0
    scored = 0
    prev_end = 0
    starts = list(range(0, len(ids), stride))
    with Progress(len(ids), "perplexity", unit="tok", enabled=show_progress) as bar:
        for begin in starts:
            end = min(begin + window, len(ids))
            target_len = end - prev_end  # tokens not scored by an earlier window
            chunk = ids[begin:end]
            logits = model([chunk]).logits[0].astype(np.float64)  # [L, vocab]
            # Token j (j >= 1) is predicted by the logits at j - 1; score the last target_len.
            first = max(1, len(chunk) - target_len)
            rows = logits[first - 1 : len(chunk) - 1]
            nll_sum += nll_of(rows, chunk[first:])
            scored += len(rows)
            bar.update(end - prev_end)
            prev_end = end
            if end == len(ids):
                break
    return math.exp(nll_sum / scored)
