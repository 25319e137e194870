"""Self2Seg on stacks: every 2D plane of a (..., Y, X) image segmented on its own.

The planes are independent runs of :func:`iter_self2seg` with the same
configuration (and seed), so a plane's result equals running
:func:`self2seg` on that plane alone.  Seeds are one region image for every
plane, or one per plane; a plane without any seed pixel starts from the
automatic initialisation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..core.errors import DuetInputError
from ..core.progress import Progress, run_to_end
from ._config import Self2SegConfig
from ._engine import Self2SegProgress, Self2SegResult, Self2SegState
from ._regions import validate_regions

__all__ = ["Self2SegStackState", "Self2SegStackResult", "iter_self2seg_stack", "self2seg_stack",
           "stack_layout"]


@dataclass(kw_only=True)
class Self2SegStackState(Progress):
    """Progress of a stack run: the plane being segmented and its latest alternation.

    After a plane's last alternation one more state is yielded for it, with
    ``result`` set (``finished`` is then True) and ``state`` its final state.
    The base fields count planes: ``done`` planes finished of ``total``
    (= ``n_planes``); ``stage`` is ``"plane"``, ``elapsed`` the plane's state's
    and ``fraction`` counts alternations within the plane.
    """

    plane: int  # running number of the plane, 0 .. n_planes - 1
    n_planes: int
    index: tuple[int, ...]  # the plane's index along the leading axes
    state: Self2SegState
    result: Self2SegResult | None = None

    def __post_init__(self) -> None:
        self.stage = self.stage or "plane"
        self.done = int(self.plane) + (1 if self.result is not None else 0)
        self.total = int(self.n_planes)
        if not self.elapsed:
            self.elapsed = float(self.state.elapsed)

    @property
    def finished(self) -> bool:
        """True on the extra state yielded once the plane is finished."""
        return self.result is not None

    def fields(self) -> tuple[str, int | None, int | None, dict[str, Any]]:
        """One count over all planes, in alternations (see :meth:`Progress.fields`)."""
        st = self.state
        per = max(int(st.max_alternations), 1)
        done = (self.plane + 1) * per if self.finished else self.plane * per + int(st.alternation)
        return ("self2seg", done, self.n_planes * per,
                {"plane": self.plane + 1, "planes": self.n_planes,
                 "alternation": st.alternation, "energy": st.energy})

    @property
    def fraction(self) -> float:
        """Share of the stack done (each plane's alternations count equally)."""
        if self.result is not None:
            within = 1.0
        else:
            within = self.state.alternation / max(self.state.max_alternations, 1)
        return min((self.plane + min(within, 1.0)) / max(self.n_planes, 1), 1.0)


@dataclass
class Self2SegStackResult:
    """Results of every plane, in the stack's shape."""

    labels: np.ndarray  # (..., Y, X) uint8
    denoised: np.ndarray  # (..., Y, X) or (..., Y, X, 3) float32
    experts: np.ndarray  # (K, ..., Y, X) or (K, ..., Y, X, 3) float32
    indices: list[tuple[int, ...]]  # leading index of each plane, in run order
    plane_reports: list[dict]  # Self2SegResult.report() of each plane (same order)
    config: Self2SegConfig
    image_shape: tuple = ()
    image_dtype: str = ""
    rgb: bool = False
    seeded: list[bool] = field(default_factory=list)  # plane started from seeds (else automatic)
    timings: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """Foreground mask (labels > 0)."""
        return self.labels > 0

    @cached_property
    def instances(self) -> np.ndarray:
        """Instance labels (int32) of every plane, numbered uniquely across the stack."""
        from ._instances import label_instances

        return label_instances(self.labels, self.config.n_classes)

    def save(self, folder, **kwargs) -> list:
        """Write mask.tif, labels.tif, denoised.tif, expert_<k>.tif and report.json into
        ``folder`` (see :func:`~._save.save_self2seg` for the options); returns the paths."""
        from ._save import save_self2seg

        return save_self2seg(self, folder, **kwargs)

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary: parameters, image, one report per plane, timings."""
        from ..core.versions import versions

        k = self.config.n_classes
        counts = np.bincount(self.labels.ravel(), minlength=k)
        planes = []
        for idx, rep, seeded in zip(self.indices, self.plane_reports, self.seeded, strict=True):
            rep = {key: v for key, v in rep.items() if key not in ("parameters", "versions")}
            planes.append({"index": [int(i) for i in idx], "seeded": bool(seeded), **rep})
        return {
            "method": "self2seg",
            "parameters": self.config.to_dict(),
            "image": {"shape": [int(s) for s in self.image_shape], "dtype": self.image_dtype,
                      "rgb": bool(self.rgb), "planes": len(self.indices)},
            "class_fractions": [float(c) / max(1, self.labels.size) for c in counts],
            "planes": planes,
            "timings": {key: float(v) for key, v in self.timings.items()},
            "versions": versions(),
        }


def stack_layout(shape: tuple[int, ...], rgb: bool | None = None) -> tuple[tuple, tuple, bool]:
    """Split a stack's shape into ``(leading shape, (Y, X), rgb)``.

    A last axis of 3 or 4 is colour (RGB, RGBA: alpha dropped) unless
    ``rgb=False``: read as grey, that axis would be an image side of 3 or 4
    pixels, too small to segment, so the choice is never ambiguous for a
    valid image.  A last axis of 1 is a grey channel axis and is dropped.
    """
    shape = tuple(int(s) for s in shape)
    if rgb is None:
        rgb = len(shape) >= 3 and shape[-1] in (3, 4)
    if rgb:
        if len(shape) < 3 or shape[-1] not in (3, 4):
            raise DuetInputError(f"an RGB stack needs a last axis of 3 or 4, got shape {shape}")
        plane = shape[-3:-1]
        lead = shape[:-3]
    else:
        if len(shape) >= 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) < 2:
            raise DuetInputError(f"Self2Seg needs images of at least 2 dimensions, got {shape}")
        plane = shape[-2:]
        lead = shape[:-2]
    return lead, plane, bool(rgb)


def _plane_engine():
    """``iter_self2seg`` as :mod:`._engine` holds it now (so a wrapped engine is used)."""
    from . import _engine

    return _engine.iter_self2seg


def _plane_regions(regions, lead: tuple, plane: tuple,
                   n_classes: int) -> Callable[[tuple], np.ndarray | None]:
    """Check the seeds of every plane; return ``index -> seeds of that plane or None``."""
    if regions is None:
        return lambda idx: None
    reg = np.asarray(regions)
    if reg.shape == plane:
        shared = validate_regions(reg, plane, n_classes) if reg.any() else None
        return lambda idx: shared
    if reg.shape != lead + plane:
        want = f"{plane}" if not lead else f"{plane} (every plane) or {lead + plane} (per plane)"
        raise DuetInputError(f"regions shape {reg.shape} does not fit the stack: need {want}")
    seeded = set()
    for idx in np.ndindex(*lead):
        if reg[idx].any():
            try:
                validate_regions(reg[idx], plane, n_classes)
            except DuetInputError as exc:
                raise DuetInputError(f"plane {idx}: {exc}") from None
            seeded.add(idx)

    def per_plane(idx):
        return validate_regions(reg[idx], plane, n_classes) if idx in seeded else None

    return per_plane


def iter_self2seg_stack(
    stack, regions=None, config: Self2SegConfig | None = None, *, rgb: bool | None = None,
    progress: bool = False,
) -> Generator[Self2SegStackState | Self2SegProgress, None, Self2SegStackResult]:
    """Run Self2Seg on every 2D plane of a stack, yielding progress after every alternation.

    Parameters
    ----------
    stack : array (..., Y, X) or (..., Y, X, 3|4)
        Grey planes of any dtype, or RGB(A) planes (see :func:`stack_layout`
        for how colour is recognised).  Any leading axes (Z, T, ...); a 2D
        image is a stack of one plane.  Array-likes (dask, zarr) are read one
        plane at a time.
    regions : int array, optional
        Seeds (0 = unassigned, ``k + 1`` = class ``k``): one (Y, X) image for
        every plane, or one per plane (leading shape + (Y, X)).  A plane
        without any seed pixel starts from the automatic initialisation; a
        plane seeding only some classes is an error (as for one image).
        Every plane's seeds are checked before the first plane runs.
    config : Self2SegConfig, optional
        The same configuration (and seed) for every plane.
    rgb : bool, optional
        Force colour (True) or grey (False); None decides from the shape.
    progress : bool
        Also yield the engine's :class:`Self2SegProgress` events within an
        alternation (``plane`` and ``n_planes`` set), see :func:`iter_self2seg`.

    Yields
    ------
    Self2SegStackState
        After each alternation of each plane, plus one per finished plane
        (with its :class:`Self2SegResult`).
    Self2SegProgress
        Only with ``progress=True``: progress within an alternation.

    Returns
    -------
    Self2SegStackResult
        As the generator's return value (use :func:`self2seg_stack` to get it).
        Stopping between yields (``close()``) leaves nothing running.
    """
    cfg = config if config is not None else Self2SegConfig()
    if not isinstance(cfg, Self2SegConfig):
        raise DuetInputError("config must be a Self2SegConfig")
    t_start = time.perf_counter()
    if not hasattr(stack, "shape") or not hasattr(stack, "__getitem__"):
        stack = np.asarray(stack)
    shape = tuple(int(s) for s in stack.shape)
    lead, plane, is_rgb = stack_layout(shape, rgb)
    squeeze = not is_rgb and len(shape) >= 3 and shape[-1] == 1
    regions_of = _plane_regions(regions, lead, plane, cfg.n_classes)
    indices = list(np.ndindex(*lead))
    k_cls = cfg.n_classes
    chan = (3,) if is_rgb else ()
    # Allocated before the first plane runs: a stack too large fails at once.
    labels = np.zeros(lead + plane, np.uint8)
    denoised = np.zeros(lead + plane + chan, np.float32)
    experts = np.zeros((k_cls,) + lead + plane + chan, np.float32)
    reports: list[dict] = []
    seeded: list[bool] = []
    dtype = str(getattr(stack, "dtype", ""))
    engine = _plane_engine()
    n = len(indices)
    for number, idx in enumerate(indices):
        seeds = regions_of(idx)
        result, state = yield from _run_plane(engine, _read_plane(stack, idx, squeeze), seeds,
                                              cfg, progress, number=number, n_planes=n, idx=idx)
        labels[idx] = result.labels
        denoised[idx] = result.denoised
        experts[(slice(None), *idx)] = result.experts
        reports.append(result.report())
        seeded.append(seeds is not None)
        yield Self2SegStackState(plane=number, n_planes=n, index=idx, state=state,
                                 result=result)
    return Self2SegStackResult(
        labels=labels, denoised=denoised, experts=experts, indices=indices,
        plane_reports=reports, config=cfg, image_shape=shape, image_dtype=dtype, rgb=is_rgb,
        seeded=seeded, timings={"total": time.perf_counter() - t_start},
    )


def _read_plane(stack, idx: tuple[int, ...], squeeze: bool) -> np.ndarray:
    """One plane of ``stack`` as a NumPy array (the grey channel axis of 1 dropped)."""
    image = np.asarray(stack[idx] if idx else stack[...])
    return image[..., 0] if squeeze else image


def _run_plane(engine, image: np.ndarray, seeds, cfg: Self2SegConfig, progress: bool, *,
               number: int, n_planes: int, idx: tuple[int, ...]):
    """Run the engine on one plane, yielding its states (and progress) as the stack's.

    Returns ``(result, last state)``; an input error names the plane.
    """
    gen = engine(image, seeds, cfg, progress=True) if progress else engine(image, seeds, cfg)
    state = None
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            except DuetInputError as exc:
                if not idx:
                    raise
                raise DuetInputError(f"plane {idx}: {exc}") from None
            if isinstance(item, Self2SegProgress):
                yield dataclasses.replace(item, plane=number, n_planes=n_planes)
                continue
            state = item
            yield Self2SegStackState(plane=number, n_planes=n_planes, index=idx, state=state)
    finally:
        gen.close()
    if state is None:  # an engine that returned without yielding
        state = Self2SegState(
            alternation=result.alternations, max_alternations=cfg.max_alternations,
            labels=result.labels, u=result.u, experts=result.experts,
            denoised=result.denoised,
            energy=float(result.energies[-1]) if result.energies else float("nan"),
            energies=list(result.energies), elapsed=float(result.timings.get("total", 0)))
    return result, state


def self2seg_stack(
    stack, regions=None, config: Self2SegConfig | None = None, *, rgb: bool | None = None,
    callback: Callable[[Self2SegStackState], None] | None = None,
) -> Self2SegStackResult:
    """Run :func:`iter_self2seg_stack` to the end; ``callback`` gets every state."""
    return run_to_end(iter_self2seg_stack(stack, regions, config, rgb=rgb), callback)
