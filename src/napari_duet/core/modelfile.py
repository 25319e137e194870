"""One-file model storage that loads without executing code.

A model file is a safetensors file: the weights (and any array state such as
noise-model parameters) as tensors, and JSON in the header metadata for the
config, normalisation, calibration and the versions that wrote it.  Loading
never unpickles anything, and a foreign or corrupted file raises
:class:`~napari_duet.ModelFileError` with a one-line reason.

A model file is untrusted input: its header says which network to build, so
a few kilobytes could ask for a network of a hundred gigabytes.  Loaders
therefore pass ``expect`` to :func:`load_model_file`, which builds the
network the header asks for on PyTorch's ``meta`` device (no memory) and
compares its tensor shapes with the shapes the file holds (read from the
safetensors header, no data) before anything is allocated.  The file's own
size bounds its tensors, so a network whose shapes match it is no larger
than the file.  Floating-point tensors must be finite.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelFileError, first_line
from .versions import versions

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
    from .io import atomic_path

    # A private temporary file (mkstemp), renamed when complete: see atomic_path.
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)
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
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    device: str | torch.device = "cpu",
    expect: Callable[[dict[str, Any]], Mapping[str, Sequence[int] | None]] | None = None,
    what: str = "model",
) -> ModelFile:
    """Load a model file.

    Parameters
    ----------
    kind : str, optional
        Expected engine name; a file of another kind raises ModelFileError.
    device : str or torch.device
        Where tensors are placed (the ``map_location``).
    expect : callable, optional
        Called with the parsed header (kind, config, extra, versions) before
        any tensor is read; returns the tensors the header implies, name to
        shape (None: optional, any shape).  The file must hold exactly these
        (see :func:`check_tensor_shapes`).  It should validate the header and
        build networks on the ``meta`` device only (:func:`meta_state_shapes`);
        its exceptions propagate.
    what : str
        What the file should be, for messages ("denoiSplit model").
    """
    from safetensors import safe_open

    path = _existing(path)

    def corrupted(exc: BaseException) -> ModelFileError:
        return ModelFileError(
            f"{path.name} is corrupted or not a napari-duet model file ({_short(exc)})")

    try:  # safetensors raises several types for bad headers
        handle = safe_open(str(path), framework="pt", device=str(device))
    except Exception as exc:
        raise corrupted(exc) from None
    with handle as f:
        try:
            meta = f.metadata() or {}
            names = list(f.keys())  # noqa: SIM118
            # Shapes come from the header: nothing is read or allocated yet.
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in names}
        except Exception as exc:
            raise corrupted(exc) from None
        header = migrate(_parse_meta(meta, path))
        if kind is not None and header["kind"] != kind:
            raise ModelFileError(
                f"{path.name} is a {header['kind']!r} model, but a {kind!r} model is needed"
            )
        if expect is not None:
            check_tensor_shapes(expect(header), shapes, name=path.name, what=what)
        try:
            tensors = {k: f.get_tensor(k) for k in names}
        except Exception as exc:
            raise corrupted(exc) from None
    check_finite_tensors(tensors, name=path.name)
    return ModelFile(tensors=tensors, path=path, **header)


def check_tensor_shapes(
    expected: Mapping[str, Sequence[int] | None],
    actual: Mapping[str, Sequence[int]],
    *,
    name: str = "model file",
    what: str = "model",
) -> None:
    """Raise ModelFileError unless ``actual`` holds exactly the ``expected`` tensors.

    ``expected`` maps tensor names to shapes; a shape of None marks an
    optional tensor of any shape.  Every tensor without None must be present
    with exactly that shape, and no other tensor may be present.
    """
    for key, shape in expected.items():
        if shape is None:
            continue
        if key not in actual:
            raise ModelFileError(
                f"{name} is not a usable {what} (its header needs tensor {key!r} "
                f"{list(shape)}, which the file lacks)")
        if tuple(actual[key]) != tuple(shape):
            raise ModelFileError(
                f"{name} is not a usable {what} (tensor {key!r} is {list(actual[key])} "
                f"in the file, but its header needs {list(shape)})")
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise ModelFileError(
            f"{name} is not a usable {what} (unexpected tensor {extra[0]!r}"
            f"{f' and {len(extra) - 1} more' if len(extra) > 1 else ''})")


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], *, name: str = "model file") -> None:
    """Raise ModelFileError naming the first floating-point tensor with NaN or inf."""
    import torch

    for key, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"{name} holds non-finite values (NaN or inf) in tensor {key!r}")


def meta_state_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of ``build()``'s state dict, built on the ``meta`` device.

    Parameters and buffers on the meta device have shapes but no storage, so
    this costs no memory whatever size the network is.
    """
    import torch

    with torch.device("meta"):
        net = build()
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def file_int(value: Any, field_name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; ValueError naming ``field_name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field_name} must be an integer in {low}..{high}, got {value!r}")
    return value


def file_number(value: Any, field_name: str, *, nonzero: bool = False,
                positive: bool = False) -> float:
    """``value`` as a finite float (nonzero, or > 0); ValueError naming ``field_name``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x):
        raise ValueError(f"{field_name} must be a finite number, got {value!r}")
    if positive and not x > 0:
        raise ValueError(f"{field_name} must be positive, got {value!r}")
    if nonzero and x == 0:
        raise ValueError(f"{field_name} must not be zero")
    return x


def file_normalizer(d: Any, field_name: str):
    """A :class:`~napari_duet.core.intensity.Normalizer` from a header entry, checked.

    The offset must be finite and the scale finite and nonzero (a zero scale
    divides by zero, a NaN one makes every output NaN).
    """
    from .intensity import Normalizer

    if not isinstance(d, Mapping):
        raise ValueError(f"{field_name} must be a mapping, got {type(d).__name__}")
    return Normalizer(offset=file_number(d.get("offset"), f"{field_name}.offset"),
                      scale=file_number(d.get("scale"), f"{field_name}.scale", nonzero=True))


# The NS-N2N networks that read neighbouring slices; any other is the paper's 2D U-Net.
_NSN2N_SLICE_ARCHS = ("nsn2n-context", "nsn2n-blind")


def migrate(header: dict[str, Any]) -> dict[str, Any]:
    """Bring the header of a file written by an earlier napari-duet to the current format.

    The one place that knows older files; the engines' loaders read current headers
    only.  Format version 1 gained fields over time:

    * NS-N2N files written before the 2.5D and blind-spot networks hold the paper's
      2D U-Net: their ``context`` is ``"2d"``;
    * NS-N2N files written before noise models: Gaussian noise, no transform;
    * denoiSplit files written before N-channel support hold two channels with no
      ``n_channels`` (the configuration's default, 2) and noise models ``a`` and ``b``:
      readable as they are.

    Run-time options some files also saved are dropped by the configurations'
    ``from_model_dict``.  Returns a new header; ``header`` is left as it is.
    """
    header = {**header, "config": dict(header["config"]), "extra": dict(header["extra"])}
    config, extra = header["config"], header["extra"]
    if header["kind"] == "nsn2n":
        network = extra.get("network")
        if isinstance(network, dict) and network.get("arch") not in _NSN2N_SLICE_ARCHS:
            config["context"] = "2d"
        if not extra.get("noise_model"):
            extra["noise_model"] = {"kind": "gaussian"}
    return header


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
            f"{path.name} has model format version {repr(meta.get('format_version'))[:40]}; "
            f"this napari-duet reads versions up to {FORMAT_VERSION}"
        )
    try:
        header = {
            "kind": meta["kind"],
            "config": json.loads(meta["config"]),
            "extra": json.loads(meta.get("extra", "{}")),
            "versions": json.loads(meta.get("versions", "{}")),
        }
    except (KeyError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{path.name} has a damaged header ({_short(exc)})") from None
    except ValueError:
        # Python refuses to convert integers of more than 4300 digits (a few bytes of
        # header can hold one): a damaged or hostile file, not a traceback.
        raise ModelFileError(f"{path.name} has a damaged header (a number in it is too "
                             "long)") from None
    for key in ("config", "extra", "versions"):
        if not isinstance(header[key], dict):
            raise ModelFileError(f"{path.name} has a damaged header ({key} is not a mapping)")
    return header


def _short(exc: BaseException) -> str:
    return first_line(exc)
