"""Chunked runs shared by the engines: task planning, resume records, dask submission.

An engine that works on data larger than memory splits it into independent
*tasks* (slabs of slices, planes, frames), each reading its part of the input
(with a halo where the method needs one) and writing its part of the output
directly into a zarr store, in a region made of whole chunks, so that no two
tasks ever write the same chunk and any number of them can run at once.

:class:`TaskRunner` runs the tasks in this process, one after the other (the
default), or on dask.distributed: a local cluster of threads or processes
(``"threads:N"``, ``"processes:N"``) or an existing cluster's scheduler
(``"tcp://host:8786"``, also from ``DASK_SCHEDULER_ADDRESS``).  Workers get
the model as its file's bytes (loaded once per worker and cached) and open
inputs and outputs by path (:class:`ImageRef`, :class:`ZarrRef`), so nothing
large travels through the scheduler.

:class:`RunRecord` keeps, in the output group's attributes, which run the store
belongs to (input, model hash, options) and the tasks finished so far; only
the client writes it, after a task's result has come back, so a task killed
half-way is simply run again on ``--resume``.

This module never imports a method package: engines pass their own task
functions and model loaders.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DuetInputError
from .progress import Progress

__all__ = ["ChunkProgress", "ChunkedRun", "ImageRef", "ModelPayload", "RunRecord", "RunStore",
           "SCHEDULER_ENV", "TaskRunner", "ZarrRef", "blocks", "file_hash", "read_record",
           "report_path", "resolve", "resolve_model", "run_fits", "run_signature",
           "signature_key", "staging_path", "with_halo", "worker_threads", "zarr_ref"]

RECORD = "napari_duet"
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
# How long to wait for a scheduler given by address before giving up (exit 2).
CONNECT_TIMEOUT = "20s"


@dataclass(kw_only=True)
class ChunkProgress(Progress):
    """Progress of a chunked run: ``done`` of ``total`` tasks of ``stage`` finished.

    ``skipped`` of them were finished by an earlier, interrupted run (``--resume``).
    """

    skipped: int = 0


# ---------------------------------------------------------------------- CLI options


# ---------------------------------------------------------------------- references
@dataclass(frozen=True)
class ImageRef:
    """An input image opened by path on whichever process reads it (:func:`open_image`)."""

    path: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, path: str | os.PathLike) -> ImageRef:
        from .io import open_image

        arr, _ = open_image(path)
        return cls(str(Path(path).resolve()), tuple(int(s) for s in arr.shape), str(arr.dtype))


@dataclass(frozen=True)
class ZarrRef:
    """A zarr array in a local (or shared) store, opened by path where it is used."""

    store: str
    name: str
    shape: tuple[int, ...] = ()
    dtype: str = ""


@dataclass(frozen=True)
class ModelPayload:
    """A model file's bytes and the function that loads such a file (``load(path, device)``)."""

    loader: Callable[..., Any]
    data: bytes = field(repr=False)
    sha256: str
    device: str = "auto"


_opened: dict[Any, Any] = {}
_models: dict[tuple, Any] = {}
_lock = threading.Lock()


def resolve(obj):
    """The array behind a reference (opened once per process), or ``obj`` itself."""
    if isinstance(obj, ImageRef):
        with _lock:
            if obj not in _opened:
                from .io import open_image

                _opened[obj] = open_image(obj.path)[0]
            return _opened[obj]
    if isinstance(obj, ZarrRef):
        import zarr

        # Not cached: another run may have recreated the store at the same path.
        return zarr.open_group(obj.store, mode="r+")[obj.name]
    return obj


def resolve_model(model):
    """The model behind a :class:`ModelPayload` (loaded once per process), or ``model``."""
    if not isinstance(model, ModelPayload):
        return model
    key = (getattr(model.loader, "__qualname__", repr(model.loader)), model.sha256, model.device)
    with _lock:
        if key not in _models:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.duet"
                path.write_bytes(model.data)
                _models[key] = model.loader(path, device=model.device)
        return _models[key]


_malloc_restored = False


def _restore_malloc() -> None:
    """Undo the nanny's ``MALLOC_TRIM_THRESHOLD_`` for this worker process (glibc only).

    Setting it switches off glibc's dynamic mmap threshold, so every large
    array or tensor becomes a fresh ``mmap`` whose pages are faulted in again:
    measured twice the CPU time per slab for NS-N2N inference in a worker.
    The thresholds set here are those glibc's dynamic rule settles on.
    """
    global _malloc_restored
    if _malloc_restored or not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return
    _malloc_restored = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def worker_threads() -> None:
    """On a dask worker: torch gets the worker's thread count (not every core of the node)."""
    try:
        from distributed import get_worker

        n = int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return
    _restore_malloc()
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def zarr_ref(arr) -> ZarrRef | None:
    """A :class:`ZarrRef` to a zarr array in a local store, or None (e.g. in memory)."""
    store = getattr(arr, "store", None)
    root = getattr(store, "root", None)
    if root is None or not hasattr(arr, "path"):
        return None
    # Absolute: workers may run in another directory (or on another node).
    return ZarrRef(str(Path(str(root)).resolve()), str(arr.path),
                   tuple(int(s) for s in arr.shape), str(arr.dtype))


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # pragma: no cover


def announce_chunked(log: Callable[[str], Any] | None, shape, dtype, path) -> None:
    """Say at the start of a chunked run how much it will read (voxels, bytes) and where.

    A file of a few KiB can declare any shape: the count tells the user what
    they started before the first chunk (and the first time estimate) is done.
    """
    if log is None:
        return
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    nbytes = n * np.dtype(dtype).itemsize
    log(f"{n:,} voxels ({_size(nbytes)} of {np.dtype(dtype)}) chunk by chunk into {path}; "
        "the estimated time follows the first chunk")


def eta_notes(show: Callable[[Any], Any], log: Callable[[str], Any] | None):
    """``show`` that also logs, once per stage, the time estimate after the first chunk."""
    seen: set[str] = set()

    def wrapped(p) -> None:
        show(p)
        stage, eta = getattr(p, "stage", ""), getattr(p, "eta", None)
        if log is not None and eta is not None and stage not in seen:
            seen.add(stage)
            log(f"{stage}: estimated time left {eta:.0f} s "
                f"({getattr(p, 'done', 0)}/{getattr(p, 'total', 0)} done)")

    return wrapped


# ---------------------------------------------------------------------- task planning
def blocks(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive blocks of ``size`` covering ``0..n``."""
    size = max(int(size), 1)
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def with_halo(a: int, b: int, halo: int, n: int) -> tuple[int, int]:
    """``[a, b)`` grown by ``halo`` on each side, clipped to ``0..n``."""
    return max(0, a - halo), min(n, b + halo)


# ---------------------------------------------------------------------- submission
class TaskRunner:
    """Run chunk tasks here (sequentially) or on dask.distributed; use as a context manager.

    Parameters
    ----------
    scheduler : str, optional
        None or ``"local"``: this process, one task after the other (when
        ``DASK_SCHEDULER_ADDRESS`` is set, that scheduler instead, unless
        ``"local"`` is given explicitly); ``"threads:N"`` / ``"processes:N"``: a
        dask LocalCluster of N workers (threads in this process, or processes
        of one thread each); anything else: the address of a running
        dask.distributed scheduler.
    """

    def __init__(self, scheduler: str | None = None) -> None:
        # True when the environment, not the command line, chose the scheduler.
        self.from_env = scheduler is None and bool(os.environ.get(SCHEDULER_ENV))
        if scheduler is None:
            scheduler = os.environ.get(SCHEDULER_ENV) or None
        self.scheduler = None if scheduler in (None, "", "local") else str(scheduler)
        self.client = None
        self._cluster = None

    @property
    def distributed(self) -> bool:
        return self.scheduler is not None

    def __enter__(self) -> TaskRunner:
        if self.scheduler is None:
            return self
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise DuetInputError("--scheduler needs dask.distributed: pip install "
                                 "'napari-duet[cluster]'") from None
        kind, _, n = self.scheduler.partition(":")
        if kind in ("threads", "processes"):
            try:
                workers = int(n or 2)
            except ValueError:
                workers = 0
            if workers < 1:
                raise DuetInputError(f"--scheduler {self.scheduler}: give {kind}:N with N >= 1")
            self._cluster = _local_cluster(LocalCluster, workers, kind == "processes")
            self.client = Client(self._cluster)
        else:
            if self.from_env:
                # The help says runs stay in this process by default: say why not.
                print(f"duet: running the tasks on the dask scheduler {self.scheduler} "
                      f"(from ${SCHEDULER_ENV}; --scheduler local runs them here)",
                      file=sys.stderr)
            if self.scheduler.startswith("tcp://") and not _loopback(self.scheduler):
                print(f"duet: {self.scheduler} is neither encrypted nor authenticated: "
                      "anyone who reaches it can run code as its workers' user; see "
                      "docs/scale.md for tls://", file=sys.stderr)
            try:
                self.client = Client(self.scheduler, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as exc:
                raise DuetInputError(f"cannot reach the dask scheduler {self.scheduler}: "
                                     f"{exc}") from None
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the client (pending tasks are cancelled) and a local cluster it started."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def model(self, model, device: str = "auto"):
        """What the tasks get as the model: the object here, its file's bytes on dask.

        The model is saved with ``model.save`` and loaded on each worker with
        ``type(model).load(path, device=device)``, once per worker.
        """
        if not self.distributed:
            return model
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(model.save(Path(tmp) / "model.duet"))
            data = path.read_bytes()
        payload = ModelPayload(type(model).load, data, hashlib.sha256(data).hexdigest(),
                               device)
        # Sent to every worker once, not with every task.
        return self.client.scatter(payload, broadcast=True)

    def ref(self, arr, label: str = "array"):
        """What the tasks get as an input or output array: itself here, a reference on dask."""
        if not self.distributed or arr is None or isinstance(arr, (ImageRef, ZarrRef)):
            return arr
        ref = zarr_ref(arr)
        if ref is not None:
            return ref
        if isinstance(arr, np.ndarray):
            return arr  # small arrays (seeds, tests) travel with the task
        raise DuetInputError(f"the {label} cannot be sent to dask workers: give a zarr, "
                             "OME-Zarr or TIFF path")

    def run(self, fn: Callable[..., Any], tasks: Iterable[Any], *args,
            **kwargs) -> Iterator[tuple[Any, Any]]:
        """``(task, fn(task, *args, **kwargs))`` for every task, in the order they finish.

        Here: in order, one at a time.  On dask: all submitted at once, yielded
        as they complete; a task's exception is raised here.  Stopping the
        iteration (or closing the runner) cancels the tasks not yet finished.
        """
        tasks = list(tasks)
        if not self.distributed:
            for t in tasks:
                yield t, fn(t, *args, **kwargs)
            return
        from distributed import as_completed

        futures = {}
        for t in tasks:
            f = self.client.submit(fn, t, *args, pure=False, **kwargs)
            futures[f] = t
        try:
            for f in as_completed(list(futures)):
                yield futures[f], f.result()
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                self.client.cancel(pending)


def _loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "127.0.0.1", "::1")


def _local_cluster(LocalCluster, workers: int, processes: bool):
    """A dask LocalCluster bound to this machine's loopback; worker processes talk TLS with
    temporary credentials (``security=True``), so nobody else on a shared node can submit
    work to it (task results are unpickled here)."""
    kwargs: dict[str, Any] = {"n_workers": workers, "threads_per_worker": 1,
                              "processes": processes, "dashboard_address": None}
    if processes:
        try:
            import cryptography  # noqa: F401  (needed for the temporary credentials)
        except ImportError:
            raise DuetInputError("--scheduler processes:N needs the cryptography package "
                                 "for its TLS credentials: pip install "
                                 "'napari-duet[cluster]'") from None
        kwargs.update(security=True, host="127.0.0.1", protocol="tls://")
    # Threads talk in memory (inproc): nothing listens on the network.
    return LocalCluster(**kwargs)


# ---------------------------------------------------------------------- resume records
class RunRecord:
    """The run an output store belongs to, and its saved state (``group.attrs[RECORD]``)."""

    def __init__(self, group, signature: dict[str, Any], state: dict[str, Any] | None = None,
                 *, complete: bool = False):
        self.group = group
        self.signature = signature
        self.state: dict[str, Any] = dict(state or {})
        self.complete = complete

    @classmethod
    def open(cls, store: str | os.PathLike, signature: dict[str, Any], *,
             hint: str = "remove it or run without --resume") -> RunRecord | None:
        """The record of a run of ``signature`` into ``store``; None when there is no store.

        Raises DuetInputError (ending in ``hint``) when the store is not one
        of this run (another input, model or options, or not a store at all).
        """
        import zarr

        from .io import strict_jsonable

        store = Path(store)
        if not store.exists():
            return None
        rec = read_record(store) or {}
        if rec.get("run") != strict_jsonable(signature):
            raise DuetInputError(f"{store} is not an interrupted run of this input, model and "
                                 f"options: {hint}")
        group = zarr.open_group(str(store), mode="r+")
        return cls(group, signature, rec.get("state") or {}, complete=bool(rec.get("complete")))

    @classmethod
    def belongs(cls, store: str | os.PathLike, signature: dict[str, Any]) -> bool:
        """True when ``store`` holds a run of ``signature`` (finished or not)."""
        from .io import strict_jsonable

        rec = read_record(store)
        return rec is not None and rec.get("run") == strict_jsonable(signature)

    @classmethod
    def create(cls, group, signature: dict[str, Any]) -> RunRecord:
        """Start a record in a freshly created output group."""
        rec = cls(group, signature)
        rec.save({})
        return rec

    def save(self, state: dict[str, Any], complete: bool = False) -> None:
        """Store ``state`` (JSON-able), marking the run ``complete`` or not."""
        from .io import strict_jsonable

        self.state, self.complete = dict(state), bool(complete)
        self.group.attrs[RECORD] = strict_jsonable(
            {"run": self.signature, "state": self.state, "complete": self.complete})

    def finish(self, state: dict[str, Any]) -> None:
        """Save ``state`` as the finished run's, once the pyramid is written."""
        import zarr

        # Reopened: a group object from before the pyramid would write back stale metadata.
        self.group = zarr.open_group(str(Path(str(self.group.store.root)) / self.group.path),
                                     mode="r+")
        self.save(state, complete=True)

    @staticmethod
    def attributes(signature: dict[str, Any]) -> dict[str, Any]:
        """The group attributes of a new store of the run ``signature`` (nothing done yet)."""
        return {RECORD: {"run": signature, "state": {}, "complete": False}}


def staging_path(out: str | os.PathLike) -> Path:
    """Where a chunked run into ``out`` writes until it is complete: ``OUT.partial.zarr``."""
    out = Path(out)
    return out.with_name(out.name + ".partial.zarr")


class RunStore:
    """Where a chunked run of ``signature`` writes its output ``out``, so that nothing is lost.

    The work goes into a staging store beside the output (:func:`staging_path`),
    never into ``out`` itself: an earlier result at ``out`` stays intact until
    :meth:`commit` swaps the complete new store in (:func:`~._io.replace_tree`).
    An interrupted run leaves the staging store, which ``--resume`` continues.

    Without ``resume`` an earlier staging store is discarded.  With ``resume``:
    the staging store is continued when it is a run of ``signature``, refused
    when it is another run's, discarded when it has no record yet (killed while
    being created); with no staging store, an ``out`` that is a
    complete run of ``signature`` is reused as is (:attr:`reused`: nothing to
    compute), and an incomplete one (written in place by an earlier version) is
    continued in place; any other ``out`` is refused.

    Attributes
    ----------
    path : Path
        The store to create (when :attr:`record` is None) or continue.
    record : RunRecord or None
        The run record found (None: create the store at :attr:`path`).
    reused : bool
        ``out`` already holds this run, complete.
    """

    def __init__(self, out: str | os.PathLike, signature: dict[str, Any], *, resume: bool,
                 hint: str = "run without --resume to start again",
                 staged: bool = True) -> None:
        from .io.outputs import _remove

        self.out = Path(out)
        self.signature = signature
        self.staging = staging_path(self.out)
        self.record: RunRecord | None = None
        self.reused = False
        self.path = self.staging
        if not staged:
            # In place (a store that layers show while it fills): continued or reused when
            # it is a run of ``signature``, refused when it is anything else.
            self.path = self.out
            if resume and self.out.exists():
                self.record = RunRecord.open(self.out, signature, hint=hint)
                self.reused = self.record.complete
            return
        if self.staging.is_symlink():
            # Never written through: the link could point at anything.
            raise DuetInputError(f"{self.staging} is a symbolic link: remove it")
        if not resume:
            _remove(self.staging)
            return
        if self.staging.exists():
            if not (read_record(self.staging) or {}).get("run"):
                # Killed while creating it: nothing finished in it, start afresh.
                _remove(self.staging)
                return
            self.record = RunRecord.open(self.staging, signature, hint=hint)
            return
        if self.out.exists():
            # Another run's result is refused: --resume never replaces what it cannot continue.
            self.record = RunRecord.open(self.out, signature, hint=hint)
            self.path = self.out
            self.reused = self.record.complete

    @property
    def fresh(self) -> bool:
        """True when this run creates its store (nothing to continue)."""
        return self.record is None

    def commit(self) -> Path:
        """Put the complete store at ``out`` (replacing an earlier result); returns ``out``."""
        from .io import replace_tree

        if self.path != self.out:
            replace_tree(self.path, self.out)
            self.path = self.out
        return self.out

    def finish(self, record, final: Any, bar=None, *,
               pixel_info: dict[str, Any] | None = None) -> int:
        """End a run: pyramid, record and swap in (a reused store is left as it is); an
        output that is not a zarr store (``.tif``) is written from the staged level 0
        (with ``pixel_info``) and the staging store removed.  ``bar``: a progress bar
        whose ``stage(name)`` frames the step (None: no bar).

        Returns the number of resolution levels of the store's first array (1 for TIFF).
        """
        from .io import build_pyramid, is_zarr_path, write_tiff_blocks

        if self.reused:
            return len([k for k in record.group.array_keys() if k.isdigit()])
        if not is_zarr_path(self.out):
            with _stage(bar, "write tiff"):
                write_tiff_blocks(self.out, record.group["0"], pixel_info=pixel_info)
            self.discard()
            return 1
        with _stage(bar, "pyramid"):
            levels = build_pyramid(self.path)
        record.finish(final)
        self.commit()
        return levels

    def discard(self) -> None:
        """Remove the staging store (the output, if any, is left alone)."""
        from .io.outputs import _remove

        _remove(self.staging)


def _stage(bar, name: str):
    """``bar.stage(name)``, or nothing without a bar."""
    import contextlib

    return contextlib.nullcontext() if bar is None else bar.stage(name)


def run_fits(out: str | os.PathLike, signature: dict[str, Any]) -> bool:
    """True when a run of ``signature`` may write ``out``: neither it nor its staging
    store holds anything but a run of ``signature`` (continued or reused), or a staging
    store a killed run left without a record (discarded).  Widgets pick the first free
    name with it, so a result never overwrites other data."""
    out, staged = Path(out), staging_path(out)
    if staged.exists() and (read_record(staged) or {}).get("run") and not RunRecord.belongs(
            staged, signature):
        return False
    return not out.exists() or RunRecord.belongs(out, signature)


class ChunkedRun:
    """One resumable chunked run: its output stores, where its tasks run, and its end.

    The one engine behind every chunked run (``duet self2seg``, ``duet split predict``
    and ``duet nsn2n --model`` into OME-Zarr): each output gets a :class:`RunStore`
    (opened or resumed for ``signature``, see :func:`run_signature`), the tasks run
    here or on dask (:class:`TaskRunner`, entered by the caller around the run), a
    run that fails on bad input or model discards what it created (nothing worth
    resuming) while an interruption keeps it for ``--resume``, and :meth:`finish`
    builds the pyramid, records the run complete and swaps the store in.

    Parameters
    ----------
    outputs : sequence of path
        The outputs, written together (e.g. an image and its uncertainty).
    signature : dict
        What identifies the run (:func:`run_signature`).
    resume : bool
        Continue an interrupted run of ``signature`` (else start afresh).
    scheduler : str, optional
        Where the tasks run (:class:`TaskRunner`); None: here, one after the other.
    """

    def __init__(self, outputs, signature: dict[str, Any], *, resume: bool = False,
                 scheduler: str | None = None,
                 hint: str = "run without --resume to start again",
                 staged: bool = True) -> None:
        self.signature = signature
        self.stores = [RunStore(p, signature, resume=resume, hint=hint, staged=staged)
                       for p in outputs]
        if len({s.fresh for s in self.stores}) > 1:
            raise DuetInputError("--resume: the outputs do not belong to the same run; "
                                 "remove them")
        self._fresh = self.stores[0].fresh  # before open() records the new run
        self.runner = TaskRunner(scheduler)  # connects when entered

    @property
    def store(self) -> RunStore:
        """The store of the first output."""
        return self.stores[0]

    @property
    def fresh(self) -> bool:
        """True when this run creates its stores (nothing to continue)."""
        return self._fresh

    @property
    def reused(self) -> bool:
        """True when every output already holds this run, complete: nothing to compute."""
        return all(s.reused for s in self.stores)

    @property
    def state(self) -> dict[str, Any] | None:
        """The saved state of the run continued (None: a fresh run)."""
        return None if self.store.record is None else self.store.record.state

    def open(self, build: Callable[[Path], Any]) -> RunRecord:
        """The record of the run: a continued run's, or a new one in the stores that
        ``build(path)`` creates (and returns the zarr group of), one per output; the
        first output's record holds the run's state."""
        for store in self.stores:
            if store.record is None:
                store.record = RunRecord.create(build(store.path), self.signature)
        return self.store.record

    def source(self, path: str | os.PathLike, array):
        """What the tasks read: ``array`` here; on dask a reference by ``path`` (workers
        open the input themselves)."""
        return ImageRef.of(path) if self.runner.distributed else array

    def iter(self, gen):
        """Yield from the chunked generator ``gen`` and return its value; a run that fails
        on bad input or model (:class:`~napari_duet.core.errors.DuetError`) discards the
        stores it created, while closing the generator (Cancel) keeps them to resume."""
        from .errors import DuetError

        try:
            return (yield from gen)
        except DuetError:
            if self.fresh:  # bad input or model: nothing worth resuming
                for s in self.stores:
                    s.discard()
            raise

    def run(self, gen, progress: Callable[[Any], Any] | None = None):
        """Run the chunked generator ``gen`` to its end, passing every item to ``progress``."""
        from .progress import run_to_end

        return run_to_end(self.iter(gen), progress)

    def finish(self, final: Any, bar=None, *,
               pixel_info: dict[str, Any] | None = None) -> list[int]:
        """Pyramid (or TIFF), record and swap in every store (see :meth:`RunStore.finish`);
        returns the number of resolution levels of each."""
        import zarr

        levels = []
        for s in self.stores:
            record = s.record or RunRecord(zarr.open_group(str(s.path), mode="r+"),
                                           self.signature)
            levels.append(s.finish(record, final, bar, pixel_info=pixel_info))
        return levels


def read_record(store: str | os.PathLike) -> dict[str, Any] | None:
    """The run record of the zarr group ``store`` (None: no store, or not a run's)."""
    import zarr

    store = Path(store)
    if not store.exists():
        return None
    try:
        rec = zarr.open_group(str(store), mode="r").attrs.get(RECORD)
    except Exception:  # not a zarr group: no record
        return None
    return dict(rec) if isinstance(rec, dict) else None


def report_path(out: str | os.PathLike) -> Path:
    """The JSON report beside an output: ``OUT.ome.zarr`` -> ``OUT.ome.json`` (as NS-N2N)."""
    out = Path(out)
    return out.with_name(out.stem + ".json")


def run_signature(source, *, input: str | os.PathLike | None = None, axis: int | None = None,
                  **params: Any) -> dict[str, Any]:
    """What identifies a chunked run: the input and its content, and the parameters.

    The input is named (``input``: a resolved path, or a layer's name) and
    fingerprinted from its pixels (:func:`~napari_duet.core.io.content_fingerprint`,
    sampled along ``axis``), so other data under the same name and shape never
    continue an earlier run; ``params`` (JSON-able: configuration, model hash,
    options) are added as they are.  Every chunked run, in the CLI and in the
    widgets, is keyed by this one signature.
    """
    from .io import content_fingerprint

    sig: dict[str, Any] = {
        "input": None if input is None else str(input),
        "shape": [int(s) for s in source.shape], "dtype": str(np.dtype(source.dtype)),
        "sample_sha256": content_fingerprint(source, axis=0 if axis is None else axis)}
    if axis is not None:
        sig["axis"] = int(axis)
    sig.update(params)
    return sig


def signature_key(signature: dict[str, Any]) -> str:
    """SHA-256 of a :func:`run_signature` (a short key to compare runs by)."""
    import json

    from .io import strict_jsonable

    return hashlib.sha256(json.dumps(strict_jsonable(signature), sort_keys=True,
                                     default=str).encode()).hexdigest()
