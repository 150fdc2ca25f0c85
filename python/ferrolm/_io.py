"""Files in and out. Writers never leave a half-written file: the bytes go to a temporary file
in the destination's folder, are flushed to the disk (``fsync``), then renamed over the
destination, which readers see either whole and old or whole and new. ``parse_json`` turns
every way a JSON file can be bad (not UTF-8, not JSON, nested too deeply for the parser) into
a ``FormatError`` naming the file.

A whole model folder is saved with :func:`replace_folder`: the new files are written into a
hidden folder beside the destination, the destination's other files are linked into it, and the
two folders are swapped in one step, so a save that is killed, interrupted or runs out of space
leaves the old folder or the new one, never a mix. :func:`check_destination` refuses to save
into the folder a model was loaded from, or any folder a live model reads, compared by inode
(not by path: a relative path after ``chdir``, a symlink or a bind mount name the same folder).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferrolm._errors import FormatError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "check_destination",
    "inode",
    "parse_json",
    "register_source",
    "replace_folder",
]


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
    # Named before it exists (as replace_folder's stage): a Ctrl-C at any point leaves no file.
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "xb") as f:
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


# --- the folders live models read -----------------------------------------------------------

# (st_dev, st_ino) of each folder a live model was loaded from -> how many such models.
_LIVE: dict[tuple[int, int], int] = {}
_LIVE_LOCK = threading.Lock()


def inode(path: Path) -> tuple[int, int] | None:
    """A file's or folder's identity, (device, inode); None where it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _unregister(key: tuple[int, int]) -> None:
    with _LIVE_LOCK:
        n = _LIVE.get(key, 0) - 1
        if n > 0:
            _LIVE[key] = n
        else:
            _LIVE.pop(key, None)


def register_source(owner: object, folder: Path) -> tuple[int, int] | None:
    """Notes that `owner` (a model) reads the files of `folder` (memory-mapped) for as long as
    it lives; returns the folder's identity."""
    key = inode(folder)
    if key is not None:
        with _LIVE_LOCK:
            _LIVE[key] = _LIVE.get(key, 0) + 1
        weakref.finalize(owner, _unregister, key)
    return key


def check_destination(dest: Path, source: tuple[int, int] | None) -> None:
    """Refuses `dest` when it is the source folder (`source`: its identity from
    :func:`register_source`) or a folder another live model reads."""
    key = inode(dest)
    if key is None:
        return
    if key == source:
        raise ValueError(
            f"save_pretrained: {dest} is the folder the model was loaded from; its weights are "
            "read from those files while the model lives. Save to another folder."
        )
    with _LIVE_LOCK:
        live = key in _LIVE
    if live:
        raise ValueError(
            f"save_pretrained: another loaded model reads its weights from {dest}; replacing "
            "them under it is refused. Save to another folder, or delete that model first."
        )


# --- one-step folder replacement ------------------------------------------------------------

_STAGE_TAG = ".ferrolm-save-"
_ACTIVE_STAGES: set[str] = set()


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _carry_over(entry: Path, target: Path) -> None:
    """`entry` of the old folder into the new one: a hard link where the file system allows."""
    if entry.is_symlink():
        os.symlink(os.readlink(entry), target)
    elif entry.is_dir():
        shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(entry), str(target))


def _remove_stale_stages(parent: Path, name: str) -> None:
    """Hidden folders left by saves that were killed (their process is gone)."""
    prefix = f".{name}{_STAGE_TAG}"
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix) or str(entry) in _ACTIVE_STAGES:
            continue
        pid = entry.name[len(prefix) :].split("-")[0]
        alive = pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid))
        if not alive:
            shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def replace_folder(
    dest: str | os.PathLike[str],
    write: Callable[[Path], None],
    owned: Callable[[str], bool],
) -> Path:
    """Makes the folder `dest` hold what `write(folder)` writes into an empty folder, plus the
    entries `dest` already had that `owned(name)` does not claim (files of an earlier save
    that this one replaces), in one step: readers, and a process killed at any moment, see the
    old folder or the new one. Returns `dest`."""
    from ferrolm import _core

    out = Path(dest)
    if out.is_symlink() and out.is_dir():
        out = out.resolve()  # swap the folder the link points to, not the link
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "save_pretrained needs a folder", str(out))
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(parent, out.name)
    stage: Path | None = None
    try:
        # Named before it exists (not tempfile.mkdtemp, whose return a Ctrl-C can cut off
        # after the folder is made): whatever interrupts from here on, the folder is known and
        # removed below.
        while True:
            stage = parent / f".{out.name}{_STAGE_TAG}{os.getpid()}-{secrets.token_hex(6)}"
            _ACTIVE_STAGES.add(str(stage))
            try:
                os.mkdir(stage, 0o700)
                break
            except FileExistsError:
                _ACTIVE_STAGES.discard(str(stage))
        write(stage)
        if out.is_dir():
            for entry in out.iterdir():
                target = stage / entry.name
                if owned(entry.name) or target.exists() or target.is_symlink():
                    continue
                if entry.name.startswith(f".{out.name}{_STAGE_TAG}"):
                    continue
                _carry_over(entry, target)
        _fsync_tree(stage)
        if not out.exists():
            os.rename(stage, out)
            _fsync_path(parent)
            return out
        if _core._exchange_paths(stage, out):
            shutil.rmtree(stage, ignore_errors=True)  # the old folder, now under that name
            return out
        # No one-step swap here: the files move one by one, config.json last, so a loader
        # never sees a new config.json beside old weights.
        names = sorted(p.name for p in stage.iterdir())
        names.sort(key=lambda n: n == "config.json")
        for name in names:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(stage / name, target)
        for entry in list(out.iterdir()):
            if owned(entry.name) and entry.name not in names:
                entry.unlink(missing_ok=True)
        _fsync_path(out)
        shutil.rmtree(stage, ignore_errors=True)
        return out
    except BaseException:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        _ACTIVE_STAGES.discard(str(stage))
