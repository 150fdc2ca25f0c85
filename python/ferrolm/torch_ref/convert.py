"""Converting a PyTorch ``pytorch_model.bin`` checkpoint to ``model.safetensors``, the format
ferrolm loads. ``pytorch_model.bin`` is a pickle, which can run code when loaded: ferrolm's core
never reads it; this opt-in path reads it with ``torch.load(weights_only=True)`` (tensors only),
so it needs torch.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["convert_to_safetensors"]


def convert_to_safetensors(folder: str | os.PathLike[str]) -> Path:
    """Writes ``model.safetensors`` beside ``pytorch_model.bin`` in ``folder`` (tensors made
    contiguous; weights tied to another tensor are stored once per name); returns its path."""
    import torch
    from safetensors.torch import save_file

    src = Path(folder) / "pytorch_model.bin"
    if not src.is_file():
        raise FileNotFoundError(2, "no pytorch_model.bin to convert", str(src))
    state = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{src}: not a state dict of tensors")
    tensors = {name: t.detach().contiguous().clone() for name, t in state.items()}
    out = src.with_name("model.safetensors")
    save_file(tensors, str(out), metadata={"format": "pt"})
    return out
