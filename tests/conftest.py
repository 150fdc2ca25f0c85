"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
def restore_threads():
    """Restores the global thread count after a test that changes it."""
    import ferrolm

    before = ferrolm.get_num_threads()
    yield
    ferrolm.set_num_threads(before)
