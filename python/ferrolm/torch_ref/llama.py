"""Llama in plain PyTorch, written from the math: loads a Hugging Face ``LlamaForCausalLM`` folder
(config.json plus safetensors) or a llama.cpp GGUF file, and runs the forward pass with a
key/value cache, so that tests can compare ferrolm's Rust Llama against a short implementation
that can be read in one sitting.

The decoder: token embedding; per layer RMSNorm, attention with rotary position embedding (RoPE,
the "rotate half" convention) and grouped keys/values, residual, RMSNorm, SwiGLU feed-forward,
residual; a final RMSNorm and the output projection. No position table, no biases by default.

Shapes in the comments: B = batch, S = new tokens this call, P = tokens already in the cache,
T = P + S, E = hidden size, H = query heads, G = key/value heads, D = head size, I = feed-forward
(intermediate) size, V = vocab size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ferrolm.torch_ref.gpt2 import ACTIVATIONS, Past, _read_safetensors, positions_and_mask

# The RoPE variants this reference computes (``rope_type`` of the config).
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class LlamaRefConfig:
    """The fields of a Llama config.json that change the forward pass.

    RoPE is described by ``rope_theta`` and ``rope_type`` plus, for ``"linear"``, ``rope_factor``
    and, for ``"llama3"``, ``rope_factor``, ``low_freq_factor``, ``high_freq_factor`` and
    ``original_max_position_embeddings``.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    hidden_act: str
    attention_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    @property
    def kv_groups(self) -> int:
        """How many query heads share one key/value head (1 without grouped-query attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LlamaRefConfig:
        """Reads a parsed config.json (defaults as in transformers' LlamaConfig).

        RoPE settings are taken from ``rope_parameters`` (transformers 5 writes ``rope_theta``
        and ``rope_type`` there) or from the older ``rope_scaling`` dict (``type`` or
        ``rope_type``) next to a top-level ``rope_theta``. Raises ``ValueError`` for another
        model type, an unknown activation or RoPE type, or inconsistent sizes.
        """
        model_type = raw.get("model_type")
        if model_type != "llama":
            raise ValueError(f"not a Llama config: model_type is {model_type!r}, expected 'llama'")
        activation = str(raw.get("hidden_act", "silu"))
        if activation not in ACTIVATIONS:
            known = ", ".join(sorted(ACTIVATIONS))
            raise ValueError(f"unsupported hidden_act {activation!r} (known: {known})")
        hidden = int(raw.get("hidden_size", 4096))
        heads = int(raw.get("num_attention_heads", 32))
        kv_heads_raw = raw.get("num_key_value_heads")
        kv_heads = heads if kv_heads_raw is None else int(kv_heads_raw)
        if kv_heads <= 0 or heads % kv_heads != 0:
            raise ValueError(
                f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads "
                f"({kv_heads})"
            )
        head_dim_raw = raw.get("head_dim")
        if head_dim_raw is None:
            if hidden % heads != 0:
                raise ValueError(
                    f"hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads})"
                )
            head_dim = hidden // heads
        else:
            head_dim = int(head_dim_raw)
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim ({head_dim}) must be even for rotary embeddings")
        max_positions = int(raw.get("max_position_embeddings", 2048))
        rope = _rope_settings(raw, max_positions)
        return cls(
            vocab_size=int(raw.get("vocab_size", 32000)),
            hidden_size=hidden,
            num_hidden_layers=int(raw.get("num_hidden_layers", 32)),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=int(raw.get("intermediate_size", 11008)),
            max_position_embeddings=max_positions,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            hidden_act=activation,
            attention_bias=bool(raw.get("attention_bias", False)),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            **rope,
        )


def _rope_settings(raw: Mapping[str, Any], max_positions: int) -> dict[str, Any]:
    """The RoPE fields of ``LlamaRefConfig`` from ``rope_parameters`` (transformers 5) or
    ``rope_scaling`` + ``rope_theta`` (earlier versions); either may be absent or null."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"rope parameters must be a dict, got {params!r}")
    if any(isinstance(v, Mapping) for v in params.values()):
        raise ValueError("RoPE parameters per layer type are not supported by this reference")
    theta = params.get("rope_theta", raw.get("rope_theta"))
    rope_type = str(params.get("rope_type", params.get("type", "default")))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unsupported rope type {rope_type!r} (known: {', '.join(ROPE_TYPES)})")
    partial = params.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        raise ValueError(f"partial_rotary_factor {partial} is not supported (Llama rotates all)")
    out: dict[str, Any] = {
        "rope_theta": 10000.0 if theta is None else float(theta),
        "rope_type": rope_type,
    }
    if rope_type in ("linear", "llama3"):
        if "factor" not in params:
            raise ValueError(f"rope type {rope_type!r} needs a 'factor'")
        out["rope_factor"] = float(params["factor"])
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            if key not in params:
                raise ValueError(f"rope type 'llama3' needs {key!r}")
            out[key] = float(params[key])
        if out["high_freq_factor"] == out["low_freq_factor"]:
            raise ValueError("rope type 'llama3' needs high_freq_factor != low_freq_factor")
        # A top-level value wins, then the one among the RoPE parameters, as in transformers.
        original = raw.get(
            "original_max_position_embeddings",
            params.get("original_max_position_embeddings", max_positions),
        )
        out["original_max_position_embeddings"] = int(original)
    return out


def rope_inverse_frequencies(cfg: LlamaRefConfig) -> Tensor:
    """The D/2 angular speeds of RoPE, float32: theta^(-2j/D), then scaled per ``rope_type``.

    ``"linear"`` divides every speed by the factor (positions interpolated). ``"llama3"`` divides
    the slow ones (wavelength above original_max / low_freq_factor) by the factor, keeps the fast
    ones (wavelength below original_max / high_freq_factor) and blends linearly in between.
    """
    dim = cfg.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim  # [D/2] 2j / D
    inv_freq = 1.0 / (cfg.rope_theta**exponents)  # [D/2]
    if cfg.rope_type == "linear":
        return inv_freq / cfg.rope_factor
    if cfg.rope_type == "llama3":
        old_len = cfg.original_max_position_embeddings
        low, high = cfg.low_freq_factor, cfg.high_freq_factor
        wavelen = 2 * math.pi / inv_freq  # [D/2] tokens per full turn
        slow = wavelen > old_len / low  # rotates too slowly to have been seen whole: scale
        fast = wavelen < old_len / high  # many turns within the context: keep
        # 0 at the slow edge, 1 at the fast edge.
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / cfg.rope_factor + smooth * inv_freq
        scaled = torch.where(slow, inv_freq / cfg.rope_factor, inv_freq)
        return torch.where(~slow & ~fast, blended, scaled)
    return inv_freq


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis; statistics in float32."""
    x32 = x.float()
    mean_square = x32.pow(2).mean(dim=-1, keepdim=True)  # [..., 1]
    return weight * (x32 * torch.rsqrt(mean_square + eps)).to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    """[..., D] -> [..., D]: (a, b) -> (-b, a) for the first and second halves a, b."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class LlamaRef:
    """Llama (pre-RMSNorm decoder, RoPE, grouped-query attention, SwiGLU) over plain tensors.

    ``weights`` holds every tensor under transformers' names less the ``model.`` prefix:
    ``embed_tokens.weight``, ``layers.0.input_layernorm.weight``,
    ``layers.0.self_attn.q_proj.weight``, ..., ``norm.weight`` and ``lm_head.weight`` when
    untied. Projections are ``nn.Linear`` weights, [out, in]: a projection is ``x @ W.T (+ b)``.

    ``rope_freq_factors`` [D/2], when given, divides RoPE's angular speeds (as llama.cpp's
    ``rope_freqs`` tensor does for Llama 3.1 GGUF files) instead of ``rope_type`` scaling them.
    """

    def __init__(
        self,
        config: LlamaRefConfig,
        weights: Mapping[str, Tensor],
        *,
        rope_freq_factors: Tensor | None = None,
    ) -> None:
        self.config = config
        self.weights: dict[str, Tensor] = dict(weights)
        self.dtype = self.weights["embed_tokens.weight"].dtype
        # The output projection, [V, E]: the token embedding itself when tied.
        self.lm_head = (
            self.weights["embed_tokens.weight"]
            if config.tie_word_embeddings
            else self.weights["lm_head.weight"]
        )
        if rope_freq_factors is None:
            self.inv_freq = rope_inverse_frequencies(config)  # [D/2] float32
        else:
            unscaled = dataclasses.replace(config, rope_type="default")
            self.inv_freq = rope_inverse_frequencies(unscaled) / rope_freq_factors.float()
        self._act = ACTIVATIONS[config.hidden_act]

    def _w(self, name: str) -> Tensor:
        return self.weights[name]

    def __call__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        past: Past | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Past]:
        return self.forward(input_ids, attention_mask, past, position_ids)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        past: Past | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Past]:
        """Logits [B, S, V] for the new tokens ``input_ids`` [B, S], and the cache grown by them
        (per layer the rotated keys and the values, each [B, G, T, D]).

        ``attention_mask`` [B, P + S] (1 = token, 0 = padding) covers the cached tokens and the
        new ones. Without ``position_ids``, positions count only unmasked tokens (cumsum of the
        mask minus one, padding slots at 0), as transformers' ``generate`` does for left padding;
        without a mask they are P, P + 1, ..., P + S - 1.
        """
        cfg = self.config
        # Positions (the angle RoPE turns each new token's queries and keys by) and the mask.
        position_ids, allowed = positions_and_mask(input_ids, attention_mask, past, position_ids)
        device = input_ids.device

        # RoPE tables in float32, [B or 1, 1, S, D]: each speed twice (for both halves).
        angles = position_ids.float()[..., None] * self.inv_freq.to(device)  # [B, S, D/2]
        angles = torch.cat([angles, angles], dim=-1)  # [B, S, D]
        cos = angles.cos()[:, None].to(self.dtype)  # [B, 1, S, D] broadcast over heads
        sin = angles.sin()[:, None].to(self.dtype)

        x = self._w("embed_tokens.weight")[input_ids]  # [B, S, E] token embedding only

        new_past: Past = []
        for i in range(cfg.num_hidden_layers):
            layer_past = past[i] if past else None
            h = self._norm(f"layers.{i}.input_layernorm", x)
            attn_out, kv = self._attention(i, h, cos, sin, allowed, layer_past)
            x = x + attn_out  # [B, S, E] residual around attention
            new_past.append(kv)
            x = x + self._mlp(i, self._norm(f"layers.{i}.post_attention_layernorm", x))

        x = self._norm("norm", x)  # [B, S, E] final RMSNorm
        logits = x @ self.lm_head.T  # [B, S, V] scores over the vocabulary
        return logits, new_past

    def _norm(self, prefix: str, x: Tensor) -> Tensor:
        """RMSNorm ``prefix`` applied to x [..., E]."""
        return _rms_norm(x, self._w(f"{prefix}.weight"), self.config.rms_norm_eps)

    def _linear(self, name: str, x: Tensor, bias: bool) -> Tensor:
        """x [..., in] @ W.T [in, out] (+ b) for the projection ``name`` (without ``.weight``)."""
        out = x @ self._w(f"{name}.weight").T
        return out + self._w(f"{name}.bias") if bias else out

    def _attention(
        self,
        i: int,
        h: Tensor,
        cos: Tensor,
        sin: Tensor,
        allowed: Tensor,
        layer_past: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Causal grouped-query self-attention of layer ``i`` on h [B, S, E]; returns the output
        [B, S, E] and this layer's (key, value) cache, each [B, G, T, D]."""
        cfg = self.config
        batch, seq, _ = h.shape
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        prefix, bias = f"layers.{i}.self_attn", cfg.attention_bias

        def heads_first(t: Tensor, n: int) -> Tensor:
            """[B, S, n D] -> [B, n, S, D]: split the channels into n heads."""
            return t.view(batch, seq, n, head_dim).transpose(1, 2)

        q = heads_first(self._linear(f"{prefix}.q_proj", h, bias), heads)  # [B, H, S, D]
        k = heads_first(self._linear(f"{prefix}.k_proj", h, bias), kv_heads)  # [B, G, S, D]
        v = heads_first(self._linear(f"{prefix}.v_proj", h, bias), kv_heads)  # [B, G, S, D]

        # RoPE: rotate each (j, j + D/2) pair of channels by position * speed_j.
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin

        if layer_past is not None:
            k = torch.cat([layer_past[0], k], dim=2)  # [B, G, T, D] cached keys, then new ones
            v = torch.cat([layer_past[1], v], dim=2)  # [B, G, T, D]

        # Query head n reads key/value head n // groups: repeat each of the G heads in place.
        k_all = k.repeat_interleave(cfg.kv_groups, dim=1)  # [B, H, T, D]
        v_all = v.repeat_interleave(cfg.kv_groups, dim=1)  # [B, H, T, D]

        # Scores of every query against every key, [B, H, S, T], in float32, scaled by 1/sqrt(D).
        scores = (q.float() @ k_all.float().transpose(-1, -2)) / math.sqrt(head_dim)
        # Future and padding keys get the lowest float: exp() makes them 0 after the softmax.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)  # [B, H, S, T] attention weights
        out = probs @ v_all  # [B, H, S, D] weighted sum of values
        out = out.transpose(1, 2).reshape(batch, seq, heads * head_dim)  # [B, S, H D]
        return self._linear(f"{prefix}.o_proj", out, bias), (k, v)  # [B, S, E]

    def _mlp(self, i: int, h: Tensor) -> Tensor:
        """SwiGLU feed-forward of layer ``i`` on h [B, S, E]: down(act(gate(h)) * up(h))."""
        prefix, bias = f"layers.{i}.mlp", self.config.mlp_bias
        gate = self._act(self._linear(f"{prefix}.gate_proj", h, bias))  # [B, S, I]
        up = self._linear(f"{prefix}.up_proj", h, bias)  # [B, S, I]
        return self._linear(f"{prefix}.down_proj", gate * up, bias)  # [B, S, E]

    @torch.no_grad()
    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits [B, S, V] (float32) of a whole prompt [B, S], without a cache."""
        out, _ = self.forward(input_ids, attention_mask)
        return out.float()


def _expected_shapes(cfg: LlamaRefConfig) -> dict[str, tuple[int, ...]]:
    e, inner, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q_out, kv_out = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    shapes: dict[str, tuple[int, ...]] = {
        "embed_tokens.weight": (cfg.vocab_size, e),
        "norm.weight": (e,),
    }
    for i in range(cfg.num_hidden_layers):
        per: dict[str, tuple[int, ...]] = {
            "input_layernorm.weight": (e,),
            "self_attn.q_proj.weight": (q_out, e),
            "self_attn.k_proj.weight": (kv_out, e),
            "self_attn.v_proj.weight": (kv_out, e),
            "self_attn.o_proj.weight": (e, q_out),
            "post_attention_layernorm.weight": (e,),
            "mlp.gate_proj.weight": (inner, e),
            "mlp.up_proj.weight": (inner, e),
            "mlp.down_proj.weight": (e, inner),
        }
        if cfg.attention_bias:
            per.update(
                {
                    "self_attn.q_proj.bias": (q_out,),
                    "self_attn.k_proj.bias": (kv_out,),
                    "self_attn.v_proj.bias": (kv_out,),
                    "self_attn.o_proj.bias": (e,),
                }
            )
        if cfg.mlp_bias:
            per.update(
                {
                    "mlp.gate_proj.bias": (inner,),
                    "mlp.up_proj.bias": (inner,),
                    "mlp.down_proj.bias": (e,),
                }
            )
        shapes.update({f"layers.{i}.{k}": v for k, v in per.items()})
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, e)
    return shapes


def _checked(weights: dict[str, Tensor], cfg: LlamaRefConfig, source: object) -> dict[str, Tensor]:
    """``weights`` if they are exactly the tensors ``cfg`` calls for, each of its shape; else
    ``ValueError`` naming what is missing, unexpected or misshapen."""
    expected = _expected_shapes(cfg)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Llama weights in {source} do not match the config: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(
                f"tensor {name!r} has shape {tuple(weights[name].shape)}, expected {shape}"
            )
    return weights


def load_llama(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> LlamaRef:
    """Loads the ``LlamaForCausalLM`` in folder ``path`` (config.json + safetensors) with
    weights cast to ``dtype``. Tensor names may carry transformers' ``model.`` prefix or not;
    ``lm_head.weight`` is ignored when ``tie_word_embeddings`` (the head is the embedding).

    Raises ``ValueError`` for a config that is not Llama or that this reference does not
    implement, and for missing, unexpected or misshapen tensors.
    """
    folder = Path(path)
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg = LlamaRefConfig.from_dict(raw)
    if raw.get("quantization_config"):
        raise ValueError("quantized Llama checkpoints are not supported by this reference")
    weights: dict[str, Tensor] = {}
    for name, tensor in _read_safetensors(folder).items():
        canon = name.removeprefix("model.")
        if canon.endswith("rotary_emb.inv_freq"):
            continue  # a buffer that old checkpoints saved; recomputed from the config
        if canon == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: the output projection is embed_tokens, as transformers ties it
        if canon in weights:
            raise ValueError(f"tensor {canon!r} stored twice (with and without 'model.')")
        weights[canon] = tensor
    weights = _checked(weights, cfg, folder)
    return LlamaRef(cfg, {name: t.to(dtype) for name, t in weights.items()})


# GGUF tensor names (after ``blk.N.``) -> transformers' names (after ``layers.N.``).
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}


def _gguf_name(name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``layers.3.self_attn.q_proj.weight`` and so on."""
    base, dot, suffix = name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        raise ValueError(f"unexpected GGUF tensor {name!r}")
    if base in _GGUF_GLOBAL_NAMES:
        return f"{_GGUF_GLOBAL_NAMES[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        if parts[2] in _GGUF_LAYER_NAMES:
            return f"layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}.{suffix}"
    raise ValueError(f"unexpected GGUF tensor {name!r} for a Llama model")


def _unpermute_rows(t: Tensor, n_head: int) -> Tensor:
    """Undoes llama.cpp's row order for a Q or K projection (weight [n_head D, in] or bias).

    convert_hf_to_gguf stores, within each head, the rows of the first half (j) and the second
    half (j + D/2) interleaved as 2j, 2j + 1, so that llama.cpp's rotation of adjacent pairs
    equals transformers' rotate_half. Reading them back splits each head into [D/2, 2] and
    transposes to [2, D/2].
    """
    rows = t.shape[0]
    half = rows // n_head // 2
    return t.reshape(n_head, half, 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def _gguf_config(fields: Mapping[str, Any], vocab_rows: int, tied: bool) -> LlamaRefConfig:
    """A ``LlamaRefConfig`` from the ``llama.*`` metadata of a GGUF file (already decoded)."""

    def need(key: str) -> Any:
        if key not in fields:
            raise ValueError(f"GGUF metadata has no {key!r}")
        return fields[key]

    hidden = int(need("llama.embedding_length"))
    heads = int(need("llama.attention.head_count"))
    raw: dict[str, Any] = {
        "model_type": "llama",
        "vocab_size": int(fields.get("llama.vocab_size", vocab_rows)),
        "hidden_size": hidden,
        "num_hidden_layers": int(need("llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(fields.get("llama.attention.head_count_kv", heads)),
        "intermediate_size": int(need("llama.feed_forward_length")),
        "max_position_embeddings": int(fields.get("llama.context_length", 2048)),
        "rms_norm_eps": float(fields.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(fields.get("llama.rope.freq_base", 10000.0)),
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
    }
    if "llama.attention.key_length" in fields:
        raw["head_dim"] = int(fields["llama.attention.key_length"])
    head_dim = raw.get("head_dim", hidden // heads)
    rot = fields.get("llama.rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        raise ValueError(f"rope dimension {rot} != head size {head_dim}: partial RoPE unsupported")
    scaling = str(fields.get("llama.rope.scaling.type", "none"))
    if scaling == "linear":
        factor = float(fields.get("llama.rope.scaling.factor", 1.0))
        raw["rope_scaling"] = {"rope_type": "linear", "factor": factor}
    elif scaling not in ("none", ""):
        raise ValueError(f"GGUF rope scaling {scaling!r} is not supported by this reference")
    return LlamaRefConfig.from_dict(raw)


def _field_value(field: Any) -> Any:
    """A GGUF metadata value as a Python scalar or str (lists are not needed here)."""
    if hasattr(field, "contents"):  # gguf >= 0.11
        return field.contents()
    part = field.parts[field.data[0]]  # the value's bytes, as a numpy array of its type
    if len(field.types) == 1 and field.types[0].name == "STRING":
        return bytes(part).decode("utf-8")
    return part.tolist()[0] if len(part) == 1 else part.tolist()


def load_llama_gguf(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> LlamaRef:
    """Loads a llama.cpp GGUF file of architecture ``llama``, every tensor dequantized (with the
    ``gguf`` package) and cast to ``dtype``, Q/K rows put back in transformers' order, so that
    the same rotate_half RoPE applies. A file without ``output.weight`` ties the head to the
    embedding; a ``rope_freqs.weight`` tensor (Llama 3.1 scaling) divides RoPE's speeds.

    Raises ``ValueError`` for another architecture, settings this reference does not implement,
    and unknown, missing or misshapen tensors.
    """
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(os.fspath(path))
    fields: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith(("general.architecture", "llama.")):
            fields[key] = _field_value(field)
    arch = fields.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"not a Llama GGUF: general.architecture is {arch!r}, expected 'llama'")

    stored: dict[str, Tensor] = {}
    freq_factors: Tensor | None = None
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type)
        # GGUF lists dimensions fastest first (ne0 = columns); torch wants rows first.
        shape = [int(n) for n in reversed(tensor.shape.tolist())]
        data = torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))
        if tensor.name == "rope_freqs.weight":
            freq_factors = data
            continue
        canon = _gguf_name(tensor.name)
        if canon in stored:
            raise ValueError(f"GGUF tensor {tensor.name!r} stored twice")
        stored[canon] = data

    if "embed_tokens.weight" not in stored:
        raise ValueError(f"GGUF file {path} has no token_embd.weight")
    tied = "lm_head.weight" not in stored
    cfg = _gguf_config(fields, stored["embed_tokens.weight"].shape[0], tied)
    for name in list(stored):
        if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            stored[name] = _unpermute_rows(stored[name], cfg.num_attention_heads)
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            stored[name] = _unpermute_rows(stored[name], cfg.num_key_value_heads)
    # Biases, which llama.cpp reads when present: on the attention and on the feed-forward.
    if any(name.endswith("self_attn.q_proj.bias") for name in stored):
        cfg = dataclasses.replace(cfg, attention_bias=True)
    if any(name.endswith("mlp.gate_proj.bias") for name in stored):
        cfg = dataclasses.replace(cfg, mlp_bias=True)
    if freq_factors is not None and tuple(freq_factors.shape) != (cfg.head_dim // 2,):
        raise ValueError(
            f"tensor 'rope_freqs.weight' has shape {tuple(freq_factors.shape)}, "
            f"expected {(cfg.head_dim // 2,)}"
        )
    weights = _checked(stored, cfg, path)
    return LlamaRef(
        cfg,
        {name: t.to(dtype) for name, t in weights.items()},
        rope_freq_factors=freq_factors,
    )
