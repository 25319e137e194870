"""Tiled posterior sampling: MMSE, per-pixel std and (optionally) the samples.

Each tile is run N times (the latents are sampled every pass); tiles and
their samples are packed into batches of ``batch_size`` network passes.
Only the tiles in flight live on the device, and only each tile's inner part
is kept (no blending), so memory stays bounded for any image size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..tiling import count_tiles, iter_tiles, pad_to_multiple


@dataclass
class PredictProgress:
    """Yielded while predicting: tiles done out of tiles x frames."""

    done: int
    total: int
    elapsed: float


@dataclass
class SplitResult:
    """What a prediction gives back, in the training data's intensity scale.

    Attributes
    ----------
    mean : numpy.ndarray
        (2, ...) MMSE estimate of each channel, float32.
    std : numpy.ndarray
        (2, ...) per-pixel std of the posterior samples, calibrated when the
        model has a calibration (see ``calibrated``).
    samples : numpy.ndarray or None
        (N, 2, ...) posterior samples when requested.
    noise_std : numpy.ndarray or None
        (2, ...) expected noise std of a noisy acquisition of each channel
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

    def report(self) -> dict[str, Any]:
        """JSON-ready summary (shapes, settings, per-channel statistics)."""
        chans = self.info.get("channel_names", ["A", "B"])
        per_channel = {}
        for c, name in enumerate(chans[:2]):
            per_channel[name] = {
                "mean_intensity": float(self.mean[c].mean()),
                "mean_std": float(self.std[c].mean()),
                "max_std": float(self.std[c].max()),
            }
            if self.noise_std is not None:
                per_channel[name]["mean_noise_std"] = float(self.noise_std[c].mean())
        return {
            "shape": list(self.mean.shape[1:]),
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
) -> Generator[tuple[int, int], None, dict]:
    """Run ``net_fn`` over (F, Y, X) normalised frames tile by tile, N samples each.

    ``net_fn`` maps a (b, 1, T, T) tensor to (b, out_channels, T, T).
    Yields ``(tiles done, tiles total)``; returns a dict of numpy arrays in
    normalised units: ``mean`` and ``std`` (C, F, Y, X) (C = out_channels;
    std from N samples, unbiased; zero for N = 1) and ``samples``
    (N, C, F, Y, X) or None.
    """
    import torch

    n_frames, h, w = frames.shape
    mean = np.zeros((out_channels, n_frames, h, w), np.float32)
    std = np.zeros_like(mean)
    smp = np.zeros((samples, out_channels, n_frames, h, w), np.float32) if return_samples else None
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
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            inp = torch.stack([frame_t[tiles[t].read] for t, _ in chunk])[:, None]
            out = net_fn(inp).float()
            for j, (t, _) in enumerate(chunk):
                pending.setdefault(t, []).append(out[j])
            for t in [t for t, outs in pending.items() if len(outs) == samples]:
                outs = torch.stack(pending.pop(t))  # (N, C, T, T)
                _write_tile(tiles[t], outs, crop, f, mean, std, smp)
                done += 1
            yield done, total
    return {"mean": mean, "std": std, "samples": smp}


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
        smp[:, :, f, oy, ox] = part.cpu().numpy()


def elapsed_since(t0: float) -> float:
    return time.perf_counter() - t0
