"""Parameters of Self2Seg, validated once when the configuration is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.config import EngineConfig, device_param, param, seed_param, threads_param

EXPERT_CHOICES = ("cnn", "linear", "constant")
INIT_CHOICES = ("auto", "threshold", "otsu")
NOISE_CHOICES = ("auto", "gaussian", "poisson-gaussian")


@dataclass(frozen=True)
class Self2SegConfig(EngineConfig):
    """All parameters of a Self2Seg run.

    Parameters
    ----------
    n_classes : int
        Number of regions K >= 2 (one expert each).  For K = 2 class 0 is the
        background and class 1 the foreground.
    lam : float or None
        Weight of the total-variation (boundary length) term.  ``None``
        (default) sets it automatically, relative to the data: ``lam_scale``
        times a robust scale (1.4826 * median absolute deviation) of the
        first data-term difference ``g = r_bg - r_fg`` (pairwise differences
        for K > 2).  A float is a *multiplier* of that robust scale, so the
        same value works for any intensity range (``lam=2`` = twice as smooth
        as the default).
    lam_scale : float
        Multiplier used when ``lam`` is None.  With seeds, two classes and
        ``lam`` None, lambda also doubles (at most twice) while the first mask puts more
        than 5 % of one class's seed pixels in another class.
    lam_noise : float
        The robust scale is ``max(MAD(g), lam_noise * s_noise)`` where
        ``s_noise`` is the estimated noise std of ``g`` (from a robust noise
        estimate of the image and the experts' difference), so lambda grows
        with the noise level; 0 uses the MAD alone.
    experts : {"cnn", "linear", "constant"}
        Expert type for every region: a small Noise2Fast CNN, a linear filter
        (exact least squares), or a constant (= convex Chan-Vese).
    max_alternations : int
        Maximum number of (experts, mask) alternations.
    expert_width : int
        Feature channels of the CNN experts (the linear expert's kernel size
        is ``linear_size``).
    expert_depth : int
        Number of 3x3 convolutions of the CNN experts.
    expert_steps : int
        Training budget (Adam steps) of a fresh CNN: the shared whole-image
        Noise2Fast pre-training (``shared_pretrain``), or each expert's first
        training otherwise.
    expert_steps_warm : int
        Training steps per expert and alternation once it has weights
        (warm start).
    shared_pretrain : bool or None
        Pre-train one CNN on the whole image and start every region expert
        from it: each region then only specialises, so small regions do not
        starve and each expert denoises its region at least as well as
        whole-image Noise2Fast.  ``None`` (default): on for the automatic
        start, off with seeds, where each expert learns from its own seeds
        from scratch (a shared start teaches every expert both regions, the
        very thing the seeds are there to tell apart; on photographic
        texture pairs mean Dice 0.745 with it, 0.784 without).
    ensemble_shared : bool
        With ``shared_pretrain``: each CNN expert's denoising (not its data
        term) is the average of its own prediction and that of the shared
        whole-image network it started from.  Fine-tuning on a region moves
        the expert by a few noisy steps; averaging with its starting point
        cancels much of that variance (a snapshot ensemble), so the composite
        denoising beats whole-image Noise2Fast, while the data term keeps
        each expert's own, region-specific prediction.
    finetune_lr_factor : float
        Learning-rate factor when a region expert specialises the shared
        pre-trained CNN (a smaller step keeps what it learnt).
    batch_size, crop : int
        Training batch: ``batch_size`` random ``crop`` x ``crop`` crops of the
        squeezed checkerboard phases, centred on pixels of the expert's
        region (so cost does not grow with image size).
    lr : float
        Adam learning rate.
    patience : int
        Early stopping: stop an expert's training after this many steps
        without a new best validation loss.
    n_average : int
        Number of last prediction snapshots averaged (Noise2Fast averages its
        last predictions to reduce variance).
    linear_size : int
        Kernel size of the linear-filter expert (odd).
    filter_size : int or None
        Box filter applied to residuals before squaring (0 or 1 = off).  It
        averages the noise out of the residual so the data term measures
        model error, not noise (reference §12: essential at high noise), but
        it also blurs the data term across edges.  ``None`` (default) picks
        it from the image: the smallest odd size F <= 3 for which the
        initial regions' contrast, measured against the filtered noise,
        reaches ``filter_snr`` at the midpoint between the two levels
        (``delta * F / (2 * sigma_noise) >= filter_snr``), i.e. 1 for clean
        images and 3 for noisy ones.
    filter_snr : float
        Required z-score of the midpoint threshold for the automatic filter
        size.
    region_variance : bool
        Data term as a Gaussian likelihood per region: ``e^2 / v_k + log v_k``
        with ``v_k`` the mean filtered squared residual of region ``k`` (its
        maximum-likelihood variance) instead of ``e^2`` (Chan-Vese).
    refine_borders : bool
        Automatic start, two classes: after the last alternation, cut each
        isolated object again from the denoised image at a level between
        its interior and the background around it (40 % of the way up, within
        5 pixels of its border); objects in clusters, or whose interior the cut would eat
        into, keep their mask.  Fixes the one-to-two-pixel ring around small
        bright nuclei at high signal-to-noise.
    mu_scale : float
        Mask prior weight ``mu`` (paper eq. 10, ``mu ||u - u_prev||^2``) as a
        multiple of the robust scale; 0 disables it.
    clamp_experts : bool
        Clip each expert's output to the intensity range it saw in its own
        region (1st-99th percentile of the box-smoothed image there), so a
        foreground expert cannot also model the background (collapse guard).
    max_fraction_change : float
        Safeguard: reject a mask update that changes any region's area by
        more than this factor (or empties it); the previous mask is kept.
    stop_ratio : float
        Paper's stop rule: stop when the relative energy decrease falls below
        ``stop_ratio`` times the previous relative decrease.
    stop_changed : float
        Also stop when fewer than this fraction of pixels changed label.
    init : {"auto", "threshold", "otsu"}
        Automatic initialisation when no regions are given: ``auto`` (=
        ``otsu``) smooths with a Gaussian (``init_sigma``) and applies
        (multi-)Otsu; ``threshold`` is the paper's 0.5 threshold of the
        min-max normalised (smoothed) image.
    init_sigma : float
        Gaussian smoothing (pixels) before the automatic threshold.
    init_snr : float
        Automatic start: after a first pass at ``init_sigma`` (noise floor
        at most 1.5), smooth again just enough that the contrast between
        the regions found stands ``init_snr`` standard deviations of the
        smoothed noise clear (sigma between ``init_sigma`` and 8 pixels),
        and threshold again with ``init_noise_floor``.  Dim nuclei at high
        noise are then found whole instead of as noise-cut fragments; clean
        images keep ``init_sigma``.  0 = one pass at ``init_sigma``.
    init_noise_floor : float
        Automatic start: the threshold stays at least this many robust
        standard deviations of the smoothed background above the
        background's mode (0 = plain Otsu) when more than half of what
        lies above Otsu's threshold is what the background's noise alone
        puts there (a cut through the noise, not between two regions), so
        that a sparse, dim image at high noise does not start from noise
        blobs.
    invert : bool
        Automatic initialisation only: make the darker region the foreground
        (class order reversed for K > 2).
    warmup_constant : bool
        Automatic start only: run the first alternation with constant experts
        (a convex Chan-Vese step) before training the chosen experts on its
        mask.  With seeds the chosen experts always train on the seeds from
        the first alternation (the seeds are what the user taught).
    local_energy : bool or None
        Data term as the local energy of the residual, ``box(e^2)`` (square,
        then average), instead of ``box(e)^2``.  Both read intensity
        differences alike, but only the local energy sees errors that average
        to zero, i.e. a texture the expert cannot predict.  ``None``
        (default): on with seeds (regions may differ by texture alone), off
        for the automatic start (its regions come from an intensity
        threshold, and on noisy nuclei ``box(e)^2`` measured slightly better).
    noise_model : {"auto", "gaussian", "poisson-gaussian"}
        Noise of the image.  Raw camera images carry photon (Poisson) noise
        whose variance grows with the signal, plus read noise:
        "poisson-gaussian" fits ``var = a * signal + b`` to the image
        (:func:`napari_duet.core.photon.fit_poisson_gaussian`) and runs on its
        generalised Anscombe transform, where the noise has one variance;
        the denoised output is mapped back with the exact unbiased inverse.
        "auto" (default) does so when the fitted variance at the bright end
        is at least twice that at the dark end, else treats the noise as
        Gaussian.  Colour images are always treated as Gaussian.
    solver_tol : float
        Mask solver stopping tolerance (duality gap per pixel for two
        classes, primal change for K > 2).
    solver_max_iter : int
        Mask solver iteration cap.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps`` (CNN experts only).
    seed : int
        Seed of all random choices (deterministic on the CPU).
    threads : int or None
        Torch CPU threads during the run (restored afterwards).  None: 1 on
        the CPU, the fastest for these small networks (measured), torch's
        setting on other devices.
    """

    n_classes: int = param(
        2, label="classes",
        help="Number of regions to separate: 2 = objects and background; more for several "
             "kinds of region (one seed role each).",
        lo=2, hi=16, cli="classes", metavar="K")
    lam: float | None = param(
        None, label="border smoothness λ",
        help="How smooth region borders are, as a multiple of a scale measured on the image: 2"
             " = twice as smooth (fewer, rounder objects), 0.5 = follows finer detail. Lower "
             "it if small objects vanish; raise it if the mask is speckled.",
        auto="1 × the measured scale", example="--lam 0.5", lo=0, lo_open=True, metavar="L")
    lam_scale: float = param(1.0, lo=0, lo_open=True)
    lam_noise: float = param(3.0, lo=0)
    experts: str = param(
        "cnn", label="region denoiser",
        help="How each region is modelled and denoised: cnn = a small self-supervised network "
             "(Noise2Fast-style; best, slowest); linear = a linear filter; constant = one "
             "intensity per region (classic Chan-Vese; fastest).",
        choices=EXPERT_CHOICES)
    max_alternations: int = param(
        4, label="max alternations",
        help="Most rounds of (train the region denoisers, update the mask); a run stops "
             "earlier when the mask stops changing.",
        lo=1, example="--max-alternations 6", metavar="N")
    expert_width: int = param(
        16, label="network width",
        help="Feature channels of the cnn region denoisers; wider is slower and rarely better.",
        lo=1, metavar="N")
    expert_depth: int = param(5, lo=2)
    expert_steps: int = param(
        200, label="training steps",
        help="Training steps of a fresh cnn region denoiser (later alternations continue with "
             "fewer). More steps denoise better and take longer.",
        lo=1, example="--expert-steps 400", metavar="N")
    expert_steps_warm: int = param(60, lo=0)
    shared_pretrain: bool | None = None
    ensemble_shared: bool = True
    finetune_lr_factor: float = param(0.3, lo=0, lo_open=True)
    batch_size: int = param(8, lo=1)
    crop: int = param(32, lo=8)
    lr: float = param(1e-3, lo=0, lo_open=True)
    patience: int = param(50, lo=0)
    n_average: int = param(3, lo=1)
    linear_size: int = param(9, lo=1, odd=True)
    filter_size: int | None = param(None, lo=0)
    filter_snr: float = param(2.0, lo=0, lo_open=True)
    region_variance: bool = True
    refine_borders: bool = True
    mu_scale: float = param(0.5, lo=0)
    clamp_experts: bool = True
    max_fraction_change: float = param(3.0, lo=1, lo_open=True)
    stop_ratio: float = param(0.15, lo=0)
    stop_changed: float = param(0.002, lo=0)
    init: str = param("auto", choices=INIT_CHOICES)
    init_sigma: float = param(2.0, lo=0)
    init_snr: float = param(6.0, lo=0)
    init_noise_floor: float = param(3.0, lo=0)
    invert: bool = param(
        False, label="dark objects",
        help="Automatic start (no seeds) only: the darker region is the foreground (dark "
             "objects on a bright background).")
    warmup_constant: bool = True
    local_energy: bool | None = None
    noise_model: str = param(
        "auto", label="noise", choices=NOISE_CHOICES,
        help="What kind of noise the image has. Raw camera images have photon noise that "
             "grows with the brightness: poisson-gaussian fits the camera's gain and offset "
             "and works on a variance-stabilised image; gaussian treats the noise as the "
             "same everywhere.",
        auto="poisson-gaussian when the fitted noise clearly grows with the signal, else "
             "gaussian")
    solver_tol: float = param(1e-4, lo=0, lo_open=True)
    solver_max_iter: int = param(500, lo=1)
    device: str = device_param("Where the cnn region denoisers run")
    seed: int = seed_param(
        "Seed of every random choice: the same seed and settings give the same result on a CPU.")
    threads: int | None = threads_param(
        "torch CPU threads during the run.",
        auto="1 on a CPU, the fastest for these small networks")

    RUNTIME: ClassVar[tuple[str, ...]] = ("device", "threads")
    LABEL: ClassVar[str] = "Self2Seg"

    def check(self) -> None:
        """What the field declarations cannot say (each field's own rule is declared with
        :func:`~napari_duet.core.config.param` and checked by ``validate``): nothing yet
        beyond them for Self2Seg."""
