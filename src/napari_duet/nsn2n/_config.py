"""Configuration of an NS-N2N run (validated, frozen, JSON round-trippable)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.config import EngineConfig, check_choice, check_int, check_number, need, param

GUIDES = ("gaussian", "bilateral", "nlm")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "constant")
CONTEXTS = ("auto", "2.5d", "blind", "2d")
NOISE_MODELS = ("auto", "gaussian", "poisson-gaussian", "rician")
MAX_SIGMA, MAX_MEDIAN, MAX_TILE = 100.0, 51, 16384


@dataclass(frozen=True)
class NSN2NConfig(EngineConfig):
    """Parameters of NS-N2N training and inference.

    Unknown keys are rejected (:meth:`from_dict`, :meth:`replace`); a model file
    saves all but the run-time options (``RUNTIME``: previews, ``tta``,
    ``tile``, ``device``), which are set when the model is used.

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
        choices=("auto", "2.5d", "blind", "2d"))
    noise_model: str = param(
        "auto", label="noise model",
        help="How the noise depends on the signal: gaussian = the same everywhere; "
             "poisson-gaussian = raw camera data (photon noise grows with brightness; the "
             "network works on a variance-stabilised stack); rician = MRI magnitude images "
             "(the bias at low signal is removed).",
        auto="fitted from the data (noise variance against signal)",
        choices=("auto", "gaussian", "poisson-gaussian", "rician"))
    iterations: int | None = param(
        None, label="training steps",
        help="Train exactly this many steps (reproducible) instead of for a time budget.",
        auto="train for the time budget", lo=1)
    budget: float | str = param(
        "auto", label="time budget (s)", help="Training time in seconds.",
        auto="by device and volume size; about 4 minutes on a CPU for 48 × 256 × 256",
        example="--budget 120")
    width: int | None = param(
        None, label="network width",
        help="Feature channels of the network's first level; wider is slower and sometimes "
             "better.",
        auto="24 on a CPU, 48 on a GPU (16 for 2d)", lo=1)
    depth: int = 2
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 1e-5
    schedule: str = "cosine"
    batch_size: int = 8
    crop_size: int = 64
    guide: str = param(
        "gaussian", label="slice-matching filter",
        help="Smoothing used to compare neighbouring slices and find where they match (only "
             "there does a neighbour stand in for the slice): gaussian is fast; nlm (non-local"
             " means, the paper's choice) is slow; bilateral keeps edges.",
        choices=("gaussian", "bilateral", "nlm"))
    guide_sigma: float = 2.0
    median_size: int = 5
    tau: float | None = param(
        None, label="matching threshold",
        help="How different two smoothed neighbouring slices may be and still count as "
             "matching (normalised units).",
        auto="3 × the noise level of the differences")
    tau_factor: float = 3.0
    lambda_rc: float = param(
        0.5, label="weight: matched regions",
        help="2d network only: weight of the loss that keeps the denoised slice close to its "
             "neighbour where the two match (regional consistency).",
        lo=0)
    lambda_ic: float = param(
        1.0, label="weight: slice continuity",
        help="2d network only: weight of the loss that keeps neighbouring denoised slices "
             "alike (inter-slice continuity).",
        lo=0)
    residual: bool = True
    preview_every: int = 50
    preview_index: int | None = None
    tta: bool = param(
        True, label="test-time augmentation",
        help="Denoise 8 flipped/rotated copies and average them: cleaner, about 8 times "
             "slower, and gives an uncertainty map (their spread).")
    tile: int = 512
    device: str = param(
        "auto", label="device",
        help="Where to compute: auto uses a GPU (CUDA or Apple MPS) when there is one, else "
             "the CPU.")
    seed: int = param(
        0, label="random seed", help="Seed of crops, augmentations and initial weights.")
    threads: int | None = param(
        None, label="CPU threads", help="torch CPU threads during the run (restored after).",
        none="torch's setting as it is (the command's --threads, the widget's setting)")

    RUNTIME: ClassVar[tuple[str, ...]] = ("preview_every", "preview_index", "tta", "tile",
                                          "device", "threads")
    LABEL: ClassVar[str] = "NS-N2N"

    def validate(self) -> None:
        """Check every value (see :class:`~napari_duet.core.config.EngineConfig`)."""
        check_choice("context", self.context, CONTEXTS)
        check_choice("noise_model", self.noise_model, NOISE_MODELS)
        check_int("iterations", self.iterations, 1, optional=True)
        need(self.budget == "auto" or (isinstance(self.budget, int | float)
                                       and not isinstance(self.budget, bool)
                                       and self.budget > 0),
             f"budget must be 'auto' or a positive number of seconds, got {self.budget!r}")
        check_int("width", self.width, 1, 512, optional=True)
        check_int("depth", self.depth, 0, 6)
        check_number("lr", self.lr, 0, lo_open=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_number("weight_decay", self.weight_decay, 0)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_int("batch_size", self.batch_size, 1)
        check_int("crop_size", self.crop_size, 8)
        check_choice("guide", self.guide, GUIDES)
        # Upper bounds far above useful values: a model file's config sets them for
        # inference too, and huge filters would take hours or many gigabytes.
        check_number("guide_sigma", self.guide_sigma, 0, MAX_SIGMA, lo_open=True)
        check_int("median_size", self.median_size, 1, MAX_MEDIAN)
        check_number("tau", self.tau, 0, lo_open=True, optional=True)
        check_number("tau_factor", self.tau_factor, 0, lo_open=True)
        check_number("lambda_rc", self.lambda_rc, 0)
        check_number("lambda_ic", self.lambda_ic, 0)
        check_int("preview_every", self.preview_every, 0)
        check_int("preview_index", self.preview_index, optional=True)
        check_int("tile", self.tile, 32, MAX_TILE)
        need(self.threads is None or (isinstance(self.threads, int) and self.threads >= 1),
             f"threads must be a positive integer or None, got {self.threads!r}")
        need(isinstance(self.device, str) and bool(self.device),
             f"device must be a name such as 'auto', 'cpu' or 'cuda', got {self.device!r}")
        check_int("seed", self.seed)
