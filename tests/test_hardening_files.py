"""Issue 23, second round: files and arguments that crashed the process, blew up memory or took
quadratic time now end in a documented exception, at each limit accepted and past it refused.
The cases that used to crash run in a child interpreter; time bounds are generous (they tell
seconds from an hour on a loaded machine, they do not measure speed)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ferrolm
from ferrolm import Tokenizer

SEED_JSON = (
    Path(__file__).resolve().parent.parent / "fuzz" / "seeds" / "tokenizer_json" / "bpe.json"
)

# Per-tag nesting limit and template length limit (SECURITY.md).
MAX_TAG = 256
MAX_TEMPLATE = 1 << 20


def _child(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _render(src: str) -> str:
    tok = Tokenizer.builtin("gpt2")
    out: str = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], chat_template=src, tokenize=False
    )
    return out


# Each shape as a Python expression in n (the child process builds it the same way).
SHAPE_EXPRS = {
    "not": "'{{ ' + 'not ' * n + 'true }}'",
    "neg": "'{{ ' + '-' * n + '1 }}'",
    "add": "'{{ 1' + '+1' * n + ' }}'",
    "tilde": "\"{{ 'a'\" + \"~'a'\" * n + ' }}'",
    "and": "'{{ true' + ' and true' * n + ' }}'",
    "filter": "\"{{ 'a'\" + '|upper' * n + ' }}'",
    "attr": "'{{ x' + '.x' * n + ' }}'",
}
SHAPES = {name: eval(f"lambda n: {e}") for name, e in SHAPE_EXPRS.items()}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_deep_chat_template_chains_do_not_crash(shape: str) -> None:
    # The reproducers of the issue (40k `not`, 30k `-`, `+`, `~`, `and`, 100k filters and
    # attributes) killed the interpreter with SIGSEGV; now a FormatError, the child lives on.
    n = 40_000 if shape == "not" else 100_000 if shape in ("filter", "attr") else 30_000
    code = f"""
        import sys
        sys.path[:0] = {sys.path!r}
        import ferrolm
        from ferrolm import Tokenizer
        tok = Tokenizer.builtin("gpt2")
        n = {n}
        src = {SHAPE_EXPRS[shape]}
        try:
            tok.apply_chat_template([{{"role": "user", "content": "Hi"}}], chat_template=src)
        except ferrolm.FormatError as e:
            print("refused:", e)
        print("alive")
    """
    r = _child(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused:" in r.stdout and "alive" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "chains more than 256" in r.stdout, r.stdout


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_chat_template_chains_at_the_limit_render(shape: str) -> None:
    try:
        _render(SHAPES[shape](MAX_TAG))
    except ValueError as e:  # `x.x.x…` compiles, and is undefined when rendered
        assert shape == "attr" and not isinstance(e, ferrolm.FormatError), e
    with pytest.raises(ferrolm.FormatError, match="chains more than 256"):
        _render(SHAPES[shape](MAX_TAG + 1))
    assert issubclass(ferrolm.FormatError, ValueError)


def test_chat_template_length_is_bounded() -> None:
    assert _render("x" * MAX_TEMPLATE) == "x" * MAX_TEMPLATE
    with pytest.raises(ferrolm.FormatError, match="at most 1048576"):
        _render("x" * (MAX_TEMPLATE + 1))


def test_strings_and_comments_do_not_count() -> None:
    ops = "not -+|." * 100
    assert _render("{{ '" + ops + "' }}{# " + ops + " #}") == ops


def _json_with_added(content: str) -> dict[str, object]:
    tj = json.loads(SEED_JSON.read_text())
    tj["added_tokens"].append(
        {
            "id": 7,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    )
    return dict(tj)


def test_long_added_token_loads_in_linear_time(tmp_path: Path) -> None:
    # A 1 MB added token took about an hour (the matcher's DFA was quadratic to build).
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(_json_with_added("a" * (1 << 20))))
    code = f"""
        import sys
        sys.path[:0] = {sys.path!r}
        from ferrolm import Tokenizer
        tok = Tokenizer.from_file({str(path)!r})
        print(tok.encode("b" + "a" * (1 << 20) + "b", add_special_tokens=False)[1])
    """
    r = _child(code, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "7"


def _ranks(extra: bytes) -> bytes:
    lines = [base64.b64encode(bytes([b])) + b" %d" % b for b in range(256)]
    lines.append(base64.b64encode(extra) + b" 256")
    return b"\n".join(lines) + b"\n"


def test_long_tiktoken_token_loads_in_linear_time(tmp_path: Path) -> None:
    # 1 MB of one letter as a rank took about a minute (each split hashed both halves).
    path = tmp_path / "long.tiktoken"
    path.write_bytes(_ranks(b"a" * (1 << 20)))
    code = f"""
        import sys
        sys.path[:0] = {sys.path!r}
        from ferrolm import Tokenizer
        tok = Tokenizer.from_tiktoken({str(path)!r})
        print(len(tok.encode("aaaa")))
    """
    r = _child(code, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "4"


def test_vocab_txt_lines_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    base = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n"
    path.write_text(base + "a" * 1024 + "\n")
    Tokenizer.from_file(path)
    path.write_text(base + "a" * 1025 + "\n")
    with pytest.raises(ferrolm.FormatError, match=r"line 5.*at most 1024"):
        Tokenizer.from_file(path)
    path.write_text(base + "".join(f"t{i}\n" for i in range((1 << 20) - 4)))
    Tokenizer.from_file(path)
    with path.open("a") as f:
        f.write("one-more\n")
    with pytest.raises(ferrolm.FormatError, match="more than 1048576 lines"):
        Tokenizer.from_file(path)
    # One 50 MB line reached 1.9 GB; now refused at once.
    path.write_text(base + "a" * (50 << 20) + "\n")
    with pytest.raises(ferrolm.FormatError, match="at most 1024"):
        Tokenizer.from_file(path)


# The most special-token ids a TemplateProcessing template adds to a sequence (SECURITY.md).
MAX_TEMPLATE_IDS = 1024


def _json_with_template(names: int, ids_per_token: int, sequences: int = 1) -> dict[str, object]:
    tj = json.loads(SEED_JSON.read_text())
    single: list[object] = [{"Sequence": {"id": "A", "type_id": 0}}] * sequences
    single += [{"SpecialToken": {"id": "<|e|>", "type_id": 0}}] * names
    tj["post_processor"] = {
        "type": "TemplateProcessing",
        "single": single,
        "pair": None,
        "special_tokens": {
            "<|e|>": {"id": "<|e|>", "ids": [6] * ids_per_token, "tokens": ["<|e|>"]}
        },
    }
    return dict(tj)


def test_an_expanding_post_processor_is_refused_before_it_grows(tmp_path: Path) -> None:
    # The 1.35 MB file that grew to 6.7 GB and aborted: one special token of 50,000 ids named
    # 20,000 times. Loaded in a child under a 4 GB address-space limit.
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(_json_with_template(20_000, 50_000)))
    assert path.stat().st_size < 2_000_000
    code = f"""
        import resource, sys
        sys.path[:0] = {sys.path!r}
        import ferrolm
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY))
        try:
            ferrolm.Tokenizer.from_file({str(path)!r})
        except ferrolm.FormatError as e:
            print("FormatError:", e)
    """
    r = _child(code, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "FormatError" in r.stdout and "more than 1024 special-token ids" in r.stdout, r.stdout


def test_post_processor_expansion_at_the_limit_and_past_it(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(_json_with_template(1, MAX_TEMPLATE_IDS)))
    tok = Tokenizer.from_file(path)
    assert tok.encode("a") == tok.encode("a", add_special_tokens=False) + [6] * MAX_TEMPLATE_IDS
    path.write_text(json.dumps(_json_with_template(1, MAX_TEMPLATE_IDS + 1)))
    with pytest.raises(ferrolm.FormatError, match="more than 1024 special-token ids"):
        Tokenizer.from_file(path)
    path.write_text(json.dumps(_json_with_template(MAX_TEMPLATE_IDS + 1, 1)))
    with pytest.raises(ferrolm.FormatError, match="more than 1024 special-token ids"):
        Tokenizer.from_file(path)
    path.write_text(json.dumps(_json_with_template(0, 1, sequences=17)))
    with pytest.raises(ferrolm.FormatError, match="more than 16 copies of the sequence"):
        Tokenizer.from_file(path)
