"""The Self2Seg alternation, written as a generator (one state per alternation).

Each alternation (a) fits one expert per region on the current regions and
(b) updates the mask by minimising the convex energy with the experts'
filtered squared residuals as data terms (:mod:`._solver`).  The energy

    E(labels) = sum_k sum_{labels == k} r_k + lam * TV_K(labels)

is evaluated with the experts in use after every alternation.  It cannot
increase: new experts are kept only if they do not raise the energy of the
current mask, and a mask update is kept only if it lowers the energy (the
mask-prior term only restricts how far the mask moves).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .._errors import DuetInputError
from .._progress import run_to_end
from ..intensity import Normalizer, as_float_image, fit_normalizer
from ._config import Self2SegConfig
from ._experts import ExpertOutput, box_filter, make_expert
from ._regions import auto_labels, validate_regions
from ._solver import potts_energy, solve_binary, solve_multiclass

__all__ = ["Self2SegState", "Self2SegProgress", "Self2SegResult", "iter_self2seg", "self2seg",
           "prepare_image"]

_MIN_SIDE = 8
#: Least time between two progress events within an alternation (``progress=True``); a
#: consumer that stops the generator (Cancel) waits at most about this long, plus one
#: expert's prediction or one mask update.
PROGRESS_INTERVAL = 0.2


@dataclass
class Self2SegState:
    """Snapshot yielded after every alternation (arrays in the input's intensity scale)."""

    alternation: int
    max_alternations: int
    labels: np.ndarray  # (Y, X) uint8
    u: np.ndarray  # (K, Y, X) float32
    experts: np.ndarray  # (K, Y, X) or (K, Y, X, C) float32
    denoised: np.ndarray  # (Y, X) or (Y, X, C) float32
    energy: float
    energies: list[float]
    elapsed: float


@dataclass
class Self2SegProgress:
    """Progress within an alternation, yielded between states with ``progress=True``.

    ``stage`` is "experts" (training the region experts: ``step`` of
    ``total_steps`` training steps of this alternation, all experts together;
    for constant and linear experts one step per expert) or "mask" (the mask
    update has started: ``step`` 0 of ``total_steps`` 1).  Early stopping can
    end an expert's training before its share of ``total_steps``.
    """

    stage: str
    alternation: int
    max_alternations: int
    step: int
    total_steps: int
    elapsed: float
    expert: int | None = None  # class of the expert in training (None: shared pretraining)
    plane: int = 0  # set by :func:`iter_self2seg_stack`
    n_planes: int = 1

    @property
    def fraction(self) -> float:
        """Share of the whole run done (alternations count equally, the mask as 10 %)."""
        within = self.step / max(self.total_steps, 1)
        within = 0.9 * within if self.stage == "experts" else 0.9 + 0.1 * within
        per_plane = (self.alternation - 1 + min(within, 1.0)) / max(self.max_alternations, 1)
        return (self.plane + per_plane) / max(self.n_planes, 1)


@dataclass
class Self2SegResult:
    """Final result of a Self2Seg run."""

    labels: np.ndarray
    u: np.ndarray
    experts: np.ndarray
    denoised: np.ndarray
    energies: list[float]
    alternations: int
    stop_reason: str
    timings: dict
    config: Self2SegConfig
    image_shape: tuple = ()
    image_dtype: str = ""
    lam: float = float("nan")
    mu: float = 0.0
    scale: float = float("nan")
    history: list[dict] = field(default_factory=list)
    filter_size: int = 0
    noise_sigma: float = float("nan")
    local_energy: bool = False
    shared_pretrain: bool = False

    @property
    def mask(self) -> np.ndarray:
        """Foreground mask (labels == 1) for two classes; labels > 0 otherwise."""
        return self.labels > 0

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary: parameters, energies, timings, versions, image info."""
        from .._versions import versions

        counts = np.bincount(self.labels.ravel(), minlength=self.config.n_classes)
        return {
            "method": "self2seg",
            "parameters": self.config.to_dict(),
            "resolved": {"lam": float(self.lam), "mu": float(self.mu),
                         "robust_scale": float(self.scale),
                         "filter_size": int(self.filter_size),
                         "local_energy": bool(self.local_energy),
                         "shared_pretrain": bool(self.shared_pretrain),
                         "noise_sigma": float(self.noise_sigma)},
            "image": {"shape": [int(s) for s in self.image_shape], "dtype": self.image_dtype},
            "energies": [float(e) for e in self.energies],
            "alternations": int(self.alternations),
            "stop_reason": self.stop_reason,
            "class_fractions": [float(c) / self.labels.size for c in counts],
            "history": self.history,
            "timings": {k: (float(v) if np.isscalar(v) else v) for k, v in self.timings.items()},
            "versions": versions(),
        }


def prepare_image(image) -> tuple[np.ndarray, Normalizer, bool]:
    """Validate a 2D grey or RGB(A) image; return ``(f (C,Y,X) normalised, normalizer, rgb)``.

    The normaliser maps the 0.1/99.9 percentiles to 0/1 (one map for all
    channels, so colours keep their ratios).
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    rgb = False
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3]
        rgb = True
    elif arr.ndim != 2:
        raise DuetInputError(
            f"Self2Seg needs a 2D grey (Y, X) or RGB (Y, X, 3) image, got shape {arr.shape}; "
            "for a stack, run it on each 2D slice"
        )
    x = as_float_image(arr, name="image")
    if min(x.shape[:2]) < _MIN_SIDE:
        raise DuetInputError(f"image {x.shape[:2]} is too small: both sides must be >= {_MIN_SIDE}")
    norm = fit_normalizer(x, mode="percentile", low=0.1, high=99.9)
    f = norm.forward(x)
    f = np.moveaxis(f, -1, 0) if rgb else f[None]
    return np.ascontiguousarray(f, dtype=np.float32), norm, rgb


def _robust_scale(r: np.ndarray) -> float:
    """1.4826 * MAD of the pairwise data-term differences (mean over class pairs)."""
    k = r.shape[0]
    vals = []
    for i in range(k):
        for j in range(i + 1, k):
            g = (r[i] - r[j]).ravel()
            vals.append(1.4826 * float(np.median(np.abs(g - np.median(g)))))
    s = float(np.mean(vals))
    if not s > 0:  # degenerate (e.g. piecewise-constant noise-free image)
        s = float(np.mean([np.std(r[i] - r[j]) for i in range(k) for j in range(i + 1, k)]))
    return s if s > 0 else 1e-6


_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def estimate_noise(f: np.ndarray) -> float:
    """Robust white-noise std of a (C, Y, X) image (median form of Immerkaer's estimator)."""
    vals = []
    for ch in f:
        lap = ndi.convolve(ch, _IMMERKAER, mode="reflect")
        vals.append(1.4826 * float(np.median(np.abs(lap))) / 6.0)  # ||kernel|| = 6
    return float(np.mean(vals))


def _noise_scale(f: np.ndarray, outs: list[ExpertOutput], sigma_n: float, filter_size: int,
                 variances: np.ndarray | None = None) -> float:
    """Noise std of the data-term difference ``g = r_j - r_i``.

    With residuals ``e = box(f - D)`` sharing the same noise ``n`` (std
    ``sigma_n / F`` after an F x F box filter) and data terms ``e^2 / v``,
    ``g = e_j^2 / v_j - e_i^2 / v_i`` carries the noise
    ``2 (e_j / v_j - e_i / v_i) n``.  With ``v = 1`` this is
    ``2 |D_i - D_j| sigma_n / F``.
    """
    k = len(outs)
    v = np.ones(k, np.float32) if variances is None else np.asarray(variances, np.float32)
    res = [box_filter(f - o.blind, filter_size) / v[i] for i, o in enumerate(outs)]
    vals = []
    for i in range(k):
        for j in range(i + 1, k):
            diff = np.sqrt(((res[j] - res[i]) ** 2).sum(axis=0))
            vals.append(2.0 * float(np.median(diff)) * sigma_n / max(1, filter_size))
    return float(np.mean(vals))


def _data_terms(f: np.ndarray, outs: list[ExpertOutput], filter_size: int,
                masks: list[np.ndarray] | None = None,
                var_floor: float = 0.0,
                local_energy: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-class data term from the channel-summed squared box-filtered blind residual ``e^2``.

    Without ``masks``: ``r_k = e_k^2`` (Chan-Vese).  With ``masks`` (region
    variance, a Gaussian likelihood per region): ``r_k = e_k^2 / v_k + log v_k``
    with ``v_k`` the mean of ``e_k^2`` over region ``k`` (its maximum-likelihood
    variance, at least ``var_floor``).  A region whose intensities spread
    more (nuclei of varied brightness) then claims the pixels between the
    two levels that a fixed midpoint threshold gives away.

    Returns ``(r, v)``; ``v`` is None without masks.
    """
    r = np.empty((len(outs),) + f.shape[1:], np.float32)
    for k, out in enumerate(outs):
        res = f - out.blind
        if local_energy:
            # Square, then average: zero-mean errors (a texture the expert cannot
            # predict) still count, where averaging first would cancel them.
            r[k] = box_filter((res * res).sum(axis=0), filter_size)
        else:
            res = box_filter(res, filter_size)
            r[k] = (res * res).sum(axis=0)
    if masks is None:
        return r, None
    v = np.array([max(float(r[k][m].mean()) if m.any() else 0.0, var_floor, 1e-12)
                  for k, m in enumerate(masks)], np.float32)
    for k in range(len(outs)):
        r[k] = r[k] / v[k] + np.float32(np.log(v[k]))
    return r, v


def auto_filter_size(f: np.ndarray, masks: list[np.ndarray], sigma_n: float,
                     z: float = 2.0, max_size: int = 3) -> int:
    """Smallest odd box size F <= ``max_size`` with ``delta * F / (2 sigma_n) >= z``.

    ``delta`` is the smallest difference between the (channel-mean) intensity
    means of two initial regions adjacent in brightness; ``delta / 2`` is the
    distance of the midpoint threshold from either level and ``sigma_n / F``
    the noise left after an F x F box filter.  Clean images get no filter
    (sharp data term at edges), noisy ones a 3 x 3 box.
    """
    g = f.mean(axis=0)
    means = sorted(float(g[m].mean()) for m in masks if m.any())
    if len(means) < 2 or not sigma_n > 0:
        return 1
    delta = min(b - a for a, b in zip(means[:-1], means[1:], strict=True))
    size = 1
    while size < max_size and delta * size / (2.0 * sigma_n) < z:
        size += 2
    return size


# Share of a class's seed pixels the first mask may put in another class before lambda
# is raised (noise specks inside a seed box are fine; a contradicted box is not).
_SEED_TOLERANCE = 0.05


def _seed_disagreement(fg: np.ndarray, seeds: np.ndarray) -> float:
    """Largest fraction of one class's seed pixels that the mask puts in the other class."""
    return max(float(np.mean(fg[seeds == 1])), float(np.mean(~fg[seeds == 2])))


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return (labels[None] == np.arange(k, dtype=labels.dtype)[:, None, None]).astype(np.float32)


def _train_mask(labels: np.ndarray, k: int, erode: bool) -> np.ndarray:
    """Region used to train expert ``k``: the class, eroded by one pixel when that leaves
    enough of it, so experts do not learn the blurred boundary of the other region."""
    m = labels == k
    if erode:
        e = ndi.binary_erosion(m, iterations=1, border_value=1)
        if e.sum() >= max(64, 0.25 * m.sum()):
            return e
    return m


def iter_self2seg(
    image, regions=None, config: Self2SegConfig | None = None, *, progress: bool = False,
) -> Generator[Self2SegState | Self2SegProgress, None, Self2SegResult]:
    """Run Self2Seg, yielding a :class:`Self2SegState` after every alternation.

    Parameters
    ----------
    image : array (Y, X) or (Y, X, 3|4)
        Grey image of any dtype, or RGB(A) (alpha dropped).
    regions : int array (Y, X), optional
        Seed regions: 0 = unassigned, ``k + 1`` = seed pixel of class ``k``
        (for two classes 1 = background seed, 2 = foreground seed); see
        :func:`boxes_to_regions`.  None: automatic initialisation.
    config : Self2SegConfig, optional
    progress : bool
        Also yield :class:`Self2SegProgress` events within an alternation
        (about every :data:`PROGRESS_INTERVAL` seconds while the experts
        train, and when the mask update starts), so a consumer can show
        progress and stop the run within a fraction of a second instead of at
        the end of an alternation.  The results are the same either way.

    Returns
    -------
    Self2SegResult
        As the generator's return value (use :func:`self2seg` to get it).

    Notes
    -----
    Stopping iteration between yields (``gen.close()`` or just dropping it)
    leaves nothing running: all work happens inside ``next()``.
    """
    cfg = config if config is not None else Self2SegConfig()
    if not isinstance(cfg, Self2SegConfig):
        raise DuetInputError("config must be a Self2SegConfig")
    t_start = time.perf_counter()
    arr = np.asarray(image)
    f, norm, rgb = prepare_image(arr)
    n_ch, h, w = f.shape
    k_cls = cfg.n_classes

    if regions is not None:
        seeds = validate_regions(regions, (h, w), k_cls)
        init_masks = [seeds == k + 1 for k in range(k_cls)]
        labels = None  # no mask yet: the first update is free (no prior)
    else:
        seeds = None
        labels = auto_labels(f.mean(axis=0), k_cls, method=cfg.init, sigma=cfg.init_sigma,
                             invert=cfg.invert, noise_floor=cfg.init_noise_floor)
        init_masks = [labels == k for k in range(k_cls)]
        for k, m in enumerate(init_masks):
            if not m.any():
                raise DuetInputError(f"automatic initialisation left class {k} empty; give boxes")

    sigma_n = estimate_noise(f)
    user_cfg = cfg
    # The constant warm-up is for the automatic start only: with seeds, the learned
    # experts train on the user's seeds from the first alternation.
    warmup = cfg.warmup_constant and seeds is None and cfg.experts != "constant"
    if cfg.local_energy is None:
        cfg = cfg.replace(local_energy=seeds is not None)
    if cfg.shared_pretrain is None:
        cfg = cfg.replace(shared_pretrain=seeds is None)
    if cfg.filter_size is None:
        cfg = cfg.replace(filter_size=auto_filter_size(f, init_masks, sigma_n, cfg.filter_snr))

    torch_mod = None
    device = None
    old_threads = None
    needs_torch = cfg.experts == "cnn"
    if needs_torch:
        import torch as torch_mod

        from ..devices import resolve_device

        device = resolve_device(cfg.device)
        # The experts are tiny networks trained on batches of 8 small crops: on a CPU one
        # thread is fastest (256^2: 2.9-4.2 s with 1 thread, 9 s with 2 on 2 cores), since
        # more threads only add synchronisation and fight any other work (napari included).
        threads = cfg.threads if cfg.threads is not None else (1 if device.type == "cpu" else None)
        if threads is not None:
            old_threads = torch_mod.get_num_threads()
            torch_mod.set_num_threads(threads)

    # The two-class mask solver follows the experts onto a GPU; on the CPU NumPy is faster.
    solver_device = device if device is not None and device.type != "cpu" else None
    timings: dict[str, Any] = {"prepare": time.perf_counter() - t_start, "experts": 0.0,
                               "masks": 0.0, "per_alternation": []}
    history: list[dict] = []
    energies: list[float] = []
    experts_obj: dict[tuple[str, int], Any] = {}
    outs: list[ExpertOutput] | None = None
    r: np.ndarray | None = None
    lam = mu = scale = None
    p_warm = None
    u_relaxed = None
    stop_reason = "max_alternations"
    it = 0
    last_event = [-np.inf]

    def event(stage: str, step: int, total: int, expert: int | None = None,
              force: bool = False) -> Self2SegProgress | None:
        """A progress event, or None when progress is off or the last one is too recent."""
        now = time.perf_counter()
        if not progress or (not force and now - last_event[0] < PROGRESS_INTERVAL):
            return None
        last_event[0] = now
        return Self2SegProgress(stage, it, cfg.max_alternations, int(step), int(total),
                                now - t_start, expert)

    def planned_steps(kind: str, k: int) -> int:
        """Training steps the class ``k`` expert gets this alternation (1 if not a CNN)."""
        if kind != "cnn":
            return 1
        expert = experts_obj.get((kind, k))
        if expert is None:
            warm = bool(cfg.shared_pretrain)  # starts from the shared weights
        else:
            warm = expert.__dict__.get("total_steps", 0) > 0
        return max(1, cfg.expert_steps_warm if warm else cfg.expert_steps)

    def train(expert, mask, steps: int, done: int, total: int, k: int | None):
        """Fit ``expert`` (as ``expert.fit``), yielding progress events while it trains."""
        iter_fit = getattr(expert, "iter_fit", None) if progress else None
        if iter_fit is None:
            return expert.fit(f, mask, steps=steps)
        gen = iter_fit(f, mask, steps=steps)
        try:
            while True:
                try:
                    step = next(gen)
                except StopIteration as stop:
                    return stop.value
                ev = event("experts", done + step, total, k)
                if ev is not None:
                    yield ev
        finally:
            gen.close()

    try:
        for it in range(1, cfg.max_alternations + 1):
            t_alt = time.perf_counter()
            kind = cfg.experts
            if warmup and it == 1:
                kind = "constant"
            # -- (a) experts ---------------------------------------------------
            new_outs = []
            infos = []
            regions_k = []
            pretrain = (kind == "cnn" and cfg.shared_pretrain and "base" not in experts_obj)
            plan = [planned_steps(kind, k) for k in range(k_cls)]
            total_steps = sum(plan) + (max(1, cfg.expert_steps) if pretrain else 0)
            steps_done = 0
            ev = event("experts", 0, total_steps, force=True)
            if ev is not None:
                yield ev
            for k in range(k_cls):
                if labels is None or it == 1:
                    m = init_masks[k]
                else:
                    m = _train_mask(labels, k, erode=kind != "constant")
                    if seeds is not None:
                        # The user's seeds stay in their expert's training region,
                        # and never in another's, whatever the mask did.
                        m = (m & ((seeds == 0) | (seeds == k + 1))) | (seeds == k + 1)
                if not m.any():
                    raise DuetInputError(f"class {k} has no pixels to train its expert on")
                regions_k.append(init_masks[k] if (labels is None or it == 1) else labels == k)
                key = (kind, k)
                if key not in experts_obj:
                    experts_obj[key] = make_expert(kind, channels=n_ch, config=cfg, device=device,
                                                   seed=cfg.seed * 1009 + k)
                    if kind == "cnn" and cfg.shared_pretrain:
                        if "base" not in experts_obj:
                            # One Noise2Fast denoiser of the whole image, which every region
                            # expert then specialises: small regions get a good start.
                            base = make_expert("cnn", channels=n_ch, config=cfg, device=device,
                                               seed=cfg.seed * 1009 + 997)
                            base_out = yield from train(base, np.ones((h, w), bool),
                                                        cfg.expert_steps, steps_done,
                                                        total_steps, None)
                            steps_done += max(1, cfg.expert_steps)
                            experts_obj["base"] = base
                            experts_obj["base_full"] = base_out.full
                        experts_obj[key].load_weights_from(experts_obj["base"],
                                                           cfg.finetune_lr_factor)
                steps = cfg.expert_steps if experts_obj[key].__dict__.get("total_steps", 0) == 0 \
                    else cfg.expert_steps_warm
                try:
                    out = yield from train(experts_obj[key], m, max(1, steps), steps_done,
                                           total_steps, k)
                except ValueError as exc:
                    raise DuetInputError(f"cannot train the class {k} expert: {exc}") from None
                steps_done += plan[k]
                ev = event("experts", steps_done, total_steps, k)
                if ev is not None:
                    yield ev
                if kind == "cnn" and cfg.ensemble_shared and "base_full" in experts_obj:
                    out.full = 0.5 * (out.full + experts_obj["base_full"])
                new_outs.append(out)
                infos.append(out.info)
            # Floor of a region's variance: the filtered noise alone (F x F box).
            var_floor = n_ch * sigma_n ** 2
            if not cfg.local_energy:
                var_floor /= max(1, cfg.filter_size) ** 2
            r_new, v_new = _data_terms(f, new_outs, cfg.filter_size,
                                       regions_k if cfg.region_variance else None, var_floor,
                                       cfg.local_energy)
            if lam is None:
                # lambda relative to the data: the larger of the spread of g (signal) and
                # lam_noise x the std of g's noise, so noise blobs cost more at high noise.
                mad = _robust_scale(r_new)
                s_noise = _noise_scale(f, new_outs, sigma_n, cfg.filter_size, v_new)
                scale = max(mad, cfg.lam_noise * s_noise)
                timings["scale_mad"], timings["scale_noise"] = mad, s_noise
                mult = cfg.lam if cfg.lam is not None else cfg.lam_scale
                lam = float(mult) * scale
                mu = float(cfg.mu_scale) * scale
            accepted_experts = True
            e_cur = None  # energy of the current labels with the experts in use
            if r is not None and labels is not None:
                e_old = energies[-1]  # same labels, same experts, same lambda
                e_new = potts_energy(r_new, labels, lam)
                accepted_experts = e_new <= e_old
                e_cur = e_new if accepted_experts else e_old
            elif labels is not None:
                e_cur = potts_energy(r_new, labels, lam)
            if accepted_experts:
                outs, r = new_outs, r_new
            t_exp = time.perf_counter() - t_alt
            timings["experts"] += t_exp

            # -- (b) mask ------------------------------------------------------
            ev = event("mask", 0, 1, force=True)
            if ev is not None:
                yield ev
            t_mask = time.perf_counter()
            prior = labels if (labels is not None and mu > 0) else None
            if k_cls == 2:
                g = r[0] - r[1]
                if prior is not None:
                    g = g + mu * (2.0 * (prior == 1) - 1.0)
                fg, rof_res = solve_binary(g, lam, p0=p_warm, tol=cfg.solver_tol,
                                           max_iter=cfg.solver_max_iter, device=solver_device)
                if seeds is not None and labels is None and cfg.lam is None:
                    # The seeds are labelled pixels: where the first mask contradicts many
                    # of them, the data term is too noisy for this lambda (textures), so
                    # lambda grows until the seeds agree (at most 4x).
                    for _ in range(2):
                        if _seed_disagreement(fg, seeds) <= _SEED_TOLERANCE:
                            break
                        lam, mu = 2.0 * lam, 2.0 * mu
                        fg, rof_res = solve_binary(g, lam, tol=cfg.solver_tol,
                                                   max_iter=cfg.solver_max_iter,
                                                   device=solver_device)
                p_warm = rof_res.p
                cand = fg.astype(np.uint8)
                solver_iters = rof_res.iterations
                cand_u = None
            else:
                d = r.copy()
                if prior is not None:
                    d += 0.5 * mu * (1.0 - 2.0 * _one_hot(prior, k_cls))
                mres = solve_multiclass(d, lam, u0=u_relaxed, tol=cfg.solver_tol,
                                        max_iter=cfg.solver_max_iter)
                cand = np.argmax(mres.u, axis=0).astype(np.uint8)
                cand_u = mres.u
                solver_iters = mres.iterations
            if seeds is not None and labels is None:
                # First update from boxes: a class the solver emptied keeps its seeds.
                for k in range(k_cls):
                    if not (cand == k).any():
                        cand[seeds == k + 1] = k
            accepted_mask, why = True, ""
            e_cand = potts_energy(r, cand, lam)
            if labels is not None:
                a_old = np.bincount(labels.ravel(), minlength=k_cls).astype(float)
                a_new = np.bincount(cand.ravel(), minlength=k_cls).astype(float)
                ratio = np.maximum(a_new, 1) / np.maximum(a_old, 1)
                if (a_new == 0).any():
                    accepted_mask, why = False, "a region would vanish"
                elif (ratio > cfg.max_fraction_change).any() or \
                        (ratio < 1 / cfg.max_fraction_change).any():
                    accepted_mask, why = False, "a region's area would change too much"
                elif e_cand > e_cur:
                    accepted_mask, why = False, "energy would increase"
            changed = 1.0 if labels is None else float(np.mean(cand != labels))
            if accepted_mask:
                labels = cand
                if cand_u is not None:
                    u_relaxed = cand_u
            else:
                changed = 0.0
            t_m = time.perf_counter() - t_mask
            timings["masks"] += t_m
            energy = e_cand if accepted_mask else e_cur
            energies.append(float(energy))
            timings["per_alternation"].append(
                {"experts_s": t_exp, "mask_s": t_m, "solver_iterations": int(solver_iters)})
            history.append({
                "alternation": it, "expert_kind": kind, "experts_accepted": bool(accepted_experts),
                "mask_accepted": bool(accepted_mask), "mask_rejected_because": why,
                "changed_fraction": changed, "energy": float(energy),
                "expert_info": infos,
            })
            state = _make_state(it, cfg, labels, u_relaxed if k_cls > 2 else None, outs, norm,
                                rgb, energy, energies, time.perf_counter() - t_start)
            yield state

            # -- stop rule -------------------------------------------------------
            # Kind switch (warm-up -> learned experts) is not a convergence sign.
            switched = warmup and it == 1
            if it >= 2 and changed < cfg.stop_changed and not switched:
                stop_reason = "mask converged"
                break
            if len(energies) >= 3 and not (warmup and it == 2):
                d_prev = (energies[-3] - energies[-2]) / max(abs(energies[-3]), 1e-12)
                d_cur = (energies[-2] - energies[-1]) / max(abs(energies[-2]), 1e-12)
                if d_cur <= 0 or d_cur < cfg.stop_ratio * d_prev:
                    stop_reason = "energy decrease below stop_ratio of the previous one"
                    break
    finally:
        if old_threads is not None and torch_mod is not None:
            torch_mod.set_num_threads(old_threads)
        experts_obj.clear()

    timings["total"] = time.perf_counter() - t_start
    final = _make_state(it, cfg, labels, u_relaxed if k_cls > 2 else None, outs, norm, rgb,
                        energies[-1], energies, timings["total"])
    return Self2SegResult(
        labels=final.labels, u=final.u, experts=final.experts, denoised=final.denoised,
        energies=list(energies), alternations=it, stop_reason=stop_reason, timings=timings,
        config=user_cfg, image_shape=tuple(arr.shape), image_dtype=str(arr.dtype),
        lam=float(lam), mu=float(mu), scale=float(scale), history=history,
        filter_size=int(cfg.filter_size), noise_sigma=float(sigma_n),
        local_energy=bool(cfg.local_energy), shared_pretrain=bool(cfg.shared_pretrain),
    )


def _make_state(it, cfg, labels, u_relaxed, outs, norm, rgb, energy, energies, elapsed):
    k_cls = cfg.n_classes
    onehot = _one_hot(labels, k_cls)
    u = onehot if u_relaxed is None else u_relaxed.astype(np.float32)
    full = np.stack([o.full for o in outs])  # (K, C, Y, X) normalised
    composite = (onehot[:, None] * full).sum(axis=0)  # (C, Y, X)
    if rgb:
        experts = norm.inverse(np.moveaxis(full, 1, -1))
        denoised = norm.inverse(np.moveaxis(composite, 0, -1))
    else:
        experts = norm.inverse(full[:, 0])
        denoised = norm.inverse(composite[0])
    return Self2SegState(
        alternation=it, max_alternations=cfg.max_alternations, labels=labels.astype(np.uint8),
        u=u, experts=experts.astype(np.float32), denoised=denoised.astype(np.float32),
        energy=float(energy), energies=list(energies), elapsed=float(elapsed),
    )


def self2seg(
    image, regions=None, config: Self2SegConfig | None = None,
    callback: Callable[[Self2SegState], None] | None = None,
) -> Self2SegResult:
    """Run :func:`iter_self2seg` to the end and return its :class:`Self2SegResult`.

    ``callback`` is called with every :class:`Self2SegState` (e.g. to print
    the energy per alternation).
    """
    return run_to_end(iter_self2seg(image, regions, config), callback)
