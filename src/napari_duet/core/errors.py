"""Exception types shared by the engines, the CLI and the widgets.

The CLI turns :class:`DuetError` into exit code 2 with a one-line reason and
the widgets into a napari notification, so messages must be short, single
line and say what to change.
"""


class DuetError(Exception):
    """Base class for errors the user can act on."""


class DuetInputError(DuetError, ValueError):
    """Bad input: wrong shape, dtype, parameter value or region."""


class ModelFileError(DuetError):
    """A model file is missing, corrupted, foreign or of another kind."""


def first_line(exc: BaseException, limit: int = 120, default: str | None = None) -> str:
    """The first line of an exception's message, at most ``limit`` characters.

    An empty message gives ``default`` (the exception's type name when None),
    so one-line reports always say something.
    """
    lines = str(exc).strip().splitlines()
    line = lines[0].strip() if lines else (type(exc).__name__ if default is None else default)
    return line if len(line) <= limit else line[: max(limit - 3, 0)] + "..."


_OOM_MARKERS = ("out of memory", "DefaultCPUAllocator: can't allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for running out of host or device memory.

    Covers :class:`MemoryError` (numpy's ``_ArrayMemoryError`` included),
    ``torch.OutOfMemoryError`` and torch ``RuntimeError``s that report an
    allocation failure (CUDA/MPS "out of memory", the CPU allocator).
    """
    exc = getattr(exc, "original", exc)  # widgets wrap worker errors
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # torch, without importing it
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        return any(m.lower() in text.lower() for m in _OOM_MARKERS)
    return False


def out_of_memory_message(exc: BaseException, *,
                          tile: str = "--tile, where the command has it",
                          device: str = "--device cpu, or a GPU with more memory") -> str:
    """One line saying that memory ran out, the allocator's reason, and what to change.

    ``tile`` and ``device`` say how to pick smaller tiles and another device
    (the CLI options by default; widgets name their settings).
    """
    exc = getattr(exc, "original", exc)
    detail = first_line(exc, 100, default="")
    why = f" ({detail})" if detail else ""
    return (f"out of memory{why}: use a smaller image (crop or bin it, or fewer planes), "
            f"smaller tiles ({tile}), or another device ({device})")
