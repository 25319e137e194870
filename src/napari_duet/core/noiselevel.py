"""Level of white noise in a stack of slices, from its flattest pixels.

The blind-spot NS-N2N blend, its block-matched second stages and the
recorruption check that chooses between them all take the noise level as
given, and all of them err when it is too high: the blend keeps too little of
the pixel, the Wiener steps remove detail, and the check (which adds noise of
that level and subtracts it back from a target) favours the stronger
filters.  Immerkaer's estimator (a Laplacian's mean absolute value over the
whole slice) counts texture and edges as noise: on the real CT volumes of
``benchmarks/nsn2n_real.py`` (48 x 128^2, white noise of 0.1) it read 0.107
and 0.109.

Here, as in the noise-model fit (``nsn2n._noise.variance_curve``), only the
flattest quarter of the pixels of each band of local means is used, with two
residuals whose variance is the noise's where the structure is locally linear
(the unit-energy Laplacian within the slice and the second difference along
the slices), and the residual whose variances are lower overall is kept: on the
same CT volumes 0.101 and 0.102, on MRI, EM and fluorescence within 0.001 of
the fit.  Written with torch only, so that a bioimage.io export computes the
same number.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _mad_var(r: torch.Tensor) -> float:
    """Variance from the median absolute deviation (robust to remaining edges)."""
    return float((1.4826 * (r - r.median()).abs().median()) ** 2)


def white_noise_sigma(stack, slices: int = 16, bands: int = 24,
                      max_pixels: int = 2_000_000) -> float | None:
    """Standard deviation of white noise in a (Z, Y, X) stack (None: too small to tell).

    ``stack``: anything whose ``shape`` is (Z, Y, X) and whose ``stack[z]`` is a
    (Y, X) array or tensor (a lazy reader of a large volume will do: only up to
    ``slices`` evenly spaced slices and their neighbours are read).  The noise
    must be independent between pixels and between slices, of one level (after
    any variance-stabilising transform).  ``bands`` of local means; at most
    ``max_pixels`` pixels (a fixed random subset) are used.
    """
    n_z, h, w = (int(s) for s in stack.shape[-3:])
    if min(h, w) < 8:
        return None
    lap = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]],
                       dtype=torch.float64)[None, None] / 6.0  # unit energy
    zk = math.sqrt(2.0 / 3.0)  # unit energy of x_z - (x_(z-1) + x_(z+1)) / 2

    def read(z: int) -> torch.Tensor:
        return torch.as_tensor(stack[z]).detach().to("cpu", torch.float64)

    means, grads, r_plane, r_z = [], [], [], []
    for z in torch.linspace(0, n_z - 1, min(n_z, slices)).round().long().unique().tolist():
        img = read(z)
        # Interior only (no border rule): local 5 x 5 means, their gradient, residuals.
        m = F.avg_pool2d(img[None, None], 5, 1)[0, 0]
        gy, gx = torch.zeros_like(m), torch.zeros_like(m)
        gy[1:-1] = 0.5 * (m[2:] - m[:-2])
        gx[:, 1:-1] = 0.5 * (m[:, 2:] - m[:, :-2])
        means.append(m[1:-1, 1:-1].reshape(-1))
        grads.append(torch.hypot(gy, gx)[1:-1, 1:-1].reshape(-1))
        r_plane.append(F.conv2d(img[None, None], lap)[0, 0, 2:-2, 2:-2].reshape(-1))
        if n_z >= 3:
            zc = min(max(z, 1), n_z - 2)
            d = zk * (read(zc) - 0.5 * (read(zc - 1) + read(zc + 1)))
            r_z.append(d[3:-3, 3:-3].reshape(-1))
    m, g, r = torch.cat(means), torch.cat(grads), torch.cat(r_plane)
    rz = torch.cat(r_z) if r_z else None
    if m.numel() > max_pixels:  # enough for the estimate; keeps big stacks fast
        keep = torch.randperm(m.numel(), generator=torch.Generator().manual_seed(0))
        keep = keep[:max_pixels]
        m, g, r = m[keep], g[keep], r[keep]
        rz = None if rz is None else rz[keep]
    v_plane, v_z = [], []
    for idx in torch.tensor_split(torch.argsort(m, stable=True), bands):
        if idx.numel() < 200:
            continue
        gi = g[idx]
        flat = idx[gi <= torch.quantile(gi, 0.25)]  # within a band the noise is the same
        v_plane.append(_mad_var(r[flat]))
        v_z.append(_mad_var(rz[flat]) if rz is not None else math.inf)
    if not v_plane:
        return None
    # One residual for all bands (a minimum per band would bias it low): structure
    # only adds to a residual's variance, so the one lower overall leaves less.
    v = torch.tensor(v_z if sum(v_z) < sum(v_plane) else v_plane, dtype=torch.float64)
    return float(max(math.sqrt(max(float(v.median()), 0.0)), 1e-4))
