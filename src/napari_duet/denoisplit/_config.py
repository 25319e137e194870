"""Network and training configuration of the splitting engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.config import (
    EngineConfig,
    check_number,
    device_param,
    need,
    param,
    seed_param,
    threads_param,
)
from ..core.errors import DuetInputError

LIKELIHOODS = ("noise_model", "gaussian")
KL_FORMS = ("denoisplit", "musplit")
CHECKPOINT_RULES = ("min_learned", "min_gain", "sum_gain", "val_loss")
#: The time budget on a CPU when none is given: training fits 10 minutes on a 2-core laptop.
CPU_MINUTES = 9.0
MIN_CHANNELS, MAX_CHANNELS = 2, 4
MAX_WIDTH = 1024  # filters and z_dims
MAX_BLOCKS = 8  # blocks_per_level


@dataclass(frozen=True)
class SplitConfig(EngineConfig):
    """Architecture of the LVAE ("Variational Splitting Encoder-Decoder").

    Parameters
    ----------
    n_levels : int
        Hierarchy levels; each halves the resolution, so images and tiles are
        padded to multiples of ``2**n_levels``.
    z_dims : int
        Latent channels per level.
    filters : int
        Feature channels of the deterministic path.
    blocks_per_level : int
        Gated residual blocks per level (bottom-up and top-down).
    dropout : float
        Dropout inside residual blocks.
    batchnorm : bool
        BatchNorm in residual blocks.
    learn_top_prior : bool
        Learnable mean and log-variance of the top level's prior.
    stochastic_skip : bool
        Merge each level's latent features with the deterministic path.
    var_clip_max : float
        Upper clip of latent log-variances.
    logvar_lower_bound : float
        Lower bound of the predicted pixel log-variance (Gaussian likelihood).
    predict_logvar : bool
        Output a pixel-wise log-variance per channel (set by the Gaussian
        likelihood; the noise-model likelihood needs none).
    n_channels : int
        Structures to split the input into (2 to 4): one output head each.
    multiscale_count : int
        Lateral context: 1 (off) or the input plus ``multiscale_count - 1``
        coarser context inputs, each the same number of pixels as the patch,
        centred on it, from the image downsampled 2x, 4x, ... (μSplit's
        lateral contextualisation).  At most ``n_levels``.
    split_fallback : bool
        Keep the constant split (the input times each channel's share of the
        training intensity) as a fallback: after training, each channel's
        output is the blend ``w * network + (1 - w) * split`` whose estimated
        error on the validation data is least (``w`` in [0, 1], stored in the
        model), and a channel whose blend is not estimated to beat the split
        by ``LEARNED_DB`` gives that split exactly, so a structure the network
        did not learn stays at it rather than below it.  On in the presets;
        off in model files written before it existed.  (Learning a correction on top of that
        split from the start was measured and dropped: the latents collapsed
        to the prior and the output stayed at the split.)
    """

    # Upper bounds far above any useful network: a model file's header names these sizes,
    # and unbounded ones would build networks of many gigabytes.
    n_levels: int = param(4, lo=1, hi=7)
    z_dims: int = param(128, lo=1, hi=MAX_WIDTH)
    filters: int = param(64, lo=1, hi=MAX_WIDTH)
    blocks_per_level: int = param(1, lo=1, hi=MAX_BLOCKS)
    dropout: float = param(0.1, lo=0.0, hi=1.0, hi_open=True)
    batchnorm: bool = True
    learn_top_prior: bool = True
    stochastic_skip: bool = True
    var_clip_max: float = 20.0
    logvar_lower_bound: float = -5.0
    predict_logvar: bool = False
    n_channels: int = param(2, lo=MIN_CHANNELS, hi=MAX_CHANNELS)
    multiscale_count: int = param(1, lo=1)
    split_fallback: bool = False

    LABEL: ClassVar[str] = "denoiSplit network"

    def check(self) -> None:
        """What the field declarations cannot say: finite clipping bounds, and lateral
        context within the levels."""
        check_number("var_clip_max", self.var_clip_max)
        check_number("logvar_lower_bound", self.logvar_lower_bound)
        need(self.multiscale_count <= self.n_levels,
             f"multiscale_count must be at most n_levels ({self.n_levels}), "
             f"got {self.multiscale_count}")

    @property
    def context_count(self) -> int:
        """Number of lateral-context inputs (0 when off)."""
        return self.multiscale_count - 1

    @property
    def multiple(self) -> int:
        """Image sizes the network accepts are multiples of this.

        ``2**n_levels``; twice that with lateral context, so that the
        patch stays on the pixel grid of every level of the context's
        larger extent.
        """
        return 2 ** (self.n_levels + (1 if self.multiscale_count > 1 else 0))

    @classmethod
    def default(cls) -> SplitConfig:
        """The denoiSplit paper network (4 levels, 4x128 latents, 64 filters; ~3.0 M params),
        with the constant-split fallback."""
        return cls(split_fallback=True)

    @classmethod
    def small(cls) -> SplitConfig:
        """A small network for tests and CPUs (3 levels, 16 latents, 24 filters)."""
        return cls(n_levels=3, z_dims=16, filters=24, dropout=0.0, split_fallback=True)

    @classmethod
    def preset(cls, name: str, **overrides) -> SplitConfig:
        """``"small"`` or ``"default"``, with fields such as ``n_channels`` overridden."""
        from dataclasses import replace

        if name == "default":
            cfg = cls.default()
        elif name == "small":
            cfg = cls.small()
        else:
            raise DuetInputError(f"unknown network config {name!r}: use small or default")
        return replace(cfg, **overrides) if overrides else cfg

    def preset_name(self) -> str | None:
        """``"small"`` or ``"default"`` when this network is that preset (with its own
        channel count and lateral context), else None (a custom network)."""
        return next((name for name in ("small", "default") if self.preset(
            name, n_channels=self.n_channels, multiscale_count=self.multiscale_count) == self),
            None)

    def params_section(self) -> dict:
        """What a training parameter file records of this network: its preset and lateral
        context (``{"preset": "small", "multiscale_count": 1}``, the file's ``network``
        entry, read back by :meth:`from_params_section`)."""
        name = self.preset_name()
        if name is None:
            raise DuetInputError("this network is not a preset (small or default)")
        return {"preset": name, "multiscale_count": self.multiscale_count}

    @classmethod
    def from_params_section(cls, section, **overrides) -> SplitConfig:
        """The network a parameter file's ``network`` entry names (the default network
        when the file has none); ``overrides`` as for :meth:`preset`."""
        section = dict(section or {})
        unknown = set(section) - {"preset", "multiscale_count"}
        need(not unknown, f"unknown network entries in the parameter file: "
                          f"{', '.join(sorted(map(str, unknown)))}")
        preset = section.get("preset", "default")
        need(preset in ("small", "default"),
             f"network preset must be small or default, got {preset!r}")
        if "multiscale_count" in section:
            overrides = {"multiscale_count": section["multiscale_count"], **overrides}
        return cls.preset(preset, **overrides)


@dataclass(frozen=True)
class TrainConfig(EngineConfig):
    """How to train (defaults follow the denoiSplit paper where they apply).

    Parameters
    ----------
    epochs : int
        Maximum number of epochs (the step cap, early stopping and the time budget
        usually end training sooner).
    max_minutes : float, optional
        Wall-clock budget; training stops at the step that exceeds it.  None: 9
        minutes on a CPU (so that training fits 10 minutes on a 2-core laptop), no
        limit on a GPU.
    max_steps : int, optional
        Most training steps.  None: from the amount of data,
        :func:`~napari_duet.denoisplit._data.default_max_steps` (40 passes over the
        field's distinct patches, at least 1000 steps for two structures, 1500 for
        three, 2000 for four).
    patch_size : int
        Training patch side (a multiple of ``2**n_levels``).
    batch_size : int, optional
        Patches per step.  Default: 8 on a CPU, 32 on a GPU.
    steps_per_epoch : int, optional
        Default: about four passes over the training pixels per epoch,
        clipped to 10..500 steps.
    lr : float, optional
        Adamax learning rate.  Default: 3e-3 on a CPU, 1e-3 on a GPU (the CPU
        recipe, batch 8 and 3e-3, is the one measured on the development set:
        docs/denoisplit.md).
    seed : int
        Seed for initialisation, patches, split and sampling.
    device : str
        "auto", "cpu", "cuda" or "mps".
    likelihood : {"noise_model", "gaussian"}
        Reconstruction through the two GMM noise models (denoiSplit), or a
        Gaussian with predicted pixel variance (data without noise models).
    kl : {"denoisplit", "musplit"}
        Per-level summed KL with free bits (denoiSplit) or per-level averaged
        KL (μSplit).
    free_bits : float
        Free bits of the denoiSplit KL (per sample and level, nats).
    kl_weight : float
        Weight of the KL term.
    val_fraction : float
        Share of the data held out for validation and calibration.
    lr_patience, lr_factor : int, float
        ReduceLROnPlateau on the validation loss.
    early_stopping : int
        Stop after this many epochs without a better checkpoint score (a plateau).
    plateau_min_fraction : float
        The plateau stops training only after this share of the step cap (0: any
        time).  On a small field an epoch is 10 steps, so 30 epochs can be 300 of
        1500 steps, before a structure learned late has started; with 0.5 and
        ``min_learned`` the development set's tune-half nuclei + tubulin + actin (seed 1)
        went from actin +0.67 to +1.12 dB over the constant split.
    checkpoint_rule : {"min_learned", "min_gain", "sum_gain", "val_loss"}
        Which epoch's weights to keep (and what the plateau waits for): the largest
        smallest per-structure PSNR gain over the constant split on the validation
        data, a structure below 0 dB counting as 0 dB (the fallback gives it the
        constant split), ties broken by the sum (``min_learned``, the default, with
        ``plateau_min_fraction`` chosen on the development set's tune half); the same
        without counting a negative gain as 0 (``min_gain``, the default before); the
        largest sum of those gains; or the least validation loss over all channels.
    checkpoint_window : int
        The gain rules judge an epoch by the mean of its per-structure gains and
        those of the epochs before it, this many in all (1: that epoch's alone): the
        estimate on a small held-back strip swings by several dB between epochs.
    weight_average : float
        Validate, keep and return an exponential moving average of the weights
        (this decay per step; 0: the weights as trained).  With small batches at a
        high rate the weights, and the split, move by up to a dB between
        neighbouring epochs; the average follows where training is.
    grad_clip : float
        Gradient-norm clip (0 disables).
    augment : bool
        Random flips and 90° rotations of training patches.
    mixed_precision : bool
        bfloat16 autocast on CUDA (ignored on other devices).
    calibrate : bool
        Fit the std calibration on the validation split after training.
    calib_samples : int
        Posterior samples used for calibration.
    log_every : int
        Steps between loss read-outs (each costs a device sync).
    checkpoint_path : str, optional
        After every epoch, write the best model so far (by validation loss) to
        this file, with what training needs to go on from there (see
        ``resume``).
    resume : bool
        When ``checkpoint_path`` holds a checkpoint of the same run (network,
        recipe, data shape, channel names; ``epochs`` may differ), go on from
        its last epoch: on the CPU the result equals an uninterrupted run.
    """

    epochs: int = param(
        1000, label="epochs",
        help="Most passes over the training patches (early stopping may end sooner).", lo=1,
        example="--epochs 50")
    max_minutes: float | None = param(
        None, label="max minutes", help="Stop training after this many minutes.",
        auto="9 minutes on a CPU, to fit 10 minutes on a 2-core laptop; no limit on a GPU",
        example="--max-minutes 30", lo=0, lo_open=True)
    max_steps: int | None = param(
        None, label="max steps", help="Stop training after this many steps.",
        auto="from the amount of data: 40 passes over its distinct patches, at least 500 "
             "per structure",
        example="--max-steps 2000", lo=1)
    patch_size: int = param(
        64, label="patch size",
        help="Side of the square training patches in pixels (a multiple of 2^levels): "
             "larger sees more context and needs more memory.",
        lo=1)
    batch_size: int | None = param(
        None, label="batch size", help="Patches per training step (bounded by memory).",
        auto="8 on a CPU (the recipe measured on the development set), 32 on a GPU",
        example="--batch-size 32", lo=1)
    steps_per_epoch: int | None = param(
        None, label="steps per epoch", help="Training steps per epoch.",
        auto="about 4 passes over the data, 10 to 500 steps", lo=1)
    lr: float | None = param(
        None, label="learning rate", help="Adamax learning rate.",
        auto="3e-3 on a CPU (with batch 8, measured on the development set), 1e-3 on a GPU",
        example="--lr 1e-3", lo=0, lo_open=True)
    seed: int = seed_param("Seed of patches, augmentations and initial weights.", metavar=None)
    device: str = device_param("Where to train")
    threads: int | None = threads_param()
    likelihood: str = param(
        "noise_model", label="likelihood", choices=LIKELIHOODS,
        help="Reconstruction likelihood: the structures' GMM noise models (noise_model, "
             "denoiSplit) or a Gaussian with predicted variance (gaussian, needs no noise "
             "models).")
    kl: str = param(
        "denoisplit", label="KL form", choices=KL_FORMS,
        help="KL term: summed per level with free bits (denoisplit) or averaged per level "
             "(musplit, μSplit).")
    free_bits: float = param(1.0, lo=0)
    kl_weight: float = param(1.0, lo=0)
    val_fraction: float = param(0.15, lo=0.0, hi=0.9, lo_open=True, hi_open=True)
    lr_patience: int = param(30, lo=0)
    lr_factor: float = param(0.5, lo=0, hi=1, lo_open=True, hi_open=True)
    early_stopping: int = param(30, lo=1)
    plateau_min_fraction: float = param(0.5, lo=0, hi=1)
    checkpoint_rule: str = param("min_learned", choices=CHECKPOINT_RULES)
    checkpoint_window: int = param(3, lo=1)
    weight_average: float = param(0.0, lo=0, hi=1, hi_open=True)
    grad_clip: float = param(0.5, lo=0)
    augment: bool = True
    mixed_precision: bool = True
    calibrate: bool = param(
        True, label="calibrate std", cli="calibration",
        help="Fit the calibration of the predicted std on the validation split after "
             "training (--no-calibration skips it).")
    calib_samples: int = param(20, lo=1)
    log_every: int = param(20, lo=1)
    checkpoint_path: str | None = param(
        None, label="checkpoint", cli="checkpoint", metavar="CKPT",
        help="After every epoch, write the best model so far and the training state to this "
             "file (.duet, loads as a model); the same command run again resumes from it (on "
             "a CPU with the same result as an uninterrupted run).",
        none="no checkpoint")
    resume: bool = False

    RUNTIME: ClassVar[tuple[str, ...]] = ("device", "threads", "log_every", "checkpoint_path",
                                          "resume")
    LABEL: ClassVar[str] = "denoiSplit training"

    def check(self) -> None:
        """Nothing beyond the field declarations (each checked by ``validate``)."""


CALIBRATIONS = ("scalar", "linear", "none")


@dataclass(frozen=True)
class PredictConfig(EngineConfig):
    """Parameters of splitting an image with a trained model
    (:meth:`SplitModel.iter_predict <napari_duet.denoisplit.SplitModel.iter_predict>`;
    ``duet split predict`` generates its options from these declarations).

    Parameters
    ----------
    samples : int
        Posterior samples per tile (the MMSE is their mean, the std their spread).
    tile : int, optional
        Tile side in pixels; None: the size that computes the fewest pixels.
    batch_size : int, optional
        Network passes per batch (tiles x samples); None: from the free memory.
    calibration : {"scalar", "linear", "none"}
        Std calibration applied when the model has one.
    device : str
        "auto", "cpu", "cuda" or "mps".
    seed : int
        Seed of the sampling.
    """

    samples: int = param(
        20, label="posterior samples",
        help="Posterior samples drawn per pixel: their mean is the split (MMSE), their spread "
             "the uncertainty (std); more is smoother and slower.", lo=1, metavar="N")
    tile: int | None = param(
        None, label="tile", help="Tile side in pixels for large images (bounds the memory).",
        auto="the size that computes the fewest pixels, up to 1024; a frame that fits is "
             "computed untiled", lo=1, metavar="TILE")
    batch_size: int | None = param(
        None, label="batch size",
        help="Network passes computed at once, tiles x samples (bounds the memory).",
        auto="from the memory free on the device", lo=1, metavar="B")
    calibration: str = param(
        "scalar", label="std calibration", choices=CALIBRATIONS,
        help="Std calibration to apply when the model has one.")
    device: str = device_param()
    seed: int = seed_param("Seed of the sampling.")

    RUNTIME: ClassVar[tuple[str, ...]] = ("tile", "batch_size", "device")
    LABEL: ClassVar[str] = "denoiSplit prediction"
