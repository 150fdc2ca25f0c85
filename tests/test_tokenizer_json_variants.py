"""tokenizer.json pipelines beyond GPT-2's and BERT's, built with Hugging Face tokenizers itself on
GPT-2's vocabulary (Llama-3-style Split + ignore_merges + template, SmolLM-style Digits, RoBERTa's
prefix space, ...) and compared id for id."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpora import corpora
from gpt2_files import write_gpt2_files
from hypothesis import given, settings
from hypothesis import strategies as st

import ferrolm
from ferrolm import Tokenizer

hf = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is the parity peer")
from tokenizers import Regex, decoders, models, pre_tokenizers, processors  # noqa: E402

LLAMA3 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CORPORA = corpora()


def _build(files: Path, variant: str) -> hf.Tokenizer:
    vocab, merges = str(files / "vocab.json"), str(files / "merges.txt")
    if variant == "llama3":
        tok = hf.Tokenizer(models.BPE.from_file(vocab, merges, ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 50256)]
                ),
            ]
        )
    elif variant == "smollm":
        tok = hf.Tokenizer(models.BPE.from_file(vocab, merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif variant == "roberta-prefix":
        tok = hf.Tokenizer(models.BPE.from_file(vocab, merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    elif variant == "digits-runs-whitespace":
        tok = hf.Tokenizer(models.BPE.from_file(vocab, merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Digits(individual_digits=False),
                pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False),
            ]
        )
    elif variant == "split-removed":
        tok = hf.Tokenizer(models.BPE.from_file(vocab, merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(",", behavior="removed"),
                pre_tokenizers.Whitespace(),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise AssertionError(variant)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


VARIANTS = ["llama3", "smollm", "roberta-prefix", "digits-runs-whitespace", "split-removed"]
_pairs: dict[str, tuple[Tokenizer, hf.Tokenizer]] = {}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gpt2_files(tmp_path_factory.mktemp("gpt2-files"))


def _pair(files: Path, variant: str) -> tuple[Tokenizer, hf.Tokenizer]:
    if variant not in _pairs:
        peer = _build(files, variant)
        path = files / f"{variant}.json"
        peer.save(str(path))
        _pairs[variant] = (Tokenizer.from_file(path), hf.Tokenizer.from_file(str(path)))
    return _pairs[variant]


SAMPLES = [
    "",
    "Hello world, it's 2024 and I'VE got 1234567 apples.",
    "  leading\n\n  newlines\r\n and\ttabs  ",
    "a,b,,c , d",
    "<|endoftext|>special<|endoftext|> mid",
    "mixed中文English123漢字 ½Ⅻ ٣٤",
    "emoji 👩‍👩‍👧 e\u0301",
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_match_tokenizers(files: Path, variant: str) -> None:
    ours, peer = _pair(files, variant)
    for text in SAMPLES:
        want = peer.encode(text)
        assert ours.encode(text) == want.ids, (variant, text)
        assert (
            ours.encode(text, add_special_tokens=False)
            == peer.encode(text, add_special_tokens=False).ids
        )
        assert ours.decode(want.ids) == peer.decode(want.ids, skip_special_tokens=False)
    for corpus in CORPORA.values():
        lines = corpus[:150_000].splitlines(keepends=True)
        assert ours.encode_batch(lines) == [e.ids for e in peer.encode_batch(lines)], variant


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(VARIANTS), st.text(max_size=80))
def test_variants_on_arbitrary_text(files: Path, variant: str, text: str) -> None:
    ours, peer = _pair(files, variant)
    assert ours.encode(text) == peer.encode(text).ids


def test_unsupported_split_behaviour_is_named(files: Path, tmp_path: Path) -> None:
    tok = hf.Tokenizer(models.BPE.from_file(str(files / "vocab.json"), str(files / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_next")
    tok.save(str(tmp_path / "t.json"))
    with pytest.raises(ferrolm.FormatError, match="behavior `MergedWithNext`"):
        Tokenizer.from_file(tmp_path / "t.json")
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.save(str(tmp_path / "t.json"))
    with pytest.raises(ferrolm.FormatError, match="pre-tokenizer `Metaspace`"):
        Tokenizer.from_file(tmp_path / "t.json")
