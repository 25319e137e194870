"""Configuration of an NS-N2N run (validated, frozen, JSON round-trippable)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .._errors import DuetInputError

GUIDES = ("gaussian", "bilateral", "nlm")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "constant")
CONTEXTS = ("2.5d", "2d")
MAX_SIGMA, MAX_MEDIAN, MAX_TILE = 100.0, 51, 16384


@dataclass(frozen=True)
class NSN2NConfig:
    """Parameters of NS-N2N training and inference.

    Parameters
    ----------
    context : {"2.5d", "2d"}
        ``"2.5d"`` (default): the network also sees neighbouring slices, split by
        parity so that no target slice is ever an input (see ``_context.py``), and
        both splits are averaged at inference.  ``"2d"``: the paper's pair form
        (one slice in, a neighbour as target, with the RC and IC losses).
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

    context: str = "2.5d"
    iterations: int | None = None
    budget: float | str = "auto"
    width: int | None = None
    depth: int = 2
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 1e-5
    schedule: str = "cosine"
    batch_size: int = 8
    crop_size: int = 64
    guide: str = "gaussian"
    guide_sigma: float = 2.0
    median_size: int = 5
    tau: float | None = None
    tau_factor: float = 3.0
    lambda_rc: float = 0.5
    lambda_ic: float = 1.0
    residual: bool = True
    preview_every: int = 50
    preview_index: int | None = None
    tta: bool = True
    tile: int = 512
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise DuetInputError(msg)

        need(self.context in CONTEXTS,
             f"context must be one of {', '.join(CONTEXTS)}, got {self.context!r}")
        need(self.iterations is None or (isinstance(self.iterations, int)
                                         and not isinstance(self.iterations, bool)
                                         and self.iterations >= 1),
             f"iterations must be a positive integer or None, got {self.iterations!r}")
        need(self.budget == "auto" or (isinstance(self.budget, int | float)
                                       and not isinstance(self.budget, bool)
                                       and self.budget > 0),
             f"budget must be 'auto' or a positive number of seconds, got {self.budget!r}")
        need(self.width is None or (isinstance(self.width, int) and 1 <= self.width <= 512),
             f"width must be an integer in 1..512 or None, got {self.width!r}")
        need(isinstance(self.depth, int) and 0 <= self.depth <= 6,
             f"depth must be an integer in 0..6, got {self.depth!r}")
        need(self.lr > 0, f"lr must be positive, got {self.lr!r}")
        need(self.optimizer in OPTIMIZERS,
             f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(self.schedule in SCHEDULES,
             f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch_size must be a positive integer, got {self.batch_size!r}")
        need(isinstance(self.crop_size, int) and self.crop_size >= 8,
             f"crop_size must be an integer >= 8, got {self.crop_size!r}")
        need(self.guide in GUIDES,
             f"guide must be one of {', '.join(GUIDES)}, got {self.guide!r}")
        # Upper bounds far above useful values: a model file's config sets them for
        # inference too, and huge filters would take hours or many gigabytes.
        need(isinstance(self.guide_sigma, int | float) and 0 < self.guide_sigma <= MAX_SIGMA,
             f"guide_sigma must be in (0, {MAX_SIGMA}], got {self.guide_sigma!r}")
        need(isinstance(self.median_size, int) and 1 <= self.median_size <= MAX_MEDIAN,
             f"median_size must be an integer in 1..{MAX_MEDIAN} (1 disables the median)")
        need(self.tau is None or 0 < self.tau < math.inf,
             f"tau must be positive and finite or None, got {self.tau!r}")
        need(0 < self.tau_factor < math.inf, "tau_factor must be positive and finite")
        need(self.lambda_rc >= 0 and self.lambda_ic >= 0, "lambda_rc and lambda_ic must be >= 0")
        need(isinstance(self.preview_every, int) and self.preview_every >= 0,
             "preview_every must be an integer >= 0 (0 disables previews)")
        need(self.preview_index is None or isinstance(self.preview_index, int),
             "preview_index must be an integer or None")
        need(isinstance(self.tile, int) and 32 <= self.tile <= MAX_TILE,
             f"tile must be an integer in 32..{MAX_TILE}")
        need(isinstance(self.device, str) and bool(self.device), "device must be a string")
        need(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NSN2NConfig:
        """Build from a dict; unknown keys (from newer versions) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> NSN2NConfig:
        """Copy with some fields changed (validated again)."""
        return NSN2NConfig.from_dict({**self.to_dict(), **changes})
