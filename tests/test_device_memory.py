"""GPU memory of a finished run goes back to the driver; nothing assumes CUDA exists."""

from __future__ import annotations

import torch

from napari_duet.core.devices import release_device_memory


def test_release_is_a_no_op_without_a_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("cuda"))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert release_device_memory() is False
    assert calls == []


def test_release_empties_an_initialised_cuda_cache(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("cuda"))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert release_device_memory() is True
    assert calls == ["cuda"]
    # A process that never used CUDA does not start it just to empty a cache.
    calls.clear()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert release_device_memory() is False and calls == []
