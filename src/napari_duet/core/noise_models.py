"""Pixel-wise Gaussian-mixture noise models p(observation | signal).

A noise model says how a noisy pixel value ``x`` scatters around the clean
signal ``s``: a mixture of K Gaussians whose means, variances and weights are
polynomials in the (rescaled) signal (the PPN2V / HDN / denoiSplit model).
Fitted once from (signal, observation) pairs, either calibration data (the
average of many recordings as signal) or bootstrapped from the noisy data
itself with a self-supervised denoiser, and then used as the likelihood of
the splitting network.

Everything is vectorised over pixels and components (no Python loops), so
evaluating the likelihood inside a training step costs a few fused tensor
ops.  Models are stored with :mod:`napari_duet.core.modelfile` (kind
``"noise_model"``), never pickled.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DuetError, DuetInputError, ModelFileError
from .plotting import save_figure

if TYPE_CHECKING:
    import torch

KIND = "noise_model"
_LOG_FLOOR = math.log(1e-10)  # the reference adds 1e-10 to p(x|s); keeps log finite
_HIST_BINS = 96
_MAX_GAUSSIANS, _MAX_COEFFS = 64, 32  # bounds of a noise model read from a file


@dataclass
class NoiseModelFitInfo:
    """How a noise model was fitted (kept in the model file for reports)."""

    source: str  # "calibration" or "bootstrap:<denoiser>"
    n_pairs: int
    iterations: int
    seconds: float
    final_nll: float


class GaussianMixtureNoiseModel:
    """Signal-dependent Gaussian mixture p(x | s).

    Parameters
    ----------
    weight : torch.Tensor or numpy.ndarray
        (3K, n_coeff) polynomial coefficients. Rows 0..K-1 are the component
        means, K..2K-1 the log of the variance coefficients, 2K..3K-1 the
        mixture logits.
    min_signal, max_signal : float
        Signal range the polynomials are defined on (t = 0..1).
    min_sigma : float
        Floor of each component's **variance** (intensity² units).

    Notes
    -----
    The mixture mean is re-centred to equal ``s`` exactly, so the model only
    describes the spread around the signal, never a bias.  Signals outside
    ``[min_signal, max_signal]`` reuse the shape at the nearest end of the
    range (the polynomials are not trusted outside the fitted range).
    """

    def __init__(
        self,
        weight,
        min_signal: float,
        max_signal: float,
        min_sigma: float,
        *,
        hist: np.ndarray | None = None,
        hist_edges: tuple[np.ndarray, np.ndarray] | None = None,
        info: dict[str, Any] | None = None,
    ):
        import torch

        w = torch.as_tensor(np.asarray(weight) if not torch.is_tensor(weight) else weight)
        if w.ndim != 2 or w.shape[0] % 3 != 0 or w.shape[0] == 0:
            raise DuetInputError(f"noise-model weight must be (3K, n_coeff), got {tuple(w.shape)}")
        if not max_signal > min_signal:
            raise DuetInputError("noise model needs max_signal > min_signal")
        self.weight = w.detach().to(torch.float32)
        self.min_signal = float(min_signal)
        self.max_signal = float(max_signal)
        self.min_sigma = float(min_sigma)
        self.hist = hist
        self.hist_edges = hist_edges
        self.info = dict(info or {})

    # ------------------------------------------------------------------ basics
    @property
    def n_gaussian(self) -> int:
        return self.weight.shape[0] // 3

    @property
    def n_coeff(self) -> int:
        return self.weight.shape[1]

    def to(self, device) -> GaussianMixtureNoiseModel:
        """Move the weights to ``device`` (in place); returns self."""
        self.weight = self.weight.to(device)
        return self

    # ------------------------------------------------------------- likelihood
    def mixture_parameters(self, signal: torch.Tensor, weight: torch.Tensor | None = None):
        """Component means, variances and weights for each signal value.

        Returns three tensors shaped ``signal.shape + (K,)``.
        """

        means, var, log_alpha = self._mixture(signal, weight)
        return means, var, log_alpha.exp()

    def _mixture(self, signal: torch.Tensor, weight: torch.Tensor | None = None):
        """Means, variances and *log* weights (log-softmax: finite gradients even when
        a component's weight underflows to zero, which ``log(softmax)`` turns into NaN)."""
        import torch

        w = self.weight if weight is None else weight
        k = w.shape[0] // 3
        signal = signal.to(torch.float32)
        t = (signal - self.min_signal) / (self.max_signal - self.min_signal)
        t = t.clamp(0.0, 1.0)
        powers = t.unsqueeze(-1) ** torch.arange(w.shape[1], device=t.device, dtype=t.dtype)
        means = powers @ w[:k].T
        var = (powers @ torch.exp(w[k : 2 * k]).T).clamp_min(self.min_sigma)
        log_alpha = torch.log_softmax(powers @ w[2 * k :].T, dim=-1)
        means = means - (log_alpha.exp() * means).sum(-1, keepdim=True) + signal.unsqueeze(-1)
        return means, var, log_alpha

    def log_likelihood(
        self, observation: torch.Tensor, signal: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(observation | signal), element-wise, same shape as the inputs.

        Both tensors are in the noise model's (raw intensity) units.
        """
        import torch

        means, var, log_alpha = self._mixture(signal, weight)
        x = observation.to(torch.float32).unsqueeze(-1)
        log_comp = -0.5 * ((x - means) ** 2 / var + torch.log(var) + math.log(2 * math.pi))
        lp = torch.logsumexp(log_alpha + log_comp, dim=-1)
        return torch.logaddexp(lp, torch.full_like(lp, _LOG_FLOOR))

    def likelihood(self, observation: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        """p(observation | signal), element-wise."""
        return self.log_likelihood(observation, signal).exp()

    def variance(self, signal: torch.Tensor) -> torch.Tensor:
        """Total noise variance at each signal value (mixture law of variance)."""
        means, var, alpha = self.mixture_parameters(signal)
        mix_mean = (alpha * means).sum(-1, keepdim=True)
        return (alpha * (var + (means - mix_mean) ** 2)).sum(-1)

    def std(self, signal) -> np.ndarray:
        """Noise standard deviation at the given signal values (numpy in and out)."""
        import torch

        s = torch.as_tensor(np.asarray(signal, dtype=np.float32), device=self.weight.device)
        return self.variance(s).sqrt().cpu().numpy()

    # ----------------------------------------------------------------- saving
    def to_file_parts(self, prefix: str = "") -> tuple[dict, dict]:
        """(config, tensors) for embedding this model in another model file."""
        import torch

        config = {
            "n_gaussian": self.n_gaussian,
            "n_coeff": self.n_coeff,
            "min_signal": self.min_signal,
            "max_signal": self.max_signal,
            "min_sigma": self.min_sigma,
            "info": self.info,
        }
        tensors = {f"{prefix}weight": self.weight.detach().cpu()}
        if self.hist is not None and self.hist_edges is not None:
            tensors[f"{prefix}hist"] = torch.as_tensor(self.hist, dtype=torch.float32)
            tensors[f"{prefix}hist_signal_edges"] = torch.as_tensor(
                self.hist_edges[0], dtype=torch.float32
            )
            tensors[f"{prefix}hist_obs_edges"] = torch.as_tensor(
                self.hist_edges[1], dtype=torch.float32
            )
        return config, tensors

    @staticmethod
    def file_shapes(config: dict, prefix: str = "") -> dict[str, tuple[int, ...] | None]:
        """Tensors a model file holds for a noise model with ``config`` (name to shape).

        The histogram tensors are optional (None).  Raises ValueError for sizes
        out of bounds, so a header cannot ask for a huge model.
        """
        from .modelfile import file_int

        if not isinstance(config, dict):
            raise ValueError(f"noise-model entry must be a mapping, got {type(config).__name__}")
        k = file_int(config.get("n_gaussian"), f"{prefix}n_gaussian", 1, _MAX_GAUSSIANS)
        n = file_int(config.get("n_coeff"), f"{prefix}n_coeff", 1, _MAX_COEFFS)
        return {f"{prefix}weight": (3 * k, n), f"{prefix}hist": None,
                f"{prefix}hist_signal_edges": None, f"{prefix}hist_obs_edges": None}

    @classmethod
    def from_file_parts(
        cls, config: dict, tensors: dict, prefix: str = "", name: str = "model file"
    ) -> GaussianMixtureNoiseModel:
        from .modelfile import check_finite_tensors, file_number

        try:
            shapes = cls.file_shapes(config, prefix)
            weight = tensors[f"{prefix}weight"]
            if tuple(weight.shape) != shapes[f"{prefix}weight"]:
                raise ValueError(f"weight shape {tuple(weight.shape)} != "
                                 f"{shapes[f'{prefix}weight']}")
            check_finite_tensors({k: tensors[k] for k in shapes if k in tensors}, name=name)
            # NaN or inf here makes every likelihood NaN (training skips every
            # batch); a variance floor of zero lets a component collapse.
            min_signal = file_number(config.get("min_signal"), f"{prefix}min_signal")
            max_signal = file_number(config.get("max_signal"), f"{prefix}max_signal")
            min_sigma = file_number(config.get("min_sigma"), f"{prefix}min_sigma",
                                    positive=True)
            hist = tensors.get(f"{prefix}hist")
            edges = None
            if hist is not None:
                edges = (
                    tensors[f"{prefix}hist_signal_edges"].cpu().numpy(),
                    tensors[f"{prefix}hist_obs_edges"].cpu().numpy(),
                )
                hist = hist.cpu().numpy()
            return cls(
                weight.cpu(),
                min_signal,
                max_signal,
                min_sigma,
                hist=hist,
                hist_edges=edges,
                info=config.get("info", {}),
            )
        except (KeyError, ValueError, TypeError, DuetInputError) as exc:
            raise ModelFileError(f"{name} holds a damaged noise model ({exc})") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the noise model as a safe model file (kind ``"noise_model"``)."""
        from .modelfile import save_model_file

        config, tensors = self.to_file_parts()
        return save_model_file(path, kind=KIND, config=config, tensors=tensors)

    @classmethod
    def load(cls, path: str | os.PathLike) -> GaussianMixtureNoiseModel:
        """Read a noise model; foreign or damaged files raise ModelFileError."""
        from .modelfile import load_model_file

        name = Path(path).name

        def expect(header: dict) -> dict:
            try:
                return cls.file_shapes(header["config"])
            except ValueError as exc:
                raise ModelFileError(f"{name} holds a damaged noise model ({exc})") from None

        mf = load_model_file(path, kind=KIND, expect=expect, what="noise model")
        return cls.from_file_parts(mf.config, mf.tensors, name=name)

    # ------------------------------------------------------------------- plot
    def plot(self, path: str | os.PathLike, signals: list[float] | None = None) -> Path:
        """Save a PNG: data histogram vs. model density, and slices p(x|s).

        Parameters
        ----------
        path : path-like
            PNG file to write.
        signals : list of float, optional
            Signal values for the slice panel (default: 3 across the range).
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        import torch

        lo, hi = self.min_signal, self.max_signal
        if self.hist_edges is not None:
            s_edges, x_edges = self.hist_edges
        else:
            span = hi - lo
            s_edges = np.linspace(lo, hi, _HIST_BINS + 1)
            x_edges = np.linspace(lo - 0.5 * span, hi + 0.5 * span, _HIST_BINS + 1)
        s_c = 0.5 * (s_edges[1:] + s_edges[:-1])
        x_c = 0.5 * (x_edges[1:] + x_edges[:-1])
        ss, xx = np.meshgrid(s_c, x_c, indexing="ij")
        with torch.no_grad():
            dens = self.likelihood(
                torch.as_tensor(xx, dtype=torch.float32, device=self.weight.device),
                torch.as_tensor(ss, dtype=torch.float32, device=self.weight.device),
            ).cpu().numpy()
        ncols = 3 if self.hist is not None else 2
        fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.8))
        extent = [x_edges[0], x_edges[-1], s_edges[-1], s_edges[0]]
        col = 0
        if self.hist is not None:
            h = self.hist / np.maximum(self.hist.sum(axis=1, keepdims=True), 1e-12)
            h = h / np.diff(x_edges)[None, :]
            axes[0].imshow(h, aspect="auto", extent=extent, cmap="magma")
            axes[0].set(title="data: p(x|s) histogram", xlabel="observation x", ylabel="signal s")
            col = 1
        axes[col].imshow(dens, aspect="auto", extent=extent, cmap="magma")
        axes[col].set(title=f"GMM ({self.n_gaussian} comp.)", xlabel="observation x",
                      ylabel="signal s")
        ax = axes[col + 1]
        if signals is None:
            signals = list(np.quantile(s_c, [0.2, 0.5, 0.8]))
        for s in signals:
            i = int(np.argmin(np.abs(s_c - s)))
            (line,) = ax.plot(x_c, dens[i], label=f"s={s_c[i]:.3g}")
            if self.hist is not None:
                row = self.hist[i] / max(self.hist[i].sum(), 1e-12) / np.diff(x_edges)
                ax.plot(x_c, row, ".", color=line.get_color(), ms=3)
        ax.set(title="slices (line: model, dots: data)", xlabel="observation x", ylabel="p(x|s)")
        ax.legend(fontsize=7)
        return save_figure(fig, path)


def _pairs(signal, observation) -> tuple[np.ndarray, np.ndarray]:
    from .intensity import as_float_image

    s = as_float_image(signal, name="signal")
    x = as_float_image(observation, name="observation")
    if s.shape != x.shape:
        if x.ndim == s.ndim + 1 and x.shape[1:] == s.shape:
            # Several recordings of the same static signal: repeat the signal.
            s = np.broadcast_to(s, x.shape)
        else:
            raise DuetInputError(
                f"signal {s.shape} and observation {x.shape} must have the same shape"
            )
    return s.ravel(), x.ravel()


def fit_noise_model(
    signal,
    observation,
    *,
    n_gaussian: int = 3,
    n_coeff: int = 2,
    min_sigma: float | None = None,
    iterations: int | None = None,
    batch_size: int | None = None,
    lr: float = 0.1,
    lower_clip: float = 0.0,
    upper_clip: float = 100.0,
    device: str = "auto",
    seed: int = 0,
    source: str = "calibration",
) -> GaussianMixtureNoiseModel:
    """Fit a :class:`GaussianMixtureNoiseModel` to (signal, observation) pairs.

    Parameters
    ----------
    signal, observation : array-like
        Clean (or denoised) signal and the noisy observation(s) of it, same
        shape; an observation stack (N, ...) may share one signal (...).
    n_gaussian, n_coeff : int
        Mixture components and polynomial coefficients (degree + 1).
    min_sigma : float, optional
        Variance floor (intensity²). Default: (0.5 % of the signal range)²,
        at least 0.25, which keeps components from collapsing onto the
        integer levels of quantised data.
    iterations, batch_size, lr : int, int, float
        Adam steps on random minibatches of pairs.  Defaults: the reference's
        2000 steps of 250 000 pairs on a GPU; 400 steps of 50 000 pairs on a
        CPU (about 20x cheaper, and enough for a few smooth polynomials).
    lower_clip, upper_clip : float
        Keep pairs whose signal lies between these percentiles.
    device : str
        Where to fit ("auto", "cpu", "cuda").
    seed : int
        Seed of the initialisation and the minibatch draw.
    source : str
        Recorded in the model's info (e.g. ``"calibration"``).

    Returns
    -------
    GaussianMixtureNoiseModel
    """
    import torch

    from .devices import resolve_device

    dev = resolve_device(device)
    on_gpu = dev.type != "cpu"
    if iterations is None:
        iterations = 2000 if on_gpu else 400
    if batch_size is None:
        batch_size = 250_000 if on_gpu else 50_000
    if n_gaussian < 1 or n_coeff < 1 or iterations < 1 or batch_size < 1:
        raise DuetInputError("n_gaussian, n_coeff, iterations and batch_size must be >= 1")
    t0 = time.perf_counter()
    s, x = _pairs(signal, observation)
    lo, hi = np.percentile(s, [lower_clip, upper_clip])
    keep = (s >= lo) & (s <= hi)
    s, x = s[keep], x[keep]
    if s.size < 100:
        raise DuetInputError("too few (signal, observation) pairs to fit a noise model (< 100)")
    min_signal, max_signal = float(s.min()), float(s.max())
    if max_signal - min_signal <= 1e-6 * max(1.0, abs(max_signal)):
        raise DuetInputError("the signal is constant: a noise model needs a range of signals")
    span = max_signal - min_signal
    if min_sigma is None:
        min_sigma = max((0.005 * span) ** 2, 0.25)
    gen = torch.Generator().manual_seed(int(seed))
    weight = torch.randn(3 * n_gaussian, n_coeff, generator=gen)
    if n_coeff > 1:
        weight[n_gaussian : 2 * n_gaussian, 1] = math.log(span)
    else:
        weight[n_gaussian : 2 * n_gaussian, 0] = math.log(span / 10.0)
    weight = weight.to(dev).requires_grad_(True)
    model = GaussianMixtureNoiseModel(
        weight.detach(), min_signal, max_signal, min_sigma
    )
    st = torch.as_tensor(s, device=dev)
    xt = torch.as_tensor(x, device=dev)
    n = st.numel()
    bs = min(batch_size, n)
    tail = max(1, min(50, iterations // 10))
    loss_sum = _fit_steps(model, weight, st, xt, bs, lr, iterations, tail, seed,
                          graph=dev.type == "cuda")
    model.weight = weight.detach()
    final_nll = float(loss_sum) / tail
    if not (bool(torch.isfinite(model.weight).all()) and math.isfinite(final_nll)):
        raise DuetError("the noise-model fit diverged (non-finite parameters); try fewer "
                        "iterations, a smaller learning rate or fewer Gaussians")
    hist, s_edges, x_edges = _histogram(s, x)
    model.hist, model.hist_edges = hist, (s_edges, x_edges)
    info = NoiseModelFitInfo(source, int(n), int(iterations), time.perf_counter() - t0, final_nll)
    model.info = dict(info.__dict__)
    return model.to("cpu")


def _fit_steps(model, weight, st, xt, bs: int, lr: float, iterations: int, tail: int,
               seed: int, graph: bool):
    """Adam steps of the fit; returns the summed loss of the last ``tail`` steps.

    Minibatches are consecutive windows of one random permutation of the
    pairs (sampling without replacement), so a step needs no random numbers
    and can be captured.  With ``graph`` (CUDA) the steps are replayed as one
    CUDA graph: a step touches a few hundred thousand numbers in some fifty
    kernels, and launching them from Python costs far more than running them
    (1.3 s instead of 4.7 s for 2000 steps on an H100, same result).
    """
    import torch

    n = st.numel()
    gen = torch.Generator(device=st.device).manual_seed(int(seed) + 1)
    perm = torch.randperm(n, device=st.device, generator=gen)
    st, xt = st[perm].contiguous(), xt[perm].contiguous()
    window = torch.arange(bs, device=st.device)
    offset = torch.zeros((), dtype=torch.long, device=st.device)
    opt = torch.optim.Adam([weight], lr=lr, capturable=graph)
    loss_sum = torch.zeros((), device=st.device)

    def step():
        idx = (window + offset) % n
        loss = -model.log_likelihood(xt[idx], st[idx], weight=weight).mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        weight.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # a bad step is skipped
        opt.step()
        offset.add_(bs).remainder_(n)
        return loss.detach()

    if not graph:
        for it in range(iterations):
            loss = step()
            if it >= iterations - tail:  # no host sync per step
                loss_sum += loss
        return loss_sum
    warm = min(3, iterations)
    side = torch.cuda.Stream(device=st.device)
    side.wait_stream(torch.cuda.current_stream(st.device))
    with torch.cuda.stream(side):
        for it in range(warm):  # allocates the gradient and Adam's state outside the graph
            loss = step()
            if it >= iterations - tail:
                loss_sum += loss
    torch.cuda.current_stream(st.device).wait_stream(side)
    if iterations > warm:
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            static_loss = step()
        for it in range(warm, iterations):
            cuda_graph.replay()
            if it >= iterations - tail:
                loss_sum += static_loss
    return loss_sum


def _histogram(s: np.ndarray, x: np.ndarray):
    """2-D histogram of (signal, observation) for the QC plot (stored with the model)."""
    s_edges = np.linspace(s.min(), s.max(), _HIST_BINS + 1)
    xlo, xhi = np.percentile(x, [0.05, 99.95])
    x_edges = np.linspace(min(xlo, s.min()), max(xhi, s.max()), _HIST_BINS + 1)
    hist, _, _ = np.histogram2d(s, x, bins=(s_edges, x_edges))
    return hist.astype(np.float32), s_edges.astype(np.float32), x_edges.astype(np.float32)


# ------------------------------------------------------------------ bootstrap
def smooth_denoise(image2d: np.ndarray) -> np.ndarray:
    """Fallback self-supervised denoiser: a Gaussian filter tuned J-invariantly.

    The filter width is chosen by the self-supervised J-invariant loss
    (scikit-image's ``calibrate_denoiser``: each pixel is predicted without
    seeing itself), so no clean data is needed.  Much weaker than a learned
    denoiser, but it never fails and needs no training.
    """
    from scipy import ndimage as ndi
    from skimage.restoration import calibrate_denoiser

    img = np.asarray(image2d, dtype=np.float32)

    def gauss(im, sigma):
        return ndi.gaussian_filter(im, sigma)

    den = calibrate_denoiser(img, gauss, {"sigma": [0.5, 0.75, 1.0, 1.5, 2.0, 3.0]})
    return np.asarray(den(img), dtype=np.float32)


def bootstrap_noise_model(
    noisy,
    *,
    denoiser: str = "auto",
    max_frames: int = 4,
    steps: int | None = None,
    device: str = "auto",
    seed: int = 0,
    **fit_kwargs,
) -> GaussianMixtureNoiseModel:
    """Fit a noise model from noisy data alone (denoiSplit's bootstrapping).

    A self-supervised denoiser estimates the signal; the noise model is then
    fitted to (denoised, noisy) pairs.

    Parameters
    ----------
    noisy : array-like
        (Y, X) image or (N, Y, X) stack of noisy frames.
    denoiser : {"auto", "noise2fast", "smooth"}
        ``noise2fast`` (the project's Noise2Fast), ``smooth`` (a J-invariant
        Gaussian filter; fast fallback) or ``auto`` (= ``noise2fast``).
    max_frames : int
        At most this many frames (evenly spaced) are denoised.
    steps : int, optional
        Training steps passed to Noise2Fast.
    device, seed : str, int
        Passed to the denoiser and the fit.
    **fit_kwargs
        Passed to :func:`fit_noise_model`.
    """
    from .intensity import as_float_image

    arr = as_float_image(noisy, name="noisy image")
    frames = arr[None] if arr.ndim == 2 else arr.reshape(-1, *arr.shape[-2:])
    if frames.shape[0] > max_frames:
        frames = frames[np.linspace(0, frames.shape[0] - 1, max_frames).round().astype(int)]
    if denoiser == "auto":
        denoiser = "noise2fast"
    if denoiser == "noise2fast":
        from .n2f import noise2fast  # lazy: it imports torch

        kw: dict[str, Any] = {"device": device, "seed": seed}
        if steps is not None:
            kw["steps"] = steps
        signal = np.stack([noise2fast(f, **kw) for f in frames])
    elif denoiser == "smooth":
        signal = np.stack([smooth_denoise(f) for f in frames])
    else:
        raise DuetInputError(f"unknown denoiser {denoiser!r}: use auto, noise2fast or smooth")
    fit_kwargs.setdefault("device", device)
    fit_kwargs.setdefault("seed", seed)
    return fit_noise_model(signal, frames, source=f"bootstrap:{denoiser}", **fit_kwargs)
