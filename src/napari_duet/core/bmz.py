"""bioimage.io model packages: writing them, and recognising those napari-duet wrote.

Engine-independent parts of ``duet export-bmz``: the engines (``nsn2n._bmz``,
``denoisplit._bmz``) build the description (``rdf.yaml`` content as a dict) and
the files; :func:`write_duet_package` validates it with ``bioimageio.spec`` (an
optional dependency: ``pip install napari-duet[bmz]``) and writes the zip.

Every package keeps the ``.duet`` file it was made from as an attachment and
names it under ``config.napari_duet``, so napari-duet opens such a zip like the
model file itself (:func:`duet_model_in_package`).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DuetError, DuetInputError

#: Key of napari-duet's entry in a package's ``config``.
CONFIG_KEY = "napari_duet"
#: Name of the attached ``.duet`` file inside a package.
MODEL_FILE = "model.duet"
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
# A package's description is small; a larger one is not read (untrusted input).
_MAX_RDF_BYTES = 1 << 20


def require_bioimageio() -> None:
    """Raise a one-line DuetError when ``bioimageio.spec`` is not installed."""
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise DuetError("exporting to bioimage.io needs bioimageio.spec: "
                        "pip install 'napari-duet[bmz]'") from None


def format_version() -> str:
    """The model format version of the installed ``bioimageio.spec`` (0.5.x)."""
    from bioimageio.spec.model.v0_5 import ModelDescr

    return str(ModelDescr.implemented_format_version)


def write_package(
    description: Mapping[str, Any], files: Mapping[str, Path | bytes | str], output: Path
) -> Path:
    """Validate a model description and write it with its files as a bioimage.io zip.

    Parameters
    ----------
    description : mapping
        The ``rdf.yaml`` content; file fields name entries of ``files``.
    files : mapping of str to Path, bytes or str
        Package file name to a file to copy, or its content.
    output : Path
        The zip to write (replaced atomically).

    Raises
    ------
    DuetError
        If the description does not validate (with the first errors).
    """
    import yaml
    from bioimageio.spec import ValidationContext, load_description, save_bioimageio_package

    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="duet-bmz-") as tmp:
        root = Path(tmp)
        for name, content in files.items():
            target = root / name
            if isinstance(content, Path):
                target.write_bytes(content.read_bytes())
            elif isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        rdf = root / "rdf.yaml"
        rdf.write_text(yaml.safe_dump(dict(description), sort_keys=False), encoding="utf-8")
        # Nothing in the description is remote: validating needs no network.
        with ValidationContext(perform_io_checks=False):
            descr = load_description(rdf, perform_io_checks=False)
        if descr.validation_summary.status not in ("valid-format", "passed"):
            raise DuetError(_invalid_reason(description, descr.validation_summary.errors))
        from .io import atomic_path

        # A private temporary file (mkstemp, its name ends in .zip), renamed when complete.
        with atomic_path(output) as tmp_zip:
            save_bioimageio_package(descr, output_path=tmp_zip)
    return output


def _invalid_reason(description: Mapping[str, Any], errors) -> str:
    """One short line from bioimageio.spec's validation errors."""
    if any(str(e.loc[0]) == "license" for e in errors if e.loc):
        return (f"license {description.get('license')!r} is not an SPDX identifier "
                "(for example CC-BY-4.0, MIT, BSD-3-Clause)")
    reasons = []
    for e in errors[:3]:
        msg = " ".join(str(e.msg).split())
        reasons.append(f"{'.'.join(map(str, e.loc))}: {msg[:120]}")
    return f"the bioimage.io description is not valid ({'; '.join(reasons)})"


def save_npy(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (test tensors)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def cover_png(before: np.ndarray, after: np.ndarray) -> bytes:
    """A 2:1 PNG cover: ``before`` left, ``after`` right, one shared contrast."""
    from matplotlib.image import imsave
    from skimage.transform import resize

    size = 256
    panels = [resize(np.asarray(a, np.float32), (size, size), order=1, anti_aliasing=True)
              for a in (before, after)]
    lo, hi = np.percentile(panels[0], [0.5, 99.5])
    img = np.concatenate(panels, axis=1)
    img = np.clip((img - lo) / max(float(hi - lo), 1e-12), 0, 1)
    buf = io.BytesIO()
    imsave(buf, img, cmap="gray", vmin=0, vmax=1, format="png")
    return buf.getvalue()


def centre_crop(volume: np.ndarray, max_slices: int, max_side: int) -> np.ndarray:
    """The centre of a (Z, Y, X) volume, at most ``max_slices`` x ``max_side``²."""
    sl = []
    for n, cap in zip(volume.shape, (max_slices, max_side, max_side), strict=True):
        start = max(0, (n - cap) // 2)
        sl.append(slice(start, start + min(n, cap)))
    return np.ascontiguousarray(volume[tuple(sl)], dtype=np.float32)


# ------------------------------------------------------------------ writing a model package
# Characters bioimage.io allows in a model name.
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")


def model_name(name: str | None, default_prefix: str, stem: str) -> str:
    """``name`` if bioimage.io accepts it, or ``default_prefix`` and the file's ``stem``.

    Raises
    ------
    DuetInputError
        If ``name`` has characters bioimage.io refuses or is not 5 to 128 long.
    """
    if not name:
        clean = "".join(c if c in _NAME_CHARS else "-" for c in stem)
        return f"{default_prefix} {clean}"[:128]
    if set(name) - _NAME_CHARS or not 5 <= len(name) <= 128:
        raise DuetInputError(f"the model name must be 5 to 128 letters, digits, spaces or "
                             f"_+-() (got {name!r})")
    return name


def check_reproduces(err: float, atol: float, unit: str) -> None:
    """Refuse an export whose module differs from napari-duet's prediction by more than
    ``atol`` (``err`` and ``atol`` in ``unit``, e.g. "in normalised units")."""
    if not err <= atol:
        raise DuetError(f"the exported module does not reproduce napari-duet's prediction "
                        f"(max difference {err:.2g} {unit}); not exported")


def weights_bytes(net) -> bytes:
    """``net``'s state dict as a torch file, under the exported module's ``net.`` prefix."""
    import torch

    buf = io.BytesIO()
    torch.save({f"net.{k}": v.detach().cpu() for k, v in net.state_dict().items()}, buf)
    return buf.getvalue()


def write_duet_package(description: Mapping[str, Any], output: str | os.PathLike, *, net,
                       network_file: str, network_source: str, test_input: np.ndarray,
                       test_output: np.ndarray, cover: bytes, readme: str,
                       model_path: Path) -> Path:
    """Write a napari-duet package: ``net``'s weights, the architecture source, the test
    tensors, cover, README and the ``.duet`` file, under the names that
    :func:`model_description` gives them, validated by :func:`write_package`."""
    files: dict[str, Path | bytes | str] = {
        "weights.pt": weights_bytes(net),
        network_file: network_source,
        "test_input.npy": save_npy(test_input),
        "test_output.npy": save_npy(test_output),
        "cover.png": cover,
        "README.md": readme,
        MODEL_FILE: model_path,
    }
    return write_package(description, files, Path(output))


def tensor_description(tensor_id: str, description: str, axes: list[dict],
                       processing: list[dict], *, output: bool = False) -> dict[str, Any]:
    """One float32 input (or ``output``) of a description, with its test tensor file and
    its pre- (post-) processing steps."""
    test_file = "test_output.npy" if output else "test_input.npy"
    return {
        "id": tensor_id,
        "description": description,
        "axes": axes,
        "test_tensor": {"source": test_file},
        "data": {"type": "float32"},
        "postprocessing" if output else "preprocessing": processing,
    }


def model_description(
    *, name: str, summary: str, authors: list[str], citation: dict, license: str,
    tags: list[str], inputs: list[dict], outputs: list[dict], network_file: str,
    callable_name: str, kwargs: dict, tolerance: dict, architecture_type: str, task: str,
    kind: str, source_file: str, facts: dict,
) -> dict[str, Any]:
    """A bioimage.io model description (``rdf.yaml`` content) of a napari-duet package.

    ``tolerance`` is the reproducibility tolerance of the test output; ``kind``
    (the engine), ``source_file`` (the exported ``.duet`` file's name) and
    ``facts`` (engine-specific) go into napari-duet's entry of ``config``.
    """
    import torch

    from .. import __version__

    duet = {"kind": kind, "model_file": MODEL_FILE, "source_file": source_file,
            "napari_duet_version": __version__, **facts}
    return {
        "type": "model",
        "format_version": format_version(),
        "name": name,
        "description": summary,
        "authors": [{"name": a} for a in authors],
        "cite": [citation],
        "license": license,
        "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "tags": tags,
        "inputs": inputs,
        "outputs": outputs,
        "weights": {"pytorch_state_dict": {
            "source": "weights.pt",
            "architecture": {"source": network_file, "callable": callable_name,
                             "kwargs": kwargs},
            "pytorch_version": torch.__version__.split("+")[0],
        }},
        "attachments": [{"source": MODEL_FILE}],
        "config": {
            "bioimageio": {
                "reproducibility_tolerance": [tolerance],
                "architecture_type": architecture_type,
                "task": task,
            },
            CONFIG_KEY: duet,
        },
    }


# ------------------------------------------------------------------ reading
def _read_description(zf: zipfile.ZipFile) -> dict[str, Any] | None:
    import yaml

    names = set(zf.namelist())
    for name in _RDF_NAMES:
        if name in names:
            if zf.getinfo(name).file_size > _MAX_RDF_BYTES:
                return None
            try:
                data = yaml.safe_load(zf.read(name))
            except yaml.YAMLError:
                return None
            return data if isinstance(data, dict) else None
    return None


# The attached model file: the largest napari-duet writes is a few tens of MiB.  A
# larger entry (declared or actual) is refused: a zip of a few KiB can inflate to GiB.
MAX_MODEL_BYTES = 1 << 30
# What reading a damaged zip can raise: bad CRC or header (BadZipFile), a broken
# deflate stream (zlib.error), a truncated file (EOFError), an unknown method.
_ZIP_ERRORS = (OSError, EOFError, ValueError, NotImplementedError, RuntimeError,
               zipfile.BadZipFile, zlib.error)


def duet_package_entry(path: str | os.PathLike) -> str | None:
    """Name of the attached ``.duet`` file if ``path`` is a package napari-duet wrote, else None."""
    try:
        with zipfile.ZipFile(path) as zf:
            rdf = _read_description(zf)
            if rdf is None:
                return None
            entry = (rdf.get("config") or {}).get(CONFIG_KEY) or {}
            name = entry.get("model_file") if isinstance(entry, dict) else None
            if isinstance(name, str) and name in zf.namelist() and name.endswith(".duet"):
                return name
    except _ZIP_ERRORS:
        return None
    return None


def _copy_bounded(src, dst, limit: int, what: str) -> None:
    """Copy a stream in 1 MiB blocks, refusing more than ``limit`` bytes."""
    total = 0
    while block := src.read(1 << 20):
        total += len(block)
        if total > limit:
            raise DuetInputError(f"{what} inflates to more than {limit >> 20} MiB: "
                                 "not a napari-duet model")
        dst.write(block)


def duet_model_in_package(path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract the ``.duet`` model file of a napari-duet bioimage.io package into ``dest``.

    The entry is read in bounded blocks and refused when its declared or actual
    size exceeds :data:`MAX_MODEL_BYTES` (a decompression bomb); a damaged zip
    (bad CRC, broken stream, truncated) gives a one-line error and no file.
    Use :func:`package_model` for a copy that is removed after use.

    Raises
    ------
    DuetInputError
        If ``path`` is not a bioimage.io package written by napari-duet, or is damaged.
    """
    from .errors import first_line
    from .io import atomic_path

    zname = Path(path).name
    name = duet_package_entry(path)
    if name is None:
        raise DuetInputError(f"{zname} is not a bioimage.io model exported by "
                             "napari-duet (no napari_duet entry in its rdf.yaml)")
    folder = Path(dest)
    # Keep the package's name: the widget shows the model file's name.
    target = folder / (zname.removesuffix(".zip").removesuffix(".bioimage.io") + ".duet")
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(name)
            if info.file_size > MAX_MODEL_BYTES:
                raise DuetInputError(f"{zname}: its model entry declares {info.file_size:,} "
                                     f"bytes, more than {MAX_MODEL_BYTES >> 20} MiB: not a "
                                     "napari-duet model")
            with zf.open(info) as src, atomic_path(target) as tmp, open(tmp, "wb") as dst:
                _copy_bounded(src, dst, MAX_MODEL_BYTES, f"{zname}: its model entry")
    except DuetInputError:
        raise
    except _ZIP_ERRORS as exc:
        raise DuetInputError(f"{zname} is a damaged zip ({first_line(exc)})") from None
    return target


@contextlib.contextmanager
def package_model(path: str | os.PathLike) -> Iterator[Path]:
    """The package's model file, extracted into a temporary folder removed on exit."""
    with tempfile.TemporaryDirectory(prefix="duet-bmz-") as tmp:
        yield duet_model_in_package(path, tmp)
