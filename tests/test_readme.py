"""README.md's code, run as written: every ``python`` block in a fresh interpreter and every
``console`` line in a shell, in a folder that holds the files the snippets name (``path/to/gpt2``,
``corpus.txt``, ``model.keras``, ...), so the README cannot drift from what ferrolm does.

A trailing comment that is a Python literal (``tok.encode("Hello world")  # [15496, 995]``) is
the statement's expected value and is checked; so is a console line's comment that is a list of
ids or JSON. Other comments are prose.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ferrolm

sys.path.insert(0, str(Path(__file__).parent))

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[tuple[int, str]]:
    """(first line number, text) of each fenced block of `language`, indentation removed."""
    out: list[tuple[int, str]] = []
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang = len(m.group(1)), m.group(2)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if lang == language:
            out.append((i + 2, "\n".join(line[indent:] for line in lines[i + 1 : j]) + "\n"))
        i = j + 1
    return out


PYTHON = _blocks("python")
CONSOLE = [
    (n + k, line.strip()[2:])
    for n, block in _blocks("console")
    for k, line in enumerate(block.splitlines())
    if line.strip().startswith("$ ")
]

# Runs one block statement by statement; a statement with a literal as its trailing comment
# must evaluate to that literal.
RUNNER = r"""
import ast, io, sys, tokenize

source = open(sys.argv[1], encoding="utf-8").read()
first_line = int(sys.argv[2])
comments = {}
for t in tokenize.generate_tokens(io.StringIO(source).readline):
    if t.type == tokenize.COMMENT:
        comments[t.start[0]] = t.string[1:].strip()

def expected(text):
    for cand in (text, text.split(";")[0]):
        try:
            return True, ast.literal_eval(cand.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return False, None

namespace = {"__name__": "__main__"}
for node in ast.parse(source).body:
    where = f"README.md line {first_line + node.lineno - 1}"
    comment = comments.get(node.end_lineno) if node.lineno == node.end_lineno else None
    has, want = expected(comment) if comment else (False, None)
    if isinstance(node, ast.Expr) and has:
        got = eval(compile(ast.Expression(node.value), where, "eval"), namespace)
    else:
        exec(compile(ast.Module([node], type_ignores=[]), where, "exec"), namespace)
        single = isinstance(node, ast.Assign) and len(node.targets) == 1
        if not (has and single and isinstance(node.targets[0], ast.Name)):
            continue
        got = namespace[node.targets[0].id]
    if got != want:
        sys.exit(f"{where}: {ast.unparse(node)} gave {got!r}; the README says {want!r}")
print("ok")
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with every file the README's snippets name."""
    from corpora import corpora
    from gpt2_models import gpt2_model

    from ferrolm._data import data_path

    work = tmp_path_factory.mktemp("readme")
    text = next(iter(corpora().values()))
    (work / "corpus.txt").write_text(text[:200_000], encoding="utf-8")
    (work / "text.txt").write_text(text[200_000:220_000], encoding="utf-8")
    shutil.copy(data_path("gpt2.tiktoken"), work / "r50k_base.tiktoken")
    (work / "path" / "to").mkdir(parents=True)
    gpt2 = gpt2_model(seed=7, n_embd=64, n_layer=2, n_head=4, n_positions=1024, vocab_size=50257)
    shutil.copytree(gpt2, work / "path" / "to" / "gpt2")
    smollm2 = ferrolm.models.resolve_model_path("smollm2")
    (work / "path" / "to" / "model.gguf").symlink_to(smollm2)

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="the README's model.keras is built with Keras 3")
    kl = keras.layers
    keras.utils.set_random_seed(0)
    lm = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            kl.Embedding(64, 16),
            kl.LSTM(32, return_sequences=True),
            kl.Dense(64, activation="softmax"),
        ]
    )
    lm.save(work / "model.keras")
    return work


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # The console lines call `ferrolm` as a user does: the one installed beside this Python.
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
        env=env,
    )


def test_the_readme_has_snippets() -> None:
    assert len(PYTHON) >= 7 and len(CONSOLE) >= 8, (len(PYTHON), len(CONSOLE))


@pytest.mark.parametrize(("line", "code"), PYTHON, ids=[f"line{n}" for n, _ in PYTHON])
def test_python_block_runs_as_written(workdir: Path, line: int, code: str) -> None:
    script = workdir / f"block-{line}.py"
    script.write_text(code, encoding="utf-8")
    runner = workdir / "run_block.py"
    runner.write_text(RUNNER, encoding="utf-8")
    r = _run([sys.executable, str(runner), str(script), str(line)], workdir)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ok"), (
        f"README.md block at line {line}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    )


def _expected_output(comment: str) -> str | None:
    """The output a console line's comment states: ids (``15496 995``) or JSON."""
    if re.fullmatch(r"\d+( \d+)*", comment):
        return comment
    try:
        return json.dumps(json.loads(comment), ensure_ascii=False)
    except ValueError:
        return None


@pytest.mark.parametrize(("line", "command"), CONSOLE, ids=[f"line{n}" for n, _ in CONSOLE])
def test_console_line_runs_as_written(workdir: Path, line: int, command: str) -> None:
    cmd, _, comment = command.partition("  #")
    r = _run(["bash", "-c", cmd], workdir)
    assert r.returncode == 0, (
        f"README.md line {line}: {cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    )
    want = _expected_output(comment.strip())
    if want is not None:
        got = r.stdout.strip()
        if want.startswith(("[", "{")):
            got = json.dumps(json.loads(got), ensure_ascii=False)
        assert got == want, f"README.md line {line}: {cmd} printed {got!r}; README says {want!r}"


def test_the_example_writes_nothing_into_the_current_folder(tmp_path: Path) -> None:
    """examples/lstm_lm.py saves its model to a new temporary folder unless told where."""
    pytest.importorskip("torch", reason="the example trains with PyTorch")
    example = README.parent / "examples" / "lstm_lm.py"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 400, encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["--corpus", str(corpus), "--minutes", "0.02", "--vocab-size", "300"]
    args += ["--embedding", "16", "--hidden", "32", "--layers", "1"]
    r = subprocess.run(
        [sys.executable, str(example), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    saved = re.search(r"3\. saved to (.+)/\n", r.stdout)
    assert saved, r.stdout
    folder = Path(saved.group(1))
    try:
        assert (folder / "config.json").is_file() and "perplexity" in r.stdout
    finally:
        shutil.rmtree(folder, ignore_errors=True)
