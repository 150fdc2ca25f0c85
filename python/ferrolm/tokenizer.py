"""Tokenizers: text to token ids and back, in Rust.

``Tokenizer`` is either a byte-level BPE tokenizer, token-for-token identical to tiktoken on the
same ranks, or a WordPiece (BERT) tokenizer identical to Hugging Face ``tokenizers``.

- ``Tokenizer.builtin("gpt2")`` / ``Tokenizer.builtin("bert-base-uncased")``: offline, from the
  data bundled with ferrolm;
- ``Tokenizer.from_file(path)``: a ``tokenizer.json``, ``vocab.txt`` or ``*.tiktoken`` file;
- ``Tokenizer.from_pretrained(dir_or_name)``: a model folder, or a name found in the local
  Hugging Face cache (never the network);
- ``Tokenizer.from_tiktoken(path, pattern, special_tokens)``: any tiktoken rank file.

A tokenizer is immutable: share one across threads, pickle it to worker processes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ferrolm import _core
from ferrolm._data import data_path
from ferrolm._errors import FormatError
from ferrolm._io import atomic_write_text, parse_json
from ferrolm._resolve import resolve

__all__ = ["GPT2_PATTERN", "BatchEncoding", "Tokenizer", "builtin_names"]

#: What ``model_max_length`` is when nothing says (transformers' "no limit" value).
NO_LIMIT = int(1e30)

#: GPT-2's split pattern (the one tiktoken's ``gpt2`` encoding and OpenAI's encoder.py use).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# name -> (bundled file, kind, constructor options, attributes as transformers sets them)
_BUILTINS: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "gpt2": (
        "gpt2.tiktoken",
        "tiktoken",
        {"pattern": GPT2_PATTERN, "special_tokens": {"<|endoftext|>": 50256}},
        {"model_max_length": 1024, "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"},
    ),
    "bert-base-uncased": (
        "bert-base-uncased-vocab.txt",
        "vocab.txt",
        {"lowercase": True},
        {"model_max_length": 512},
    ),
}


class BatchEncoding(dict[str, Any]):
    """What calling a tokenizer returns: a dict (``input_ids``, ``attention_mask``, and
    ``token_type_ids`` for WordPiece) whose keys also read as attributes, as in transformers.
    ``model(**batch)`` passes it on as keyword arguments."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> BatchEncoding:
        """Moves torch tensors to ``device`` (for code written for transformers)."""
        return BatchEncoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()})


def builtin_names() -> list[str]:
    """The names ``Tokenizer.builtin`` accepts."""
    return sorted(_BUILTINS)


class Tokenizer(_core.Tokenizer):
    """A byte-level BPE or WordPiece tokenizer.

    ``encode(text)`` / ``decode(ids)``; for BPE, special tokens written in the text follow
    tiktoken (``allowed_special`` / ``disallowed_special``); for WordPiece they follow Hugging
    Face tokenizers, and ``encode`` adds ``[CLS] ... [SEP]`` unless
    ``add_special_tokens=False``. ``encode_batch`` and ``decode_batch`` run in parallel on
    ferrolm's thread pool.
    """

    _builtin_name: str | None = None
    #: The longest sequence the model takes; truncation's default length.
    model_max_length: int = NO_LIMIT
    #: Which end ``__call__`` pads / truncates: "right" or "left".
    padding_side: str = "right"
    truncation_side: str = "right"

    def __init__(
        self,
        data: bytes,
        kind: str,
        *,
        pattern: str | None = None,
        special_tokens: Mapping[str, int] | None = None,
        name: str = "tokenizer",
        lowercase: bool = True,
        merges: bytes | None = None,
    ) -> None:
        # The native constructor already built the tokenizer; keep what rebuilds it (pickle).
        self._args: tuple[bytes, str, dict[str, Any]] = (
            data,
            kind,
            {
                "pattern": pattern,
                "special_tokens": dict(special_tokens) if special_tokens else None,
                "name": name,
                "lowercase": lowercase,
                "merges": merges,
            },
        )

    # ---------------------------------------------------------------- special-token names

    def _special_named(self, attr: str, default: str | None) -> str | None:
        value = self.__dict__.get(attr, default)
        return value if value is None or self.token_to_id(value) is not None else None

    @property
    def pad_token(self) -> str | None:
        """The padding token ("[PAD]" for BERT; None for GPT-2 until set, as in transformers:
        ``tok.pad_token = tok.eos_token``)."""
        return self._special_named(
            "_pad_token", "[PAD]" if "[PAD]" in self.special_tokens else None
        )

    @pad_token.setter
    def pad_token(self, value: str | None) -> None:
        self._set_token("_pad_token", value)

    @property
    def eos_token(self) -> str | None:
        """The end-of-sequence token ("<|endoftext|>" for GPT-2; "[SEP]" for BERT)."""
        return self._special_named(
            "_eos_token", "[SEP]" if "[SEP]" in self.special_tokens else None
        )

    @eos_token.setter
    def eos_token(self, value: str | None) -> None:
        self._set_token("_eos_token", value)

    @property
    def bos_token(self) -> str | None:
        """The beginning-of-sequence token ("<|endoftext|>" for GPT-2; "[CLS]" for BERT)."""
        return self._special_named(
            "_bos_token", "[CLS]" if "[CLS]" in self.special_tokens else None
        )

    @bos_token.setter
    def bos_token(self, value: str | None) -> None:
        self._set_token("_bos_token", value)

    def _set_token(self, attr: str, value: str | None) -> None:
        if value is not None and self.token_to_id(value) is None:
            raise ValueError(f"{value!r} is not a token of this tokenizer")
        self.__dict__[attr] = value

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self.token_to_id(self.pad_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.token_to_id(self.eos_token)

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.token_to_id(self.bos_token)

    # ---------------------------------------------------------------- transformers-style call

    def __call__(
        self,
        text: str | list[str] | tuple[str, ...],
        text_pair: Any = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        return_token_type_ids: bool | None = None,
    ) -> BatchEncoding:
        """Encodes a text or a batch as transformers' tokenizers do: ``tok(texts,
        padding=True, truncation=True, max_length=128, return_tensors="pt")``.

        - ``padding``: False / "do_not_pad"; True / "longest"; "max_length" (to ``max_length``,
          else ``model_max_length``).
        - ``truncation``: True / "longest_first" / "only_first" cut each sequence (special
          tokens included) to ``max_length``, else ``model_max_length``. A ``max_length`` with
          neither ``padding`` nor ``truncation`` truncates too, as in transformers.
        - ``return_tensors``: None (lists), "np" (numpy int64) or "pt" (torch int64); tensors
          need equal lengths, hence padding.
        Returns ``input_ids``, ``attention_mask`` and, for WordPiece, ``token_type_ids``.
        """
        single = isinstance(text, str)
        texts: list[str] = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a str or a list of str")

        if padding is True or padding == "longest":
            pad_mode: str | None = "longest"
        elif padding == "max_length":
            pad_mode = "max_length"
        elif padding is False or padding == "do_not_pad":
            pad_mode = None
        else:
            raise ValueError(
                f"padding must be True, False, 'longest' or 'max_length', not {padding!r}"
            )
        if truncation is None:
            # transformers: a max_length with neither padding nor truncation truncates.
            truncate = max_length is not None and pad_mode is None
        elif truncation in (True, "longest_first", "only_first", "only_second"):
            truncate = True
        elif truncation in (False, "do_not_truncate"):
            truncate = False
        else:
            raise ValueError(
                "truncation must be True, False, 'longest_first', 'only_first' or "
                f"'only_second', not {truncation!r}"
            )
        strategy = truncation if isinstance(truncation, str) else "longest_first"
        if max_length is not None:
            max_length = int(max_length)
            if not 0 <= max_length < 2**63:
                raise ValueError(f"max_length must be from 0 to 2**63 - 1, got {max_length}")
        limit = max_length if max_length is not None else self.model_max_length
        if (truncate or pad_mode == "max_length") and limit >= NO_LIMIT:
            raise ValueError(
                "no max_length given and this tokenizer has no model_max_length; pass max_length"
            )
        pad_to: int | None = None
        if pad_mode == "longest":
            pad_to = 0
        elif pad_mode == "max_length":
            pad_to = limit
        pad_id = self.pad_token_id
        if pad_to is not None and pad_id is None and len(texts) > 1:
            raise ValueError(
                "Asking to pad but the tokenizer does not have a padding token; set one, "
                "e.g. tok.pad_token = tok.eos_token"
            )
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt', not {return_tensors!r}")
        want_types = (
            return_token_type_ids
            if return_token_type_ids is not None
            else (self.kind == "wordpiece")
        )
        if text_pair is not None:
            pairs: list[str] = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if not all(isinstance(t, str) for t in pairs):
                raise TypeError("text_pair must be a str or a list of str")
            if len(pairs) != len(texts):
                raise ValueError(
                    f"text has {len(texts)} texts and text_pair {len(pairs)}: they must match"
                )
            if strategy == "only_second" and not truncate:
                strategy = "longest_first"
            return self._call_pairs(
                texts,
                pairs,
                single=single and isinstance(text_pair, str),
                add_special_tokens=add_special_tokens,
                truncate_to=limit if truncate else None,
                strategy=strategy,
                pad_to=pad_to,
                pad_id=pad_id or 0,
                return_tensors=return_tensors,
                want_types=want_types,
                want_mask=return_attention_mask is not False,
            )

        result = self._encode_for_call(
            texts,
            add_special_tokens=add_special_tokens,
            truncate_to=limit if truncate else None,
            truncate_left=self.truncation_side == "left",
            pad_to=pad_to,
            pad_id=pad_id or 0,
            pad_left=self.padding_side == "left",
            as_bytes=return_tensors is not None,
        )
        out = BatchEncoding()
        ids: Any
        mask: Any
        types: Any
        want_mask = return_attention_mask is not False
        if return_tensors is None:
            ids, mask = result
            types = [[0] * len(r) for r in ids]
            if single:
                ids, mask, types = ids[0], mask[0], types[0]
            out["input_ids"] = ids
        else:
            import numpy as np

            raw_ids, raw_mask, rows, cols = result
            ids = np.frombuffer(raw_ids, dtype="<i8").reshape(rows, cols).copy()
            mask = np.frombuffer(raw_mask, dtype="<i8").reshape(rows, cols).copy()
            types = np.zeros_like(ids)
            if return_tensors == "pt":
                import torch

                ids, mask, types = (torch.from_numpy(a) for a in (ids, mask, types))
            out["input_ids"] = ids
        if want_types:
            out["token_type_ids"] = types
        if want_mask:
            out["attention_mask"] = mask
        return out

    def _call_pairs(
        self,
        texts: list[str],
        pairs: list[str],
        *,
        single: bool,
        add_special_tokens: bool,
        truncate_to: int | None,
        strategy: str,
        pad_to: int | None,
        pad_id: int,
        return_tensors: str | None,
        want_types: bool,
        want_mask: bool,
    ) -> BatchEncoding:
        """``__call__`` for sentence pairs: both sides encoded in parallel, truncated as
        Hugging Face tokenizers does (``longest_first``: the shorter side whole if it fits in
        half the budget, else half each; ``only_first`` / ``only_second``: from one side),
        joined by the post-processor's pair template (``[CLS] a [SEP] b [SEP]`` with token type
        ids 0 / 1 for BERT), then padded."""

        def bodies(batch: list[str]) -> list[list[int]]:
            rows: list[list[int]] = self._encode_for_call(
                batch,
                add_special_tokens=False,
                truncate_to=None,
                truncate_left=False,
                pad_to=None,
                pad_id=0,
                pad_left=False,
                as_bytes=False,
            )[0]
            return rows

        left = self.truncation_side == "left"
        n_special = self.num_special_tokens_to_add(pair=True) if add_special_tokens else 0
        all_ids: list[list[int]] = []
        all_types: list[list[int]] = []
        for a, b in zip(bodies(texts), bodies(pairs), strict=True):
            if truncate_to is not None:
                excess = len(a) + len(b) + n_special - truncate_to
                if excess > 0:
                    n1, n2 = len(a), len(b)
                    if strategy == "only_first":
                        n1 -= excess
                    elif strategy == "only_second":
                        n2 -= excess
                    else:
                        # tokenizers' LongestFirst: the shorter side is kept whole if it fits
                        # in half the budget, else both get half (the longer the odd one).
                        budget = truncate_to - n_special
                        swap = n1 > n2
                        if swap:
                            n1, n2 = n2, n1
                        n2 = n1 if n1 > budget else min(n2, max(budget - n1, n1))
                        if n1 + n2 > budget:
                            n1 = budget // 2
                            n2 = n1 + budget % 2
                        if swap:
                            n1, n2 = n2, n1
                    # As tokenizers: the side that one-sided truncation cuts must keep a token.
                    short = (strategy == "only_first" and n1 < 1) or (
                        strategy == "only_second" and n2 < 1
                    )
                    if short or n1 < 0 or n2 < 0:
                        raise ValueError(
                            f"cannot truncate with {strategy!r} to max_length={truncate_to}: "
                            "the sequence to truncate is too short"
                        )
                    a = a[len(a) - n1 :] if left else a[:n1]
                    b = b[len(b) - n2 :] if left else b[:n2]
            if add_special_tokens:
                ids, types = self.post_process_pair(a, b)
            else:
                second = 1 if self.kind == "wordpiece" else 0
                ids, types = a + b, [0] * len(a) + [second] * len(b)
            all_ids.append(ids)
            all_types.append(types)
        width = 0
        if pad_to is not None:
            width = max(len(r) for r in all_ids) if pad_to == 0 else pad_to
        # The lists below (ids, token types, mask: 24 bytes of pointers a cell, and an int
        # object for each pad id), checked against the memory left before they are built.
        cells = sum(max(width, len(r)) for r in all_ids)
        _core._check_memory(cells, 56, f"{len(all_ids)} rows padded to {width} tokens")
        masks = []
        for i, row in enumerate(all_ids):
            fill = max(width - len(row), 0)
            mask = [1] * len(row)
            if fill:
                if self.padding_side == "left":
                    all_ids[i] = [pad_id] * fill + row
                    all_types[i] = [0] * fill + all_types[i]
                    mask = [0] * fill + mask
                else:
                    all_ids[i] = row + [pad_id] * fill
                    all_types[i] = all_types[i] + [0] * fill
                    mask = mask + [0] * fill
            masks.append(mask)
        out = BatchEncoding()
        parts = [("input_ids", all_ids)]
        if want_types:
            parts.append(("token_type_ids", all_types))
        if want_mask:
            parts.append(("attention_mask", masks))
        for key, rows in parts:
            if return_tensors is None:
                out[key] = rows[0] if single else rows
                continue
            if len({len(r) for r in rows}) > 1:
                raise ValueError(
                    "Unable to create a tensor: the sequences have different lengths; use "
                    'padding=True (or padding="max_length") and/or truncation=True'
                )
            import numpy as np

            arr: Any = np.array(rows, dtype=np.int64)
            if return_tensors == "pt":
                import torch

                arr = torch.from_numpy(arr)
            out[key] = arr
        return out

    @classmethod
    def builtin(cls, name: str) -> Tokenizer:
        """A tokenizer from the data bundled with ferrolm, offline: ``"gpt2"`` or
        ``"bert-base-uncased"``. Built once per process and shared (tokenizers are immutable).
        """
        return _builtin(cls, name)

    @classmethod
    def from_tiktoken(
        cls,
        path: str | os.PathLike[str],
        pattern: str = GPT2_PATTERN,
        special_tokens: Mapping[str, int] | None = None,
    ) -> Tokenizer:
        """A BPE tokenizer from a tiktoken rank file (lines of ``<base64 token> <rank>``), the
        split pattern that goes with it, and its special tokens (``{text: id}``).

        A pattern ferrolm cannot run in linear time (look-around other than the alternative
        ``\\s+(?!\\S)``, possessive quantifiers outside the known patterns) raises
        ``ferrolm.FormatError`` naming it.
        """
        p = Path(path)
        return cls(
            p.read_bytes(),
            "tiktoken",
            pattern=pattern,
            special_tokens=dict(special_tokens or {}),
            name=p.name,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, lowercase: bool | None = None) -> Tokenizer:
        """A tokenizer from one file: a Hugging Face ``tokenizer.json``, a BERT ``vocab.txt``
        (``lowercase`` defaults to the ``do_lower_case`` of a ``tokenizer_config.json`` beside
        it, else True), a GPT-2 ``vocab.json`` (with the ``merges.txt`` beside it) or a tiktoken
        ``*.tiktoken`` rank file (GPT-2's split pattern).
        """
        p = Path(path)
        if p.suffix == ".tiktoken":
            return cls.from_tiktoken(p)
        data = p.read_bytes()  # FileNotFoundError names the path
        if p.name == "vocab.json":
            merges = p.with_name("merges.txt")
            if not merges.is_file():
                raise FileNotFoundError(
                    2, "a GPT-2 vocab.json needs merges.txt beside it", str(merges)
                )
            return cls(data, "vocab.json", name=p.parent.name or p.name, merges=merges.read_bytes())
        if p.suffix == ".json":
            return cls(data, "tokenizer.json", name=p.name)
        if p.suffix == ".txt":
            if lowercase is None:
                lowercase = _config_lowercase(p.parent)
            return cls(data, "vocab.txt", name=p.name, lowercase=lowercase)
        raise FormatError(
            f"{p}: unsupported tokenizer file; ferrolm reads tokenizer.json, vocab.txt, "
            "vocab.json (+ merges.txt) and *.tiktoken files"
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        gguf_file: str | None = None,
        **_: Any,
    ) -> Tokenizer:
        """The tokenizer of a model, as every ferrolm loader resolves its name
        (``ferrolm._resolve``): a model folder (``tokenizer.json``, else ``vocab.txt``, else
        ``vocab.json`` + ``merges.txt``, with ``tokenizer_config.json``'s settings), a ``.gguf``
        file (the tokenizer in its metadata; ``gguf_file=`` names one inside a folder, as in
        transformers), a tokenizer file, a short model name such as ``"smollm2"``, or a model
        in the local Hugging Face cache. Never uses the network. Other keyword arguments that
        transformers takes (``use_fast``, ``revision``, ...) are accepted and ignored.
        """
        path = resolve(name_or_path, gguf_file)
        if path.is_file():
            with open(path, "rb") as f:
                magic = f.read(4)
            if magic == b"GGUF":
                return cls.from_gguf(path)
            return cls.from_file(path)
        for candidate in ("tokenizer.json", "vocab.txt", "vocab.json"):
            if (path / candidate).is_file():
                tok = cls.from_file(path / candidate)
                _apply_config(tok, path)
                return tok
        ggufs = sorted(f.name for f in path.glob("*.gguf"))
        hint = f"; it has {', '.join(ggufs)}: pass gguf_file=" if ggufs else ""
        raise FileNotFoundError(
            2, f"no tokenizer.json, vocab.txt or vocab.json in the model folder{hint}", str(path)
        )

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """The tokenizer a GGUF file carries (``tokenizer.ggml.*``: byte-level BPE tokens and
        merges, the pre-tokenizer ``tokenizer.ggml.pre`` names, special tokens, BOS, and the
        chat template), identical to the one transformers converts from the same file."""
        tok = cls._from_gguf(path)
        if tok is None:
            raise FormatError(f"{path}: the file carries no tokenizer (no tokenizer.ggml.model)")
        return tok

    @classmethod
    def _from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer | None:
        """``from_gguf``, or None when the file carries no tokenizer."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(2, "no such GGUF file", str(p))
        found = _core.gguf_tokenizer(p)
        if found is None:
            return None
        doc, specials, template, add_bos = found
        tok = cls(doc.encode("utf-8"), "tokenizer.json", name=p.name)
        for role, token in specials:
            if role in ("bos_token", "eos_token", "pad_token"):
                tok.__dict__["_" + role] = token
        tok.chat_template = template
        tok.add_bos_token = add_bos
        return tok

    # ---------------------------------------------------------------- chat

    #: The Jinja chat template (from a GGUF file, ``tokenizer_config.json`` or
    #: ``chat_template.jinja``), or None.
    chat_template: str | None = None
    #: Whether encoding adds BOS (a GGUF file's ``tokenizer.ggml.add_bos_token``).
    add_bos_token: bool = False

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        *,
        tools: Sequence[Any] | None = None,
        documents: Sequence[Any] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = True,
        return_tensors: str | None = None,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Renders a conversation (``[{"role": ..., "content": ...}, ...]``, or a list of them)
        with the model's chat template, as transformers' ``apply_chat_template``: the text with
        ``tokenize=False``, else its token ids (special tokens in the text matched, none added
        around it); ``return_dict=True`` gives ``{"input_ids", "attention_mask"}``. The
        template runs in Rust (minijinja) with transformers' settings; extra keyword arguments
        reach it as variables."""
        source = chat_template or self.chat_template
        if source is None:
            raise ValueError(
                "this tokenizer has no chat template (none in the GGUF file, "
                "tokenizer_config.json or chat_template.jinja); pass chat_template="
            )
        batched = bool(conversation) and not isinstance(conversation[0], Mapping)
        convs: list[Any] = list(conversation) if batched else [conversation]
        template = _chat_template(source)
        texts = []
        for conv in convs:
            messages = [dict(m) for m in conv]
            context = {
                **{k: v for k, v in kwargs.items() if k not in ("padding", "truncation")},
                "messages": messages,
                "add_generation_prompt": add_generation_prompt,
                "bos_token": self.bos_token or "",
                "eos_token": self.eos_token or "",
                "pad_token": self.pad_token or "",
            }
            if tools is not None:
                context["tools"] = list(tools)
            if documents is not None:
                context["documents"] = list(documents)
            _check_nesting(context)
            text = template.render(json.dumps(context, ensure_ascii=False))
            if continue_final_message:
                last = messages[-1].get("content") if messages else None
                if not isinstance(last, str) or last.strip() not in text:
                    raise ValueError("continue_final_message: the final message is not in the text")
                text = text[: text.rindex(last.strip()) + len(last.strip())]
            texts.append(text)
        if not tokenize:
            return texts if batched else texts[0]
        ids = [self.encode(t, add_special_tokens=False) for t in texts]
        if return_dict:
            enc = BatchEncoding(input_ids=ids, attention_mask=[[1] * len(r) for r in ids])
            if return_tensors is not None:
                if len({len(r) for r in ids}) > 1:
                    raise ValueError("return_tensors needs conversations of equal token length")
                enc = BatchEncoding(
                    input_ids=_as_tensors(ids, return_tensors),
                    attention_mask=_as_tensors(enc["attention_mask"], return_tensors),
                )
            elif not batched:
                enc = BatchEncoding(input_ids=ids[0], attention_mask=enc["attention_mask"][0])
            return enc
        if return_tensors is not None:
            return _as_tensors(ids, return_tensors)
        return ids if batched else ids[0]

    @property
    def special_tokens_set(self) -> set[str]:
        """The special tokens' texts (tiktoken's ``special_tokens_set``)."""
        return set(self.special_tokens)

    @property
    def n_vocab(self) -> int:
        """tiktoken's name for ``vocab_size``."""
        return int(self.vocab_size)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes this tokenizer as a Hugging Face ``tokenizer.json`` (trained tokenizers, and
        those read from a ``tokenizer.json``) that ``tokenizers`` and ``transformers`` load.
        ``path`` is the file (its folders are created), or an existing folder to write
        ``tokenizer.json`` into. The file is written atomically: a temporary file beside it,
        flushed to the disk, then renamed over it. Returns the path written.

        Tokenizers read from other formats (tiktoken ranks, ``vocab.txt``, ``vocab.json``)
        raise ``ValueError``: their own files are already what ``from_file`` reads.
        """
        target = Path(path)
        if target.is_dir():
            target = target / "tokenizer.json"
        return atomic_write_text(target, self.to_json())

    def to_json(self) -> str:
        """The ``tokenizer.json`` text ``save`` writes (``tokenizers.Tokenizer.from_str``
        reads it); ``ValueError`` for tokenizers read from other formats."""
        data, kind, _ = self._args
        if kind != "tokenizer.json":
            raise ValueError(
                f"this tokenizer was read from a {kind} file; only tokenizers trained by "
                "ferrolm or read from a tokenizer.json can be written as tokenizer.json"
            )
        return data.decode("utf-8")

    def __reduce__(self) -> tuple[Any, ...]:
        if self._builtin_name is not None:
            return (_builtin, (type(self), self._builtin_name))
        data, kind, opts = self._args
        return (_rebuild, (type(self), data, kind, opts))

    def __repr__(self) -> str:
        return f"<ferrolm.Tokenizer {self.name!r} {self.kind} vocab_size={self.vocab_size}>"


def _as_tensor(ids: list[int], kind: str) -> Any:
    """``[ids]`` as a ``[1, n]`` int64 tensor: ``"pt"`` (torch) or ``"np"`` (numpy)."""
    return _as_tensors([ids], kind)


def _as_tensors(rows: list[list[int]], kind: str) -> Any:
    """Equal-length rows as a ``[n, len]`` int64 tensor: ``"pt"`` or ``"np"``."""
    if kind == "pt":
        import torch

        return torch.tensor(rows, dtype=torch.int64)
    if kind == "np":
        import numpy as np

        return np.array(rows, dtype=np.int64)
    raise ValueError(f"return_tensors must be None, 'np' or 'pt', not {kind!r}")


_templates: dict[str, _core.ChatTemplate] = {}
_templates_lock = threading.Lock()


def _chat_template(source: str) -> _core.ChatTemplate:
    """The compiled template (cached by source)."""
    with _templates_lock:
        t = _templates.get(source)
        if t is None:
            if len(_templates) >= 16:
                _templates.clear()
            t = _templates[source] = _core.ChatTemplate(source)
        return t


def _rebuild(cls: type[Tokenizer], data: bytes, kind: str, opts: dict[str, Any]) -> Tokenizer:
    return cls(data, kind, **opts)


#: How deeply lists and dicts may nest in a chat template's context (the messages, tools and
#: documents inside it): the template engine's JSON reader stops at 128 levels, and Python's
#: own JSON writer at about 1000 (``RecursionError``); no real conversation comes near.
MAX_CHAT_NESTING = 100
#: How many values lists and dicts may hold in all, counted as JSON writes them (a list shared
#: twice counts twice): about a second of walking, far past any real conversation.
MAX_CHAT_ITEMS = 1 << 22


def _check_nesting(context: Any) -> None:
    """A ``ValueError`` when lists, tuples and dicts nest in `context` deeper than
    ``MAX_CHAT_NESTING`` (a cycle does) or hold more than ``MAX_CHAT_ITEMS`` values in all (a
    tree of shared lists that doubles at each level does); walks without recursion."""
    stack: list[tuple[Any, int]] = [(context, 0)]
    items = 0
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth >= MAX_CHAT_NESTING:
            raise ValueError(
                f"chat messages nest lists and dicts more than {MAX_CHAT_NESTING} levels deep"
            )
        items += len(children)
        if items > MAX_CHAT_ITEMS:
            raise ValueError(
                f"chat messages hold more than {MAX_CHAT_ITEMS} values in lists and dicts"
            )
        stack.extend((child, depth + 1) for child in children)


def _apply_config(tok: Tokenizer, folder: Path) -> None:
    """Reads ``model_max_length`` and the special-token names from tokenizer_config.json and
    special_tokens_map.json, as transformers does."""
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            loaded = parse_json(path.read_bytes(), path)
            if isinstance(loaded, dict):
                config.update(loaded)
    limit = config.get("model_max_length")
    if isinstance(limit, int) and 0 < limit < NO_LIMIT:
        tok.model_max_length = limit
    for key in ("pad_token", "eos_token", "bos_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and tok.token_to_id(value) is not None:
            tok.__dict__["_" + key] = value
    for key in ("padding_side", "truncation_side"):
        if config.get(key) in ("left", "right"):
            setattr(tok, key, config[key])
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    if isinstance(template, str):
        tok.chat_template = template


def _config_lowercase(folder: Path) -> bool:
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            raw = cfg.read_bytes()
        except OSError as e:
            raise FormatError(f"{cfg}: {e}") from None
        loaded = parse_json(raw, cfg)
        return bool(loaded.get("do_lower_case", True) if isinstance(loaded, dict) else True)
    return True


_builtin_cache: dict[tuple[type[Tokenizer], str], Tokenizer] = {}
_builtin_lock = threading.Lock()


def _builtin(cls: type[Tokenizer], name: str) -> Tokenizer:
    try:
        filename, kind, opts, attrs = _BUILTINS[name]
    except KeyError:
        raise ValueError(
            f"no built-in tokenizer named {name!r}; available: {', '.join(builtin_names())}"
        ) from None
    with _builtin_lock:
        tok = _builtin_cache.get((cls, name))
        if tok is None:
            tok = cls(data_path(filename).read_bytes(), kind, name=name, **opts)
            tok._builtin_name = name
            tok.model_max_length = attrs["model_max_length"]
            for key in ("eos_token", "bos_token"):
                if key in attrs:
                    tok.__dict__["_" + key] = attrs[key]
            _builtin_cache[(cls, name)] = tok
    return tok
