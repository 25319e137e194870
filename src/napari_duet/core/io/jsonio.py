"""JSON reports: strict (no NaN), numpy-aware, written atomically."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .outputs import atomic_path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write strict JSON with numpy values converted, creating parent folders.

    NaN and infinities (a metric of an empty region, a diverged loss) are
    written as ``null``: Python's default bare ``NaN`` is not JSON, and strict
    parsers (browsers, jq, most languages) reject the whole file.  Written to a
    temporary file and renamed (:func:`atomic_path`).
    """
    path = Path(path)
    text = json.dumps(strict_jsonable(obj), indent=2, allow_nan=False, default=_jsonable)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return path


def strict_jsonable(obj: Any) -> Any:
    """``obj`` with numpy values as Python ones and non-finite floats as None."""
    if isinstance(obj, dict):
        return {k: strict_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _jsonable(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
