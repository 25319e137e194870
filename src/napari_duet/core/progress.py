"""Helpers for engines written as generators.

Every long computation is a generator that yields typed progress/state
objects and *returns* its result.  ``run_to_end`` drives such a generator for
scripts and the CLI; widgets drive the same generator in a napari thread
worker and stop it at the next ``yield`` on Cancel.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R")


def run_to_end(
    gen: Generator[Any, Any, R], callback: Callable[[Any], None] | None = None
) -> R:
    """Exhaust ``gen`` and return its return value.

    Parameters
    ----------
    gen : generator
        An engine generator (``iter_*`` functions).
    callback : callable, optional
        Called with every yielded object (e.g. to print progress).
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(item)


def blocking_form(iter_fn: Callable[..., Generator[Any, Any, R]], doc: str) -> Callable[..., R]:
    """The blocking form of an engine generator function (``iter_x`` -> ``x``).

    The parameters are declared once, on ``iter_fn``; the returned function
    takes the same ones plus a keyword-only ``callback`` (as in
    :func:`run_to_end`) and returns the generator's result.  Its
    ``__signature__`` lists them all, so ``help()`` and the docs show an explicit
    signature.  Works on methods too (``predict = blocking_form(iter_predict, ...)``
    in the class body).

    Parameters
    ----------
    iter_fn : callable
        A function returning an engine generator; its name starts with ``iter_``.
    doc : str
        The docstring of the blocking form.
    """
    name = iter_fn.__name__.removeprefix("iter_")

    @functools.wraps(iter_fn)
    def run(*args: Any, callback: Callable[[Any], None] | None = None, **kwargs: Any) -> R:
        return run_to_end(iter_fn(*args, **kwargs), callback)

    sig = inspect.signature(iter_fn)
    extra = inspect.Parameter("callback", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation="Callable[[Any], None] | None")
    params = list(sig.parameters.values())
    # A keyword-only parameter may not follow **kwargs.
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    run.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[*params[:at], extra, *params[at:]],
        return_annotation=inspect.Signature.empty)
    run.__name__ = name
    owner = iter_fn.__qualname__.rpartition(".")[0]
    run.__qualname__ = f"{owner}.{name}" if owner else name
    run.__doc__ = doc
    return run


@dataclass(kw_only=True)
class Progress:
    """Base of every progress/state object the engines yield.

    Every engine's progress type extends this, so widgets, the CLI's progress
    bars and ``--log-json`` read one set of fields whatever the engine.

    Attributes
    ----------
    stage : str
        Name of the current step (e.g. ``"train"``, ``"denoise"``, ``"experts"``).
    done, total : int
        Work units of the current stage done and planned (``total`` 0: unknown).
    elapsed : float
        Seconds since the run started.
    eta : float or None
        Estimated seconds left for the whole run (None: no estimate yet).
    losses : dict of str to float
        Latest loss terms (empty when the stage has none).
    """

    stage: str = ""
    done: int = 0
    total: int = 0
    elapsed: float = 0.0
    eta: float | None = None
    losses: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """Share of the whole run done, in [0, 1] (None: unknown).

        The default is the current stage's ``done / total``; engines whose
        runs have several stages override it with a whole-run estimate.
        """
        if self.total <= 0:
            return None
        return min(max(self.done / self.total, 0.0), 1.0)

    def fields(self) -> tuple[str, int | None, int | None, dict[str, Any]]:
        """What a progress bar or log line shows: ``(stage, done, total, extras)``.

        ``done`` / ``total`` None: nothing to count (``total`` 0 is unknown);
        ``extras`` are the numeric details (latest losses, ETA).  Engines whose
        progress carries more override this, so the CLI's bars and ``--log-json``
        read every engine the same way.
        """
        extra: dict[str, Any] = {}
        if self.losses:
            extra["losses"] = dict(self.losses)
        if self.eta is not None:
            extra["eta"] = self.eta
        return self.stage or "run", int(self.done), int(self.total) or None, extra
