"""Fixtures of the GUI tests (real napari viewers; pytest-xvfb provides the screen)."""

from __future__ import annotations

import pytest


@pytest.fixture
def errors(monkeypatch):
    """Record error notifications instead of showing them."""
    seen: list[str] = []
    from napari_duet._widgets import _common

    monkeypatch.setattr(_common, "show_error", seen.append)
    return seen
