"""NS-N2N training as a generator: guides -> weight maps -> training -> denoising."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._progress import run_to_end
from .._versions import versions
from ._config import NSN2NConfig
from ._guide import guide_stack
from ._model import DenoiseResult, NSN2NModel
from ._volume import prepare
from ._weights import MIN_PAIR_FRACTION, guide_similarity, weight_maps

# Mean matched fraction below which results degrade visibly (the reference
# recommends "well above 0.5").
LOW_MATCH_WARNING = 0.5
# Median correlation of neighbouring guides below which slices are unrelated.
LOW_SIMILARITY_WARNING = 0.25


@dataclass
class NSN2NProgress:
    """State yielded by :func:`iter_train`.

    Attributes
    ----------
    stage : str
        ``"guide"`` (computing weight maps), ``"train"`` or ``"denoise"``.
    iteration, iterations : int
        Optimiser steps done and planned.
    losses : dict of str to float
        Last step's ``total``, ``recon``, ``rc`` and ``ic`` (empty before training).
    matched_fraction : float
        Mean of the weight maps W over all pairs (NaN before they are computed).
    eta, elapsed : float
        Seconds left (estimate, training + denoising) and spent.
    preview : ndarray or None
        Denoised ``preview_index`` slice in the input's scale (every
        ``preview_every`` iterations), else None.
    preview_index : int
        Slice the preview shows (index along the slice axis, first stack).
    done, total : int
        Work units of the current stage (slices for ``guide``/``denoise``).
    """

    stage: str
    iteration: int
    iterations: int
    losses: dict[str, float]
    matched_fraction: float
    eta: float
    elapsed: float
    preview: np.ndarray | None = None
    preview_index: int = 0
    done: int = 0
    total: int = 0


@dataclass
class TrainResult:
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
            "final_losses": final,
            "loss_history": self.loss_history,
            "warnings": list(self.warnings),
            "timings_s": self.timings,
            "normalizers": [n.to_dict() for n in self.model.normalizers],
            "versions": versions(),
        }


def _lr_factor(step: int, total: int, schedule: str) -> float:
    warm = max(1, min(50, total // 20))  # short warm-up: Adam's first steps are large
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    t = (step - warm) / max(1, total - warm)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


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
) -> Generator[NSN2NProgress, None, TrainResult]:
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
    TrainResult
        The model, the denoised volume (input shape, float32, input scale), its
        uncertainty, loss curves, the matched fraction and warnings.

    Raises
    ------
    DuetInputError
        For 2D input, fewer than 3 slices, a wrong axis or a bad config.
    """
    import torch

    from ..devices import resolve_device, seed_everything
    from ..networks.unet import UNet2D
    from ._losses import nsn2n_losses

    config = config or NSN2NConfig()
    t_start = time.perf_counter()
    layout, stacks, norms = prepare(volume, axis)
    device = resolve_device(config.device)
    n_stacks, n_z = stacks.shape[:2]
    n_iter = config.iterations
    preview_index = (n_z // 2 if config.preview_index is None
                     else min(max(config.preview_index, 0), n_z - 1))

    # 1. guides and weight maps (tau is fitted per stack: channels differ in noise)
    guides = np.empty_like(stacks)
    total_slices = n_stacks * n_z
    for s in range(n_stacks):
        for z in range(n_z):
            guides[s, z] = guide_stack(stacks[s, z : z + 1], config)[0]
            done = s * n_z + z + 1
            yield NSN2NProgress("guide", 0, n_iter, {}, float("nan"), float("nan"),
                                time.perf_counter() - t_start, None, preview_index,
                                done, total_slices)
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
    rng = seed_everything(config.seed)
    net = UNet2D(1, 1, width=config.width, depth=config.depth,
                 residual=config.residual).to(device)
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    opt_kw = {"weight_decay": config.weight_decay} if config.optimizer == "adamw" else {}
    opt = opt_cls(net.parameters(), lr=config.lr, **opt_kw)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: _lr_factor(step, n_iter, config.schedule))
    history: dict[str, list[float]] = {k: [] for k in ("total", "recon", "rc", "ic")}
    model = NSN2NModel(net, config, norms, device=device)
    t_train = time.perf_counter()
    infer_per_slice = None  # measured at the first preview, for the ETA
    for it in range(1, n_iter + 1):
        net.train()
        xi, xj, ww = _sample_batch(rng, stacks, w, pairs, config.batch_size, config.crop_size)
        ti, tj, tw = (torch.from_numpy(a)[:, None].to(device) for a in (xi, xj, ww))
        loss, terms = nsn2n_losses(net, ti, tj, tw, config.lambda_rc, config.lambda_ic)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses = {k: float(v) for k, v in terms.items()}
        for k, v in losses.items():
            history[k].append(v)
        preview = None
        if config.preview_every and (it % config.preview_every == 0 or it == n_iter):
            net.eval()
            t0 = time.perf_counter()
            p = model.predict_normalized(stacks[0, preview_index])
            infer_per_slice = time.perf_counter() - t0
            preview = norms[0].inverse(p)
        per_it = (time.perf_counter() - t_train) / it
        per_slice = infer_per_slice if infer_per_slice is not None else 5 * per_it
        eta = per_it * (n_iter - it) + per_slice * (8 if config.tta else 1) * total_slices
        yield NSN2NProgress("train", it, n_iter, losses, matched, eta,
                            time.perf_counter() - t_start, preview, preview_index, it, n_iter)
    net.eval()
    t_den = time.perf_counter()
    model.info = {
        "tau": taus, "matched_fraction": matched, "slice_similarity": similarity,
        "iterations_done": n_iter,
        "train_shape": list(layout.shape), "axis": layout.axis,
    }

    # 3. denoise the training volume with its own normalisation
    gen = model.iter_denoise(volume, axis=axis, normalizers=norms)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            result: DenoiseResult = stop.value
            break
        yield NSN2NProgress("denoise", n_iter, n_iter, losses, matched, p.eta,
                            time.perf_counter() - t_start, None, preview_index, p.done, p.total)
    t_end = time.perf_counter()
    return TrainResult(
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
    )


def train(
    volume,
    axis: int = 0,
    config: NSN2NConfig | None = None,
    callback: Callable[[NSN2NProgress], None] | None = None,
) -> TrainResult:
    """Run :func:`iter_train` to the end (``callback`` gets every progress state)."""
    return run_to_end(iter_train(volume, axis=axis, config=config), callback)
