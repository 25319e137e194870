"""Shared fixtures of the denoiSplit tests: tiny data, tiny networks, one thread."""

from __future__ import annotations

import pytest

from napari_duet.denoisplit import SplitConfig


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny tensors: a single thread avoids OpenMP spin-waits on busy CI machines.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config() -> SplitConfig:
    return SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0)

