# Type stubs for the Rust extension module ferrolm._core (checked by mypy.stubtest in the tests).

import os
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Literal, final, overload

from typing_extensions import Self, disjoint_base

__all__ = [
    "Bert",
    "Cache",
    "CausalLM",
    "ChatTemplate",
    "DecodeStream",
    "Generation",
    "Tokenizer",
    "__version__",
    "_check_memory",
    "_exchange_paths",
    "_fail_for_tests",
    "_pool_workers",
    "_qmatmul",
    "_read_bandwidth",
    "_sleep_detached",
    "available_isas",
    "cpu_features",
    "decoder_architectures",
    "get_num_threads",
    "gguf_architecture",
    "gguf_tokenizer",
    "kernel_isa",
    "set_num_threads",
    "train_bpe",
    "train_wordpiece",
]

__version__: str

def _qmatmul(tiles: bytes, fmt: str, n: int, k: int, x: bytes, m: int) -> bytes: ...
def available_isas() -> list[str]: ...
def decoder_architectures() -> list[tuple[str, str, list[str], list[str]]]: ...
def gguf_architecture(path: str | os.PathLike[str]) -> str: ...
def kernel_isa() -> str: ...
def cpu_features() -> dict[str, bool]: ...
def gguf_tokenizer(
    path: str | os.PathLike[str],
) -> tuple[str, list[tuple[str, str]], str | None, bool] | None: ...

@final
class ChatTemplate:
    def __new__(cls, source: str) -> ChatTemplate: ...
    def render(self, context: str) -> str: ...

def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    pattern: str,
    special_tokens: Sequence[str],
    min_frequency: int,
    progress: Callable[[str, int, int], object] | None = None,
) -> tuple[str, int, int, int]: ...
def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str],
    unk_token: str,
    lowercase: bool,
    min_frequency: int,
    prefix: str,
    max_input_chars_per_word: int,
    progress: Callable[[str, int, int], object] | None = None,
) -> tuple[str, int, int, int]: ...

# Test support; not part of the public API.
def _pool_workers() -> int: ...
def _fail_for_tests(kind: str) -> None: ...
def _sleep_detached(seconds: float) -> None: ...
def _read_bandwidth(bytes: int) -> float: ...
def _check_memory(count: int, item_bytes: int, what: str) -> int: ...

# Swaps two folders in one step (renameat2 RENAME_EXCHANGE); False where unsupported.
def _exchange_paths(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool: ...

@disjoint_base
class Tokenizer:
    def __new__(
        cls,
        data: bytes,
        kind: str,
        *,
        pattern: str | None = None,
        special_tokens: dict[str, int] | None = None,
        name: str = ...,
        lowercase: bool = True,
        merges: bytes | None = None,
    ) -> Self: ...
    @property
    def kind(self) -> str: ...
    def num_special_tokens_to_add(self, pair: bool = False) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def pattern(self) -> str | None: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def special_tokens(self) -> dict[str, int]: ...
    @overload
    def encode(
        self,
        text: str,
        *,
        add_special_tokens: bool = True,
        allowed_special: Literal["all"] | AbstractSet[str] | Sequence[str] | None = None,
        disallowed_special: Literal["all"] | AbstractSet[str] | Sequence[str] | None = None,
        return_tensors: None = None,
    ) -> list[int]: ...
    @overload
    def encode(
        self,
        text: str,
        *,
        add_special_tokens: bool = True,
        allowed_special: Literal["all"] | AbstractSet[str] | Sequence[str] | None = None,
        disallowed_special: Literal["all"] | AbstractSet[str] | Sequence[str] | None = None,
        return_tensors: Literal["pt", "np"],
    ) -> Any: ...
    def encode_with_offsets(
        self,
        text: str,
        *,
        add_special_tokens: bool = True,
        allowed_special: Literal["all"] | AbstractSet[str] | Sequence[str] | None = None,
        disallowed_special: Literal["all"] | AbstractSet[str] | Sequence[str] | None = None,
    ) -> tuple[list[int], list[tuple[int, int]]]: ...
    def encode_ordinary(self, text: str) -> list[int]: ...
    def encode_batch(
        self,
        texts: Iterable[str],
        *,
        add_special_tokens: bool = True,
        allowed_special: Literal["all"] | AbstractSet[str] | Sequence[str] | None = None,
        disallowed_special: Literal["all"] | AbstractSet[str] | Sequence[str] | None = None,
    ) -> list[list[int]]: ...
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str: ...
    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...
    def decode_batch(
        self, batch: Sequence[Sequence[int]], *, skip_special_tokens: bool = False
    ) -> list[str]: ...
    def id_to_token(self, id: int) -> str | None: ...
    def token_to_id(self, token: str) -> int | None: ...
    def id_to_bytes(self, id: int) -> bytes: ...
    def to_tiktoken_bytes(self) -> bytes: ...
    def decode_stream(self, *, skip_special_tokens: bool = False) -> DecodeStream: ...
    def post_process(self, ids: Sequence[int]) -> list[int]: ...
    def post_process_pair(
        self, a: Sequence[int], b: Sequence[int]
    ) -> tuple[list[int], list[int]]: ...
    def _encode_for_call(
        self,
        texts: Iterable[str],
        *,
        add_special_tokens: bool,
        truncate_to: int | None,
        truncate_left: bool,
        pad_to: int | None,
        pad_id: int,
        pad_left: bool,
        as_bytes: bool,
    ) -> Any: ...

@final
class DecodeStream:
    def step(self, id: int) -> str: ...
    def finish(self) -> str: ...

@final
class Cache:
    @property
    def batch(self) -> int: ...
    @property
    def lengths(self) -> list[int]: ...
    @property
    def nbytes(self) -> int: ...
    def select(self, rows: Sequence[int]) -> Cache: ...
    def get_state(self, i: int) -> bytearray: ...
    def set_state(self, i: int, values: bytes) -> None: ...

@final
class Generation:
    def step(self) -> list[int | None] | None: ...
    def output(self) -> tuple[bytes, int, int]: ...

@final
class CausalLM:
    @staticmethod
    def load(
        path: str | os.PathLike[str],
        quantize: str | None = None,
        progress: Callable[[int, int], object] | None = None,
        kv_cache_dtype: str = "float32",
        *,
        gguf: bool = False,
    ) -> CausalLM: ...
    # An LSTM or GRU language model folder: config.json (model_type "lstm", cell "lstm" | "gru",
    # hidden_size an int or one per layer) + safetensors in PyTorch's layout; schema in
    # ferrolm.lstm. Its config gives cell, hidden_size, hidden_sizes, num_layers, state_size.
    @staticmethod
    def load_lstm(path: str | os.PathLike[str], *, quantize: str | None = None) -> CausalLM: ...
    @property
    def model_type(self) -> str: ...
    @property
    def ctx_key(self) -> str: ...
    @property
    def kv_cache_dtype(self) -> str: ...
    @property
    def quantization(self) -> str | None: ...
    @property
    def can_save(self) -> bool: ...
    def save(self, path: str | os.PathLike[str]) -> None: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def weight_bytes(self) -> int: ...
    def new_cache(self, batch: int, capacity: int | None = None) -> Cache: ...
    def forward(
        self,
        cache: Cache,
        tokens: Sequence[int],
        mask: Sequence[int],
        t: int,
        *,
        last_only: bool = False,
    ) -> bytes: ...
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        min_new_tokens: int,
        num_return_sequences: int,
        do_sample: bool,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        repetition_penalty: float,
        no_repeat_ngram_size: int,
        eos: Sequence[int],
        pad: int,
        seed: int,
        stop: Sequence[str],
        tokenizer: Tokenizer | None = None,
        logits_hook: Callable[[bytes, int, int, bytearray], Any] | None = None,
    ) -> tuple[bytes, int, int]: ...
    def start(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        min_new_tokens: int,
        num_return_sequences: int,
        do_sample: bool,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        repetition_penalty: float,
        no_repeat_ngram_size: int,
        eos: Sequence[int],
        pad: int,
        seed: int,
        stop: Sequence[str],
        tokenizer: Tokenizer | None = None,
    ) -> Generation: ...

@final
class Bert:
    @staticmethod
    def load(
        path: str | os.PathLike[str],
        quantize: str | None = None,
        progress: Callable[[int, int], object] | None = None,
    ) -> Bert: ...
    @property
    def quantization(self) -> str | None: ...
    def save(self, path: str | os.PathLike[str]) -> None: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def has_classifier(self) -> bool: ...
    def forward(
        self,
        ids: Sequence[int],
        type_ids: Sequence[int],
        mask: Sequence[int],
        batch: int,
        seq: int,
    ) -> tuple[bytearray, bytearray | None, bytearray | None]: ...
    def embed(
        self,
        ids: Sequence[Sequence[int]],
        type_ids: Sequence[Sequence[int]] | None = None,
        pooling: str = "mean",
        normalize: bool = False,
    ) -> bytearray: ...
