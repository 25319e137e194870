"""Memory bounds: refuse in-memory reads that cannot fit, with a hint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DuetInputError


# ---------------------------------------------------------------------- memory bounds
def available_memory() -> int | None:
    """Bytes this process can still allocate: the smaller of the system's available
    memory and what its cgroup (container, batch job) leaves; None when unknown."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            found.append(max(int(limit) - usage, 0))
        break
    if not found:
        try:
            import psutil

            found.append(int(psutil.virtual_memory().available))
        except (ImportError, AttributeError):
            return None
    return min(found)


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human size (``1.5 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def require_memory(nbytes: float, what: str, hint: str) -> None:
    """Refuse, before allocating, work that needs more memory than is available.

    Parameters
    ----------
    nbytes
        What the command will hold in memory at once (an estimate).
    what
        What needs it, e.g. ``"reading vol.zarr (96, 1024, 1024) whole"``.
    hint
        What would work instead (``--model``, chunked processing, a crop).

    Raises
    ------
    DuetInputError
        One line: the need, what is available, and ``hint``.
    """
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise DuetInputError(f"{what} needs about {format_bytes(nbytes)} of memory, "
                             f"{format_bytes(avail)} is available: {hint}")


def array_bytes(shape, dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (no overflow for declared shapes)."""
    return int(np.prod([int(s) for s in shape], dtype=np.float64)) * np.dtype(dtype).itemsize


def read_whole(array, name: str, *, per_voxel: float = 0.0, hint: str) -> np.ndarray:
    """``np.asarray(array[...])`` once :func:`require_memory` agrees: the array's bytes plus
    ``per_voxel`` bytes of working copies per element (float32 copies: 4 each)."""
    shape = tuple(int(s) for s in array.shape)
    need = array_bytes(shape, array.dtype) + per_voxel * float(np.prod(shape, dtype=np.float64))
    require_memory(need, f"reading {name} {shape} whole", hint)
    return np.asarray(array[...])


# The hint for in-memory reads that chunked processing would avoid.
CHUNKED_HINT = ("crop or bin it, or process it chunk by chunk with -o OUT.ome.zarr where the "
                "command offers it (duet nsn2n --model, duet split predict, duet self2seg)")
