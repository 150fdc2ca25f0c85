"""ferrolm.torch_ref's GPT-2 agrees with transformers' GPT2LMHeadModel on the same saved folder:
logits, left padding, the key/value cache, greedy decoding, and the checkpoint layouts it loads."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch_ref is a PyTorch reference")
transformers = pytest.importorskip("transformers", reason="parity is checked against transformers")

from gpt2_models import SMALL, TINY_VOCAB, gpt2_model  # noqa: E402

from ferrolm.torch_ref import GPT2Ref, greedy, load_gpt2  # noqa: E402

EOS = 50256
# Every non-default switch at once; untied, so lm_head.weight is a tensor of its own.
VARIANT: dict[str, Any] = dict(
    n_embd=48,
    n_layer=3,
    n_head=4,
    n_positions=64,
    vocab_size=1000,
    n_inner=80,
    activation_function="gelu",
    scale_attn_by_inverse_layer_idx=True,
    tie_word_embeddings=False,
)

_HF: dict[Path, Any] = {}


def hf_model(folder: Path) -> Any:
    """transformers' model of ``folder`` (float32, eval), loaded once per session."""
    if folder not in _HF:
        model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32)
        _HF[folder] = model.eval()
    return _HF[folder]


def hf_logits(folder: Path, ids: Any, **kwargs: Any) -> Any:
    with torch.no_grad():
        return hf_model(folder)(ids, **kwargs).logits


def random_ids(n: int, batch: int = 1, vocab: int = 50257, seed: int = 0) -> Any:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, n), generator=gen)


def left_pad(rows: list[Any], pad: int) -> tuple[Any, Any]:
    """[B, L] ids and mask for 1-D prompts padded on the left to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = row
        mask[b, width - len(row) :] = 1
    return ids, mask


@pytest.fixture(scope="module")
def small() -> Path:
    return gpt2_model(**SMALL)


@pytest.fixture(scope="module")
def small_ref(small: Path) -> GPT2Ref:
    return load_gpt2(small)


@pytest.fixture(scope="module")
def variant() -> Path:
    return gpt2_model(seed=1, **VARIANT)


# --- logits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 7, 64, 128])
def test_logits_match_transformers(small: Path, small_ref: GPT2Ref, length: int) -> None:
    ids = random_ids(length, batch=2, seed=length)
    got = small_ref.logits(ids)
    want = hf_logits(small, ids)
    assert got.shape == want.shape == (2, length, 50257)
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("length", [1, 9, 64])
def test_logits_match_transformers_variant(variant: Path, length: int) -> None:
    ref = load_gpt2(variant)
    assert ref.config.n_inner == 80
    assert ref.config.activation_function == "gelu"
    assert ref.config.scale_attn_by_inverse_layer_idx
    assert not ref.config.tie_word_embeddings
    assert ref.lm_head is ref.weights["lm_head.weight"]
    assert not torch.equal(ref.lm_head, ref.weights["wte.weight"])
    ids = random_ids(length, batch=2, vocab=1000, seed=length)
    assert (ref.logits(ids) - hf_logits(variant, ids)).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    "field, value",
    [
        ("tie_word_embeddings", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("scale_attn_weights", False),
        ("activation_function", "gelu_new"),
    ],
)
def test_variant_switches_are_observable(variant: Path, field: str, value: Any) -> None:
    """The variant test would catch a reference that ignored each switch: flipping it moves the
    logits beyond the 1e-4 tolerance (GELU erf vs tanh the least: about 1.4e-3)."""
    ref = load_gpt2(variant)
    cfg = dataclasses.replace(ref.config, **{field: value})
    flipped = GPT2Ref(cfg, ref.weights)
    ids = random_ids(64, vocab=1000, seed=3)
    assert (flipped.logits(ids) - hf_logits(variant, ids)).abs().max().item() > 5e-4


@pytest.mark.parametrize(
    "activation", ["gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "quick_gelu", "silu"]
)
def test_activations_match_transformers(activation: str) -> None:
    folder = gpt2_model(seed=2, activation_function=activation, **TINY_VOCAB)
    ids = random_ids(20, vocab=1000, seed=4)
    got = load_gpt2(folder).logits(ids)
    assert (got - hf_logits(folder, ids)).abs().max().item() <= 1e-4


# --- padding and the cache ----------------------------------------------------------------------


def test_left_padding_matches_transformers(small: Path, small_ref: GPT2Ref) -> None:
    rows = [random_ids(n, seed=10 + n)[0] for n in (5, 12, 9, 1)]
    ids, mask = left_pad(rows, EOS)
    got = small_ref.logits(ids, mask)
    # transformers' forward numbers positions 0.. by slot and ignores the mask for that; only
    # generate() derives them from the mask. Hand it the positions generate() would.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    want = hf_logits(small, ids, attention_mask=mask, position_ids=positions)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max().item() <= 1e-4
    assert torch.isfinite(got).all()
    # And padding changes nothing: each row equals that prompt alone, unpadded.
    for b, row in enumerate(rows):
        alone = small_ref.logits(row[None])[0]
        assert (got[b, -len(row) :] - alone).abs().max().item() <= 1e-5


def test_cache_matches_full_recompute(small_ref: GPT2Ref) -> None:
    ids = random_ids(40, batch=2, seed=20)
    full = small_ref.logits(ids)
    with torch.no_grad():
        chunks, past = [], None
        for start, stop in [(0, 10), (10, 11), (11, 12), (12, 17), (17, 40)]:
            logits, past = small_ref.forward(ids[:, start:stop], past=past)
            chunks.append(logits)
    assert past is not None and past[0][0].shape == (2, 4, 40, 16)
    assert (torch.cat(chunks, dim=1) - full).abs().max().item() <= 1e-5


def test_cache_with_left_padding_matches_full_recompute(small_ref: GPT2Ref) -> None:
    ids, mask = left_pad([random_ids(n, seed=30 + n)[0] for n in (15, 8)], EOS)
    width = ids.shape[1]
    more = random_ids(6, batch=2, seed=31)
    all_ids = torch.cat([ids, more], dim=1)
    all_mask = torch.cat([mask, torch.ones_like(more)], dim=1)
    full = small_ref.logits(all_ids, all_mask)
    with torch.no_grad():
        first, past = small_ref.forward(ids, mask)
        chunks = [first]
        for t in range(6):
            step, past = small_ref.forward(
                more[:, t : t + 1], all_mask[:, : width + t + 1], past=past
            )
            chunks.append(step)
    got = torch.cat(chunks, dim=1)
    real = all_mask.bool()
    assert (got[real] - full[real]).abs().max().item() <= 1e-5


# --- greedy decoding ------------------------------------------------------------------------------


def test_greedy_matches_generate(small: Path, small_ref: GPT2Ref) -> None:
    prompt = random_ids(7, seed=40)
    want = hf_model(small).generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=20,
        pad_token_id=EOS,
    )
    got = greedy(small_ref, prompt, 20, eos_token_id=EOS)
    assert want.shape == (1, 27)
    assert got.tolist() == want.tolist()


def test_greedy_left_padded_batch_matches_generate(small: Path, small_ref: GPT2Ref) -> None:
    ids, mask = left_pad([random_ids(n, seed=50 + n)[0] for n in (3, 11)], EOS)
    want = hf_model(small).generate(
        ids, attention_mask=mask, do_sample=False, max_new_tokens=20, pad_token_id=EOS
    )
    got = greedy(small_ref, ids, 20, attention_mask=mask, eos_token_id=EOS)
    assert got.tolist() == want.tolist()


def test_greedy_variant_matches_generate(variant: Path) -> None:
    prompt = random_ids(5, vocab=1000, seed=60)
    want = hf_model(variant).generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=20,
        pad_token_id=999,
    )
    assert greedy(load_gpt2(variant), prompt, 20, eos_token_id=999).tolist() == want.tolist()


def test_positions_past_n_positions_are_refused(small_ref: GPT2Ref) -> None:
    with pytest.raises(ValueError, match="n_positions"):
        small_ref.logits(random_ids(129))


# --- loading --------------------------------------------------------------------------------------


def copy_of(folder: Path, dest: Path) -> Path:
    return Path(shutil.copytree(folder, dest))


def edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_helper_writes_n_ctx_and_tokenizer_files(small: Path, variant: Path) -> None:
    config = json.loads((small / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"] == 128
    assert (small / "vocab.json").is_file() and (small / "merges.txt").is_file()
    assert not (variant / "vocab.json").exists()


def test_saved_names_carry_the_transformer_prefix(small: Path) -> None:
    from safetensors.torch import load_file

    names = set(load_file(small / "model.safetensors"))
    assert "transformer.wte.weight" in names and "transformer.h.0.attn.c_attn.weight" in names
    assert "lm_head.weight" not in names  # tied: not stored
    assert not any(n.endswith(".attn.bias") or n.endswith("masked_bias") for n in names)


@pytest.mark.parametrize("model_type", ["llama", None])
def test_other_model_type_is_refused(small: Path, tmp_path: Path, model_type: Any) -> None:
    folder = copy_of(small, tmp_path / "m")
    edit_config(folder, model_type=model_type)
    with pytest.raises(ValueError, match="model_type"):
        load_gpt2(folder)


def test_unknown_activation_is_refused(small: Path, tmp_path: Path) -> None:
    folder = copy_of(small, tmp_path / "m")
    edit_config(folder, activation_function="gelu_10")
    with pytest.raises(ValueError, match="activation"):
        load_gpt2(folder)


def test_original_names_without_prefix_load(
    small: Path, small_ref: GPT2Ref, tmp_path: Path
) -> None:
    """Original GPT-2 checkpoints: no ``transformer.`` prefix, and the per-layer mask buffers."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "orig"
    folder.mkdir()
    shutil.copy(small / "config.json", folder / "config.json")
    tensors = {
        name.removeprefix("transformer."): t
        for name, t in load_file(small / "model.safetensors").items()
    }
    n = 128
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, str(folder / "model.safetensors"))
    ref = load_gpt2(folder)
    ids = random_ids(12, seed=70)
    assert torch.equal(ref.logits(ids), small_ref.logits(ids))


def test_sharded_checkpoint_loads(variant: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(variant / "config.json", folder / "config.json")
    tensors = load_file(variant / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2]}
    shards["model-00002-of-00002.safetensors"] = names[1::2]
    weight_map = {}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(folder / file))
        weight_map.update(dict.fromkeys(part, file))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    ids = random_ids(10, vocab=1000, seed=71)
    assert torch.equal(load_gpt2(folder).logits(ids), load_gpt2(variant).logits(ids))


def test_missing_lm_head_when_untied_is_refused(variant: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = copy_of(variant, tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="lm_head"):
        load_gpt2(folder)


def test_bfloat16_load_is_close(small: Path, small_ref: GPT2Ref) -> None:
    ref16 = load_gpt2(small, dtype=torch.bfloat16)
    assert ref16.weights["wte.weight"].dtype == torch.bfloat16
    ids = random_ids(16, seed=80)
    got = ref16.logits(ids)
    assert got.dtype == torch.float32
    # bfloat16 keeps 8 significant bits; logits here have std ~1.7 and reach ~8.
    assert (got - small_ref.logits(ids)).abs().max().item() < 0.25
