"""GPT-2 in plain PyTorch, written from the math: loads a Hugging Face GPT-2 folder (config.json
plus safetensors) and runs the forward pass with a key/value cache, so that tests can compare
ferrolm's Rust GPT-2 against a short implementation that can be read in one sitting.

Shapes in the comments: B = batch, S = new tokens this call, P = tokens already in the cache,
T = P + S, E = n_embd, H = n_head, D = E / H (head size), I = inner (MLP) size, V = vocab size.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ferrolm.torch_ref.quant import dequantize_tiles, quantize_activations

# Per layer: (key, value), each [B, H, P, D].
Past = list[tuple[Tensor, Tensor]]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_tanh(x: Tensor) -> Tensor:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


def _gelu_erf(x: Tensor) -> Tensor:
    """GELU, exact: x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _quick_gelu(x: Tensor) -> Tensor:
    """x sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


def _silu(x: Tensor) -> Tensor:
    """x sigmoid(x)."""
    return x * torch.sigmoid(x)


def _relu(x: Tensor) -> Tensor:
    """max(x, 0)."""
    return torch.clamp(x, min=0)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,  # the same formula, written as x (1 + 0.044715 x^2) inside tanh
    "gelu": _gelu_erf,
    "relu": _relu,
    "quick_gelu": _quick_gelu,
    "silu": _silu,
    "swish": _silu,
}


@dataclass(frozen=True)
class GPT2RefConfig:
    """The fields of a GPT-2 config.json that change the forward pass."""

    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    n_positions: int
    n_inner: int
    layer_norm_epsilon: float
    activation_function: str
    scale_attn_weights: bool
    scale_attn_by_inverse_layer_idx: bool
    tie_word_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GPT2RefConfig:
        """Reads a parsed config.json (defaults as in transformers' GPT2Config); raises
        ``ValueError`` for another model type, an unknown activation or inconsistent sizes."""
        model_type = raw.get("model_type")
        if model_type != "gpt2":
            raise ValueError(f"not a GPT-2 config: model_type is {model_type!r}, expected 'gpt2'")
        activation = raw.get("activation_function", "gelu_new")
        if activation not in ACTIVATIONS:
            known = ", ".join(sorted(ACTIVATIONS))
            raise ValueError(f"unsupported activation_function {activation!r} (known: {known})")
        n_embd = int(raw.get("n_embd", 768))
        n_head = int(raw.get("n_head", 12))
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) is not a multiple of n_head ({n_head})")
        n_inner = raw.get("n_inner")
        return cls(
            vocab_size=int(raw.get("vocab_size", 50257)),
            n_embd=n_embd,
            n_layer=int(raw.get("n_layer", 12)),
            n_head=n_head,
            n_positions=int(raw.get("n_positions", 1024)),
            n_inner=4 * n_embd if n_inner is None else int(n_inner),
            layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
            activation_function=activation,
            scale_attn_weights=bool(raw.get("scale_attn_weights", True)),
            scale_attn_by_inverse_layer_idx=bool(raw.get("scale_attn_by_inverse_layer_idx", False)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        )


def positions_and_mask(
    input_ids: Tensor,
    attention_mask: Tensor | None,
    past: Past | None,
    position_ids: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The checks and bookkeeping every decoder's forward starts with: ``input_ids`` [B, S] after
    ``past`` (P cached positions), ``attention_mask`` [B, P + S] if given.

    Returns the position of each new token, [B, S] (or [1, S]) — without ``position_ids``,
    positions count only unmasked tokens (cumsum of the mask minus one, padding slots at 0), as
    transformers' ``generate`` does for left padding; without a mask they are P, ..., P + S - 1 —
    and which keys each query may see, [B or 1, 1, S, T]: causal by cache slot, minus padding.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    batch, seq = input_ids.shape
    past_len = past[0][0].shape[2] if past else 0
    total = past_len + seq
    device = input_ids.device
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, total):
        raise ValueError(
            f"attention_mask must be [batch, past + seq] = {[batch, total]}, "
            f"got {list(attention_mask.shape)}"
        )
    if position_ids is None:
        if attention_mask is not None:
            counted = attention_mask.long().cumsum(-1) - 1  # [B, T] index among real tokens
            counted = counted.masked_fill(attention_mask == 0, 0)  # [B, T] padding -> 0
            position_ids = counted[:, past_len:]  # [B, S] only the new tokens
        else:
            position_ids = torch.arange(past_len, total, device=device).unsqueeze(0)  # [1, S]
    query_slot = torch.arange(past_len, total, device=device)  # [S] slot of each new token
    key_slot = torch.arange(total, device=device)  # [T]
    allowed = (key_slot[None, :] <= query_slot[:, None])[None, None]  # [1, 1, S, T]
    if attention_mask is not None:
        allowed = allowed & (attention_mask[:, None, None, :] != 0)  # [B, 1, S, T]
    return position_ids, allowed


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis; statistics in float32."""
    x32 = x.float()
    mean = x32.mean(dim=-1, keepdim=True)  # [..., 1]
    var = (x32 - mean).pow(2).mean(dim=-1, keepdim=True)  # [..., 1] biased variance
    normed = ((x32 - mean) * torch.rsqrt(var + eps)).to(x.dtype)  # [..., E]
    return normed * weight + bias


class GPT2Ref:
    """GPT-2 (pre-LayerNorm decoder) over plain tensors.

    ``weights`` holds every tensor under the original GPT-2 names (``wte.weight``,
    ``h.0.attn.c_attn.weight``, ..., ``ln_f.bias`` and ``lm_head.weight`` when untied).
    Conv1D weights are [in, out]: a projection is ``x @ W + b``.
    """

    def __init__(
        self,
        config: GPT2RefConfig,
        weights: Mapping[str, Tensor],
        *,
        quantized_activations: bool = False,
    ) -> None:
        self.config = config
        # Quantize the input of every projection (and of the head) per block of 32 to int8, as
        # ferrolm's quantized kernels do (``torch_ref.quant.quantize_activations``).
        self.quantized_activations = quantized_activations
        self.weights: dict[str, Tensor] = dict(weights)
        self.dtype = self.weights["wte.weight"].dtype
        # The output projection, [V, E]: the token embedding itself when tied.
        self.lm_head = (
            self.weights["wte.weight"]
            if config.tie_word_embeddings
            else self.weights["lm_head.weight"]
        )
        self._act = ACTIVATIONS[config.activation_function]

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
        """Logits [B, S, V] for the new tokens ``input_ids`` [B, S], and the cache grown by them.

        ``attention_mask`` [B, P + S] (1 = token, 0 = padding) covers the cached tokens and the
        new ones. Without ``position_ids``, positions count only unmasked tokens (cumsum of the
        mask minus one, padding slots at 0), as transformers' ``generate`` does for left padding;
        without a mask they are P, P + 1, ..., P + S - 1.
        """
        cfg = self.config
        position_ids, allowed = positions_and_mask(input_ids, attention_mask, past, position_ids)
        seq = input_ids.shape[1]
        if seq > 0 and int(position_ids.max()) >= cfg.n_positions:
            raise ValueError(
                f"position {int(position_ids.max())} is past n_positions ({cfg.n_positions})"
            )

        # Token plus position embedding, [B, S, E].
        x = self._w("wte.weight")[input_ids] + self._w("wpe.weight")[position_ids]

        new_past: Past = []
        for i in range(cfg.n_layer):
            layer_past = past[i] if past else None
            attn_out, kv = self._attention(i, self._ln(f"h.{i}.ln_1", x), allowed, layer_past)
            x = x + attn_out  # [B, S, E] residual around attention
            new_past.append(kv)
            x = x + self._mlp(i, self._ln(f"h.{i}.ln_2", x))  # [B, S, E] residual around MLP

        x = self._ln("ln_f", x)  # [B, S, E] final LayerNorm
        logits = self._in(x) @ self.lm_head.T  # [B, S, V] scores over the vocabulary
        return logits, new_past

    def _ln(self, prefix: str, x: Tensor) -> Tensor:
        """LayerNorm ``prefix`` applied to x [..., E]."""
        return _layer_norm(
            x,
            self._w(f"{prefix}.weight"),
            self._w(f"{prefix}.bias"),
            self.config.layer_norm_epsilon,
        )

    def _attention(
        self, i: int, h: Tensor, allowed: Tensor, layer_past: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Causal multi-head self-attention of layer ``i`` on h [B, S, E]; returns the output
        [B, S, E] and this layer's (key, value) cache, each [B, H, T, D]."""
        cfg = self.config
        batch, seq, embd = h.shape
        heads, head_dim = cfg.n_head, cfg.head_dim

        # Query, key and value in one projection, [B, S, 3E].
        qkv = self._in(h) @ self._w(f"h.{i}.attn.c_attn.weight") + self._w(
            f"h.{i}.attn.c_attn.bias"
        )
        q, k, v = qkv.chunk(3, dim=-1)  # each [B, S, E]

        def heads_first(t: Tensor) -> Tensor:
            """[B, S, E] -> [B, H, S, D]: split the channels into heads."""
            return t.view(batch, seq, heads, head_dim).transpose(1, 2)

        q, k, v = heads_first(q), heads_first(k), heads_first(v)  # each [B, H, S, D]
        if layer_past is not None:
            k = torch.cat([layer_past[0], k], dim=2)  # [B, H, T, D] cached keys, then new ones
            v = torch.cat([layer_past[1], v], dim=2)  # [B, H, T, D]

        # Scale: 1/sqrt(D) when scale_attn_weights, and 1/(i+1) more when by inverse layer idx.
        scale = 1.0
        if cfg.scale_attn_weights:
            scale /= math.sqrt(head_dim)
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= float(i + 1)

        # Scores of every query against every key, [B, H, S, T], in float32.
        scores = (q.float() @ k.float().transpose(-1, -2)) * scale
        # Future and padding keys get the lowest float: exp() makes them 0 after the softmax.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)  # [B, H, S, T] attention weights
        out = probs @ v  # [B, H, S, D] weighted sum of values
        out = out.transpose(1, 2).reshape(batch, seq, embd)  # [B, S, E] heads concatenated
        # Output projection, [B, S, E].
        out = self._in(out) @ self._w(f"h.{i}.attn.c_proj.weight") + self._w(
            f"h.{i}.attn.c_proj.bias"
        )
        return out, (k, v)

    def _mlp(self, i: int, h: Tensor) -> Tensor:
        """Feed-forward of layer ``i`` on h [B, S, E]: project up, activation, project down."""
        up = self._in(h) @ self._w(f"h.{i}.mlp.c_fc.weight") + self._w(f"h.{i}.mlp.c_fc.bias")
        up = self._act(up)  # [B, S, I]
        return self._in(up) @ self._w(f"h.{i}.mlp.c_proj.weight") + self._w(
            f"h.{i}.mlp.c_proj.bias"
        )

    def _in(self, x: Tensor) -> Tensor:
        """A projection's input: as is, or int8-quantized per block when simulating ferrolm's
        quantized kernels."""
        return quantize_activations(x).to(x.dtype) if self.quantized_activations else x

    @torch.no_grad()
    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits [B, S, V] (float32) of a whole prompt [B, S], without a cache."""
        out, _ = self.forward(input_ids, attention_mask)
        return out.float()


@torch.no_grad()
def greedy(
    model: GPT2Ref,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Tensor:
    """Greedy decoding with the key/value cache: the prompt [B, S] followed by up to
    ``max_new_tokens`` argmax tokens, [B, S + N].

    With ``eos_token_id`` a row that produced it is continued with ``pad_token_id`` (default:
    the eos id) and decoding stops once every row has, as transformers' ``generate`` does.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)  # [1, S]
    if pad_token_id is None:
        pad_token_id = eos_token_id
    batch = input_ids.shape[0]
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)  # [B]
    tokens = input_ids  # [B, S + n]
    step_ids = input_ids  # what to feed next: the prompt, then one token
    mask = attention_mask  # [B, S + n] when given
    past: Past | None = None
    for _ in range(max_new_tokens):
        logits, past = model.forward(step_ids, mask, past)  # [B, s, V]
        nxt = logits[:, -1, :].argmax(dim=-1)  # [B] most likely next token
        if eos_token_id is not None:
            assert pad_token_id is not None
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            done = done | (nxt == eos_token_id)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        step_ids = nxt[:, None]  # [B, 1]
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if eos_token_id is not None and bool(done.all()):
            break
    return tokens


# Per-layer buffers that old checkpoints carry next to the weights (the causal mask, -1e4).
_BUFFERS = ("attn.bias", "attn.masked_bias")


def _expected_shapes(cfg: GPT2RefConfig) -> dict[str, tuple[int, ...]]:
    e, inner = cfg.n_embd, cfg.n_inner
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (cfg.vocab_size, e),
        "wpe.weight": (cfg.n_positions, e),
        "ln_f.weight": (e,),
        "ln_f.bias": (e,),
    }
    for i in range(cfg.n_layer):
        per = {
            "ln_1.weight": (e,),
            "ln_1.bias": (e,),
            "attn.c_attn.weight": (e, 3 * e),
            "attn.c_attn.bias": (3 * e,),
            "attn.c_proj.weight": (e, e),
            "attn.c_proj.bias": (e,),
            "ln_2.weight": (e,),
            "ln_2.bias": (e,),
            "mlp.c_fc.weight": (e, inner),
            "mlp.c_fc.bias": (inner,),
            "mlp.c_proj.weight": (inner, e),
            "mlp.c_proj.bias": (e,),
        }
        shapes.update({f"h.{i}.{k}": v for k, v in per.items()})
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, e)
    return shapes


def _read_safetensors(folder: Path) -> dict[str, Tensor]:
    """Every tensor of ``model.safetensors``, or of the shards that
    ``model.safetensors.index.json`` lists (else of ``model-*.safetensors``)."""
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        shards = sorted(folder.glob("model-*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no model.safetensors (nor shards of it) in {folder}")
    tensors: dict[str, Tensor] = {}
    for shard in shards:
        tensors.update(load_file(shard))
    return tensors


def _canonical_name(name: str) -> str:
    """``transformer.h.0.ln_1.weight`` -> ``h.0.ln_1.weight``; other names unchanged."""
    return name.removeprefix("transformer.")


def load_gpt2(
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    *,
    quantized_activations: bool | None = None,
) -> GPT2Ref:
    """Loads the GPT-2 in folder ``path`` (config.json + safetensors) with weights cast to
    ``dtype``. Tensor names may carry transformers' ``transformer.`` prefix or not.

    A folder that ferrolm saved quantized (``quantization_config.quant_method == "ferrolm"``)
    has its ``*.qweight`` tiles dequantized; its projections then quantize their inputs as
    ferrolm's kernels do, unless ``quantized_activations=False``.

    Raises ``ValueError`` for a config that is not GPT-2 or that this reference does not
    implement, and for missing, unexpected or misshapen tensors.
    """
    folder = Path(path)
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg = GPT2RefConfig.from_dict(raw)
    stored = _read_safetensors(folder)
    qcfg = raw.get("quantization_config") or {}
    if qcfg:
        if qcfg.get("quant_method") != "ferrolm":
            raise ValueError(f"quantization method {qcfg.get('quant_method')!r} is not ferrolm's")
        stored = _dequantized(stored, cfg, str(qcfg.get("format")))
    if quantized_activations is None:
        quantized_activations = bool(qcfg)

    weights: dict[str, Tensor] = {}
    for name, tensor in stored.items():
        canon = _canonical_name(name)
        if canon.startswith("h.") and canon.split(".", 2)[2] in _BUFFERS:
            continue  # a mask buffer, not a weight
        if canon == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: the output projection is wte, as transformers ties it on load
        if canon in weights:
            raise ValueError(f"tensor {canon!r} stored twice (with and without 'transformer.')")
        weights[canon] = tensor

    expected = _expected_shapes(cfg)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"GPT-2 weights in {folder} do not match config.json: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(
                f"tensor {name!r} has shape {tuple(weights[name].shape)}, expected {shape}"
            )
    weights = {name: t.to(dtype) for name, t in weights.items()}
    return GPT2Ref(cfg, weights, quantized_activations=quantized_activations)


def _dequantized(stored: dict[str, Tensor], cfg: GPT2RefConfig, fmt: str) -> dict[str, Tensor]:
    """``stored`` with each ``{name}.qweight`` replaced by the f32 ``{name}.weight`` in GPT-2's
    layout: ``[in, out]`` for the Conv1D projections, ``[rows, n_embd]`` for wte / lm_head."""
    e = cfg.n_embd
    dims = {
        "attn.c_attn": (e, 3 * e),
        "attn.c_proj": (e, e),
        "mlp.c_fc": (e, cfg.n_inner),
        "mlp.c_proj": (cfg.n_inner, e),
    }
    out: dict[str, Tensor] = {}
    for name, t in stored.items():
        if not name.endswith(".qweight"):
            out[name] = t
            continue
        base = name.removesuffix(".qweight")
        canon = _canonical_name(base)
        if canon in ("wte", "lm_head"):
            out[f"{base}.weight"] = dequantize_tiles(t, fmt, cfg.vocab_size, e)
            continue
        kind = canon.split(".", 2)[2] if canon.startswith("h.") else ""
        if kind not in dims:
            raise ValueError(f"unexpected quantized tensor {name!r}")
        n_in, n_out = dims[kind]
        out[f"{base}.weight"] = dequantize_tiles(t, fmt, n_out, n_in).T.contiguous()
    return out
