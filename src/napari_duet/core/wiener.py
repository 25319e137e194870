"""Empirical Wiener filtering in a sliding-window DCT domain, guided by a pilot estimate.

The second stage of two-stage denoisers (BM3D's, for one): given a noisy image
``x`` with white noise of standard deviation ``sigma`` and a first estimate
``p`` of its clean version (the *pilot*), every ``size`` x ``size`` window of
``x`` is taken to the 2D DCT domain, each coefficient is shrunk by the Wiener
factor ``P^2 / (P^2 + sigma^2)`` read from the same coefficient of the pilot,
and the windows are brought back and averaged, each weighted by
``1 / sum(factor^2)`` (windows that keep little noise count more).

Why it helps after a blind-spot network: the network's estimate of a pixel
leaves out that pixel's own value (it cannot use it without learning to copy
the noise), and the per-slice blend ``mu + k (x - mu)`` only puts a little of
it back.  The Wiener stage puts back, per frequency and per window, what the
pilot says is signal, so fine structure the network smoothed away returns
where it stands out of the noise.

:func:`dct_wiener_stack` does the same in 3D windows that also span
``depth`` neighbouring slices, for volumes whose slices are close enough to
share structure (MRI, CT, EM): the DCT along z then separates what the slices
have in common from the noise, which is independent between them.

The module imports nothing but torch: ``nsn2n/bmz_network.py`` packages its
source into bioimage.io models.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def _dct_matrix(size: int) -> torch.Tensor:
    """Orthonormal 1D DCT-II matrix (rows: frequencies), float64."""
    n = torch.arange(size, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * size)) * math.sqrt(2 / size)
    d[0] /= math.sqrt(2.0)
    return d


def dct_basis(size: int, device=None, depth: int = 1) -> torch.Tensor:
    """Orthonormal DCT-II basis of ``depth`` x ``size`` x ``size`` windows: (n, n).

    ``n = depth * size^2``.  Row ``(kz * size + ky) * size + kx`` is the basis
    function of frequency (kz, ky, kx), laid out like the window's pixels in
    :func:`torch.nn.functional.unfold` with the window's slices as channels
    (slice, then row-major).  ``depth=1``: the 2D basis.
    """
    d = _dct_matrix(size)
    b = torch.kron(d, d)
    if depth > 1:
        b = torch.kron(_dct_matrix(depth), b)
    return b.to(dtype=torch.float32, device=device)


def dct_wiener(
    noisy: torch.Tensor,
    pilot: torch.Tensor,
    sigma: float,
    size: int = 12,
    stride: int = 2,
    block_rows: int = 32,
) -> torch.Tensor:
    """Wiener-filter a (Y, X) image in sliding ``size`` x ``size`` DCT windows.

    Parameters
    ----------
    noisy : Tensor
        (Y, X) image with white noise of standard deviation ``sigma``.
    pilot : Tensor
        (Y, X) first estimate of the clean image, same shape.
    sigma : float
        Noise standard deviation of ``noisy`` (> 0; 0 returns ``noisy``).
    size : int
        Window side; reduced to the image's smaller side for tiny images.
    stride : int
        Step between windows (1 = every window; 2 = a quarter of them, 4x
        faster, nearly as good).  Every pixel is covered by at least one window.
    block_rows : int
        Window rows processed at once (memory: about ``block_rows * X * size^2``
        floats per tensor, whatever the image height).

    Returns
    -------
    Tensor
        (Y, X) float32 filtered image.  With a pilot equal to ``noisy`` times a
        large factor every factor is 1 and the output is ``noisy`` (the windows'
        transform is exactly inverted).
    """
    if noisy.ndim != 2 or noisy.shape != pilot.shape:
        raise ValueError(f"dct_wiener needs two (Y, X) images of one shape, got "
                         f"{tuple(noisy.shape)} and {tuple(pilot.shape)}")
    if not sigma > 0:
        return noisy.float().clone()
    return dct_wiener_stack(noisy[None], pilot[None], sigma, depth=1, size=size,
                            stride=stride, block_rows=block_rows)[0]


def slice_variances(sigmas, n_z: int, who: str) -> torch.Tensor:
    """(n_z,) float64 noise variances from one sigma or one per slice (ValueError naming
    ``who`` otherwise)."""
    var = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1) ** 2
    if var.numel() == 1:
        var = var.expand(n_z)
    if var.numel() != n_z:
        raise ValueError(f"{who} needs one sigma or {n_z}, got {var.numel()}")
    return var


def _reflect(j: int, n: int) -> int:
    """Index ``j`` reflected into ``0..n-1`` (edge not repeated, as numpy's ``reflect``)."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    j = abs(j) % period
    return j if j < n else period - j


def dct_wiener_stack(
    noisy: torch.Tensor,
    pilot: torch.Tensor,
    sigmas=None,
    depth: int = 3,
    size: int = 8,
    stride: int = 2,
    block_rows: int = 32,
    spectra: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wiener-filter a (Z, Y, X) stack in sliding ``depth`` x ``size`` x ``size`` DCT windows.

    The 3D form of :func:`dct_wiener`: windows start at every slice (and, in y
    and x, every ``stride`` pixels), so each output slice averages the windows
    of its ``2 * depth - 1`` nearest slices.  A window's noise variance is the
    mean of its slices' ``sigmas**2``, so the output for slice ``z`` depends
    only on slices ``z - depth + 1 .. z + depth - 1``: a slab read with that
    many extra slices on each side gives the same slices as the whole stack.
    At the stack's ends the slices are reflected.

    Parameters
    ----------
    noisy, pilot : Tensor
        (Z, Y, X) noisy stack (white noise, independent between slices) and its
        first estimate, same shape.
    sigmas : float or sequence of float
        White noise: its standard deviation, one for the stack or one per slice.
    spectra : Tensor, optional
        Noise correlated within slices (and independent between them), instead
        of ``sigmas``: (Z, size^2) variances of each slice's noise in the
        ``size`` x ``size`` DCT windows (:func:`noise_spectrum`).  A window's
        coefficient (kz, ky, kx) gets the mean over its slices of (ky, kx).
    depth, size : int
        Window extent in z and in y/x (each reduced to the stack's size).
    stride : int
        Step between windows in y and x.
    block_rows : int
        Window rows processed at once (memory bound, as in :func:`dct_wiener`).

    Returns
    -------
    Tensor
        (Z, Y, X) float32.  With ``depth=1`` each slice is filtered on its own
        (:func:`dct_wiener` is that, for one image).
    """
    if noisy.ndim != 3 or noisy.shape != pilot.shape:
        raise ValueError(f"dct_wiener_stack needs two (Z, Y, X) stacks of one shape, got "
                         f"{tuple(noisy.shape)} and {tuple(pilot.shape)}")
    x, p = noisy.float(), pilot.float()
    n_z, h, w = x.shape
    depth = max(1, min(int(depth), n_z))
    size = max(1, min(int(size), h, w))
    if spectra is not None:  # (Z, size^2) -> per slice, per in-plane frequency
        var = torch.as_tensor(spectra, dtype=torch.float32)
        if tuple(var.shape) != (n_z, size * size):
            raise ValueError(f"dct_wiener_stack needs ({n_z}, {size * size}) spectra, "
                             f"got {tuple(var.shape)}")
        var = var.to(x.device)
    else:
        var = slice_variances(sigmas, n_z, "dct_wiener_stack")
    stride = max(1, min(int(stride), size))
    m = size - 1
    basis = dct_basis(size, x.device, depth)
    xp, pp = (F.pad(a[None], (m, m, m, m), mode="reflect")[0] if m else a for a in (x, p))
    hp, wp = xp.shape[1:]
    num = torch.zeros_like(xp)
    den = torch.zeros_like(xp)
    starts = range(0, hp - size + 1, stride)
    for z0 in range(-(depth - 1), n_z):
        zs = [_reflect(z0 + k, n_z) for k in range(depth)]
        keep = [k for k in range(depth) if 0 <= z0 + k < n_z]  # reflected copies: no output
        if spectra is not None:  # (depth * size^2, 1): the in-plane spectrum for every kz
            v = var[zs].mean(0).repeat(depth)[:, None]
            flat = not bool((v > 0).all())
        else:
            v = float(var[zs].mean())
            flat = not v > 0
        for b in range(0, len(starts), block_rows):
            r0 = starts[b]
            r1 = starts[min(b + block_rows, len(starts)) - 1] + size
            cx = basis @ F.unfold(xp[zs, r0:r1][None], size, stride=stride)[0]
            if not flat:
                cp = basis @ F.unfold(pp[zs, r0:r1][None], size, stride=stride)[0]
                gain = cp * cp / (cp * cp + v)
            else:
                gain = torch.ones_like(cx)
            weight = 1.0 / (gain.pow(2).sum(0, keepdim=True) + 1e-6)
            out = F.fold((basis.T @ (gain * cx * weight))[None], (r1 - r0, wp), size,
                         stride=stride)[0]
            wsum = F.fold(weight.expand(cx.shape[0], -1)[None], (r1 - r0, wp), size,
                          stride=stride)[0]
            for k in keep:
                num[z0 + k, r0:r1] += out[k]
                den[z0 + k, r0:r1] += wsum[k]
    return (num / den)[:, m:m + h, m:m + w].contiguous()


def noise_spectrum(noisy: torch.Tensor, pilot: torch.Tensor, size: int = 8,
                   stride: int = 4) -> torch.Tensor:
    """Noise variance of each ``size`` x ``size`` DCT coefficient of a (Y, X) slice.

    For noise correlated within the slice (a camera's or a scanner's
    reconstruction blur), one sigma is wrong: the noise is strong at some
    frequencies and absent at others.  With a first estimate ``pilot``, the
    residual ``noisy - pilot`` is the noise plus the pilot's error; the median
    over windows of each coefficient's squared residual, divided by 0.4549
    (the median of a chi-square with one degree of freedom), reads the noise's
    variance there and ignores the few windows where the pilot missed an edge.
    Returns (size^2,) float32; ``size`` is reduced to the slice's smaller side.
    """
    if noisy.ndim != 2 or noisy.shape != pilot.shape:
        raise ValueError(f"noise_spectrum needs two (Y, X) images of one shape, got "
                         f"{tuple(noisy.shape)} and {tuple(pilot.shape)}")
    size = max(1, min(int(size), *noisy.shape))
    r = (noisy.float() - pilot.float())[None, None]
    c = dct_basis(size, noisy.device) @ F.unfold(r, size, stride=max(1, min(stride, size)))[0]
    return (c * c).median(dim=1).values / 0.4549
