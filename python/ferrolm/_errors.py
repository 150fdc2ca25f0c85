"""ferrolm's exception classes.

Errors raised by ferrolm are builtins where users expect them (``FileNotFoundError``,
``ValueError``, ``TypeError``, ``IndexError``) or one of the classes below. All derive from
``Exception``: a bug inside ferrolm's Rust core surfaces as :class:`InternalError`, never as
PyO3's ``PanicException`` (a ``BaseException`` that ``except Exception`` would miss).
"""

from __future__ import annotations

__all__ = ["FerrolmError", "FormatError", "InternalError"]


class FerrolmError(Exception):
    """Base class of the exceptions that only ferrolm raises."""


class FormatError(FerrolmError, ValueError):
    """A file (tokenizer, config, weights) is malformed, or uses a component ferrolm does not
    support; the message names the file or component."""


class InternalError(FerrolmError, RuntimeError):
    """A bug in ferrolm (a broken invariant or a caught panic in the Rust core). Please report
    it with the message."""
