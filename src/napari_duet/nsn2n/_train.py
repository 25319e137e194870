"""NS-N2N training as a generator: guides -> weight maps -> training -> denoising."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.progress import Progress, run_to_end
from ..core.versions import versions
from ._config import NSN2NConfig, check_stage_fits
from ._diagnostics import fit_stacks_noise
from ._guide import guide_stack
from ._model import DenoiseResult, NSN2NModel
from ._volume import prepare, raw_stacks
from ._weights import MIN_PAIR_FRACTION, guide_similarity, weight_maps

# Mean matched fraction below which results degrade visibly (the reference
# recommends "well above 0.5").
LOW_MATCH_WARNING = 0.5
# Median correlation of neighbouring guides below which slices are unrelated.
LOW_SIMILARITY_WARNING = 0.25


@dataclass(kw_only=True)
class NSN2NProgress(Progress):
    """State yielded by :func:`iter_train`.

    Attributes
    ----------
    stage : str
        ``"guide"`` (computing weight maps), ``"train"`` or ``"denoise"``.
    done, total : int
        Work units of the current stage: slices for ``guide``/``denoise``,
        optimiser steps for ``train``.
    iteration, iterations : int
        Optimiser steps done and planned (with a time budget, ``iterations`` is an
        estimate from the measured speed, exact at the last step).
    losses : dict of str to float
        Last step's ``total``, ``recon``, ``rc`` and ``ic`` (empty before training).
    matched_fraction : float
        Mean of the weight maps W over all pairs (NaN before they are computed).
    eta, elapsed : float
        Seconds left (estimate, training + denoising; None in the guide stage)
        and spent.  The denoising time comes from one slice's inference timed
        before training, the time per step from the steps after the first (which
        carries one-off set-up; it is the estimate only at step 1).
    preview : ndarray or None
        Denoised ``preview_index`` slice in the input's scale (every
        ``preview_every`` iterations), else None.
    preview_index : int
        Slice the preview shows (index along the slice axis, first stack).
    """

    iteration: int = 0
    iterations: int = 0
    matched_fraction: float = float("nan")
    preview: np.ndarray | None = None
    preview_index: int = 0
    #: The model in training (``"train"`` stage): what a Cancel keeps (its weights so far).
    model: Any = None

    @property
    def fraction(self) -> float | None:
        """Share of the run: guides 5 %, training 85 %, denoising 10 %."""
        within = self.done / self.total if self.total > 0 else 0.0
        within = min(max(within, 0.0), 1.0)
        start, share = _STAGE_SHARES.get(self.stage, (0.0, 1.0))
        return start + share * within

    def fields(self) -> tuple[str, int | None, int | None, dict[str, Any]]:
        """Adds the iterations, the matched fraction, the losses and the ETA."""
        stage, done, total, extra = super().fields()
        extra.pop("eta", None)
        extra.update(iteration=self.iteration, iterations=self.iterations,
                     matched_fraction=self.matched_fraction)
        extra.setdefault("losses", {})
        extra["eta"] = self.eta
        return stage, done, total, extra


# (start, share) of each stage in the whole run, for :attr:`NSN2NProgress.fraction`.
_STAGE_SHARES = {"guide": (0.0, 0.05), "train": (0.05, 0.85), "denoise": (0.9, 0.1)}


@dataclass
class NSN2NResult:
    """Result of :func:`train` / :func:`iter_train`."""

    model: NSN2NModel
    denoised: np.ndarray
    uncertainty: np.ndarray | None
    loss_history: dict[str, list[float]]
    matched_fraction: float
    warnings: list[str] = field(default_factory=list)
    tau: float = float("nan")
    slice_similarity: float = float("nan")
    pair_fractions: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    pairs: list[dict] = field(default_factory=list)

    def save(self, folder, **kwargs) -> list:
        """Write denoised.tif, uncertainty.tif, model.duet and report.json into ``folder``
        (:func:`._save.save_result`)."""
        from ._save import save_result

        return save_result(self, folder, **kwargs)

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary: parameters, final losses, diagnostics, versions."""
        final = {k: (v[-1] if v else None) for k, v in self.loss_history.items()}
        return {
            "method": "nsn2n",
            "config": self.model.config.to_dict(),
            "tau": self.tau,
            "matched_fraction": self.matched_fraction,
            "slice_similarity": self.slice_similarity,
            "pair_matched_fractions": self.pair_fractions,
            "pairs": self.pairs,
            "training": {k: self.model.training.get(k) for k in
                         ("iterations_done", "budget_s", "width", "context",
                          "noise_correlation", "noise_level", "wiener", "device",
                          "world_size")},
            "noise_model": self.model.noise.to_dict(),
            "final_losses": final,
            "loss_history": self.loss_history,
            "warnings": list(self.warnings),
            "timings_s": self.timings,
            "normalizers": [n.to_dict() for n in self.model.normalizers],
            "versions": versions(),
        }


def _lr_at(progress: float, step: int, schedule: str) -> float:
    """Learning-rate factor at a fraction ``progress`` of the run (time or steps)."""
    if step < 20:  # warm-up over the first steps
        return (step + 1) / 20
    if schedule == "constant":
        return 1.0
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


# Default training budget on a CPU for a 48 x 256 x 256 volume (seconds), and
# its range for other sizes; on a GPU a fixed budget with a larger network.
# Other sizes scale by the 4th root of the voxel count: the steps a network
# needs hardly depend on the volume (every step sees the same crops), and with
# the square root the blind-spot network stopped short of BM4D on small volumes
# (24 x 128^2 MRI crop: 85 s, ~3000 steps, 32.9 dB; 143 s, 5146 steps, 33.17 dB
# against BM4D's 33.13 dB).
CPU_BUDGET_S = 240.0
_BUDGET_EXPONENT = 0.25
CPU_BUDGET_RANGE = (30.0, 300.0)
GPU_BUDGET_S = 40.0
_REF_VOXELS = 48 * 256 * 256


def resolve_budget(config: NSN2NConfig, device, n_voxels: int) -> float | None:
    """Training seconds for this run (None: ``iterations`` alone decides).

    ``budget="auto"`` with ``iterations`` set means exactly that many steps.
    Otherwise auto is ``CPU_BUDGET_S`` scaled by the 4th root of the volume
    size (clipped to ``CPU_BUDGET_RANGE``) on a CPU, ``GPU_BUDGET_S`` on a GPU.
    """
    if config.budget != "auto":
        return float(config.budget)
    if config.iterations is not None:
        return None
    if getattr(device, "type", str(device)) in ("cuda", "mps"):
        return GPU_BUDGET_S
    lo, hi = CPU_BUDGET_RANGE
    scale = (n_voxels / _REF_VOXELS) ** _BUDGET_EXPONENT
    return float(min(hi, max(lo, CPU_BUDGET_S * scale)))


def resolve_context(config: NSN2NConfig, stacks: np.ndarray,
                    rho: float | None = None) -> tuple[str, float]:
    """The network input of this run and the noise's in-plane correlation (NaN if unmeasured).

    ``context="auto"``: ``"blind"`` when the lag-1 in-plane correlation of the
    noise (:func:`~napari_duet.nsn2n.noise_correlation`, on the normalised
    stacks, or ``rho`` when already measured on them) is under
    ``CORRELATED_NOISE``, else ``"2.5d"`` (also when it cannot be measured).
    Any other value is kept.
    """
    from ._diagnostics import CORRELATED_NOISE, stacks_noise_correlation

    if config.context != "auto":
        return config.context, float("nan")
    if rho is None or not np.isfinite(rho):
        rho = stacks_noise_correlation(stacks, config)
    return ("blind" if np.isfinite(rho) and rho < CORRELATED_NOISE else "2.5d"), rho


def resolve_width(config: NSN2NConfig, device) -> int:
    """Network width: ``config.width``, or by device and context when None.

    ``config.context`` must be resolved (not ``"auto"``; see :func:`resolve_context`).
    """
    if config.width is not None:
        return config.width
    gpu = getattr(device, "type", str(device)) in ("cuda", "mps")
    if config.context == "2d":
        return 16
    if config.context == "blind":
        # Width 16 learned as much per step as 24 on a CPU at half the time per step,
        # so under a time budget it takes twice the steps (docs/nsn2n.md, 3c).
        return 48 if gpu else 16
    return 48 if gpu else 24


def _sample_batch(
    rng: np.random.Generator,
    stacks: np.ndarray,
    w: np.ndarray,
    pairs: np.ndarray,
    batch: int,
    crop: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random pairs, crops, flips and 90-degree rotations (same for x_i, x_j and W)."""
    _, _, h, wd = stacks.shape
    ch, cw = min(crop, h), min(crop, wd)
    if ch != cw:  # rotations need square crops
        ch = cw = min(ch, cw)
    xi = np.empty((batch, ch, cw), np.float32)
    xj = np.empty_like(xi)
    ww = np.empty_like(xi)
    for b in range(batch):
        s, z = pairs[rng.integers(len(pairs))]
        y0 = rng.integers(0, h - ch + 1)
        x0 = rng.integers(0, wd - cw + 1)
        sl = (slice(y0, y0 + ch), slice(x0, x0 + cw))
        a, c, m = stacks[s, z][sl], stacks[s, z + 1][sl], w[s, z][sl]
        if rng.random() < 0.5:  # swap roles: the loss is symmetric, the data need not be
            a, c = c, a
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        for dst, src in ((xi, a), (xj, c), (ww, m)):
            v = src[:, ::-1] if flip else src
            dst[b] = np.rot90(v, k)
    return xi, xj, ww


def iter_train(
    volume, axis: int = 0, config: NSN2NConfig | None = None
) -> Generator[NSN2NProgress, None, NSN2NResult]:
    """Train NS-N2N on ``volume`` and denoise it, yielding progress.

    Parameters
    ----------
    volume : array-like
        3D or higher array; ``axis`` is the slice axis (z of a stack, t of a
        time-lapse), the last two other axes are the image plane, further axes
        (channels, ...) are separate stacks sharing one network.
    axis : int
        Slice axis.
    config : NSN2NConfig, optional
        Parameters (defaults if None).

    Yields
    ------
    NSN2NProgress
        After each guide slice, each training step and each denoised slice.
        Closing the generator (``gen.close()``) cancels the run.

    Returns
    -------
    NSN2NResult
        The model, the denoised volume (input shape, float32, input scale), its
        uncertainty, loss curves, the matched fraction and warnings.

    Raises
    ------
    DuetInputError
        For 2D input, fewer than 3 slices, a wrong axis or a bad config.
    """
    if config is not None and config.threads is not None:  # the same run, in its threads
        from ..core.devices import in_threads

        inner = dataclasses.replace(config, threads=None)
        return (yield from in_threads(config.threads, iter_train(volume, axis, inner)))
    import torch

    from ..core import distributed as ddp
    from ..core.devices import resolve_device, seed_everything
    from ..core.networks.unet import UNet2D
    from ._blind import BlindNet, blind_loss, sample_blind_batch
    from ._context import ContextNet, context_loss, sample_context_batch
    from ._losses import nsn2n_losses

    config = config or NSN2NConfig()
    t_start = time.perf_counter()
    layout, raw = raw_stacks(volume, axis)
    # How the noise depends on the signal, fitted in input units; photon noise is
    # then stabilised (unit variance) before the normalisation, so the training,
    # the blind-spot blend's per-slice sigma and the context choice all see
    # noise of constant variance.
    noise, rho = fit_stacks_noise(raw, config.noise_model, config)
    # The model works with the parameters its file records (6 digits): a reloaded model
    # then predicts what this one does (the block-matched stages would swap blocks on the
    # last-bit difference).
    noise = type(noise).from_dict(noise.to_dict())
    layout, stacks, norms = prepare(volume, axis, noise=noise, raw=(layout, raw))
    del raw
    device = ddp.rank_device(resolve_device(config.device))  # cuda:LOCAL_RANK under torchrun
    n_stacks, n_z = stacks.shape[:2]
    budget = resolve_budget(config, device, int(stacks.size))
    # "auto": by the noise's correlation.  Measured already where the noise fit needed it
    # and the stacks are the raw ones normalised (a Gaussian model): the same value.
    mode, noise_rho = resolve_context(config, stacks, rho if noise.kind == "gaussian" else None)
    width = resolve_width(config.replace(context=mode), device)
    context, blind = mode == "2.5d", mode == "blind"
    check_stage_fits(config.wiener, mode)
    # Planned steps: fixed, or an estimate updated from the measured speed.
    n_iter = config.iterations if config.iterations is not None else 1000
    preview_index = (n_z // 2 if config.preview_index is None
                     else min(max(config.preview_index, 0), n_z - 1))

    # 1. guides and weight maps (tau is fitted per stack: channels differ in noise)
    guides = np.empty_like(stacks)
    total_slices = n_stacks * n_z
    for s in range(n_stacks):
        for z in range(n_z):
            guides[s, z] = guide_stack(stacks[s, z : z + 1], config)[0]
            done = s * n_z + z + 1
            yield NSN2NProgress(stage="guide", done=done, total=total_slices,
                                elapsed=time.perf_counter() - t_start, iterations=n_iter,
                                preview_index=preview_index)
    w = np.empty((n_stacks, n_z - 1, *stacks.shape[2:]), np.float32)
    taus, sims = [], []
    for s in range(n_stacks):
        w[s], tau = weight_maps(guides[s], config)
        taus.append(tau)
        sims.append(guide_similarity(guides[s]))
    similarity = float(np.median(np.concatenate(sims)))
    del guides
    pair_fracs = w.mean(axis=(2, 3))  # (S, Z-1)
    matched = float(pair_fracs.mean())
    pair_rows = [
        {"stack": s_, "pair": [z, z + 1], "matched": round(float(pair_fracs[s_, z]), 4),
         "similarity": round(float(sims[s_][z]), 4),
         "verdict": ("unrelated" if sims[s_][z] < LOW_SIMILARITY_WARNING
                     else "partial" if pair_fracs[s_, z] < LOW_MATCH_WARNING else "good")}
        for s_ in range(n_stacks) for z in range(n_z - 1)
    ]
    pairs = np.argwhere(pair_fracs >= MIN_PAIR_FRACTION)
    warnings: list[str] = []
    if matched < LOW_MATCH_WARNING:
        warnings.append(
            f"only {matched:.0%} of pixels match between neighbouring slices: slices may be "
            "too far apart, or the sample moved; results will be weak (consider a "
            "single-image denoiser, or a larger tau)"
        )
    if similarity < LOW_SIMILARITY_WARNING:
        warnings.append(
            f"neighbouring slices are barely alike (correlation {similarity:.2f}): the slice "
            "spacing looks too large for NS-N2N; a single-image denoiser fits better"
        )
    if len(pairs) == 0:
        warnings.append("no pair of neighbouring slices matches; training on all pixels")
        w[:] = 1.0
        pairs = np.argwhere(np.ones_like(pair_fracs, bool))
    t_guide = time.perf_counter() - t_start

    # 2. training
    rng = seed_everything(config.seed)  # the same initial network on every rank
    rng = np.random.default_rng(ddp.sampler_seed(config.seed))  # each rank its own crops
    centres = np.argwhere(np.ones((n_stacks, n_z), bool))
    if context:
        net = ContextNet(width=width, depth=config.depth).to(device)
    elif blind:
        net = BlindNet(width=width, depth=config.depth).to(device)
    else:
        net = UNet2D(1, 1, width=width, depth=config.depth,
                     residual=config.residual).to(device)
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    opt_kw = {"weight_decay": config.weight_decay} if config.optimizer == "adamw" else {}
    opt = opt_cls(net.parameters(), lr=config.lr, **opt_kw)
    train_net = ddp.wrap(net, device)  # DDP averages gradients over ranks (else net)
    keys = (("total", "recon", "self", "gap") if context else ("total", "recon", "blind")
            if blind else ("total", "recon", "rc", "ic"))
    history: dict[str, list[float]] = {k: [] for k in keys}
    model = NSN2NModel(net, config.replace(width=width, context=mode, noise_model=noise.kind),
                       norms, device=device, noise=noise)
    # Time one slice's inference before training, for the first ETAs (it is measured
    # again at every preview).  Eval mode without gradients: nothing the training
    # uses changes, so the results stay the same; it also takes the network's
    # first-call set-up out of the first training step's time.
    net.eval()
    t0 = time.perf_counter()
    model.network_estimate(stacks[0], preview_index, w[0] if context else None, False)
    infer_per_slice = time.perf_counter() - t0
    t_train = time.perf_counter()
    t_timed = None  # end of the first step: later steps give the time per step
    it = 0
    losses: dict[str, float] = {}
    while True:
        elapsed = time.perf_counter() - t_train
        if config.iterations is not None and it >= config.iterations:
            break
        if budget is not None and ddp.agree(elapsed >= budget):  # rank 0's clock decides
            break
        if budget is not None and it > 0 and config.iterations is None:
            n_iter = max(it + 1, round(it * budget / max(elapsed, 1e-9)))
        progress = max(it / n_iter, elapsed / budget if budget else 0.0)
        for g in opt.param_groups:
            g["lr"] = config.lr * _lr_at(progress, it, config.schedule)
        it += 1
        net.train()
        if context or blind:  # (inputs, targets, weights) batches and a masked loss
            arrays = (sample_context_batch(rng, stacks, w, centres, config.batch_size,
                                           config.crop_size) if context else
                      sample_blind_batch(rng, stacks, centres, config.batch_size,
                                         config.crop_size))
            tx, tt, tw = (torch.from_numpy(a).to(device) for a in arrays)
            loss, terms = (context_loss if context else blind_loss)(train_net, tx, tt, tw)
        else:
            xi, xj, ww = _sample_batch(rng, stacks, w, pairs, config.batch_size,
                                       config.crop_size)
            ti, tj, tw = (torch.from_numpy(a)[:, None].to(device) for a in (xi, xj, ww))
            loss, terms = nsn2n_losses(train_net, ti, tj, tw, config.lambda_rc,
                                       config.lambda_ic)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # A learning rate of 3e-3 diverged in the benchmark; clipping keeps a
        # rare large step from undoing the run.
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses = {k: float(v) for k, v in terms.items()}
        for k, v in losses.items():
            history[k].append(v)
        last = (config.iterations is not None and it >= config.iterations) or (
            budget is not None and time.perf_counter() - t_train >= budget)
        if last:
            n_iter = it
        elif budget is not None and config.iterations is None:
            n_iter = max(it + 1, round(it * budget / max(time.perf_counter() - t_train, 1e-9)))
        preview = None
        if config.preview_every and ddp.is_main() and (it % config.preview_every == 0 or last):
            net.eval()
            t0 = time.perf_counter()
            # The network's estimate: a second stage is chosen after training, and a 3D
            # one would need the neighbouring slices' estimates too.
            p = model.network_estimate(stacks[0], preview_index, w[0] if context else None,
                                   False)[0]
            infer_per_slice = time.perf_counter() - t0
            preview = noise.inverse(norms[0].inverse(p))
        now = time.perf_counter()
        if t_timed is None:
            # The first step carries one-off set-up (allocations, kernel selection):
            # it is left out of the time per step.
            t_timed = now
            per_it = now - t_train
        else:
            per_it = (now - t_timed) / (it - 1)
        # infer_per_slice is one slice without TTA (both modes / every grid phase)
        n_pred = 8 if config.tta else 1
        if it == 1 and not last and budget is not None and config.iterations is None:
            left = max(budget - (now - t_train), 0.0)  # the budget fixes the training time
        else:
            left = per_it * max(n_iter - it, 0)
        eta = left + infer_per_slice * n_pred * total_slices
        yield NSN2NProgress(stage="train", done=it, total=n_iter, elapsed=time.perf_counter()
                            - t_start, eta=eta, losses=losses, iteration=it, iterations=n_iter,
                            matched_fraction=matched, preview=preview,
                            preview_index=preview_index, model=model)
    net.eval()
    t_den = time.perf_counter()
    model.training = {
        "tau": taus, "matched_fraction": matched, "slice_similarity": similarity,
        "iterations_done": it, "budget_s": budget, "width": width,
        # the in-plane noise correlation that chose the network (None: context given)
        "context": mode, "noise_correlation": float(noise_rho) if np.isfinite(noise_rho) else None,
        "noise_model": noise.to_dict(),
        "device": str(device),
        "world_size": ddp.world_size(),
        "train_shape": list(layout.shape), "axis": layout.axis,
    }

    if model.is_blind:  # the white-noise level of each stack (the blend and stages use it)
        model.training["noise_level"] = [model.noise_level(st) for st in stacks]
    if model.is_blind and config.wiener == "auto":
        from ._blind import choose_wiener

        with torch.inference_mode():
            model.training["wiener"] = choose_wiener(model._predict_all, stacks, config.tta,
                                                     levels=model.training["noise_level"],
                                                     seed=config.seed)
    elif model.is_context and config.wiener == "auto":
        from ._blind import CONTEXT_STAGE

        model.training["wiener"] = dict(CONTEXT_STAGE)

    # 3. denoise the training volume with its own normalisation
    gen = model.iter_predict(volume, axis=axis, normalizers=norms)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            result: DenoiseResult = stop.value
            break
        yield NSN2NProgress(stage="denoise", done=p.done, total=p.total,
                            elapsed=time.perf_counter() - t_start, eta=p.eta, losses=losses,
                            iteration=it, iterations=it, matched_fraction=matched,
                            preview_index=preview_index)
    t_end = time.perf_counter()
    return NSN2NResult(
        model=model,
        denoised=result.denoised,
        uncertainty=result.uncertainty,
        loss_history=history,
        matched_fraction=matched,
        warnings=warnings,
        tau=float(np.mean(taus)),
        slice_similarity=similarity,
        pair_fractions=[round(float(f), 4) for f in pair_fracs.ravel()],
        timings={"guide": t_guide, "train": t_den - t_train, "denoise": t_end - t_den,
                 "total": t_end - t_start},
        pairs=pair_rows,
    )


def train(
    volume,
    axis: int = 0,
    config: NSN2NConfig | None = None,
    callback: Callable[[NSN2NProgress], None] | None = None,
) -> NSN2NResult:
    """Run :func:`iter_train` to the end (``callback`` gets every progress state)."""
    return run_to_end(iter_train(volume, axis=axis, config=config), callback)
