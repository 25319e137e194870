"""NS-N2N inference on volumes larger than memory: slab by slab along the slice axis.

The in-memory path (:meth:`NSN2NModel.iter_predict`) needs two statistics of the
whole stack before it denoises a slice: the intensity normalisation (0.1/99.9
percentiles) and, for the 2.5D network, the matching threshold tau (a quantile of
the guide differences of all neighbouring pairs).  Here both are computed in
streaming passes that give the same numbers:

* percentiles: an exact two-pass radix selection on the float32 values (a
  histogram of the high 16 bits of an order-preserving key, then of the low 16
  bits inside the bins that hold the wanted ranks), so memory stays at two
  65536-bin histograms whatever the volume size;
* tau: the guide differences are gathered with the same stride the in-memory
  path subsamples with (at most about 2 million values).

Then each slab of slices is read with a halo of 2 slices on each side (the
2.5D network's input reaches slices i-2..i+2, the match maps pairs i-1..i+1;
the 2D network needs none), and every slice of the slab is denoised with the
same code as in memory, so the result equals the in-memory result.  Guides are
per-slice filters, so recomputing them in the halo changes nothing.  A 3D
second stage reads 2 (``3d``) or 4 (``3d2``) more slices on each side
(``NSN2NModel.halo``), whose network estimates are computed again in each slab.

Peak memory: a slab plus its halo (``slab + 2 * halo`` planes) and the
network's tiles; the number of slices never matters.

Every pass is a set of slab tasks run by a :class:`~napari_duet.core.chunks.TaskRunner`:
here, one after the other, or on dask workers, which read their slab from the
input and write their denoised slab straight into the output store (whole
chunks along the slice axis), while the histograms and guide differences come
back to be combined here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.chunks import (
    ChunkProgress,
    TaskRunner,
    blocks,
    resolve,
    resolve_model,
    with_halo,
    worker_threads,
)
from ..core.errors import DuetInputError
from ..core.intensity import Normalizer
from ._volume import NORM_HIGH, NORM_LOW, StackLayout, layout_for

# Slices the 2.5D network reads on each side of the slice it denoises (offsets +-2).
CONTEXT_HALO = 2
# Pixels per slab when the slab size is automatic (a slab is at most 16 slices).
_SLAB_PIXELS = 8 * 1024 * 1024
_MAX_SLAB = 16


@dataclass(kw_only=True)
class SlabProgress(ChunkProgress):
    """Progress of :func:`iter_denoise_chunked`: ``done`` of ``total`` units of ``stage``.

    Stages: ``"statistics"`` (slabs read for the normalisation and tau) and
    ``"denoise"`` (slices denoised; ``slab`` of ``slabs`` finished, ``skipped``
    of them done by an earlier, interrupted run).
    """

    slab: int = 0
    slabs: int = 0


def auto_slab(plane_pixels: int, halo: int = 0) -> int:
    """Slices per slab: about 8 Mpx per slab, 1 to 16 slices, or to 4 ``halo`` for a model
    that reads ``halo`` slices on each side (a block-matched stage: 11), so the slices read
    twice stay about half of those denoised where the planes are small enough."""
    top = max(_MAX_SLAB, 4 * int(halo))
    return int(np.clip(_SLAB_PIXELS // max(int(plane_pixels), 1), 1, top))


class StackIO:
    """Read/write slabs ``[z0, z1)`` of stack ``s`` of an nD array-like (lazy arrays welcome)."""

    def __init__(self, layout: StackLayout) -> None:
        self.layout = layout
        kept = sorted((layout.axis, *layout.plane_axes))
        self._perm = [kept.index(a) for a in (layout.axis, *layout.plane_axes)]
        self._inv = list(np.argsort(self._perm))
        self._other_shape = [layout.shape[a] for a in layout.other_axes]

    def _index(self, s: int, z0: int, z1: int) -> tuple:
        sel: list[Any] = [slice(None)] * len(self.layout.shape)
        for a, i in zip(self.layout.other_axes,
                        np.unravel_index(s, self._other_shape) if self._other_shape else (),
                        strict=True):
            sel[a] = int(i)
        sel[self.layout.axis] = slice(z0, z1)
        return tuple(sel)

    def read(self, arr, s: int, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0..z1-1`` of stack ``s`` as float32 ``(Z, Y, X)``."""
        block = np.asarray(arr[self._index(s, z0, z1)])
        if block.dtype.kind not in "biuf":
            raise DuetInputError(f"volume has unsupported dtype {block.dtype}")
        out = np.ascontiguousarray(np.transpose(block, self._perm), dtype=np.float32)
        if not np.all(np.isfinite(out)):
            raise DuetInputError("volume contains NaN or infinite values")
        return out

    def write(self, arr, s: int, z0: int, data: np.ndarray) -> None:
        """Write ``(Z, Y, X)`` ``data`` at slices ``z0..`` of stack ``s``."""
        arr[self._index(s, z0, z0 + data.shape[0])] = np.transpose(data, self._inv)


# ---------------------------------------------------------------------- exact percentiles
def _keys(x: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 values."""
    b = np.ascontiguousarray(x, np.float32).ravel().view(np.uint32)
    return np.where(b >> 31, ~b, b | np.uint32(0x80000000)).astype(np.uint32)


def _from_key(k: int) -> float:
    k = np.uint32(k)
    b = k & np.uint32(0x7FFFFFFF) if k >> np.uint32(31) else ~k
    return float(np.array([b], np.uint32).view(np.float32)[0])


def _rank_bins(hist: np.ndarray, ranks: list[int]) -> list[tuple[int, int]]:
    """(bin, rank within the bin) of each 0-based rank."""
    cum = np.cumsum(hist)
    out = []
    for r in ranks:
        b = int(np.searchsorted(cum, r, side="right"))
        out.append((b, r - (int(cum[b - 1]) if b else 0)))
    return out


def _virtual_index(n: int, q: float) -> tuple[int, int, np.float64]:
    """numpy's ``linear`` percentile method: (previous rank, next rank, gamma)."""
    qq = np.true_divide(np.asarray([q], np.float64), 100)
    vi = (n * qq + (1 + qq * -1) - 1)[0]  # the order of operations numpy uses
    lo = int(np.floor(vi))
    lo, hi = (n - 1, n - 1) if vi >= n - 1 else (max(lo, 0), max(lo, 0) + 1)
    return lo, hi, np.float64(vi - lo)


def _percentile_from_order_stats(n: int, qs: tuple[float, ...], value) -> list[np.float64]:
    """numpy's ``linear`` percentiles from order statistics ``value(rank)`` (float64)."""
    out = []
    for q in qs:
        lo, hi, g = _virtual_index(n, q)
        a, b = np.float64(np.float32(value(lo))), np.float64(np.float32(value(hi)))
        d = b - a
        out.append(b - d * (1 - g) if g >= 0.5 else a + d * g)
    return out


# ---------------------------------------------------------------------- the passes
# Each pass is a set of tasks, one per slab, run by a TaskRunner (here or on dask
# workers); the partial results are combined here, in slab order.
def _read(source, layout: StackLayout, s: int, z0: int, z1: int) -> np.ndarray:
    worker_threads()
    return StackIO(layout).read(resolve(source), s, z0, z1)


def _task_high(task, source, layout) -> tuple[np.ndarray, int]:
    s, z0, z1 = task
    block = _read(source, layout, s, z0, z1)
    hist = np.zeros(65536, np.int64)
    # Plane by plane: the keys' temporaries are one plane, not the whole slab.
    for plane in block:
        hist += np.bincount(_keys(plane) >> np.uint32(16), minlength=65536)
    return hist, int(block.size)


def _task_low(task, source, layout, wanted) -> dict[int, np.ndarray]:
    s, z0, z1 = task
    out: dict[int, np.ndarray] = {}
    for plane in _read(source, layout, s, z0, z1):
        k = _keys(plane)
        top = k >> np.uint32(16)
        for b in wanted[s]:
            sel = k[top == b] & np.uint32(0xFFFF)
            if sel.size:
                h = np.bincount(sel, minlength=65536)
                out[b] = out[b] + h if b in out else h
    return out


def _task_tau(task, source, layout, norms, config, stride: int, plane: int,
              noise=None) -> np.ndarray:
    """The strided guide differences of the pairs ``(z0-1, z0) .. (z1-2, z1-1)`` of a slab."""
    from ._guide import guide_stack

    s, z0, z1 = task
    first = max(z0 - 1, 0)  # the slice before the slab pairs with its first slice
    norm = Normalizer(**norms[s])
    raw = _read(source, layout, s, first, z1)
    guides = guide_stack(norm.forward(noise.forward(raw) if noise is not None else raw), config)
    flat = np.abs(np.diff(guides, axis=0)).astype(np.float32, copy=False).ravel()
    return flat[(-first * plane) % stride::stride].copy()


def _normalizer_from(n: int, hist: np.ndarray, low_hist: dict[int, np.ndarray]) -> Normalizer:
    ranks = []
    for q in (NORM_LOW, NORM_HIGH):
        ranks += list(_virtual_index(n, q)[:2])
    exact = {}
    for r, (b, within) in zip(ranks, _rank_bins(hist, ranks), strict=True):
        (lb, _), = _rank_bins(low_hist[b], [within])
        exact[r] = _from_key((b << 16) | lb)
    lo_v, hi_v = _percentile_from_order_stats(n, (NORM_LOW, NORM_HIGH), exact.__getitem__)
    scale = float(hi_v - lo_v)
    if not np.isfinite(scale) or scale <= 1e-12 * max(1.0, abs(float(lo_v))):
        scale = 1.0
    return Normalizer(offset=float(lo_v), scale=scale)


def _noise_normalizer(norm: Normalizer, noise) -> Normalizer:
    """The normaliser of the noise-transformed data from that of the raw data.

    The transform is monotone, so it maps the raw percentiles onto those of the
    transformed data (as the in-memory path fits them)."""
    if noise.kind != "poisson-gaussian":
        return norm
    lo, hi = noise.forward(np.array([norm.offset, norm.offset + norm.scale], np.float32))
    scale = float(hi - lo)
    return Normalizer(offset=float(lo), scale=scale if scale > 1e-12 else 1.0)


def _statistics(runner: TaskRunner, source, layout: StackLayout, slab: int, model,
                t0: float) -> Generator[SlabProgress, None, tuple[list[Normalizer], list]]:
    """Per-stack normalisers (exact percentiles, two passes) and taus (one more pass)."""
    n_s, n_z = layout.n_stacks, layout.shape[layout.axis]
    plane = layout.shape[layout.plane_axes[0]] * layout.shape[layout.plane_axes[1]]
    tasks = [(s, z0, z1) for s in range(n_s) for z0, z1 in blocks(n_z, slab)]
    fit_tau = model.is_context and model.config.tau is None
    total = len(tasks) * (3 if fit_tau else 2)
    count = 0

    def tick() -> SlabProgress:
        nonlocal count
        count += 1
        return SlabProgress(stage="statistics", done=count, total=total,
                            elapsed=time.perf_counter() - t0)

    hist = np.zeros((n_s, 65536), np.int64)
    sizes = [0] * n_s
    for (s, _, _), (h, n) in runner.run(_task_high, tasks, source, layout):
        hist[s] += h
        sizes[s] += n
        yield tick()
    wanted = []
    for s in range(n_s):
        ranks = []
        for q in (NORM_LOW, NORM_HIGH):
            ranks += list(_virtual_index(sizes[s], q)[:2])
        wanted.append(sorted({b for b, _ in _rank_bins(hist[s], ranks)}))
    low = [{b: np.zeros(65536, np.int64) for b in wanted[s]} for s in range(n_s)]
    for (s, _, _), parts in runner.run(_task_low, tasks, source, layout, wanted):
        for b, h in parts.items():
            low[s][b] += h
        yield tick()
    norms = [_noise_normalizer(_normalizer_from(sizes[s], hist[s], low[s]), model.noise)
             for s in range(n_s)]
    taus: list[float] = []
    if model.is_context and not fit_tau:
        taus = [float(model.config.tau)] * n_s
    elif fit_tau:
        from ._weights import auto_tau

        size = (n_z - 1) * plane
        stride = size // 1_000_000 if size > 2_000_000 else 1  # as the in-memory path
        parts: dict[tuple, np.ndarray] = {}
        for task, part in runner.run(_task_tau, tasks, source, layout,
                                     [n.to_dict() for n in norms], model.config, stride, plane,
                                     model.noise):
            parts[task] = part
            yield tick()
        for s in range(n_s):
            mine = [parts[t] for t in tasks if t[0] == s]
            taus.append(auto_tau(np.concatenate(mine), model.config.tau_factor))
    return norms, taus


class _NormalisedSlices:
    """Slices of stack ``s`` of ``source``, read one at a time and normalised as for
    denoising: the lazy stack that :meth:`NSN2NModel.noise_level` reads (a few
    slices), so that the noise level is the in-memory path's."""

    def __init__(self, source, layout: StackLayout, s: int, norm: Normalizer, noise) -> None:
        self.io, self.source, self.s = StackIO(layout), source, s
        self.norm, self.noise = norm, noise
        self.shape = (layout.shape[layout.axis],
                      layout.shape[layout.plane_axes[0]], layout.shape[layout.plane_axes[1]])

    def __getitem__(self, z: int) -> np.ndarray:
        raw = self.io.read(resolve(self.source), self.s, int(z), int(z) + 1)
        return np.asarray(self.norm.forward(self.noise.forward(raw))[0], np.float32)


def _noise_levels(model, source, layout: StackLayout, norms: list[Normalizer]) -> list:
    """The blind network's noise level of each stack (None for the other networks)."""
    return [model.noise_level(_NormalisedSlices(source, layout, s, n, model.noise))
            for s, n in enumerate(norms)]


def _task_denoise(task, model, source, out, uncertainty, layout: StackLayout, halo: int,
                  by_stack: dict, tta: bool) -> tuple[int, int]:
    """Denoise slices ``z0..z1-1`` of stack ``s`` (read with the halo) into ``out``.

    ``by_stack[s]`` is the stack's normaliser (as a dict), tau and noise level.
    """
    import torch

    s, z0, z1 = task
    norm, tau, sigma = by_stack[s]
    worker_threads()
    model = resolve_model(model)
    io = StackIO(layout)
    normalizer = Normalizer(**norm)
    a, b = with_halo(z0, z1, halo, layout.shape[layout.axis])
    sub = normalizer.forward(model.noise.forward(io.read(resolve(source), s, a, b)))
    w = None
    if model.is_context:
        from ._guide import guide_stack
        from ._weights import weight_maps

        w = weight_maps(guide_stack(sub, model.config), model.config, tau=tau)[0]
    den = np.empty((z1 - z0, *sub.shape[1:]), np.float32)
    std = np.empty_like(den) if (tta and uncertainty is not None) else None
    with torch.inference_mode():
        for item in model.iter_slices(sub, z0 - a, z1 - a, w, tta, sigma):
            if item is None:
                continue
            z, mean, sd = item[0] + a, item[1], item[2]
            d = normalizer.inverse(mean)
            den[z - z0] = model.noise.inverse(d)
            if std is not None:
                std[z - z0] = model.noise.inverse_scale(normalizer.inverse_scale(sd), d)
    # The slab is whole chunks of ``out`` along the axis: no other task writes them.
    io.write(resolve(out), s, z0, den)
    if std is not None:
        io.write(resolve(uncertainty), s, z0, std)
    return z0, z1


def iter_denoise_chunked(
    model,
    source,
    out,
    *,
    axis: int = 0,
    tta: bool | None = None,
    slab: int | None = None,
    uncertainty=None,
    state: dict[str, Any] | None = None,
    save_state: Callable[[dict[str, Any]], None] | None = None,
    runner: TaskRunner | None = None,
    device: str = "auto",
) -> Generator[SlabProgress, None, dict[str, Any]]:
    """Denoise ``source`` into ``out`` slab by slab, yielding progress.

    Parameters
    ----------
    model : NSN2NModel
        The trained model.
    source : array-like or ImageRef
        nD volume (numpy, zarr, dask...); only slabs are read from it.  On
        dask workers: a zarr array in a local store or an
        :class:`~napari_duet.core.chunks.ImageRef`.
    out, uncertainty : array-like
        Writable arrays of ``source``'s shape (e.g. zarr arrays); ``uncertainty``
        (optional, needs TTA) receives the spread over flips/rotations.
    slab : int, optional
        Slices per slab (default :func:`auto_slab`).  Chunk ``out`` with this
        depth along ``axis`` so that slabs never share a chunk.
    state : dict, optional
        A state saved by an earlier, interrupted run (``save_state``'s argument):
        its statistics are reused and its finished slabs skipped.
    save_state : callable, optional
        Called with the state after the statistics and after every slab; store
        it so that a killed run can resume.
    runner : TaskRunner, optional
        Where the slab tasks run (default: here, one after the other).  On dask,
        ``out`` and ``uncertainty`` must be zarr arrays in a local or shared store.
    device : str
        Device the workers load the model on (dask only).

    Returns the final state (``normalizers``, ``taus``, ``sigmas`` (the blind
    network's noise levels), ``done``, ``slab``).
    """
    layout = layout_for(tuple(int(s) for s in source.shape), axis)
    tta = model.config.tta if tta is None else bool(tta)
    runner = runner or TaskRunner("local")
    n_s = layout.n_stacks
    n_z = layout.shape[layout.axis]
    plane = layout.shape[layout.plane_axes[0]] * layout.shape[layout.plane_axes[1]]
    state = dict(state or {})
    slab = int(state.get("slab") or slab or auto_slab(plane, model.halo))
    if slab < 1:
        raise DuetInputError(f"slab must be at least 1 slice, got {slab}")
    n_slabs = -(-n_z // slab)
    halo = model.halo  # slices read on each side: 2 for the 2.5D and blind networks, + a 3D stage's
    t0 = time.perf_counter()
    src = runner.ref(source, "volume")
    with_std = tta and uncertainty is not None

    # 1. Statistics (skipped when resuming: the saved ones give the same result).
    if ("normalizers" not in state or ("taus" not in state and model.is_context)
            or ("sigmas" not in state and model.is_blind)):
        norms, taus = yield from _statistics(runner, src, layout, slab, model, t0)
        state.update(slab=slab, normalizers=[n.to_dict() for n in norms], taus=taus, done=[],
                     sigmas=_noise_levels(model, src, layout, norms))
        if save_state is not None:
            save_state(dict(state))
    norm_dicts = list(state["normalizers"])
    taus = list(state.get("taus") or [])
    done = set(int(i) for i in state.get("done", []))
    skipped = len(done)

    # 2. Denoise slab by slab (task k of stack s has the number s * n_slabs + k).
    total_slices = n_s * n_z
    slices_done = sum(min(slab, n_z - (i % n_slabs) * slab) for i in done)
    computed = 0
    t1 = time.perf_counter()
    todo = [(s, z0, z1) for s in range(n_s) for k, (z0, z1) in enumerate(blocks(n_z, slab))
            if s * n_slabs + k not in done]
    sigmas = list(state.get("sigmas") or [None] * n_s)
    by_stack = {s: (norm_dicts[s], taus[s] if taus else None, sigmas[s]) for s in range(n_s)}
    payload = runner.model(model, device) if todo else None
    dst, unc = runner.ref(out, "output"), runner.ref(uncertainty if with_std else None, "output")
    for (s, z0, z1), _ in runner.run(_task_denoise, todo, payload, src, dst, unc, layout,
                                     halo, by_stack, tta):
        done.add(s * n_slabs + z0 // slab)
        state["done"] = sorted(done)
        if save_state is not None:
            save_state(dict(state))
        slices_done += z1 - z0
        computed += z1 - z0
        el = time.perf_counter() - t1
        eta = el / computed * (total_slices - slices_done)
        yield SlabProgress(stage="denoise", done=slices_done, total=total_slices,
                           slab=len(done), slabs=n_s * n_slabs, skipped=skipped,
                           elapsed=time.perf_counter() - t0, eta=eta)
    return state
