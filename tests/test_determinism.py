"""Determinism: the same seed gives bit-identical logits and sampled tokens for 1, 2 and 8
threads, and a sequence's tokens do not depend on what else is in its batch (the other rows'
prompts, their lengths and so the padding, how many rows there are) — on every kernel path
this CPU runs (``FERROLM_ISA``), for GPT-2, Llama and LSTM models in float32 and quantized.

Each kernel path runs in its own process (the path is chosen once per process). The models
are small random ones; sampling at temperature 1.5 over the whole vocabulary (no top-k) keeps
the distributions flat, where a difference in the last bit of a logit would change a draw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import ferrolm

pytest.importorskip("torch", reason="the test models are built with torch")
pytest.importorskip("transformers", reason="the test models are built with transformers")

sys.path.insert(0, str(Path(__file__).parent))

from gpt2_models import gpt2_model
from llama_models import build_llama

# What each child process computes for one model: the digests of everything compared.
CHILD = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np
    import ferrolm

    kind, path, quantize = sys.argv[1], sys.argv[2], sys.argv[3] or None
    if kind == "lstm":
        model = ferrolm.LSTMLanguageModel.from_pretrained(path, quantize=quantize)
    else:
        model = ferrolm.AutoModelForCausalLM.from_pretrained(path, quantize=quantize)
    vocab = int(sys.argv[4])
    rng = np.random.default_rng(7)
    lengths = (5, 17, 33, 9, 60, 2, 41, 12)
    prompts = [rng.integers(1, vocab - 1, size=n).tolist() for n in lengths]
    others = [rng.integers(1, vocab - 1, size=n).tolist() for n in (3, 50, 7, 22, 1, 70, 13, 30)]
    NEW = 10
    kw = dict(max_new_tokens=NEW, do_sample=True, temperature=1.5, top_k=0, seed=1234,
              eos_token_id=[], pad_token_id=0)

    def new_tokens(batch):
        out = np.asarray(model.generate(batch, **kw))
        return [row[-NEW:].tolist() for row in out]

    def last_logits(batch):
        width = max(len(p) for p in batch)
        ids = np.array([[0] * (width - len(p)) + p for p in batch])
        mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        logits = np.asarray(model(input_ids=ids, attention_mask=mask).logits)
        return [logits[i, -1].tobytes() for i in range(len(batch))]

    def digest(x):
        return hashlib.sha256(repr(x).encode() if not isinstance(x, bytes) else x).hexdigest()

    out = {}
    for threads in (1, 2, 8):
        ferrolm.set_num_threads(threads)
        out[f"tokens_{threads}_threads"] = digest(new_tokens(prompts))
        out[f"logits_{threads}_threads"] = digest(b"".join(last_logits(prompts)))
    ferrolm.set_num_threads(2)
    batch_tokens = new_tokens(prompts)
    batch_logits = last_logits(prompts)
    # Row i with other rows around it (other prompts, lengths and padding) and alone at row 0.
    mixed_tokens, mixed_logits = [], []
    for i in range(len(prompts)):
        batch = list(others)
        batch[i] = prompts[i]
        mixed_tokens.append(new_tokens(batch)[i])
        mixed_logits.append(last_logits(batch)[i])
    out["row_tokens_in_batch"] = [digest(t) for t in batch_tokens]
    out["row_tokens_mixed"] = [digest(t) for t in mixed_tokens]
    out["row_logits_in_batch"] = [digest(t) for t in batch_logits]
    out["row_logits_mixed"] = [digest(t) for t in mixed_logits]
    out["row_logits_alone"] = [digest(last_logits([p])[0]) for p in prompts]
    out["first_alone"] = digest(new_tokens(prompts[:1])[0])
    # num_return_sequences: each of a prompt's samples is a row of its own.
    nrs = dict(kw, num_return_sequences=3)
    two = np.asarray(model.generate(prompts[:2], **nrs))[:, -NEW:].tolist()
    one = np.asarray(model.generate(prompts[:1], **nrs))[:, -NEW:].tolist()
    out["nrs_batch"] = [digest(r) for r in two[:3]]
    out["nrs_alone"] = [digest(r) for r in one]
    out["distinct_samples"] = len({repr(r) for r in one})
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path, int]]:
    """kind, folder and vocabulary size of each model under test."""
    import torch
    from torch import nn

    root = tmp_path_factory.mktemp("determinism")
    gpt2 = gpt2_model(seed=5, n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=1000)
    llama = root / "llama"
    # GQA with a tied head; head_dim 16: attention's shorter vectors and the kernels' tails.
    build_llama(llama, seed=3, num_attention_heads=4, num_key_value_heads=2)
    lstm = root / "lstm"
    with torch.random.fork_rng():
        torch.manual_seed(11)
        emb, rnn, fc = (
            nn.Embedding(500, 24),
            nn.LSTM(24, 40, 2, batch_first=True),
            nn.Linear(40, 500),
        )
        with torch.no_grad():
            for p in rnn.parameters():
                p.mul_(3.0)
            fc.weight.mul_(8.0)
    ferrolm.lstm.save_torch_lstm(lstm, emb, rnn, fc)
    # GRU layers of different sizes: the other cell and per-layer widths.
    gru = root / "gru"
    with torch.random.fork_rng():
        torch.manual_seed(12)
        emb = nn.Embedding(500, 24)
        grus = [nn.GRU(24, 40, batch_first=True), nn.GRU(40, 56, batch_first=True)]
        fc = nn.Linear(56, 500)
        with torch.no_grad():
            for p in (p for g in grus for p in g.parameters()):
                p.mul_(3.0)
            fc.weight.mul_(8.0)
    ferrolm.lstm.save_torch_lstm(gru, emb, grus, fc)
    return {
        "gpt2": ("gpt2", gpt2, 1000),
        "llama": ("llama", llama, 300),
        "lstm": ("lstm", lstm, 500),
        "gru": ("lstm", gru, 500),
    }


def _run(isa: str, kind: str, path: Path, quantize: str, vocab: int) -> dict[str, Any]:
    env = dict(os.environ, FERROLM_ISA=isa)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path), quantize, str(vocab)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


CASES = [
    ("gpt2", ""),
    ("gpt2", "int8"),
    ("gpt2", "int4"),
    ("llama", ""),
    ("llama", "q4_1"),
    ("lstm", ""),
    ("lstm", "int8"),
    ("gru", ""),
    ("gru", "int8"),
]


@pytest.mark.parametrize("isa", ferrolm.available_isas())
@pytest.mark.parametrize(("name", "quantize"), CASES, ids=[f"{n}-{q or 'f32'}" for n, q in CASES])
def test_same_seed_same_tokens(
    models: dict[str, tuple[str, Path, int]], isa: str, name: str, quantize: str
) -> None:
    kind, path, vocab = models[name]
    r = _run(isa, kind, path, quantize, vocab)
    # Thread counts: bit-identical logits and tokens.
    assert r["logits_1_threads"] == r["logits_2_threads"] == r["logits_8_threads"]
    assert r["tokens_1_threads"] == r["tokens_2_threads"] == r["tokens_8_threads"]
    # A row's logits: alone, in its batch, among other prompts — the same bits.
    assert r["row_logits_in_batch"] == r["row_logits_alone"]
    assert r["row_logits_mixed"] == r["row_logits_alone"]
    # A row's sampled tokens depend on the seed and its row, not on the rest of the batch.
    assert r["row_tokens_mixed"] == r["row_tokens_in_batch"]
    assert r["first_alone"] == r["row_tokens_in_batch"][0]
    assert r["nrs_alone"] == r["nrs_batch"]
    # ... and the rows of one prompt are different samples, not copies.
    assert r["distinct_samples"] == 3


def test_kernel_paths_are_listed() -> None:
    # The parametrization above covers what this CPU runs; scalar is always among them.
    assert "scalar" in ferrolm.available_isas()
    assert ferrolm.kernel_isa() in ferrolm.available_isas()
