"""Recurrent language models: Embedding → stacked LSTM or GRU layers → Dense, run by ferrolm's
Rust core.

``LSTMLanguageModel.from_pretrained(path)`` reads

- a folder: ``config.json`` and ``*.safetensors`` in PyTorch's layout. The config schema::

      {"model_type": "lstm", "vocab_size": V, "embedding_dim": E,
       "hidden_size": H | [H_0, H_1, ...],    # every layer's units, or one entry per layer
       "num_layers": L,                       # optional with a list (then it must match)
       "cell": "lstm" | "gru",                # optional, default "lstm"; one kind per model
       "output_activation": "linear" | "softmax",
       "tensor_names": {"embedding": "embedding", "lstm": "lstm", "gru": "gru",
                        "output": "fc"},                                             # optional
       "bos_token_id": ..., "eos_token_id": ..., "max_length": ...}                  # optional

  With ``{rnn}`` the cell's prefix (``lstm`` or ``gru``), ``G`` = 4 (LSTM) or 3 (GRU) and
  ``H_k`` layer k's units, the tensors are ``{embedding}.weight`` ``[V, E]``,
  ``{rnn}.weight_ih_l{k}`` ``[G·H_k, in]`` (``in`` = E, then ``H_{k-1}``),
  ``{rnn}.weight_hh_l{k}`` ``[G·H_k, H_k]``, ``{rnn}.bias_ih_l{k}`` / ``bias_hh_l{k}``
  ``[G·H_k]`` (optional), ``{output}.weight`` ``[V, H_last]`` and ``{output}.bias`` ``[V]``
  (optional): what ``nn.Embedding``, ``nn.LSTM(E, H, L, batch_first=True)`` (or ``nn.GRU``)
  and ``nn.Linear(H, V)`` named ``embedding``, ``lstm`` (``gru``), ``fc`` save, gates in
  PyTorch's order (LSTM ``i f g o``, GRU ``r z n``). :func:`save_torch_lstm` writes it, also
  for a stack of separate modules of different sizes (renumbered ``l0, l1, ...``);
- a Keras 3 ``.keras`` file (the zip ``model.save`` writes) of ``Embedding`` → ``LSTM`` or
  ``GRU`` (one or more, ``return_sequences=True``, of any sizes, all of one kind) → ``Dense``,
  read with ``h5py`` (``pip install 'ferrolm[keras]'``); ``Dropout`` and ``InputLayer`` are
  accepted, anything else is refused naming the layer. A ``GRU`` must have Keras 3's default
  ``reset_after=True`` (PyTorch's formula); its gates ``z r h`` are reordered to ``r z n`` and
  its bias ``(2, 3u)`` becomes ``bias_ih`` / ``bias_hh``.

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
from ferrolm._io import atomic_write_bytes, atomic_write_text, parse_json
from ferrolm._resolve import resolve
from ferrolm.models import PreTrainedCausalLM, _read_json, _rows_of
from ferrolm.tokenizer import Tokenizer

__all__ = ["LSTMLanguageModel", "save_torch_lstm"]


class LSTMLanguageModel(PreTrainedCausalLM):
    """An Embedding → LSTM or GRU layers → Dense language model (Keras or PyTorch weights).

    ``config["cell"]`` is ``"lstm"`` or ``"gru"``; ``config["hidden_sizes"]`` lists each
    layer's units (``config["hidden_size"]`` is one number when they are equal, else that
    list). The explicit state (:meth:`new_state`, :meth:`get_state`) follows PyTorch: ``(h,
    c)`` for an LSTM, ``h`` alone for a GRU, each ``[layers, batch, hidden]``; when the layers
    differ in size, a list with one ``[batch, H_k]`` array per layer instead."""

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

    def _sizes(self) -> list[int]:
        return [int(h) for h in self.config["hidden_sizes"]]

    def new_state(self, batch: int = 1, h: Any = None, c: Any = None) -> _core.Cache:
        """A state for ``batch`` sequences (zeros, or ``h`` / ``c`` given as ``[layers, batch,
        hidden]`` arrays, PyTorch's ``(h_0, c_0)``; a GRU takes ``h`` alone; layers of
        different sizes take a list of one ``[batch, H_k]`` array per layer); pass it as
        ``past_key_values`` to ``model(...)`` to run step by step."""
        import numpy as np

        cache = self._core.new_cache(batch)
        if h is None and c is None:
            return cache
        gru = self.config["cell"] == "gru"
        if gru and c is not None:
            raise ValueError("a GRU has no cell state: pass h alone")
        sizes = self._sizes()

        def per_layer(name: str, given: Any) -> list[Any]:
            if given is None:
                return [np.zeros((batch, n), dtype=np.float32) for n in sizes]
            if len(set(sizes)) == 1 and not isinstance(given, (list, tuple)):
                arr = np.asarray(given, dtype=np.float32)
                want = (len(sizes), batch, sizes[0])
                if arr.shape != want:
                    raise ValueError(
                        f"{name} must be [{want[0]}, {want[1]}, {want[2]}], got {arr.shape}"
                    )
                return list(arr)
            shapes = ", ".join(f"[{batch}, {n}]" for n in sizes)
            if not isinstance(given, (list, tuple)) or len(given) != len(sizes):
                raise ValueError(f"{name} must be a list of one array per layer: {shapes}")
            out = [np.asarray(x, dtype=np.float32) for x in given]
            if any(x.shape != (batch, n) for x, n in zip(out, sizes, strict=True)):
                got = ", ".join(str(list(x.shape)) for x in out)
                raise ValueError(f"{name} must be {shapes}, got {got}")
            return out

        hs = per_layer("h", h)
        cs = [] if gru else per_layer("c", c)
        for b in range(batch):
            # Per sequence: layer by layer, h then (LSTM) c.
            parts = [x[b] for k in range(len(sizes)) for x in ([hs[k]] if gru else [hs[k], cs[k]])]
            cache.set_state(b, np.concatenate(parts).astype("<f4").tobytes())
        return cache

    def get_state(self, state: _core.Cache) -> Any:
        """LSTM: ``(h, c)``, each ``[layers, batch, hidden]`` (PyTorch's ``(h_n, c_n)``); GRU:
        ``h`` alone (``nn.GRU``'s ``h_n``). Layers of different sizes give a list of one
        ``[batch, H_k]`` array per layer in place of each array."""
        import numpy as np

        sizes = self._sizes()
        parts = 1 if self.config["cell"] == "gru" else 2
        flat = [np.frombuffer(state.get_state(b), dtype="<f4") for b in range(state.batch)]
        # [part][layer] -> [batch, H_k]
        out: list[list[Any]] = [[] for _ in range(parts)]
        at = 0
        for n in sizes:
            for p in range(parts):
                out[p].append(np.stack([f[at : at + n] for f in flat]).reshape(state.batch, n))
                at += n
        arrays = [np.stack(o) if len(set(sizes)) == 1 else o for o in out]
        return arrays[0] if parts == 1 else (arrays[0], arrays[1])


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
    atomic_write_bytes(path, b"".join([struct.pack("<Q", len(raw)), raw, *blobs]))


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
    ``nn.Embedding``, the recurrent layers and ``nn.Linear``; extra keyword arguments go into
    ``config.json`` (``bos_token_id``, ...).

    ``lstm`` is an ``nn.LSTM`` or ``nn.GRU`` (``batch_first=True``, unidirectional, no
    projection), or a sequence of them (a list or ``nn.ModuleList``, applied one after the
    other, all LSTMs or all GRUs) for layers of different sizes: their layers are renumbered
    ``l0, l1, ...`` in order and ``hidden_size`` becomes a list when the sizes differ."""
    modules = list(lstm) if isinstance(lstm, (list, tuple)) or _is_module_list(lstm) else [lstm]
    if not modules:
        raise ValueError("no recurrent layers given")
    modes = {getattr(m, "mode", type(m).__name__) for m in modules}
    if not modes <= {"LSTM", "GRU"}:
        raise ValueError(f"ferrolm runs nn.LSTM and nn.GRU layers, not {sorted(modes)}")
    if len(modes) != 1:
        raise ValueError("ferrolm runs stacks of one kind: all nn.LSTM or all nn.GRU")
    cell = modes.pop().lower()
    out = Path(folder)
    tensors = {"embedding.weight": embedding.weight.detach().cpu().numpy()}
    sizes: list[int] = []
    width = int(embedding.embedding_dim)
    for m in modules:
        if getattr(m, "bidirectional", False) or getattr(m, "proj_size", 0):
            raise ValueError("ferrolm runs unidirectional layers without projections")
        if int(m.input_size) != width:
            raise ValueError(f"a layer of input size {m.input_size} follows one of {width} outputs")
        offset = len(sizes)
        for name, value in m.state_dict().items():
            # weight_ih_l0 -> weight_ih_l{offset + 0}
            stem, _, k = name.rpartition("_l")
            tensors[f"{cell}.{stem}_l{offset + int(k)}"] = value.detach().cpu().numpy()
        sizes += [int(m.hidden_size)] * int(m.num_layers)
        width = int(m.hidden_size)
    tensors["fc.weight"] = fc.weight.detach().cpu().numpy()
    if fc.bias is not None:
        tensors["fc.bias"] = fc.bias.detach().cpu().numpy()
    out.mkdir(parents=True, exist_ok=True)
    _write_safetensors(out / "model.safetensors", tensors)
    cfg = {
        "model_type": "lstm",
        "cell": cell,
        "vocab_size": int(embedding.num_embeddings),
        "embedding_dim": int(embedding.embedding_dim),
        "hidden_size": sizes[0] if len(set(sizes)) == 1 else sizes,
        "num_layers": len(sizes),
        "output_activation": output_activation,
        **config,
    }
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2))  # last: weights first
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def _is_module_list(x: Any) -> bool:
    """An ``nn.ModuleList`` / ``nn.Sequential`` of layers (checked without importing torch)."""
    return type(x).__name__ in ("ModuleList", "Sequential")


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
            raw_config = z.read("config.json")
            weights = z.read("model.weights.h5")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise FormatError(f"{path}: not a Keras 3 .keras file ({e})") from None
    config = parse_json(raw_config, f"{path}: config.json")
    if not isinstance(config, dict):
        raise FormatError(f"{path}: config.json is not a JSON object")
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
        if kind not in ("Embedding", "LSTM", "GRU", "Dense"):
            raise FormatError(
                f"{path}: layer {name!r} ({kind}) is unsupported; ferrolm runs Embedding → LSTM "
                "or GRU → Dense (with Dropout / InputLayer)"
            )
        plan.append((kind, name, cfg))
    kinds = [k for k, _, _ in plan]
    if (
        not kinds
        or kinds[0] != "Embedding"
        or "Dense" not in kinds
        or kinds.count("Dense") != 1
        or any(k not in ("LSTM", "GRU") for k in kinds[1 : kinds.index("Dense")])
        or kinds.index("Dense") < 2
        or any(k != "Activation" for k in kinds[kinds.index("Dense") + 1 :])
    ):
        raise FormatError(
            f"{path}: layers {kinds} are not Embedding → LSTM or GRU (one or more) → Dense"
        )
    rnn_kinds = set(kinds[1 : kinds.index("Dense")])
    if len(rnn_kinds) > 1:
        first_gru = next(n for k, n, _ in plan if k == "GRU")
        raise FormatError(
            f"{path}: layer {first_gru!r}: mixed LSTM and GRU layers are unsupported; ferrolm "
            "runs stacks of one kind"
        )
    cell = rnn_kinds.pop().lower()
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
        sizes: list[int] = []
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
            elif kind in ("LSTM", "GRU"):
                checks: tuple[tuple[str, Any], ...] = (
                    ("activation", "tanh"),
                    ("recurrent_activation", "sigmoid"),
                    ("go_backwards", False),
                    ("return_sequences", True),
                )
                if kind == "GRU":
                    # reset_after=False applies r before W_hn (the original GRU paper's form):
                    # another formula than PyTorch's, which ferrolm's cell computes.
                    checks += (("reset_after", True),)
                for key, want in checks:
                    if cfg.get(key, want) != want:
                        raise FormatError(
                            f"{path}: layer {name!r} ({kind}) with {key}={cfg.get(key)!r} is "
                            f"unsupported; ferrolm runs {key}={want!r}"
                        )
                gates = 4 if kind == "LSTM" else 3
                use_bias = cfg.get("use_bias", True)
                vs = variables(cfg, 3 if use_bias else 2)
                kernel, recurrent = vs[0], vs[1]
                units = int(cfg.get("units", recurrent.shape[0]))
                width = embed if not sizes else sizes[-1]
                if recurrent.shape != (units, gates * units) or kernel.shape != (
                    width,
                    gates * units,
                ):
                    raise FormatError(
                        f"{path}: layer {name!r} ({kind}) weights {kernel.shape} / "
                        f"{recurrent.shape} do not fit units={units} after {width} inputs"
                    )
                k = len(sizes)
                sizes.append(units)
                if kind == "LSTM":
                    # Keras' gates i f c o are PyTorch's i f g o; one bias (b_ih).
                    tensors[f"lstm.weight_ih_l{k}"] = kernel.T
                    tensors[f"lstm.weight_hh_l{k}"] = recurrent.T
                    if use_bias:
                        tensors[f"lstm.bias_ih_l{k}"] = vs[2]
                    continue
                # Keras' GRU gates are z r h, PyTorch's r z n: swap the first two blocks.
                order = np.concatenate(
                    [np.arange(units, 2 * units), np.arange(units), np.arange(2 * units, 3 * units)]
                )
                tensors[f"gru.weight_ih_l{k}"] = kernel.T[order]
                tensors[f"gru.weight_hh_l{k}"] = recurrent.T[order]
                if use_bias:
                    bias = vs[2]
                    if bias.shape != (2, 3 * units):
                        raise FormatError(
                            f"{path}: layer {name!r} (GRU) bias {bias.shape} is not (2, "
                            f"{3 * units}) (input and recurrent biases)"
                        )
                    tensors[f"gru.bias_ih_l{k}"] = bias[0][order]
                    tensors[f"gru.bias_hh_l{k}"] = bias[1][order]
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
    if not sizes or tensors["fc.weight"].shape != (vocab, sizes[-1]):
        raise FormatError(
            f"{path}: the Dense layer does not map the last {cell.upper()} layer's units to the "
            "vocabulary"
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_safetensors(out / "model.safetensors", tensors)
    cfg_out = {
        "model_type": "lstm",
        "vocab_size": int(vocab),
        "embedding_dim": int(embed),
        "cell": cell,
        "hidden_size": sizes[0] if len(set(sizes)) == 1 else sizes,
        "num_layers": len(sizes),
        "output_activation": output_activation,
    }
    (out / "config.json").write_text(json.dumps(cfg_out), encoding="utf-8")
