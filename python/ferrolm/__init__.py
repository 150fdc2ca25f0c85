"""ferrolm: language models from Python on a CPU, fast.

A Rust core (tokenization, Transformer forward passes, quantized SIMD kernels) behind a thin
Python API. This module re-exports the public names; see README.md for what is available.
"""

from __future__ import annotations

from ferrolm import _core
from ferrolm._data import data_path
from ferrolm._errors import FerrolmError, FormatError, InternalError
from ferrolm.encoders import (
    AutoModel,
    AutoModelForSequenceClassification,
    BaseModelOutput,
    BertForSequenceClassification,
    BertModel,
)
from ferrolm.lstm import LSTMLanguageModel
from ferrolm.models import (
    DECODER_CLASSES,
    AutoModelForCausalLM,
    AutoTokenizer,
    CausalLMOutput,
    DecoderForCausalLM,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    LlamaForCausalLM,
    PreTrainedCausalLM,
    decoder_model_types,
)
from ferrolm.perplexity import perplexity
from ferrolm.tokenizer import BatchEncoding, Tokenizer
from ferrolm.train import train_bpe, train_wordpiece

__version__: str = _core.__version__
BertTokenizer = AutoTokenizer


def cpu_features() -> dict[str, bool]:
    """The SIMD extensions of this CPU that matter to ferrolm (``avx2``, ``fma``, ``f16c``,
    ``avx512f``, ``avx512bw``, ``avx512_vnni``, ``avx512_bf16``, ``neon``, ...).

    Every key is present on every platform; flags of another architecture are ``False``.
    A flag is ``True`` only when both the CPU and the operating system support it.
    """
    return _core.cpu_features()


def available_isas() -> list[str]:
    """The kernel paths this CPU runs, ``"scalar"`` first and the best last (``"avx2"``,
    ``"avx512"`` on x86-64; ``"neon"`` on aarch64). ``FERROLM_ISA=<name>`` in the environment
    forces one for a process (for tests and benchmarks)."""
    return list(_core.available_isas())


def kernel_isa() -> str:
    """The kernel path this process uses: the best available, or the one ``FERROLM_ISA``
    names."""
    return _core.kernel_isa()


def get_num_threads() -> int:
    """The number of threads ferrolm's parallel work runs on.

    Defaults to the number of cores this process may use, or to the environment variable
    ``FERROLM_NUM_THREADS`` when it is set (a malformed value raises ``ValueError``).
    """
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Sets the number of threads (1 to 1024) for all later parallel work in this process.

    Calls already running finish on the threads they started with. Forked child processes keep
    the setting and get their own threads.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads expects an int, got {type(n).__name__}")
    _core.set_num_threads(n)


Cache = _core.Cache

__all__ = [
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForSequenceClassification",
    "AutoTokenizer",
    "BaseModelOutput",
    "BatchEncoding",
    "BertForSequenceClassification",
    "BertModel",
    "BertTokenizer",
    "Cache",
    "CausalLMOutput",
    "DecoderForCausalLM",
    "FerrolmError",
    "FormatError",
    "GPT2LMHeadModel",
    "GPT2Tokenizer",
    "InternalError",
    "LSTMLanguageModel",
    "LlamaForCausalLM",
    "PreTrainedCausalLM",
    "Tokenizer",
    "__version__",
    "available_isas",
    "cpu_features",
    "data_path",
    "decoder_model_types",
    "get_num_threads",
    "kernel_isa",
    "perplexity",
    "set_num_threads",
    "train_bpe",
    "train_wordpiece",
]


def __getattr__(name: str) -> type[DecoderForCausalLM]:
    """The class of each decoder architecture of the registry without a class of its own
    above, under its ``transformers`` name (``ferrolm.Qwen2ForCausalLM``, ...)."""
    try:
        return DECODER_CLASSES[name]
    except KeyError:
        raise AttributeError(f"module 'ferrolm' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *DECODER_CLASSES})
