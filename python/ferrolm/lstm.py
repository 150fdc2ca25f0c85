"""LSTM language models: Embedding → stacked LSTM layers → Dense, run by ferrolm's Rust core.

``LSTMLanguageModel.from_pretrained(path)`` reads

- a folder: ``config.json`` and ``*.safetensors`` in PyTorch's layout. The config schema::

      {"model_type": "lstm", "vocab_size": V, "embedding_dim": E, "hidden_size": H,
       "num_layers": L, "output_activation": "linear" | "softmax",
       "tensor_names": {"embedding": "embedding", "lstm": "lstm", "output": "fc"},  # optional
       "bos_token_id": ..., "eos_token_id": ..., "max_length": ...}                  # optional

  with tensors ``{embedding}.weight`` ``[V, E]``, ``{lstm}.weight_ih_l{k}`` ``[4H, in]``,
  ``{lstm}.weight_hh_l{k}`` ``[4H, H]``, ``{lstm}.bias_ih_l{k}`` / ``bias_hh_l{k}`` ``[4H]``
  (optional), ``{output}.weight`` ``[V, H]`` and ``{output}.bias`` ``[V]`` (optional): what
  ``nn.Embedding``, ``nn.LSTM(E, H, L, batch_first=True)`` and ``nn.Linear(H, V)`` named
  ``embedding``, ``lstm``, ``fc`` save (:func:`save_torch_lstm` writes it);
- a Keras 3 ``.keras`` file (the zip ``model.save`` writes) of ``Embedding`` → ``LSTM`` (one or
  more, ``return_sequences=True``) → ``Dense``, read with ``h5py`` (``pip install
  'ferrolm[keras]'``); ``Dropout`` and ``InputLayer`` are accepted, anything else is refused
  naming the layer.

The model is a causal LM like the Transformers (``model(input_ids)``, ``generate``, ``stream``,
``ferrolm.perplexity``), plus Keras' ``predict`` and an explicit recurrent state.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ferrolm import _core
from ferrolm._errors import FormatError
from ferrolm._resolve import resolve
from ferrolm.models import PreTrainedCausalLM, _read_json, _rows_of
from ferrolm.tokenizer import Tokenizer

__all__ = ["LSTMLanguageModel", "save_torch_lstm"]


class LSTMLanguageModel(PreTrainedCausalLM):
    """An Embedding → LSTM → Dense language model (Keras or PyTorch weights)."""

    _ctx_name = "max_length"

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        quantize: str | None = None,
        tokenizer: Tokenizer | str | os.PathLike[str] | None = None,
        **_: Any,
    ) -> LSTMLanguageModel:
        """Loads a folder (``config.json`` + safetensors) or a ``.keras`` file. ``quantize``:
        ``"int8"`` / ``"int4"`` / ``"q4_1"`` for the matrices. ``tokenizer``: a Tokenizer or
        a path to one (default: the folder's ``tokenizer.json``, if any)."""
        path = resolve(name_or_path)
        if path.is_file():
            with tempfile.TemporaryDirectory(prefix="ferrolm-keras-") as tmp:
                convert_keras(path, Path(tmp))
                core = _core.CausalLM.load_lstm(Path(tmp), quantize=quantize)
            folder = path.parent
        else:
            config = _read_json(path / "config.json")
            if config.get("model_type") != "lstm":
                raise FormatError(
                    f"{path / 'config.json'}: model_type={config.get('model_type')!r} is not lstm"
                )
            core = _core.CausalLM.load_lstm(path, quantize=quantize)
            folder = path
        tok: Tokenizer | None
        if isinstance(tokenizer, Tokenizer) or tokenizer is None:
            tok = tokenizer
        else:
            tok = Tokenizer.from_file(tokenizer)
        if tok is None and (folder / "tokenizer.json").is_file() and path.is_dir():
            tok = Tokenizer.from_pretrained(folder)
        model = cls(core, path, tok)
        return model

    # ---------------------------------------------------------------- Keras' predict

    def predict(self, x: Any, batch_size: int | None = None, verbose: Any = None) -> Any:
        """What Keras' ``model.predict`` returns: the Dense layer's outputs ``(batch, time,
        vocab)`` as float32 numpy (probabilities when it ends in softmax). Rows of ``x`` are
        sequences of equal length (pad them and use ``model(input_ids, attention_mask)`` for
        ragged batches)."""
        del verbose
        import numpy as np

        rows, _ = _rows_of(x)
        if not rows or not rows[0]:
            raise ValueError("predict: empty input")
        step = batch_size or 32
        outs = []
        for i in range(0, len(rows), step):
            logits = self(rows[i : i + step]).logits
            outs.append(np.asarray(logits))
        out = np.concatenate(outs, axis=0)
        if self.config["output_activation"] == "softmax":
            out = out - out.max(axis=-1, keepdims=True)
            np.exp(out, out=out)
            out /= out.sum(axis=-1, keepdims=True)
        return out.astype(np.float32, copy=False)

    # ---------------------------------------------------------------- explicit state

    def new_state(self, batch: int = 1, h: Any = None, c: Any = None) -> _core.Cache:
        """A state for ``batch`` sequences (zeros, or ``h`` / ``c`` given as ``[layers, batch,
        hidden]`` arrays, PyTorch's ``(h_0, c_0)``); pass it as ``past_key_values`` to
        ``model(...)`` to run step by step."""
        import numpy as np

        cache = self._core.new_cache(batch)
        if h is None and c is None:
            return cache
        layers, hidden = self.config["num_layers"], self.config["hidden_size"]
        zeros = np.zeros((layers, batch, hidden), dtype=np.float32)
        h_arr = zeros if h is None else np.asarray(h, dtype=np.float32)
        c_arr = zeros if c is None else np.asarray(c, dtype=np.float32)
        for name, arr in (("h", h_arr), ("c", c_arr)):
            if arr.shape != (layers, batch, hidden):
                raise ValueError(f"{name} must be [{layers}, {batch}, {hidden}], got {arr.shape}")
        for b in range(batch):
            # Per sequence: layer by layer, h then c.
            flat = np.stack([h_arr[:, b], c_arr[:, b]], axis=1).reshape(-1)
            cache.set_state(b, flat.tobytes())
        return cache

    def get_state(self, state: _core.Cache) -> tuple[Any, Any]:
        """``(h, c)``, each ``[layers, batch, hidden]`` (PyTorch's ``(h_n, c_n)``)."""
        import numpy as np

        layers, hidden = self.config["num_layers"], self.config["hidden_size"]
        per = [
            np.frombuffer(state.get_state(b), dtype="<f4").reshape(layers, 2, hidden)
            for b in range(state.batch)
        ]
        both = np.stack(per, axis=1)  # [layers, batch, 2, hidden]
        return both[:, :, 0].copy(), both[:, :, 1].copy()


# -------------------------------------------------------------------- writing folders


def _write_safetensors(path: Path, tensors: Mapping[str, Any]) -> None:
    """A safetensors file of float32 arrays (the format: u64 header length, JSON, raw bytes)."""
    import numpy as np

    header: dict[str, Any] = {}
    blobs = []
    offset = 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(np.shape(arr)),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def save_torch_lstm(
    folder: str | os.PathLike[str],
    embedding: Any,
    lstm: Any,
    fc: Any,
    *,
    output_activation: str = "linear",
    tokenizer: Tokenizer | None = None,
    **config: Any,
) -> Path:
    """Writes a folder ``LSTMLanguageModel.from_pretrained`` reads from PyTorch modules
    ``nn.Embedding``, ``nn.LSTM`` (``batch_first=True``, unidirectional, no projection) and
    ``nn.Linear``; extra keyword arguments go into ``config.json`` (``bos_token_id``, ...)."""
    if getattr(lstm, "bidirectional", False) or getattr(lstm, "proj_size", 0):
        raise ValueError("ferrolm runs unidirectional LSTMs without projections")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"embedding.weight": embedding.weight.detach().cpu().numpy()}
    for name, value in lstm.state_dict().items():
        tensors[f"lstm.{name}"] = value.detach().cpu().numpy()
    tensors["fc.weight"] = fc.weight.detach().cpu().numpy()
    if fc.bias is not None:
        tensors["fc.bias"] = fc.bias.detach().cpu().numpy()
    _write_safetensors(out / "model.safetensors", tensors)
    cfg = {
        "model_type": "lstm",
        "vocab_size": int(embedding.num_embeddings),
        "embedding_dim": int(embedding.embedding_dim),
        "hidden_size": int(lstm.hidden_size),
        "num_layers": int(lstm.num_layers),
        "output_activation": output_activation,
        **config,
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(out)
    return out


# -------------------------------------------------------------------- Keras files

_PASS_THROUGH = {"InputLayer", "Dropout", "SpatialDropout1D", "Activation"}


def _snake_case(name: str) -> str:
    """Keras' ``to_snake_case``: ``"SpatialDropout1D"`` -> ``"spatial_dropout1d"``."""
    import re

    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def convert_keras(path: Path, out: Path) -> None:
    """Writes the folder for a ``.keras`` file: ``config.json`` and ``model.safetensors``."""
    try:
        import h5py  # type: ignore[import-untyped]
    except ImportError:
        raise ImportError(
            "reading .keras files needs h5py: pip install 'ferrolm[keras]' (or h5py)"
        ) from None
    import io

    import numpy as np

    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            weights = z.read("model.weights.h5")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise FormatError(f"{path}: not a Keras 3 .keras file ({e})") from None
    layers = config.get("config", {}).get("layers")
    if not isinstance(layers, list):
        raise FormatError(f"{path}: config.json has no layer list")
    # Keras 3 stores a layer's weights under its class name in snake case, numbered per class
    # in the order of the model's layers (`layers/lstm`, `layers/lstm_1`, ...), not its name.
    plan: list[tuple[str, str, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for layer in layers:
        kind = layer.get("class_name")
        cfg = layer.get("config", {})
        name = cfg.get("name", "?")
        if kind != "InputLayer":
            snake = _snake_case(str(kind))
            count = seen.get(snake, 0)
            seen[snake] = count + 1
            cfg = {**cfg, "_store": snake if count == 0 else f"{snake}_{count}"}
        if kind in _PASS_THROUGH:
            if kind == "Activation" and cfg.get("activation") not in ("linear", "softmax"):
                act = cfg.get("activation")
                raise FormatError(f"{path}: layer {name!r} (Activation {act!r}) is unsupported")
            if kind == "Activation":
                plan.append((kind, name, cfg))
            continue
        if kind not in ("Embedding", "LSTM", "Dense"):
            raise FormatError(
                f"{path}: layer {name!r} ({kind}) is unsupported; ferrolm runs Embedding → LSTM "
                "→ Dense (with Dropout / InputLayer)"
            )
        plan.append((kind, name, cfg))
    kinds = [k for k, _, _ in plan]
    if (
        not kinds
        or kinds[0] != "Embedding"
        or "Dense" not in kinds
        or kinds.count("Dense") != 1
        or any(k != "LSTM" for k in kinds[1 : kinds.index("Dense")])
        or kinds.index("Dense") < 2
        or any(k != "Activation" for k in kinds[kinds.index("Dense") + 1 :])
    ):
        raise FormatError(f"{path}: layers {kinds} are not Embedding → LSTM (one or more) → Dense")
    try:
        h5 = h5py.File(io.BytesIO(weights), "r")
    except OSError as e:
        raise FormatError(f"{path}: model.weights.h5 is unreadable ({e})") from None
    with h5:

        def variables(cfg: dict[str, Any], n: int) -> list[Any]:
            name = cfg.get("name", "?")
            for store in (cfg.get("_store"), name):
                for group in (f"layers/{store}/cell/vars", f"layers/{store}/vars"):
                    if group in h5 and len(h5[group]) >= n:
                        return [np.asarray(h5[group][str(i)], dtype=np.float32) for i in range(n)]
            raise FormatError(f"{path}: the weights of layer {name!r} are missing")

        tensors: dict[str, Any] = {}
        hidden = None
        n_lstm = 0
        output_activation = "linear"
        vocab = embed = 0
        for kind, name, cfg in plan:
            if kind == "Embedding":
                if cfg.get("mask_zero"):
                    raise FormatError(
                        f"{path}: layer {name!r} (Embedding) has mask_zero=True, which is "
                        "unsupported: ferrolm masks padding with attention_mask instead"
                    )
                (table,) = variables(cfg, 1)
                vocab, embed = table.shape
                tensors["embedding.weight"] = table
            elif kind == "LSTM":
                for key, want in (
                    ("activation", "tanh"),
                    ("recurrent_activation", "sigmoid"),
                    ("go_backwards", False),
                    ("return_sequences", True),
                ):
                    if cfg.get(key, want) != want:
                        raise FormatError(
                            f"{path}: layer {name!r} (LSTM) with {key}={cfg.get(key)!r} is "
                            f"unsupported; ferrolm runs {key}={want!r}"
                        )
                use_bias = cfg.get("use_bias", True)
                vs = variables(cfg, 3 if use_bias else 2)
                kernel, recurrent = vs[0], vs[1]
                units = int(cfg.get("units", recurrent.shape[0]))
                if recurrent.shape != (units, 4 * units) or kernel.shape[1] != 4 * units:
                    raise FormatError(
                        f"{path}: layer {name!r} (LSTM) weights {kernel.shape} / "
                        f"{recurrent.shape} do not fit units={units}"
                    )
                if hidden is not None and units != hidden:
                    raise FormatError(
                        f"{path}: layer {name!r}: stacked LSTMs of different sizes "
                        f"({hidden} then {units}) are unsupported"
                    )
                hidden = units
                k = n_lstm
                tensors[f"lstm.weight_ih_l{k}"] = kernel.T
                tensors[f"lstm.weight_hh_l{k}"] = recurrent.T
                if use_bias:
                    tensors[f"lstm.bias_ih_l{k}"] = vs[2]
                n_lstm += 1
            elif kind == "Dense":
                act = cfg.get("activation", "linear")
                if act not in ("linear", "softmax"):
                    raise FormatError(
                        f"{path}: layer {name!r} (Dense) with activation {act!r} is unsupported; "
                        "ferrolm runs linear and softmax"
                    )
                output_activation = act
                vs = variables(cfg, 2 if cfg.get("use_bias", True) else 1)
                tensors["fc.weight"] = vs[0].T
                if len(vs) > 1:
                    tensors["fc.bias"] = vs[1]
            else:  # a trailing Activation
                if cfg.get("activation") == "softmax":
                    output_activation = "softmax"
    if hidden is None or tensors["fc.weight"].shape != (vocab, hidden):
        raise FormatError(f"{path}: the Dense layer does not map the LSTM units to the vocabulary")
    out.mkdir(parents=True, exist_ok=True)
    _write_safetensors(out / "model.safetensors", tensors)
    cfg_out = {
        "model_type": "lstm",
        "vocab_size": int(vocab),
        "embedding_dim": int(embed),
        "hidden_size": int(hidden),
        "num_layers": n_lstm,
        "output_activation": output_activation,
    }
    (out / "config.json").write_text(json.dumps(cfg_out), encoding="utf-8")
