"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must not pick up a GPU/MPS nondeterministically; engines take device="cpu" explicitly.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project, or skip with a clear reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real images not found at {SHARED_DATA} (see README: Test data)")
    return SHARED_DATA


@pytest.fixture
def one_torch_thread():
    """Tiny networks run faster on one thread, and far faster on a busy CI machine."""
    from napari_duet.devices import torch_threads

    with torch_threads(1):
        yield
