"""llama.cpp's ``convert_hf_to_gguf.py`` for the tests: the script, its ``conversion`` package and
its ``gguf-py``, taken from the ``llama-cpp-python`` sdist on PyPI (``vendor/llama.cpp``) once
and kept in ``~/.cache/ferrolm-tests`` (``FERROLM_LLAMA_CPP_SRC`` names a llama.cpp source tree
to use instead).

The tests' folders carry GPT-2's tokenizer (their vocabulary is 50257): the converter hashes
how a tokenizer splits a fixed text to name its pre-tokenizer, and for a folder whose
``model_type`` makes transformers pick another tokenizer class (Qwen2's) that hash is unknown.
:func:`convert` therefore runs the converter with the pre-tokenizer named ``gpt-2``, the one
the folder's vocabulary has; the weights are converted by the script unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# The sdist whose vendor/llama.cpp the tests and benches use.
LLAMA_CPP_PYTHON = "0.3.36"
_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ferrolm-tests"
_WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")

# Runs convert_hf_to_gguf.py (argv[1]: the llama.cpp tree) with the pre-tokenizer named gpt-2.
_RUNNER = """
import runpy, sys
src = sys.argv[1]
sys.argv = [src + "/convert_hf_to_gguf.py", *sys.argv[2:]]
sys.path[:0] = [src, src + "/gguf-py"]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def source() -> Path:
    """A llama.cpp tree holding ``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/``;
    fetched from PyPI the first time (a ``RuntimeError`` saying why where that fails)."""
    given = os.environ.get("FERROLM_LLAMA_CPP_SRC")
    if given:
        return Path(given)
    tree = _CACHE / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree
    _CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_CACHE) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            "llama-cpp-python",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
            "-d",
            tmp,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise RuntimeError(f"pip download of llama-cpp-python failed:\n{done.stderr[-2000:]}")
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        stage = Path(tmp) / "tree"
        with tarfile.open(sdists[0]) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix)
                and m.name[len(prefix) :].startswith(_WANTED)
                and (m.isfile() or m.isdir())
            ]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(stage, members=members, filter="data")
        if not (stage / "convert_hf_to_gguf.py").is_file():
            raise RuntimeError(f"{sdists[0].name} has no {prefix}convert_hf_to_gguf.py")
        try:
            stage.rename(tree)  # another process may have made it meanwhile: keep theirs
        except OSError:
            shutil.rmtree(stage, ignore_errors=True)
    return tree


def convert(folder: Path, out: Path, outtype: str) -> Path:
    """``folder`` (a Hugging Face model folder with GPT-2's tokenizer) converted by llama.cpp's
    ``convert_hf_to_gguf.py --outtype outtype`` (``f32``, ``f16``, ``bf16``, ``q8_0``) to
    ``out``."""
    cmd = [
        sys.executable,
        "-c",
        _RUNNER,
        str(source()),
        str(folder),
        "--outtype",
        outtype,
        "--outfile",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {folder}:\n{done.stderr[-3000:]}")
    return out
