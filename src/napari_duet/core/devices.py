"""Device selection and seeding.

``auto`` picks CUDA, then Apple MPS, then the CPU.  Nothing in the package
hard-codes a device: engines call :func:`resolve_device` and load weights with
``map_location``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from .errors import DuetInputError

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


# --------------------------------------------------------------------------- CPU threads
THREADS_HELP = (
    "torch CPU threads: a number, or auto (default): 1 with napari open in the same "
    "process, else the usable CPU cores - 1 (at most torch's default, at least 1)"
)


def _usable_cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def napari_running() -> bool:
    """True when a napari viewer exists in this process (without importing napari)."""
    import sys

    napari = sys.modules.get("napari")
    current = getattr(napari, "current_viewer", None)
    if current is None:
        return False
    try:
        return current() is not None
    except Exception:  # a half-imported napari is "not running"
        return False


def parse_threads(value: str | int | None) -> int | str:
    """argparse ``type`` for ``--threads``: a positive integer or ``"auto"``."""
    if value is None:
        return "auto"
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise DuetInputError(f"threads must be a positive integer or 'auto', got {value!r}"
                             ) from None
    if n < 1:
        raise DuetInputError(f"threads must be a positive integer or 'auto', got {value!r}")
    return n


def resolve_threads(threads: str | int | None = "auto", *,
                    napari_open: bool | None = None) -> int:
    """The torch CPU thread count to use for ``threads`` (a number or ``"auto"``).

    ``auto`` is 1 when napari is open in this process: on a 2-core machine Self2Seg
    took 231 s with torch's default threads in the widget and 34 s with one thread
    (NS-N2N: 49 s against 15 s), as torch's threads fight napari's own.  Without
    napari it leaves one core to the rest of the machine: usable cores - 1, at most
    torch's default (physical cores or ``OMP_NUM_THREADS``), at least 1.
    """
    n = parse_threads(threads)
    if n != "auto":
        return int(n)
    if napari_open is None:
        napari_open = napari_running()
    if napari_open:
        return 1
    import sys

    torch = sys.modules.get("torch")  # torch's default, if it is loaded already
    default = torch.get_num_threads() if torch is not None else _usable_cpus()
    return max(1, min(default, _usable_cpus() - 1))


@contextmanager
def torch_threads(threads: str | int | None = "auto", *, napari_open: bool | None = None,
                  import_torch: bool = True) -> Iterator[int]:
    """Set torch's CPU thread count for a ``with`` block and restore it afterwards.

    ``with torch_threads("auto") as n:`` -- ``n`` is the resolved count.  With
    ``import_torch=False`` and torch not loaded yet (a run that does not need it),
    nothing is set.
    """
    import sys

    if not import_torch and "torch" not in sys.modules:
        yield resolve_threads(threads, napari_open=napari_open)
        return
    import torch

    n = resolve_threads(threads, napari_open=napari_open)
    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def in_threads(threads: int | None, gen):
    """Generator: drive ``gen`` with torch's CPU threads set to ``threads`` (restored when it
    ends or is closed); None leaves them as they are.  How every engine applies its
    configuration's ``threads``."""
    if threads is None:
        return (yield from gen)
    with torch_threads(int(threads)):
        return (yield from gen)


def run_with_threads(threads, generator_function, *args, **kwargs):
    """Generator: run ``generator_function(*args, **kwargs)`` under :func:`torch_threads`.

    Yields what it yields and returns what it returns; the thread count is
    restored when it ends or is closed.  Widgets hand this to their thread worker.
    """
    with torch_threads(threads):
        return (yield from generator_function(*args, **kwargs))


def max_threads() -> int:
    """The usable CPU cores (the most a threads control should offer)."""
    return max(1, _usable_cpus())


def release_device_memory() -> bool:
    """Hand the GPU memory that finished runs left in torch's cache back to the driver.

    torch keeps freed device memory cached for reuse, so after a widget's run
    (optimiser state, activations) other programs and plugins see it as used
    until napari exits.  Call when a run ends; models still referenced keep
    their memory.  A no-op (False) when torch was never imported or no CUDA/MPS
    device was used; nothing here initialises a device.
    """
    import gc
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return False
    released = False
    gc.collect()  # tensors in reference cycles (closures, tracebacks) go first
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        released = True
    mps = getattr(torch, "mps", None)
    backend = getattr(torch.backends, "mps", None)
    if mps is not None and backend is not None and backend.is_available():
        mps.empty_cache()
        released = True
    return released
