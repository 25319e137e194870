"""One-file model storage that loads without executing code.

A model file is a safetensors file: the weights (and any array state such as
noise-model parameters) as tensors, and JSON in the header metadata for the
config, normalisation, calibration and the versions that wrote it.  Loading
never unpickles anything, and a foreign or corrupted file raises
:class:`~napari_duet.ModelFileError` with a one-line reason.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import ModelFileError
from ._versions import versions

if TYPE_CHECKING:
    import torch

FORMAT = "napari-duet"
FORMAT_VERSION = 1
SUFFIX = ".duet"


@dataclass
class ModelFile:
    """Contents of a model file."""

    kind: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


def save_model_file(
    path: str | os.PathLike,
    *,
    kind: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a model file atomically (temporary file, then rename).

    Parameters
    ----------
    kind : str
        Engine name, e.g. ``"nsn2n"`` or ``"denoisplit"``; checked on load.
    config : dict
        JSON-serialisable configuration.
    tensors : dict of str to torch.Tensor
        Weights and array state; moved to CPU and made contiguous.
    extra : dict, optional
        JSON-serialisable extras (normalisation, calibration, training info).
    """
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "kind": kind,
        "config": json.dumps(config),
        "extra": json.dumps(extra or {}),
        "versions": json.dumps(versions()),
    }
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(flat, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_model_header(path: str | os.PathLike) -> dict[str, Any]:
    """Read only the metadata (kind, config, extra, versions), not the weights."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for bad headers
        raise ModelFileError(
            f"{path.name} is not a napari-duet model file (unreadable header: {_short(exc)})"
        ) from None
    return _parse_meta(meta, path)


def load_model_file(
    path: str | os.PathLike, *, kind: str | None = None, device: str | torch.device = "cpu"
) -> ModelFile:
    """Load a model file.

    Parameters
    ----------
    kind : str, optional
        Expected engine name; a file of another kind raises ModelFileError.
    device : str or torch.device
        Where tensors are placed (the ``map_location``).
    """
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            header = _parse_meta(meta, path)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(
            f"{path.name} is corrupted or not a napari-duet model file ({_short(exc)})"
        ) from None
    if kind is not None and header["kind"] != kind:
        raise ModelFileError(
            f"{path.name} is a {header['kind']!r} model, but a {kind!r} model is needed"
        )
    return ModelFile(tensors=tensors, path=path, **header)


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    return path


def _parse_meta(meta: dict[str, str], path: Path) -> dict[str, Any]:
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path.name} is not a napari-duet model file (foreign safetensors)")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = -1
    if version < 1 or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path.name} has model format version {meta.get('format_version')!r}; "
            f"this napari-duet reads versions up to {FORMAT_VERSION}"
        )
    try:
        return {
            "kind": meta["kind"],
            "config": json.loads(meta["config"]),
            "extra": json.loads(meta.get("extra", "{}")),
            "versions": json.loads(meta.get("versions", "{}")),
        }
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path.name} has a damaged header ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:120]
