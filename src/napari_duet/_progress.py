"""Helpers for engines written as generators.

Every long computation is a generator that yields typed progress/state
objects and *returns* its result.  ``run_to_end`` drives such a generator for
scripts and the CLI; widgets drive the same generator in a napari thread
worker and stop it at the next ``yield`` on Cancel.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
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
