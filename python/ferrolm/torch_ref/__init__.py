"""Reference implementations in plain PyTorch, written from the math, that ferrolm's tests use to
prove the Rust forward passes right: a second, readable opinion next to Hugging Face transformers.

Importing this package needs torch (and safetensors for loading); ferrolm itself needs neither.
"""

from __future__ import annotations

from ferrolm.torch_ref.convert import convert_to_safetensors
from ferrolm.torch_ref.gpt2 import GPT2Ref, GPT2RefConfig, Past, greedy, load_gpt2
from ferrolm.torch_ref.llama import LlamaRef, LlamaRefConfig, load_llama, load_llama_gguf
from ferrolm.torch_ref.lstm import LSTMRef, greedy_lstm, train_lm

__all__ = [
    "GPT2Ref",
    "GPT2RefConfig",
    "LSTMRef",
    "LlamaRef",
    "LlamaRefConfig",
    "Past",
    "convert_to_safetensors",
    "greedy",
    "greedy_lstm",
    "load_gpt2",
    "load_llama",
    "load_llama_gguf",
    "train_lm",
]
