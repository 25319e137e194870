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

from ._config import BLOCK_STAGES, check_stage_fits
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
# sigma / ALPHA more, independent of the input's.  Slices checked: a run of up
# to WIENER_CHECK_SLICES neighbouring slices (the 3D stages need neighbours).
ALPHA = 0.5
WIENER_CHECK_SLICES = 10

# The second stages, in the order the check tries them: "2d" filters each slice
# in 12 x 12 DCT windows; "3d" in 3 x 8 x 8 windows spanning neighbouring
# slices, "3d2" twice (the first pass's output is the second's pilot).
# Chosen on the defaults half of benchmarks/nsn2n_real.py (white noise, the
# network's blend as the pilot, dB over the blend): brain MRI 2d +2.15,
# 3d +2.88, 3d2 +3.31; CT +1.29 / +1.71 / +2.05; EM +0.04 / +0.27 / +0.20;
# the thick-sliced mitotic plate +0.89 / +0.14 / -0.30.  No one stage wins
# everywhere, so the check picks per volume.
STAGES = ("off", "2d", "3d", "3d2", "bm", "bmht", "bm-light", "bmht-light")
# The weighted sum of the candidates (STAGES) that the check fits (choose_wiener):
# only "auto" records it, with its weights.
MIX = "mix"
# and the 2.5D network's (CONTEXT_STAGE), which any network may be given explicitly
ALL_STAGES = (*STAGES, "bmw", MIX)
# In-plane stride of each pass of the 3D window.  The last pass every pixel
# (stride 1): on the same defaults-half networks, +0.20 dB on brain MRI, +0.09 on
# CT, +0.06 on EM for 3d2 (stride 1 in both passes: +0.01 more), for about a
# sixth more time than the network's estimate (0.85 against 0.22 s per 256^2
# slice and pass, beside 3.8 s for the blind network's estimate, 1 thread).
_STAGE_3D = {"3d": (1,), "3d2": (2, 1)}
_DEPTH_3D, _SIZE_3D = 3, 8


# After the 2.5D network (noise correlated within slices) no recorruption check
# is possible without the noise's covariance, and one stage measured ahead on
# every volume of the defaults half (in-plane correlated noise, 400 steps, dB
# over the network): "bmw", block-matched Wiener filtering (the Wiener step of
# the "bm" stages: 3 x 8 x 8 blocks, groups of 16) guided by the network's
# estimate, with each slice's noise spectrum read from its residual: brain MRI
# +1.78, CT +2.10, EM +1.08, chromosomes +0.04, mitotic plate +6.47 (the
# network alone was below the noisy input there), against +0.92 / +1.67 /
# +0.57 / +0.04 / +4.66 for the "3d" windows with the same spectra (the stage
# recorded before).  Measured and not kept: a thresholding pass with the
# spectra first (-2.7 dB on brain MRI: one threshold per in-plane frequency
# misses the network's good estimate), mu2 0.7 (+0.03 on average), a second
# pass (-0.01), groups of 32 (+0.04), the mean of the network and the first
# pass as the pilot (+0.04).  So "auto" records "bmw".
CONTEXT_STAGE = {"mode": "bmw", "use": True,
                 "reason": "block-matched Wiener filtering with the noise spectrum read from "
                           "each slice (after the 2.5D network: ahead on every volume measured)"}


# The block-matched stages (``bm``, ``bmht``; :func:`napari_duet.core.blockmatch.two_step`):
# collaborative hard thresholding of 4 x 4 x 4 blocks (step 3), then empirical
# Wiener filtering of 3 x 8 x 8 blocks (step 4) guided by a pilot: for ``bm``
# the mean of the network's estimate and the thresholded stack, for ``bmht``
# the thresholded stack alone.  Groups of 16 blocks within 7 px and 1 slice.
# On the defaults half's saved networks (white noise, 400 steps, dB over the
# network's blend), against 3d2: brain MRI bm +4.39 / bmht +4.58 (3d2 +3.31),
# CT +2.18 / +2.19 (+2.04), EM +0.48 / +0.23 (+0.20), mitotic plate +0.31 /
# -0.35 (-0.30), chromosomes +0.31 / +0.47 (+0.23).  No one of them wins
# everywhere either: the recorruption check ranks them with the others.  Searching only the same
# slice (dz 0) lost 0.66 dB on brain MRI; matching the thresholding's groups on
# the network's estimate instead of the noisy stack lost 2.8 dB there.


def stage_reach(mode: str) -> int:
    """Slices on each side of a slice that its second stage reads (0 for ``off``/``2d``)."""
    if mode == MIX:
        return max(stage_reach(m) for m in STAGES)
    if mode in BLOCK_STAGES:
        from ..core.blockmatch import TWO_STEP_REACH

        return TWO_STEP_REACH
    if mode == "bmw":
        from ..core.blockmatch import WIENER_REACH

        return WIENER_REACH
    return (_DEPTH_3D - 1) * len(_STAGE_3D.get(mode, ()))


def block_matched_stages(x: np.ndarray, pilot: np.ndarray, sigmas,
                         modes: tuple[str, ...] = BLOCK_STAGES) -> dict[str, np.ndarray]:
    """The block-matched stages (:data:`BLOCK_STAGES`) on a (Z, Y, X) run.

    One thresholding pass for all, one block matching per pilot.  ``pilot`` is
    the network's estimate (``bm``, ``bm-light``); ``sigmas`` the white noise's
    level per slice.
    """
    from ..core.blockmatch import light_mu2, two_step

    if not modes:
        return {}
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    sig = [float(s) for s in np.broadcast_to(np.asarray(sigmas, np.float64), (x.shape[0],))]
    net = torch.from_numpy(np.ascontiguousarray(pilot, np.float32))
    outs = two_step(xt, sig, {m: None if m.startswith("bmht") else net for m in modes},
                    {m: light_mu2() for m in modes if m.endswith("-light")})
    return {m: o.numpy() for m, o in outs.items()}


def wiener_stage(x: np.ndarray, pilot: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """The ``2d`` second stage: slice ``x`` Wiener-filtered in DCT windows, ``pilot`` guiding.

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


def mix_stages(x: np.ndarray, pilot: np.ndarray, sigmas, weights: dict[str, float]
               ) -> np.ndarray:
    """The ``mix`` stage: ``sum_m weights[m] * stage_m`` over candidates ``m`` of
    :data:`STAGES` (white noise of level ``sigmas``; the block-matched ones share one
    thresholding pass, see :func:`block_matched_stages`)."""
    unknown = set(weights) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)} in the mix weights")
    used = {m: float(w) for m, w in weights.items() if float(w) != 0.0}
    outs = block_matched_stages(x, pilot, sigmas, tuple(m for m in BLOCK_STAGES if m in used))
    total = np.zeros(np.shape(pilot), np.float64)
    for m, w in used.items():
        total += w * (outs[m] if m in outs else stage_stack(x, pilot, m, sigmas))
    return total.astype(np.float32)


def stage_stack(x: np.ndarray, pilot: np.ndarray, mode: str, sigmas=None,
                weights: dict[str, float] | None = None) -> np.ndarray:
    """Second stage ``mode`` (:data:`STAGES`) on a (Z, Y, X) run of slices and their estimates.

    ``sigmas``: white noise of this level per slice (the blind-spot network's
    case); None: noise correlated within slices (the 2.5D network's case):
    each slice's noise spectrum is read from its residual against the pilot
    (:func:`napari_duet.core.wiener.noise_spectrum`) and every stage uses
    8 x 8 windows.  For the 3D stages, slice ``z`` of the output depends on
    slices ``z - stage_reach(mode) .. z + stage_reach(mode)`` only (the ends of
    the run are reflected).  ``weights``: the ``mix`` stage's (:func:`choose_wiener`).
    """
    from ..core.wiener import dct_wiener_stack, noise_spectrum

    if mode not in ALL_STAGES:
        raise ValueError(f"unknown second stage {mode!r}; expected one of {ALL_STAGES}")
    x = np.asarray(x, np.float32)
    out = np.asarray(pilot, np.float32)
    if mode == "off":
        return out
    if mode == MIX:
        if sigmas is None or not weights:
            raise ValueError("the mix stage needs white noise (sigmas) and the check's weights")
        return mix_stages(x, out, sigmas, weights)
    if mode in BLOCK_STAGES:
        if sigmas is None:  # the 2.5D network's case (spectra)
            check_stage_fits(mode, "2.5d")
        return block_matched_stages(x, out, sigmas, (mode,))[mode]
    xt = torch.from_numpy(x)
    depth = _DEPTH_3D if mode in _STAGE_3D else 1
    if sigmas is None:
        spectra = torch.stack([noise_spectrum(xt[z], torch.from_numpy(out[z]), _SIZE_3D)
                               for z in range(x.shape[0])])
        if mode == "bmw":
            from ..core.blockmatch import guided_wiener

            return guided_wiener(xt, 1.0, torch.from_numpy(out), spectra).numpy()
        for stride in _STAGE_3D.get(mode, (1,)):
            out = dct_wiener_stack(xt, torch.from_numpy(out), None, depth, _SIZE_3D, stride,
                                   spectra=spectra).numpy()
        return out
    sig = np.array(np.broadcast_to(np.asarray(sigmas, np.float64), (x.shape[0],)))
    if mode == "bmw":
        from ..core.blockmatch import guided_wiener

        return guided_wiener(xt, sig, torch.from_numpy(out)).numpy()
    if mode == "2d":
        return np.stack([wiener_stage(x[z], out[z], sig[z]) for z in range(x.shape[0])])
    for stride in _STAGE_3D[mode]:
        out = dct_wiener_stack(xt, torch.from_numpy(out), sig, depth, _SIZE_3D, stride).numpy()
    return out


def choose_wiener(predict_all, stacks: np.ndarray, tta: bool, seed: int = 0,
                  levels: list | None = None) -> dict:
    """Which second stage (:data:`STAGES`) lowers the error on these (S, Z, Y, X) stacks?

    No stage wins everywhere: where the network alone is sharper than any
    windowed linear filter (flat regions with clean edges) a stage adds back
    ringing, and the 3D windows help only where neighbouring slices share
    structure (thin slices).  Which one wins is measured without clean data, by
    recorruption (Pang et al., CVPR 2021): with ``n`` white noise of each
    slice's level ``sigma`` (the stack's, :func:`~napari_duet.core.noiselevel.white_noise_sigma`:
    the check is biased towards stronger filters when it is too high),
    ``y1 = x + ALPHA sigma n`` and
    ``y2 = x - sigma n / ALPHA`` have independent noises, so
    ``mean((f(y1) - y2)^2)`` is the error of ``f`` on ``y1`` against the clean
    slices plus a constant that is the same for every candidate.  Every
    candidate runs on the same recorrupted run of up to
    ``WIENER_CHECK_SLICES`` neighbouring slices, from the middle of evenly
    spread stacks.

    The candidates' errors differ, so a weighted sum of them can beat the best
    one: :func:`fit_mix` fits the weights to the same target, and the ``mix``
    stage is chosen where that sum also wins on the half of the checked slices
    it was not fitted on.  Measured on the saved networks of the six full-size
    volumes of ``benchmarks/nsn2n_real.py`` (default budget, the same check
    data; dB over BM4D with its own noise estimate, the single stage this check
    picks in brackets): brain MRI +0.03 (-0.13), CT +0.14 (+0.11) and +0.35
    (+0.14), EM +0.28 (+0.13), nuclei +0.35 (+0.23), EPI MRI +0.04 (+0.07); the
    sum won on the held-out slices on all six.  Non-negative weights: -0.06 on
    brain MRI; shrinking the weights towards equal ones lost up to 0.45 dB.

    Returns ``{"mode", "use", "losses": {mode: loss}, "loss_blend",
    "loss_wiener", "slices", "weights", "loss_mix_cv", "loss_best_cv"}``
    (``use``: any stage; ``loss_wiener``: the 2d one; ``weights``: the mix's).
    ``levels``: each stack's noise level when already measured (``NSN2NModel.noise_level``).
    """
    from ..core.noiselevel import white_noise_sigma
    from ._guide import _noise_sigma

    rng = np.random.default_rng([seed, 2021])  # a stream apart from any seed-only one
    n_s, n_z = stacks.shape[:2]
    run = min(n_z, WIENER_CHECK_SLICES)
    n_stacks = max(1, min(n_s, WIENER_CHECK_SLICES // run))
    z0 = (n_z - run) // 2
    losses = dict.fromkeys(STAGES, 0.0)
    picks, cols, targets, parity = [], [], [], []
    for s in np.unique(np.linspace(0, n_s - 1, n_stacks).round().astype(int)):
        stack = np.array(stacks[s], np.float32)  # a writable copy, recorrupted in place
        x = stack[z0:z0 + run].copy()
        # the stack's, as denoising uses (``levels``: already measured, one per stack)
        level = white_noise_sigma(stack) if levels is None else levels[s]
        sigma = np.array([_noise_sigma(v) if level is None else level for v in x])
        n = rng.standard_normal(x.shape).astype(np.float32)
        stack[z0:z0 + run] = x + ALPHA * sigma[:, None, None] * n
        target = x - (sigma / ALPHA)[:, None, None] * n
        sigma1 = sigma * float(np.sqrt(1 + ALPHA**2))  # the recorrupted slices' noise
        y1 = stack[z0:z0 + run]
        blend = np.stack([posterior(y1[k], predict_mu(predict_all, stack, z0 + k, tta).mean(0),
                                    sigma1[k]) for k in range(run)])
        outs = block_matched_stages(y1, blend, sigma1)
        # The mix's fit reads at most MIX_PIXELS pixels of each run (a fixed random set).
        keep = np.sort(rng.choice(target.size, min(target.size, MIX_PIXELS), replace=False))
        col = []
        for mode in STAGES:
            out = outs[mode] if mode in outs else stage_stack(y1, blend, mode, sigma1)
            losses[mode] += float(np.sum((out - target) ** 2))
            col.append(out.reshape(-1)[keep])
        cols.append(np.stack(col, 1))
        targets.append(target.reshape(-1)[keep])
        parity.append((keep // target[0].size) % 2)  # which half of the slices
        picks += [[int(s), z0 + k] for k in range(run)]
    n_px = len(picks) * stacks[0, 0].size
    losses = {m: v / n_px for m, v in losses.items()}
    mode = min(STAGES, key=losses.__getitem__)
    mix = fit_mix(np.concatenate(cols), np.concatenate(targets), np.concatenate(parity))
    if mix["loss_cv"] < mix["loss_best_cv"]:
        mode = MIX
    # The losses rank the candidates; they do not tell their gains in dB: the target's
    # noise (4 sigma^2) dwarfs the errors, and a 1 % error of sigma^2 is as large as
    # the error of a good estimate.
    return {"mode": mode, "use": mode != "off", "losses": losses,
            "loss_blend": losses["off"], "loss_wiener": losses["2d"], "slices": picks,
            "weights": mix["weights"], "loss_mix_cv": mix["loss_cv"],
            "loss_best_cv": mix["loss_best_cv"]}


# Pixels of each check run that fit the mix's weights (8 of them: plenty).
MIX_PIXELS = 400_000


def fit_mix(a: np.ndarray, target: np.ndarray, half: np.ndarray) -> dict:
    """Weights of the candidates (columns of ``a``, :data:`STAGES`) whose sum is closest to
    the recorruption ``target`` (least squares: the target's noise is independent of the
    candidates', so this is the sum closest to the clean slices, up to the check's noise
    level), and whether the sum also wins on slices it was not fitted on.

    ``half`` (0/1 per pixel) splits the slices in two: the weights fitted on each half
    are scored on the other (``loss_cv``), beside the candidate with the lowest loss on
    the fitting half, scored the same way (``loss_best_cv``).
    """
    a = np.asarray(a, np.float64)
    t = np.asarray(target, np.float64)

    def lstsq(rows):
        return np.linalg.lstsq(a[rows], t[rows], rcond=None)[0]

    cv = best = 0.0
    halves = [half == h for h in (0, 1)]
    if all(h.any() for h in halves):
        for fit, test in (halves, halves[::-1]):
            cv += float(np.sum((a[test] @ lstsq(fit) - t[test]) ** 2))
            j = int(np.argmin(np.sum((a[fit] - t[fit, None]) ** 2, axis=0)))
            best += float(np.sum((a[test, j] - t[test]) ** 2))
    else:  # one slice: nothing to score the sum on
        cv, best = np.inf, 0.0
    w = lstsq(slice(None))
    return {"weights": {m: float(v) for m, v in zip(STAGES, w, strict=True)},
            "loss_cv": cv / max(t.size, 1), "loss_best_cv": best / max(t.size, 1)}
