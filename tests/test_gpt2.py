"""ferrolm's GPT-2 (Rust forward pass, KV cache, sampling and generation loop) against
transformers' GPT2LMHeadModel and ferrolm.torch_ref on the same saved folders: logits, the
cache, left padding, greedy and constrained decoding, seeded sampling, the text helpers, the
errors users hit, and f16 / bf16 checkpoints."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the test models are built and checked with PyTorch")
transformers = pytest.importorskip(
    "transformers", reason="ferrolm's GPT-2 is checked against transformers"
)

from gpt2_models import SMALL, TINY_VOCAB, gpt2_model  # noqa: E402

import ferrolm  # noqa: E402
from ferrolm.torch_ref import GPT2Ref, load_gpt2  # noqa: E402

EOS = 50256  # GPT-2's <|endoftext|>: bos, eos, and the pad token these tests use
TIE = 1e-4  # reference scores closer than this are a tie: either token is a correct greedy pick

# SMALL with room for a 128-token continuation.
GEN: dict[str, Any] = dict(SMALL, n_positions=256)
# The full context of GPT-2 at a tiny width.
LONG: dict[str, Any] = dict(n_embd=32, n_layer=1, n_head=2, n_positions=1024, vocab_size=1000)
# Every non-default switch of the forward pass (vocabulary of 1000, no tokenizer files).
VARIANTS: dict[str, dict[str, Any]] = {
    "inner-gelu-inverse-untied": dict(
        n_embd=48,
        n_layer=3,
        n_head=4,
        n_positions=64,
        vocab_size=1000,
        n_inner=80,
        activation_function="gelu",
        scale_attn_by_inverse_layer_idx=True,
        tie_word_embeddings=False,
    ),
    "relu-unscaled": dict(
        TINY_VOCAB, n_inner=48, activation_function="relu", scale_attn_weights=False
    ),
    "unscaled-inverse-untied": dict(
        TINY_VOCAB,
        n_layer=3,
        scale_attn_weights=False,
        scale_attn_by_inverse_layer_idx=True,
        tie_word_embeddings=False,
    ),
}

_HF: dict[Path, Any] = {}
_FERRO: dict[Path, Any] = {}


def hf_model(folder: Path) -> Any:
    """transformers' model of ``folder`` (float32, eval), loaded once per session."""
    if folder not in _HF:
        model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32)
        _HF[folder] = model.eval()
    return _HF[folder]


def ferro(folder: Path) -> ferrolm.GPT2LMHeadModel:
    """ferrolm's model of ``folder``, loaded once per session (tests do not mutate it)."""
    if folder not in _FERRO:
        _FERRO[folder] = ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    return _FERRO[folder]


def hf_logits(folder: Path, ids: Any, **kwargs: Any) -> Any:
    with torch.no_grad():
        return hf_model(folder)(ids, **kwargs).logits


def hf_generate(folder: Path, ids: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
    """transformers' generate with the processed scores of every step kept (for the tie rule)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(ids)
    kwargs.setdefault("pad_token_id", EOS)
    with torch.no_grad():
        return hf_model(folder).generate(
            ids,
            attention_mask=attention_mask,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs,
        )


def random_ids(n: int, batch: int = 1, vocab: int = 50257, seed: int = 0) -> Any:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, n), generator=gen)


def left_pad(rows: list[Any], pad: int = EOS) -> tuple[Any, Any]:
    """[B, L] ids and mask for 1-D prompts padded on the left to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = row
        mask[b, width - len(row) :] = 1
    return ids, mask


def mask_positions(mask: Any) -> Any:
    """The positions transformers' generate() derives from a mask (and ferrolm always does)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def max_diff(a: Any, b: Any) -> float:
    """max |a - b| of two float arrays or tensors."""
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


def assert_greedy_agrees(got: Any, want: Any, width: int) -> None:
    """ferrolm's greedy rows equal transformers' (``want``: generate's output with scores),
    except where ferrolm picked a token whose reference score is within TIE of the best one:
    from such a tie on, that row may legitimately go another way."""
    got_rows = [list(map(int, r)) for r in got]
    want_rows = want.sequences.tolist()
    assert len(got_rows) == len(want_rows)
    for b, (g, w) in enumerate(zip(got_rows, want_rows, strict=True)):
        if g == w:
            continue
        j = next((i for i, (x, y) in enumerate(zip(g, w, strict=False)) if x != y), None)
        if j is None:
            pytest.fail(
                f"row {b}: same tokens but {len(g)} columns from ferrolm, {len(w)} from "
                f"transformers\nferrolm:      {g}\ntransformers: {w}"
            )
        assert j >= width, f"row {b}: the prompt part differs at column {j}: {g} vs {w}"
        scores = want.scores[j - width][b]
        gap = float(scores.max() - scores[g[j]])
        assert gap < TIE, (
            f"row {b}: new token {j - width}: ferrolm chose {g[j]}, transformers {w[j]}; "
            f"ferrolm's token scores {gap:.3g} below the best in transformers (not a tie)\n"
            f"ferrolm:      {g}\ntransformers: {w}"
        )


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """The references run on one thread: with ferrolm's pool (or anything else) busy on this
    machine's cores, PyTorch's spinning OpenMP threads make every small op ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small() -> Path:
    return gpt2_model(**SMALL)


@pytest.fixture(scope="module")
def small_ref(small: Path) -> GPT2Ref:
    return load_gpt2(small)


@pytest.fixture(scope="module")
def gen() -> Path:
    return gpt2_model(seed=3, **GEN)


@pytest.fixture(scope="module")
def tiny() -> Path:
    return gpt2_model(seed=4, **TINY_VOCAB)


# --- 1. logits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 7, 64, 128])
def test_logits_match_transformers_and_torch_ref(
    small: Path, small_ref: GPT2Ref, length: int
) -> None:
    ids = random_ids(length, batch=2, seed=length)
    got = ferro(small)(ids).logits
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    assert got.shape == (2, length, 50257)
    assert max_diff(got, hf_logits(small, ids)) <= 1e-4
    assert max_diff(got, small_ref.logits(ids)) <= 1e-4


def test_logits_at_1024_positions() -> None:
    folder = gpt2_model(seed=5, **LONG)
    model = ferro(folder)
    assert model.config["n_positions"] == 1024
    ids = random_ids(1024, vocab=1000, seed=6)
    got = model(ids).logits
    assert got.shape == (1, 1024, 1000)
    assert max_diff(got, hf_logits(folder, ids)) <= 1e-4
    assert max_diff(got, load_gpt2(folder).logits(ids)) <= 1e-4


@pytest.mark.parametrize("length", [1, 40])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_logits_match(name: str, length: int) -> None:
    config = VARIANTS[name]
    folder = gpt2_model(seed=7, **config)
    model = ferro(folder)
    for key, value in config.items():
        assert model.config[key] == value, key
    ids = random_ids(length, batch=2, vocab=1000, seed=8 + length)
    got = model(ids.numpy()).logits  # numpy in, numpy out
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == (2, length, 1000)
    assert max_diff(got, hf_logits(folder, ids)) <= 1e-4
    assert max_diff(got, load_gpt2(folder).logits(ids)) <= 1e-4


# --- 2. the KV cache ------------------------------------------------------------------------------


def test_cache_steps_equal_full_recompute(small: Path) -> None:
    model = ferro(small)
    ids = random_ids(40, batch=2, seed=20)
    full = model(ids).logits
    out = model(ids[:, :16])
    cache = out.past_key_values
    chunks = [out.logits]
    for t in range(16, 40):
        step = model(ids[:, t : t + 1], past_key_values=cache)
        assert step.past_key_values is cache  # updated in place
        chunks.append(step.logits)
    assert cache.lengths == [40, 40]
    assert max_diff(torch.cat(chunks, dim=1), full) <= 1e-5


def test_cache_chunks_equal_full_recompute(small: Path) -> None:
    model = ferro(small)
    ids = random_ids(50, batch=1, seed=21)
    full = model(ids).logits
    cache = None
    chunks = []
    for start, stop in [(0, 10), (10, 11), (11, 12), (12, 30), (30, 31), (31, 50)]:
        out = model(ids[:, start:stop], past_key_values=cache)
        cache = out.past_key_values
        chunks.append(out.logits)
    assert max_diff(torch.cat(chunks, dim=1), full) <= 1e-5


@pytest.mark.parametrize("step_mask", ["past+new", "new", "none"])
def test_cache_with_left_padding_equals_full_recompute(small: Path, step_mask: str) -> None:
    """A left-padded prefill, then one token per step: the attention mask of a step may be
    [batch, past + 1] (as transformers takes it), [batch, 1], or left out."""
    model = ferro(small)
    ids, mask = left_pad([random_ids(n, seed=30 + n)[0] for n in (15, 8, 3)])
    width = ids.shape[1]
    more = random_ids(6, batch=3, seed=31)
    all_ids = torch.cat([ids, more], dim=1)
    all_mask = torch.cat([mask, torch.ones_like(more)], dim=1)
    full = model(all_ids, attention_mask=all_mask).logits
    out = model(ids, attention_mask=mask)
    chunks = [out.logits]
    for t in range(6):
        step_attn = {
            "past+new": all_mask[:, : width + t + 1],
            "new": torch.ones((3, 1), dtype=torch.long),
            "none": None,
        }[step_mask]
        step = model(
            more[:, t : t + 1], attention_mask=step_attn, past_key_values=out.past_key_values
        )
        chunks.append(step.logits)
    got = torch.cat(chunks, dim=1)
    real = all_mask.bool()
    assert max_diff(got[real], full[real]) <= 1e-5


# --- 3. batches with left padding ---------------------------------------------------------------


def test_left_padded_batch_equals_rows_alone_and_transformers(small: Path) -> None:
    model = ferro(small)
    rows = [random_ids(n, seed=10 + n)[0] for n in (5, 12, 9, 1)]
    ids, mask = left_pad(rows)
    got = model(ids, attention_mask=mask).logits
    assert got.shape == (4, 12, 50257)
    for b, row in enumerate(rows):
        alone = model(row[None]).logits[0]
        assert max_diff(got[b, -len(row) :], alone) <= 1e-5, f"row {b} (length {len(row)})"
    # transformers' forward numbers positions by slot; hand it those generate() would use.
    want = hf_logits(small, ids, attention_mask=mask, position_ids=mask_positions(mask))
    real = mask.bool()
    assert max_diff(got[real], want[real]) <= 1e-4


# --- 4, 5. greedy decoding ------------------------------------------------------------------------


def test_greedy_128_tokens_matches_transformers(gen: Path) -> None:
    prompt = random_ids(7, seed=40)
    got = ferro(gen).generate(prompt, do_sample=False, max_new_tokens=128, pad_token_id=EOS)
    want = hf_generate(gen, prompt, do_sample=False, max_new_tokens=128)
    assert tuple(got.shape) == tuple(want.sequences.shape) == (1, 7 + 128)
    assert_greedy_agrees(got, want, 7)


def test_batched_greedy_with_left_padding_matches_transformers(gen: Path) -> None:
    ids, mask = left_pad([random_ids(n, seed=50 + n)[0] for n in (3, 11, 7)])
    got = ferro(gen).generate(
        ids, attention_mask=mask, do_sample=False, max_new_tokens=40, pad_token_id=EOS
    )
    want = hf_generate(gen, ids, mask, do_sample=False, max_new_tokens=40)
    assert tuple(got.shape) == (3, 11 + 40)
    assert got[:, :11].tolist() == ids.tolist()  # the prompts, left-padded with the pad token
    assert_greedy_agrees(got, want, 11)


def test_batched_greedy_rows_equal_rows_alone(gen: Path) -> None:
    model = ferro(gen)
    rows = [random_ids(n, seed=55 + n)[0] for n in (4, 9)]
    ids, mask = left_pad(rows)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=30, pad_token_id=EOS)
    for b, row in enumerate(rows):
        alone = model.generate(row[None], max_new_tokens=30, pad_token_id=EOS)
        assert got[b, 9:].tolist() == alone[0, len(row) :].tolist()


# --- 6. sampling and the generation arguments -----------------------------------------------------


SAMPLE_ARGS: list[dict[str, Any]] = [
    dict(),
    dict(temperature=0.7, top_p=0.9),
    dict(top_k=0, temperature=1.3, min_p=0.05),
]


@pytest.mark.parametrize("args", SAMPLE_ARGS, ids=["default", "temp-top_p", "min_p"])
def test_seed_is_reproducible_across_runs_and_thread_counts(
    gen: Path, restore_threads: None, args: dict[str, Any]
) -> None:
    model = ferro(gen)
    prompts = [random_ids(6, seed=60)[0].tolist(), random_ids(6, seed=61)[0].tolist()]

    def run() -> Any:
        return model.generate(
            prompts,
            do_sample=True,
            max_new_tokens=24,
            num_return_sequences=2,
            seed=1234,
            **args,
        )

    ferrolm.set_num_threads(1)
    one = run()
    again = run()
    ferrolm.set_num_threads(2)
    two = run()
    assert one == again == two
    assert len(one) == 4


def test_different_seeds_differ(gen: Path) -> None:
    model = ferro(gen)
    prompt = random_ids(6, seed=62)
    outs = [
        model.generate(prompt, do_sample=True, max_new_tokens=30, seed=s)[0].tolist()
        for s in (1, 2, 3)
    ]
    assert outs[0] != outs[1] and outs[0] != outs[2] and outs[1] != outs[2]


def test_unseeded_sampling_differs(gen: Path) -> None:
    model = ferro(gen)
    prompt = random_ids(6, seed=63)
    a = model.generate(prompt, do_sample=True, max_new_tokens=30)
    b = model.generate(prompt, do_sample=True, max_new_tokens=30)
    assert a.tolist() != b.tolist()


def test_num_return_sequences(gen: Path) -> None:
    model = ferro(gen)
    prompt = random_ids(6, seed=64)
    out = model.generate(prompt, do_sample=True, max_new_tokens=20, num_return_sequences=5, seed=9)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (5, 26)
    for row in out:
        assert row[:6].tolist() == prompt[0].tolist()
    assert len({tuple(r.tolist()) for r in out}) > 1
    # Several prompts: each one's sequences together, in prompt order (repeat_interleave).
    p2 = [random_ids(6, seed=65)[0].tolist(), random_ids(6, seed=66)[0].tolist()]
    out2 = model.generate(p2, do_sample=True, max_new_tokens=10, num_return_sequences=3, seed=9)
    assert [r[:6] for r in out2] == [p2[0]] * 3 + [p2[1]] * 3


def test_top_k_1_sampling_equals_greedy(gen: Path) -> None:
    model = ferro(gen)
    prompt = random_ids(6, seed=67)
    greedy = model.generate(prompt, max_new_tokens=40)
    for seed in (0, 1):
        sampled = model.generate(prompt, do_sample=True, top_k=1, max_new_tokens=40, seed=seed)
        assert sampled.tolist() == greedy.tolist()


def _first_new_token(new: list[int], start: int) -> tuple[int, int]:
    """The first token of ``new`` at index >= start that does not occur before it."""
    for i in range(start, len(new)):
        if new[i] not in new[:i]:
            return i, new[i]
    raise AssertionError(f"no fresh token in {new}")


def test_eos_stops_a_sequence_and_pads_the_rest(gen: Path) -> None:
    model = ferro(gen)
    pad = 0
    prompts = random_ids(6, batch=2, seed=70)
    free = model.generate(prompts, max_new_tokens=30, eos_token_id=[], pad_token_id=pad).tolist()
    news = [row[6:] for row in free]
    at, eos = _first_new_token(news[0], 3)  # a token that greedy decoding produces in row 0
    assert eos != pad
    got = model.generate(prompts, max_new_tokens=30, eos_token_id=eos, pad_token_id=pad)
    ends = [new.index(eos) + 1 if eos in new else None for new in news]
    assert ends[0] == at + 1
    cols = 30 if None in ends else max(e for e in ends if e is not None)
    expected = []
    for b, new in enumerate(news):
        end = ends[b] if ends[b] is not None else 30
        expected.append(prompts[b].tolist() + new[:end] + [pad] * (cols - end))
    assert got.tolist() == expected
    want = hf_generate(
        gen, prompts, do_sample=False, max_new_tokens=30, eos_token_id=eos, pad_token_id=pad
    )
    assert_greedy_agrees(got, want, 6)


def test_eos_ends_generation_when_every_sequence_has_ended(gen: Path) -> None:
    model = ferro(gen)
    prompt = random_ids(5, seed=71)
    new = model.generate(prompt, max_new_tokens=30, eos_token_id=[])[0, 5:].tolist()
    at, eos = _first_new_token(new, 2)
    got = model.generate(prompt, max_new_tokens=30, eos_token_id=eos)
    assert got[0, 5:].tolist() == new[: at + 1]


def test_min_new_tokens_prevents_early_eos(gen: Path) -> None:
    model = ferro(gen)
    prompt = random_ids(5, seed=72)
    new = model.generate(prompt, max_new_tokens=30, eos_token_id=[])[0, 5:].tolist()
    at, eos = _first_new_token(new, 1)
    assert at < 10
    early = model.generate(prompt, max_new_tokens=30, eos_token_id=eos, pad_token_id=0)
    assert early.shape[1] == 5 + at + 1
    got = model.generate(
        prompt, max_new_tokens=30, min_new_tokens=10, eos_token_id=eos, pad_token_id=0
    )
    assert eos not in got[0, 5:15].tolist()
    want = hf_generate(
        gen,
        prompt,
        do_sample=False,
        max_new_tokens=30,
        min_new_tokens=10,
        eos_token_id=eos,
        pad_token_id=0,
    )
    assert_greedy_agrees(got, want, 5)
    # min_length counts the prompt, as in transformers.
    by_length = model.generate(
        prompt, max_new_tokens=30, min_length=15, eos_token_id=eos, pad_token_id=0
    )
    assert by_length.tolist() == got.tolist()


def test_max_length_counts_the_prompt(gen: Path, tmp_path: Path) -> None:
    model = ferro(gen)
    prompt = random_ids(5, seed=73)
    assert tuple(model.generate(prompt, max_length=12).shape) == (1, 12)
    # max_new_tokens wins over max_length, as in transformers.
    assert tuple(model.generate(prompt, max_length=12, max_new_tokens=3).shape) == (1, 8)
    # Nothing given: 20 tokens in all (generation_config.json sets no max_length here).
    assert "max_length" not in json.loads((gen / "generation_config.json").read_text())
    assert tuple(model.generate(prompt).shape) == (1, 20)
    folder = Path(shutil.copytree(gen, tmp_path / "m"))
    (folder / "generation_config.json").unlink()
    bare = ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    assert tuple(bare.generate(prompt).shape) == (1, 20)
    (folder / "generation_config.json").write_text(json.dumps({"max_length": 15}))
    configured = ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    assert tuple(configured.generate(prompt).shape) == (1, 15)


def test_repetition_penalty_matches_transformers(gen: Path) -> None:
    prompt = random_ids(7, seed=40)
    args = dict(do_sample=False, max_new_tokens=128, repetition_penalty=1.3)
    got = ferro(gen).generate(prompt, pad_token_id=EOS, **args)
    plain = ferro(gen).generate(prompt, pad_token_id=EOS, do_sample=False, max_new_tokens=128)
    assert got.tolist() != plain.tolist()  # the penalty is observable on this prompt
    assert_greedy_agrees(got, hf_generate(gen, prompt, **args), 7)


def test_no_repeat_ngram_size_matches_transformers(gen: Path) -> None:
    prompt = random_ids(7, seed=40)
    args = dict(do_sample=False, max_new_tokens=128, no_repeat_ngram_size=2)
    got = ferro(gen).generate(prompt, pad_token_id=EOS, **args)
    seq = got[0].tolist()
    bigrams = list(itertools.pairwise(seq))
    assert len(bigrams) == len(set(bigrams)), "a bigram repeats"
    assert_greedy_agrees(got, hf_generate(gen, prompt, **args), 7)


def test_no_repeat_ngram_size_when_sampling(gen: Path) -> None:
    out = ferro(gen).generate(
        random_ids(7, seed=41),
        do_sample=True,
        max_new_tokens=100,
        no_repeat_ngram_size=2,
        top_k=3,
        num_return_sequences=3,
        seed=5,
    )
    for row in out.tolist():
        bigrams = list(itertools.pairwise(row))
        assert len(bigrams) == len(set(bigrams))


# --- 7. return types ------------------------------------------------------------------------------


def test_output_type_follows_the_input(gen: Path) -> None:
    model = ferro(gen)
    prompt = random_ids(5, seed=80)
    as_torch = model.generate(prompt, max_new_tokens=4)
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.long
    assert tuple(as_torch.shape) == (1, 9)
    as_numpy = model.generate(prompt.numpy(), max_new_tokens=4)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.int64
    as_list = model.generate(prompt.tolist(), max_new_tokens=4)
    assert isinstance(as_list, list) and all(isinstance(r, list) for r in as_list)
    assert all(type(t) is int for t in as_list[0])
    flat = model.generate(prompt[0].tolist(), max_new_tokens=4)  # one prompt as a flat list
    assert as_torch.tolist() == as_numpy.tolist() == as_list == flat
    # The forward pass: torch logits for torch input, numpy otherwise.
    assert isinstance(model(prompt).logits, torch.Tensor)
    assert isinstance(model(prompt.numpy()).logits, np.ndarray)
    assert isinstance(model(prompt.tolist()).logits, np.ndarray)


# --- 8. the seed program --------------------------------------------------------------------------


def test_seed_program_runs_with_only_the_import_changed(small: Path) -> None:
    model = ferrolm.AutoModelForCausalLM.from_pretrained(small)
    tokenizer = ferrolm.AutoTokenizer.from_pretrained(small)
    input_ids = tokenizer.encode("Hello, my dog", return_tensors="pt")
    out = model.generate(input_ids, max_length=50, num_return_sequences=5, do_sample=True)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    assert isinstance(text, str) and text.startswith("Hello, my dog")
    assert isinstance(out, torch.Tensor) and out.shape[0] == 5
    n = input_ids.shape[1]
    assert (out[:, :n] == input_ids).all()
    if tuple(out.shape) != (5, 50):
        assert out.shape[1] < 50 and all(EOS in row[n:].tolist() for row in out)


# --- 9. text: stream, generate_text, stop strings -------------------------------------------------

PROMPT = "Hello, my dog"


@pytest.mark.parametrize("args", [dict(), dict(do_sample=True, seed=11)], ids=["greedy", "seed"])
def test_stream_equals_decoded_generate(gen: Path, args: dict[str, Any]) -> None:
    model = ferro(gen)
    tok = model.tokenizer
    assert tok is not None
    pieces = list(model.stream(PROMPT, max_new_tokens=40, **args))
    assert len(pieces) > 1 and all(isinstance(p, str) and p for p in pieces)
    ids = tok.encode(PROMPT)
    out = model.generate([ids], max_new_tokens=40, **args)
    assert "".join(pieces) == tok.decode(out[0][len(ids) :], skip_special_tokens=True)


def test_generate_text_returns_prompt_and_continuation(gen: Path) -> None:
    model = ferro(gen)
    tok = model.tokenizer
    assert tok is not None
    ids = tok.encode(PROMPT)
    out = model.generate([ids], max_new_tokens=25)
    continuation = tok.decode(out[0][len(ids) :], skip_special_tokens=True)
    assert model.generate_text(PROMPT, max_new_tokens=25) == PROMPT + continuation
    assert model.generate_text(PROMPT, max_new_tokens=25, return_full_text=False) == continuation
    many = model.generate_text(
        [PROMPT, "The"], max_new_tokens=5, do_sample=True, seed=1, num_return_sequences=2
    )
    assert len(many) == 4 and many[0].startswith(PROMPT) and many[3].startswith("The")


def _stop_case(model: Any) -> tuple[str, list[int], int, str]:
    """A stop string from greedy's continuation of PROMPT: one ASCII letter that first shows up
    in the continuation's token ``k`` (k >= 3). Returns (stop, new tokens, k, full text)."""
    tok = model.tokenizer
    ids = tok.encode(PROMPT)
    new = model.generate([ids], max_new_tokens=40)[0][len(ids) :]
    for k in range(3, len(new)):
        before = tok.decode(new[:k])
        for ch in tok.decode(new[: k + 1])[len(before) :]:
            if ch.isascii() and ch.isalpha() and ch not in before:
                return ch, new, k, tok.decode(new)
    raise AssertionError(f"no usable stop letter in {tok.decode(new)!r}")


def test_stop_strings_end_generation(gen: Path) -> None:
    model = ferro(gen)
    tok = model.tokenizer
    stop, new, k, full = _stop_case(model)
    ids = tok.encode(PROMPT)
    got = model.generate([ids], max_new_tokens=40, stop=[stop])[0][len(ids) :]
    assert got == new[: k + 1], f"stop={stop!r} in {full!r}"
    text = model.generate_text(PROMPT, max_new_tokens=40, stop=[stop])
    assert text == PROMPT + tok.decode(new[: k + 1])
    assert stop in text[len(PROMPT) :] and len(text) < len(PROMPT + full)
    streamed = "".join(model.stream(PROMPT, max_new_tokens=40, stop=stop))
    assert streamed == tok.decode(new[: k + 1])


# --- 10. bad input --------------------------------------------------------------------------------


def _copy(folder: Path, dest: Path) -> Path:
    return Path(shutil.copytree(folder, dest))


def test_missing_tensor_is_named(tiny: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny, tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ferrolm.FormatError, match=r"h\.1\.mlp\.c_fc\.bias"):
        ferrolm.AutoModelForCausalLM.from_pretrained(folder)


def test_misshapen_tensor_is_named_with_both_shapes(tiny: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny, tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    name = "transformer.h.0.attn.c_proj.weight"
    assert tuple(tensors[name].shape) == (32, 32)
    tensors[name] = torch.zeros(32, 33)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ferrolm.FormatError) as info:
        ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    message = str(info.value)
    assert "h.0.attn.c_proj.weight" in message
    assert "32, 33" in message and "32, 32" in message


def test_a_layer_count_past_the_weights_names_the_first_missing_tensor(
    tiny: Path, tmp_path: Path
) -> None:
    # config.json is untrusted: its n_layer once sized a vector before any layer was read
    # (10^8 layers: tens of GB, an abort). Now the first layer the weights lack is the error.
    folder = _copy(tiny, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 10**8
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ferrolm.FormatError, match=r"h\.2\."):
        ferrolm.AutoModelForCausalLM.from_pretrained(folder)


def test_other_model_type_is_refused(tiny: Path, tmp_path: Path) -> None:
    folder = _copy(tiny, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "mamba"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ferrolm.FormatError, match="mamba"):
        ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(ferrolm.FormatError, match="mamba"):
        ferrolm.GPT2LMHeadModel.from_pretrained(folder)


def test_pytorch_bin_only_asks_for_a_conversion(tiny: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(tiny / "config.json", folder / "config.json")
    torch.save(load_file(tiny / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"(?i)convert"):
        ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    # The conversion the message names, then the model loads and matches the original.
    from ferrolm.torch_ref import convert_to_safetensors

    assert convert_to_safetensors(folder) == folder / "model.safetensors"
    ids = random_ids(9, vocab=1000, seed=5)
    got = ferrolm.AutoModelForCausalLM.from_pretrained(folder)(ids).logits
    want = ferrolm.AutoModelForCausalLM.from_pretrained(tiny)(ids).logits
    assert np.array_equal(got, want)


def test_ctrl_c_stops_generation_with_keyboard_interrupt() -> None:
    # One generate call of about a second (2,000 tokens): SIGINT lands inside the Rust loop,
    # which must stop within a step and raise KeyboardInterrupt.
    import signal
    import subprocess
    import sys
    import time

    folder = gpt2_model(n_embd=128, n_layer=4, n_head=4, n_positions=2048, vocab_size=2000)
    probe = (
        "import signal, sys, ferrolm\n"
        # SIGINT is inherited ignored where pytest runs in the background (`&`, nohup).
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "m = ferrolm.AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "m.generate([[1, 2, 3]], max_new_tokens=4)\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    m.generate([[1, 2, 3]], max_new_tokens=2000, do_sample=True, eos_token_id=[])\n"
        "    print('finished', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", probe, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert out.split() == ["interrupted"], out  # not "finished": stopped inside the loop
    assert proc.returncode == 0


def test_prompt_longer_than_n_positions(tiny: Path) -> None:
    model = ferro(tiny)
    ids = random_ids(65, vocab=1000, seed=90)
    with pytest.raises(ValueError, match="n_positions"):
        model(ids)
    with pytest.raises(ValueError, match="n_positions"):
        model.generate(ids, max_new_tokens=2)
    cache = model(ids[:, :64]).past_key_values
    with pytest.raises(ValueError, match="n_positions"):
        model(ids[:, 64:], past_key_values=cache)


def test_empty_prompt_starts_from_bos(gen: Path) -> None:
    model = ferro(gen)
    got = model.generate(None, max_new_tokens=10)
    assert got[0][0] == EOS and len(got[0]) == 11
    bos = torch.tensor([[EOS]])
    assert_greedy_agrees([got[0]], hf_generate(gen, bos, do_sample=False, max_new_tokens=10), 1)


@pytest.mark.parametrize(
    "args, error, name",
    [
        (dict(do_sample=True, temperature=0), ValueError, "temperature"),
        (dict(do_sample=True, temperature=-1.0), ValueError, "temperature"),
        (dict(do_sample=True, top_p=1.5), ValueError, "top_p"),
        (dict(num_return_sequences=0), ValueError, "num_return_sequences"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
        (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
        (dict(no_such_argument=3), TypeError, "no_such_argument"),
    ],
)
def test_invalid_generation_arguments(
    tiny: Path, args: dict[str, Any], error: type[Exception], name: str
) -> None:
    args = {"max_new_tokens": 3, **args}
    with pytest.raises(error, match=name):
        ferro(tiny).generate([[1, 2, 3]], **args)


def test_token_id_outside_the_vocabulary(tiny: Path) -> None:
    model = ferro(tiny)
    with pytest.raises(IndexError, match="1000"):
        model([[1, 1000]])
    with pytest.raises(IndexError, match="1000"):
        model.generate([[1, 1000]], max_new_tokens=2)


# --- 11. f16 / bf16 checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints(small: Path, tmp_path: Path, dtype: str) -> None:
    from safetensors.torch import load_file

    folder = tmp_path / dtype
    half = transformers.GPT2LMHeadModel.from_pretrained(small, dtype=getattr(torch, dtype))
    half.save_pretrained(folder)
    stored = load_file(folder / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {getattr(torch, dtype)}
    ids = random_ids(32, batch=2, seed=100)
    got = ferrolm.AutoModelForCausalLM.from_pretrained(folder)(ids).logits
    upcast = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want = upcast(ids).logits
    assert want.dtype == torch.float32
    assert max_diff(got, want) <= 1e-4
    assert max_diff(got, load_gpt2(folder).logits(ids)) <= 1e-4
    # The cast is real: these are not the float32 model's logits.
    assert max_diff(got, ferro(small)(ids).logits) > 1e-3


# ---------------------------------------------------------------- perplexity and the CLI


def _transformers_perplexity(folder: Path, ids: list[int], stride: int, window: int) -> float:
    """The sliding-window recipe of the transformers documentation, as written there."""
    import torch
    from transformers import GPT2LMHeadModel as Peer

    model = Peer.from_pretrained(folder).eval()
    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + window, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        num_loss_tokens = int((target_ids != -100).sum().item()) - target_ids.size(0)
        nll_sum += float(loss) * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens)


@pytest.mark.parametrize("stride", [32, 64, 128])
def test_perplexity_matches_the_transformers_recipe(stride: int, tmp_path: Path) -> None:
    folder = gpt2_model(**SMALL)
    model = ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    tok = ferrolm.AutoTokenizer.from_pretrained(folder)
    text = " ".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(40))
    ids = tok.encode(text)
    assert len(ids) > 300
    ours = ferrolm.perplexity(model, tok, text, stride=stride)
    want = _transformers_perplexity(folder, ids, stride, SMALL["n_positions"])
    assert abs(ours - want) / want < 1e-3, (ours, want)
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    assert ferrolm.perplexity(model, tok, path, stride=stride) == pytest.approx(ours, rel=1e-9)
    with pytest.raises(ValueError, match="stride"):
        ferrolm.perplexity(model, tok, text, stride=0)


def test_cli_generate_and_perplexity(tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = gpt2_model(**SMALL)
    run = [sys.executable, "-m", "ferrolm"]
    out = subprocess.run(
        [*run, "generate", "-m", str(folder), "Hello", "--max-new-tokens", "8", "--stats"],
        capture_output=True,
        text=True,
        check=True,
    )
    model = ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    assert out.stdout.rstrip("\n") == model.generate_text("Hello", max_new_tokens=8)
    assert "decode:" in out.stderr and "tok/s" in out.stderr
    out = subprocess.run(
        [
            *run,
            "generate",
            "-m",
            str(folder),
            "Hi",
            "--max-new-tokens",
            "4",
            "--num-return-sequences",
            "3",
            "--do-sample",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.count("--- sequence") == 3
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 30, encoding="utf-8")
    out = subprocess.run(
        [*run, "perplexity", "-m", str(folder), str(text), "--stride", "64"],
        capture_output=True,
        text=True,
        check=True,
    )
    tok = ferrolm.AutoTokenizer.from_pretrained(folder)
    assert float(out.stdout) == pytest.approx(
        ferrolm.perplexity(model, tok, text, stride=64), rel=1e-4
    )


def test_logits_processor_runs_each_step_and_matches_transformers() -> None:
    import torch
    from transformers import GPT2LMHeadModel as Peer
    from transformers import LogitsProcessorList, NoBadWordsLogitsProcessor

    folder = gpt2_model(**SMALL)
    model = ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([[464, 3290, 318, 257]])
    plain = model.generate(ids, max_new_tokens=12)
    banned = int(plain[0, 6])
    procs = LogitsProcessorList([NoBadWordsLogitsProcessor([[banned]], eos_token_id=50256)])
    ours = model.generate(ids, max_new_tokens=12, logits_processor=procs)
    assert banned not in ours[0, 4:].tolist()
    with torch.no_grad():
        want = (
            Peer.from_pretrained(folder)
            .eval()
            .generate(
                ids, max_new_tokens=12, do_sample=False, pad_token_id=50256, logits_processor=procs
            )
        )
    assert torch.equal(ours, want)
    calls = []

    def spy(input_ids: Any, scores: Any) -> Any:
        calls.append((tuple(input_ids.shape), tuple(scores.shape)))
        return scores

    model.generate([[464, 3290]], max_new_tokens=3, logits_processor=spy)
    assert calls == [((1, 2), (1, 50257)), ((1, 3), (1, 50257)), ((1, 4), (1, 50257))]

    def broken(input_ids: Any, scores: Any) -> Any:
        raise RuntimeError("from the processor")

    with pytest.raises(RuntimeError, match="from the processor"):
        model.generate([[464]], max_new_tokens=3, logits_processor=broken)


@pytest.mark.parametrize("isa", ferrolm.available_isas())
def test_every_kernel_set_gives_the_same_logits(isa: str, tmp_path: Path) -> None:
    """FERROLM_ISA picks the kernels at start-up: each set this CPU runs matches the default."""
    import os
    import subprocess
    import sys

    folder = gpt2_model(**SMALL)
    ids = [[(i * 7919) % 50257 for i in range(40)]]
    probe = (
        "import sys, json, numpy as np, ferrolm\n"
        "m = ferrolm.AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "ids = json.loads(sys.argv[2])\n"
        "np.save(sys.argv[3], m(ids).logits)\n"
        "print(json.dumps(m.generate(ids, max_new_tokens=8, do_sample=True, seed=3)))\n"
    )
    out = tmp_path / "logits.npy"
    env = {**os.environ, "FERROLM_ISA": isa}
    res = subprocess.run(
        [sys.executable, "-c", probe, str(folder), json.dumps(ids), str(out)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    model = ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    assert np.abs(np.load(out) - model(ids).logits).max() <= 1e-4
    assert json.loads(res.stdout) == model.generate(ids, max_new_tokens=8, do_sample=True, seed=3)
