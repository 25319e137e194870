"""Training generator: noise models, patches, Adamax, validation, calibration."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .._errors import DuetInputError
from .._progress import run_to_end
from ..noise_models import GaussianMixtureNoiseModel, bootstrap_noise_model
from ._config import MAX_CHANNELS, MIN_CHANNELS, SplitConfig, TrainConfig
from ._data import (
    PatchSampler,
    default_steps_per_epoch,
    fit_normalizers,
    prepare_data,
    validation_positions,
)
from ._model import SplitModel


@dataclass
class TrainProgress:
    """Yielded during training (every step; losses refresh every ``log_every`` steps).

    ``phase`` is ``"noise_model"`` while bootstrapping the noise models,
    ``"train"`` during the epochs and ``"calibrate"`` at the end.
    """

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    losses: dict[str, float] = field(default_factory=dict)
    val_loss: float | None = None
    elapsed: float = 0.0
    eta: float | None = None
    phase: str = "train"
    lr: float | None = None
    best_epoch: int | None = None


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

    from ._losses import split_loss

    grads = FlatGrads(net.parameters())

    def step():
        inp, tgt = sampler.sample(batch_size)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out, kls = net(inp)
        parts = split_loss(out.float(), [k.float() for k in kls], tgt, **loss_kw)
        grads.zero()
        parts["loss"].backward()
        ok = grads.sanitise(parts["loss"], grad_clip)
        opt.step()
        return parts, ok

    return step


def _channels_and_rest(args) -> tuple[list, tuple]:
    """Split positional arguments into the channels and (config, train_config, noise_models).

    New form: ``(channels_list, config, train_config, noise_models)``; the
    older ``(channel_a, channel_b, config, ...)`` form still works: leading
    arrays up to the first config (or None) are the channels.
    """
    if not args:
        raise DuetInputError("give the noisy acquisitions of 2 to 4 structures")
    if isinstance(args[0], list | tuple):
        return list(args[0]), tuple(args[1:])
    n = 0
    while n < len(args) and args[n] is not None and not isinstance(
            args[n], SplitConfig | TrainConfig):
        n += 1
    return list(args[:n]), tuple(args[n:])


def iter_train(
    *args,
    config: SplitConfig | None = None,
    train_config: TrainConfig | None = None,
    noise_models: Sequence[GaussianMixtureNoiseModel] | None = None,
    channel_names: Sequence[str] | None = None,
    bootstrap_kwargs: dict | None = None,
) -> Generator[TrainProgress, None, SplitModel]:
    """Train a splitting model on N noisy single-structure acquisitions (N = 2 to 4).

    The network sees their sum and learns to give back each structure (each
    through its noise model, so it learns their clean signals).  Call it as
    ``iter_train([a, b, c], config, train_config, noise_models)`` or, for two
    channels, ``iter_train(a, b, config, train_config, noise_models)``.

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
        Passed to :func:`~napari_duet.noise_models.bootstrap_noise_model`.

    Yields
    ------
    TrainProgress
    Returns
    -------
    SplitModel
        The best model by validation loss, calibrated on the validation data
        when ``train_config.calibrate``.
    """
    channels, rest = _channels_and_rest(args)
    if len(rest) > 3:
        raise TypeError("iter_train takes channels, config, train_config, noise_models")
    given = dict(zip(("config", "train_config", "noise_models"), rest, strict=False))
    config = given.get("config", config)
    train_config = given.get("train_config", train_config)
    noise_models = given.get("noise_models", noise_models)

    import torch

    from ..devices import resolve_device, seed_everything
    from ._losses import split_loss
    from ._lvae import LadderVAE, count_parameters

    cfg = config or SplitConfig.default()
    tc = train_config or TrainConfig()
    n_ch = len(channels)
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
    device = resolve_device(tc.device)
    rng = seed_everything(tc.seed)
    t0 = time.perf_counter()
    data = prepare_data(*channels, patch_size=tc.patch_size,
                        val_fraction=tc.val_fraction, rng=rng)
    input_norm, target_norms = fit_normalizers(data.train)

    # ---- noise models
    nms = None
    if tc.likelihood == "noise_model":
        if noise_models is None:
            nms = []
            for c in range(n_ch):
                yield TrainProgress(0, tc.epochs, 0, 0, elapsed=time.perf_counter() - t0,
                                    phase="noise_model")
                frames = _channel_frames(channels[c])
                kw = {"device": tc.device, "seed": tc.seed, **(bootstrap_kwargs or {})}
                nms.append(bootstrap_noise_model(frames, **kw))
        else:
            nms = list(noise_models)
            if len(nms) != n_ch or not all(
                isinstance(n, GaussianMixtureNoiseModel) for n in nms
            ):
                raise DuetInputError(
                    f"noise_models must be {n_ch} GaussianMixtureNoiseModel, one per channel")
        for nm in nms:
            nm.to(device)

    # ---- network, optimiser
    torch.manual_seed(tc.seed)
    net = LadderVAE(cfg, tc.patch_size).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)  # tensor-core friendly layout
    opt = torch.optim.Adamax(net.parameters(), lr=tc.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=tc.lr_factor, patience=tc.lr_patience, min_lr=1e-12
    )
    use_amp = tc.mixed_precision and device.type == "cuda"
    sampler = PatchSampler(data.train, input_norm, target_norms, patch_size=tc.patch_size,
                           device=device, seed=tc.seed, augment=tc.augment,
                           context=cfg.context_count)
    val_sampler = PatchSampler(data.val, input_norm, target_norms, patch_size=tc.patch_size,
                               device=device, seed=tc.seed, augment=False,
                               context=cfg.context_count)
    val_inp, val_tgt = val_sampler.patches_at(validation_positions(data.val, tc.patch_size))
    del val_sampler
    steps = tc.steps_per_epoch or default_steps_per_epoch(data.train, tc.patch_size,
                                                          tc.batch_size)
    t_mean = torch.tensor([n.offset for n in target_norms], device=device)
    t_std = torch.tensor([n.scale for n in target_norms], device=device)
    latent_sizes = [c * h * w for c, h, w in net.latent_shapes((tc.patch_size,) * 2)]
    loss_kw = dict(likelihood=tc.likelihood, kl_form=tc.kl, latent_sizes=latent_sizes,
                   free_bits=tc.free_bits, kl_weight=tc.kl_weight, noise_models=nms,
                   target_mean=t_mean, target_std=t_std)
    train_step = make_train_step(net, opt, sampler, batch_size=tc.batch_size, loss_kw=loss_kw,
                                 use_amp=use_amp, grad_clip=tc.grad_clip)

    def validate() -> float:
        net.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, val_inp.shape[0], tc.batch_size):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    # Posterior means of the latents: a deterministic, comparable loss.
                    out, _ = net(val_inp[i : i + tc.batch_size], compute_kl=False,
                                 sample=False)
                parts = split_loss(out.float(), None, val_tgt[i : i + tc.batch_size],
                                   **loss_kw)
                b = out.shape[0]
                total += float(parts["recons"]) * b
                n += b
        net.train()
        return total / max(n, 1)

    budget = None if tc.max_minutes is None else 60.0 * tc.max_minutes
    t_train = time.perf_counter()
    best = (math.inf, None, 0)  # val loss, state, epoch
    bad_epochs = 0
    losses: dict[str, float] = {}
    val_loss = None
    skipped = torch.zeros((), device=device)
    epochs_run = 0
    stop = False
    net.train()
    for epoch in range(1, tc.epochs + 1):
        acc: dict[str, torch.Tensor] = {}
        acc_n = 0
        for step in range(1, steps + 1):
            # A non-finite batch is skipped without a host sync: its gradient becomes zero.
            parts, ok = train_step()
            skipped += (~ok).to(skipped.dtype)
            for k, v in parts.items():
                acc[k] = acc.get(k, 0.0) + v.detach()
            acc_n += 1
            if step % tc.log_every == 0 or step == steps:
                losses = {k: float(v) / acc_n for k, v in acc.items()}
            elapsed = time.perf_counter() - t0
            done_frac = ((epoch - 1) * steps + step) / (tc.epochs * steps)
            train_el = time.perf_counter() - t_train
            eta = train_el / done_frac * (1 - done_frac) if done_frac > 0 else None
            if budget is not None:
                eta = min(eta or budget, max(budget - train_el, 0.0))
            yield TrainProgress(epoch, tc.epochs, step, steps, dict(losses), val_loss,
                                elapsed, eta, "train", opt.param_groups[0]["lr"], best[2] or None)
            if budget is not None and time.perf_counter() - t_train > budget:
                stop = True
                break
        epochs_run = epoch
        val_loss = validate()
        sched.step(val_loss)
        if val_loss < best[0]:
            best = (val_loss, copy.deepcopy(net.state_dict()), epoch)
            bad_epochs = 0
            if tc.checkpoint_path:
                _checkpoint(net, best[1], cfg, tc, input_norm, target_norms, nms,
                            names, data, epoch)
        else:
            bad_epochs += 1
        yield TrainProgress(epoch, tc.epochs, steps, steps, dict(losses), val_loss,
                            time.perf_counter() - t0, None, "train",
                            opt.param_groups[0]["lr"], best[2])
        if stop or bad_epochs >= tc.early_stopping:
            break
    if best[1] is not None:
        net.load_state_dict(best[1])
    net.zero_grad(set_to_none=True)  # release the gradient buffer
    net.eval()
    training = {
        "data_shape": list(data.shape),
        "split": data.split,
        "val_overlaps_train": data.val_overlaps_train,
        "epochs_run": epochs_run,
        "best_epoch": best[2],
        "best_val_loss": None if not math.isfinite(best[0]) else best[0],
        "steps_per_epoch": steps,
        "skipped_batches": int(skipped),
        "train_seconds": time.perf_counter() - t_train,
        "n_parameters": count_parameters(net),
        "train_config": tc.to_dict(),
    }
    model = SplitModel(net, cfg, patch_size=tc.patch_size, input_norm=input_norm,
                       target_norms=target_norms, noise_models=nms,
                       channel_names=names, training=training)
    if tc.calibrate:
        yield TrainProgress(epochs_run, tc.epochs, steps, steps, dict(losses), val_loss,
                            time.perf_counter() - t0, None, "calibrate",
                            opt.param_groups[0]["lr"], best[2])
        model.calibration = calibrate_on(model, data.val, samples=tc.calib_samples,
                                         seed=tc.seed)
    model.to(device)
    return model


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


def _checkpoint(net, state, cfg, tc, input_norm, target_norms, nms, names, data, epoch):
    """Write the best weights so far to ``tc.checkpoint_path`` (no calibration yet)."""
    import torch

    from ._lvae import LadderVAE

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
                   ).save(tc.checkpoint_path)


def train(*args, callback=None, **kwargs) -> SplitModel:
    """Run :func:`iter_train` to the end (same arguments); ``callback`` gets every TrainProgress."""
    return run_to_end(iter_train(*args, **kwargs), callback)
