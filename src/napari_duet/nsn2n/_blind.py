"""Blind-spot 2.5D NS-N2N: the target slice itself, with a blind spot, plus its neighbours.

For noise that is independent between *pixels* (white within a slice, and
independent between slices), slice i is its own best witness: most of what a
pixel shows is also shown by the pixels around it and by the neighbouring
slices.  The 2.5D modes of ``_context.py`` cannot use that: mode ``self``
sees x_i but learns to predict its neighbours' mean (a z blur, biased on thick
slices), mode ``gap`` sees the neighbours but not x_i.  Here the network sees
both, and a J-invariant split keeps it from copying the noise it must remove:

* a grid of pixels of x_i (one phase of a ``GRID`` x ``GRID`` grid: a quarter
  of the pixels) is *hidden*: each is replaced by the mean of its four direct
  neighbours, which are never hidden, and a mask channel says where;
* the input is the filled x_i, the mask, and x_(i-2), x_(i-1), x_(i+1),
  x_(i+2) in full (their noise is independent of x_i's);
* the target is x_i on the hidden pixels only (Noise2Self): the input holds no
  value of a hidden pixel, so the noise of the target is independent of the
  input and the network learns E[clean | everything else].

At inference every phase of the grid is hidden once, and each pixel takes the
prediction of the pass in which it was hidden: no output pixel depends on its
own noisy value (exactly: tested by perturbing single pixels).  That estimate
``mu`` leaves out the information of the pixel itself; as in Laine et al.
(2019) it is then combined with the noisy value (:func:`posterior`).  On pure
noise ``mu`` explains nothing of the pixel, so the output stays ``mu``: the
noise is not restored.

This mode needs pixel-independent noise: with noise correlated within slices
the hidden pixel's noise is predictable from its neighbours and would be kept.
:func:`~napari_duet.nsn2n._diagnostics.noise_correlation` decides
(``context="auto"``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._context import CorrectionNet, empty_batch, random_crop, random_dihedral

NEIGHBOURS = (-2, -1, 1, 2)
# Grid whose one phase is hidden per pass: 1 / GRID**2 of the pixels.
GRID = 2
N_IN = 2 + len(NEIGHBOURS)  # filled x_i, mask, neighbours


class BlindNet(CorrectionNet):
    """U-Net on (filled x_i, mask, 4 neighbours) -> filled x_i + correction.

    ``x``: (B, 6, H, W) built by :func:`blind_input`; returns (B, 1, H, W).
    """

    arch = "nsn2n-blind"
    n_in = N_IN

    def base(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0:1]


def phase_mask(shape: tuple[int, int], phase: int, grid: int = GRID) -> np.ndarray:
    """Boolean (Y, X) mask of one phase (0 .. grid**2 - 1) of a ``grid`` x ``grid`` grid."""
    py, px = divmod(int(phase), grid)
    m = np.zeros(shape, bool)
    m[py::grid, px::grid] = True
    return m


def fill_hidden(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``img`` with the ``mask`` pixels replaced by the mean of their 4 direct neighbours.

    The neighbours of a grid phase's pixel are never in that phase (grid >= 2),
    and the border is mirrored *without* repeating the edge pixel (numpy
    ``reflect``), so the neighbour across the border is another pixel too: no
    filled value depends on a hidden one.  (A slice 1 pixel wide has no such
    neighbour: the mean of what exists, never the pixel itself.)
    """
    img = np.asarray(img, np.float32)
    if min(img.shape) < 2:
        return np.where(mask, 0.0, img).astype(np.float32)
    p = np.pad(img, 1, mode="reflect")
    nb = 0.25 * (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:])
    return np.where(mask, nb, img).astype(np.float32)


def neighbour_slices(stack: np.ndarray, i: int) -> list[np.ndarray]:
    """x_(i-2), x_(i-1), x_(i+1), x_(i+2), mirrored about i at the edges (never x_i)."""
    from ._context import neighbour_index

    n_z = stack.shape[0]
    out = []
    for d in NEIGHBOURS:
        j = neighbour_index(i, d, n_z, NEIGHBOURS)
        out.append(stack[j] if j is not None else np.zeros(stack.shape[1:], np.float32))
    return out


def blind_input(stack: np.ndarray, i: int, mask: np.ndarray) -> np.ndarray:
    """(6, Y, X) float32 input for slice ``i`` of a (Z, Y, X) stack with ``mask`` hidden."""
    out = np.empty((N_IN, *stack.shape[1:]), np.float32)
    out[0] = fill_hidden(stack[i], mask)
    out[1] = mask
    out[2:] = neighbour_slices(stack, i)
    return out


def sample_blind_batch(
    rng: np.random.Generator,
    stacks: np.ndarray,
    centres: np.ndarray,
    batch: int,
    crop: int,
    grid: int = GRID,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random slices, crops, grid phases, z flips, flips and rotations.

    Returns inputs (B, 6, c, c), targets (B, 1, c, c) = x_i and loss weights
    (B, 1, c, c) = the hidden pixels.
    """
    c, xin, tgt, wgt = empty_batch(stacks, batch, crop, N_IN)
    for b in range(batch):
        s, z, sl = random_crop(rng, stacks, centres, c)
        stack = stacks[s][(slice(None), *sl)]
        mask = phase_mask((c, c), int(rng.integers(grid * grid)), grid)
        inp = blind_input(stack, z, mask)
        if rng.random() < 0.5:  # z flip: the stack read backwards is as valid
            inp[2:] = inp[:1:-1]
        xin[b], tgt[b], wgt[b] = random_dihedral(
            rng, [inp, stack[z][None], mask[None].astype(np.float32)])
    return xin, tgt, wgt


def blind_loss(
    net: nn.Module, xin: torch.Tensor, tgt: torch.Tensor, wgt: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MSE on the hidden pixels."""
    from ._losses import masked_mean

    loss = masked_mean((net(xin) - tgt) ** 2, wgt)
    d = loss.detach()
    return loss, {"total": d, "recon": d, "blind": d}


def predict_mu(predict_all, stack: np.ndarray, i: int, tta: bool,
               grid: int = GRID) -> np.ndarray:
    """J-invariant estimates (T, Y, X) of slice ``i``: each pixel from the pass hiding it.

    ``predict_all(inp, tta)`` returns the (T, Y, X) predictions of one (C, Y, X)
    input under the T flips/rotations (``NSN2NModel._predict_all``).
    """
    out = None
    for phase in range(grid * grid):
        mask = phase_mask(stack.shape[1:], phase, grid)
        pred = predict_all(blind_input(stack, i, mask), tta)
        out = np.where(mask, pred, 0.0) if out is None else np.where(mask, pred, out)
    return np.asarray(out, np.float32)


def posterior(x: np.ndarray, mu: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Combine the J-invariant estimate ``mu`` of a slice with its noisy values ``x``.

    ``out = mu + k (x - mu)``: with ``v`` the variance of ``mu``'s error and
    ``sigma^2`` the noise variance, ``k = v / (v + sigma^2)`` minimises the
    expected error, and because ``mu`` does not depend on the noise of ``x``,
    ``mean((x - mu)^2) = v + sigma^2``, so ``k = 1 - sigma^2 / mean((x - mu)^2)``.
    ``sigma^2`` comes from the slice itself unless given (Immerkaer's estimator, which
    overestimates on textured slices: k then errs towards ``mu``).  One ``k``
    per slice: on the synthetic MRI-like volumes it matched the best single value
    chosen with the clean data (k 0.04-0.09, +0.2-0.4 dB over ``mu``); a
    per-pixel ``v`` read from local windows was worse (too noisy).
    """
    from ._guide import _noise_sigma

    x = np.asarray(x, np.float32)
    r = x - mu
    ms = float(np.mean(r * r))
    if ms <= 0:
        return np.asarray(mu, np.float32)
    s = _noise_sigma(x) if sigma is None else float(sigma)
    k = float(np.clip(1.0 - s**2 / ms, 0.0, 1.0))
    return (mu + k * r).astype(np.float32)


# Recorrupted-to-recorrupted check of the Wiener stage (choose_wiener): the
# extra noise added to the input is ALPHA sigma; the target then carries
# sigma / ALPHA more, independent of the input's.  Slices checked: up to
# WIENER_CHECK_SLICES, evenly spread.
ALPHA = 0.5
WIENER_CHECK_SLICES = 8


def wiener_stage(x: np.ndarray, pilot: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """The second stage: slice ``x`` Wiener-filtered in DCT windows with ``pilot``'s spectrum.

    ``sigma`` defaults to the slice's noise level (Immerkaer, as in
    :func:`posterior`).  Window 12 with stride 2 was chosen on the defaults half
    of ``benchmarks/nsn2n_real.py`` (white and camera noise, the network's
    output as the pilot): on the three microscopy stacks +0.42 dB on average,
    every volume ahead, against +0.36 for window 8 and +0.45 for window 16
    (stride 3) with one volume behind; stride 1 costs 4x the time for
    +0.05 dB.  With the MRI and CT volumes added (8 cases) windows 8 and 12 tie
    (+0.72 dB), and averaging the outputs of windows 8 and 16 gives +0.77 for
    twice the time.  It runs after the blind-spot network only
    (pixel-independent noise: a white-noise Wiener factor is wrong for noise
    correlated within the slice).
    """
    from ..core.wiener import dct_wiener
    from ._guide import _noise_sigma

    x = np.asarray(x, np.float32)
    s = _noise_sigma(x) if sigma is None else float(sigma)
    out = dct_wiener(torch.from_numpy(x), torch.from_numpy(np.asarray(pilot, np.float32)), s)
    return out.numpy()


def choose_wiener(predict_all, stacks: np.ndarray, tta: bool, seed: int = 0) -> dict:
    """Does the Wiener stage lower the error on these (S, Z, Y, X) normalised stacks?

    The Wiener stage is not always better than the network's blend: where the
    network alone is sharper than any windowed linear filter (flat regions
    with clean edges) it adds back ringing.  Which one wins is measured without
    clean data, by recorruption (Pang et al., CVPR 2021): with ``n`` white
    noise of the slice's level ``sigma``, ``y1 = x + ALPHA sigma n`` and
    ``y2 = x - sigma n / ALPHA`` have independent noises, so
    ``mean((f(y1) - y2)^2)`` is the error of ``f`` on ``y1`` against the clean
    slice plus a constant that is the same for both candidates.  Both are run
    on ``y1`` (the blend from the network's estimate, and the Wiener stage on
    top), on up to ``WIENER_CHECK_SLICES`` slices.

    Returns ``{"use": bool, "loss_blend", "loss_wiener", "slices"}``.
    """
    from ._guide import _noise_sigma

    rng = np.random.default_rng([seed, 2021])  # a stream apart from any seed-only one
    n_s, n_z = stacks.shape[:2]
    every = np.unique(np.linspace(0, n_s * n_z - 1, WIENER_CHECK_SLICES).round().astype(int))
    picks = [divmod(int(i), n_z) for i in every]  # (stack, slice), evenly over all slices
    loss = np.zeros(2)
    stack, current = None, None
    for s, z in picks:
        if s != current:  # one writable copy per stack; each slice is put back after use
            stack, current = np.array(stacks[s], np.float32), s
        x = stack[z].copy()
        sigma = _noise_sigma(x)
        n = rng.standard_normal(x.shape).astype(np.float32)
        stack[z] = x + ALPHA * sigma * n
        target = x - sigma / ALPHA * n
        sigma1 = sigma * float(np.sqrt(1 + ALPHA**2))  # the recorrupted slice's noise
        blend = posterior(stack[z], predict_mu(predict_all, stack, z, tta).mean(0), sigma1)
        filtered = wiener_stage(stack[z], blend, sigma1)
        stack[z] = x
        loss += [np.mean((blend - target) ** 2), np.mean((filtered - target) ** 2)]
    loss /= max(len(picks), 1)
    return {"use": bool(loss[1] < loss[0]), "loss_blend": float(loss[0]),
            "loss_wiener": float(loss[1]), "slices": [list(p) for p in picks]}
