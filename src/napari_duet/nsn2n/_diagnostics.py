"""Diagnostics for users: weight maps, in-plane noise correlation, method advice.

NS-N2N's premise is noise independent *between* slices; its advantage over
single-image (blind-spot / Noise2Fast-style) denoisers and over BM4D run with
an estimated noise level is noise correlated *within* a slice, which those
cannot tell from signal.  On pixel-independent noise, where BM4D estimates the
noise level correctly, NS-N2N's blind-spot network (chosen automatically
from :func:`noise_correlation`) uses the slice itself as well as its
neighbours (above BM4D on sparse fluorescence stacks, below it on real MRI,
CT and EM: docs/nsn2n.md, Measured); :func:`recommend_method` says which
network and why, the widget and the CLI report show it, and
:func:`pair_diagnostics` gives the matching pair by pair (time-lapses with
motion, anisotropic stacks).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.errors import DuetInputError
from ._config import NSN2NConfig
from ._guide import guide_stack
from ._noise import NoiseModel, fit_noise
from ._volume import prepare, raw_stacks
from ._weights import auto_tau, guide_similarity, weight_maps

# Lag-1 in-plane correlation of the noise above which single-image denoisers
# fail (white noise: ~0; white noise blurred with sigma 1 px: ~0.78).
CORRELATED_NOISE = 0.25
# Mean matched fraction below which neighbouring slices are too different.
LOW_MATCH = 0.3
# Median correlation of neighbouring guides below which slices are unrelated.
LOW_SIMILARITY = 0.25
# A pair with fewer matched pixels is shown as "partial" (motion, thick section).
PARTIAL_PAIR = 0.5
# Guide correlation above which slices count as thin (finely sampled).
THIN_SLICES = 0.9
_MAX_PAIRS = 16
_HIGHPASS_SIGMA = 3.0


def weight_map(
    volume, axis: int = 0, index: int = 0, config: NSN2NConfig | None = None
) -> np.ndarray:
    """Matched-region map W for the slice pair (``index``, ``index + 1``).

    The threshold is fitted on the whole stack, as in training.  For arrays with
    extra axes (channels, ...) the first stack is used.

    Returns
    -------
    ndarray
        (Y, X) float32 in {0, 1}: 1 where the two slices match.
    """
    config = config or NSN2NConfig()
    layout, stacks, _ = prepare(volume, axis)
    n_z = stacks.shape[1]
    if not isinstance(index, int | np.integer) or not 0 <= index < n_z - 1:
        raise DuetInputError(f"pair index must be in 0..{n_z - 2}, got {index!r}")
    guides = guide_stack(stacks[0], config)
    w, _ = weight_maps(guides, config)
    return w[int(index)]


def _pair_subset(n_z: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_z - 2, min(n_z - 1, _MAX_PAIRS)).round().astype(int))


def _lag1(d: np.ndarray, m: np.ndarray) -> float:
    """Lag-1 autocorrelation of ``d`` over pixels where both neighbours are matched."""
    num = den = 0.0
    for a, b, ma, mb in (
        (d[:, 1:], d[:, :-1], m[:, 1:], m[:, :-1]),
        (d[1:], d[:-1], m[1:], m[:-1]),
    ):
        mm = ma * mb
        num += float(np.sum(a * b * mm))
        den += 0.5 * float(np.sum((a * a + b * b) * mm))
    return num / den if den > 0 else float("nan")


def _sampled_pairs(stack: np.ndarray, config: NSN2NConfig):
    """Up to 16 evenly spaced pairs: indices, guide differences, tau, guide correlations."""
    idx = _pair_subset(stack.shape[0])
    ga = guide_stack(stack[idx], config)
    gb = guide_stack(stack[idx + 1], config)
    gd = np.abs(gb - ga)
    tau = config.tau if config.tau is not None else auto_tau(gd, config.tau_factor)
    sims = [float(guide_similarity(np.stack([a, b]))[0]) for a, b in zip(ga, gb, strict=True)]
    return idx, gd, tau, sims


def noise_correlation(volume, axis: int = 0, config: NSN2NConfig | None = None) -> float:
    """Estimate the in-plane lag-1 correlation of the noise (between -1 and 1).

    Differences of neighbouring slices cancel the structure where the slices
    match (weight map W) and keep the noise, whose in-plane correlation is
    measured after a mild high-pass (averaged over x and y shifts of one pixel,
    median over up to 16 pairs).  About 0 for pixel-independent noise; clearly positive (>= 0.25)
    for noise correlated within slices, where NS-N2N beats single-image
    denoisers.
    """
    config = config or NSN2NConfig()
    return stacks_noise_correlation(prepare(volume, axis)[1], config)


def stacks_noise_correlation(stacks: np.ndarray, config: NSN2NConfig) -> float:
    """:func:`noise_correlation` of normalised (S, Z, Y, X) stacks (training uses it)."""
    vals = []
    for stack in stacks:
        idx, gd, tau, _ = _sampled_pairs(stack, config)
        for k, z in enumerate(idx):
            d = stack[z + 1] - stack[z]
            # Remove what is left of slowly varying structure (it would look like
            # correlated noise); white noise stays nearly uncorrelated after this.
            d = d - ndimage.gaussian_filter(d, _HIGHPASS_SIGMA, mode="reflect")
            vals.append(_lag1(d, (gd[k] <= tau).astype(np.float32)))
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.median(vals)) if vals else float("nan")


def noise_model(volume, axis: int = 0, kind: str = "auto",
                config: NSN2NConfig | None = None, rho: float | None = None) -> NoiseModel:
    """Fit the noise model of ``volume`` (input units): which kind, with its parameters.

    ``kind="auto"`` picks Gaussian, Poisson-Gaussian (camera: gain, offset, read
    noise) or Rician (MRI magnitude: sigma) from the variance of the noise
    against the local mean (:func:`fit_stacks_noise`);
    ``NoiseModel.describe()`` gives the line the widget and the CLI show.  ``rho``:
    the in-plane noise correlation (:func:`noise_correlation`) when already measured.
    """
    return fit_stacks_noise(raw_stacks(volume, axis)[1], kind, config, rho)[0]


def fit_stacks_noise(raw: np.ndarray, kind: str = "auto", config: NSN2NConfig | None = None,
                     rho: float | None = None) -> tuple[NoiseModel, float]:
    """:func:`~napari_duet.nsn2n._noise.fit_noise` of raw (S, Z, Y, X) stacks, and the
    in-plane noise correlation when it was measured or given as ``rho`` (else NaN).

    The variance-vs-mean fit reads the noise from a high-pass residual, which
    holds only the noise when the noise is pixel-independent.  Noise correlated
    within slices (a scanner's reconstruction, any in-plane smoothing) has
    little high-frequency power, so the residual is mostly the edges of the
    structures, which grow with the signal and read as photon noise: on real CT
    and MRI with in-plane correlated noise ``auto`` found Poisson-Gaussian, and
    the transform it then applied cost 1.4 dB (ct-a: 25.36 against 26.76 dB with
    the Gaussian model, the same network and steps).  Such noise comes from
    processing, not from counting photons, so with ``kind="auto"`` a signal-
    dependent model is kept only where the noise is pixel-independent
    (correlation under ``CORRELATED_NOISE``).
    """
    noise = fit_noise(raw, kind)
    if kind != "auto" or noise.kind == "gaussian":
        return noise, float("nan") if rho is None else rho
    if rho is None:  # scale-free: measured on the raw stacks (as float)
        rho = stacks_noise_correlation(np.asarray(raw, np.float32), config or NSN2NConfig())
    if np.isfinite(rho) and rho >= CORRELATED_NOISE:
        return fit_noise(raw, "gaussian"), rho
    return noise, rho


def _noise_advice(noise: NoiseModel | None) -> str:
    if noise is None:
        return ""
    if noise.kind == "poisson-gaussian":
        return ("; " + noise.describe() + ": NS-N2N (noise_model auto) stabilises it with the "
                "generalised Anscombe transform and maps back without bias; give it the raw "
                "camera data (offset not subtracted, not rescaled)")
    if noise.kind == "rician":
        return ("; " + noise.describe() + ": NS-N2N (noise_model auto) removes the upward "
                "bias of the magnitude at low signal")
    return "; " + noise.describe()


def matched_fraction(volume, axis: int = 0, config: NSN2NConfig | None = None) -> float:
    """Mean of W over (up to 16 evenly spaced) neighbouring pairs."""
    config = config or NSN2NConfig()
    _, stacks, _ = prepare(volume, axis)
    fr = []
    for stack in stacks:
        _, gd, tau, _ = _sampled_pairs(stack, config)
        fr.append(float(np.mean(gd <= tau)))
    return float(np.mean(fr))


def slice_similarity(volume, axis: int = 0, config: NSN2NConfig | None = None) -> float:
    """Median correlation of neighbouring guide images (1: alike, 0: unrelated slices).

    The automatic ``tau`` adapts to the differences between slices, so the
    matched fraction stays high even when every slice is different; this
    measure catches slice spacings far larger than the structures.
    """
    config = config or NSN2NConfig()
    _, stacks, _ = prepare(volume, axis)
    sims = []
    for stack in stacks:
        sims += _sampled_pairs(stack, config)[3]
    return float(np.median(sims))


def pair_diagnostics(volume, axis: int = 0, config: NSN2NConfig | None = None) -> list[dict]:
    """Matched fraction, guide similarity and a verdict for *every* neighbouring pair.

    For time-lapses with motion and anisotropic stacks the pairs differ: some
    match almost everywhere, others hardly at all (a fast movement, a thick
    section).  NS-N2N learns only from matched pixels and, at inference, uses
    the neighbours only where they match, so poor pairs cost quality locally but
    do not break training.

    Returns
    -------
    list of dict
        One per pair, in stack order: ``stack``, ``pair`` (z, z+1),
        ``matched`` (fraction of W = 1), ``similarity`` (guide correlation) and
        ``verdict``: ``"good"``, ``"partial"`` (under 50 % matched: motion or
        a structure starting/ending) or ``"unrelated"`` (similarity under 0.25).
    """
    config = config or NSN2NConfig()
    _, stacks, _ = prepare(volume, axis)
    out = []
    for s, stack in enumerate(stacks):
        guides = guide_stack(stack, config)
        w, _ = weight_maps(guides, config)
        sims = guide_similarity(guides)
        for z in range(stack.shape[0] - 1):
            frac = float(w[z].mean())
            sim = float(sims[z])
            verdict = ("unrelated" if sim < LOW_SIMILARITY
                       else "partial" if frac < PARTIAL_PAIR else "good")
            out.append({"stack": s, "pair": [z, z + 1], "matched": round(frac, 4),
                        "similarity": round(sim, 4), "verdict": verdict})
    return out


def summarize_pairs(pairs: list[dict]) -> str:
    """One line naming the pairs that are not ``good`` (empty if all are)."""
    bad = [p for p in pairs if p["verdict"] != "good"]
    if not bad:
        return ""
    names = ", ".join(f"{p['pair'][0]}-{p['pair'][1]} ({p['verdict']}, {p['matched']:.0%})"
                      for p in bad[:8])
    more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    return (f"{len(bad)} of {len(pairs)} slice pairs match poorly: {names}{more}; there "
            "NS-N2N relies on the slice itself (motion or thick sections)")


def recommend_method(
    volume, axis: int = 0, config: NSN2NConfig | None = None, rho: float | None = None,
    noise: NoiseModel | None = None,
) -> tuple[str, str]:
    """Recommend NS-N2N (and which network) or a single-image denoiser for this volume.

    The rule follows the benchmark (``docs/nsn2n.md``, "When to use what"):

    * slices unrelated, or matching under 30 %: a single-image denoiser
      (``"noise2fast"``);
    * noise correlated within slices (lag-1 >= 0.25): ``"nsn2n"`` with the 2.5D
      network (``context="auto"`` picks it); BM4D/BM3D with an estimated noise
      level then barely denoise (they read the correlated noise as signal);
    * pixel-independent noise: ``"nsn2n"`` with the blind-spot network
      (``context="auto"`` picks it): measured above BM4D with the noise level
      estimated, on thin and thick slices.

    ``rho``: the in-plane noise correlation when already measured (training
    with ``context="auto"`` records it), else it is measured here.  ``noise``:
    the fitted noise model (training records it; else fitted here); the reason
    names it and what NS-N2N does about it (photon noise: the variance-
    stabilising transform; MRI magnitude: the Rician bias correction).

    Returns
    -------
    method : str
        ``"nsn2n"`` or ``"noise2fast"`` (``"bm4d"`` is no longer returned: the
        blind-spot network measured better on the noise where BM4D was).
    reason : str
        One line the widget and the CLI report show.
    """
    if rho is None:
        rho = noise_correlation(volume, axis, config)
    if noise is None:
        noise = noise_model(volume, axis, (config or NSN2NConfig()).noise_model, config, rho)
    advice = _noise_advice(noise)
    frac = matched_fraction(volume, axis, config)
    sim = slice_similarity(volume, axis, config)
    if sim < LOW_SIMILARITY:
        return ("noise2fast",
                f"neighbouring slices are barely alike (correlation {sim:.2f}; slice spacing "
                "too large?): a single-image denoiser such as Noise2Fast fits better" + advice)
    if frac < LOW_MATCH:
        return ("noise2fast",
                f"only {frac:.0%} of pixels match between neighbouring slices (large spacing "
                "or motion): a single-image denoiser such as Noise2Fast is safer" + advice)
    if np.isfinite(rho) and rho >= CORRELATED_NOISE:
        return ("nsn2n",
                f"noise is correlated within slices (lag-1 correlation {rho:.2f}) and "
                f"{frac:.0%} of pixels match between slices: NS-N2N's 2.5D network (chosen "
                "automatically) with its block-matched Wiener stage, which reads the "
                "noise's spectrum, removes such noise; BM4D with an estimated noise level "
                "and single-image denoisers cannot" + advice)
    thick = "thin" if sim >= THIN_SLICES else "thick"
    return ("nsn2n",
            f"noise looks pixel-independent within slices (lag-1 correlation {rho:.2f}) on "
            f"{thick} slices ({frac:.0%} of pixels match): NS-N2N's blind-spot network "
            "(chosen automatically) uses each slice and its neighbours, and a Wiener stage "
            "chosen on the volume puts back the detail it smoothed; on real volumes with such "
            "noise it measured above BM4D (noise level estimated) on fluorescence, EM and CT "
            "stacks and on EPI MRI, and within 0.1 dB of it on a T1 brain MRI (docs/nsn2n.md, "
            "Measured): on MRI, compare with BM4D" + advice)
