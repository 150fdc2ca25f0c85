"""Byte-level BPE from Hugging Face files (tokenizer.json; GPT-2's vocab.json + merges.txt):
id-for-id parity with Hugging Face tokenizers / transformers, and with tiktoken on the same
vocabulary."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from corpora import corpora
from gpt2_files import write_gpt2_files
from hypothesis import given, settings
from hypothesis import strategies as st

import ferrolm
from ferrolm import Tokenizer

transformers = pytest.importorskip("transformers", reason="transformers is the parity peer")
CORPORA = corpora()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(folder with vocab.json + merges.txt, folder saved by transformers with tokenizer.json)"""
    raw = write_gpt2_files(tmp_path_factory.mktemp("gpt2-files"))
    peer = transformers.GPT2TokenizerFast(
        vocab=str(raw / "vocab.json"), merges=str(raw / "merges.txt")
    )
    saved = tmp_path_factory.mktemp("gpt2-saved")
    peer.save_pretrained(str(saved))
    return raw, saved


@pytest.fixture(scope="module")
def peer(files: tuple[Path, Path]):
    return transformers.AutoTokenizer.from_pretrained(str(files[1]))


@pytest.fixture(scope="module", params=["tokenizer.json", "vocab.json"])
def ours(request: pytest.FixtureRequest, files: tuple[Path, Path]) -> Tokenizer:
    raw, saved = files
    if request.param == "tokenizer.json":
        return Tokenizer.from_pretrained(saved)
    return Tokenizer.from_file(raw / "vocab.json")


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_lines_match_tokenizers_and_tiktoken(
    ours: Tokenizer, files: tuple[Path, Path], name: str
) -> None:
    lines = CORPORA[name].splitlines(keepends=True)[:6000]
    want = [e.ids for e in _backend(files).encode_batch(lines)]
    assert ours.encode_batch(lines) == want
    tiktoken_ids = Tokenizer.builtin("gpt2").encode_batch(lines, allowed_special="all")
    assert want == tiktoken_ids


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_chunks_match_tokenizers(
    ours: Tokenizer, files: tuple[Path, Path], name: str
) -> None:
    text = CORPORA[name][:300_000]
    chunks = [text[i : i + 30_000] for i in range(0, len(text), 30_000)]
    want = [e.ids for e in _backend(files).encode_batch(chunks)]
    assert ours.encode_batch(chunks) == want


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_arbitrary_text_matches_tokenizers(files: tuple[Path, Path], text: str) -> None:
    ours = _cached(files)
    backend = _backend(files)
    ids = backend.encode(text).ids
    assert ours.encode(text) == ids
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == backend.decode(
            ids, skip_special_tokens=skip
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50256), max_size=40))
def test_decode_of_arbitrary_ids_matches_tokenizers(
    files: tuple[Path, Path], ids: list[int]
) -> None:
    ours = _cached(files)
    backend = _backend(files)
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == backend.decode(
            ids, skip_special_tokens=skip
        )
    stream = ours.decode_stream()
    assert "".join([stream.step(i) for i in ids]) + stream.finish() == ours.decode(ids)


_cache: dict[str, object] = {}


def _cached(files: tuple[Path, Path]) -> Tokenizer:
    if "ours" not in _cache:
        _cache["ours"] = Tokenizer.from_pretrained(files[1])
    return _cache["ours"]  # type: ignore[return-value]


def _backend(files: tuple[Path, Path]):
    if "peer" not in _cache:
        import tokenizers

        _cache["peer"] = tokenizers.Tokenizer.from_file(str(files[1] / "tokenizer.json"))
    return _cache["peer"]


def test_special_tokens_and_vocabulary(ours: Tokenizer, peer) -> None:
    text = "Hello <|endoftext|> world<|endoftext|>"
    assert ours.encode(text) == peer(text)["input_ids"]
    assert ours.special_tokens == {"<|endoftext|>": 50256}
    assert ours.kind == "bpe" and ours.vocab_size == 50257
    for tid in (0, 220, 995, 15496, 50255, 50256):
        assert ours.id_to_token(tid) == peer.convert_ids_to_tokens(tid)
        assert ours.token_to_id(peer.convert_ids_to_tokens(tid)) == tid
    assert ours.id_to_bytes(995) == b" world"
    with pytest.raises(ValueError, match="apply to tokenizers read from tiktoken rank files"):
        # A Hugging Face BPE tokenizer has no tiktoken-style special-token check.
        ours.encode(text, allowed_special="all")


def test_call_matches_transformers(ours: Tokenizer, peer) -> None:
    batch = ["Hello world", "a longer line of text here", ""]
    ours.pad_token = "<|endoftext|>"
    peer.pad_token = "<|endoftext|>"
    for kwargs in ({}, {"padding": True}, {"padding": True, "truncation": True, "max_length": 3}):
        assert dict(ours(batch, **kwargs)) == dict(peer(batch, **kwargs)), kwargs


def test_pickle_and_errors(ours: Tokenizer, files: tuple[Path, Path], tmp_path: Path) -> None:
    again = pickle.loads(pickle.dumps(ours))
    assert again.encode("pickled text") == ours.encode("pickled text")
    raw, saved = files
    (tmp_path / "vocab.json").write_bytes((raw / "vocab.json").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"merges\.txt"):
        Tokenizer.from_file(tmp_path / "vocab.json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ zz\n")
    with pytest.raises(ferrolm.FormatError, match="not in the vocabulary"):
        Tokenizer.from_file(tmp_path / "vocab.json")
    spec = json.loads((saved / "tokenizer.json").read_text())
    spec["model"]["dropout"] = 0.1
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ferrolm.FormatError, match="unsupported BPE dropout"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    spec["model"]["dropout"] = None
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ferrolm.FormatError, match="unsupported pre-tokenizer `Metaspace`"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
