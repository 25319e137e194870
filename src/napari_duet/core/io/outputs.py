"""Output safety: outputs are checked before a run, written atomically, and kept as
result sets."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import DuetInputError
from .meta import _reason, is_zarr_path

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
