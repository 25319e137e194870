"""Shared fixtures of the denoiSplit tests: tiny data, tiny networks, one thread."""

from __future__ import annotations

import pytest

from napari_duet.denoisplit import SplitConfig


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    yield


@pytest.fixture
def tiny_config() -> SplitConfig:
    return SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0)

