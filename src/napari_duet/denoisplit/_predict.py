"""Tiled posterior sampling: MMSE, per-pixel std and (optionally) the samples.

Each tile is run N times (the latents are sampled every pass); tiles and
their samples are packed into batches of ``batch_size`` network passes.
Only the tiles in flight live on the device, and only each tile's inner part
is kept (no blending), so memory stays bounded for any image size.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.progress import Progress
from ..core.tiling import count_tiles, iter_tiles, pad_to_multiple


@dataclass(kw_only=True)
class PredictProgress(Progress):
    """Yielded while predicting (stage ``"predict"``): ``done`` of ``total`` tiles x frames."""

    stage: str = "predict"


@dataclass
class SplitResult:
    """What a prediction gives back, in the training data's intensity scale.

    Attributes
    ----------
    mean : numpy.ndarray
        (C, ...) MMSE estimate of each of the C channels, float32.
    std : numpy.ndarray
        (C, ...) per-pixel std of the posterior samples, calibrated when the
        model has a calibration (see ``calibrated``).
    samples : numpy.ndarray or None
        (N, C, ...) posterior samples when requested.
    noise_std : numpy.ndarray or None
        (C, ...) expected noise std of a noisy acquisition of each channel
        (noise models at the MMSE, or the Gaussian likelihood's variance).
    calibrated : bool
        Whether ``std`` has the model's calibration applied.
    info : dict
        Samples, tile, timings and model metadata for reports.
    """

    mean: np.ndarray
    std: np.ndarray
    samples: np.ndarray | None = None
    noise_std: np.ndarray | None = None
    calibrated: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def channel_names(self) -> list[str]:
        """One name per channel (from the model; A, B, C, ... by default)."""
        from ._data import channel_letter

        names = list(self.info.get("channel_names") or [])
        n = self.mean.shape[0]
        return names[:n] + [channel_letter(c) for c in range(len(names), n)]

    def save(self, folder, **kwargs) -> list:
        """Write mmse.tif, std.tif (a/b, std_a/std_b for two structures), samples.tif and
        report.json into ``folder``, as ``duet split predict`` (:func:`._save.save_split`)."""
        from ._save import save_split

        return save_split(self, folder, **kwargs)

    def report(self) -> dict[str, Any]:
        """JSON-ready summary (shapes, settings, per-channel statistics)."""
        chans = self.channel_names
        per_channel = {}
        for c, name in enumerate(chans):
            per_channel[name] = {
                "mean_intensity": float(self.mean[c].mean()),
                "mean_std": float(self.std[c].mean()),
                "max_std": float(self.std[c].max()),
            }
            if self.noise_std is not None:
                per_channel[name]["mean_noise_std"] = float(self.noise_std[c].mean())
        return {
            "shape": list(self.mean.shape[1:]),
            "n_channels": len(chans),
            "channel_names": list(chans),
            "samples": int(self.info.get("samples", 0)),
            "std_calibrated": bool(self.calibrated),
            "channels": per_channel,
            **{k: v for k, v in self.info.items() if k not in ("channel_names",)},
        }


def tiled_sampling(
    net_fn: Callable,
    frames: np.ndarray,
    *,
    samples: int,
    tile: int,
    overlap: int,
    multiple: int,
    batch_size: int,
    device,
    out_channels: int,
    return_samples: bool,
    context: int = 0,
    samples_out=None,
) -> Generator[tuple[int, int], None, dict]:
    """Run ``net_fn`` over (F, Y, X) normalised frames tile by tile, N samples each.

    ``net_fn`` maps a (b, 1 + context, T, T) tensor to (b, out_channels, T, T);
    with ``context`` > 0, channels 1.. are each tile's lateral-context inputs
    (:func:`._data.context_inputs`, taken from the whole frame).
    Yields ``(tiles done, tiles total)``; returns a dict of numpy arrays in
    normalised units: ``mean`` and ``std`` (C, F, Y, X) (C = out_channels;
    std from N samples, unbiased; zero for N = 1) and ``samples``
    (N, C, F, Y, X) or None.  ``samples_out``, a writable (N, C, F, Y, X)
    array-like (e.g. a memory-mapped file), receives the samples instead of
    an array in memory, so their size is bounded by the disk, not the RAM;
    its C may be smaller than ``out_channels`` (the first C are kept).
    """
    import torch

    n_frames, h, w = frames.shape
    mean = np.zeros((out_channels, n_frames, h, w), np.float32)
    std = np.zeros_like(mean)
    smp = None
    if return_samples:
        shape = (samples, out_channels, n_frames, h, w)
        if samples_out is not None:
            # It may keep only the first channels (the structures, not their variances).
            got = tuple(samples_out.shape)
            if len(got) != 5 or got[0] != samples or not 1 <= got[1] <= out_channels \
                    or got[2:] != shape[2:]:
                raise ValueError(f"samples_out has shape {got}, not {shape}")
        smp = np.zeros(shape, np.float32) if samples_out is None else samples_out
    total, done = 0, 0
    padded_shape = None
    for f in range(n_frames):
        padded, crop = pad_to_multiple(frames[f], multiple)
        padded_shape = padded.shape
        total += count_tiles(padded_shape, tile, overlap)
    for f in range(n_frames):
        padded, crop = pad_to_multiple(frames[f], multiple)
        frame_t = torch.as_tensor(np.ascontiguousarray(padded), device=device)
        tiles = list(iter_tiles(padded.shape, tile, overlap))
        # Work items: (tile index, sample index), tile-major so tiles finish in order.
        items = [(t, k) for t in range(len(tiles)) for k in range(samples)]
        pending: dict[int, list] = {}
        # Each tile's input is built once, reused by its samples, dropped when it is done.
        tile_inputs: dict[int, torch.Tensor] = {}
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            for t, _ in chunk:
                if t not in tile_inputs:
                    tile_inputs[t] = _tile_input(frame_t, tiles[t], context)
            inp = torch.stack([tile_inputs[t] for t, _ in chunk])
            out = net_fn(inp).float()
            for j, (t, _) in enumerate(chunk):
                pending.setdefault(t, []).append(out[j])
            for t in [t for t, outs in pending.items() if len(outs) == samples]:
                outs = torch.stack(pending.pop(t))  # (N, C, T, T)
                tile_inputs.pop(t, None)
                _write_tile(tiles[t], outs, crop, f, mean, std, smp)
                done += 1
            yield done, total
    return {"mean": mean, "std": std, "samples": smp}


def _tile_input(frame_t, tile, context: int):
    """(1 + context, T, T) network input of one tile: the tile and its lateral context."""
    import torch

    from ._data import context_inputs

    x = frame_t[tile.read][None]
    if context:
        ry, rx = tile.read
        pos = torch.tensor([0, ry.start, rx.start], device=frame_t.device)
        ctx = context_inputs(frame_t[None], pos[:1], pos[1:2], pos[2:], tuple(x.shape[-2:]),
                             context)[0]
        x = torch.cat([x, ctx], dim=0)
    return x


def _write_tile(tile, outs, crop, f, mean, std, smp):
    """Keep the tile's inner part, mapped from padded to image coordinates."""
    import torch

    ky, kx = tile.keep
    wy, wx = tile.write
    cy, cx = crop
    # Intersect the written region (padded coordinates) with the unpadded image.
    y0, y1 = max(wy.start, cy.start), min(wy.stop, cy.stop)
    x0, x1 = max(wx.start, cx.start), min(wx.stop, cx.stop)
    if y0 >= y1 or x0 >= x1:
        return
    ty = slice(ky.start + y0 - wy.start, ky.start + y1 - wy.start)
    tx = slice(kx.start + x0 - wx.start, kx.start + x1 - wx.start)
    oy = slice(y0 - cy.start, y1 - cy.start)
    ox = slice(x0 - cx.start, x1 - cx.start)
    part = outs[:, :, ty, tx]
    n = part.shape[0]
    m = part.mean(0)
    s = part.std(0, unbiased=True) if n > 1 else torch.zeros_like(m)
    mean[:, f, oy, ox] = m.cpu().numpy()
    std[:, f, oy, ox] = s.cpu().numpy()
    if smp is not None:
        smp[:, :, f, oy, ox] = part[:, : smp.shape[1]].cpu().numpy()


def tile_seams(shape: tuple[int, int], tile: int, overlap: int,
               multiple: int) -> tuple[list[int], list[int]]:
    """Rows and columns where the kept parts of neighbouring tiles meet.

    For an image of ``shape`` predicted with ``tile`` / ``overlap`` by a
    network taking multiples of ``multiple`` (as :meth:`SplitModel.predict`
    does: pad to the multiple, tile, crop): each seam is the first row (or
    column) written by the next tile, in image coordinates.
    """
    from ..core.tiling import _axis_tiles

    seams = []
    for n in shape:
        padded = -(-int(n) // multiple) * multiple
        before = (padded - n) // 2
        starts = [w.start for _, _, w in _axis_tiles(padded, tile, overlap)][1:]
        seams.append([s - before for s in starts if 0 < s - before < n])
    return seams[0], seams[1]
