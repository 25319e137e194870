"""Progress of ``duet`` commands: a tqdm bar on stderr and an optional JSON-lines log.

Every compute command adds the same options with :func:`add_run_options`
(``-q/--quiet``, ``--log-json FILE``, ``--threads N``) and runs inside
:func:`cli_run`, which sets torch's thread count for the command and gives a
:class:`CLIProgress`.  The engines' progress objects (Self2Seg states, NS-N2N
and denoiSplit progress) are mapped by :func:`describe` to a stage, work done
and total, and numeric extras; steps that yield nothing run in
:meth:`CLIProgress.stage`, which shows the stage name with a running clock.

The bar is drawn when stderr is a terminal; ``DUET_PROGRESS=1`` forces it
(e.g. in tests or a log viewer that handles ``\\r``), ``DUET_PROGRESS=0`` turns it
off.  ``--log-json FILE`` appends one JSON object per event, strict JSON (NaN and
infinities become null), flushed line by line, so schedulers can follow it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.chunks import SCHEDULER_ENV
from ..core.devices import THREADS_HELP, parse_threads, torch_threads
from ..core.errors import first_line
from ..core.progress import Progress

__all__ = ["CLIProgress", "Event", "add_chunk_options", "add_run_options", "channel_axis_arg",
           "cli_run", "describe", "run_command"]

PROGRESS_ENV = "DUET_PROGRESS"


def add_run_options(parser: argparse.ArgumentParser, quiet_help: str = "no progress output",
                    quiet: bool = True, threads_help: str = THREADS_HELP) -> None:
    """Add ``-q/--quiet``, ``--log-json FILE`` and ``--threads N`` to a command."""
    if quiet:
        parser.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    parser.add_argument("--log-json", metavar="FILE", default=None,
                        help="append the progress events to FILE as JSON lines (time, stage, "
                        "done, total, losses...), also with -q")
    parser.add_argument("--threads", type=_threads_arg, default="auto", metavar="N",
                        help=threads_help)


def add_chunk_options(parser, *, resume: bool = True, unit: str = "chunks",
                      when: str = "with a .zarr output") -> None:
    """Add ``--scheduler`` (and ``--resume``) to a command that writes OME-Zarr chunk by chunk."""
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help=f"{when}: continue an interrupted run into the "
                            f"same output, skipping the {unit} it finished")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help=f"{when}: run the {unit} on dask: the address of a "
                        "dask.distributed scheduler (tcp://host:8786; default "
                        f"${SCHEDULER_ENV} when set), or a local cluster 'threads:N' or "
                        "'processes:N'; default: in this process, one after the other")


def _threads_arg(value: str):
    from ..core.errors import DuetInputError

    try:
        return parse_threads(value)
    except DuetInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def channel_axis_arg(value: str) -> int | str:
    """``--channel-axis`` values: an integer, ``none`` or ``auto`` (argparse type)."""
    text = str(value).strip().lower()
    if text in ("none", "auto"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an axis number, none or auto, got {value!r}") from None


def run_command(func, args) -> int:
    """Run a ``duet`` command function, as one rank when started by torchrun.

    In a single process this is ``func(args)``.  Under torchrun the body runs in
    :func:`~napari_duet.core.distributed.session` (device from ``args.device``);
    ranks other than 0 run it with ``quiet`` set and no ``log_json``, so only rank 0
    logs (the command itself writes its files on rank 0 only, see
    :func:`~napari_duet.core.distributed.is_main`).
    """
    from ..core.distributed import is_main, launched, session

    if not launched():
        return func(args)
    # A device option generated from a declaration defaults to None (not given): auto.
    with session(getattr(args, "device", None) or "auto"):
        if not is_main():
            args = argparse.Namespace(**{**vars(args), "quiet": True, "log_json": None})
        return func(args)


@dataclass
class Event:
    """One progress event: ``done`` of ``total`` units of ``stage`` (total None: unknown)."""

    stage: str
    done: int | None = None
    total: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def _num(v) -> float | int | None:
    """A JSON-safe number (non-finite -> None), or None for non-numbers."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _numeric(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_numeric(v, f"{prefix}{k}_"))
            continue
        if getattr(v, "ndim", 0):  # arrays (previews) are not logged
            continue
        if v is None or isinstance(v, (int, float)) or hasattr(v, "dtype"):
            out[prefix + k] = None if v is None else _num(v)
    return out


def describe(item) -> Event:
    """Map an engine's progress object to an :class:`Event`.

    Every engine's progress extends :class:`~napari_duet.core.progress.Progress` and
    describes itself (:meth:`~napari_duet.core.progress.Progress.fields`): the stage,
    work done and total, and its numeric extras (losses, energy, matched fraction...).
    """
    if isinstance(item, Event):
        return item
    if not isinstance(item, Progress):
        stage = getattr(item, "stage", None) or "run"
        done, total = getattr(item, "done", None), getattr(item, "total", None)
        return Event(str(stage), done if isinstance(done, int) else None,
                     total if isinstance(total, int) else None, {})
    return Event(*item.fields())


# Units of the bars, by stage.
_UNITS = {"self2seg": "alt", "guide": "slice", "train": "step", "denoise": "slice",
          "predict": "tile"}


# Bars whose count moves in fractions of a unit (Self2Seg: alternations, moved by the
# engine's progress within each): the average rate of the whole run gives a steady ETA.
_STEADY = {"self2seg": "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} alternations "
           "[{elapsed}<{remaining}{postfix}]"}


def _bar_wanted(quiet: bool, stream) -> bool:
    if quiet:
        return False
    env = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if env in ("1", "true", "yes", "always", "on"):
        return True
    if env in ("0", "false", "no", "never", "off"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class CLIProgress:
    """Draw engine progress as a tqdm bar on stderr and/or log it as JSON lines.

    Parameters
    ----------
    command : str
        Command name written into the JSON log (``"self2seg"``, ``"split predict"``...).
    quiet : bool
        No bar (the JSON log is still written).
    log_json : str or path, optional
        File the events are appended to, one JSON object per line.
    stream : file, optional
        Where the bar goes (default ``sys.stderr``).
    """

    def __init__(self, command: str, *, quiet: bool = False, log_json=None,
                 stream=None, info: dict[str, Any] | None = None) -> None:
        self.command = command
        self.quiet = quiet
        self.stream = sys.stderr if stream is None else stream
        self.show_bar = _bar_wanted(quiet, self.stream)
        self._bar = None
        self._stage: str | None = None
        self._lock = threading.Lock()
        self._tick_stop = threading.Event()
        self.threads: int | None = (info or {}).get("threads")
        self._t0 = time.perf_counter()
        self._log = None
        if log_json is not None:
            path = Path(log_json)
            if path.parent and not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(path, "a", encoding="utf-8", buffering=1)
        self._emit("start", None, None, None, dict(info or {}))

    # ------------------------------------------------------------------ events
    def __call__(self, item) -> None:
        """Report one yielded object (usable as an engine ``callback``)."""
        ev = describe(item)
        self.update(ev.stage, ev.done, ev.total, **ev.fields)

    def update(self, stage: str, done: int | None = None, total: int | None = None,
               **fields) -> None:
        """Report ``done`` of ``total`` units of ``stage`` with numeric ``fields``."""
        with self._lock:
            self._draw(stage, done, total, fields)
        self._emit("progress", stage, done, total, fields)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """A step that yields no progress: the bar shows its name and a running clock."""
        self.update(name, 0, 1)
        yield
        self.update(name, 1, 1)

    def write(self, message: str, file=None) -> None:
        """Print a line without breaking the bar (stdout by default)."""
        file = sys.stdout if file is None else file
        bar = self._bar
        if bar is not None and bar.total is not None and bar.n >= bar.total:
            self.finish()  # a completed bar is not redrawn under every later line
        if self._bar is not None:
            from tqdm import tqdm

            with self._lock:
                tqdm.write(message, file=file)
        else:
            print(message, file=file, flush=True)

    def finish(self) -> None:
        """Close the current bar (e.g. before summary lines); the log stays open."""
        with self._lock:
            self._close_bar()

    def close(self, status: str = "ok", error: str | None = None) -> None:
        """Close the bar and write the final ``end`` event."""
        with self._lock:
            self._close_bar()
        extra: dict[str, Any] = {"status": status}
        if error:
            extra["error"] = error
        self._emit("end", None, None, None, extra)
        if self._log is not None:
            self._log.close()
            self._log = None

    # ------------------------------------------------------------------ drawing
    def _close_bar(self) -> None:
        if self._bar is not None:
            self._tick_stop.set()
            self._bar.close()
            self._bar = None

    def _start_ticker(self, bar) -> None:
        """Redraw ``bar`` every second so its clock runs during long silent steps."""
        stop = self._tick_stop = threading.Event()

        def tick():
            while not stop.wait(1.0):
                with self._lock:
                    if stop.is_set() or self._bar is not bar:
                        return
                    bar.refresh()

        threading.Thread(target=tick, daemon=True, name="duet-progress").start()

    def _draw(self, stage: str, done, total, fields) -> None:
        if not self.show_bar:
            return
        from tqdm import tqdm

        if self._bar is None or stage != self._stage:
            self._close_bar()
            self._stage = stage
            kwargs: dict[str, Any] = {}
            if stage in _STEADY:  # progress within a step: whole-run rate, no "alt/s"
                kwargs = {"smoothing": 0.0, "bar_format": _STEADY[stage]}
            self._bar = tqdm(total=total, desc=stage, file=self.stream, dynamic_ncols=True,
                             leave=True, mininterval=0.2, unit=_UNITS.get(stage, "it"),
                             **kwargs)
            self._start_ticker(self._bar)
        bar = self._bar
        if total is not None and bar.total != total:
            bar.total = total
        post = self._postfix(fields)
        if post:
            bar.set_postfix_str(post, refresh=False)
        if done is not None and done != bar.n:
            bar.update(done - bar.n)
        elif done is None:
            bar.refresh()

    @staticmethod
    def _postfix(fields: dict[str, Any]) -> str:
        parts = []
        flat = _numeric(fields)
        for key in ("energy", "losses_total", "losses_loss", "loss", "val_loss",
                    "matched_fraction"):
            v = flat.get(key)
            if v is not None:
                label = {"matched_fraction": "matched"}.get(key, key.removeprefix("losses_"))
                parts.append(f"{label}={v:.4g}")
        if isinstance(fields.get("stage_name"), str):
            parts.insert(0, fields["stage_name"])
        if "plane" in fields and fields.get("planes", 1) != 1:
            parts.insert(0, f"plane {fields['plane']}/{fields.get('planes')}")
        return ", ".join(parts)

    # ------------------------------------------------------------------ JSON log
    def _emit(self, event: str, stage, done, total, fields) -> None:
        if self._log is None:
            return
        rec: dict[str, Any] = {"time": round(time.time(), 3),
                               "elapsed": round(time.perf_counter() - self._t0, 4),
                               "command": self.command, "event": event}
        if event == "progress":
            rec.update(stage=stage, done=_num(done) if done is not None else None,
                       total=_num(total) if total is not None else None)
        for k, v in (fields or {}).items():
            if isinstance(v, str):
                rec[k] = v
        for k, v in _numeric(fields or {}).items():
            rec.setdefault(k, v)
        self._log.write(json.dumps(rec, allow_nan=False) + "\n")


@contextmanager
def cli_run(args: argparse.Namespace, command: str, quiet: bool | None = None,
            needs_torch: bool = True, threads=None) -> Iterator[CLIProgress]:
    """Run a command body with ``--threads`` applied and a :class:`CLIProgress`.

    torch's thread count is restored afterwards (``needs_torch=False``: torch is not
    imported for it, e.g. Self2Seg with constant experts; ``threads`` overrides
    ``args.threads``); the JSON log ends with an ``end``
    event whose ``status`` is ``ok``, ``error`` or ``interrupted``.
    """
    quiet = bool(getattr(args, "quiet", False)) if quiet is None else quiet
    threads = getattr(args, "threads", "auto") if threads is None else threads
    with torch_threads(threads, import_torch=needs_torch) as n:
        prog = CLIProgress(command, quiet=quiet, log_json=getattr(args, "log_json", None),
                           info={"threads": n})
        prog.threads = n
        try:
            yield prog
        except KeyboardInterrupt:
            prog.close("interrupted")
            raise
        except BaseException as exc:
            prog.close("error", first_line(exc, 200))
            raise
        prog.close()
