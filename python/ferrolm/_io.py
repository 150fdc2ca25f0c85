"""Files in and out. Writers never leave a half-written file: the bytes go to a temporary file
in the destination's folder, are flushed to the disk (``fsync``), then renamed over the
destination, which readers see either whole and old or whole and new. ``parse_json`` turns
every way a JSON file can be bad (not UTF-8, not JSON, nested too deeply for the parser) into
a ``FormatError`` naming the file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ferrolm._errors import FormatError

__all__ = ["atomic_write_bytes", "atomic_write_text", "parse_json"]


def parse_json(data: bytes | str, name: str | os.PathLike[str]) -> Any:
    """The JSON value in `data` (the contents of the file `name`, named in errors). A file
    nested deeper than Python's parser goes (``RecursionError``, about 1000 levels in
    CPython 3.12+) is a ``FormatError`` like any other malformed file."""
    try:
        return json.loads(data)
    except UnicodeDecodeError as e:
        raise FormatError(f"{name}: not UTF-8 text ({e})") from None
    except ValueError as e:
        raise FormatError(f"{name}: not valid JSON ({e})") from None
    except RecursionError:
        raise FormatError(f"{name}: JSON nested too deeply to read") from None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes `data` to `path` atomically (its folders are created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself reaches the disk with the folder's entry
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return target
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` of `text` as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
