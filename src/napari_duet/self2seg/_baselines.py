"""Baselines: convex Chan-Vese and the sequential Noise2Fast -> Chan-Vese approach."""

from __future__ import annotations

import time

import numpy as np

from ._config import Self2SegConfig
from ._engine import Self2SegResult, self2seg

__all__ = ["convex_chan_vese", "sequential_n2f_chan_vese"]


def convex_chan_vese(image, config: Self2SegConfig | None = None, regions=None) -> Self2SegResult:
    """Convex Chan-Vese: Self2Seg with constant experts (same solver, filter, lambda rule).

    ``config`` is used with ``experts="constant"`` forced.  Setting
    ``filter_size=0`` and ``mu_scale=0`` gives the textbook convex Chan-Vese
    (Chan-Esedoglu-Nikolova) with alternating region means.
    """
    cfg = (config or Self2SegConfig()).replace(experts="constant")
    return self2seg(image, regions, cfg)


def sequential_n2f_chan_vese(
    image, config: Self2SegConfig | None = None, regions=None, n2f_steps: int = 300
) -> Self2SegResult:
    """Sequential approach: Noise2Fast on the whole image, then convex Chan-Vese on its output.

    Unless ``config`` sets ``filter_size``, the segmentation step is classic
    Chan-Vese (``filter_size=5``, ``region_variance=False``): the noise-level
    rules of the defaults misread an already denoised image.

    The returned ``denoised`` and ``experts`` are the Noise2Fast output (one
    denoiser for the whole image); the timings include the denoising.
    """
    from ..core.n2f import noise2fast

    cfg = (config or Self2SegConfig()).replace(experts="constant")
    if cfg.filter_size is None:
        # The input of the segmentation is already denoised, so the rules that read the
        # noise level off the image (filter size, region variances) do not apply: use
        # classic Chan-Vese with the 5x5 residual filter, as before.
        cfg = cfg.replace(filter_size=5, region_variance=False)
    t0 = time.perf_counter()
    arr = np.asarray(image)
    den = noise2fast(arr[..., :3] if arr.ndim == 3 else arr, steps=n2f_steps,
                     device=cfg.device, seed=cfg.seed, threads=cfg.threads)
    t_den = time.perf_counter() - t0
    res = self2seg(den, regions, cfg)
    res.denoised = den
    res.experts = np.stack([den] * cfg.n_classes)
    res.timings = dict(res.timings, noise2fast=t_den, total=res.timings["total"] + t_den)
    res.image_dtype = str(arr.dtype)
    return res
