"""NS-N2N inference on volumes larger than memory: slab by slab along the slice axis.

The in-memory path (:meth:`NSN2NModel.iter_denoise`) needs two statistics of the
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
per-slice filters, so recomputing them in the halo changes nothing.

Peak memory: a slab plus its halo (``slab + 4`` planes) and the network's
tiles; the number of slices never matters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import DuetInputError
from ..intensity import Normalizer
from ._volume import NORM_HIGH, NORM_LOW, StackLayout, layout_for

# Slices the 2.5D network reads on each side of the slice it denoises (offsets +-2).
CONTEXT_HALO = 2
# Pixels per slab when the slab size is automatic (a slab is at most 16 slices).
_SLAB_PIXELS = 8 * 1024 * 1024
_MAX_SLAB = 16


@dataclass
class ChunkProgress:
    """Progress of :func:`iter_denoise_chunked`: ``done`` of ``total`` units of ``stage``.

    Stages: ``"statistics"`` (slabs read for the normalisation and tau) and
    ``"denoise"`` (slices denoised; ``slab`` of ``slabs`` finished, ``skipped``
    of them done by an earlier, interrupted run).
    """

    stage: str
    done: int
    total: int
    slab: int = 0
    slabs: int = 0
    skipped: int = 0
    elapsed: float = 0.0
    eta: float = 0.0


def auto_slab(plane_pixels: int) -> int:
    """Slices per slab: about 8 Mpx per slab, 1 to 16 slices."""
    return int(np.clip(_SLAB_PIXELS // max(int(plane_pixels), 1), 1, _MAX_SLAB))


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
def _fit_normalizer(read: Callable[[int, int], np.ndarray], n_z: int, slab: int,
                    tick: Callable[[], None]) -> Normalizer:
    """The percentile normaliser of a stack read slab by slab (as ``fit_normalizer``)."""
    hist = np.zeros(65536, np.int64)
    n = 0
    for z0 in range(0, n_z, slab):
        k = _keys(read(z0, min(z0 + slab, n_z)))
        hist += np.bincount(k >> np.uint32(16), minlength=65536)
        n += k.size
        tick()
    ranks = []
    for q in (NORM_LOW, NORM_HIGH):
        ranks += list(_virtual_index(n, q)[:2])
    hi_bins = _rank_bins(hist, ranks)
    wanted = sorted({b for b, _ in hi_bins})
    low_hist = {b: np.zeros(65536, np.int64) for b in wanted}
    for z0 in range(0, n_z, slab):
        k = _keys(read(z0, min(z0 + slab, n_z)))
        top = k >> np.uint32(16)
        for b in wanted:
            sel = k[top == b] & np.uint32(0xFFFF)
            if sel.size:
                low_hist[b] += np.bincount(sel, minlength=65536)
        tick()
    exact = {}
    for r, (b, within) in zip(ranks, hi_bins, strict=True):
        (lb, _), = _rank_bins(low_hist[b], [within])
        exact[r] = _from_key((b << 16) | lb)
    lo_v, hi_v = _percentile_from_order_stats(n, (NORM_LOW, NORM_HIGH), exact.__getitem__)
    scale = float(hi_v - lo_v)
    if not np.isfinite(scale) or scale <= 1e-12 * max(1.0, abs(float(lo_v))):
        scale = 1.0
    return Normalizer(offset=float(lo_v), scale=scale)


def _fit_tau(read_norm: Callable[[int, int], np.ndarray], n_z: int, plane: int, slab: int,
             config, tick: Callable[[], None]) -> float:
    """``auto_tau`` of the stack's guide differences, with the in-memory subsampling."""
    from ._guide import guide_stack
    from ._weights import auto_tau

    size = (n_z - 1) * plane
    stride = size // 1_000_000 if size > 2_000_000 else 1
    parts, prev = [], None
    for z0 in range(0, n_z, slab):
        guides = guide_stack(read_norm(z0, min(z0 + slab, n_z)), config)
        if prev is not None:
            guides = np.concatenate([prev[None], guides])
            first_pair = z0 - 1
        else:
            first_pair = 0
        diffs = np.abs(np.diff(guides, axis=0)).astype(np.float32, copy=False)
        flat = diffs.ravel()
        start = (-first_pair * plane) % stride
        parts.append(flat[start::stride].copy())
        prev = guides[-1]
        tick()
    return auto_tau(np.concatenate(parts), config.tau_factor)


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
) -> Generator[ChunkProgress, None, dict[str, Any]]:
    """Denoise ``source`` into ``out`` slab by slab, yielding progress.

    Parameters
    ----------
    model : NSN2NModel
        The trained model.
    source : array-like
        nD volume (numpy, zarr, dask...); only slabs are read from it.
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

    Returns the final state (``normalizers``, ``taus``, ``done``, ``slab``).
    """
    import torch

    layout = layout_for(tuple(int(s) for s in source.shape), axis)
    tta = model.config.tta if tta is None else bool(tta)
    io = StackIO(layout)
    n_s = layout.n_stacks
    n_z = layout.shape[layout.axis]
    plane = layout.shape[layout.plane_axes[0]] * layout.shape[layout.plane_axes[1]]
    state = dict(state or {})
    slab = int(state.get("slab") or slab or auto_slab(plane))
    if slab < 1:
        raise DuetInputError(f"slab must be at least 1 slice, got {slab}")
    n_slabs = -(-n_z // slab)
    halo = CONTEXT_HALO if model.is_context else 0
    t0 = time.perf_counter()

    # 1. Statistics (skipped when resuming: the saved ones give the same result).
    if "normalizers" not in state or ("taus" not in state and model.is_context):
        passes = 3 if model.is_context else 2
        total = n_s * n_slabs * passes
        count = [0]
        events: list[ChunkProgress] = []

        def tick() -> None:
            count[0] += 1
            events.append(ChunkProgress("statistics", count[0], total,
                                        elapsed=time.perf_counter() - t0))

        norms, taus = [], []
        for s in range(n_s):
            def read(z0, z1, s=s):
                return io.read(source, s, z0, z1)

            norm = _fit_normalizer(read, n_z, slab, tick)
            yield from events
            events.clear()
            norms.append(norm)
            if model.is_context:
                if model.config.tau is not None:
                    taus.append(float(model.config.tau))
                else:
                    taus.append(_fit_tau(lambda z0, z1, read=read, norm=norm:
                                         norm.forward(read(z0, z1)),
                                         n_z, plane, slab, model.config, tick))
                yield from events
                events.clear()
        state.update(slab=slab, normalizers=[n.to_dict() for n in norms], taus=taus, done=[])
        if save_state is not None:
            save_state(dict(state))
    norms = [Normalizer(**d) for d in state["normalizers"]]
    taus = list(state.get("taus") or [])
    done = set(int(i) for i in state.get("done", []))
    skipped = len(done)

    # 2. Denoise slab by slab.
    total_slices = n_s * n_z
    slices_done = sum(min(slab, n_z - (i % n_slabs) * slab) for i in done)
    computed = 0
    t1 = time.perf_counter()
    for s in range(n_s):
        for k in range(n_slabs):
            idx = s * n_slabs + k
            if idx in done:
                continue
            z0, z1 = k * slab, min((k + 1) * slab, n_z)
            a, b = max(0, z0 - halo), min(n_z, z1 + halo)
            sub = norms[s].forward(io.read(source, s, a, b))
            w = None
            if model.is_context:
                from ._guide import guide_stack
                from ._weights import weight_maps

                w = weight_maps(guide_stack(sub, model.config), model.config, tau=taus[s])[0]
            den = np.empty((z1 - z0, *sub.shape[1:]), np.float32)
            std = np.empty_like(den) if (tta and uncertainty is not None) else None
            with torch.inference_mode():
                for z in range(z0, z1):
                    mean, sd = model.predict_stack_slice(sub, z - a, w, tta)
                    den[z - z0] = norms[s].inverse(mean)
                    if std is not None:
                        std[z - z0] = norms[s].inverse_scale(sd)
            io.write(out, s, z0, den)
            if std is not None:
                io.write(uncertainty, s, z0, std)
            done.add(idx)
            state["done"] = sorted(done)
            if save_state is not None:
                save_state(dict(state))
            slices_done += z1 - z0
            computed += z1 - z0
            el = time.perf_counter() - t1
            eta = el / computed * (total_slices - slices_done)
            yield ChunkProgress("denoise", slices_done, total_slices, slab=len(done),
                                slabs=n_s * n_slabs, skipped=skipped,
                                elapsed=time.perf_counter() - t0, eta=eta)
    return state
