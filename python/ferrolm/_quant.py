"""Quantizing on load and saving model folders (shared by the GPT-2 and BERT classes).

A quantized folder is what ``save_pretrained`` writes: ``config.json`` with a
``quantization_config`` (``{"quant_method": "ferrolm", "format": "q8_0" | "q4_0" | "q4_1",
"layout": "r16"}``), ``model.safetensors`` holding the quantized matrices as ``U8`` tensors named
``{name}.qweight`` (the tile layout documented in ``rust/core/src/quant/mod.rs``) beside the
f32 tensors (norms, biases, position embeddings), and the source folder's tokenizer and
sentence-transformers files. It loads back memory-mapped, without quantizing again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferrolm._io import check_destination, inode, parse_json, replace_folder
from ferrolm._progress import Progress

__all__ = ["QUANTIZE_CHOICES", "load_core", "save_folder"]

#: What ``quantize=`` accepts: the aliases and the formats they name.
QUANTIZE_CHOICES = {"int8": "q8_0", "int4": "q4_0", "q8_0": "q8_0", "q4_0": "q4_0", "q4_1": "q4_1"}

#: Files copied from the source folder by ``save_pretrained`` when present.
_SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "generation_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
_SIDE_DIRS = ("1_Pooling", "2_Normalize")


def load_core(
    loader: Callable[..., Any],
    folder: Path,
    quantize: str | None,
    show_progress: bool | None,
) -> Any:
    """``loader(folder, quantize, progress)`` with a progress bar over the matrices quantized."""
    if quantize is not None:
        if not isinstance(quantize, str) or quantize.lower() not in QUANTIZE_CHOICES:
            raise ValueError(
                f"quantize={quantize!r}: expected one of {sorted(QUANTIZE_CHOICES)} or None"
            )
        quantize = quantize.lower()
    if quantize is None:
        return loader(folder, None, None)
    with Progress(
        None, f"quantizing to {QUANTIZE_CHOICES[quantize]}", unit="matrices", enabled=show_progress
    ) as bar:

        def report(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.count)

        return loader(folder, quantize, report)


def _owned(name: str) -> bool:
    """The entries of a folder that a save writes, or removes when the new model lacks them."""
    return (
        name == "config.json"
        or name == "model.safetensors.index.json"
        or (name.startswith("model") and name.endswith(".safetensors"))
        or name in _SIDE_FILES
        or name in _SIDE_DIRS
    )


def save_folder(
    core: Any,
    source: Path,
    dest: str | os.PathLike[str],
    *,
    source_id: tuple[int, int] | None = None,
    copy_f32_weights: bool = False,
) -> Path:
    """Writes a loadable folder: the core's weights (or, with ``copy_f32_weights`` for an f32
    model, the source's safetensors as they are), ``config.json`` with the quantization noted,
    and the tokenizer / pooling files of ``source`` (the absolute folder the model was loaded
    from; ``source_id`` its identity, from ``_io.register_source``).

    The save is atomic (``_io.replace_folder``): killed, interrupted or out of disk space, it
    leaves the folder as it was or wholly new. A destination that is the source folder, or a
    folder another live model reads, is refused (compared by inode)."""
    out = Path(dest)
    check_destination(out, source_id if source_id is not None else inode(source))
    quant = core.quantization
    config = parse_json((source / "config.json").read_bytes(), source / "config.json")
    if quant is None:
        config.pop("quantization_config", None)
    else:
        config["quantization_config"] = {
            "quant_method": "ferrolm",
            "format": quant,
            "layout": "r16",
        }

    def write(stage: Path) -> None:
        if quant is None and copy_f32_weights:
            names = ["model.safetensors"] if (source / "model.safetensors").is_file() else []
            index = source / "model.safetensors.index.json"
            if not names and index.is_file():
                shards = parse_json(index.read_bytes(), index)["weight_map"].values()
                names = ["model.safetensors.index.json", *sorted(set(shards))]
            for name in names:
                shutil.copyfile(source / name, stage / name)
        else:
            core.save(stage)
        for name in _SIDE_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, stage / name)
        for name in _SIDE_DIRS:
            if (source / name).is_dir():
                shutil.copytree(source / name, stage / name)
        text = json.dumps(config, indent=2) + "\n"
        (stage / "config.json").write_text(text, encoding="utf-8")

    return replace_folder(out, write, _owned)
