"""Training: ferrolm's trained tokenizer.json files load in Hugging Face tokenizers and encode
identically, the vocabularies agree with tokenizers' own trainers, and bad input is refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from corpora import corpora
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ferrolm
from ferrolm import Tokenizer, train_bpe, train_wordpiece
from ferrolm.train import BERT_SPECIAL_TOKENS

hf = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is the parity peer")

CORPORA = corpora()
CL100K = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
LLAMA3 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _sample(name: str, size: int = 600_000) -> str:
    return CORPORA[name][:size]


def _peer(tok: Tokenizer, tmp_path: Path) -> hf.Tokenizer:
    """The trained tokenizer as tokenizers reads it from the saved tokenizer.json."""
    path = tok.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    return hf.Tokenizer.from_file(str(path))


def _assert_same_ids(ours: Tokenizer, peer: hf.Tokenizer, text: str) -> None:
    lines = text.splitlines(keepends=True)
    assert ours.encode_batch(lines) == [e.ids for e in peer.encode_batch(lines)]
    chunk = text[:100_000]
    assert ours.encode(chunk) == peer.encode(chunk).ids


# ---------------------------------------------------------------- byte-level BPE


@pytest.fixture(scope="module")
def bpe_trained() -> dict[str, Tokenizer]:
    return {name: train_bpe([_sample(name)], 4000, show_progress=False) for name in sorted(CORPORA)}


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_trained_bpe_loads_in_tokenizers_and_encodes_identically(
    bpe_trained: dict[str, Tokenizer], name: str, tmp_path: Path
) -> None:
    ours = bpe_trained[name]
    assert ours.kind == "bpe"
    assert ours.vocab_size == 4000
    peer = _peer(ours, tmp_path)
    assert peer.get_vocab_size() == 4000
    for other in sorted(CORPORA):  # on its own corpus and on the others
        _assert_same_ids(ours, peer, _sample(other, 300_000))
    text = "hello <|endoftext|> world"
    assert ours.encode(text) == peer.encode(text).ids
    assert ours.token_to_id("<|endoftext|>") == 0


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_trained_bpe_vocabulary_agrees_with_tokenizers_trainer(
    bpe_trained: dict[str, Tokenizer], name: str
) -> None:
    # The same greedy algorithm: the same tokens, up to ties among the last, rarest merges.
    from tokenizers import models, pre_tokenizers, trainers

    peer = hf.Tokenizer(models.BPE())
    peer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    peer.train_from_iterator([_sample(name)], trainer)
    ours = set(json.loads(bpe_trained[name].to_json())["model"]["vocab"])
    theirs = set(peer.get_vocab())
    assert len(theirs) == len(ours) == 4000
    assert len(ours & theirs) >= 0.99 * 4000, sorted(ours ^ theirs)[:40]


@pytest.mark.parametrize("pattern", [CL100K, LLAMA3], ids=["cl100k", "llama3"])
def test_bpe_with_another_split_pattern(pattern: str, tmp_path: Path) -> None:
    text = _sample("stdlib-code", 400_000)
    ours = train_bpe([text], 3000, pattern=pattern, special_tokens=["<s>", "</s>"])
    saved = json.loads(ours.to_json())
    assert saved["pre_tokenizer"]["type"] == "Sequence"
    peer = _peer(ours, tmp_path)
    _assert_same_ids(ours, peer, text)
    _assert_same_ids(ours, peer, _sample(sorted(CORPORA)[-1], 200_000))


def test_bpe_round_trips_and_transformers_loads_it(
    bpe_trained: dict[str, Tokenizer], tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is a test peer")
    ours = bpe_trained["stdlib-code"]
    path = ours.save(tmp_path / "trained.json")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    text = "def f(x):\n    return x ** 2  # ünïcödé 中文 🙂\n"
    assert fast(text)["input_ids"] == ours.encode(text)
    assert ours.decode(ours.encode(text)) == text
    again = pickle.loads(pickle.dumps(ours))
    assert again.encode(text) == ours.encode(text)
    reread = Tokenizer.from_pretrained(_folder_with(path, tmp_path / "model"))
    assert reread.encode(text) == ours.encode(text)


def _folder_with(path: Path, folder: Path) -> Path:
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(path.read_bytes())
    return folder


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    corpus=st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=30),
    probe=st.text(max_size=80),
)
def test_bpe_on_arbitrary_text(corpus: list[str], probe: str) -> None:
    ours = train_bpe(corpus, 300, min_frequency=1, special_tokens=[], show_progress=False)
    peer = hf.Tokenizer.from_str(ours.to_json())
    for text in [*corpus, probe]:
        ids = ours.encode(text)
        assert ids == peer.encode(text).ids
        assert ours.decode(ids) == text


def test_training_does_not_depend_on_the_thread_count(restore_threads: None) -> None:
    text = _sample(sorted(CORPORA)[0], 800_000)
    ferrolm.set_num_threads(1)
    one = train_bpe([text], 2000).to_json()
    ferrolm.set_num_threads(2)
    two = train_bpe([text], 2000).to_json()
    assert one == two


def test_training_stops_when_no_pair_is_frequent_enough() -> None:
    tok = train_bpe(["ab ab ab cd"], 10_000, special_tokens=[])
    assert tok.vocab_size < 300
    merges = json.loads(tok.to_json())["model"]["merges"]
    assert merges[0] == ["a", "b"]
    assert ["c", "d"] not in merges  # seen once, below min_frequency=2


# ---------------------------------------------------------------- WordPiece


# Enough text for this many WordPiece tokens with CPython's stdlib alone (the shared corpora
# may be absent).
WP_VOCAB = 8_000


def _wp_text() -> str:
    return "".join(_sample(n, 1_500_000 // len(CORPORA)) for n in sorted(CORPORA))


@pytest.fixture(scope="module")
def wp_trained() -> Tokenizer:
    return train_wordpiece([_wp_text()], WP_VOCAB, show_progress=False)


def test_trained_wordpiece_encodes_identically_in_tokenizers(
    wp_trained: Tokenizer, tmp_path: Path
) -> None:
    assert wp_trained.kind == "wordpiece"
    assert wp_trained.vocab_size == WP_VOCAB
    assert [wp_trained.id_to_token(i) for i in range(5)] == list(BERT_SPECIAL_TOKENS)
    peer = _peer(wp_trained, tmp_path)
    for name in sorted(CORPORA):
        _assert_same_ids(wp_trained, peer, _sample(name, 200_000))
    text = "Héllo, WORLD! [MASK] x"
    ids = wp_trained.encode(text)
    assert ids == peer.encode(text).ids
    assert ids[0] == wp_trained.token_to_id("[CLS]") and ids[-1] == wp_trained.token_to_id("[SEP]")
    assert wp_trained.decode(ids, skip_special_tokens=True) == peer.decode(ids)
    batch = wp_trained(["a short one", "and a longer sentence here"], padding=True)
    assert batch["input_ids"][0][-1] == wp_trained.token_to_id("[PAD]")


def test_wordpiece_vocabulary_agrees_with_tokenizers_trainer(wp_trained: Tokenizer) -> None:
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    peer = hf.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    peer.normalizer = normalizers.BertNormalizer(lowercase=True)
    peer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=WP_VOCAB,
        min_frequency=2,
        special_tokens=list(BERT_SPECIAL_TOKENS),
        show_progress=False,
    )
    peer.train_from_iterator([_wp_text()], trainer)
    ours = set(json.loads(wp_trained.to_json())["model"]["vocab"])
    theirs = set(peer.get_vocab())
    assert len(ours & theirs) >= 0.99 * len(theirs), sorted(ours ^ theirs)[:40]


def test_wordpiece_options(tmp_path: Path) -> None:
    text = "Über naïve CAFÉ café\n" * 5
    cased = train_wordpiece([text], 200, lowercase=False, special_tokens=["[UNK]"])
    peer = _peer(cased, tmp_path)
    assert cased.encode("Über café") == peer.encode("Über café").ids
    assert cased.token_to_id("Über") is not None
    # No [CLS]/[SEP] among the special tokens: nothing is added around the text.
    assert cased.encode("café") == [cased.token_to_id("café")]
    assert cased.encode("q") == [cased.token_to_id("[UNK]")]  # never seen in training


# ---------------------------------------------------------------- inputs, errors, progress


def test_files_and_texts(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_text("the cat sat on the mat\n" * 10, encoding="utf-8")
    from_file = train_bpe([a], 270, special_tokens=[])
    from_text = train_bpe([a.read_text(encoding="utf-8")], 270, special_tokens=[])
    assert from_file.to_json() == from_text.to_json()
    assert train_bpe(a, 270, special_tokens=[]).to_json() == from_file.to_json()
    mixed = train_bpe([a, "the dog"], 270, special_tokens=[])
    assert mixed.vocab_size <= 270


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="single str"):
        train_bpe("some text", 300)
    with pytest.raises(TypeError, match="int"):
        train_bpe(["x"], 300.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"os\.PathLike"):
        train_bpe([b"bytes"], 300)  # type: ignore[list-item]
    with pytest.raises(FileNotFoundError):
        train_bpe([tmp_path / "missing.txt"], 300)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ferrolm.FormatError, match=r"latin1\.txt: not UTF-8"):
        train_bpe([bad], 300)
    with pytest.raises(ValueError, match="smaller than"):
        train_bpe(["x"], 100)
    with pytest.raises(ValueError, match="twice"):
        train_bpe(["x"], 300, special_tokens=["<a>", "<a>"])
    with pytest.raises(ferrolm.FormatError, match="possessive"):
        train_bpe(["x"], 300, pattern=r"\p{L}++|\s")
    with pytest.raises(ValueError, match="unknown token"):
        train_wordpiece(["x"], 300, special_tokens=["[PAD]"])
    with pytest.raises(ValueError, match="smaller than"):
        train_wordpiece(["abcdefghij"], 5)


def test_save_refuses_other_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiktoken"):
        Tokenizer.builtin("gpt2").save(tmp_path / "t.json")


def test_progress_bars_show_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    train_bpe(["the cat sat on the mat " * 50], 280, show_progress=True)
    err = capsys.readouterr().err
    assert "counting words: 100%" in err
    assert "learning merges" in err
    train_bpe(["the cat sat on the mat " * 50], 280, show_progress=False)
    assert capsys.readouterr().err == ""


def test_cl100k_is_written_in_the_spelling_tokenizers_reads_alike(tmp_path: Path) -> None:
    # Oniguruma reads `\p{N}{1,3}+` as `(?:\p{N}{1,3})+`: the saved pattern drops that `+`, and
    # a tokenizer.json with the tiktoken spelling is refused rather than split differently.
    tok = train_bpe(["1234567 abc " * 20], 300, pattern=CL100K)
    doc = json.loads(tok.to_json())
    written = doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    assert written == CL100K.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")
    peer = hf.Tokenizer.from_str(tok.to_json())
    assert tok.encode("x 1234567 y") == peer.encode("x 1234567 y").ids
    doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = CL100K
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ferrolm.FormatError, match="Oniguruma"):
        Tokenizer.from_file(path)
