"""Fixtures of the GUI tests (real napari viewers; pytest-xvfb provides the screen)."""

from __future__ import annotations

import pytest


@pytest.fixture
def errors(monkeypatch):
    """Record error notifications instead of showing them."""
    seen: list[str] = []
    from napari_duet._napari import _common

    monkeypatch.setattr(_common, "show_error", seen.append)
    return seen


class Guarded:
    """An array-like that refuses to be read whole (a layer larger than memory).

    ``largest`` is the most elements one read returned; a read of more than half
    of the array, or a conversion with ``np.asarray``, raises MemoryError.  Reads
    return numpy arrays, so results are the same as from the wrapped array.
    """

    def __init__(self, array, delay: float = 0.0):
        self._array = array
        self.delay = delay  # seconds per read: paces a run so that Cancel lands mid-way
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.size = array.size
        self.largest = 0

    def __getitem__(self, key):
        import time

        import numpy as np

        time.sleep(self.delay)
        out = self._array[key]
        self.largest = max(self.largest, int(np.size(out)))
        if np.size(out) > self.size // 2:
            raise MemoryError("the whole layer was read")
        return out

    def __array__(self, dtype=None, copy=None):
        raise MemoryError("the whole layer was read")

    def __len__(self):
        return self.shape[0]


@pytest.fixture
def guarded():
    """The :class:`Guarded` array-like class."""
    return Guarded
