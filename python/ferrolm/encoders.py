"""BERT encoders: ``last_hidden_state`` as transformers' ``BertModel`` gives it, and sentence
embeddings as sentence-transformers' ``encode`` gives them (the folder's ``1_Pooling`` mean or
CLS pooling, ``Normalize`` when ``modules.json`` lists it), run in Rust.

``ferrolm.AutoModel.from_pretrained(path)`` / ``ferrolm.BertModel.from_pretrained(path)``; a
sentence-transformers folder (all-MiniLM-L6-v2 and the like) loads as is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferrolm import _core
from ferrolm._io import parse_json, register_source
from ferrolm._quant import load_core, save_folder
from ferrolm._resolve import resolve_dir
from ferrolm.tokenizer import Tokenizer

__all__ = [
    "AutoModel",
    "AutoModelForSequenceClassification",
    "BaseModelOutput",
    "BertForSequenceClassification",
    "BertModel",
]


class BaseModelOutput(dict[str, Any]):
    """``last_hidden_state`` ``[batch, seq, hidden]`` and ``pooler_output`` ``[batch,
    hidden]`` (None without a pooler); keys also read as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, ``{}`` where there is none; a malformed one (not JSON, nested
    too deeply) is a ``FormatError`` naming it."""
    try:
        raw = path.read_bytes()
    except OSError:
        return {}
    loaded = parse_json(raw, path)
    return loaded if isinstance(loaded, dict) else {}


class BertModel:
    """A BERT encoder run by ferrolm's Rust core (float32)."""

    def __init__(self, core: _core.Bert, folder: Path, tokenizer: Tokenizer | None) -> None:
        self._core = core
        self.name_or_path = str(folder)
        # The folder by absolute path and identity: a later chdir changes neither (save).
        self._source_dir = folder.resolve()
        self._source_id = register_source(self, folder)
        self.config: dict[str, Any] = {**_json(folder / "config.json"), **core.config}
        self.tokenizer = tokenizer
        pooling = _json(folder / "1_Pooling" / "config.json")
        self.pooling = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        modules_file = folder / "modules.json"
        modules = (
            parse_json(modules_file.read_bytes(), modules_file) if modules_file.is_file() else []
        )
        self.normalize = isinstance(modules, list) and any(
            isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize") for m in modules
        )
        st = _json(folder / "sentence_bert_config.json")
        self.max_seq_length = int(
            st.get("max_seq_length") or self.config.get("max_position_embeddings", 512)
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        quantize: str | None = None,
        show_progress: bool | None = None,
        **_: Any,
    ) -> Any:
        """Loads a BERT folder (``config.json`` + ``model.safetensors``), or a name found in
        the local Hugging Face cache (never the network).

        ``quantize="int8"`` (= ``"q8_0"``), ``"int4"`` (= ``"q4_0"``) or ``"q4_1"`` quantizes
        the encoder's matrices as they load (the embeddings and the classifier stay f32);
        ``save_pretrained`` writes a folder that loads back quantized without re-quantizing.
        Each matmul's input is rounded per block of 32 to int8, or to 7 bits on CPUs with AVX2
        and no VNNI, whose integer kernel runs faster on them (all-MiniLM-L6-v2: cosine to
        f32 0.998 with 8-bit activations, 0.996 with 7-bit, at the minimum over varied texts).
        """
        folder = resolve_dir(name_or_path)
        core = load_core(_core.Bert.load, folder, quantize, show_progress)
        tok = None
        if any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
            tok = Tokenizer.from_pretrained(folder)
        return cls(core, folder, tok)

    def eval(self) -> BertModel:
        return self

    @property
    def quantization(self) -> str | None:
        """The encoder matrices' format: ``"q8_0"``, ``"q4_0"``, ``"q4_1"``, or None (f32)."""
        return self._core.quantization

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<ferrolm.{type(self).__name__} {self.name_or_path!r} "
            f"model_type={c.get('model_type', 'bert')!r} hidden_size={c.get('hidden_size')} "
            f"num_hidden_layers={c.get('num_hidden_layers')} pooling={self.pooling!r} "
            f"normalize={self.normalize} max_seq_length={self.max_seq_length} "
            f"quantization={self.quantization!r}>"
        )

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Writes the model, its config, tokenizer and sentence-transformers pooling files to a
        folder that ``from_pretrained`` loads back as it is (quantized weights included)."""
        save_folder(
            self._core,
            self._source_dir,
            save_directory,
            source_id=self._source_id,
            copy_f32_weights=True,
        )

    def __call__(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        **_: Any,
    ) -> BaseModelOutput:
        """The encoder's outputs for a padded batch (numpy out for numpy or list input, torch
        for torch input), as transformers' ``BertModel`` returns them."""
        import numpy as np

        from ferrolm.models import _rows_of

        rows, kind = _rows_of(input_ids)
        if not rows or not rows[0]:
            raise ValueError("input_ids is empty")
        batch, seq = len(rows), len(rows[0])
        if any(len(r) != seq for r in rows):
            raise ValueError("input_ids rows must have equal lengths (pad them)")

        def flat(value: Any, default: int) -> list[int]:
            if value is None:
                return [default] * (batch * seq)
            vrows, _kind = _rows_of(value)
            if len(vrows) != batch or any(len(r) != seq for r in vrows):
                raise ValueError("attention_mask / token_type_ids must have the shape of input_ids")
            return [int(v) for r in vrows for v in r]

        mask = [1 if v else 0 for v in flat(attention_mask, 1)]
        types = flat(token_type_ids, 0)
        raw, pooled, logits_raw = self._core.forward(
            [x for r in rows for x in r], types, mask, batch, seq
        )
        hidden: Any = np.frombuffer(raw, dtype="<f4").reshape(batch, seq, -1)
        pool: Any = (
            None if pooled is None else np.frombuffer(pooled, dtype="<f4").reshape(batch, -1)
        )
        logits: Any = None
        if logits_raw is not None:
            logits = np.frombuffer(logits_raw, dtype="<f4").reshape(batch, -1)
        if kind == "pt":
            import torch

            hidden = torch.from_numpy(hidden)
            pool = None if pool is None else torch.from_numpy(pool)
            logits = None if logits is None else torch.from_numpy(logits)
        out = BaseModelOutput(last_hidden_state=hidden, pooler_output=pool)
        if logits is not None:
            out["logits"] = logits
        return out

    forward = __call__

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
    ) -> Any:
        """Sentence embeddings as sentence-transformers' ``encode``: texts sorted by length and
        run in micro-batches of ``batch_size`` (unpadded: a batch's texts end to end, each
        attending only within itself, so a text's vector does not depend on its batch),
        truncated to ``max_seq_length``, pooled as the folder says, normalized when it has a
        Normalize module or ``normalize_embeddings``. Returns ``[n, hidden]`` float32 (one
        vector for a single str)."""
        import numpy as np

        from ferrolm._progress import Progress

        tok = self.tokenizer
        if tok is None:
            raise ValueError(f"{self.name_or_path} has no tokenizer files")
        single = isinstance(sentences, str)
        texts = [sentences] if isinstance(sentences, str) else list(sentences)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("sentences must be a str or a list of str")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        hidden_size = int(self.config["hidden_size"])
        normalize = bool(self.normalize or normalize_embeddings)
        truncate_left = tok.truncation_side == "left"

        def ids_of(batch: list[str]) -> Any:
            # Unpadded ids, as tok(texts, truncation=True, max_length=...) gives them (one
            # sequence each: token types 0); the core runs them end to end, pools and
            # normalizes.
            ids, _mask = tok._encode_for_call(
                batch,
                add_special_tokens=True,
                truncate_to=self.max_seq_length,
                truncate_left=truncate_left,
                pad_to=None,
                pad_id=0,
                pad_left=False,
                as_bytes=False,
            )
            return ids

        if 0 < len(texts) <= batch_size and not show_progress_bar:
            # One micro-batch (a query, a few sentences): no sorting, no scatter, the core's
            # buffer is the result (the latency path).
            raw = self._core.embed(ids_of(texts), None, self.pooling, normalize)
            out = np.frombuffer(raw, dtype="<f4").reshape(len(texts), hidden_size)
        else:
            out = np.zeros((len(texts), hidden_size), dtype=np.float32)
            order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
            with Progress(len(texts), "encoding", unit="text", enabled=show_progress_bar) as bar:
                for start in range(0, len(order), batch_size):
                    idx = order[start : start + batch_size]
                    batch = [texts[i] for i in idx]
                    raw = self._core.embed(ids_of(batch), None, self.pooling, normalize)
                    out[idx] = np.frombuffer(raw, dtype="<f4").reshape(len(idx), hidden_size)
                    bar.update(len(idx))
        if convert_to_tensor:
            import torch

            result: Any = torch.from_numpy(out)
        elif convert_to_numpy:
            result = out
        else:
            result = list(out)
        return result[0] if single else result


class BertForSequenceClassification(BertModel):
    """BERT with its classification head: ``model(**batch).logits`` ``[batch, num_labels]``;
    ``config["id2label"]`` names the classes (transformers' BertForSequenceClassification)."""

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], **kwargs: Any
    ) -> BertForSequenceClassification:
        model: BertForSequenceClassification = super().from_pretrained(name_or_path, **kwargs)
        if not model._core.has_classifier:
            from ferrolm._errors import FormatError

            raise FormatError(
                f"{model.name_or_path}: no classifier.weight in the checkpoint (a plain BertModel; "
                "load it with ferrolm.AutoModel)"
            )
        return model


class AutoModelForSequenceClassification:
    """``from_pretrained(path)``: a sequence classifier (BERT)."""

    @staticmethod
    def from_pretrained(
        name_or_path: str | os.PathLike[str], **kwargs: Any
    ) -> BertForSequenceClassification:
        return BertForSequenceClassification.from_pretrained(name_or_path, **kwargs)


class AutoModel:
    """``from_pretrained(path)``: the encoder for ``config.json``'s ``model_type`` (BERT)."""

    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike[str], **kwargs: Any) -> BertModel:
        model: BertModel = BertModel.from_pretrained(name_or_path, **kwargs)
        return model
