"""Configuration of an NS-N2N run (validated, frozen, JSON round-trippable)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.config import (
    EngineConfig,
    check_int,
    device_param,
    need,
    param,
    seed_param,
    threads_param,
)

GUIDES = ("gaussian", "bilateral", "nlm")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "constant")
CONTEXTS = ("auto", "2.5d", "blind", "2d")
NOISE_MODELS = ("auto", "gaussian", "poisson-gaussian", "rician")
# "on" is the "2d" stage (its name in models saved before the 3D stages existed).
WIENER_CHOICES = ("auto", "off", "2d", "3d", "3d2", "bm", "bmht", "bm-light", "bmht-light",
                  "bmw", "on")
# The block-matched stages (nsn2n/_blind.py): one white-noise level per slice, so
# the blind-spot network only.  Here, not in _blind, so checks need no torch.
# "-light": the Wiener step shrinks less (core.blockmatch.light_mu2).
BLOCK_STAGES = ("bm", "bmht", "bm-light", "bmht-light")
# Every stage that matches blocks ("bmw": the Wiener step alone, guided by the network;
# with each slice's noise spectrum after the 2.5D network): discontinuous where blocks tie.
# "mix": the check's weighted sum of every candidate, the block-matched ones included.
MATCHED_STAGES = (*BLOCK_STAGES, "bmw", "mix")
MAX_SIGMA, MAX_MEDIAN, MAX_TILE = 100.0, 51, 16384


@dataclass(frozen=True)
class NSN2NConfig(EngineConfig):
    """Parameters of NS-N2N training and inference.

    Unknown keys are rejected (:meth:`from_dict`, :meth:`replace`); a model file
    saves all but the run-time options (``RUNTIME``: previews, ``tta``,
    ``tile``, ``device``), which are set when the model is used.  ``wiener`` is
    saved, so a choice made when applying a model reaches dask workers too.

    Parameters
    ----------
    context : {"auto", "2.5d", "blind", "2d"}
        Network input and training split.  ``"2.5d"``: the network also sees
        neighbouring slices, split by parity so that no target slice is ever an
        input (see ``_context.py``), and both splits are averaged at inference;
        needs noise independent between slices only.  ``"blind"``: the target
        slice itself with a blind spot (a grid of hidden pixels) plus its
        neighbours (see ``_blind.py``); needs noise independent between pixels.
        ``"auto"`` (default): ``"blind"`` when the measured in-plane correlation
        of the noise is low, else ``"2.5d"`` (:func:`resolve_context`).
        ``"2d"``: the paper's pair form (one slice in, a neighbour as target, with
        the RC and IC losses).
    noise_model : {"auto", "gaussian", "poisson-gaussian", "rician"}
        How the noise depends on the signal (see ``_noise.py``).
        ``"poisson-gaussian"`` (camera data): gain and offset are fitted from the
        data, the network works after the generalised Anscombe transform, and the
        result is mapped back with the exact unbiased inverse.  ``"rician"`` (MRI
        magnitude): sigma is fitted and the output's upward bias at low signal is
        removed.  ``"gaussian"``: constant variance, no transform.  ``"auto"``
        (default): chosen from the fitted variance-vs-mean relationship; the
        choice and its parameters are in the report and the model file.
    iterations : int or None
        Optimiser steps.  None (default): train for ``budget`` seconds.  With a
        number and ``budget="auto"``, exactly that many steps (reproducible).
    budget : "auto" or float
        Training time in seconds.  ``"auto"``: by device and volume size (see
        :func:`resolve_budget`); on a CPU about 4 minutes for 48 x 256^2.  A
        number is a hard limit, also when ``iterations`` is set.
    width : int or None
        Feature channels of the U-Net's first level (doubled per level).  None:
        by device (24 on a CPU, 48 on a GPU for ``"2.5d"``; 16 for ``"2d"``).
    depth : int
        Down-sampling levels of the U-Net.
    lr : float
        Peak learning rate.
    optimizer : {"adam", "adamw"}
        Optimiser; ``weight_decay`` applies to AdamW only.
    weight_decay : float
        AdamW weight decay.
    schedule : {"cosine", "constant"}
        Learning-rate schedule (cosine decays to 1 % of ``lr``, after a short warm-up).
    batch_size : int
        Slice pairs per step.
    crop_size : int
        Side of the random square crops (clipped to the slice size).
    guide : {"gaussian", "bilateral", "nlm"}
        Low-pass filter for the guide images, always followed by a median filter.
        ``nlm`` is the paper's choice (slow on large slices); ``gaussian`` is fast.
    guide_sigma : float
        Gaussian sigma in pixels (``gaussian``), spatial sigma (``bilateral``).
    median_size : int
        Side of the median filter applied to the low-pass image (paper: 5).
    tau : float or None
        Threshold on |guide_i - guide_(i+1)| in normalised units.  None: set
        automatically to ``tau_factor`` times the robust noise level of the guide
        differences.
    tau_factor : float
        Multiplier of the automatic threshold.
    lambda_rc, lambda_ic : float
        Weights of the regional-consistency and inter-slice-continuity losses
        (``context="2d"`` only).
    residual : bool
        The network predicts the noise and subtracts it (``x - net(x)``;
        ``context="2d"`` only: the 2.5D network always adds a correction to a base image).
    preview_every : int
        Yield a denoised preview slice every this many iterations (0: never).
    preview_index : int or None
        Slice shown in previews (None: the middle slice).
    tta : bool
        Test-time augmentation at inference (8 flips/rotations): output is their
        mean and the uncertainty their spread.
    wiener : {"auto", "off", "2d", "3d", "3d2", "bm", "bmht", "bm-light", "bmht-light", "bmw", "on"}
        A second stage after the blind-spot or 2.5D network: the noisy slices
        Wiener-filtered in sliding DCT windows with the network's estimate as the
        pilot: ``2d`` windows in each slice (:func:`napari_duet.core.wiener.dct_wiener`;
        ``on`` is the same), ``3d`` 3 x 8 x 8 windows spanning neighbouring
        slices (:func:`napari_duet.core.wiener.dct_wiener_stack`), ``3d2`` that
        twice; ``bm`` and ``bmht`` (blind-spot network only) filter groups of
        similar blocks from neighbouring slices
        (:mod:`napari_duet.core.blockmatch`): collaborative hard thresholding,
        then Wiener guided by the mean of its result and the network's (``bm``)
        or by its result alone (``bmht``, the classical BM4D-like pilot);
        ``bm-light`` and ``bmht-light`` shrink less in the Wiener step (BM4D's
        ``mu2 = 0.4``), which keeps fine texture the thresholded pilot lost;
        ``bmw``: the block-matched Wiener step alone, guided by the network's
        estimate, with each slice's noise spectrum after the 2.5D network.
        After the blind-spot network the noise level is the stack's
        (:func:`napari_duet.core.noiselevel.white_noise_sigma`), after the 2.5D
        network each slice's noise spectrum.  ``auto``: the stage chosen after
        training (:func:`._blind.choose_wiener` for the blind-spot network: one
        of these, or ``mix``, the weighted sum of all of them that the check
        fits; :data:`._blind.CONTEXT_STAGE` for the 2.5D one), stored in the
        model.
    tile : int
        Tile side for inference on large slices.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    seed : int
        Seed for crops, augmentations and weights.
    """

    context: str = param(
        "auto", label="network input",
        help="What the network sees: 2.5d = the neighbouring slices (for noise correlated "
             "within a slice); blind = also the slice itself with hidden pixels (for pixel-"
             "independent noise); 2d = one neighbouring slice (the paper's form).",
        auto="measures the noise: blind for pixel-independent noise, else 2.5d",
        choices=CONTEXTS)
    noise_model: str = param(
        "auto", label="noise model",
        help="How the noise depends on the signal: gaussian = the same everywhere; "
             "poisson-gaussian = raw camera data (photon noise grows with brightness; the "
             "network works on a variance-stabilised stack); rician = MRI magnitude images "
             "(the bias at low signal is removed).",
        auto="fitted from the data (noise variance against signal)",
        choices=NOISE_MODELS)
    iterations: int | None = param(
        None, label="training steps",
        help="Train exactly this many steps (reproducible) instead of for a time budget.",
        auto="train for the time budget", lo=1, metavar="N")
    budget: float | str = param(
        "auto", label="time budget (s)", help="Training time in seconds.",
        auto="by device and volume size; about 4 minutes on a CPU for 48 × 256 × 256",
        example="--budget 120", metavar="SECONDS")
    width: int | None = param(
        None, label="network width",
        help="Feature channels of the network's first level; wider is slower and sometimes "
             "better.",
        auto="24 on a CPU, 48 on a GPU (16 for 2d)", lo=1, hi=512, metavar="W")
    depth: int = param(2, lo=0, hi=6)
    lr: float = param(1e-3, lo=0, lo_open=True)
    optimizer: str = param("adam", choices=OPTIMIZERS)
    weight_decay: float = param(1e-5, lo=0)
    schedule: str = param("cosine", choices=SCHEDULES)
    batch_size: int = param(8, lo=1)
    crop_size: int = param(64, lo=8)
    guide: str = param(
        "gaussian", label="slice-matching filter",
        help="Smoothing used to compare neighbouring slices and find where they match (only "
             "there does a neighbour stand in for the slice): gaussian is fast; nlm (non-local"
             " means, the paper's choice) is slow; bilateral keeps edges.",
        choices=GUIDES)
    # Upper bounds far above useful values: a model file's config sets them for inference
    # too, and huge filters would take hours or many gigabytes.
    guide_sigma: float = param(2.0, lo=0, hi=MAX_SIGMA, lo_open=True)
    median_size: int = param(5, lo=1, hi=MAX_MEDIAN)
    tau: float | None = param(
        None, label="matching threshold",
        help="How different two smoothed neighbouring slices may be and still count as "
             "matching (normalised units).",
        auto="3 × the noise level of the differences", lo=0, lo_open=True, metavar="T")
    tau_factor: float = param(3.0, lo=0, lo_open=True)
    lambda_rc: float = param(
        0.5, label="weight: matched regions",
        help="2d network only: weight of the loss that keeps the denoised slice close to its "
             "neighbour where the two match (regional consistency).",
        lo=0, metavar="W")
    lambda_ic: float = param(
        1.0, label="weight: slice continuity",
        help="2d network only: weight of the loss that keeps neighbouring denoised slices "
             "alike (inter-slice continuity).",
        lo=0, metavar="W")
    residual: bool = True
    preview_every: int = param(50, lo=0)
    preview_index: int | None = None
    tta: bool = param(
        True, label="test-time augmentation",
        help="Denoise 8 flipped/rotated copies and average them: cleaner, about 8 times "
             "slower, and gives an uncertainty map (their spread).")
    wiener: str = param(
        "auto", label="second stage (Wiener)",
        help="Filter the noisy slices once more in DCT windows after the blind-spot or 2.5D "
             "network, keeping per frequency what the network's estimate says is signal (the "
             "second stage of two-stage denoisers such as BM3D). 2d: windows in each slice; "
             "3d: 3 x 8 x 8 windows across neighbouring slices (thin slices: MRI, CT, EM); "
             "3d2: the 3d stage twice; bm: groups of similar blocks from neighbouring slices "
             "filtered together (repetitive tissue: MRI, CT, EM; white noise only), guided by "
             "the network and a hard-thresholding pass; bmht: guided by the thresholding "
             "alone; bm-light, bmht-light: the same, shrinking less (keeps fine texture, "
             "as BM4D); bmw: the block-matched Wiener step alone, guided by the network "
             "(after the 2.5D network with each slice's noise spectrum: correlated noise); "
             "on: same as 2d. Worse where the network alone is "
             "already sharper (piecewise-flat images) or slices differ (thick slices).",
        auto="chosen once after training, on the training volume: after the blind-spot "
             "network the stage (or none) with the lowest unbiased error estimate on "
             "recorrupted slices, after the 2.5D network bmw with the noise spectrum",
        choices=WIENER_CHOICES)
    tile: int = param(512, lo=32, hi=MAX_TILE)
    device: str = device_param()
    seed: int = seed_param("Seed of crops, augmentations and initial weights.")
    threads: int | None = threads_param()

    RUNTIME: ClassVar[tuple[str, ...]] = ("preview_every", "preview_index", "tta", "tile",
                                          "device", "threads")
    LABEL: ClassVar[str] = "NS-N2N"

    def check(self) -> None:
        """What the field declarations cannot say (each field's own rule is declared with
        :func:`~napari_duet.core.config.param` and checked by ``validate``)."""
        need(self.budget == "auto" or (isinstance(self.budget, int | float)
                                       and not isinstance(self.budget, bool)
                                       and self.budget > 0),
             f"budget must be 'auto' or a positive number of seconds, got {self.budget!r}")
        check_int("preview_index", self.preview_index, optional=True)


def check_stage_fits(wiener: str, context: str) -> None:
    """Refuse a block-matched ``wiener`` stage for the 2.5D network (noise correlated within
    slices, which one noise level per slice cannot describe): a one-line DuetInputError."""
    if wiener in BLOCK_STAGES and context == "2.5d":
        from ..core.errors import DuetInputError

        raise DuetInputError(f"the {wiener} second stage needs white noise, but this is the "
                             f"2.5D network (noise correlated within slices): use auto, 2d, "
                             f"3d or 3d2")
