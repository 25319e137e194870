"""Checks of a finished Self2Seg result against its seeds and its automatic start.

A badly placed seed box can wreck a run without any error: a background box on
a patch slightly brighter than the rest teaches the background expert the
nuclei's intensity, and the mask collapses to a few pixels while the run
reports "mask converged".  These checks look at the final labels only (no
re-run): where the seeds of each class ended up, how much of the image the
foreground kept, and how far the mask moved from the cheap automatic start
(a smoothed Otsu threshold, :func:`._regions.auto_labels`).  They return
plain text: warnings (what went wrong) and hints (what to change), shown by
the widget, printed by the CLI and stored in ``report.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ResultCheck", "check_result", "stop_text", "MIN_SEED_AGREEMENT",
           "MIN_CLASS_FRACTION", "MIN_AUTO_RATIO"]

#: A class whose seed pixels end up in their own class less often than this is reported.
MIN_SEED_AGREEMENT = 0.5
#: A class covering less than this share of the image is reported as collapsed.
MIN_CLASS_FRACTION = 0.005
#: Reported when a class keeps less than this share of the area it had at the automatic start.
MIN_AUTO_RATIO = 0.2

_CLASS_NAMES_2 = ("background", "foreground")


def _pct(x: float) -> str:
    """A share as a percentage, with two decimals below 1 % (0.03 %, not 0.0 %)."""
    return f"{x:.2%}" if x < 0.01 else f"{x:.1%}"


def _class_name(k: int, n_classes: int) -> str:
    return _CLASS_NAMES_2[k] if n_classes == 2 else f"class {k}"


def stop_text(reason: str, alternations: int, max_alternations: int) -> str:
    """Why a run stopped, in words: ``"mask converged after 2 of 4 alternations"``."""
    of = f"after {int(alternations)} of {int(max_alternations)} alternations"
    if reason == "max_alternations" or not reason:
        return f"reached the maximum of {int(max_alternations)} alternations"
    if reason.startswith("energy decrease"):
        return f"energy stopped decreasing {of}"
    return f"{reason} {of}"


@dataclass
class ResultCheck:
    """What :func:`check_result` found: warnings, hints and the measurements behind them."""

    warnings: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    stopped: str = ""
    seed_agreement: dict[str, float] = field(default_factory=dict)  # class -> share kept
    class_fractions: list[float] = field(default_factory=list)
    auto_fractions: list[float] | None = None

    @property
    def ok(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict[str, Any]:
        return {"warnings": list(self.warnings), "hints": list(self.hints),
                "stopped": self.stopped, "seed_agreement": dict(self.seed_agreement),
                "class_fractions": list(self.class_fractions),
                "auto_fractions": None if self.auto_fractions is None
                else list(self.auto_fractions)}

    def lines(self) -> list[str]:
        """One line per warning and hint ("warning: …", "hint: …")."""
        return ([f"warning: {w}" for w in self.warnings]
                + [f"hint: {h}" for h in self.hints])


def _hint(hints: list[str], text: str) -> None:
    if text not in hints:
        hints.append(text)


def check_result(
    labels: np.ndarray,
    seeds: np.ndarray | None,
    n_classes: int,
    *,
    auto: np.ndarray | None = None,
    grey: np.ndarray | None = None,
    init: dict | None = None,
    stop_reason: str = "",
    alternations: int = 0,
    max_alternations: int = 0,
) -> ResultCheck:
    """Check final ``labels`` (Y, X) against the seed regions and the automatic start.

    Parameters
    ----------
    labels : int array (Y, X)
        Final class of every pixel (0 .. n_classes - 1).
    seeds : int array (Y, X) or None
        Seed regions (0 = none, k + 1 = class k); None for an automatic start.
    n_classes : int
    auto : int array (Y, X), optional
        The automatic start's labels.  When None and ``grey`` is given, it is
        computed from ``grey`` with :func:`._regions.auto_labels` (``init``:
        its keyword arguments), a smoothed threshold costing milliseconds.
    stop_reason, alternations, max_alternations
        The engine's stop reason and counts, for :attr:`ResultCheck.stopped`.

    Returns
    -------
    ResultCheck
    """
    labels = np.asarray(labels)
    k_cls = int(n_classes)
    out = ResultCheck(stopped=stop_text(stop_reason, alternations, max_alternations))
    size = max(labels.size, 1)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=k_cls)[:k_cls]
    out.class_fractions = [float(c) / size for c in counts]

    # 1. Seeds that ended up in another class.
    contradicted = []
    if seeds is not None:
        seeds = np.asarray(seeds)
        for k in range(k_cls):
            sel = seeds == k + 1
            n = int(sel.sum())
            if n == 0:
                continue
            kept = float(np.mean(labels[sel] == k))
            name = _class_name(k, k_cls)
            out.seed_agreement[name] = kept
            if kept < MIN_SEED_AGREEMENT:
                where = np.bincount(labels[sel].astype(np.int64), minlength=k_cls)
                where[k] = -1
                other = _class_name(int(np.argmax(where)), k_cls)
                contradicted.append(name)
                out.warnings.append(
                    f"{1 - kept:.0%} of the {name} seeds ended up in the {other}: "
                    "the result contradicts them")
    if contradicted:
        _hint(out.hints, "move the " + " and ".join(contradicted) + " box(es) onto a "
              "typical part of that region, or add boxes on other examples of it")

    # 2. A class that (almost) vanished, or shrank far below the automatic start.
    if auto is None and grey is not None:
        from ._regions import auto_labels

        try:
            auto = auto_labels(np.asarray(grey, np.float32), k_cls, **(init or {}))
        except Exception:  # a flat image has no automatic start: nothing to compare
            auto = None
    if auto is not None:
        auto = np.asarray(auto)
        a_counts = np.bincount(auto.ravel().astype(np.int64), minlength=k_cls)[:k_cls]
        out.auto_fractions = [float(c) / size for c in a_counts]
    first = 1 if k_cls == 2 else 0  # two classes: the background cannot "collapse"
    for k in range(first, k_cls):
        frac = out.class_fractions[k]
        name = _class_name(k, k_cls)
        auto_frac = out.auto_fractions[k] if out.auto_fractions is not None else None
        if frac < MIN_CLASS_FRACTION:
            extra = (f" (the automatic start had {_pct(auto_frac)})"
                     if auto_frac is not None and auto_frac > frac else "")
            out.warnings.append(f"the {name} covers only {_pct(frac)} of the image{extra}: "
                                "the mask collapsed")
        elif auto_frac is not None and auto_frac >= MIN_CLASS_FRACTION and (
                frac < MIN_AUTO_RATIO * auto_frac):
            out.warnings.append(f"the {name} covers {_pct(frac)} of the image, far below the "
                                f"{_pct(auto_frac)} of the automatic start")
        else:
            continue
        if seeds is not None and np.any(seeds):
            _hint(out.hints, "check the seed boxes: a box on a patch brighter or darker than "
                  "the rest of its region teaches that region the wrong intensity; move it, "
                  "add boxes elsewhere, or run without seeds to compare")
        _hint(out.hints, "lower λ scale (e.g. 0.5) if small objects are smoothed away")
    return out
