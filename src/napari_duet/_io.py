"""Reading and writing images and reports for the CLI and benchmarks."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import DuetInputError, first_line


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF (tifffile) or any format scikit-image reads.

    Raises
    ------
    DuetInputError
        If the file does not exist or cannot be read as an image.
    """
    path = Path(path)
    if not path.is_file():
        raise DuetInputError(f"image file not found: {path}")
    tiff = path.suffix.lower() in (".tif", ".tiff")
    with _tiff_log() as logged:
        try:
            if tiff:
                import tifffile

                with tifffile.TiffFile(str(path)) as tif:
                    series = tif.series[0] if tif.series else None
                    if series is not None:
                        # A few KiB of TIFF can declare any shape: check before allocating.
                        require_memory(array_bytes(series.shape, series.dtype),
                                       f"reading {path.name} {tuple(series.shape)}",
                                       CHUNKED_HINT)
                arr = tifffile.imread(str(path))
            else:
                from skimage.io import imread

                arr = imread(str(path))
        except (MemoryError, DuetInputError):
            raise  # not a bad file: the caller reports running out of memory
        except Exception as exc:
            if tiff:
                raise DuetInputError(_damaged_tiff(path, logged, exc)) from None
            raise DuetInputError(f"cannot read {path.name} as an image: "
                                 f"{first_line(exc)}") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        if tiff and (logged or arr.size == 0):
            raise DuetInputError(_damaged_tiff(path, logged))
        raise DuetInputError(f"{path.name} holds no usable image data (dtype {arr.dtype})")
    return arr


@contextlib.contextmanager
def _tiff_log() -> Iterator[list[str]]:
    """Collect what tifffile logs while reading (a damaged file's reason) instead of
    printing it above our own one-line error."""
    import logging

    logger = logging.getLogger("tifffile")
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _damaged_tiff(path: Path, logged: list[str], exc: BaseException | None = None) -> str:
    """One line: the TIFF is damaged, and why (tifffile's reason, without its object repr)."""
    reason = first_line(exc) if exc is not None else ""
    if not reason and logged:
        reason = re.sub(r"^<[^>]*>\s*", "", logged[0])
    reason = reason or "no image in it"
    return (f"cannot read {path.name}: it is a damaged TIFF file ({reason[:100]}); "
            "export it again from the source")


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


def read_pixel_info(path: str | os.PathLike) -> dict[str, Any]:
    """Axes and pixel sizes a TIFF states explicitly (empty for other formats).

    Keys, each only when the file gives it: ``axes`` (e.g. ``"ZYX"``, from
    ImageJ, OME or shaped metadata), ``resolution`` ((x, y) pixels per unit)
    and ``resolutionunit`` (TIFF tags), ``spacing`` (z step) and ``unit``
    (ImageJ or shaped metadata).  Pass it to :func:`write_tiff` as
    ``pixel_info`` to keep them in outputs.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return {}
    import tifffile

    info: dict[str, Any] = {}
    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            page = tif.pages[0]
            shaped = (tif.shaped_metadata or ({},))[0] if tif.is_shaped else {}
            ij = tif.imagej_metadata or {}
            if tif.is_imagej or tif.is_ome or "axes" in shaped:
                info["axes"] = str(series.axes)
            tags = page.tags
            if "XResolution" in tags and "YResolution" in tags:
                res = tuple(float(v) for v in page.resolution)
                unit = int(page.resolutionunit)
                if res != (1.0, 1.0) or unit != 1:
                    info["resolution"], info["resolutionunit"] = res, unit
            for key in ("spacing", "unit"):
                value = ij.get(key, shaped.get(key))
                if value is not None:
                    info[key] = value
    except Exception:  # metadata is a nicety: the pixels were read by read_image
        return {}
    return info



# ---------------------------------------------------------------------- output safety
# Every output path is checked before a command starts its work, and every result
# goes to a temporary file beside its destination that is renamed over it only
# once complete: an interrupted or failed write never leaves a truncated file and
# never destroys the previous one.

IMAGE_OUTPUT_SUFFIXES = (".tif", ".tiff")


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(Path(path).expanduser())))


def _same(a: Path, b: Path) -> bool:
    """Same resolved path, or the same existing file (hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(a: Path, b: Path) -> bool:
    """``a`` lies inside the folder (or zarr store) ``b``."""
    return b.resolve() in a.resolve().parents


def _first_existing(folder: Path) -> Path:
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def _probe_writable(folder: Path) -> str | None:
    """None when a file can be created in ``folder`` (or its nearest existing ancestor)."""
    base = _first_existing(folder)
    if not base.is_dir():
        return f"{base} is not a folder"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".duet-probe-", dir=base)
    except OSError as exc:
        return f"{exc.strerror or _reason(exc)} ({base})"
    os.close(fd)
    os.remove(tmp)
    return None


def check_outputs(inputs: Iterable[str | os.PathLike | None],
                  outputs: Mapping[str, str | os.PathLike | None]
                  | Iterable[tuple[str, str | os.PathLike | None]], *,
                  folders: Mapping[str, str | os.PathLike | None] | None = None) -> None:
    """Check, before any work, that a command can write its outputs without losing data.

    Parameters
    ----------
    inputs
        Files (or zarr stores) the command reads; None entries are skipped.
    outputs
        ``{label: path}`` of the files (or ``.zarr`` stores) it writes, e.g.
        ``{"-o": "den.tif", "report": "den.json"}`` (or ``(label, path)`` pairs,
        where labels repeat); the label names the output in messages.  None
        entries are skipped.
    folders
        ``{label: folder}`` of output folders (created later by the writers).

    Raises
    ------
    DuetInputError
        With a one-line reason: an output is an input (or inside one, or holds
        one), two outputs share a path, an output is a folder where a file is
        expected (or a file where a folder is), or its folder cannot be written.
    """
    ins = [_absolute(p) for p in inputs if p is not None]
    items: list[tuple[str, Path, str]] = []
    for label, path in (folders or {}).items():
        if path is not None:
            items.append((label, _absolute(path), "folder"))
    pairs = outputs.items() if isinstance(outputs, Mapping) else outputs
    for label, path in pairs:
        if path is not None:
            items.append((label, _absolute(path), "store" if is_zarr_path(path) else "file"))
    probed: dict[Path, str | None] = {}
    for i, (label, path, kind) in enumerate(items):
        for src in ins:
            # A zarr output is rewritten whole: no input may lie inside it either.
            if _same(path, src) or _inside(path, src) or (kind == "store"
                                                            and _inside(src, path)):
                what = ("is" if _same(path, src) else "lies inside" if _inside(path, src)
                        else "holds")
                raise DuetInputError(f"{label} {path} {what} the input {src.name}: "
                                     "choose another output path")
        for other_label, other, other_kind in items[:i]:
            if (_same(path, other) or (other_kind == "store" and _inside(path, other))
                    or (kind == "store" and _inside(other, path))):
                raise DuetInputError(f"{other_label} and {label} are both {path}: "
                                     "give each output its own path")
        if kind == "file" and path.is_dir():
            raise DuetInputError(f"{label} {path} is a folder: give a file name")
        if kind != "file" and path.exists() and not path.is_dir():
            raise DuetInputError(f"{label} {path} is a file: give a folder name")
        folder = path if kind == "folder" else path.parent
        if folder not in probed:
            probed[folder] = _probe_writable(folder)
        if probed[folder]:
            raise DuetInputError(f"cannot write {label} {path}: {probed[folder]}; "
                                 "choose another output folder")


def require_image_suffix(label: str, path: str | os.PathLike | None,
                         suffixes: tuple[str, ...] = IMAGE_OUTPUT_SUFFIXES,
                         zarr: bool = True) -> None:
    """Refuse an image output whose name does not end in an image format (e.g. ``den.json``)."""
    if path is None:
        return
    if Path(path).suffix.lower() in suffixes or (zarr and is_zarr_path(path)):
        return
    names = ", ".join(suffixes + ((".zarr",) if zarr else ()))
    raise DuetInputError(f"{label} {path}: an image is written there, give a name ending "
                         f"in {names}")


def remove_stale_outputs(folder: str | os.PathLike, *, names: Iterable[str] = (),
                         pattern: str | None = None, keep: Iterable[str] = ()) -> list[Path]:
    """Remove from an output folder the files an earlier run wrote that this run will not.

    Only files named in ``names`` or whose name fully matches the regular
    expression ``pattern`` are candidates; those in ``keep`` (what this run
    writes) stay, to be replaced.  Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keep = set(keep)
    wanted = set(names)
    removed = []
    for entry in folder.iterdir():
        name = entry.name
        if name in keep or not entry.is_file():
            continue
        if name in wanted or (pattern is not None and re.fullmatch(pattern, name)):
            entry.unlink()
            removed.append(entry)
    return removed


def _umask() -> int:
    """The process umask, without changing it where the OS reports it (Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # brief swap elsewhere; the value is restored at once
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree at ``path`` (never following a link)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A new, private temporary file beside ``path``, renamed to it when the block completes.

    The file is created by :func:`tempfile.mkstemp` (``O_CREAT | O_EXCL``, an
    unpredictable name, mode 0600 until renamed), so nobody can plant a
    symlink at its name beforehand and have the result written through it onto
    another file.  Its name starts with ``.partial-`` and ends with the
    destination's name (format detection by extension still works); writers
    open it by name and overwrite it.  On success it gets the mode of any new
    file (umask) and replaces ``path``.  On any exception, including
    KeyboardInterrupt, the temporary file is removed and ``path`` is untouched;
    an OSError names ``path``, not the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".partial-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise OSError(exc.errno, exc.strerror or _reason(exc), str(path)) from exc
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the system cannot (the caller then renames twice)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # file system or kernel without exchange
    raise OSError(err, os.strerror(err), str(b))


def replace_tree(staged: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Put the complete folder (or zarr store) ``staged`` at ``path``, replacing what is there.

    On Linux the two are exchanged in one atomic step, so ``path`` always holds
    one complete result, the earlier or the new one, whenever the process is
    killed.  Elsewhere the earlier ``path`` is moved aside under a fresh private
    name first and removed only once ``staged`` is in place (after a kill
    between the two renames it survives under ``.partial-old-*`` beside it).
    """
    staged, path = Path(staged), Path(path)
    if path.is_dir() and not path.is_symlink() and _exchange(staged, path):
        _remove(staged)  # now the earlier result
        return path
    aside = None
    if path.exists() or path.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=f".partial-old-{path.name}-", dir=path.parent))
        os.replace(path, aside / "old")
    try:
        os.replace(staged, path)
    except BaseException:
        if aside is not None and not path.exists():
            os.replace(aside / "old", path)
            aside.rmdir()
        raise
    if aside is not None:
        _remove(aside)
    return path


# ---------------------------------------------------------------------- result sets
MANIFEST_KEY = "manifest"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ResultSet:
    """Files of one run written into a folder as a set, its JSON report last as the manifest.

    Use as a context manager: write every file at :meth:`path` (a private
    staging folder inside ``folder``), the report at :meth:`path` of
    ``report``.  When the block completes, the earlier report is removed
    first, then the earlier run's files that this run does not write
    (``names``/``pattern``, as :func:`remove_stale_outputs`), then the new
    files are renamed into ``folder``, and the report goes in last with a
    ``"manifest"`` entry: the size and SHA-256 of exactly the files of this
    run.  So a report in the folder always describes a complete set
    (:func:`verify_result_set` checks it), and an interruption at any point
    leaves either the earlier complete set or no report.  On an exception the
    staging folder is removed and ``folder`` is untouched.
    """

    def __init__(self, folder: str | os.PathLike, *, report: str = "report.json",
                 names: Iterable[str] = (), pattern: str | None = None) -> None:
        self.folder = Path(folder)
        self.report = report
        self.names = tuple(names)
        self.pattern = pattern
        self.staging: Path | None = None

    def __enter__(self) -> ResultSet:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=".partial-set-", dir=self.folder))
        return self

    def path(self, name: str) -> Path:
        """Where to write the file ``name`` of the set (inside the staging folder)."""
        if self.staging is None:
            raise RuntimeError("ResultSet.path outside its with block")
        if Path(name).name != name:
            raise ValueError(f"a result set holds plain file names, got {name!r}")
        return self.staging / name

    def __exit__(self, exc_type, exc, tb) -> None:
        staging, self.staging = self.staging, None
        if staging is None:
            return
        try:
            if exc_type is None:
                self._commit(staging)
        finally:
            _remove(staging)
        if isinstance(exc, OSError) and exc.filename and staging in Path(exc.filename).parents:
            # Name the result's path, not the staging folder's.
            name = self.folder / Path(exc.filename).relative_to(staging)
            raise OSError(exc.errno, exc.strerror or _reason(exc), str(name)) from exc

    def _commit(self, staging: Path) -> None:
        report_tmp = staging / self.report
        if not report_tmp.is_file():
            raise RuntimeError(f"result set without its report {self.report}")
        files = sorted(p.name for p in staging.iterdir()
                       if p.is_file() and p.name != self.report)
        manifest = {n: {"bytes": (staging / n).stat().st_size,
                        "sha256": _file_digest(staging / n)} for n in files}
        report = json.loads(report_tmp.read_text())
        report[MANIFEST_KEY] = manifest
        report_tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        # From here the folder holds no report until the new set is complete.
        (self.folder / self.report).unlink(missing_ok=True)
        remove_stale_outputs(self.folder, names=self.names, pattern=self.pattern,
                             keep=[*files, self.report])
        for name in files:
            os.replace(staging / name, self.folder / name)
        os.chmod(report_tmp, 0o666 & ~_umask())
        os.replace(report_tmp, self.folder / self.report)


def verify_result_set(folder: str | os.PathLike, report: str = "report.json", *,
                      digest: bool = True) -> dict[str, Any]:
    """The report of the complete result set in ``folder``; DuetInputError otherwise.

    Trusts the files only when the report exists and every file its manifest
    lists is there with its size (and, with ``digest``, its SHA-256).
    """
    folder = Path(folder)
    path = folder / report
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DuetInputError(f"{folder} holds no complete result ({report} is missing: "
                             "the run that wrote it was interrupted)") from None
    except (OSError, ValueError) as exc:
        raise DuetInputError(f"cannot read {path}: {_reason(exc)}") from None
    manifest = data.get(MANIFEST_KEY) if isinstance(data, dict) else None
    if not isinstance(manifest, dict):
        raise DuetInputError(f"{path} lists no files ({MANIFEST_KEY!r} is missing)")
    for name, entry in manifest.items():
        f = folder / name
        if not f.is_file() or f.stat().st_size != entry.get("bytes") or (
                digest and _file_digest(f) != entry.get("sha256")):
            raise DuetInputError(f"{f} is not the file {report} lists: the folder mixes runs")
    return data


def write_tiff(path: str | os.PathLike, array: np.ndarray, *,
               pixel_info: dict[str, Any] | None = None, **metadata: Any) -> Path:
    """Write ``array`` as a TIFF, creating parent folders; any number of dimensions round-trips.

    ``pixel_info`` (from :func:`read_pixel_info`) keeps the input's pixel size
    (resolution tags) and its ``spacing``/``unit``; its ``axes`` are kept when
    they fit the array's dimensions (or, less the trailing colour axis, for a
    mask of a colour image).
    The file is written under a temporary name and renamed when complete
    (:func:`atomic_path`): an interrupted write leaves any previous file intact.
    """
    import tifffile

    path = Path(path)
    array = np.asarray(array)
    metadata = dict(metadata)
    kwargs: dict[str, Any] = {}
    info = pixel_info or {}
    axes = info.get("axes")
    if axes and len(axes) == array.ndim + 1 and axes[-1] in "SC":
        axes = axes[:-1]
    if axes and len(axes) == array.ndim:
        metadata.setdefault("axes", axes)
    for key in ("spacing", "unit"):
        if key in info:
            metadata.setdefault(key, info[key])
    if "resolution" in info:
        kwargs["resolution"] = tuple(info["resolution"])
        kwargs["resolutionunit"] = info.get("resolutionunit", 1)
    if array.ndim >= 3 and array.shape[-1] not in (3, 4):
        # Grey planes: without this tifffile stores a leading axis of 3 or 4, e.g. a
        # (3, Y, X) stack, as the colour planes of one RGB image.
        kwargs["photometric"] = "minisblack"
    # A metadata dict (even empty) makes tifffile record the shape, so (N, 2, Y, X) reads back
    # as (N, 2, Y, X) rather than (2N, Y, X).
    with atomic_path(path) as tmp:
        tifffile.imwrite(str(tmp), array, metadata=metadata, **kwargs)
    return path


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


# ---------------------------------------------------------------------- fingerprints
def content_fingerprint(array, *, axis: int = 0, samples: int = 16,
                        leaf_bytes: int = 4 << 20) -> str:
    """SHA-256 of an array's shape, dtype and a fixed sample of its values (cheap, lazy).

    Reads ``samples`` evenly spaced indices (first and last included) along
    ``axis``, then fewer along each remaining axis in order, until a piece is at most
    ``leaf_bytes``: a few MiB of any volume, so two inputs of the same name and
    shape but other data are told apart without reading everything.  This is
    what every resume and checkpoint compares to decide "same input".
    """
    shape = tuple(int(s) for s in array.shape)
    dtype = np.dtype(array.dtype)
    h = hashlib.sha256(f"{shape}|{dtype.str}".encode())
    if not shape:
        h.update(np.ascontiguousarray(np.asarray(array[()])).tobytes())
        return h.hexdigest()
    axis = axis % len(shape)
    order = [axis] + [a for a in range(len(shape)) if a != axis]

    def visit(fixed: dict[int, int]) -> None:
        rest = [a for a in order if a not in fixed]
        size = int(np.prod([shape[a] for a in rest], dtype=np.int64)) * dtype.itemsize
        # Never the whole array at once: lazy layers may be read one slice at a time only.
        if (fixed and size <= leaf_bytes) or len(rest) == 1:
            sel = tuple(fixed.get(a, slice(None)) for a in range(len(shape)))
            h.update(np.ascontiguousarray(np.asarray(array[sel])).tobytes())
            return
        a = rest[0]
        # Fewer indices deeper down: a few hundred pieces at most, whatever the rank.
        k = max(2, samples // 4 ** len(fixed))
        for i in sorted({int(round(v)) for v in np.linspace(0, shape[a] - 1,
                                                            min(shape[a], k))}):
            visit({**fixed, a: i})

    visit({})
    return h.hexdigest()


# ---------------------------------------------------------------------- large images
# Lazy reading (OME-Zarr, plain zarr, TIFF through tifffile's zarr interface) and
# chunked OME-Zarr writing, for data larger than memory.  zarr is imported only here.

NGFF_VERSIONS = ("0.4", "0.5")
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
# TIFF axis letters (tifffile) -> NGFF axis names; other letters keep their own name.
_TIFF_AXES = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}


@dataclass(frozen=True)
class ImageMeta:
    """Axes, physical pixel size and units of an image, one entry per dimension.

    ``axes`` are NGFF names (``"t"``, ``"c"``, ``"z"``, ``"y"``, ``"x"``, or the
    file's own), ``scale`` the pixel size along each axis (1.0 when unknown),
    ``units`` NGFF unit names or None.
    """

    axes: tuple[str, ...]
    scale: tuple[float, ...]
    units: tuple[str | None, ...]

    @classmethod
    def default(cls, ndim: int) -> ImageMeta:
        """Axes guessed from the number of dimensions, unit pixel size."""
        names = ("t", "c", "z", "y", "x")
        axes = names[-ndim:] if ndim <= 5 else tuple(f"dim_{i}" for i in range(ndim - 5)) + names
        return cls(tuple(axes), (1.0,) * ndim, (None,) * ndim)

    def pixel_info(self) -> dict[str, Any]:
        """The TIFF ``pixel_info`` for :func:`write_tiff` (axes, resolution, spacing, unit)."""
        info: dict[str, Any] = {"axes": "".join(
            {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(a, "Q") for a in self.axes)}
        if "y" in self.axes and "x" in self.axes:
            sy, sx = self.scale[self.axes.index("y")], self.scale[self.axes.index("x")]
            if (sx, sy) != (1.0, 1.0) and sx > 0 and sy > 0:
                info["resolution"] = (1.0 / sx, 1.0 / sy)
                info["resolutionunit"] = 1
        if "z" in self.axes and self.scale[self.axes.index("z")] != 1.0:
            info["spacing"] = self.scale[self.axes.index("z")]
        unit = next((u for a, u in zip(self.axes, self.units, strict=True)
                     if u and a in "xyz"), None)
        if unit:
            info["unit"] = {"micrometer": "um"}.get(unit, unit)
        return info


def is_zarr_path(path: str | os.PathLike) -> bool:
    """True for ``*.zarr`` paths (including ``*.ome.zarr``)."""
    return str(path).rstrip("/\\").lower().endswith(".zarr")


def is_tiff_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in (".tif", ".tiff")


def open_image(path: str | os.PathLike):
    """Open an image for reading without loading it when the format allows.

    OME-Zarr (NGFF 0.4/0.5: level 0 of the first multiscale image) and plain
    zarr arrays give a read-only zarr array; TIFF/OME-TIFF give a zarr array over
    the file (tifffile's zarr interface, pages read on access); other formats
    scikit-image reads are read into memory.

    Returns
    -------
    array, ImageMeta
        The array (index it to read) and its axes, pixel size and units.

    Raises
    ------
    DuetInputError
        Missing file, unreadable data or metadata, unsupported dtype.
    """
    path = Path(path)
    if is_zarr_path(path):
        arr, meta = _open_zarr(path)
    elif is_tiff_path(path):
        arr, meta = _open_tiff(path)
    else:
        arr = read_image(path)
        meta = ImageMeta.default(arr.ndim)
    if np.dtype(arr.dtype).kind not in "biuf" or 0 in arr.shape or len(arr.shape) == 0:
        raise DuetInputError(f"{path.name} holds no usable image data (dtype {arr.dtype})")
    return arr, meta


def _reason(exc: BaseException) -> str:
    return first_line(exc)


def _open_tiff(path: Path):
    import tifffile
    import zarr

    if not path.is_file():
        raise DuetInputError(f"image file not found: {path}")
    with _tiff_log() as logged:
        try:
            with tifffile.TiffFile(str(path)) as tif:
                if not tif.series or not len(tif.pages):
                    raise DuetInputError(_damaged_tiff(path, logged))
                series = tif.series[0]
                tiff_axes = str(series.axes)
                ome_sizes = _ome_physical_sizes(tif) if tif.is_ome else {}
            store = tifffile.imread(str(path), aszarr=True, series=0, level=0)
            arr = zarr.open_array(store, mode="r")
        except DuetInputError:
            raise
        except Exception as exc:
            raise DuetInputError(_damaged_tiff(path, logged, exc)) from None
    axes = tuple(_TIFF_AXES.get(a, a.lower()) for a in tiff_axes)
    if len(axes) != arr.ndim or len(set(axes)) != len(axes):
        axes = ImageMeta.default(arr.ndim).axes
    scale, units = [1.0] * arr.ndim, [None] * arr.ndim
    info = read_pixel_info(path)
    if "resolution" in info:
        rx, ry = info["resolution"]
        for name, r in (("x", rx), ("y", ry)):
            if name in axes and r > 0:
                scale[axes.index(name)] = 1.0 / float(r)
    if "spacing" in info and "z" in axes:
        scale[axes.index("z")] = float(info["spacing"])
    unit = info.get("unit")
    for name, (size, u) in ome_sizes.items():
        if name in axes:
            scale[axes.index(name)] = size
            units[axes.index(name)] = u
    if unit and not ome_sizes:
        unit = {"um": "micrometer", "µm": "micrometer", "\\u00B5m": "micrometer",
                "micron": "micrometer", "nm": "nanometer"}.get(str(unit), str(unit))
        for name in "zyx":
            if name in axes:
                units[axes.index(name)] = unit
    return arr, ImageMeta(axes, tuple(scale), tuple(units))


def _ome_physical_sizes(tif) -> dict[str, tuple[float, str | None]]:
    """PhysicalSize{X,Y,Z} of the first OME image: {axis: (size, unit)}."""
    import tifffile

    try:
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
        image = ome["Image"][0] if isinstance(ome["Image"], list) else ome["Image"]
        pixels = image["Pixels"]
    except Exception:
        return {}
    units = {"µm": "micrometer", "um": "micrometer", "nm": "nanometer", "mm": "millimeter"}
    out = {}
    for name in "xyz":
        size = pixels.get(f"PhysicalSize{name.upper()}")
        if size is not None:
            unit = pixels.get(f"PhysicalSize{name.upper()}Unit", "µm")
            out[name] = (float(size), units.get(str(unit), str(unit)))
    return out


def _multiscales(attrs: dict) -> list | None:
    """The NGFF ``multiscales`` list of a group's attributes (0.5: under ``ome``)."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and isinstance(ome.get("multiscales"), list):
        return ome["multiscales"]
    ms = attrs.get("multiscales")
    return ms if isinstance(ms, list) else None


def _scale_of(transforms) -> list[float] | None:
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale":
            return [float(v) for v in t["scale"]]
    return None


def _open_zarr(path: Path):
    import zarr

    if not path.exists():
        raise DuetInputError(f"image file not found: {path}")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise DuetInputError(f"cannot read {path.name} as zarr: {_reason(exc)}") from None
    if isinstance(node, zarr.Array):
        return node, ImageMeta.default(node.ndim)
    ms = _multiscales(dict(node.attrs))
    if not ms:
        raise DuetInputError(f"{path.name} is a zarr group without NGFF multiscales metadata")
    try:
        image = ms[0]
        ds0 = image["datasets"][0]
        arr = node[str(ds0["path"])]
        axes_raw = image.get("axes") or []
        axes = tuple(a["name"] if isinstance(a, dict) else str(a) for a in axes_raw)
        units = tuple(a.get("unit") if isinstance(a, dict) else None for a in axes_raw)
        scale = _scale_of(ds0.get("coordinateTransformations")) or [1.0] * arr.ndim
        outer = _scale_of(image.get("coordinateTransformations"))
        if outer:
            scale = [a * b for a, b in zip(scale, outer, strict=True)]
    except Exception as exc:
        raise DuetInputError(f"{path.name} has unreadable NGFF metadata: {_reason(exc)}") from None
    if not isinstance(arr, zarr.Array):
        raise DuetInputError(f"{path.name}: multiscale dataset {ds0['path']!r} is not an array")
    if len(axes) != arr.ndim:
        default = ImageMeta.default(arr.ndim)
        axes, units = default.axes, default.units
    if len(scale) != arr.ndim:
        scale = [1.0] * arr.ndim
    return arr, ImageMeta(axes, tuple(float(s) for s in scale), tuple(units))


def _ngff_axes(meta: ImageMeta) -> list[dict[str, Any]]:
    out = []
    for name, unit in zip(meta.axes, meta.units, strict=True):
        ax: dict[str, Any] = {"name": name}
        if name in _AXIS_TYPES:
            ax["type"] = _AXIS_TYPES[name]
        if unit and ax.get("type") in ("space", "time"):
            ax["unit"] = unit
        out.append(ax)
    return out


def _plane_axes(meta: ImageMeta) -> tuple[int, int]:
    """The two axes the pyramid halves: y and x when named, else the last two."""
    if "y" in meta.axes and "x" in meta.axes:
        return meta.axes.index("y"), meta.axes.index("x")
    n = len(meta.axes)
    return n - 2, n - 1


def _level_scale(meta: ImageMeta, level: int) -> tuple[list[float], list[float]]:
    scale, trans = list(meta.scale), [0.0] * len(meta.scale)
    for a in _plane_axes(meta):
        scale[a] = meta.scale[a] * 2**level
        trans[a] = meta.scale[a] * (2**level - 1) / 2
    return scale, trans


def _set_ngff_metadata(group, meta: ImageMeta, n_levels: int, version: str,
                       name: str = "image") -> None:
    datasets = []
    for level in range(n_levels):
        scale, trans = _level_scale(meta, level)
        ct: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if any(trans):
            ct.append({"type": "translation", "translation": trans})
        datasets.append({"path": str(level), "coordinateTransformations": ct})
    ms = {"name": name, "axes": _ngff_axes(meta), "datasets": datasets,
          "type": "mean" if n_levels > 1 else None}
    ms = {k: v for k, v in ms.items() if v is not None}
    if version == "0.4":
        group.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        ome = dict(group.attrs.get("ome") or {})
        ome.update({"version": "0.5", "multiscales": [ms]})
        group.attrs["ome"] = ome


def default_chunks(shape: tuple[int, ...], meta: ImageMeta | None = None,
                   plane: int = 512, depth: int = 16) -> tuple[int, ...]:
    """Chunks for an OME-Zarr level: up to ``plane`` px in y/x, ``depth`` in z, 1 elsewhere."""
    meta = meta or ImageMeta.default(len(shape))
    py, px = _plane_axes(meta)
    out = []
    for a, n in enumerate(shape):
        if a in (py, px):
            out.append(min(n, plane))
        elif meta.axes[a] == "z":
            out.append(min(n, depth))
        else:
            out.append(1)
    return tuple(out)


def create_ome_zarr(path: str | os.PathLike, shape: tuple[int, ...], dtype, meta: ImageMeta, *,
                    chunks: tuple[int, ...] | None = None, version: str = "0.5",
                    attributes: dict[str, Any] | None = None):
    """Create an OME-Zarr image (level 0 only, zeros) to be filled chunk by chunk.

    Returns the zarr array of level 0; :func:`build_pyramid` adds the lower
    resolutions once it is filled.  ``version`` "0.5" writes zarr v3, "0.4" zarr v2.
    """
    import zarr

    if version not in NGFF_VERSIONS:
        raise DuetInputError(f"NGFF version must be one of {NGFF_VERSIONS}, got {version!r}")
    if len(meta.axes) != len(shape):
        raise DuetInputError(f"{len(meta.axes)} axes for a {len(shape)}D image")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            # Never deleted here: a chunked run builds its store beside the earlier
            # result and swaps it in only when complete (``replace_tree``).
            raise DuetInputError(f"{path} exists: remove it or choose another output")
        group = zarr.open_group(str(path), mode="w-", zarr_format=3 if version == "0.5" else 2)
        kwargs: dict[str, Any] = {}
        if version == "0.5":
            kwargs["dimension_names"] = list(meta.axes)
        else:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        arr = group.create_array(
            "0", shape=tuple(int(s) for s in shape), dtype=np.dtype(dtype),
            chunks=tuple(chunks or default_chunks(tuple(shape), meta)), fill_value=0, **kwargs)
        _set_ngff_metadata(group, meta, 1, version)
        for k, v in (attributes or {}).items():
            group.attrs[k] = strict_jsonable(v)
    except DuetInputError:
        raise
    except OSError as exc:
        raise DuetInputError(f"cannot write {path}: {_reason(exc)}") from None
    return arr


def create_ome_zarr_labels(image: str | os.PathLike, name: str, shape: tuple[int, ...], dtype,
                           meta: ImageMeta, *, chunks: tuple[int, ...] | None = None):
    """Add an NGFF label image ``labels/<name>`` (one level, zeros) to an OME-Zarr image.

    The image at ``image`` must exist (:func:`create_ome_zarr`); the label image
    gets its NGFF version and ``meta``'s axes and scale.  Returns its level-0 array.
    """
    import zarr

    version = ngff_version(zarr.open_group(str(image), mode="r"))
    arr = create_ome_zarr(Path(image) / "labels" / name, shape, dtype, meta, chunks=chunks,
                          version=version)
    labels = zarr.open_group(str(Path(image) / "labels"), mode="a",
                             zarr_format=3 if version == "0.5" else 2)
    member = zarr.open_group(str(Path(image) / "labels" / name), mode="r+")
    source = {"source": {"image": "../../"}}
    if version == "0.4":
        labels.attrs["labels"] = [name]
        member.attrs["image-label"] = {"version": "0.4", **source}
    else:
        labels.attrs["ome"] = {"version": "0.5", "labels": [name]}
        ome = dict(member.attrs["ome"])
        ome["image-label"] = source
        member.attrs["ome"] = ome
    return arr


def ngff_version(group) -> str:
    """NGFF version of an OME-Zarr group written by :func:`create_ome_zarr`."""
    return "0.5" if isinstance(group.attrs.get("ome"), dict) else "0.4"


def auto_levels(shape: tuple[int, ...], meta: ImageMeta, max_levels: int = 4,
                min_size: int = 256) -> int:
    """Pyramid levels: halve y/x while the plane is larger than ``min_size`` (at most 4)."""
    py, px = _plane_axes(meta)
    n, size = 1, max(shape[py], shape[px])
    while n < max_levels and size > min_size:
        size = (size + 1) // 2
        n += 1
    return n


def _halve(block: np.ndarray, axes: tuple[int, int], dtype) -> np.ndarray:
    """Mean of 2x2 blocks over ``axes`` (odd sizes: the last row/column is repeated)."""
    x = block.astype(np.float64)
    for a in axes:
        if x.shape[a] % 2:
            edge = np.take(x, [-1], axis=a)
            x = np.concatenate([x, edge], axis=a)
        n = x.shape[a] // 2
        x = np.take(x, np.arange(0, 2 * n, 2), axis=a) + np.take(x, np.arange(1, 2 * n, 2), axis=a)
        x = x / 2
    if np.dtype(dtype).kind in "iub":
        x = np.rint(x)
    return x.astype(dtype)


def build_pyramid(path: str | os.PathLike, levels: int | None = None) -> int:
    """Add lower resolutions (y/x halved per level, 2x2 mean) to an OME-Zarr image.

    Reads level 0 block by block (bounded memory), writes levels ``1..levels-1``
    and lists them in the NGFF metadata.  ``levels`` None: :func:`auto_levels`.
    Returns the number of levels.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    version = ngff_version(group)
    _, meta = _open_zarr(Path(path))
    src = group["0"]
    levels = auto_levels(src.shape, meta) if levels is None else max(1, int(levels))
    py, px = _plane_axes(meta)
    fmt = group.metadata.zarr_format
    for level in range(1, levels):
        shape = list(src.shape)
        for a in (py, px):
            shape[a] = (shape[a] + 1) // 2
        chunks = tuple(min(c, s) for c, s in zip(src.chunks, shape, strict=True))
        kwargs: dict[str, Any] = {}
        if fmt == 3:
            kwargs["dimension_names"] = list(meta.axes)
        else:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        dst = group.create_array(str(level), shape=tuple(shape), dtype=src.dtype, chunks=chunks,
                                 fill_value=0, overwrite=True, **kwargs)
        lead = [a for a in range(src.ndim) if a not in (py, px)]
        if not lead:
            dst[...] = _halve(src[...], (py, px), src.dtype)
        else:
            # Blocks along the last leading axis, one chunk deep; every index of the others.
            blk_axis = lead[-1]
            step = src.chunks[blk_axis]
            for idx in np.ndindex(*[src.shape[a] for a in lead[:-1]]):
                for b0 in range(0, src.shape[blk_axis], step):
                    sel: list[Any] = [slice(None)] * src.ndim
                    for a, i in zip(lead[:-1], idx, strict=True):
                        sel[a] = slice(i, i + 1)
                    sel[blk_axis] = slice(b0, min(b0 + step, src.shape[blk_axis]))
                    block = np.asarray(src[tuple(sel)])
                    # Plane by plane: float64 temporaries of one plane, not of the block.
                    half = np.empty_like(block, shape=tuple(
                        (n + 1) // 2 if a in (py, px) else n for a, n in enumerate(block.shape)))
                    for i in range(block.shape[blk_axis]):
                        at = [slice(None)] * block.ndim
                        at[blk_axis] = slice(i, i + 1)
                        half[tuple(at)] = _halve(block[tuple(at)], (py, px), src.dtype)
                    dst[tuple(sel)] = half
        src = dst
    _set_ngff_metadata(group, meta, levels, version)
    return levels


def write_ome_zarr(path: str | os.PathLike, array, meta: ImageMeta | None = None, *,
                   chunks: tuple[int, ...] | None = None, levels: int | None = None,
                   version: str = "0.5") -> Path:
    """Write an array (numpy or any array-like, copied block by block) as OME-Zarr.

    ``meta`` gives axes, pixel size and units (default: guessed from the number of
    dimensions); ``levels`` the pyramid depth (default :func:`auto_levels`).
    """
    meta = meta or ImageMeta.default(len(array.shape))
    path = Path(path)
    # Written beside the target (a fresh private folder) and swapped in when complete,
    # so an interrupted run (Ctrl-C, full disk) never leaves a half-written store under
    # the result's name and an earlier result stays intact until the new one is whole.
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{path.name}-", dir=path.parent))
    tmp = staging / path.name
    try:
        dst = create_ome_zarr(tmp, tuple(array.shape), array.dtype, meta, chunks=chunks,
                              version=version)
        if len(array.shape) < 3:
            dst[...] = np.asarray(array[...])
        else:
            step = dst.chunks[0]
            for b0 in range(0, array.shape[0], step):
                dst[b0:b0 + step] = np.asarray(array[b0:b0 + step])
        build_pyramid(tmp, levels)
        replace_tree(tmp, path)
    finally:
        _remove(staging)
    return path


def write_tiff_blocks(path: str | os.PathLike, array, *, pixel_info: dict[str, Any] | None = None,
                      bigtiff: bool | None = None) -> Path:
    """Write an array-like (e.g. a zarr array) as a TIFF plane by plane (bounded memory).

    BigTIFF when the data exceed 2 GiB (or ``bigtiff`` says so); keeps
    ``pixel_info`` (see :func:`write_tiff`); written under a temporary name and
    renamed when complete.
    """
    import tifffile

    path = Path(path)
    shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if bigtiff is None:
        bigtiff = nbytes > 2**31
    info = pixel_info or {}
    metadata: dict[str, Any] = {}
    if info.get("axes") and len(info["axes"]) == len(shape):
        metadata["axes"] = info["axes"]
    for key in ("spacing", "unit"):
        if key in info:
            metadata[key] = info[key]
    kwargs: dict[str, Any] = {}
    if "resolution" in info:
        kwargs["resolution"] = tuple(info["resolution"])
        kwargs["resolutionunit"] = info.get("resolutionunit", 1)

    def planes():
        lead = shape[:-2]
        if not lead:
            yield np.ascontiguousarray(np.asarray(array[...]), dtype)
            return
        for idx in np.ndindex(*lead):
            yield np.ascontiguousarray(np.asarray(array[idx]), dtype)

    with atomic_path(path) as tmp:
        tifffile.imwrite(str(tmp), data=planes(), shape=shape, dtype=dtype, bigtiff=bigtiff,
                         photometric="minisblack", metadata=metadata, **kwargs)
    return path
