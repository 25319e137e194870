"""Fixtures for the NS-N2N tests: small synthetic volumes with known clean data."""

from __future__ import annotations

import numpy as np
import pytest
from nsn2n_synth import FAST, add_noise, make_clean


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny networks run faster on one thread, and far faster on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def volume_pair():
    """Clean and noisy volumes; the noise is 3x stronger in the right half (x >= 24)."""
    clean = make_clean()
    sigma = np.where(np.arange(clean.shape[-1]) < 24, 0.05, 0.15).astype(np.float32)
    return clean, add_noise(clean, sigma=sigma)


@pytest.fixture(scope="session")
def trained(volume_pair):
    """One short training run shared by several tests (the expensive part)."""
    from napari_duet.nsn2n import NSN2NConfig, iter_train

    _, noisy = volume_pair
    # The 2.5D network needs a little more capacity than FAST's width 8 to show its gain.
    cfg = NSN2NConfig(**{**FAST, "iterations": 300, "width": 16, "batch_size": 8})
    gen = iter_train(noisy, axis=0, config=cfg)
    states = []
    while True:
        try:
            states.append(next(gen))
        except StopIteration as stop:
            return stop.value, states
