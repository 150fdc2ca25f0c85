"""Small random GPT-2 models saved the way transformers saves them (config.json +
model.safetensors, and GPT-2's vocab.json + merges.txt when the vocabulary is GPT-2's), for the
parity tests of ferrolm's GPT-2 against transformers and ferrolm.torch_ref.

Built folders are cached for the test session: asking twice for the same seed and config
returns the same folder.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

GPT2_VOCAB = 50257

# A GPT-2 with the real vocabulary (so the tokenizer files apply) and tiny everything else.
SMALL: dict[str, Any] = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=50257)
# Smaller still, with a made-up vocabulary of 1000 ids: no tokenizer files.
TINY_VOCAB: dict[str, Any] = dict(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=1000)

_CACHE: dict[tuple[Any, ...], Path] = {}


def _perturb(model: Any, seed: int) -> None:
    """transformers initialises every bias to 0, every LayerNorm to (1, 0) and the weights with
    std 0.02, which leaves attention nearly uniform and the MLP in GELU's linear part: such a
    model cannot tell a loader that drops biases, a wrong attention scale or the wrong GELU.
    Redraw everything at unit scale: projections with std 1/sqrt(fan_in), embeddings with std
    0.2 (logits with std near 1.5, so float32 rounding stays near 1e-5), biases with std 0.1,
    LayerNorm gains in [0.5, 1.5)."""
    import torch

    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                new = 0.1 * torch.randn(param.shape, generator=gen)
            elif "ln_" in name:
                new = 0.5 + torch.rand(param.shape, generator=gen)
            elif name.endswith(("wte.weight", "wpe.weight", "lm_head.weight")):
                new = 0.2 * torch.randn(param.shape, generator=gen)
            else:  # Conv1D, [in, out]
                new = torch.randn(param.shape, generator=gen) / param.shape[0] ** 0.5
            param.copy_(new)


def _key(seed: int, perturb: bool, config: dict[str, Any]) -> tuple[Any, ...]:
    return (seed, perturb, tuple(sorted((k, repr(v)) for k, v in config.items())))


def _build(folder: Path, seed: int, perturb: bool, config: dict[str, Any]) -> None:
    import torch
    from gpt2_files import write_gpt2_files
    from transformers import GPT2Config, GPT2LMHeadModel

    config = dict(config)
    vocab_size = int(config.get("vocab_size", GPT2_VOCAB))
    if vocab_size < GPT2_VOCAB:
        config.setdefault("bos_token_id", vocab_size - 1)
        config.setdefault("eos_token_id", vocab_size - 1)

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config)).eval()
    if perturb:
        _perturb(model, seed)
    model.save_pretrained(folder, safe_serialization=True)

    config_path = folder / "config.json"
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    saved["n_ctx"] = saved["n_positions"]
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    if vocab_size >= GPT2_VOCAB:
        write_gpt2_files(folder)


def gpt2_model(*, seed: int = 0, perturb: bool = True, **config: Any) -> Path:
    """Like ``make_gpt2``, into a folder of this session's cache that every caller with the same
    arguments shares: read it, do not write into it. Removed when the process exits."""
    key = _key(seed, perturb, config)
    folder = _CACHE.get(key)
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="ferrolm-gpt2-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _build(folder, seed, perturb, config)
        _CACHE[key] = folder
    return folder


def make_gpt2(folder: Path, *, seed: int = 0, perturb: bool = True, **config: Any) -> Path:
    """Saves a random ``GPT2LMHeadModel(GPT2Config(**config))`` (eval mode, float32, weights
    from ``torch.manual_seed(seed)``) to ``folder`` with safetensors; returns ``folder``.

    config.json also gets ``n_ctx`` (= n_positions; transformers 5 no longer writes it, llama.cpp
    reads it). With GPT-2's vocabulary (vocab_size >= 50257) vocab.json and merges.txt are
    written too. For a smaller vocabulary, bos/eos default to the last id instead of 50256.
    ``perturb`` (default on) randomises biases and LayerNorms, see ``_perturb``.

    The model is built once per session for the same arguments (see ``gpt2_model``) and copied.
    """
    folder = Path(folder)
    shutil.copytree(gpt2_model(seed=seed, perturb=perturb, **config), folder, dirs_exist_ok=True)
    return folder
