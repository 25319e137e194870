"""Model loading shared by the widgets: one place for the error handling."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import notify_error


def load_model_or_notify(
    loader: Callable[..., Any], path: str | Path, device: str, context: str
) -> Any | None:
    """Call ``loader(path, device=device)``; on failure notify and return None.

    A corrupted, foreign or wrong-kind file raises ModelFileError in the
    loaders; the user sees one line and the widget's current model is kept.
    """
    try:
        return loader(path, device=device)
    except Exception as exc:
        notify_error(exc, f"{context}: cannot load {Path(path).name}")
        return None
