"""ferrolm's quantized formats in plain PyTorch: the tiles of a saved quantized folder read back
to f32 (written from the layout documented in ``rust/core/src/quant/mod.rs``, not from the Rust
code), and the per-block int8 quantization that the Rust kernels apply to activations.

With both, the reference path runs exactly the arithmetic of ferrolm's quantized matmuls, only
in f32 throughout: ``x @ W`` becomes ``quantize_activations(x) @ dequantized(W)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BLOCK", "ROWS", "dequantize_tiles", "quantize_activations", "tile_bytes"]

BLOCK = 32  # weights per block (one f16 scale each)
ROWS = 16  # rows per tile

_TILE = {"q8_0": 32 + 512, "q4_0": 32 + 256, "q4_1": 64 + 256}


def tile_bytes(fmt: str) -> int:
    """Bytes of one tile (16 rows x 32 weights) of ``fmt``."""
    try:
        return _TILE[fmt]
    except KeyError:
        raise ValueError(
            f"unknown quantized format {fmt!r}; expected one of {sorted(_TILE)}"
        ) from None


def dequantize_tiles(data: Tensor, fmt: str, n: int, k: int) -> Tensor:
    """The ``[n, k]`` f32 matrix stored as ``fmt`` tiles in the uint8 tensor ``data``."""
    groups, blocks = -(-n // ROWS), -(-k // BLOCK)
    tb = tile_bytes(fmt)
    if data.dtype != torch.uint8 or data.numel() != groups * blocks * tb:
        raise ValueError(
            f"{data.numel()} bytes of {fmt} tiles for a [{n} x {k}] matrix "
            f"(expected {groups * blocks * tb} uint8)"
        )
    tiles = data.reshape(groups, blocks, tb)  # [G, B, tile]
    # Scales (and q4_1 minimums): 16 little-endian f16 per tile, one per row.
    d = tiles[:, :, :32].contiguous().view(torch.float16).float()  # [G, B, 16]
    if fmt == "q4_1":
        m = tiles[:, :, 32:64].contiguous().view(torch.float16).float()  # [G, B, 16]
        q = tiles[:, :, 64:]
    else:
        q = tiles[:, :, 32:]
    if fmt == "q8_0":
        # [G, B, c=8, r=16, j=4] -> q(row r, column 4c + j), signed.
        qv = q.contiguous().view(torch.int8).reshape(groups, blocks, 8, ROWS, 4).float()
        cols = qv.permute(0, 3, 1, 2, 4).reshape(groups, ROWS, blocks, BLOCK)  # [G, 16, B, 32]
        w = cols * d.permute(0, 2, 1)[..., None]
    else:
        # [G, B, p=4, r=16, j=4]: low nibble column 8p + j, high nibble 8p + 4 + j.
        raw = q.reshape(groups, blocks, 4, ROWS, 4).to(torch.int16)
        lo, hi = raw & 15, raw >> 4
        both = torch.stack([lo, hi], dim=3)  # [G, B, p, half, r, j]
        cols = both.permute(0, 4, 1, 2, 3, 5).reshape(groups, ROWS, blocks, BLOCK).float()
        scale = d.permute(0, 2, 1)[..., None]  # [G, 16, B, 1]
        if fmt == "q4_0":
            w = (cols - 8.0) * scale
        else:
            w = cols * scale + m.permute(0, 2, 1)[..., None]
    w = w.reshape(groups * ROWS, blocks * BLOCK)
    return w[:n, :k].contiguous()


def quantize_activations(x: Tensor) -> Tensor:
    """``x`` [..., k] (float32) as ferrolm's kernels see it: per block of 32 along the last
    axis, ``q = round_half_even(x * 127 / max|x|)`` (clamped to +-127) times ``max|x| / 127``;
    an all-zero block stays zero. The last block is zero-padded."""
    k = x.shape[-1]
    pad = -k % BLOCK
    xp = torch.nn.functional.pad(x.float(), (0, pad)) if pad else x.float()
    blocks = xp.reshape(*xp.shape[:-1], -1, BLOCK)  # [..., B, 32]
    amax = blocks.abs().amax(dim=-1, keepdim=True)  # [..., B, 1]
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    inv = torch.where(amax > 0, 127.0 / safe, torch.zeros_like(amax))  # 127 / amax, as Rust
    q = torch.round(blocks * inv).clamp(-127, 127)  # torch.round: half to even
    out = (q * (amax / 127.0)).reshape(*xp.shape[:-1], -1)
    return out[..., :k]
