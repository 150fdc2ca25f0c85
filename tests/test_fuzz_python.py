"""Fuzzing at the Python boundary (hypothesis; the Rust parsers themselves are fuzzed with
cargo-fuzz, see SECURITY.md): arbitrary bytes as every file ferrolm reads, arbitrary text and
id lists through encode / decode. The only outcomes allowed are a result or one of the
documented exceptions (``FormatError`` and the other ``ValueError``s, ``OSError``,
``IndexError`` (also for an id that is not a u32), ``TypeError``) — never ``InternalError``, a ``BaseException`` outside
``Exception``, or a crash.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ferrolm

# An id below 0 or above 2^32 - 1 is an IndexError, as one past the vocabulary is.
ALLOWED = (ValueError, OSError, IndexError, TypeError, UnicodeError)
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _only_documented_errors(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except ferrolm.InternalError as e:  # a bug: fail loudly
        raise AssertionError(f"InternalError: {e}") from e
    except ALLOWED:
        pass


def _mutations() -> st.SearchStrategy[bytes]:
    """Random bytes, and valid-looking headers with random tails (to get past magic checks)."""
    gguf = st.binary(max_size=300).map(lambda b: b"GGUF" + struct.pack("<I", 3) + b)
    safetensors = st.binary(max_size=200).map(lambda b: struct.pack("<Q", len(b)) + b)
    js = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    ).map(lambda v: json.dumps(v).encode())
    return st.one_of(st.binary(max_size=400), gguf, safetensors, js)


@SETTINGS
@given(data=_mutations())
def test_any_bytes_as_a_tokenizer_file(tmp_path: Path, data: bytes) -> None:
    for name in ("tokenizer.json", "vocab.txt", "gpt2.tiktoken", "model.gguf"):
        path = tmp_path / name
        path.write_bytes(data)
        if name.endswith(".gguf"):
            _only_documented_errors(lambda p=path: ferrolm.Tokenizer.from_gguf(p))
        elif name.endswith(".tiktoken"):
            _only_documented_errors(lambda p=path: ferrolm.Tokenizer.from_tiktoken(p))
        else:
            _only_documented_errors(lambda p=path: ferrolm.Tokenizer.from_file(p))


@SETTINGS
@given(weights=_mutations(), config=_mutations())
def test_any_bytes_as_a_model_folder(tmp_path: Path, weights: bytes, config: bytes) -> None:
    (tmp_path / "config.json").write_bytes(config)
    (tmp_path / "model.safetensors").write_bytes(weights)
    _only_documented_errors(lambda: ferrolm.AutoModelForCausalLM.from_pretrained(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(weights)
    _only_documented_errors(lambda: ferrolm.AutoModelForCausalLM.from_pretrained(gguf))


@pytest.fixture(scope="module")
def gpt2() -> ferrolm.Tokenizer:
    return ferrolm.Tokenizer.builtin("gpt2")


@pytest.fixture(scope="module")
def bert() -> ferrolm.Tokenizer:
    return ferrolm.Tokenizer.builtin("bert-base-uncased")


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_text_round_trips(gpt2: ferrolm.Tokenizer, bert: ferrolm.Tokenizer, text: str) -> None:
    ids = gpt2.encode(text, disallowed_special=())
    assert gpt2.decode(ids) == text.encode("utf-8", "replace").decode("utf-8")
    assert gpt2.encode_batch([text, text], disallowed_special=()) == [ids, ids]
    wp = bert.encode(text)
    assert wp[0] == bert.token_to_id("[CLS]") and wp[-1] == bert.token_to_id("[SEP]")
    _only_documented_errors(lambda: bert.decode(wp))


@SETTINGS
@given(ids=st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=50))
def test_any_id_list_decodes_or_names_the_bad_id(gpt2: ferrolm.Tokenizer, ids: list[int]) -> None:
    _only_documented_errors(lambda: gpt2.decode(ids))
    _only_documented_errors(lambda: gpt2.decode_bytes(ids))
    _only_documented_errors(lambda: gpt2.decode_batch([ids, ids[:3]]))
    if all(0 <= i < gpt2.n_vocab for i in ids):
        assert isinstance(gpt2.decode(ids), str)
