"""Causal language models with the API ``transformers`` users already type.

``ferrolm.AutoModelForCausalLM.from_pretrained(path)`` (or ``ferrolm.GPT2LMHeadModel``) loads a
Hugging Face model folder (``config.json``, ``*.safetensors``, ``generation_config.json``, the
tokenizer files) from a local path or the local Hugging Face cache, never the network. The
forward pass, the KV cache, sampling and the generation loop run in Rust with the GIL released.

- ``model(input_ids, attention_mask=None, past_key_values=None)`` -> ``.logits`` (numpy for
  numpy or list input, torch for torch input) and ``.past_key_values`` (a ``ferrolm.Cache``,
  updated in place by the next call it is passed to);
- ``model.generate(input_ids, max_length=..., max_new_tokens=..., num_return_sequences=...,
  do_sample=..., temperature=..., top_k=..., top_p=..., ...)`` with ``transformers``' meanings
  and defaults, plus ``seed=`` (reproducible across runs and thread counts) and ``stop=``;
- ``model.stream(prompt)`` yields text as it completes; ``model.generate_text(prompt)``.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ferrolm import _core
from ferrolm._errors import FormatError
from ferrolm._io import parse_json, register_source
from ferrolm._quant import load_core, save_folder
from ferrolm._resolve import KNOWN_MODELS, resolve
from ferrolm.tokenizer import Tokenizer

__all__ = [
    "KNOWN_MODELS",
    "AutoModelForCausalLM",
    "AutoTokenizer",
    "CausalLMOutput",
    "GPT2LMHeadModel",
    "GPT2Tokenizer",
    "LlamaForCausalLM",
    "PreTrainedCausalLM",
    "resolve_model_path",
]

Cache = _core.Cache


class CausalLMOutput(dict[str, Any]):
    """What a forward call returns: ``logits`` ``[batch, seq, vocab]`` and ``past_key_values``;
    keys also read as attributes, as in transformers."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _rows_of(input_ids: Any, vocab: int | None = None) -> tuple[list[list[int]], str]:
    """Token ids as lists of rows, and the kind they came as: "pt", "np" or "list". With
    `vocab`, an id outside ``range(vocab)`` (negative included) is an ``IndexError`` naming
    it, as the Rust core raises for one past the vocabulary."""
    kind = "list"
    mod = type(input_ids).__module__
    if mod.startswith("torch"):
        kind = "pt"
        input_ids = input_ids.tolist()
    elif mod.startswith("numpy"):
        kind = "np"
        input_ids = input_ids.tolist()
    if isinstance(input_ids, (str, bytes)):
        raise TypeError("input_ids must be token ids; encode the text with the tokenizer first")
    rows = list(input_ids)
    if rows and not isinstance(rows[0], (list, tuple)):
        rows = [rows]
    out = []
    for r in rows:
        row = [int(x) for x in r]
        if vocab is not None:
            for x in row:
                if not 0 <= x < vocab:
                    raise IndexError(f"token id {x} is outside the vocabulary of {vocab}")
        out.append(row)
    return out, kind


#: The largest count or length ferrolm takes (the Rust core's sizes are 64-bit).
_MAX_COUNT = 2**63 - 1


def _count(name: str, value: Any, least: int = 0) -> int:
    """`value` as an int from `least` to 2^63 - 1, else a ``ValueError`` naming `name`."""
    n = int(value)
    if n < least:
        raise ValueError(f"{name} must be >= {least}, got {n}")
    if n > _MAX_COUNT:
        raise ValueError(f"{name}={n} is too large (at most 2**63 - 1)")
    return n


def _token_ids(name: str, ids: list[int], vocab: int) -> list[int]:
    """`ids` (an argument such as ``eos_token_id``), each checked to be in the vocabulary."""
    for i in ids:
        if not 0 <= i < vocab:
            raise IndexError(f"{name}: token id {i} is outside the vocabulary of {vocab}")
    return ids


def _as_kind(rows: list[list[int]] | Any, kind: str, dtype: str = "int64") -> Any:
    if kind == "pt":
        import torch

        return torch.tensor(rows, dtype=getattr(torch, dtype))
    import numpy as np

    arr = np.asarray(rows, dtype=dtype)
    return arr if kind == "np" else arr.tolist()


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, ``{}`` where the file does not exist; a file that is not
    valid JSON, or not an object, is a ``FormatError`` naming it and what is wrong."""
    if not path.is_file():
        return {}
    loaded = parse_json(path.read_bytes(), path)
    if not isinstance(loaded, dict):
        raise FormatError(f"{path}: a JSON object expected, not {type(loaded).__name__}")
    return loaded


def _or(value: Any, default: Any) -> Any:
    """``value`` unless it is None (``0`` stays ``0``, unlike ``value or default``)."""
    return default if value is None else value


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _logits_hook(processors: Any, kind: str) -> Any:
    """The Rust generation loop's per-step hook running the user's logits processors."""
    import numpy as np

    procs = list(processors) if isinstance(processors, (list, tuple)) else [processors]

    def hook(ids_raw: bytes, rows: int, cols: int, scores_raw: bytearray) -> bytes:
        ids: Any = np.frombuffer(ids_raw, dtype="<u4").reshape(rows, cols).astype(np.int64)
        scores: Any = np.frombuffer(scores_raw, dtype="<f4").reshape(rows, -1)
        if kind == "pt":
            import torch

            ids, scores = torch.from_numpy(ids), torch.from_numpy(scores)
        for proc in procs:
            scores = proc(ids, scores)
        if kind == "pt":
            scores = scores.detach().cpu().numpy()
        return np.ascontiguousarray(scores, dtype="<f4").tobytes()

    return hook


class PreTrainedCausalLM:
    """What every causal language model ferrolm runs shares: the forward call, ``generate``,
    ``stream``, ``generate_text`` and ``chat``, all run by the Rust core."""

    def __init__(
        self,
        core: _core.CausalLM,
        source: Path,
        tokenizer: Tokenizer | None,
        generation_config: dict[str, Any] | None = None,
    ) -> None:
        self._core = core
        self.name_or_path = str(source)
        folder = source if source.is_dir() else source.parent
        # The folder by absolute path and identity: a later chdir changes neither (save).
        self._source_dir = folder.resolve()
        self._source_id = register_source(self, folder)
        raw = _read_json(folder / "config.json") if source.is_dir() else {}
        self.config: dict[str, Any] = {**raw, **core.config}
        self.generation_config: dict[str, Any] = (
            generation_config
            if generation_config is not None
            else _read_json(folder / "generation_config.json")
        )
        self.tokenizer = tokenizer

    @property
    def _ctx_name(self) -> str:
        """The config field that limits a sequence's length (named in errors)."""
        return str(self._core.ctx_key)

    @property
    def _vocab_size(self) -> int:
        return int(self._core.config["vocab_size"])

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def quantization(self) -> str | None:
        """The weight matrices' format: ``"q8_0"``, ``"q4_0"``, ``"q4_1"``, or None (f32)."""
        return self._core.quantization

    @property
    def kv_cache_dtype(self) -> str:
        """The KV cache's element type: ``"float32"`` or ``"float16"``."""
        return self._core.kv_cache_dtype

    def eval(self) -> Any:
        """No-op (ferrolm has no training mode); for code written for transformers."""
        return self

    def to(self, device: Any) -> Any:
        if str(device) != "cpu":
            raise ValueError(f"ferrolm runs on the CPU; cannot move the model to {device!r}")
        return self

    def num_parameters(self) -> int:
        return int(self._core.weight_bytes // 4)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<ferrolm.{type(self).__name__} {self.name_or_path!r} "
            f"model_type={c.get('model_type')!r} vocab_size={c['vocab_size']} "
            f"n_ctx={c['n_ctx']} quantization={self.quantization!r}>"
        )

    # ------------------------------------------------------------------ forward

    def __call__(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        past_key_values: _core.Cache | None = None,
        **_: Any,
    ) -> CausalLMOutput:
        """Logits of every position, ``[batch, seq, vocab]`` (float32), and the KV cache.

        With ``past_key_values`` (a cache from an earlier call), ``input_ids`` are the new
        tokens only and the cache is updated in place. ``attention_mask`` (``[batch, seq]`` for
        the new tokens, or ``[batch, past + seq]`` as transformers takes it) marks padding
        with 0; positions count real tokens only, so a left-padded row gets the logits it gets
        alone.
        """
        rows, kind = _rows_of(input_ids, self._vocab_size)
        batch = len(rows)
        if batch == 0 or not rows[0]:
            raise ValueError("input_ids is empty")
        t = len(rows[0])
        if any(len(r) != t for r in rows):
            raise ValueError("input_ids rows must have equal lengths (pad them)")
        if attention_mask is None:
            mask = [1] * (batch * t)
        else:
            mrows, _kind = _rows_of(attention_mask)
            if len(mrows) != batch or any(len(r) < t for r in mrows):
                raise ValueError(
                    f"attention_mask must be [batch, seq] with at least {t} columns per row"
                )
            mask = [1 if v else 0 for r in mrows for v in r[-t:]]
        if past_key_values is not None and not isinstance(past_key_values, _core.Cache):
            raise TypeError(
                "past_key_values must be the ferrolm.Cache of an earlier call's output "
                f"(.past_key_values), not {type(past_key_values).__name__}"
            )
        cache = past_key_values if past_key_values is not None else self._core.new_cache(batch)
        if cache.batch != batch:
            raise ValueError(
                f"past_key_values holds {cache.batch} sequences; input_ids has {batch}"
            )
        flat = [x for r in rows for x in r]
        raw = self._core.forward(cache, flat, mask, t)
        import numpy as np

        logits: Any = np.frombuffer(raw, dtype="<f4").reshape(batch, t, -1)
        if kind == "pt":
            import torch

            logits = torch.from_numpy(logits.copy())
        return CausalLMOutput(logits=logits, past_key_values=cache)

    forward = __call__

    # ------------------------------------------------------------------ generation

    def _gen_args(self, prompt_len: int, kw: dict[str, Any]) -> dict[str, Any]:
        """Resolves generate's arguments with transformers' meanings and defaults, those of
        generation_config.json first."""
        gc = self.generation_config

        def pick(name: str, default: Any) -> Any:
            v = kw.pop(name, None)
            if v is None:
                v = gc.get(name)
            return default if v is None else v

        max_new = kw.pop("max_new_tokens", None)
        max_length = kw.pop("max_length", None)
        if max_new is None:
            if max_length is None:
                max_new = gc.get("max_new_tokens")
                if max_new is None:
                    max_length = gc.get("max_length", 20)
            if max_new is None:
                max_length = _count("max_length", max_length)
                max_new = max_length - prompt_len
                if max_new <= 0:
                    warnings.warn(
                        f"the prompt has {prompt_len} tokens, max_length is {max_length}: "
                        "nothing to generate; pass max_new_tokens",
                        stacklevel=3,
                    )
                    max_new = 0
        max_new = _count("max_new_tokens", max_new)
        min_new = _count("min_new_tokens", _or(kw.pop("min_new_tokens", None), 0))
        min_length = kw.pop("min_length", None)
        if min_length:
            min_new = max(min_new, _count("min_length", min_length) - prompt_len)
        vocab = self._vocab_size
        eos = _token_ids(
            "eos_token_id", _ids(pick("eos_token_id", self.config.get("eos_token_id"))), vocab
        )
        pad = kw.pop("pad_token_id", None)
        if pad is None:
            pad = gc.get("pad_token_id")
        if pad is None:
            pad = eos[0] if eos else 0
        pad = _token_ids("pad_token_id", [int(pad)], vocab)[0]
        seed = kw.pop("seed", None)
        if seed is None:
            seed = secrets.randbits(64)
        stop = kw.pop("stop", None) or []
        if isinstance(stop, str):
            stop = [stop]
        # As transformers: a top_k past the vocabulary keeps every token.
        top_k = _count("top_k", min(int(pick("top_k", 50) or 0), vocab))
        args: dict[str, Any] = dict(
            max_new_tokens=max_new,
            # Past max_new_tokens, min_new_tokens means the same as max_new_tokens.
            min_new_tokens=min(min_new, max_new),
            num_return_sequences=_count(
                "num_return_sequences", _or(kw.pop("num_return_sequences", None), 1), least=1
            ),
            do_sample=bool(pick("do_sample", False)),
            temperature=float(pick("temperature", 1.0)),
            top_k=top_k,
            top_p=float(pick("top_p", 1.0)),
            min_p=float(pick("min_p", 0.0)),
            repetition_penalty=float(pick("repetition_penalty", 1.0)),
            no_repeat_ngram_size=_count("no_repeat_ngram_size", pick("no_repeat_ngram_size", 0)),
            eos=eos,
            pad=pad,
            seed=int(seed) & (2**64 - 1),
            stop=list(stop),
        )
        for key in ("use_cache", "return_dict_in_generate", "output_scores", "streamer"):
            kw.pop(key, None)
        if kw:
            raise TypeError(f"generate() got unexpected arguments: {', '.join(sorted(kw))}")
        n_ctx = int(self.config["n_ctx"])
        what = self._ctx_name
        if prompt_len > n_ctx:
            raise ValueError(
                f"the prompt has {prompt_len} tokens; the model takes at most {what} = {n_ctx}"
            )
        room = n_ctx + 1 - prompt_len
        if args["max_new_tokens"] > room:
            warnings.warn(
                f"{args['max_new_tokens']} new tokens do not fit after a {prompt_len}-token "
                f"prompt in {what} = {n_ctx}: generating {max(room, 0)}",
                stacklevel=3,
            )
            args["max_new_tokens"] = max(room, 0)
        if args["stop"] and self.tokenizer is None:
            raise ValueError("stop= needs the model folder's tokenizer")
        return args

    def _prompts(self, input_ids: Any, attention_mask: Any) -> tuple[list[list[int]], str]:
        """The prompts as lists of ids. ``input_ids=None`` starts one sequence from the BOS
        token (as transformers' ``generate()``); an empty batch, or a row with no token (none
        that ``attention_mask`` marks real), is a ``ValueError``."""
        rows: list[list[int]]
        if input_ids is None:
            bos = self.config.get("bos_token_id")
            if bos is None:
                raise ValueError("no input_ids given and the config has no bos_token_id")
            return [[int(bos)]], "list"
        rows, kind = _rows_of(input_ids, self._vocab_size)
        if not rows:
            raise ValueError("input_ids is empty: no prompt given (pass None to start from BOS)")
        if attention_mask is not None:
            mrows, _ = _rows_of(attention_mask)
            if len(mrows) != len(rows) or any(
                len(m) != len(r) for m, r in zip(mrows, rows, strict=True)
            ):
                raise ValueError("attention_mask must have the shape of input_ids")
            rows = [
                [t for t, m in zip(r, mr, strict=True) if m]
                for r, mr in zip(rows, mrows, strict=True)
            ]
        for i, r in enumerate(rows):
            if not r:
                raise ValueError(
                    f"prompt {i} is empty (no token, or none its attention_mask marks): give "
                    "every prompt at least one token, e.g. the BOS token"
                )
        return rows, kind

    def generate(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        """Generates continuations, as ``transformers``' ``generate``: returns
        ``[batch * num_return_sequences, prompt + new]`` ids (the prompt left-padded to the
        longest, ended sequences filled with the pad token), as a torch tensor for torch input,
        a numpy array for numpy input, else lists.

        Arguments (transformers' meanings and defaults, overridden by generation_config.json):
        ``max_length`` (20, prompt included), ``max_new_tokens``, ``min_length``,
        ``min_new_tokens``, ``num_return_sequences``, ``do_sample`` (False), ``temperature``
        (1.0), ``top_k`` (50), ``top_p`` (1.0), ``min_p``, ``repetition_penalty`` (1.0),
        ``no_repeat_ngram_size``, ``eos_token_id``, ``pad_token_id``, ``logits_processor`` (a
        callable or list of callables ``(input_ids, scores) -> scores``, as transformers'
        LogitsProcessor: torch tensors for torch input, else numpy; run before ferrolm's own
        processing on every step); and ferrolm's ``seed`` (reproducible sampling; random when
        None) and ``stop`` (strings that end a sequence).
        Runs in Rust with the GIL released (no Python runs per token unless a
        logits_processor is given); Ctrl-C raises KeyboardInterrupt within one step.
        """
        prompts, kind = self._prompts(input_ids, attention_mask)
        kwargs = dict(kwargs)
        processors = kwargs.pop("logits_processor", None)
        args = self._gen_args(max(len(p) for p in prompts), kwargs)
        hook = _logits_hook(processors, kind) if processors else None
        raw, rows, cols = self._core.generate(
            prompts, tokenizer=self.tokenizer, logits_hook=hook, **args
        )
        import numpy as np

        out = np.frombuffer(raw, dtype="<u4").reshape(rows, cols).astype(np.int64)
        return _as_kind(out, kind)

    def stream(
        self,
        prompt: str | Any,
        *,
        skip_special_tokens: bool = True,
        stats: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> Iterator[str]:
        """Yields the generated text piece by piece as each character completes (one
        sequence). ``prompt`` is a text (encoded with the model's tokenizer) or token ids
        (None: start from BOS); the other arguments are ``generate``'s. A ``stats`` dict is
        filled with ``prompt_tokens``, ``new_tokens``, ``prefill_s`` and ``decode_s``."""
        import time

        tok = self._need_tokenizer()
        ids = tok.encode(prompt) if isinstance(prompt, str) else prompt
        if isinstance(prompt, str) and not ids:
            ids = None  # an empty text starts from BOS, as transformers' pipeline does
        prompts, _ = self._prompts(ids, None)
        if len(prompts) != 1:
            raise ValueError("stream() takes one prompt")
        args = self._gen_args(len(prompts[0]), dict(kwargs))
        if args["num_return_sequences"] != 1:
            raise ValueError("stream() generates one sequence (num_return_sequences=1)")
        t0 = time.perf_counter()
        gen = self._core.start(prompts, tokenizer=tok, **args)
        t1 = time.perf_counter()
        decoder = tok.decode_stream(skip_special_tokens=skip_special_tokens)
        eos = set(args["eos"])
        if stats is not None:
            stats.update(prompt_tokens=len(prompts[0]), new_tokens=0, prefill_s=t1 - t0)
        while True:
            step = gen.step()
            if stats is not None:
                stats["decode_s"] = time.perf_counter() - t1
            if step is None or step[0] is None:
                break
            token = step[0]
            if stats is not None:
                stats["new_tokens"] += 1
            if token in eos and skip_special_tokens:
                continue
            piece = decoder.step(token)
            if piece:
                yield piece
        tail = decoder.finish()
        if tail:
            yield tail

    def generate_text(
        self,
        prompt: str | Sequence[str],
        *,
        return_full_text: bool = True,
        skip_special_tokens: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Text in, text out: the prompt and its continuation (or the continuation alone with
        ``return_full_text=False``); a list when several prompts or sequences are asked for."""
        tok = self._need_tokenizer()
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [tok.encode(t) for t in texts]
        out = []
        n = int(_or(kwargs.get("num_return_sequences"), 1))
        for i, p in enumerate(prompts):
            # An empty text starts from BOS, as transformers' text-generation pipeline does.
            ids = self.generate([p] if p else None, **kwargs)
            for row in ids:
                new = row[len(p) :]
                text = tok.decode(new, skip_special_tokens=skip_special_tokens)
                out.append(texts[i] + text if return_full_text else text)
        return out[0] if isinstance(prompt, str) and n == 1 else out

    # ------------------------------------------------------------------ chat

    def _chat_ids(self, messages: Any, system: str | None) -> list[int]:
        tok = self._need_tokenizer()
        if isinstance(messages, str):
            msgs: list[dict[str, Any]] = [{"role": "user", "content": messages}]
        elif isinstance(messages, Sequence) and not isinstance(messages, (bytes, bytearray)):
            msgs = []
            for i, m in enumerate(messages):
                if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
                    raise TypeError(
                        f"messages[{i}] must be a dict with a 'role' (str) and a 'content', "
                        f"not {m!r:.80}"
                    )
                msgs.append(dict(m))
        else:
            raise TypeError(
                "messages must be a str (one user message) or a list of "
                "{'role': ..., 'content': ...} dicts, not " + type(messages).__name__
            )
        if system is not None and not (msgs and msgs[0].get("role") == "system"):
            msgs.insert(0, {"role": "system", "content": system})
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
        return list(ids)

    def _chat_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kw = dict(kwargs)
        if kw.get("max_new_tokens") is None and kw.get("max_length") is None:
            kw["max_new_tokens"] = 512
        if kw.get("eos_token_id") is None:
            eos = _ids(self.generation_config.get("eos_token_id", self.config.get("eos_token_id")))
            tok_eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
            if tok_eos is not None and tok_eos not in eos:
                eos.append(tok_eos)
            kw["eos_token_id"] = eos
        return kw

    def chat(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        *,
        system: str | None = None,
        stats: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> str:
        """The assistant's reply to a conversation (``[{"role": "user", "content": ...}, ...]``
        or one user message as a str), rendered with the model's chat template. ``system``
        adds a system message first. Generation arguments are ``generate``'s (greedy unless
        ``do_sample=True``; ``max_new_tokens`` defaults to 512); it ends at the template's end
        token. ``stats`` as in ``stream``."""
        return "".join(self.chat_stream(messages, system=system, stats=stats, **kwargs))

    def chat_stream(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        *,
        system: str | None = None,
        stats: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> Iterator[str]:
        """``chat``, yielding the reply piece by piece as it is generated."""
        ids = self._chat_ids(messages, system)
        return self.stream(ids, stats=stats, **self._chat_kwargs(kwargs))

    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError(
                f"{self.name_or_path} has no tokenizer files (tokenizer.json or vocab.json); "
                "pass one (tokenizer= when loading, --tokenizer in the CLI)"
            )
        return self.tokenizer


_D = TypeVar("_D", bound="DecoderForCausalLM")


class DecoderForCausalLM(PreTrainedCausalLM):
    """A decoder-only Transformer run by ferrolm's Rust core: any architecture of its registry
    (``ferrolm.decoder_model_types()``: GPT-2, Llama, Qwen2, Qwen3, ...), from a Hugging Face
    folder or a GGUF file, f32 or quantized. Each architecture has its subclass under its
    ``transformers`` name (``ferrolm.Qwen2ForCausalLM``); ``AutoModelForCausalLM`` picks it."""

    #: The registry architecture this class loads (``None``: every one).
    _arch: str | None = None

    @classmethod
    def from_pretrained(
        cls: type[_D],
        name_or_path: str | os.PathLike[str],
        *,
        dtype: str = "float32",
        quantize: str | None = None,
        torch_dtype: Any = None,
        show_progress: bool | None = None,
        kv_cache_dtype: str = "float32",
        gguf_file: str | None = None,
    ) -> _D:
        """Loads a Hugging Face folder (``config.json`` + safetensors or shards, the tokenizer
        files), a ``.gguf`` file (weights, tokenizer and chat template all read from it;
        ``gguf_file=`` names one inside a folder, as in transformers), a short name such as
        ``"smollm2"``, or a model in the local Hugging Face cache (never the network).

        Weights stored as f16 or bf16 are converted to f32 once; f32 safetensors are used in
        place from the memory-mapped file. A GGUF file's quantized tensors (Q8_0, Q4_0, Q4_1)
        are used as they are. ``quantize="int8"`` (= ``"q8_0"``), ``"int4"`` (= ``"q4_0"``) or
        ``"q4_1"`` quantizes the f32 matrices as they load, with a progress bar on a terminal
        (``show_progress``); where the architecture saves (GPT-2), ``save_pretrained`` then
        writes a folder that loads back quantized, memory-mapped, without quantizing again.
        ``kv_cache_dtype="float16"`` halves the KV cache (keys and values rounded to f16 as
        they are stored; attention converts them back on the fly).
        """
        del torch_dtype  # accepted for transformers code; ferrolm computes in float32
        if dtype not in ("float32", "auto"):
            raise ValueError(f"dtype must be 'float32' (the only one implemented), not {dtype!r}")
        path = resolve_model_path(name_or_path, gguf_file)
        if path.is_file():
            if cls._arch is not None:
                cls._check_arch(_core.gguf_architecture(path), str(path))

            def load_gguf(p: Path, q: str | None, progress: Any) -> _core.CausalLM:
                return _core.CausalLM.load(p, q, progress, kv_cache_dtype, gguf=True)

            from concurrent.futures import ThreadPoolExecutor

            # The tokenizer is built from the file's metadata while the weights load (both
            # run in Rust with the GIL released).
            with ThreadPoolExecutor(1, thread_name_prefix="ferrolm-tokenizer") as ex:
                pending = ex.submit(Tokenizer._from_gguf, path)
                core = load_core(load_gguf, path, quantize, show_progress)
                tokenizer = pending.result()
            return cls(core, path, tokenizer, generation_config={})
        model_type = _read_json(path / "config.json").get("model_type")
        if cls._arch is not None and isinstance(model_type, str):
            # (a folder without config.json or model_type: the core says what is wrong)
            arch = _ARCH_OF_MODEL_TYPE.get(model_type, model_type)
            cls._check_arch(arch, f"{path / 'config.json'}: model_type={model_type!r}")

        def load(p: Path, q: str | None, progress: Any) -> _core.CausalLM:
            return _core.CausalLM.load(p, q, progress, kv_cache_dtype)

        core = load_core(load, path, quantize, show_progress)
        tok: Tokenizer | None = None
        if any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            tok = Tokenizer.from_pretrained(path)
        return cls(core, path, tok)

    @classmethod
    def _check_arch(cls, arch: str, what: str) -> None:
        if arch != cls._arch:
            raise FormatError(
                f"{what}: a {arch} model, not {cls._arch}; "
                "ferrolm.AutoModelForCausalLM picks the class from the model's architecture"
            )

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Writes the model (quantized or f32), its config and tokenizer files to a folder
        that ``from_pretrained`` loads back as it is (architectures that save: GPT-2)."""
        if not self._core.can_save:
            raise NotImplementedError(
                f"save_pretrained is implemented for GPT-2 models; a {self._core.model_type} "
                "model loads from its own folder or file"
            )
        save_folder(self._core, self._source_dir, save_directory, source_id=self._source_id)


class GPT2LMHeadModel(DecoderForCausalLM):
    """A GPT-2 language model run by ferrolm's Rust core (f32, or quantized weights)."""

    _arch = "gpt2"


class LlamaForCausalLM(DecoderForCausalLM):
    """A Llama-family model (Llama 2 / 3, SmolLM, TinyLlama, ...) run by ferrolm's Rust core,
    from a Hugging Face folder or a GGUF file."""

    _arch = "llama"


def _decoder_classes() -> tuple[dict[str, type[DecoderForCausalLM]], dict[str, str]]:
    """The class of each registry architecture (by name), and the architecture of each
    ``model_type``. Architectures without a class above get one under their ``transformers``
    name, made here: adding an architecture to the Rust registry is all it takes."""
    named: dict[str, type[DecoderForCausalLM]] = {
        "GPT2LMHeadModel": GPT2LMHeadModel,
        "LlamaForCausalLM": LlamaForCausalLM,
    }
    classes: dict[str, type[DecoderForCausalLM]] = {}
    of_type: dict[str, str] = {}
    for arch, class_name, model_types, _ in _core.decoder_architectures():
        cls = named.get(class_name)
        if cls is None:
            doc = (
                f"A {arch} model run by ferrolm's Rust core, from a Hugging Face folder or a "
                "GGUF file (see DecoderForCausalLM)."
            )
            cls = type(class_name, (DecoderForCausalLM,), {"_arch": arch, "__doc__": doc})
            cls.__module__ = __name__
        classes[arch] = cls
        for t in model_types:
            of_type[t] = arch
    return classes, of_type


_DECODER_CLASSES, _ARCH_OF_MODEL_TYPE = _decoder_classes()
#: The classes made for the registry's architectures, by their ``transformers`` names.
DECODER_CLASSES: dict[str, type[DecoderForCausalLM]] = {
    cls.__name__: cls for cls in _DECODER_CLASSES.values()
}


def __getattr__(name: str) -> type[DecoderForCausalLM]:
    # ferrolm.models.Qwen2ForCausalLM and the other classes made from the registry.
    try:
        return DECODER_CLASSES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def decoder_model_types() -> list[str]:
    """The ``config.json`` ``model_type`` values of the decoder architectures ferrolm runs (its
    registry, in registration order)."""
    return list(_ARCH_OF_MODEL_TYPE)


def resolve_model_path(name_or_path: str | os.PathLike[str], gguf_file: str | None = None) -> Path:
    """The file or folder a model name means: a path as given (with ``gguf_file`` inside it),
    a short name of :data:`KNOWN_MODELS` (found in its installed package without importing
    it), or a model in the local Hugging Face cache. Never the network. The resolver every
    ferrolm loader uses (``ferrolm._resolve``)."""
    return resolve(name_or_path, gguf_file)


def _model_type(path: Path) -> str:
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return "gguf"
        if magic[:2] == b"PK" and path.suffix == ".keras":
            return "lstm"
        raise FormatError(f"{path}: not a GGUF file, a .keras file nor a model folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        ggufs = sorted(f.name for f in path.glob("*.gguf"))
        hint = f" (it has {', '.join(ggufs)}: pass gguf_file=)" if ggufs else ""
        raise FileNotFoundError(2, f"no config.json in the model folder{hint}", str(config_file))
    model_type = _read_json(config_file).get("model_type")
    if not isinstance(model_type, str):
        raise FormatError(f"{config_file}: no model_type (a string such as 'llama') in it")
    return model_type


class AutoModelForCausalLM:
    """``from_pretrained(path)`` picks the model class from ``config.json``'s ``model_type``."""

    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike[str], **kwargs: Any) -> PreTrainedCausalLM:
        """A folder of any decoder architecture ferrolm runs (``decoder_model_types()``) or
        of an LSTM, a ``.gguf`` or ``.keras`` file, or a short name such as ``"smollm2"``."""
        path = resolve_model_path(name_or_path, kwargs.pop("gguf_file", None))
        model_type = _model_type(path)
        if model_type == "lstm":
            from ferrolm.lstm import LSTMLanguageModel

            return LSTMLanguageModel.from_pretrained(path, **kwargs)
        if model_type == "gguf":
            arch = _core.gguf_architecture(path)
            return _DECODER_CLASSES[arch].from_pretrained(path, **kwargs)
        if model_type in _ARCH_OF_MODEL_TYPE:
            arch = _ARCH_OF_MODEL_TYPE[model_type]
            return _DECODER_CLASSES[arch].from_pretrained(path, **kwargs)
        raise FormatError(
            f"{path}: unsupported architecture model_type={model_type!r}; ferrolm runs "
            f"{', '.join(decoder_model_types())} and lstm"
        )


class AutoTokenizer:
    """``from_pretrained(path)``: the model's tokenizer (``Tokenizer.from_pretrained``): a
    folder, a ``.gguf`` file (or ``gguf_file=`` inside a folder), a short name such as
    ``"smollm2"``, or a model in the local Hugging Face cache."""

    @staticmethod
    def from_pretrained(
        name_or_path: str | os.PathLike[str], *, gguf_file: str | None = None, **kwargs: Any
    ) -> Tokenizer:
        return Tokenizer.from_pretrained(name_or_path, gguf_file=gguf_file, **kwargs)


GPT2Tokenizer = AutoTokenizer
GPT2TokenizerFast = AutoTokenizer
