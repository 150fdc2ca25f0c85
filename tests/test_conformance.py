"""One conformance suite for every decoder architecture of ferrolm's registry: a tiny random
model built by ``transformers`` from its config class with a fixed seed, saved with
``save_pretrained``, loaded by ``ferrolm.AutoModelForCausalLM``, and checked against
``transformers`` itself:

- the logits of a prompt within 1e-4 (f32);
- decoding with the KV cache equals recomputing the whole sequence;
- a left-padded batch equals its sequences run one by one;
- greedy decoding of 64 tokens gives transformers' tokens;
- where ferrolm reads the architecture's GGUF files, the folder converted by llama.cpp's
  ``convert_hf_to_gguf.py`` (f32, f16, q8_0) loads and agrees with the folder.

The folders carry GPT-2's tokenizer (vocabulary 50257), which the converter needs. Adding an
architecture to the registry adds one entry to ``ARCHS`` below.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpt2_files import write_gpt2_files
from llama_cpp import convert

import ferrolm
from ferrolm import _core

tokenizers = pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 50257  # GPT-2's tokenizer
EOS = 50256

# A Llama-like decoder's shape: grouped-query attention (2 query heads per key/value head).
SMALL: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

# model_type -> (transformers config class, model class, config). Shapes are tiny but exercise
# what sets each architecture apart (biases, q/k norms, a head size apart from the width, a
# sliding window, tied and untied heads).
ARCHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(n_embd=64, n_layer=2, n_head=4, n_positions=256),
    ),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {**SMALL, "tie_word_embeddings": False}),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {**SMALL, "rope_theta": 1_000_000.0, "tie_word_embeddings": True},
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        # the prompts (up to 40 tokens) run past the window
        {**SMALL, "sliding_window": 8, "tie_word_embeddings": False},
    ),
    "gemma3_text": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        # (1 + w) norms, post-norms, GeGLU, √d embedding scale, a head size apart from the
        # width; layers 0-4 local (window 8, RoPE base 10000), layer 5 global (its own base and
        # a linear scaling), the released models' pattern (a GGUF file cannot say another); a
        # final soft-cap. (query_pre_attn_scalar is the head size, as in the released models
        # but 27B: a GGUF file does not hold it; the Rust tests read other values.)
        {
            **SMALL,
            "num_hidden_layers": 6,
            "head_dim": 32,
            "sliding_window": 8,
            "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
            "query_pre_attn_scalar": 32,
            "final_logit_softcapping": 20.0,
        },
    ),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        # fused qkv and gate_up; RoPE on half of each head; LongRoPE: the 40-token prompt runs
        # past the original context of 32 (long factors), the padded batch's within it (short),
        # cached decoding and greedy decoding cross it; cos and sin scaled by
        # √(1 + ln 8 / ln 32).
        {
            **SMALL,
            "original_max_position_embeddings": 32,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 10_000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0, 1.3, 1.9, 2.6],
                "long_factor": [1.5, 2.5, 4.0, 7.0],
                "original_max_position_embeddings": 32,
            },
        },
    ),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        # head_dim not hidden / heads = 16, as in the released models
        {**SMALL, "head_dim": 32, "tie_word_embeddings": False},
    ),
}


def test_every_registered_architecture_is_in_the_suite() -> None:
    assert sorted(name for name, *_ in _core.decoder_architectures()) == sorted(ARCHS)
    # (and the multimodal Gemma 3 config, read for its language model below)
    assert sorted(ferrolm.decoder_model_types()) == sorted([*ARCHS, "gemma3"])


def _perturb(model: Any, seed: int) -> None:
    """transformers starts norms at 1, biases at 0 and weights small: the logits would be nearly
    flat, blind to a wrong head grouping, RoPE or bias. Redraw at unit scale."""
    gen = torch.Generator().manual_seed(30_000 + seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                new = 0.1 * torch.randn(param.shape, generator=gen)
            elif "norm" in name or ".ln_" in name:
                new = 0.5 + torch.rand(param.shape, generator=gen)
            elif any(k in name for k in ("embed_tokens", "lm_head", "wte", "wpe")):
                new = 0.2 * torch.randn(param.shape, generator=gen)
            elif param.dim() == 2:
                # nn.Linear is [out, in]; GPT-2's Conv1D [in, out].
                conv1d = isinstance(model, transformers.GPT2LMHeadModel)
                fan_in = param.shape[0] if conv1d else param.shape[1]
                new = torch.randn(param.shape, generator=gen) / math.sqrt(fan_in)
            else:
                new = 0.5 + torch.rand(param.shape, generator=gen)
            param.copy_(new)


_BUILT: dict[str, tuple[Path, Any]] = {}


def _model(arch: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """(folder, the transformers model, the ferrolm model) of `arch`, built once."""
    if arch not in _BUILT:
        config_cls, model_cls, overrides = ARCHS[arch]
        config = getattr(transformers, config_cls)(
            vocab_size=VOCAB, bos_token_id=EOS, eos_token_id=EOS, **overrides
        )
        torch.manual_seed(7)
        ref = getattr(transformers, model_cls)(config)
        _perturb(ref, 7)
        ref = ref.float().eval()
        folder = tmp_path_factory.mktemp(f"conformance-{arch}")
        ref.save_pretrained(folder, safe_serialization=True)
        write_gpt2_files(folder)
        # and the same as tokenizer.json: transformers' AutoTokenizer reads a Phi-3 folder's
        # from that file only (llama.cpp's converter asks it for the vocabulary).
        bpe = tokenizers.ByteLevelBPETokenizer(
            str(folder / "vocab.json"), str(folder / "merges.txt")
        )
        bpe.save(str(folder / "tokenizer.json"))
        tok_config = {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>"}
        (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
        _BUILT[arch] = (folder, ref)
    folder, ref = _BUILT[arch]
    return folder, ref, ferrolm.AutoModelForCausalLM.from_pretrained(folder)


def _prompt(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(3, EOS, size=n)]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_logits_match_transformers(arch: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    _, ref, ours = _model(arch, tmp_path_factory)
    assert ours._core.model_type == arch
    # AutoModelForCausalLM gives the class of transformers' name, ferrolm.<name>.
    assert type(ours).__name__ == type(ref).__name__
    assert isinstance(ours, getattr(ferrolm, type(ref).__name__))
    ids = _prompt(40, 1)  # past 16 tokens: the blocked (prompt) attention path
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    got = ours(np.array([ids])).logits[0]
    assert got.shape == want.shape
    err = float(np.abs(got - want).max())
    assert err < 1e-4, f"{arch}: max |logits - transformers| = {err:.2e}"
    assert float(np.abs(want).max()) > 0.5  # the comparison is not between near-zero logits


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_cached_decoding_equals_recomputing(
    arch: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, _, ours = _model(arch, tmp_path_factory)
    # (Phi-3's steps cross its original context of 32: the cached keys are re-rotated.)
    ids = _prompt(40, 2)
    core = ours._core
    vocab = core.config["vocab_size"]
    cache = core.new_cache(1)
    stepped = [np.frombuffer(core.forward(cache, ids[:20], [1] * 20, 20), np.float32)[-vocab:]]
    for i in range(20, 40):
        out = core.forward(cache, [ids[i]], [1], 1)
        stepped.append(np.frombuffer(out, np.float32))
    # Each step against the sequence so far recomputed without a cache (for LongRoPE the
    # whole 40 tokens would rotate the first ones by the long factors, as transformers does).
    whole = [
        np.frombuffer(
            core.forward(core.new_cache(1), ids[:n], [1] * n, n, last_only=True), np.float32
        )
        for n in range(20, 41)
    ]
    err = float(np.abs(np.stack(stepped) - np.stack(whole)).max())
    assert err < 1e-4, f"{arch}: cached decoding differs from recomputing by {err:.2e}"


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_left_padded_batch_equals_one_by_one(
    arch: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, _, ours = _model(arch, tmp_path_factory)
    prompts = [_prompt(25, 3), _prompt(9, 4), _prompt(17, 5)]
    core = ours._core
    vocab = core.config["vocab_size"]
    t = max(len(p) for p in prompts)
    tokens = [tok for p in prompts for tok in [0] * (t - len(p)) + p]
    mask = [m for p in prompts for m in [0] * (t - len(p)) + [1] * len(p)]
    cache = core.new_cache(3)
    batch = [np.frombuffer(core.forward(cache, tokens, mask, t, last_only=True), np.float32)]
    # Then 10 decoding steps, one token each (Phi-3: the first sequence crosses its original
    # context of 32 on the way, the others do not).
    steps = [_prompt(3, 40 + i) + _prompt(7, 50 + i) for i in range(3)]
    for k in range(10):
        out = core.forward(cache, [s[k] for s in steps], [1, 1, 1], 1)
        batch.append(np.frombuffer(out, np.float32))
    for i, p in enumerate(prompts):
        alone_cache = core.new_cache(1)
        alone = [
            np.frombuffer(
                core.forward(alone_cache, p, [1] * len(p), len(p), last_only=True), np.float32
            )
        ]
        for k in range(10):
            out = core.forward(alone_cache, [steps[i][k]], [1], 1)
            alone.append(np.frombuffer(out, np.float32))
        got = np.stack([b.reshape(3, vocab)[i] for b in batch])
        err = float(np.abs(got - np.stack(alone)).max())
        assert err < 1e-4, f"{arch}: sequence {i} in a padded batch differs by {err:.2e}"


@pytest.mark.parametrize("arch", ["mistral", "gemma3_text"])
def test_sliding_window_layers_keep_their_window_only(
    arch: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A sliding-window layer keeps a ring of its window (8 here): the cache of Mistral (every
    layer windowed) stays the same size from 40 tokens to 250; Gemma 3's grows by its one
    global layer only."""
    _, _, ours = _model(arch, tmp_path_factory)
    core = ours._core
    config = core.config
    kv_bytes = 2 * config["num_key_value_heads"] * config["head_dim"] * 4  # k and v, f32
    cache = core.new_cache(1)
    ids = _prompt(250, 13)
    core.forward(cache, ids[:40], [1] * 40, 40, last_only=True)
    at_40 = cache.nbytes
    for tok in ids[40:]:
        core.forward(cache, [tok], [1], 1)
    at_250 = cache.nbytes
    layers = config["num_hidden_layers"]
    full = 0 if arch == "mistral" else 1  # layers that keep every position
    if arch == "mistral":
        assert at_250 == at_40
    # The full layers' rows (the cache grows to the context, 256) and a ring of the window
    # plus the 40-token prompt for each windowed layer (under 64 entries of 4-byte positions).
    limit = full * 256 * kv_bytes + (layers - full) * 64 * kv_bytes + 64 * 4
    assert at_250 <= limit, (at_250, limit)
    assert at_250 < 250 * layers * kv_bytes / 2


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_greedy_64_tokens_match_transformers(
    arch: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, ref, ours = _model(arch, tmp_path_factory)
    ids = _prompt(12, 6)
    with torch.no_grad():
        want = ref.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=64,
            min_new_tokens=64,
            do_sample=False,
            pad_token_id=EOS,
        )[0].tolist()
    got = ours.generate(np.array([ids]), max_new_tokens=64, min_new_tokens=64, do_sample=False)
    assert [int(x) for x in got[0]] == want


def test_a_multimodal_gemma3_folder_runs_its_language_model(tmp_path: Path) -> None:
    """Gemma3ForConditionalGeneration (model_type "gemma3", the released 4B-27B folders): the
    text model under text_config and language_model.model.*, the vision tower left unread."""
    _, _, text = ARCHS["gemma3_text"]
    config = transformers.Gemma3Config(
        text_config=transformers.Gemma3TextConfig(
            vocab_size=VOCAB, bos_token_id=EOS, eos_token_id=EOS, **text
        ).to_dict(),
        vision_config=transformers.SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ).to_dict(),
        mm_tokens_per_image=4,
    )
    torch.manual_seed(11)
    ref = transformers.Gemma3ForConditionalGeneration(config)
    _perturb(ref, 11)
    ref = ref.float().eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    write_gpt2_files(tmp_path)
    ours = ferrolm.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(ours).__name__ == "Gemma3ForCausalLM"
    assert ours._core.model_type == "gemma3_text"
    ids = _prompt(40, 12)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor([ids])).logits[0].numpy()
    got = ours(np.array([ids])).logits[0]
    # (transformers' multimodal class does not soft-cap: logits up to ~16 here, held to 1e-5
    # of the largest, the 1e-4 of the soft-capped text model's ~10.)
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err < 1e-5 * scale, f"multimodal gemma3: max |logits - transformers| = {err:.2e}"
    assert scale > 0.5


def test_bad_folders_are_refused_naming_the_key_or_tensor(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    import shutil

    from safetensors.numpy import load_file, save_file

    folder, _, _ = _model("qwen3", tmp_path_factory)

    def variant(name: str, edit_config: Any = None, edit_tensors: Any = None) -> Path:
        out = tmp_path / name
        shutil.copytree(folder, out)
        if edit_config is not None:
            config = json.loads((out / "config.json").read_text())
            edit_config(config)
            (out / "config.json").write_text(json.dumps(config))
        if edit_tensors is not None:
            tensors = load_file(out / "model.safetensors")
            edit_tensors(tensors)
            save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
        return out

    missing = variant("missing", edit_config=lambda c: c.pop("num_attention_heads"))
    with pytest.raises(ferrolm.FormatError, match="num_attention_heads"):
        ferrolm.AutoModelForCausalLM.from_pretrained(missing)

    def bad_kv_heads(c: dict[str, Any]) -> None:
        c["num_key_value_heads"] = 3

    with pytest.raises(ferrolm.FormatError, match="num_key_value_heads"):
        ferrolm.AutoModelForCausalLM.from_pretrained(variant("kv", edit_config=bad_kv_heads))

    def window(c: dict[str, Any]) -> None:
        c["use_sliding_window"] = True
        c["sliding_window"] = 16

    with pytest.raises(ferrolm.FormatError, match="use_sliding_window"):
        ferrolm.AutoModelForCausalLM.from_pretrained(variant("window", edit_config=window))

    def huge_window(c: dict[str, Any]) -> None:
        c["sliding_window"] = 100_000

    mistral, _, _ = _model("mistral", tmp_path_factory)
    wide = tmp_path / "wide"
    shutil.copytree(mistral, wide)
    config = json.loads((wide / "config.json").read_text())
    huge_window(config)
    (wide / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ferrolm.FormatError, match="sliding_window 100000 is larger than the context"
    ):
        ferrolm.AutoModelForCausalLM.from_pretrained(wide)

    name = "model.layers.1.self_attn.k_norm.weight"

    def short_norm(t: dict[str, Any]) -> None:
        t[name] = t[name][:-1].copy()

    with pytest.raises(ferrolm.FormatError, match=r"layers\.1\.self_attn\.k_norm"):
        ferrolm.AutoModelForCausalLM.from_pretrained(variant("shape", edit_tensors=short_norm))


# The architectures whose GGUF files ferrolm reads (the registry says).
GGUF_ARCHS = sorted(name for name, _, _, gguf in _core.decoder_architectures() if gguf)
# What a converted file is held to. f32: the folder's logits, the same arithmetic. f16 (the
# matrices rounded to 11 bits, which moves these unit-scale logits by up to 1%): transformers
# run on the folder's matrices rounded to f16 the same way, within 1e-4 as the folder itself. A
# q8_0 file (8 bits per block of 32, run on ferrolm's int8 kernels, activations rounded to int8
# too) is held to the folder quantized to q8_0 by ferrolm itself: its error (3-25% of the
# largest logit on these random weights) within half as much again, its most likely next tokens
# agreeing with the folder's nearly as often.
GGUF_OUTTYPES = ["f16", "f32", "q8_0"]


def test_the_gguf_architectures_are_in_the_suite() -> None:
    assert GGUF_ARCHS and set(GGUF_ARCHS) <= set(ARCHS)


@pytest.mark.parametrize("outtype", GGUF_OUTTYPES)
@pytest.mark.parametrize("arch", GGUF_ARCHS)
def test_llama_cpp_conversions_agree_with_the_folder(
    arch: str, outtype: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder, ref, ours = _model(arch, tmp_path_factory)
    path = convert(folder, tmp_path_factory.mktemp(f"gguf-{arch}") / f"{outtype}.gguf", outtype)
    model = ferrolm.AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == type(ref).__name__
    assert model._core.model_type == arch
    assert model._core.quantization == ("q8_0" if outtype == "q8_0" else None)
    # The file's tokenizer (GPT-2's, converted) gives the folder's ids.
    text = "Hello world, it's 2026: tokens, numbers 12345 and ünïcödé."
    assert model.tokenizer is not None and ours.tokenizer is not None
    assert model.tokenizer.encode(text) == ours.tokenizer.encode(text)
    ids = _prompt(40, 8)
    want = ours(np.array([ids])).logits[0]
    got = model(np.array([ids])).logits[0]
    scale = float(np.abs(want).max())
    agree = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    if outtype == "f32":
        err = float(np.abs(got - want).max()) / scale
        assert err < 1e-5, f"{arch} f32: max error {err:.2e} of {scale:.1f}"
        assert agree == 1.0
    elif outtype == "f16":
        rounded = copy.deepcopy(ref)
        with torch.no_grad():
            for param in rounded.parameters():
                if param.dim() == 2:
                    param.copy_(param.half().float())
            want16 = rounded(torch.tensor([ids])).logits[0].numpy()
        assert float(np.abs(want16 - want).max()) > 1e-4  # the rounding is seen
        err = float(np.abs(got - want16).max())
        assert err < 1e-4, f"{arch} f16: max |logits - transformers at f16| = {err:.2e}"
    else:
        own = ferrolm.AutoModelForCausalLM.from_pretrained(folder, quantize="q8_0")
        own_logits = own(np.array([ids])).logits[0]
        own_err = float(np.abs(own_logits - want).max()) / scale
        own_agree = float(np.mean(own_logits.argmax(-1) == want.argmax(-1)))
        err = float(np.abs(got - want).max()) / scale
        assert err < 1.5 * own_err, f"{arch} q8_0: max error {err:.2e} (own {own_err:.2e})"
        assert agree >= own_agree - 0.1, (agree, own_agree)
