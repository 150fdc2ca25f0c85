"""Hardening, second round (SECURITY.md, issue 23): counts from arguments checked against memory
before anything is allocated, the memory check under ``ulimit -v`` (RLIMIT_AS), and each
argument outside the contract ending in a documented exception with a message.

Where a regression would abort the process (an allocation the check let through), the case runs
in a child interpreter under an address-space limit, so it fails the test instead of killing
pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ferrolm

sys.path.insert(0, str(Path(__file__).parent))

LIMITED = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/statm are Linux's"
)


@pytest.fixture(scope="module")
def folder() -> Path:
    from gpt2_models import gpt2_model

    pytest.importorskip("transformers", reason="the test model is built with transformers")
    return gpt2_model(seed=2, n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=50257)


@pytest.fixture(scope="module")
def model(folder: Path) -> Any:
    return ferrolm.GPT2LMHeadModel.from_pretrained(folder)


def _in_child(code: str, folder: Path, *, headroom_gb: int = 2, timeout: float = 120) -> str:
    """Runs `code` in a fresh interpreter with the test model loaded as `m` and its address
    space capped at what it maps after loading + `headroom_gb`; returns its output. A crash
    (SIGABRT from the allocator) or an exception fails the test with the child's output."""
    prelude = f"""
        import resource, sys, time
        import numpy as np
        import ferrolm
        m = ferrolm.GPT2LMHeadModel.from_pretrained({str(folder)!r})
        page = resource.getpagesize()
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * page
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = mapped + ({headroom_gb} << 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    """
    script = textwrap.dedent(prelude) + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{out}"
    return out


# --- item 2: counts from arguments go through the memory check ----------------------------------


@LIMITED
def test_num_return_sequences_past_memory_is_a_memory_error(folder: Path) -> None:
    out = _in_child(
        """
        # The message is the up-front check's (a count of sequences and bytes): it comes
        # before the prefill, or the allocator would have aborted this child.
        for n in (10**6, 10**12, 2**62):
            try:
                m.generate([[1, 2, 3]], max_new_tokens=3, num_return_sequences=n)
                raise SystemExit(f"num_return_sequences={n} was not refused")
            except MemoryError as e:
                assert "sequences" in str(e), e
        assert len(m.generate([[1, 2, 3]], max_new_tokens=3, num_return_sequences=4)) == 4
        print("survived")
        """,
        folder,
    )
    assert "survived" in out


def test_the_refusal_names_the_size(model: Any) -> None:
    with pytest.raises(MemoryError, match=r"generating 1000000 sequences .* would need"):
        model.generate([[1, 2, 3]], max_new_tokens=3, num_return_sequences=10**6)


# --- item 7: RLIMIT_AS ------------------------------------------------------------------------


@LIMITED
def test_the_memory_check_respects_an_address_space_limit(folder: Path) -> None:
    out = _in_child(
        """
        # 400 x 128 positions x 50257 logits x 4 bytes = 10.3 GB, past the 2 GB left.
        ids = np.ones((400, 128), dtype=np.int64)
        try:
            m(input_ids=ids)
            raise SystemExit("10 GB of logits passed the check")
        except MemoryError as e:
            assert "RLIMIT_AS" in str(e), e
        try:
            m.generate([[1, 2]] * 4000, max_new_tokens=100, num_return_sequences=8)
            raise SystemExit("a generation past the limit passed the check")
        except MemoryError as e:
            assert "RLIMIT_AS" in str(e), e
        assert m(input_ids=ids[:2, :8]).logits.shape == (2, 8, 50257)
        # The limit is read at every check: lifted, the same size is judged by the machine.
        ferrolm._core._check_memory(1 << 20, 1024, "1 GB")
        try:
            ferrolm._core._check_memory(3 << 20, 1024, "3 GB")
            raise SystemExit("3 GB passed under a 2 GB limit")
        except MemoryError:
            pass
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        with open("/proc/meminfo") as f:
            avail = [int(l.split()[1]) << 10 for l in f if l.startswith("MemAvailable")]
        if avail and avail[0] > 4 << 30:
            ferrolm._core._check_memory(3 << 20, 1024, "3 GB")
        print("survived")
        """,
        folder,
    )
    assert "survived" in out


# --- item 8: contract deviations --------------------------------------------------------------


def test_another_models_cache_is_refused(folder: Path, model: Any) -> None:
    from gpt2_models import gpt2_model

    smaller = ferrolm.AutoModelForCausalLM.from_pretrained(
        gpt2_model(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=1000)
    )
    larger = ferrolm.AutoModelForCausalLM.from_pretrained(
        gpt2_model(n_embd=64, n_layer=4, n_head=4, n_positions=256, vocab_size=1000)
    )
    # The same folder loaded again: the same shape, another model.
    twin = ferrolm.GPT2LMHeadModel.from_pretrained(folder)
    for other in (smaller, larger, twin):
        cache = other(input_ids=[[1, 2]]).past_key_values
        with pytest.raises(ValueError, match="past_key_values was made by another model"):
            model(input_ids=[[3]], past_key_values=cache)
        # Refused before anything changed: its own model continues it.
        assert cache.lengths == [2]
        assert other(input_ids=[[3]], past_key_values=cache).logits.shape[1] == 1
    with pytest.raises(ValueError, match="another model"):
        smaller(input_ids=[[3]], past_key_values=model(input_ids=[[1, 2]]).past_key_values)
    own = model(input_ids=[[1, 2], [4, 5]]).past_key_values
    picked = own.select([1, 1])
    assert model(input_ids=[[3], [3]], past_key_values=picked).logits.shape == (2, 1, 50257)
    with pytest.raises(TypeError, match="past_key_values"):
        model(input_ids=[[1]], past_key_values=object())


def test_ids_that_cannot_be_token_ids_are_index_errors(model: Any) -> None:
    tok = ferrolm.Tokenizer.builtin("gpt2")
    n = tok.vocab_size
    for bad in (-1, n, 2**32, 2**63, 2**64, -(2**70)):
        with pytest.raises(IndexError, match=f"token id {bad} is not in the vocabulary"):
            tok.decode([bad])
        with pytest.raises(IndexError, match=f"token id {bad} is not in the vocabulary"):
            tok.decode_stream().step(bad)
        with pytest.raises(IndexError, match=str(bad)):
            tok.id_to_bytes(bad)
        assert tok.id_to_token(bad) is None
    with pytest.raises(IndexError, match="-1"):
        tok.decode(np.array([5, -1]))
    with pytest.raises(IndexError, match="-1"):
        tok.decode_batch([[5], [-1]])
    with pytest.raises(TypeError):
        tok.id_to_token("5")  # type: ignore[arg-type]
    for bad in (-1, 50257, 2**63):
        with pytest.raises(IndexError, match=f"token id {bad} is outside the vocabulary"):
            model.generate([[1, bad]], max_new_tokens=1)
        with pytest.raises(IndexError, match=f"token id {bad} is outside the vocabulary"):
            model(input_ids=[[1, bad]])
        with pytest.raises(IndexError, match=f"eos_token_id: token id {bad}"):
            model.generate([[1]], max_new_tokens=1, eos_token_id=bad)
        with pytest.raises(IndexError, match=f"pad_token_id: token id {bad}"):
            model.generate([[1]], max_new_tokens=1, pad_token_id=bad)


def test_counts_and_lengths_out_of_range_are_value_errors(model: Any) -> None:
    prompt = [[1, 2]]
    for name, bad in [
        ("max_length", -1),
        ("max_new_tokens", -1),
        ("max_new_tokens", 2**64),
        ("min_new_tokens", -1),
        ("num_return_sequences", 0),
        ("num_return_sequences", -1),
        ("num_return_sequences", 2**64),
        ("no_repeat_ngram_size", 2**64),
        ("top_k", -1),
    ]:
        with pytest.raises(ValueError, match=name):
            model.generate(prompt, **{name: bad})
    # As transformers: a top_k past the vocabulary keeps every token.
    want = np.asarray(model.generate(prompt, max_new_tokens=3, do_sample=True, top_k=0, seed=1))
    got = model.generate(prompt, max_new_tokens=3, do_sample=True, top_k=2**64, seed=1)
    assert np.array_equal(np.asarray(got), want)
    tok = ferrolm.Tokenizer.builtin("gpt2")
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="max_length"):
            tok("hi", truncation=True, max_length=bad)


def test_empty_prompts_are_value_errors_and_none_starts_from_bos(model: Any) -> None:
    with pytest.raises(ValueError, match="input_ids is empty"):
        model.generate([])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        model.generate([[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        model.generate([[1, 2], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        model.generate([[1, 2], [3, 4]], attention_mask=[[1, 1], [0, 0]], max_new_tokens=2)
    bos = model.config["bos_token_id"]
    out = model.generate(max_new_tokens=2)
    assert out[0][0] == bos and len(out[0]) == 3
    assert isinstance(model.generate_text("", max_new_tokens=2), str)


def test_deep_json_files_are_format_errors(folder: Path, tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    (copy / "generation_config.json").write_text(deep)
    with pytest.raises(ferrolm.FormatError, match=r"generation_config\.json"):
        ferrolm.GPT2LMHeadModel.from_pretrained(copy)
    (copy / "generation_config.json").unlink()
    (copy / "tokenizer_config.json").write_text('{"a": ' + deep + "}")
    with pytest.raises(ferrolm.FormatError, match=r"tokenizer_config\.json"):
        ferrolm.GPT2LMHeadModel.from_pretrained(copy)


def test_deeply_nested_chat_messages_are_value_errors(folder: Path) -> None:
    m = ferrolm.GPT2LMHeadModel.from_pretrained(folder)
    assert m.tokenizer is not None
    m.tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    for depth in (150, 100_000):
        content: Any = "hi"
        for _ in range(depth):
            content = [content]
        with pytest.raises(ValueError, match="levels deep"):
            m.chat([{"role": "user", "content": content}], max_new_tokens=1)
    # A list shared at every level doubles what JSON would write: 2^60 values.
    shared: Any = "x"
    for _ in range(60):
        shared = [shared, shared]
    # Refused after counting at most 2^22 of them (a walk of all 2^60 would never return).
    with pytest.raises(ValueError, match="values"):
        m.chat([{"role": "user", "content": shared}], max_new_tokens=1)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="levels deep"):
        m.tokenizer.apply_chat_template([{"role": "user", "content": cyclic}])
    assert isinstance(m.chat([{"role": "user", "content": [["fine"]]}], max_new_tokens=1), str)


@LIMITED
def test_padding_to_a_huge_max_length_is_checked_before_building_lists(folder: Path) -> None:
    out = _in_child(
        """
        tok = m.tokenizer
        tok.pad_token = "<|endoftext|>"
        for kw in ({}, {"return_tensors": "np"}):
            try:
                tok(["hi", "there"], padding="max_length", max_length=10**8, **kw)
                raise SystemExit("padding to 10**8 passed the check")
            except MemoryError as e:
                assert "padded to 100000000" in str(e), e
        try:
            tok(["hi"] * 3, ["there"] * 3, padding="max_length", max_length=10**8)
            raise SystemExit("padding pairs to 10**8 passed the check")
        except MemoryError as e:
            assert "padded to 100000000" in str(e), e
        assert tok(["hi"], padding="max_length", max_length=8)["input_ids"][0][1:] == [50256] * 7
        print("survived")
        """,
        folder,
    )
    assert "survived" in out


def test_config_json_of_the_model_stays_readable(folder: Path) -> None:
    # parse_json is what every loader uses now; an ordinary file reads as before.
    from ferrolm._io import parse_json

    assert parse_json((folder / "config.json").read_bytes(), "config.json")["n_layer"] == 2
    with pytest.raises(ferrolm.FormatError, match=r"x\.json: not valid JSON"):
        parse_json(b"{", "x.json")
    assert json.loads("[1]") == parse_json("[1]", "y.json")
