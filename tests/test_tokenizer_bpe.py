"""Byte-level BPE: token-for-token parity with tiktoken on the same ranks, and behaviour on odd
input."""

from __future__ import annotations

import pickle
import sys
import threading

import pytest
from corpora import corpora
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ferrolm
from ferrolm import Tokenizer
from ferrolm._data import data_path
from ferrolm.tokenizer import GPT2_PATTERN

tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is the parity peer ([test] extra)")
from tiktoken.load import load_tiktoken_bpe  # noqa: E402

GPT2_SPECIALS = {"<|endoftext|>": 50256}


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer.builtin("gpt2")


@pytest.fixture(scope="module")
def peer() -> tiktoken.Encoding:
    # The same ranks file, loaded by tiktoken itself (offline: a local path).
    ranks = load_tiktoken_bpe(str(data_path("gpt2.tiktoken")))
    return tiktoken.Encoding(
        "gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=GPT2_SPECIALS
    )


CORPORA = corpora()


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_whole_corpus_matches_tiktoken(ours: Tokenizer, peer: tiktoken.Encoding, name: str) -> None:
    text = CORPORA[name]
    want = peer.encode_ordinary(text)
    got = ours.encode_ordinary(text)
    assert len(got) == len(want)
    assert got == want
    assert ours.decode(got) == text


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_line_by_line_matches_tiktoken(
    ours: Tokenizer, peer: tiktoken.Encoding, name: str
) -> None:
    lines = CORPORA[name].splitlines(keepends=True)[:20000]
    assert ours.encode_batch(lines, disallowed_special=()) == peer.encode_ordinary_batch(lines)
    for line in lines[:2000]:
        assert ours.encode(line, disallowed_special=()) == peer.encode_ordinary(line)


def test_shared_corpora_are_used_when_present() -> None:
    from corpora import shared_corpus_dir

    if shared_corpus_dir() is None:
        pytest.skip("../shared/data/corpora is not on this machine; stdlib code only")
    assert {"en-fortunes.txt", "zh-fortunes.txt"} <= set(CORPORA)


AWKWARD = [
    "",
    " ",
    "\n",
    "   leading and trailing   ",
    "It's we'll they've I'd you're 'tis ''' 'S",
    "tabs\tand\r\nwindows\r\nnewlines\n\n\n",
    "numbers 1234567890 ½ Ⅻ ٣٤٥ and 3.14159",
    "emoji 👩‍👩‍👧‍👦 flags 🇫🇷🇩🇪 skin 👍🏽 keycap 1️⃣",
    "combining e\u0301 a\u0300\u0301\u0302 zalgo Z\u0351\u0352\u0353",
    "mixed中文English日本語한국어العربية עברית",
    "\u00a0nbsp\u3000ideographic\u2028line\u2029para",
    "control \x00\x01\x1f\x7f chars",
    "a" * 5000,
    " " * 3000 + "x",
    "ab" * 3000,
    "🙂" * 1000,
]


@pytest.mark.parametrize("text", AWKWARD, ids=range(len(AWKWARD)))
def test_awkward_text_matches_tiktoken(ours: Tokenizer, peer: tiktoken.Encoding, text: str) -> None:
    assert ours.encode(text) == peer.encode(text)
    assert ours.decode(ours.encode(text)) == text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text_matches_tiktoken(text: str) -> None:
    ours = Tokenizer.builtin("gpt2")
    ids = ours.encode(text, disallowed_special=())
    assert ids == _peer().encode(text, disallowed_special=())
    assert ours.decode(ids) == text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["a", "b", " ", "\n", "ab", "é", "中", "👩‍👧", "'s", "1"]), max_size=80
    )
)
def test_structured_text_round_trips(parts: list[str]) -> None:
    text = "".join(parts)
    ours = Tokenizer.builtin("gpt2")
    ids = ours.encode(text)
    assert ids == _peer().encode(text)
    assert ours.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50256), max_size=60))
def test_decode_of_arbitrary_ids_matches_tiktoken(ids: list[int]) -> None:
    ours = Tokenizer.builtin("gpt2")
    assert ours.decode(ids) == _peer().decode(ids)
    assert ours.decode_bytes(ids) == _peer().decode_bytes(ids)


_peer_cache: list[tiktoken.Encoding] = []


def _peer() -> tiktoken.Encoding:
    if not _peer_cache:
        ranks = load_tiktoken_bpe(str(data_path("gpt2.tiktoken")))
        _peer_cache.append(
            tiktoken.Encoding(
                "gpt2-local",
                pat_str=GPT2_PATTERN,
                mergeable_ranks=ranks,
                special_tokens=GPT2_SPECIALS,
            )
        )
    return _peer_cache[0]


def test_surrogates_are_replaced_like_tiktoken(ours: Tokenizer, peer: tiktoken.Encoding) -> None:
    text = "a\ud800b\udfffc"
    assert ours.encode(text) == peer.encode(text)


# ---------------------------------------------------------------- special tokens


def test_special_tokens_follow_tiktoken(ours: Tokenizer, peer: tiktoken.Encoding) -> None:
    text = "hello <|endoftext|> world"
    with pytest.raises(ValueError, match="disallowed special token '<\\|endoftext\\|>'"):
        ours.encode(text)
    with pytest.raises(ValueError):
        peer.encode(text)
    for kwargs in (
        {"allowed_special": "all"},
        {"allowed_special": {"<|endoftext|>"}},
        {"disallowed_special": ()},
        {"disallowed_special": set()},
        {"allowed_special": set(), "disallowed_special": ()},
    ):
        assert ours.encode(text, **kwargs) == peer.encode(text, **kwargs), kwargs
    assert ours.encode(text, allowed_special="all")[1:2] == [50256] or 50256 in ours.encode(
        text, allowed_special="all"
    )
    assert ours.encode_ordinary(text) == peer.encode_ordinary(text)
    assert ours.special_tokens == GPT2_SPECIALS
    assert ours.special_tokens_set == peer.special_tokens_set
    assert ours.decode([50256]) == "<|endoftext|>"
    assert ours.decode([15496, 50256], skip_special_tokens=True) == "Hello"


def test_special_token_arguments_are_checked(ours: Tokenizer) -> None:
    with pytest.raises(ValueError, match='must be "all"'):
        ours.encode("x", allowed_special="none")
    with pytest.raises(TypeError):
        ours.encode("x", allowed_special=5)  # type: ignore[arg-type]


def test_encode_batch_applies_the_special_check(ours: Tokenizer) -> None:
    with pytest.raises(ValueError, match="disallowed special token"):
        ours.encode_batch(["fine", "not <|endoftext|> fine"])
    assert ours.encode_batch(["<|endoftext|>"], allowed_special="all") == [[50256]]


# ---------------------------------------------------------------- API


def test_vocab_and_token_strings(ours: Tokenizer, peer: tiktoken.Encoding) -> None:
    assert ours.vocab_size == peer.n_vocab == ours.n_vocab == 50257
    convert = pytest.importorskip("transformers.convert_slow_tokenizer", reason="transformers peer")
    byte_encoder = convert.bytes_to_unicode()
    for tid in (0, 1, 220, 995, 15496, 30210, 50255):
        raw = peer.decode_single_token_bytes(tid)
        assert ours.id_to_bytes(tid) == raw
        token = "".join(byte_encoder[b] for b in raw)
        assert ours.id_to_token(tid) == token
        assert ours.token_to_id(token) == tid
    assert ours.id_to_token(50256) == "<|endoftext|>"
    assert ours.token_to_id("<|endoftext|>") == 50256
    assert ours.id_to_token(50257) is None and ours.id_to_token(-1) is None
    assert ours.token_to_id("definitely not a token") is None
    assert ours.name == "gpt2" and "gpt2" in repr(ours)


def test_decode_out_of_range_names_the_id(ours: Tokenizer) -> None:
    with pytest.raises(IndexError, match="token id 50257 is not in the vocabulary"):
        ours.decode([15496, 50257])
    with pytest.raises(IndexError, match="99999"):
        ours.id_to_bytes(99999)
    with pytest.raises(IndexError, match="token id -1 is not in the vocabulary"):
        ours.decode([-1])


def test_non_str_input_is_a_type_error(ours: Tokenizer) -> None:
    for bad in (b"bytes", 5, None, ["list"]):
        with pytest.raises(TypeError):
            ours.encode(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="single str"):
        ours.encode_batch("not a list")
    with pytest.raises(TypeError):
        ours.encode_batch(["ok", 3])  # type: ignore[list-item]


def test_batches_equal_single_calls(ours: Tokenizer) -> None:
    texts = [CORPORA["stdlib-code"][i : i + 1500] for i in range(0, 300_000, 1500)]
    assert ours.encode_batch(texts) == [ours.encode(t) for t in texts]
    ids = ours.encode_batch(texts)
    assert ours.decode_batch(ids) == texts
    assert ours.encode_batch([]) == [] and ours.decode_batch([]) == []
    assert ours.encode_batch(iter(["a", "b"])) == [ours.encode("a"), ours.encode("b")]


def test_shared_across_python_threads(ours: Tokenizer) -> None:
    texts = CORPORA["stdlib-code"][:200_000].splitlines()
    want = [ours.encode(t) for t in texts[:500]]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                assert [ours.encode(t) for t in texts[:500]] == want
                assert ours.encode_batch(texts[:500]) == want
                assert ours.decode_batch(want) == texts[:500]
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:2]


def test_pickle_round_trip(ours: Tokenizer, tmp_path) -> None:
    text = CORPORA["stdlib-code"][:20_000]
    again = pickle.loads(pickle.dumps(ours))
    assert again.encode(text) == ours.encode(text)
    assert len(pickle.dumps(ours)) < 200  # a built-in pickles by name
    custom = Tokenizer.from_tiktoken(data_path("gpt2.tiktoken"), special_tokens=GPT2_SPECIALS)
    blob = pickle.dumps(custom)
    restored = pickle.loads(blob)
    assert isinstance(restored, Tokenizer)
    assert restored.encode(text) == ours.encode(text)
    assert restored.special_tokens == GPT2_SPECIALS


def test_builtin_is_cached_and_unknown_names_are_errors() -> None:
    assert Tokenizer.builtin("gpt2") is Tokenizer.builtin("gpt2")
    with pytest.raises(
        ValueError, match="no built-in tokenizer named 'nope'; available: bert-base-uncased, gpt2"
    ):
        Tokenizer.builtin("nope")


def test_long_inputs_are_not_quadratic(ours: Tokenizer) -> None:
    # One 2 MB piece of a single letter: tiktoken's merge loop is quadratic here; ours is
    # O(n log n). Checked for correctness (round trip) and against tiktoken on a shorter run.
    big = "a" * (2 << 20)
    ids = ours.encode(big)
    assert ours.decode(ids) == big
    assert ours.encode("a" * 20_000) == _peer().encode("a" * 20_000)
    assert ours.encode("\u00e9" * 20_000) == _peer().encode("\u00e9" * 20_000)


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet="abcdeéz", min_size=129, max_size=3000),
    st.sampled_from(["", " ", "x"]),
)
def test_long_pieces_match_tiktoken(ours: Tokenizer, piece: str, prefix: str) -> None:
    # Pieces over 128 bytes take the heap-based merge: the same ids as tiktoken.
    text = prefix + piece
    assert ours.encode(text) == _peer().encode(text)


# ---------------------------------------------------------------- loading errors


def test_rank_file_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_tiktoken(tmp_path / "missing.tiktoken")
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(ferrolm.FormatError, match=r"bad\.tiktoken line 2: bad base64 token"):
        Tokenizer.from_tiktoken(bad)
    truncated = tmp_path / "truncated.tiktoken"
    truncated.write_bytes(data_path("gpt2.tiktoken").read_bytes()[:1000])
    with pytest.raises(ferrolm.FormatError):
        Tokenizer.from_tiktoken(truncated)
    dup = tmp_path / "dup.tiktoken"
    dup.write_bytes(data_path("gpt2.tiktoken").read_bytes() + b"IQ== 60000\n")
    with pytest.raises(ferrolm.FormatError, match="appears twice"):
        Tokenizer.from_tiktoken(dup)
    empty = tmp_path / "empty.tiktoken"
    empty.write_bytes(b"")
    with pytest.raises(ferrolm.FormatError, match="no tokens"):
        Tokenizer.from_tiktoken(empty)


def test_unsupported_patterns_are_format_errors() -> None:
    # Patterns that are neither a known family nor runnable in linear time are refused.
    with pytest.raises(ferrolm.FormatError, match="possessive"):
        Tokenizer.from_tiktoken(data_path("gpt2.tiktoken"), pattern=r"\p{L}++|\p{N}{1,3}+|\s+")
    with pytest.raises(ferrolm.FormatError, match="look-around"):
        Tokenizer.from_tiktoken(data_path("gpt2.tiktoken"), pattern=r"\w+(?=x)")


def test_a_regex_pattern_matches_tiktoken_with_the_same_pattern() -> None:
    pattern = r"""\p{L}+|\p{N}|[^\s\p{L}\p{N}]+|\s+"""
    ours = Tokenizer.from_tiktoken(data_path("gpt2.tiktoken"), pattern=pattern)
    peer = tiktoken.Encoding(
        "p",
        pat_str=pattern,
        mergeable_ranks=load_tiktoken_bpe(str(data_path("gpt2.tiktoken"))),
        special_tokens={},
    )
    text = CORPORA["stdlib-code"][:100_000] + " 中文 123 x"
    assert ours.encode(text) == peer.encode(text)


def test_special_ids_must_not_collide() -> None:
    with pytest.raises(ValueError, match="already the id of an ordinary token"):
        Tokenizer.from_tiktoken(data_path("gpt2.tiktoken"), special_tokens={"<x>": 5})


def test_refcount_of_borrowed_text_is_unchanged(ours: Tokenizer) -> None:
    text = "some text " * 1000
    before = sys.getrefcount(text)
    ours.encode_batch([text] * 10)
    assert sys.getrefcount(text) == before


# ---------------------------------------------------------------- other split patterns

CL100K = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
CL100K_OLD = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
LLAMA3 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
R50K_NEW = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# These two run on the regex engine with the `\s+(?!\S)` look-ahead rewritten (split.rs).
O200K = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
QWEN2 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
PATTERNS = {
    "cl100k": CL100K,
    "cl100k-old": CL100K_OLD,
    "llama3": LLAMA3,
    "r50k-new": R50K_NEW,
    "o200k": O200K,
    "qwen2": QWEN2,
}
_pattern_pairs: dict[str, tuple[Tokenizer, tiktoken.Encoding]] = {}


def _pair(name: str) -> tuple[Tokenizer, tiktoken.Encoding]:
    """ferrolm and tiktoken on GPT-2's ranks with another split pattern."""
    if name not in _pattern_pairs:
        pattern = PATTERNS[name]
        ranks = load_tiktoken_bpe(str(data_path("gpt2.tiktoken")))
        _pattern_pairs[name] = (
            Tokenizer.from_tiktoken(data_path("gpt2.tiktoken"), pattern=pattern),
            tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={}),
        )
    return _pattern_pairs[name]


SPLIT_SAMPLES = [
    *AWKWARD,
    "don'T WE'LL it'S 'tis x'y (hello) [world] {123456789} 1,234.56",
    "line one\nline two\r\n\r\nthree   \n  four\t\tfive \n",
    "trailing spaces and newline  \n  ",
    "\n\n\n   ",
    " \t x",
    "$$$abc ...def ,,, 12ab ab12 a1b2",
    "multiple   spaces   and\ttabs\t\there",
]


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_cl100k_family_patterns_match_tiktoken(name: str) -> None:
    ours, peer = _pair(name)
    assert ours.pattern is not None
    for text in SPLIT_SAMPLES:
        assert ours.encode(text) == peer.encode(text), (name, text)
    for corpus in CORPORA.values():
        lines = corpus[:300_000].splitlines(keepends=True)
        assert ours.encode_batch(lines) == peer.encode_ordinary_batch(lines), name
        assert ours.encode(corpus[:200_000]) == peer.encode_ordinary(corpus[:200_000]), name


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(PATTERNS)),
    st.lists(
        st.sampled_from(
            [
                "a",
                "B",
                " ",
                "  ",
                "\n",
                "\r\n",
                "\t",
                "'s",
                "'LL",
                "1",
                "123",
                "!",
                "(",
                "é",
                "中",
                "👍",
                "\u00a0",
                "\u3000",
                "x1",
                ".\n",
            ]
        ),
        max_size=40,
    ),
)
def test_cl100k_family_on_generated_text(name: str, parts: list[str]) -> None:
    ours, peer = _pair(name)
    text = "".join(parts)
    assert ours.encode(text) == peer.encode(text)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(PATTERNS)), st.text(max_size=100))
def test_cl100k_family_on_arbitrary_text(name: str, text: str) -> None:
    ours, peer = _pair(name)
    assert ours.encode(text, disallowed_special=()) == peer.encode(text, disallowed_special=())


def test_pairs_concatenate_for_gpt2(ours: Tokenizer) -> None:
    # longest_first (tokenizers' rule): the shorter side kept whole within half the budget.
    got = ours("Hello there", " world", truncation=True, max_length=2)
    assert got["input_ids"] == [15496, 995]
    assert "token_type_ids" not in got
    full = ours(["Hello there"], [" world"])
    assert full["input_ids"] == [ours.encode("Hello there") + ours.encode(" world")]
