"""Training generator: noise models, patches, Adamax, validation, calibration."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DuetInputError
from ..core.noise_models import GaussianMixtureNoiseModel, bootstrap_noise_model
from ..core.progress import Progress, blocking_form
from ._config import (
    CHECKPOINT_RULES,
    CPU_MINUTES,
    MAX_CHANNELS,
    MIN_CHANNELS,
    SplitConfig,
    TrainConfig,
)
from ._data import (
    PatchSampler,
    default_max_steps,
    default_steps_per_epoch,
    fit_normalizers,
    prepare_data,
    replace_hot_pixels,
    validation_patches,
    validation_positions,
)
from ._model import SplitModel
from ._noise_level import fit_poisson_gaussian, poisson_gaussian_variance


@dataclass(kw_only=True)
class SplitTrainProgress(Progress):
    """Yielded during training (every step; losses refresh every ``log_every`` steps).

    ``stage`` is ``"noise_model"`` while bootstrapping the noise models
    (``done`` of ``total`` channels), ``"train"`` during the epochs (``done``
    of ``total`` steps over all planned epochs, filled from ``epoch``,
    ``step`` and ``steps_per_epoch``) and ``"calibrate"`` at the end.

    ``val_gain_db`` (after each epoch's validation, then carried along) maps
    each channel name to the PSNR gain in dB of the model over the constant
    split on the held-back validation data (see :func:`validation_gains`), at
    epoch ``validated_epoch``;
    ``best_model``, set from the first validation on, builds the best model so
    far (uncalibrated), e.g. to keep it when the run is cancelled.
    ``max_steps``: the run's step cap (``total`` is at most that).
    """

    stage: str = "train"
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    val_loss: float | None = None
    lr: float | None = None
    best_epoch: int | None = None
    val_gain_db: dict[str, float] | None = None
    validated_epoch: int | None = None
    best_model: Callable[[], SplitModel] | None = field(default=None, repr=False,
                                                        compare=False)
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.stage == "train" and self.steps_per_epoch > 0:
            self.done = max(self.epoch - 1, 0) * self.steps_per_epoch + self.step
            self.total = self.epochs * self.steps_per_epoch
            if self.max_steps:  # the step cap ends training before the last epoch
                self.total = min(self.total, self.max_steps)

    @property
    def fraction(self) -> float:
        """Share of the run: noise models 5 %, epochs 90 %, calibration 5 %.

        Early stopping ends the epochs before their share is reached.
        """
        within = min(max(self.done / self.total, 0.0), 1.0) if self.total > 0 else 0.0
        if self.stage == "noise_model":
            return 0.05 * within
        if self.stage == "calibrate":
            within = 1.0  # the epochs are over (early stopping may end them sooner)
        return 0.05 + 0.9 * within

    def fields(self) -> tuple[str, int | None, int | None, dict[str, Any]]:
        """Adds the epoch, validation loss, learning rate, gains, losses and ETA; the
        noise-model and calibration stages have no steps to count."""
        stage, done, total, extra = super().fields()
        extra.pop("eta", None)
        extra.update(epoch=self.epoch, epochs=self.epochs, val_loss=self.val_loss, lr=self.lr)
        if self.val_gain_db:  # per structure, over the constant split
            extra["val_gain_db"] = dict(self.val_gain_db)
        extra.setdefault("losses", {})
        if stage != "train":
            stage, done, total = stage.replace("_", " "), None, None
        extra["eta"] = self.eta
        return stage, done, total, extra


@dataclass
class SplitTrainResult:
    """What :func:`train` / :func:`iter_train` give back.

    Attributes
    ----------
    model : SplitModel
        The best model by the checkpoint rule (``TrainConfig.checkpoint_rule``;
        calibrated when asked).
    history : list of dict
        One entry per epoch run: ``epoch``, mean training ``losses``,
        ``val_loss``, ``lr``, the validation gains ``val_gain_db`` and the same
        estimated as before the Poisson-Gaussian variance, ``val_gain_db_noise_model``.
    alternatives : dict
        For each checkpoint judge (:func:`checkpoint_judges`: the rules of
        :data:`CHECKPOINT_RULES` and the variants of :data:`COMPARED_JUDGES`), a
        function that builds the best model by it (uncalibrated, judged on the
        validation data): to compare them on the same run.  Not saved.
    """

    model: SplitModel
    history: list[dict] = field(default_factory=list)
    alternatives: dict[str, Callable[[], SplitModel]] = field(default_factory=dict,
                                                              repr=False)

    def save(self, folder) -> list[Path]:
        """Write ``model.duet`` and ``report.json`` into ``folder``; returns the paths."""
        from ..core.io import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = [Path(self.model.save(folder / "model.duet"))]
        report = {**self.report(), "files": [p.name for p in written]}
        return [*written, write_json(folder / "report.json", report)]

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary: network, training facts, calibration, versions."""
        from ..core.versions import versions

        m = self.model
        cal = m.calibration or {}
        return {
            "method": "denoisplit",
            "config": m.config.to_dict(),
            "channel_names": list(m.channel_names),
            "patch_size": m.patch_size,
            "training": m.training,
            "history": self.history,
            "calibration": {k: cal.get(k) for k in ("scalar", "linear", "samples", "rmse",
                                                    "naive_rmse") if k in cal} or None,
            "versions": versions(),
        }


class FlatGrads:
    """Every parameter's gradient as a view into one buffer.

    Zeroing a non-finite batch's gradient, and clipping the total norm, then
    take a handful of kernels instead of a few per parameter tensor (over
    200 in the default network), and need no host sync.  The optimiser must
    not set gradients to None: use :meth:`zero`.
    """

    def __init__(self, params):
        import torch

        params = [q for q in params if q.requires_grad]
        total = sum(q.numel() for q in params)
        self.flat = torch.zeros(total, dtype=params[0].dtype, device=params[0].device)
        offset = 0
        for q in params:
            # The parameter's own strides (channels-last weights stay channels-last).
            q.grad = self.flat.as_strided(q.size(), q.stride(), offset)
            offset += q.numel()

    def zero(self) -> None:
        self.flat.zero_()

    def sanitise(self, loss, clip: float):
        """Zero the gradient of a non-finite loss, clip the norm; returns ``isfinite(loss)``."""
        import torch

        ok = torch.isfinite(loss)
        self.flat.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        self.flat.mul_(ok.to(self.flat.dtype))
        if clip > 0:
            norm = torch.linalg.vector_norm(self.flat)
            self.flat.mul_((clip / (norm + 1e-6)).clamp(max=1.0))
        return ok


def make_train_step(net, opt, sampler: PatchSampler, *, batch_size: int, loss_kw: dict,
                    use_amp: bool, grad_clip: float):
    """One optimisation step as a function returning ``(loss parts, isfinite(loss))``.

    Shared by :func:`iter_train` and the speed benchmark, so both measure the
    same work.
    """
    import torch

    from ..core import distributed as ddp
    from ._losses import split_loss

    grads = FlatGrads(net.parameters())

    def step():
        inp, tgt = sampler.sample(batch_size)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out, kls = net(inp)
        parts = split_loss(out.float(), [k.float() for k in kls], tgt, **loss_kw)
        grads.zero()
        parts["loss"].backward()
        # Skipped on every rank when any rank's loss is non-finite (ranks stay equal).
        ok = grads.sanitise(ddp.sum_(parts["loss"].detach()), grad_clip)
        opt.step()
        return parts, ok

    return step


def iter_train(
    channels: Sequence,
    config: SplitConfig | None = None,
    train_config: TrainConfig | None = None,
    noise_models: Sequence[GaussianMixtureNoiseModel] | None = None,
    *,
    channel_names: Sequence[str] | None = None,
    bootstrap_kwargs: dict | None = None,
) -> Generator[SplitTrainProgress, None, SplitTrainResult]:
    """Train a splitting model on N noisy single-structure acquisitions (N = 2 to 4).

    The network sees their sum and learns to give back each structure (each
    through its noise model, so it learns their clean signals):
    ``iter_train([a, b, c], config, train_config, noise_models)``.

    Parameters
    ----------
    channels : list of array-like
        (Y, X) images or (F, Y, X) stacks of the structures, all the same
        shape, in the order of the output channels.
    config : SplitConfig, optional
        Network (default: :meth:`SplitConfig.default`); its ``n_channels`` is
        set to the number of channels given.
    train_config : TrainConfig, optional
        Training settings (default: :class:`TrainConfig()`).
    noise_models : sequence of GaussianMixtureNoiseModel, optional
        One per channel, in order; bootstrapped from the data when missing
        and the likelihood is ``"noise_model"``.
    channel_names : sequence of str, optional
        Stored in the model (default A, B, C, ...).
    bootstrap_kwargs : dict, optional
        Passed to :func:`~napari_duet.core.noise_models.bootstrap_noise_model`.

    Yields
    ------
    SplitTrainProgress
    Returns
    -------
    SplitTrainResult
        ``.model``: the best model by validation loss, calibrated on the
        validation data when ``train_config.calibrate``; ``.report()``.
    """
    if train_config is not None and train_config.threads is not None:  # in its threads
        from ..core.devices import in_threads

        inner = dataclasses.replace(train_config, threads=None)
        return (yield from in_threads(train_config.threads, iter_train(
            channels, config, inner, noise_models, channel_names=channel_names,
            bootstrap_kwargs=bootstrap_kwargs)))
    if not isinstance(channels, list | tuple):
        raise DuetInputError("give the noisy acquisitions of 2 to 4 structures as a list, "
                             "[a, b, ...]")
    channels = list(channels)
    cfg, tc, names = _resolve_configs(len(channels), config, train_config, channel_names)
    run = _prepare(channels, cfg, tc, names)
    run.nms = yield from _noise_models(run, channels, noise_models, bootstrap_kwargs)
    _build(run)
    _resume(run)
    run.net.train()
    run.stop_reason = run.stop_reason or "epochs"
    for epoch in range(run.start, tc.epochs + 1):
        ended = yield from _train_epoch(run, epoch)
        _end_epoch(run, epoch)
        yield run.progress(epoch=epoch, step=run.steps)
        if ended is not None:
            run.stop_reason = ended
            break
        if plateau_reached(run.bad_epochs, epoch * run.steps, run.max_steps, tc):
            run.stop_reason = "plateau"
            break
    alternatives = {name: (lambda name=name: _model_of_rule(run, name))
                    for name in checkpoint_judges(tc)}
    model = _final_model(run)
    _judge(model, run)
    if tc.calibrate and run.ddp.is_main():  # only rank 0's model is saved
        yield run.progress(stage="calibrate", epoch=run.epochs_run, step=run.steps)
        model.calibration = calibrate_on(model, run.data.val, samples=tc.calib_samples,
                                         seed=tc.seed)
    model.to(run.device)
    return SplitTrainResult(model, run.history, alternatives)


@dataclass
class _Training:
    """What one training run carries between its steps (set up by :func:`_prepare`)."""

    cfg: SplitConfig
    tc: TrainConfig
    names: tuple[str, ...]
    device: Any
    data: Any  # prepared frames (train / val split)
    input_norm: Any
    target_norms: list
    t0: float
    ddp: Any  # the napari_duet.core.distributed module
    nms: list[GaussianMixtureNoiseModel] | None = None
    net: Any = None
    opt: Any = None
    sched: Any = None
    sampler: PatchSampler | None = None
    val_inp: Any = None  # the fixed validation patches
    val_tgt: Any = None
    steps: int = 0  # steps per epoch
    loss_kw: dict = field(default_factory=dict)
    use_amp: bool = False
    train_step: Any = None
    t_train: float = 0.0
    budget: float | None = None  # seconds (None: no time limit)
    max_steps: int = 0  # the step cap
    stop_reason: str | None = None  # why training ended (see _final_model)
    best: tuple = (math.inf, None, 0)  # score by the checkpoint rule (lower: better), state, epoch
    bests: dict = field(default_factory=dict)  # the same for every rule (to compare them)
    bad_epochs: int = 0
    ema: Any = None  # the weights' moving average (TrainConfig.weight_average)
    losses: dict[str, float] = field(default_factory=dict)
    val_loss: float | None = None
    skipped: Any = None  # count of non-finite batches (a tensor: no host sync)
    epochs_run: int = 0
    history: list[dict] = field(default_factory=list)
    start: int = 1  # first epoch to run
    run_id: dict = field(default_factory=dict)
    val_gains: dict[str, float] | None = None  # latest validation gains (dB)
    validated_epoch: int | None = None  # the epoch they were measured after
    val_raw: Any = None  # the validation patches, raw (P, N, p, p)
    # Per channel (a, b) of a Poisson-Gaussian fit to the data (variance a s + b), or
    # None where the data do not follow it: the noise models' variance judges it then.
    noise_level: list = field(default_factory=list)

    def progress(self, **kw) -> SplitTrainProgress:
        """A progress event with the run's current losses, learning rate and best epoch."""
        kw.setdefault("elapsed", time.perf_counter() - self.t0)
        kw.setdefault("best_epoch", self.best[2])
        snapshot = None
        if self.best[1] is not None:
            def snapshot():
                return best_model_so_far(self)
        return SplitTrainProgress(epochs=self.tc.epochs, steps_per_epoch=self.steps,
                             max_steps=self.max_steps or None,
                             losses=dict(self.losses), val_loss=self.val_loss,
                             lr=self.opt.param_groups[0]["lr"],
                             val_gain_db=None if self.val_gains is None else dict(self.val_gains),
                             validated_epoch=self.validated_epoch,
                             best_model=snapshot, **kw)


def _resolve_configs(n_ch: int, config, train_config, channel_names):
    """Check the channel count and names; fit the network config to the channels and
    likelihood; returns ``(config, train_config, names)``."""
    cfg = config or SplitConfig.default()
    tc = train_config or TrainConfig()
    if not MIN_CHANNELS <= n_ch <= MAX_CHANNELS:
        raise DuetInputError(f"give {MIN_CHANNELS} to {MAX_CHANNELS} channels (one noisy "
                             f"acquisition per structure), got {n_ch}")
    if cfg.n_channels != n_ch:
        cfg = replace(cfg, n_channels=n_ch)
    names = tuple(channel_names) if channel_names else tuple(
        chr(ord("A") + c) for c in range(n_ch))
    if len(names) != n_ch:
        raise DuetInputError(f"{len(names)} channel names for {n_ch} channels")
    if tc.likelihood == "gaussian" and not cfg.predict_logvar:
        cfg = replace(cfg, predict_logvar=True)
    elif tc.likelihood == "noise_model" and cfg.predict_logvar:
        cfg = replace(cfg, predict_logvar=False)
    if tc.patch_size % cfg.multiple:
        raise DuetInputError(
            f"patch size {tc.patch_size} must be a multiple of {cfg.multiple} "
            f"(2^{cfg.n_levels} for {cfg.n_levels} levels)"
        )
    return cfg, tc, names


def _prepare(channels, cfg: SplitConfig, tc: TrainConfig, names) -> _Training:
    """Pick the device, seed the generators, split the data and fit the normalisers."""
    from ..core import distributed as ddp
    from ..core.devices import resolve_device, seed_everything

    device = ddp.rank_device(resolve_device(tc.device))  # cuda:LOCAL_RANK under torchrun
    tc = resolved_recipe(tc, device)
    rng = seed_everything(tc.seed)
    t0 = time.perf_counter()
    data = prepare_data(*channels, patch_size=tc.patch_size,
                        val_fraction=tc.val_fraction, rng=rng)
    input_norm, target_norms = fit_normalizers(data.train)
    return _Training(cfg=cfg, tc=tc, names=names, device=device, data=data,
                     input_norm=input_norm, target_norms=target_norms, t0=t0, ddp=ddp)


def _noise_models(run: _Training, channels, given, bootstrap_kwargs):
    """The channels' noise models (given, or bootstrapped); None without that likelihood."""
    tc, n_ch = run.tc, len(channels)
    if tc.likelihood != "noise_model":
        return None
    if given is None:
        nms = []
        for c in range(n_ch):
            yield SplitTrainProgress(stage="noise_model", done=c, total=n_ch, epochs=tc.epochs,
                                elapsed=time.perf_counter() - run.t0)
            frames = replace_hot_pixels(_channel_frames(channels[c]))[0]
            kw = {"device": tc.device, "seed": tc.seed, **(bootstrap_kwargs or {})}
            # Fitted once, on rank 0, so every rank trains with the same noise models.
            nms.append(run.ddp.on_main(bootstrap_noise_model, frames, **kw))
    else:
        nms = list(given)
        if len(nms) != n_ch or not all(isinstance(n, GaussianMixtureNoiseModel) for n in nms):
            raise DuetInputError(
                f"noise_models must be {n_ch} GaussianMixtureNoiseModel, one per channel")
    for nm in nms:
        nm.to(run.device)
    return nms


def _build(run: _Training) -> None:
    """Build the network, optimiser, scheduler, patch samplers and the training step."""
    import torch

    from ._lvae import LadderVAE

    cfg, tc, device, ddp = run.cfg, run.tc, run.device, run.ddp
    torch.manual_seed(tc.seed)
    net = LadderVAE(cfg, tc.patch_size)
    if cfg.split_fallback:  # the fallback's constant split, in normalised units
        net.set_split_scale(run.input_norm, run.target_norms)
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)  # tensor-core friendly layout
    run.net = net
    if tc.weight_average > 0:  # the average starts at the initial weights
        run.ema = copy.deepcopy(net)
        run.ema.requires_grad_(False)
    run.opt = torch.optim.Adamax(net.parameters(), lr=tc.lr)
    run.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        run.opt, mode="min", factor=tc.lr_factor, patience=tc.lr_patience, min_lr=1e-12
    )
    run.use_amp = tc.mixed_precision and device.type == "cuda"
    run.sampler = PatchSampler(run.data.train, run.input_norm, run.target_norms,
                               patch_size=tc.patch_size, device=device,
                               seed=ddp.sampler_seed(tc.seed), augment=tc.augment,
                               context=cfg.context_count)
    val_sampler = PatchSampler(run.data.val, run.input_norm, run.target_norms,
                               patch_size=tc.patch_size, device=device, seed=tc.seed,
                               augment=False, context=cfg.context_count)
    run.val_inp, run.val_tgt = val_sampler.patches_at(
        validation_positions(run.data.val, tc.patch_size))
    run.val_raw = validation_patches(run.data.val, tc.patch_size)
    if run.nms is not None:  # the variance that judges each structure (see _noise_level)
        run.noise_level = [fit_poisson_gaussian(run.data.train[:, c])
                           for c in range(run.data.train.shape[1])]
    run.steps = tc.steps_per_epoch or default_steps_per_epoch(run.data.train, tc.patch_size,
                                                              tc.batch_size)
    t_mean = torch.tensor([n.offset for n in run.target_norms], device=device)
    t_std = torch.tensor([n.scale for n in run.target_norms], device=device)
    latent_sizes = [c * h * w for c, h, w in net.latent_shapes((tc.patch_size,) * 2)]
    run.loss_kw = dict(likelihood=tc.likelihood, kl_form=tc.kl, latent_sizes=latent_sizes,
                       free_bits=tc.free_bits, kl_weight=tc.kl_weight, noise_models=run.nms,
                       target_mean=t_mean, target_std=t_std)
    run.train_step = make_train_step(ddp.wrap(net, device), run.opt, run.sampler,
                                     batch_size=tc.batch_size, loss_kw=run.loss_kw,
                                     use_amp=run.use_amp, grad_clip=tc.grad_clip)
    ddp.reseed(tc.seed)  # under torchrun: each rank its own latent samples
    run.budget = 60.0 * resolved_minutes(tc, device)
    run.max_steps = tc.max_steps or default_max_steps(run.data.train, tc.patch_size,
                                                      tc.batch_size)
    run.t_train = time.perf_counter()
    run.skipped = torch.zeros((), device=device)


def _resume(run: _Training) -> None:
    """Go on where a checkpoint of this run stopped (``tc.resume``), if there is one."""
    from ._resume import restore, run_identity

    tc = run.tc
    run.run_id = run_identity(run.cfg, tc, run.data.shape, run.names, run.data)
    state = _resumable(tc, run.run_id)
    if state is None:
        return
    best_w = restore(state, net=run.net, opt=run.opt, sched=run.sched, sampler=run.sampler,
                     device=run.device)
    if run.ema is not None:
        ema = {k[4:]: v for k, v in state.tensors.items() if k.startswith("ema.")}
        run.ema.load_state_dict(ema or run.net.state_dict(), strict=True)
    run.best = (state.best_val, best_w if state.best_epoch else None, state.best_epoch)
    run.bests = {tc.checkpoint_rule: run.best}
    run.bad_epochs, run.val_loss = state.bad_epochs, state.val_loss
    run.losses = dict(state.losses)
    run.history, run.epochs_run = list(state.history), state.epoch
    run.start = state.epoch + 1
    run.skipped += state.skipped
    if plateau_reached(run.bad_epochs, state.epoch * run.steps, run.max_steps, tc):
        run.start = tc.epochs + 1


def plateau_reached(bad_epochs: int, steps_done: int, max_steps: int,
                    tc: TrainConfig) -> bool:
    """Whether early stopping ends training: ``tc.early_stopping`` epochs without a
    better checkpoint score, and at least ``tc.plateau_min_fraction`` of the step cap
    trained (an epoch of a small field is only 10 steps, so 30 epochs can be 300 steps,
    before a structure that is learned late has started)."""
    return (bad_epochs >= tc.early_stopping
            and steps_done >= tc.plateau_min_fraction * max_steps)


def resolved_recipe(tc: TrainConfig, device) -> TrainConfig:
    """``tc`` with the device defaults of ``batch_size`` and ``lr`` filled in: 8 and 3e-3
    on a CPU, 32 and 1e-3 elsewhere.

    On a CPU small batches at a higher rate: the recipe measured on the development
    set; batch 32 at 1e-3 needed four times the patches for less gain (FMD actin + mito
    +1.62 / +1.46 dB after 26 minutes against +2.11 / +1.81 in 9).
    """
    cpu = getattr(device, "type", str(device)) == "cpu"
    return tc.replace(batch_size=tc.batch_size or (8 if cpu else 32),
                      lr=tc.lr or (3e-3 if cpu else 1e-3))


def resolved_minutes(tc: TrainConfig, device) -> float:
    """The training time budget in minutes: ``tc.max_minutes``, or when None
    :data:`CPU_MINUTES` on a CPU and no limit (infinity) elsewhere."""
    if tc.max_minutes is not None:
        return float(tc.max_minutes)
    return CPU_MINUTES if getattr(device, "type", str(device)) == "cpu" else math.inf


def _train_epoch(run: _Training, epoch: int):
    """Run one epoch's steps, yielding progress after each; returns why training must
    end (``"time budget"``, ``"step cap"``) or None to go on."""
    import torch

    tc, steps = run.tc, run.steps
    acc: dict[str, torch.Tensor] = {}
    acc_n = 0
    end = None
    for step in range(1, steps + 1):
        # A non-finite batch is skipped without a host sync: its gradient becomes zero.
        parts, ok = run.train_step()
        run.skipped += (~ok).to(run.skipped.dtype)
        if run.ema is not None:
            _average_weights(run, (epoch - 1) * steps + step)
        for k, v in parts.items():
            acc[k] = acc.get(k, 0.0) + v.detach()
        acc_n += 1
        if step % tc.log_every == 0 or step == steps:
            run.losses = {k: float(v) / acc_n for k, v in acc.items()}
        if (epoch - 1) * steps + step >= run.max_steps:
            end = "step cap"
        elif math.isfinite(run.budget) and run.ddp.agree(
                time.perf_counter() - run.t_train > run.budget):
            end = "time budget"
        if end is not None:  # the epoch's losses, as far as it went
            run.losses = {k: float(v) / acc_n for k, v in acc.items()}
        yield run.progress(epoch=epoch, step=step, eta=_eta(run, epoch, step),
                           best_epoch=run.best[2] or None)
        if end is not None:
            return end
    return None


def _current(run: _Training):
    """The network training judges and keeps: the weights' moving average when there
    is one, else the network as trained."""
    return run.ema if run.ema is not None else run.net


def _average_weights(run: _Training, step: int) -> None:
    """One step of the weights' moving average (``TrainConfig.weight_average``); the
    decay ramps up over the first steps, ``(1 + step) / (10 + step)`` at most, so that
    the initial weights do not linger in it.  Buffers (batch-norm statistics) are
    copied."""
    import torch

    decay = min(run.tc.weight_average, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for a, p in zip(run.ema.parameters(), run.net.parameters(), strict=True):
            a.lerp_(p, 1.0 - decay)
        for a, b in zip(run.ema.buffers(), run.net.buffers(), strict=True):
            a.copy_(b)


def _eta(run: _Training, epoch: int, step: int) -> float | None:
    """Seconds of training left (all planned steps, at most the time budget left)."""
    planned = min(run.tc.epochs * run.steps, run.max_steps or math.inf)
    done_frac = ((epoch - 1) * run.steps + step) / planned
    train_el = time.perf_counter() - run.t_train
    eta = train_el / done_frac * (1 - done_frac) if done_frac > 0 else None
    if math.isfinite(run.budget):
        eta = min(eta or run.budget, max(run.budget - train_el, 0.0))
    return eta


def _end_epoch(run: _Training, epoch: int) -> None:
    """Validate, step the scheduler, keep the best weights, write the checkpoint."""
    from ._resume import PREFIX, rng_states, state_parts

    run.epochs_run = epoch
    # Rank 0's validation loss: the same decisions on every rank.
    judged = _current(run)  # what training keeps
    val_loss, gains, gains_nm = _gains(run, judged, with_noise_model=True)
    run.val_loss = run.ddp.broadcast_float(val_loss)
    run.val_gains = dict(zip(run.names, gains, strict=True))
    run.validated_epoch = epoch
    lr = run.opt.param_groups[0]["lr"]
    steps_done = min(epoch * run.steps, run.max_steps or epoch * run.steps)
    past = [_history_gains(h, run.names) for h in run.history]
    run.history.append({"epoch": epoch, "steps": steps_done, "losses": dict(run.losses),
                        "val_loss": run.val_loss, "lr": lr,
                        "val_gain_db": dict(run.val_gains),
                        # the estimate with the noise models' variance (the one before
                        # the Poisson-Gaussian fit), to compare them
                        "val_gain_db_noise_model": dict(zip(run.names, gains_nm,
                                                            strict=True))})
    run.sched.step(run.val_loss)
    keep_best(run.bests, epoch, run.val_loss, {"auto": gains, "noise_model": gains_nm},
              judged.state_dict, history=past, judges=checkpoint_judges(run.tc))
    rule = run.tc.checkpoint_rule
    if run.bests.get(rule, (None, None, 0))[2] == epoch:
        run.best = run.bests[rule]
        run.bad_epochs = 0
    else:
        run.bad_epochs += 1
    # Every rank's random state goes into the checkpoint (gathered on all ranks).
    ranks = run.ddp.gather(rng_states(run.sampler)) if run.tc.checkpoint_path else None
    if run.tc.checkpoint_path and run.ddp.is_main():
        resume = state_parts(net=run.net, opt=run.opt, sched=run.sched, sampler=run.sampler,
                             epoch=epoch, best=run.best, bad_epochs=run.bad_epochs,
                             val_loss=run.val_loss, losses=run.losses, history=run.history,
                             skipped=int(run.skipped), run=run.run_id, rank_states=ranks)
        if run.ema is not None:  # the moving average goes on from where it was
            resume[1].update({f"{PREFIX}ema.{k}": v.detach().to("cpu").clone()
                              for k, v in run.ema.state_dict().items()})
        best_w = run.best[1] if run.best[1] is not None else _current(run).state_dict()
        _checkpoint(run.net, best_w, run.cfg, run.tc, run.input_norm, run.target_norms,
                    run.nms, run.names, run.data, run.best[2], resume)


#: Least improvement of a rule's score that counts (gains in dB; the loss: any;
#: ``min_learned``: 0.1 dB of the sum while its smallest gain is at 0).
_MIN_IMPROVEMENT = {"min_learned": 0.001, "min_gain": 0.01, "sum_gain": 0.01,
                    "val_loss": 0.0}
#: Weight of the sum of the gains in the ``min_learned`` score: a tie-break.
_TIE_WEIGHT = 0.01


def checkpoint_score(rule: str, val_loss: float, gains: Sequence[float]) -> float:
    """The score of one validation by a checkpoint rule; lower is better.

    ``"min_gain"``: minus the smallest per-structure PSNR gain over the constant
    split (the structure learned least decides); ``"sum_gain"``: minus their sum;
    ``"val_loss"``: the validation loss over all channels, which lets an easy
    structure's large gain hide a hard one's loss (measured on FMD with three
    structures: the loss-best epoch gave nuclei 1.7 dB less than a later one).
    ``"min_learned"``: as ``min_gain``, but a gain below 0 dB counts as 0
    dB (after training the fallback gives that structure the constant split), and the
    sum of the gains so counted breaks ties (weight :data:`_TIE_WEIGHT`).  With
    ``min_gain`` a structure the network had not learned yet decided alone: on the
    development set's membranes + nuclei + tubulin (nuclei about -0.3 dB for 30 epochs)
    it kept epoch 4 of 34 and the plateau ended training after 340 of 1000 steps, with
    membranes +0.15 dB over the constant split where the last epoch gave +2.7
    (``min_learned``: +2.05).  The default, with ``plateau_min_fraction=0.5``: on the
    tune half it was equal or better for the weakest structure (docs/denoisplit.md).
    A non-finite score never counts as better.
    """
    if rule == "val_loss":
        score = float(val_loss)
    elif rule == "min_learned":
        counted = [max(float(g), 0.0) for g in gains]
        score = -(min(counted) + _TIE_WEIGHT * sum(counted))
    elif rule == "min_gain":
        score = -float(min(gains))
    elif rule == "sum_gain":
        score = -float(sum(gains))
    else:
        raise DuetInputError(f"unknown checkpoint rule {rule!r}: use one of "
                             f"{', '.join(CHECKPOINT_RULES)}")
    return score if math.isfinite(score) else math.inf


def _history_gains(entry: dict, names: Sequence[str]) -> dict[str, list[float]]:
    """One history entry's per-structure gains by estimate (``"auto"``, ``"noise_model"``)."""
    auto = [float(entry["val_gain_db"][n]) for n in names]
    nm = entry.get("val_gain_db_noise_model")
    return {"auto": auto, "noise_model": auto if nm is None else [float(nm[n]) for n in names]}


#: Checkpoint judges measured beside the configured rules on every run (to compare
#: them: ``SplitTrainResult.alternatives``, the benchmark): name -> (rule, window,
#: estimate).  ``"min_gain@1 noise model"`` is the rule before the Poisson-Gaussian
#: variance and the smoothing.
COMPARED_JUDGES: dict[str, tuple[str, int, str]] = {
    "min_learned@1": ("min_learned", 1, "auto"),
    "min_gain@1": ("min_gain", 1, "auto"),
    "min_gain@3": ("min_gain", 3, "auto"),
    "min_gain@5": ("min_gain", 5, "auto"),
    "min_gain@1 noise model": ("min_gain", 1, "noise_model"),
}


def checkpoint_judges(tc: TrainConfig | None = None, *,
                      compared: bool = True) -> dict[str, tuple[str, int, str]]:
    """The checkpoint judges of a run: each rule of :data:`CHECKPOINT_RULES` with
    ``tc.checkpoint_window`` (the gain rules; the loss is not smoothed), and with
    ``compared`` the variants of :data:`COMPARED_JUDGES`."""
    window = tc.checkpoint_window if tc is not None else 1
    judges = {r: (r, 1 if r == "val_loss" else window, "auto") for r in CHECKPOINT_RULES}
    if compared:
        judges.update(COMPARED_JUDGES)
    return judges


def smoothed_gains(gains: Sequence[float], history: Sequence[Sequence[float]],
                   window: int) -> list[float]:
    """Per structure, the mean gain of the last ``window`` validations (this one and
    the ones before it in ``history``, oldest first).

    The per-epoch estimate on a small held-back strip swings by several dB between
    epochs (development set: tubulin +7.0, +5.7, +3.6, +5.7 dB in epochs 5 to 11), so
    the epoch with the largest single estimate is partly a lucky one; the mean over
    a few epochs ranks where training is good, not where the estimate was.
    """
    rows = [list(map(float, g)) for g in history][-(window - 1):] if window > 1 else []
    rows.append(list(map(float, gains)))
    return [float(np.mean(col)) for col in zip(*rows, strict=True)]


def keep_best(bests: dict, epoch: int, val_loss: float, gains, state: Callable[[], dict],
              *, history: Sequence = (), judges: dict | None = None) -> dict:
    """Update ``bests`` (judge -> ``(score, weights, epoch)``) in place with one
    validation: each judge whose :func:`checkpoint_score` improves keeps a copy of
    ``state()`` (one copy shared by the judges that improve).  Returns ``bests``.

    ``gains`` are this validation's per-structure gains, or a dict of them by estimate
    (``"auto"``, ``"noise_model"``); ``history`` the earlier validations' in the same
    form (oldest first); ``judges`` name -> ``(rule, window, estimate)`` (default: each
    rule of :data:`CHECKPOINT_RULES` on this validation alone)."""
    def by_estimate(g):
        return g if isinstance(g, dict) else {"auto": g, "noise_model": g}

    now = by_estimate(gains)
    past = [by_estimate(g) for g in history]
    if judges is None:
        judges = {r: (r, 1, "auto") for r in CHECKPOINT_RULES}
    snapshot = None
    for name, (rule, window, estimate) in judges.items():
        g = smoothed_gains(now[estimate], [p[estimate] for p in past], window)
        score = checkpoint_score(rule, val_loss, g)
        kept = bests.get(name, (math.inf, None, 0))
        if score < kept[0] - _MIN_IMPROVEMENT[rule]:
            if snapshot is None:
                snapshot = copy.deepcopy(state())
            bests[name] = (score, snapshot, epoch)
    return bests


def _gains(run: _Training, net=None, *, with_noise_model: bool = False):
    """Mean reconstruction loss on the fixed validation patches, and each channel's
    PSNR gain over the constant split there (see :func:`validation_gains`), the noise
    variance from :func:`_noise_variance`; with ``with_noise_model`` also the gains
    with the noise models' variance (the estimate before the Poisson-Gaussian fit)."""
    loss, pred, slope = _validate_full(run, net, slope=run.nms is not None)
    if slope is None:
        gains = validation_gains(run.val_raw, pred, range_invariant=True)
        return (loss, gains, gains) if with_noise_model else (loss, gains)
    gains = validation_gains(run.val_raw, pred, noise_var=_noise_variance(run, pred),
                             slope=slope, range_invariant=True)
    if not with_noise_model:
        return loss, gains
    # The estimate before: the noise models' variance, the plain MSE.
    old = validation_gains(run.val_raw, pred, slope=slope,
                           noise_var=_noise_variance(run, pred, source="noise_model"))
    return loss, gains, old


def _noise_variance(run: _Training, pred: np.ndarray, *, source: str = "auto") -> np.ndarray:
    """(P, N, p, p) noise variance of each held-back acquisition at the predicted
    signal ``pred``: the channel's Poisson-Gaussian fit where it has one
    (:mod:`._noise_level`; ``source="auto"``), else its noise model's variance (which
    counts a bootstrap denoiser's blur as noise)."""
    import torch

    out = []
    for c, nm in enumerate(run.nms):
        level = run.noise_level[c] if source == "auto" and run.noise_level else None
        if level is not None:
            out.append(poisson_gaussian_variance(pred[:, c], *level))
        else:
            with torch.no_grad():
                out.append(nm.variance(torch.as_tensor(pred[:, c], device=run.device))
                           .float().cpu().numpy())
    return np.stack(out, axis=1)


def _validate_full(run: _Training, net=None, *, slope: bool):
    """Validation loss, prediction in the channels' raw intensities (P, N, p, p) and,
    with ``slope``, ``d prediction / d input`` per pixel (raw units; a finite
    difference along a random +-1 direction, whose mean over pixels is the
    prediction's response to the input's noise: SURE's divergence)."""
    import torch

    from ._losses import split_loss

    net = run.net if net is None else net
    bs = run.tc.batch_size
    was_training = net.training
    net.eval()
    total, n = 0.0, 0
    preds = []
    n_ch = len(run.names)
    t_off = np.array([q.offset for q in run.target_norms], np.float32).reshape(1, -1, 1, 1)
    t_scale = np.array([q.scale for q in run.target_norms], np.float32).reshape(1, -1, 1, 1)
    slopes = []
    eps = 1e-2  # normalised input units
    gen = torch.Generator(device=run.val_inp.device).manual_seed(0)
    in_scale = float(run.input_norm.scale)
    with torch.no_grad():
        for i in range(0, run.val_inp.shape[0], bs):
            x = run.val_inp[i : i + bs]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.use_amp):
                # Posterior means of the latents: a deterministic, comparable loss.
                out, _ = net(x, compute_kl=False, sample=False)
            parts = split_loss(out.float(), None, run.val_tgt[i : i + bs], **run.loss_kw)
            b = out.shape[0]
            total += float(parts["recons"]) * b
            n += b
            preds.append(out[:, :n_ch].float().cpu().numpy() * t_scale + t_off)
            if slope:
                d = torch.randint(0, 2, x[:, :1].shape, generator=gen,
                                  device=x.device).to(x.dtype) * 2 - 1
                xp = torch.cat([x[:, :1] + eps * d, x[:, 1:]], dim=1)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.use_amp):
                    outp, _ = net(xp, compute_kl=False, sample=False)
                ds = ((outp[:, :n_ch].float() - out[:, :n_ch].float()) * d / eps)
                slopes.append(ds.cpu().numpy() * t_scale / in_scale)
    net.train(was_training)
    return (total / max(n, 1), np.concatenate(preds),
            np.concatenate(slopes) if slope else None)


#: A structure counts as learned when the model beats the constant split on the
#: validation data by at least this many dB (estimated against the clean structure).
LEARNED_DB = 0.1


def validation_gains(raw: np.ndarray, pred: np.ndarray, *, noise_var: np.ndarray | None = None,
                     slope: np.ndarray | None = None,
                     range_invariant: bool = False) -> list[float]:
    """PSNR gain (dB) of ``pred`` over the constant split, per channel.

    Parameters
    ----------
    raw : ndarray
        (P, N, Y, X) held-back noisy acquisitions of the N channels; their sum
        is what the model split.
    pred : ndarray
        (P, N, Y, X) the model's split of that sum.
    noise_var, slope : ndarray, optional
        (P, N, Y, X) noise variance of each acquisition (from the noise
        models) and ``d pred / d input`` at each pixel.  With both, the errors
        are estimated against the **clean** structures (below); without, they
        are measured against the noisy acquisitions.
    range_invariant : bool
        Compare as the range-invariant PSNR does (each of the two fitted to the
        structure by the least-squares scale and offset): the gain is then
        ``10 log10((1 - r_split^2) / (1 - r_model^2))`` with ``r`` the correlation
        with the clean structure, the number a benchmark against clean images
        reports.  Otherwise the plain MSE (the constant split's own scale).

    The constant split gives each channel the sum times its share ``s`` of the
    intensity (here, of these data); the gain is
    ``10 log10(MSE_constant / MSE_model)``.  Only noisy acquisitions exist,
    and their noise is also in the input, so a prediction that passes that
    noise on looks better against them than it is: against noisy targets the
    constant split is favoured and a denoising split can score below 0 dB
    while it beats the split by several dB against the clean image (measured
    on the development set).  The clean error is therefore estimated as
    ``MSE_noisy - mean(v) + 2 mean(v * slope)`` (Stein's unbiased risk
    estimate, exact for Gaussian noise; the slope of the constant split is
    ``s``), floored at 1 % of the noisy MSE.  In the range-invariant form the
    same correction gives the clean structure's variance, ``var(t) - mean(v)``,
    and its covariance with a prediction ``q``, ``cov(q, t) - mean(v dq/dx)``;
    the least error of ``a q + b`` is ``var(s) - cov(q, s)^2 / var(q)``.
    """
    raw = np.asarray(raw, np.float64)
    pred = np.asarray(pred, np.float64)
    total = raw.sum(axis=1)
    denom = float(total.sum())
    sure = noise_var is not None and slope is not None
    gains = []
    for c in range(raw.shape[1]):
        t = raw[:, c]
        share = float(t.sum()) / denom if denom else 1.0 / raw.shape[1]
        v = np.asarray(noise_var[:, c], np.float64) if sure else None
        if range_invariant:
            mean_v = float(np.mean(v)) if sure else 0.0
            # The noise of t that each prediction carries: the sum all of it, the
            # model mean(v * slope).
            carried = (mean_v, float(np.mean(v * slope[:, c])) if sure else 0.0)
            errs = []
            for q, noise_in_q in zip((total, pred[:, c]), carried, strict=True):
                var_q = float(np.var(q))
                cov_noisy = float(np.mean((q - q.mean()) * (t - t.mean())))
                noisy = float(np.var(t)) - (cov_noisy ** 2 / var_q if var_q > 0 else 0.0)
                if sure:
                    cov = cov_noisy - noise_in_q
                    clean = float(np.var(t)) - mean_v - (cov ** 2 / var_q if var_q > 0
                                                        else 0.0)
                    errs.append(max(clean, 0.01 * noisy))
                else:
                    errs.append(noisy)
            mse_const, mse = errs
        else:
            mse_const = float(np.mean((share * total - t) ** 2))
            mse = float(np.mean((pred[:, c] - t) ** 2))
            if sure:
                mse_const = max(mse_const - float(np.mean(v)) * (1 - 2 * share),
                                0.01 * mse_const)
                mse = max(mse - float(np.mean(v)) + 2 * float(np.mean(v * slope[:, c])),
                          0.01 * mse)
        if not (mse > 0 and mse_const > 0):
            gains.append(0.0)
        else:
            gains.append(10.0 * math.log10(mse_const / mse))
    return gains


def learning_summary(gains: dict[str, float] | None, threshold: float = LEARNED_DB) -> str:
    """One line naming what was learned: ``"actin: +2.1 dB; microtubules: not learned,
    +0.0 dB: give more fields or more training time"``."""
    if not gains:
        return ""
    parts, missed = [], False
    for name, g in gains.items():
        if g >= threshold:
            parts.append(f"{name}: {g:+.1f} dB")
        else:
            parts.append(f"{name}: not learned, {g:+.1f} dB")
            missed = True
    line = "; ".join(parts)
    if missed:
        line += ": give more fields or more training time"
    return line


def network_weights(raw: np.ndarray, pred: np.ndarray, base: np.ndarray, *,
                    noise_var: np.ndarray | None = None, slope: np.ndarray | None = None,
                    base_slope: np.ndarray | None = None) -> list[float]:
    """Per channel, the weight ``w`` in [0, 1] of the network's output ``pred`` against
    the constant split ``base`` whose blend ``w pred + (1 - w) base`` has the least
    estimated error on the held-back data.

    Parameters
    ----------
    raw : ndarray
        (P, N, Y, X) held-back noisy acquisitions.
    pred, base : ndarray
        (P, N, Y, X) the network's split of their sum and the constant split.
    noise_var, slope, base_slope : ndarray, optional
        Noise variance of each acquisition and ``d output / d input`` of ``pred``
        and ``base``: with all three the error is estimated against the **clean**
        structure (Stein's unbiased risk estimate, as in :func:`validation_gains`);
        otherwise it is measured against the noisy acquisitions.

    The estimated error of the blend is quadratic in ``w``:
    ``|e + w d|^2 + 2 w mean(v (slope - base_slope)) + const`` with ``d = pred - base``,
    ``e = base - raw``, so its minimum is ``w = -(mean(e d) + mean(v (slope -
    base_slope))) / mean(d^2)``, clipped to [0, 1].  A hard choice (0 or 1) throws
    away a network that the estimate, off by about +-0.5 dB on small held-back
    strips, judges a little worse than the split; the blend keeps the part of it
    that helps.
    """
    raw = np.asarray(raw, np.float64)
    pred = np.asarray(pred, np.float64)
    base = np.asarray(base, np.float64)
    weights = []
    for c in range(raw.shape[1]):
        d = pred[:, c] - base[:, c]
        den = float(np.mean(d * d))
        if den <= 0:
            weights.append(1.0)
            continue
        num = float(np.mean((base[:, c] - raw[:, c]) * d))
        if noise_var is not None and slope is not None and base_slope is not None:
            num += float(np.mean(np.asarray(noise_var[:, c], np.float64)
                                 * (slope[:, c] - base_slope[:, c])))
        weights.append(float(np.clip(-num / den, 0.0, 1.0)))
    return weights


def _blend_weights(run: _Training, net) -> list[float]:
    """:func:`network_weights` of ``net`` on the validation data (the gate at 1 and at 0
    gives its output and its constant split); the gate is left as it was."""

    gate = net.network_gate
    kept = gate.clone()
    slope = run.nms is not None
    try:
        gate.fill_(1.0)
        _, pred, sp = _validate_full(run, net, slope=slope)
        gate.fill_(0.0)
        _, base, sb = _validate_full(run, net, slope=slope)
    finally:
        gate.copy_(kept)
    noise_var = _noise_variance(run, pred) if slope else None
    return network_weights(run.val_raw, pred, base, noise_var=noise_var, slope=sp,
                           base_slope=sb)


def _judge(model: SplitModel, run: _Training) -> None:
    """Measure the final model on the validation data against the constant split and,
    in ``split_fallback`` networks, blend each channel's output with that split by the
    weight of least estimated error (:func:`network_weights`); a channel whose blend is
    not estimated to gain at least ``LEARNED_DB`` gives the constant split exactly.
    The numbers go into ``model.training["validation"]``."""
    gains = _gains(run, model.net)[1]
    network_gains = list(gains)  # the network's own output, before any fallback
    off, weights = [], None
    if model.config.split_fallback and run.nms is not None:
        gate = model.net.network_gate
        weights = _blend_weights(run, model.net)
        gate.copy_(gate.new_tensor(weights))
        gains = _gains(run, model.net)[1]
        for c, g in enumerate(gains):
            if not g >= LEARNED_DB or weights[c] == 0.0:
                weights[c] = 0.0
                off.append(run.names[c])
        if off:
            gate.copy_(gate.new_tensor(weights))
            gains = _gains(run, model.net)[1]
    elif model.config.split_fallback:
        # Without noise models the errors are against noisy acquisitions, which favour
        # the constant split: no blend weight from them, only the fallback below 0 dB.
        gate = model.net.network_gate
        for c, g in enumerate(gains):
            if g < 0:
                gate[c] = 0.0
                off.append(run.names[c])
        if off:
            gains = _gains(run, model.net)[1]
    model.net.eval()
    named = dict(zip(run.names, gains, strict=True))
    # The same estimate with the noise models' variance (before the Poisson-Gaussian
    # fit), recorded to compare them.
    gains_nm = _gains(run, model.net, with_noise_model=True)[2] if run.nms is not None \
        else gains
    model.training["validation"] = {
        "psnr_gain_db": named,
        "psnr_gain_db_noise_model": dict(zip(run.names, gains_nm, strict=True)),
        "network_psnr_gain_db": dict(zip(run.names, network_gains, strict=True)),
        "network_weight": None if weights is None else dict(zip(run.names, weights,
                                                                strict=True)),
        "not_learned": [k for k, v in named.items() if not v >= LEARNED_DB],
        "threshold_db": LEARNED_DB,
        "constant_split_for": off,
        "against": "clean structures, estimated from the held-back noisy acquisitions "
                   "(SURE)" if run.nms is not None else
                   "held-back noisy acquisitions (the validation part of the data)",
        "patches": int(run.val_raw.shape[0]),
        # Per channel, the noise variance the estimate subtracts: a Poisson-Gaussian fit
        # to the data (variance = gain * signal + offset) or the noise model's.
        "noise_variance": None if run.nms is None else {
            n: ({"source": "poisson_gaussian", "gain": lv[0], "offset": lv[1]}
                if lv is not None else {"source": "noise_model"})
            for n, lv in zip(run.names, run.noise_level or [None] * len(run.names),
                             strict=True)},
        "summary": learning_summary(named),
    }


def best_model_so_far(run: _Training) -> SplitModel:
    """The best model of a run so far, on its own copy of the weights (uncalibrated,
    judged on the validation data): what a cancelled run keeps."""
    return _judged_copy(run, run.best, {"cancelled": True, "epochs_run": run.epochs_run})


def _model_of_rule(run: _Training, rule: str) -> SplitModel:
    """The best model of a finished run by another checkpoint rule, on its own copy of
    the weights (uncalibrated, judged on the validation data)."""
    return _judged_copy(run, run.bests.get(rule, run.best), {"checkpoint_rule": rule})


def _judged_copy(run: _Training, kept, training: dict) -> SplitModel:
    """A model on a copy of the kept ``(score, state, epoch)`` weights (the network's
    current ones when none were kept), judged on the validation data."""
    import torch

    from ._lvae import LadderVAE

    with torch.random.fork_rng(devices=[]):
        net = LadderVAE(run.cfg, run.tc.patch_size)
    state = kept[1] if kept[1] is not None else _current(run).state_dict()
    net.load_state_dict({k: v.detach().to("cpu") for k, v in state.items()})
    net.to(run.device).eval()
    model = SplitModel(net, run.cfg, patch_size=run.tc.patch_size, input_norm=run.input_norm,
                       target_norms=run.target_norms, noise_models=run.nms,
                       channel_names=run.names,
                       training={"data_shape": list(run.data.shape), **training,
                                 "best_epoch": kept[2]})
    _judge(model, run)
    return model


def _final_model(run: _Training) -> SplitModel:
    """The best weights as a :class:`SplitModel`, with the facts of the training."""
    from ..core.networks import count_parameters

    net, tc, ddp = run.net, run.tc, run.ddp
    if run.best[1] is not None:
        net.load_state_dict(run.best[1])
    elif run.ema is not None:
        net.load_state_dict(run.ema.state_dict())
    best_val_loss = next((h["val_loss"] for h in run.history if h["epoch"] == run.best[2]),
                         None)
    net.zero_grad(set_to_none=True)  # release the gradient buffer
    net.eval()
    training = {
        "data_shape": list(run.data.shape),
        "split": run.data.split,
        "val_overlaps_train": run.data.val_overlaps_train,
        "hot_pixels_replaced": run.data.hot_pixels,
        "epochs_run": run.epochs_run,
        "best_epoch": run.best[2],
        "best_val_loss": best_val_loss,
        "checkpoint_rule": tc.checkpoint_rule,
        "best_epoch_by_rule": {r: b[2] for r, b in run.bests.items()},
        "steps_per_epoch": run.steps,
        "steps_run": (run.history[-1]["steps"] if run.history
                      and "steps" in run.history[-1] else run.epochs_run * run.steps),
        "max_steps": run.max_steps,
        "max_minutes": None if not math.isfinite(run.budget) else run.budget / 60.0,
        # "plateau" (early stopping), "time budget", "step cap" or "epochs"
        "stop_reason": run.stop_reason,
        "skipped_batches": int(run.skipped),
        "train_seconds": time.perf_counter() - run.t_train,
        "n_parameters": count_parameters(net),
        "train_config": tc.model_dict(),  # the recipe; run-time options left out
        "world_size": ddp.world_size(),
        "global_batch_size": tc.batch_size * ddp.world_size(),
    }
    return SplitModel(net, run.cfg, patch_size=tc.patch_size, input_norm=run.input_norm,
                      target_norms=run.target_norms, noise_models=run.nms,
                      channel_names=run.names, training=training)


def _channel_frames(x) -> np.ndarray:
    from ._data import as_frames

    return as_frames(x, "channel")


def calibrate_on(model: SplitModel, val: np.ndarray, *, samples: int = 20, seed: int = 0,
                 batch_size: int = 32) -> dict:
    """Fit the std calibration of ``model`` on held-out noisy data (frames, N, Y, X).

    With noise models, the noise variance of the noisy targets is accounted
    for (see :mod:`._calibration`), so the calibrated std estimates the error
    against the clean signal.  Without them (Gaussian likelihood) it
    estimates the error against a noisy acquisition, an upper bound.
    """
    from ._calibration import fit_calibration

    inp = val.sum(axis=1)
    res = model.predict(inp, samples=max(samples, 2), batch_size=batch_size,
                        calibration="none", seed=seed, tile=2 * model.patch_size)
    target = np.moveaxis(val, 1, 0)  # (N, F, Y, X)
    mean = res.mean[:, None] if res.mean.ndim == 3 else res.mean
    std = res.std[:, None] if res.std.ndim == 3 else res.std
    nv = None
    # Only the noise models' variance is independent of the network's error; the
    # Gaussian likelihood's predicted variance absorbs that error too, and
    # subtracting it would shrink the calibration to nothing.
    if res.noise_std is not None and model.noise_models:
        nv = res.noise_std[:, None] if res.noise_std.ndim == 3 else res.noise_std
        nv = nv.astype(np.float64) ** 2
    cal = fit_calibration(mean, std, target, noise_var=nv)
    cal["samples"] = int(max(samples, 2))
    cal["noise_aware"] = nv is not None
    cal.update(_split_errors(mean, target, inp))
    return cal


def _split_errors(mean, target, inp) -> dict:
    """RMSE of each predicted channel against its (noisy) target, and of the naive split
    (the input times the channel's share of the intensity), on the same frames.

    A model whose RMSE is not below the naive one splits no better than its input.
    """
    rmse, naive = [], []
    total = float(np.sum(inp, dtype=np.float64))
    for c in range(target.shape[0]):
        t = np.asarray(target[c], np.float64)
        m = np.asarray(mean[c], np.float64)
        if m.size != t.size or inp.size != t.size or total == 0:
            return {}
        m = m.reshape(t.shape)
        share = float(t.sum()) / total
        rmse.append(float(np.sqrt(np.mean((m - t) ** 2))))
        naive.append(float(np.sqrt(np.mean((share * np.asarray(inp, np.float64).reshape(t.shape)
                                            - t) ** 2))))
    return {"rmse": rmse, "naive_rmse": naive}


def _resumable(tc: TrainConfig, run_id: dict):
    """The state to resume from (``tc.resume`` and a checkpoint of this run), or None."""
    from pathlib import Path

    from ._resume import read_state

    if not (tc.resume and tc.checkpoint_path and Path(tc.checkpoint_path).is_file()):
        return None
    state = read_state(tc.checkpoint_path)
    name = Path(tc.checkpoint_path).name
    if state is None:
        raise DuetInputError(f"{name} holds no training state to resume: choose another "
                             "checkpoint file (or remove it to start afresh)")
    if state.run != run_id:
        diff = sorted(k for k in run_id if state.run.get(k) != run_id[k])
        raise DuetInputError(f"{name} is the checkpoint of another run ({', '.join(diff)} "
                             "differ): choose another checkpoint file, or remove it to start "
                             "afresh")
    return state


def _checkpoint(net, state, cfg, tc, input_norm, target_norms, nms, names, data, epoch,
                resume=None):
    """Write the best weights so far to ``tc.checkpoint_path`` (no calibration yet), and
    with ``resume`` (header, tensors) what training needs to go on (see ``_resume.py``)."""
    import torch

    from ._lvae import LadderVAE

    # Building a network draws its initial weights: on a forked generator, so that
    # writing a checkpoint leaves the run's random numbers (and its result) alone.
    with torch.random.fork_rng(devices=[]):
        snap = LadderVAE(cfg, tc.patch_size)
    snap.load_state_dict({k: v.detach().to("cpu") for k, v in state.items()})
    cpu_nms = None
    if nms:
        cpu_nms = [GaussianMixtureNoiseModel(nm.weight.cpu(), nm.min_signal, nm.max_signal,
                                             nm.min_sigma, info=nm.info) for nm in nms]
    with torch.no_grad():
        SplitModel(snap, cfg, patch_size=tc.patch_size, input_norm=input_norm,
                   target_norms=target_norms, noise_models=cpu_nms, channel_names=names,
                   training={"data_shape": list(data.shape), "checkpoint_epoch": epoch},
                   ).save(tc.checkpoint_path, resume=resume)


train = blocking_form(iter_train, """Run :func:`iter_train` to the end (same arguments).

``callback`` (keyword) gets every :class:`SplitTrainProgress`.  Returns a
:class:`SplitTrainResult` (the model is ``.model``).
""")
