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
from functools import cached_property
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..core.errors import DuetInputError
from ..core.intensity import Normalizer, as_float_image, fit_normalizer
from ..core.photon import StabilizedScale, fit_poisson_gaussian, gat
from ..core.progress import Progress, run_to_end
from ._borders import refine_borders
from ._config import Self2SegConfig
from ._energy import (
    auto_filter_size,
    data_terms,
    estimate_noise,
    noise_scale,
    robust_scale,
)
from ._experts import ExpertOutput, make_expert
from ._regions import auto_labels, validate_regions
from ._solver import potts_energy, solve_binary, solve_multiclass

__all__ = ["Self2SegState", "Self2SegProgress", "Self2SegResult", "iter_self2seg", "self2seg",
           "prepare_image"]

_MIN_SIDE = 8
#: Largest smoothing (pixels) of the automatic start.
_MAX_INIT_SIGMA = 8.0
#: Noise floor of the first, scale-measuring pass of the automatic start.
_FIRST_PASS_FLOOR = 1.5
#: Least time between two progress events within an alternation (``progress=True``); a
#: consumer that stops the generator (Cancel) waits at most about this long, plus one
#: expert's prediction or one mask update.
PROGRESS_INTERVAL = 0.2


@dataclass(kw_only=True)
class Self2SegState(Progress):
    """Snapshot yielded after every alternation (arrays in the input's intensity scale).

    Stage ``"alternation"``: ``done`` (= ``alternation``) of ``total``
    (= ``max_alternations``) alternations.
    """

    alternation: int
    max_alternations: int
    labels: np.ndarray  # (Y, X) uint8
    u: np.ndarray  # (K, Y, X) float32
    experts: np.ndarray  # (K, Y, X) or (K, Y, X, C) float32
    denoised: np.ndarray  # (Y, X) or (Y, X, C) float32
    energy: float
    energies: list[float]

    def __post_init__(self) -> None:
        self.stage = self.stage or "alternation"
        self.done, self.total = int(self.alternation), int(self.max_alternations)

    def fields(self) -> tuple[str, int | None, int | None, dict[str, Any]]:
        """Alternations done of planned, and the energy (see :meth:`Progress.fields`)."""
        return ("self2seg", int(self.done), int(self.total) or None,
                {"alternation": self.alternation, "energy": self.energy})


@dataclass(kw_only=True)
class Self2SegProgress(Progress):
    """Progress within an alternation, yielded between states with ``progress=True``.

    ``stage`` is "experts" (training the region experts: ``done`` (``step``) of
    ``total`` training steps of this alternation, all experts
    together; for constant and linear experts one step per expert) or "mask"
    (the mask update has started: step 0 of 1).  Early stopping can end an
    expert's training before its share of ``total``.
    """

    alternation: int
    max_alternations: int
    expert: int | None = None  # class of the expert in training (None: shared pretraining)
    plane: int = 0  # set by :func:`iter_self2seg_stack`
    n_planes: int = 1

    @property
    def fraction(self) -> float:
        """Share of the whole run done (alternations count equally, the mask as 10 %)."""
        within = self.done / max(self.total, 1)
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
    checks: dict = field(default_factory=dict)  # _checks.ResultCheck.to_dict(): warnings, hints
    filter_size: int = 0
    noise_sigma: float = float("nan")
    local_energy: bool = False
    shared_pretrain: bool = False
    noise: dict = field(default_factory=dict)
    borders: dict = field(default_factory=dict)  # _borders.BorderRefinement.to_dict()

    @property
    def mask(self) -> np.ndarray:
        """Foreground mask (labels == 1) for two classes; labels > 0 otherwise."""
        return self.labels > 0

    @cached_property
    def instances(self) -> np.ndarray:
        """Instance labels (int32, 0 = background) of every non-background class.

        Connected components, touching objects split by a watershed on the
        distance transform (:func:`~napari_duet.self2seg.label_instances`).
        """
        from ._instances import label_instances

        return label_instances(self.labels, self.config.n_classes)

    def save(self, folder, **kwargs) -> list:
        """Write mask.tif, labels.tif, denoised.tif, expert_<k>.tif and report.json into
        ``folder`` (see :func:`~._save.save_self2seg` for the options); returns the paths."""
        from ._save import save_self2seg

        return save_self2seg(self, folder, **kwargs)

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary: parameters, energies, timings, versions, image info."""
        from ..core.versions import versions

        counts = np.bincount(self.labels.ravel(), minlength=self.config.n_classes)
        return {
            "method": "self2seg",
            "parameters": self.config.to_dict(),
            "resolved": {"lam": float(self.lam), "mu": float(self.mu),
                         "robust_scale": float(self.scale),
                         "filter_size": int(self.filter_size),
                         "local_energy": bool(self.local_energy),
                         "shared_pretrain": bool(self.shared_pretrain),
                         "noise_sigma": float(self.noise_sigma),
                         "noise_model": self.noise, "border_refinement": self.borders},
            "image": {"shape": [int(s) for s in self.image_shape], "dtype": self.image_dtype},
            "energies": [float(e) for e in self.energies],
            "alternations": int(self.alternations),
            "stop_reason": self.stop_reason,
            "checks": self.checks,
            "class_fractions": [float(c) / self.labels.size for c in counts],
            "history": self.history,
            "timings": {k: (float(v) if np.isscalar(v) else v) for k, v in self.timings.items()},
            "versions": versions(),
        }


def prepare_image(image, noise_model: str = "gaussian"
                  ) -> tuple[np.ndarray, Normalizer, bool, dict]:
    """Validate a 2D grey or RGB image; return ``(f (C,Y,X) normalised, map, rgb, noise)``.

    The normaliser maps the 0.1/99.9 percentiles to 0/1 (one map for all
    channels, so colours keep their ratios).  With ``noise_model``
    "poisson-gaussian" (or "auto" when the fit finds noise that grows with
    the signal, as in raw camera images) the image is first stabilised by
    the generalised Anscombe transform, so the data terms, the noise
    estimate and the automatic start all see noise of one variance; the map
    returned then inverts both steps.  ``noise`` describes the fit.
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
    noise: dict = {"model": "gaussian"}
    stab = None
    if noise_model != "gaussian" and not rgb:
        fit = fit_poisson_gaussian(x)
        noise = fit.to_dict()
        if noise_model == "poisson-gaussian" and fit.a <= 0:
            raise DuetInputError("noise_model='poisson-gaussian', but the image's noise does not "
                                 "grow with its signal; use 'gaussian' or 'auto'")
        if noise_model == "poisson-gaussian" or fit.signal_dependent:
            noise["model"] = "poisson-gaussian"
            stab = fit
            x = gat(x, fit.a, fit.b).astype(np.float32)
    norm = fit_normalizer(x, mode="percentile", low=0.1, high=99.9)
    f = norm.forward(x)
    f = np.moveaxis(f, -1, 0) if rgb else f[None]
    if stab is not None:
        norm = StabilizedScale(stab, norm)
    return np.ascontiguousarray(f, dtype=np.float32), norm, rgb, noise


# Share of a class's seed pixels the first mask may put in another class before lambda
# is raised (noise specks inside a seed box are fine; a contradicted box is not).
_SEED_TOLERANCE = 0.05


def _seed_disagreement(fg: np.ndarray, seeds: np.ndarray) -> float:
    """Largest fraction of one class's seed pixels that the mask puts in the other class."""
    return max(float(np.mean(fg[seeds == 1])), float(np.mean(~fg[seeds == 2])))


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    """(K, Y, X) float32 indicator images of the labels 0 .. k - 1."""
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
    run = _setup(image, regions, config, progress)
    try:
        for it in range(1, run.cfg.max_alternations + 1):
            run.it = it
            t_alt = time.perf_counter()
            # (a) experts: fit one per region, keep them if they do not raise the energy
            kind = _expert_kind(run)
            new_outs, infos, regions_k = yield from _train_experts(run, kind)
            accepted_experts, e_cur = _adopt_experts(run, new_outs, regions_k)
            t_exp = time.perf_counter() - t_alt
            run.timings["experts"] += t_exp
            # (b) mask: minimise the energy with the experts in use
            yield from _event(run, "mask", 0, 1, force=True)
            t_mask = time.perf_counter()
            step = _update_mask(run, e_cur)
            _record(run, kind, infos, accepted_experts, step, t_exp,
                    time.perf_counter() - t_mask)
            yield _state_of(run, step.energy, time.perf_counter() - run.t_start)
            reason = _stop_reason(run, step.changed)
            if reason is not None:
                run.stop_reason = reason
                break
    finally:
        _release(run)
    return _finish(run)


@dataclass
class _Run:
    """Everything one Self2Seg run carries from alternation to alternation."""

    f: np.ndarray  # (C, Y, X) normalised image
    norm: Normalizer
    rgb: bool
    cfg: Self2SegConfig  # with the automatic choices resolved
    user_cfg: Self2SegConfig  # as given (stored in the result)
    image_shape: tuple
    image_dtype: str
    seeds: np.ndarray | None  # validated seed regions (None: automatic start)
    init_masks: list[np.ndarray]  # each class's first training region
    labels: np.ndarray | None  # current mask (None: no mask yet, with seeds)
    sigma_n: float  # white-noise std of ``f``
    warmup: bool  # constant experts in the first alternation
    progress: bool
    t_start: float
    device: Any = None  # torch device of the CNN experts (None: no torch)
    solver_device: Any = None
    torch_mod: Any = None
    old_threads: int | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    energies: list[float] = field(default_factory=list)
    experts_obj: dict[Any, Any] = field(default_factory=dict)
    outs: list[ExpertOutput] | None = None  # the experts in use
    r: np.ndarray | None = None  # their data terms
    lam: float | None = None
    mu: float | None = None
    scale: float | None = None
    p_warm: np.ndarray | None = None  # dual variable of the last two-class solve
    u_relaxed: np.ndarray | None = None  # relaxed labels of the last multiclass solve
    stop_reason: str = "max_alternations"
    noise: dict = field(default_factory=dict)  # the noise model found (report)
    it: int = 0
    last_event: float = -np.inf


@dataclass
class _MaskStep:
    """Outcome of one mask update."""

    accepted: bool
    why: str  # why the candidate mask was rejected ("" when accepted)
    changed: float  # share of pixels that changed class
    energy: float  # energy after the update
    solver_iterations: int


def _setup(image, regions, config, progress: bool) -> _Run:
    """Validate the inputs, initialise the regions, resolve the automatic settings."""
    cfg = config if config is not None else Self2SegConfig()
    if not isinstance(cfg, Self2SegConfig):
        raise DuetInputError("config must be a Self2SegConfig")
    t_start = time.perf_counter()
    arr = np.asarray(image)
    f, norm, rgb, noise = prepare_image(arr, cfg.noise_model)
    sigma_n = estimate_noise(f)
    seeds, labels, init_masks = _initial_regions(f, regions, cfg, sigma_n)
    run = _Run(f=f, norm=norm, rgb=rgb, cfg=cfg, user_cfg=cfg, image_shape=tuple(arr.shape),
               image_dtype=str(arr.dtype), seeds=seeds, init_masks=init_masks, labels=labels,
               sigma_n=sigma_n, progress=progress, t_start=t_start,
               # The constant warm-up is for the automatic start only: with seeds, the
               # learned experts train on the user's seeds from the first alternation.
               warmup=cfg.warmup_constant and seeds is None and cfg.experts != "constant")
    run.noise = noise
    run.cfg = _resolve_config(cfg, f, seeds, init_masks, sigma_n)
    _setup_torch(run)
    run.timings = {"prepare": time.perf_counter() - t_start, "experts": 0.0, "masks": 0.0,
                   "per_alternation": []}
    return run


def _initial_regions(f: np.ndarray, regions, cfg: Self2SegConfig, sigma_n: float):
    """The seeds, first labels and first training regions (from ``regions`` or automatic)."""
    k_cls = cfg.n_classes
    if regions is not None:
        seeds = validate_regions(regions, f.shape[1:], k_cls)
        # No mask yet: the first update is free (no prior).
        return seeds, None, [seeds == k + 1 for k in range(k_cls)]
    grey = f.mean(axis=0)
    floor = cfg.init_noise_floor
    labels = auto_labels(grey, k_cls, method=cfg.init, sigma=cfg.init_sigma, invert=cfg.invert,
                         noise_floor=min(floor, _FIRST_PASS_FLOOR) if cfg.init_snr else floor)
    if cfg.init_snr > 0:
        sigma = _start_scale(grey, labels, sigma_n, cfg)
        labels = auto_labels(grey, k_cls, method=cfg.init, sigma=sigma, invert=cfg.invert,
                             noise_floor=floor)
    init_masks = [labels == k for k in range(k_cls)]
    for k, m in enumerate(init_masks):
        if not m.any():
            raise DuetInputError(f"automatic initialisation left class {k} empty; give boxes")
    return None, labels, init_masks


def _start_scale(grey: np.ndarray, labels: np.ndarray, sigma_n: float,
                 cfg: Self2SegConfig) -> float:
    """Smoothing of the automatic start that lifts the objects ``init_snr`` noise stds clear.

    A Gaussian of std ``s`` leaves white noise of std ``sigma_n / (2 sqrt(pi) s)``;
    with the contrast ``delta`` between the first pass's foreground and background
    (medians of the unsmoothed image) the least ``s`` that gives the objects a
    z-score of ``init_snr`` is ``init_snr sigma_n / (2 sqrt(pi) delta)``, kept
    between ``init_sigma`` and 8 pixels.  Clean or bright images keep the base
    sigma; dim nuclei at high noise are averaged enough to be seen whole, which
    at the base sigma only a threshold inside the noise could do.
    """
    fg, bg = labels == labels.max(), labels == labels.min()
    if not fg.any() or not bg.any() or not sigma_n > 0:
        return float(cfg.init_sigma)
    delta = abs(float(np.median(grey[fg])) - float(np.median(grey[bg])))
    s = cfg.init_snr * sigma_n / (2.0 * np.sqrt(np.pi) * max(delta, 1e-12))
    return float(min(max(s, cfg.init_sigma), _MAX_INIT_SIGMA))


def _resolve_config(cfg: Self2SegConfig, f, seeds, init_masks, sigma_n) -> Self2SegConfig:
    """Fill the settings left automatic (None): local energy, shared pretraining, filter."""
    if cfg.local_energy is None:
        cfg = cfg.replace(local_energy=seeds is not None)
    if cfg.shared_pretrain is None:
        cfg = cfg.replace(shared_pretrain=seeds is None)
    if cfg.filter_size is None:
        cfg = cfg.replace(filter_size=auto_filter_size(f, init_masks, sigma_n, cfg.filter_snr))
    return cfg


def _setup_torch(run: _Run) -> None:
    """Pick the CNN experts' device and thread count (nothing without CNN experts)."""
    cfg = run.cfg
    if cfg.experts == "cnn":
        import torch as torch_mod

        from ..core.devices import resolve_device

        run.torch_mod = torch_mod
        run.device = resolve_device(cfg.device)
        # The experts are tiny networks trained on batches of 8 small crops: on a CPU one
        # thread is fastest (256^2: 2.9-4.2 s with 1 thread, 9 s with 2 on 2 cores), since
        # more threads only add synchronisation and fight any other work (napari included).
        threads = cfg.threads if cfg.threads is not None else (
            1 if run.device.type == "cpu" else None)
        if threads is not None:
            run.old_threads = torch_mod.get_num_threads()
            torch_mod.set_num_threads(threads)
    # The two-class mask solver follows the experts onto a GPU; on the CPU NumPy is faster.
    if run.device is not None and run.device.type != "cpu":
        run.solver_device = run.device


def _release(run: _Run) -> None:
    """Restore torch's thread count and drop the experts (also on errors and Cancel)."""
    if run.old_threads is not None and run.torch_mod is not None:
        run.torch_mod.set_num_threads(run.old_threads)
    run.experts_obj.clear()


def _event(run: _Run, stage: str, step: int, total: int, expert: int | None = None,
           force: bool = False):
    """Yield a progress event, unless progress is off or the last one is too recent."""
    now = time.perf_counter()
    if not run.progress or (not force and now - run.last_event < PROGRESS_INTERVAL):
        return
    run.last_event = now
    yield Self2SegProgress(stage=stage, alternation=run.it,
                           max_alternations=run.cfg.max_alternations, done=int(step),
                           total=int(total), elapsed=now - run.t_start, expert=expert)


def _expert_kind(run: _Run) -> str:
    """Kind of the experts of this alternation (constant in a warm-up alternation)."""
    return "constant" if run.warmup and run.it == 1 else run.cfg.experts


def _planned_steps(run: _Run, kind: str, k: int) -> int:
    """Training steps the class ``k`` expert gets this alternation (1 if not a CNN)."""
    if kind != "cnn":
        return 1
    cfg = run.cfg
    expert = run.experts_obj.get((kind, k))
    if expert is None:
        warm = bool(cfg.shared_pretrain)  # starts from the shared weights
    else:
        warm = expert.__dict__.get("total_steps", 0) > 0
    return max(1, cfg.expert_steps_warm if warm else cfg.expert_steps)


def _fit(run: _Run, expert, mask, steps: int, done: int, total: int, k: int | None):
    """Fit ``expert`` (as ``expert.fit``), yielding progress events while it trains."""
    iter_fit = getattr(expert, "iter_fit", None) if run.progress else None
    if iter_fit is None:
        return expert.fit(run.f, mask, steps=steps)
    gen = iter_fit(run.f, mask, steps=steps)
    try:
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                return stop.value
            yield from _event(run, "experts", done + step, total, k)
    finally:
        gen.close()


def _first_alternation(run: _Run) -> bool:
    """Whether the experts train on the initial regions (no mask to train on yet)."""
    return run.labels is None or run.it == 1


def _training_region(run: _Run, k: int, kind: str) -> np.ndarray:
    """Pixels the class ``k`` expert trains on this alternation."""
    if _first_alternation(run):
        m = run.init_masks[k]
    else:
        m = _train_mask(run.labels, k, erode=kind != "constant")
        seeds = run.seeds
        if seeds is not None:
            # The user's seeds stay in their expert's training region,
            # and never in another's, whatever the mask did.
            m = (m & ((seeds == 0) | (seeds == k + 1))) | (seeds == k + 1)
    if not m.any():
        raise DuetInputError(f"class {k} has no pixels to train its expert on")
    return m


def _train_experts(run: _Run, kind: str):
    """Train one expert per class; returns ``(outputs, infos, regions)``."""
    cfg, k_cls = run.cfg, run.cfg.n_classes
    pretrain = kind == "cnn" and cfg.shared_pretrain and "base" not in run.experts_obj
    plan = [_planned_steps(run, kind, k) for k in range(k_cls)]
    total = sum(plan) + (max(1, cfg.expert_steps) if pretrain else 0)
    done = 0
    yield from _event(run, "experts", 0, total, force=True)
    new_outs, infos, regions_k = [], [], []
    for k in range(k_cls):
        m = _training_region(run, k, kind)
        regions_k.append(run.init_masks[k] if _first_alternation(run) else run.labels == k)
        key = (kind, k)
        if key not in run.experts_obj:
            run.experts_obj[key] = make_expert(kind, channels=run.f.shape[0], config=cfg,
                                               device=run.device, seed=cfg.seed * 1009 + k)
            if kind == "cnn" and cfg.shared_pretrain:
                if "base" not in run.experts_obj:
                    yield from _pretrain_shared(run, done, total)
                    done += max(1, cfg.expert_steps)
                run.experts_obj[key].load_weights_from(run.experts_obj["base"],
                                                       cfg.finetune_lr_factor)
        expert = run.experts_obj[key]
        steps = cfg.expert_steps if expert.__dict__.get("total_steps", 0) == 0 \
            else cfg.expert_steps_warm
        try:
            out = yield from _fit(run, expert, m, max(1, steps), done, total, k)
        except ValueError as exc:
            raise DuetInputError(f"cannot train the class {k} expert: {exc}") from None
        done += plan[k]
        yield from _event(run, "experts", done, total, k)
        if kind == "cnn" and cfg.ensemble_shared and "base_full" in run.experts_obj:
            out.full = 0.5 * (out.full + run.experts_obj["base_full"])
        new_outs.append(out)
        infos.append(out.info)
    return new_outs, infos, regions_k


def _pretrain_shared(run: _Run, done: int, total: int):
    """Train the shared denoiser that every CNN expert starts from."""
    # One Noise2Fast denoiser of the whole image, which every region expert then
    # specialises: small regions get a good start.
    cfg = run.cfg
    base = make_expert("cnn", channels=run.f.shape[0], config=cfg, device=run.device,
                       seed=cfg.seed * 1009 + 997)
    base_out = yield from _fit(run, base, np.ones(run.f.shape[1:], bool), cfg.expert_steps,
                               done, total, None)
    run.experts_obj["base"] = base
    run.experts_obj["base_full"] = base_out.full


def _adopt_experts(run: _Run, new_outs, regions_k) -> tuple[bool, float | None]:
    """Keep the new experts unless they raise the current mask's energy.

    Returns whether they were kept and the energy of the current mask with
    the experts in use (None before the first mask).
    """
    cfg = run.cfg
    # Floor of a region's variance: the filtered noise alone (F x F box).
    var_floor = run.f.shape[0] * run.sigma_n ** 2
    if not cfg.local_energy:
        var_floor /= max(1, cfg.filter_size) ** 2
    r_new, v_new = data_terms(run.f, new_outs, cfg.filter_size,
                               regions_k if cfg.region_variance else None, var_floor,
                               cfg.local_energy)
    if run.lam is None:
        _set_lambda(run, r_new, new_outs, v_new)
    accepted, e_cur = True, None
    if run.r is not None and run.labels is not None:
        e_old = run.energies[-1]  # same labels, same experts, same lambda
        e_new = potts_energy(r_new, run.labels, run.lam)
        accepted = e_new <= e_old
        e_cur = e_new if accepted else e_old
    elif run.labels is not None:
        e_cur = potts_energy(r_new, run.labels, run.lam)
    if accepted:
        run.outs, run.r = new_outs, r_new
    return accepted, e_cur


def _set_lambda(run: _Run, r_new, new_outs, v_new) -> None:
    """Set lambda and mu relative to the first data terms."""
    # lambda relative to the data: the larger of the spread of g (signal) and
    # lam_noise x the std of g's noise, so noise blobs cost more at high noise.
    cfg = run.cfg
    mad = robust_scale(r_new)
    s_noise = noise_scale(run.f, new_outs, run.sigma_n, cfg.filter_size, v_new)
    run.scale = max(mad, cfg.lam_noise * s_noise)
    run.timings["scale_mad"], run.timings["scale_noise"] = mad, s_noise
    mult = cfg.lam if cfg.lam is not None else cfg.lam_scale
    run.lam = float(mult) * run.scale
    run.mu = float(cfg.mu_scale) * run.scale


def _update_mask(run: _Run, e_cur: float | None) -> _MaskStep:
    """Minimise the energy over the mask; keep the result only if it passes the checks."""
    k_cls = run.cfg.n_classes
    prior = run.labels if (run.labels is not None and run.mu > 0) else None
    if k_cls == 2:
        cand, iters = _solve_two_classes(run, prior)
        cand_u = None
    else:
        cand, cand_u, iters = _solve_classes(run, prior)
    if run.seeds is not None and run.labels is None:
        # First update from boxes: a class the solver emptied keeps its seeds.
        for k in range(k_cls):
            if not (cand == k).any():
                cand[run.seeds == k + 1] = k
    e_cand = potts_energy(run.r, cand, run.lam)
    why = "" if run.labels is None else _mask_rejection(run, cand, e_cand, e_cur)
    accepted = not why
    changed = 1.0 if run.labels is None else float(np.mean(cand != run.labels))
    if accepted:
        run.labels = cand
        if cand_u is not None:
            run.u_relaxed = cand_u
    else:
        changed = 0.0
    return _MaskStep(accepted=accepted, why=why, changed=changed,
                     energy=e_cand if accepted else e_cur, solver_iterations=int(iters))


def _solve_two_classes(run: _Run, prior) -> tuple[np.ndarray, int]:
    """Two-class mask update (thresholded ROF); returns ``(candidate labels, iterations)``."""
    cfg, seeds = run.cfg, run.seeds
    g = run.r[0] - run.r[1]
    if prior is not None:
        g = g + run.mu * (2.0 * (prior == 1) - 1.0)
    fg, rof_res = solve_binary(g, run.lam, p0=run.p_warm, tol=cfg.solver_tol,
                               max_iter=cfg.solver_max_iter, device=run.solver_device)
    if seeds is not None and run.labels is None and cfg.lam is None:
        # The seeds are labelled pixels: where the first mask contradicts many
        # of them, the data term is too noisy for this lambda (textures), so
        # lambda grows until the seeds agree (at most 4x).
        for _ in range(2):
            if _seed_disagreement(fg, seeds) <= _SEED_TOLERANCE:
                break
            run.lam, run.mu = 2.0 * run.lam, 2.0 * run.mu
            fg, rof_res = solve_binary(g, run.lam, tol=cfg.solver_tol,
                                       max_iter=cfg.solver_max_iter, device=run.solver_device)
    run.p_warm = rof_res.p
    return fg.astype(np.uint8), rof_res.iterations


def _solve_classes(run: _Run, prior) -> tuple[np.ndarray, np.ndarray, int]:
    """Multiclass mask update; returns ``(candidate labels, relaxed labels, iterations)``."""
    cfg, k_cls = run.cfg, run.cfg.n_classes
    d = run.r.copy()
    if prior is not None:
        d += 0.5 * run.mu * (1.0 - 2.0 * _one_hot(prior, k_cls))
    mres = solve_multiclass(d, run.lam, u0=run.u_relaxed, tol=cfg.solver_tol,
                            max_iter=cfg.solver_max_iter)
    return np.argmax(mres.u, axis=0).astype(np.uint8), mres.u, mres.iterations


def _mask_rejection(run: _Run, cand: np.ndarray, e_cand: float, e_cur: float) -> str:
    """Why the candidate mask is refused ("" when it is accepted)."""
    k_cls = run.cfg.n_classes
    a_old = np.bincount(run.labels.ravel(), minlength=k_cls).astype(float)
    a_new = np.bincount(cand.ravel(), minlength=k_cls).astype(float)
    ratio = np.maximum(a_new, 1) / np.maximum(a_old, 1)
    limit = run.cfg.max_fraction_change
    if (a_new == 0).any():
        return "a region would vanish"
    if (ratio > limit).any() or (ratio < 1 / limit).any():
        return "a region's area would change too much"
    if e_cand > e_cur:
        return "energy would increase"
    return ""


def _record(run: _Run, kind: str, infos, accepted_experts: bool, step: _MaskStep,
            t_exp: float, t_mask: float) -> None:
    """Append the alternation's energy, timings and history entry."""
    run.timings["masks"] += t_mask
    run.energies.append(float(step.energy))
    run.timings["per_alternation"].append(
        {"experts_s": t_exp, "mask_s": t_mask, "solver_iterations": step.solver_iterations})
    run.history.append({
        "alternation": run.it, "expert_kind": kind, "experts_accepted": bool(accepted_experts),
        "mask_accepted": bool(step.accepted), "mask_rejected_because": step.why,
        "changed_fraction": step.changed, "energy": float(step.energy),
        "expert_info": infos,
    })


def _stop_reason(run: _Run, changed: float) -> str | None:
    """Why the alternation stops after this alternation (None: it goes on)."""
    cfg, it, energies = run.cfg, run.it, run.energies
    # Kind switch (warm-up -> learned experts) is not a convergence sign.
    switched = run.warmup and it == 1
    if it >= 2 and changed < cfg.stop_changed and not switched:
        return "mask converged"
    if len(energies) >= 3 and not (run.warmup and it == 2):
        d_prev = (energies[-3] - energies[-2]) / max(abs(energies[-3]), 1e-12)
        d_cur = (energies[-2] - energies[-1]) / max(abs(energies[-2]), 1e-12)
        if d_cur <= 0 or d_cur < cfg.stop_ratio * d_prev:
            return "energy decrease below stop_ratio of the previous one"
    return None


def _state_of(run: _Run, energy: float, elapsed: float) -> Self2SegState:
    """The state to yield: labels, experts and composite in the input's scale."""
    u_relaxed = run.u_relaxed if run.cfg.n_classes > 2 else None
    return _make_state(run.it, run.cfg, run.labels, u_relaxed, run.outs, run.norm, run.rgb,
                       energy, run.energies, elapsed)


def _finish(run: _Run) -> Self2SegResult:
    """The final result (the last state, with the run's facts)."""
    run.timings["total"] = time.perf_counter() - run.t_start
    final = _state_of(run, run.energies[-1], run.timings["total"])
    cfg = run.cfg
    borders: dict = {}
    if cfg.refine_borders and run.seeds is None and cfg.n_classes == 2:
        grey = final.denoised.mean(axis=-1) if run.rgb else final.denoised
        fg, info = refine_borders(grey, final.labels == 1, dark=cfg.invert)
        borders = info.to_dict()
        if info.changed:
            run.labels = fg.astype(np.uint8)
            final = _state_of(run, run.energies[-1], run.timings["total"])
    # Say when the result contradicts the seeds or collapsed (it is not an error).
    from ._checks import check_result

    checks = check_result(
        final.labels, run.seeds, cfg.n_classes, grey=run.f.mean(axis=0),
        auto=None if run.seeds is not None else np.argmax(np.stack(run.init_masks), 0),
        init={"method": cfg.init, "sigma": cfg.init_sigma, "invert": cfg.invert,
              "noise_floor": cfg.init_noise_floor}, stop_reason=run.stop_reason,
        alternations=run.it, max_alternations=cfg.max_alternations).to_dict()
    return Self2SegResult(
        labels=final.labels, u=final.u, experts=final.experts, denoised=final.denoised,
        energies=list(run.energies), alternations=run.it, stop_reason=run.stop_reason,
        timings=run.timings, config=run.user_cfg, image_shape=run.image_shape,
        image_dtype=run.image_dtype, lam=float(run.lam), mu=float(run.mu),
        scale=float(run.scale), history=run.history, filter_size=int(cfg.filter_size),
        noise_sigma=float(run.sigma_n), local_energy=bool(cfg.local_energy),
        shared_pretrain=bool(cfg.shared_pretrain), noise=dict(run.noise), checks=checks,
        borders=borders,
    )


def _make_state(it, cfg, labels, u_relaxed, outs, norm, rgb, energy, energies, elapsed):
    """A :class:`Self2SegState` from normalised expert outputs (back in the input's scale)."""
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
