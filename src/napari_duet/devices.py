"""Device selection and seeding.

``auto`` picks CUDA, then Apple MPS, then the CPU.  Nothing in the package
hard-codes a device: engines call :func:`resolve_device` and load weights with
``map_location``.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np

from ._errors import DuetInputError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Return the device names usable on this machine, best first."""
    import torch

    names = []
    if torch.cuda.is_available():
        names.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device name into a :class:`torch.device`.

    Parameters
    ----------
    device : str, torch.device or None
        ``"auto"`` (or None) for the best available device, or an explicit
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.

    Raises
    ------
    DuetInputError
        If the device is unknown or not available here.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    base = name.split(":", 1)[0]
    if base not in DEVICE_CHOICES:
        raise DuetInputError(
            f"unknown device {device!r}: use one of {', '.join(DEVICE_CHOICES)}"
        )
    if base == "cuda" and not torch.cuda.is_available():
        raise DuetInputError("device 'cuda' requested but CUDA is not available here")
    if base == "mps" and "mps" not in available_devices():
        raise DuetInputError("device 'mps' requested but MPS is not available here")
    return torch.device(name)


def seed_everything(seed: int | None) -> np.random.Generator:
    """Seed Python, NumPy and torch; return a NumPy generator for local use."""
    import torch

    seed = 0 if seed is None else int(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def torch_generator(seed: int | None, device: torch.device | None = None) -> torch.Generator:
    """A private torch generator, so engines do not disturb the global RNG."""
    import torch

    gen = torch.Generator(device="cpu" if device is None else device)
    gen.manual_seed(0 if seed is None else int(seed))
    return gen
