"""Region experts: constant, linear filter and small CNN, trained on one region only.

Every expert is fit to the normalised image ``f`` (C, Y, X) restricted to a
boolean region mask and then gives two predictions:

* ``blind``: each pixel predicted from the other checkerboard phase only
  (used for the data term, so an expert gets no credit for copying noise);
* ``full``: the expert applied to the whole image (its denoising output,
  as in Noise2Fast).

The linear and CNN experts learn the Noise2Fast task (predict one
checkerboard phase from the other), with the loss restricted to the target
pixels inside the region.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..core.n2f._checkerboard import blind_prediction, checkerboard_split, even_crop
from ..core.n2f._trainer import Noise2FastTrainer, inference_tile

__all__ = ["ExpertOutput", "ConstantExpert", "LinearExpert", "CNNExpert", "box_filter",
           "make_expert", "inference_tile"]

def box_filter(x: np.ndarray, size: int) -> np.ndarray:
    """Mean filter of ``size`` over the last two axes (identity for size <= 1)."""
    if size <= 1:
        return np.asarray(x, np.float32)
    sizes = (1,) * (x.ndim - 2) + (size, size)
    return ndi.uniform_filter(np.asarray(x, np.float32), size=sizes, mode="reflect")


@dataclass
class ExpertOutput:
    blind: np.ndarray  # (C, Y, X) normalised scale
    full: np.ndarray  # (C, Y, X) normalised scale
    info: dict = field(default_factory=dict)


def _region_range(f_smooth: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel 1st/99th percentiles of the smoothed image inside ``mask``."""
    vals = f_smooth[:, mask]
    lo = np.percentile(vals, 1, axis=1).astype(np.float32)
    hi = np.percentile(vals, 99, axis=1).astype(np.float32)
    return lo[:, None, None], hi[:, None, None]


class ConstantExpert:
    """Constant per channel: the classic Chan-Vese region mean.

    The constant is the mean of the box-filtered image over the region, the
    exact minimiser of the (filtered) data term, so the expert step never
    increases the energy.
    """

    kind = "constant"

    def __init__(self, filter_size: int = 5):
        self.filter_size = filter_size
        self.value: np.ndarray | None = None

    def fit(self, f: np.ndarray, mask: np.ndarray, steps: int | None = None) -> ExpertOutput:
        """Fit to the region ``mask`` of ``f`` (closed form: ``steps`` is not used)."""
        fs = box_filter(f, self.filter_size)
        self.value = fs[:, mask].mean(axis=1).astype(np.float32)[:, None, None]
        pred = np.broadcast_to(self.value, f.shape).astype(np.float32)
        return ExpertOutput(blind=pred, full=pred.copy(), info={"steps": 0})


class LinearExpert:
    """Linear filter ``w * f + b`` per channel, fit by exact (ridge) least squares.

    Trained on the Noise2Fast pairs (predict a pixel of one checkerboard
    phase from the other phase's neighbourhood), loss restricted to target
    pixels inside the region.  Being an exact minimiser of a convex loss, it
    keeps the alternation bi-convex (paper, linear expert).
    """

    kind = "linear"

    def __init__(self, size: int = 9, max_samples: int = 40000, ridge: float = 1e-3,
                 clamp: bool = True, filter_size: int = 5, seed: int = 0):
        self.size = size
        self.max_samples = max_samples
        self.ridge = ridge
        self.clamp = clamp
        self.filter_size = filter_size
        self.seed = seed
        self.weights: np.ndarray | None = None  # (C, s, s)
        self.bias: np.ndarray | None = None  # (C,)

    def fit(self, f: np.ndarray, mask: np.ndarray, steps: int | None = None) -> ExpertOutput:
        """Fit to the region ``mask`` of ``f`` (closed form: ``steps`` is not used)."""
        rng = np.random.default_rng(self.seed)
        s = self.size
        r = s // 2
        fe, me = even_crop(f), even_crop(mask)
        phases = checkerboard_split(fe)
        mphases = checkerboard_split(me)
        pairs = ((1, 0), (0, 1), (3, 2), (2, 3))  # input index -> target index
        c = f.shape[0]
        self.weights = np.zeros((c, s, s), np.float32)
        self.bias = np.zeros(c, np.float32)
        for ch in range(c):
            xs, ys = [], []
            per_pair = max(1, self.max_samples // 4)
            for i, t in pairs:
                inp = np.pad(phases[i][ch], r, mode="reflect")
                tgt = phases[t][ch]
                yy, xx = np.nonzero(mphases[t])
                if yy.size == 0:
                    continue
                if yy.size > per_pair:
                    sel = rng.choice(yy.size, per_pair, replace=False)
                    yy, xx = yy[sel], xx[sel]
                win = np.lib.stride_tricks.sliding_window_view(inp, (s, s))
                xs.append(win[yy, xx].reshape(yy.size, -1))
                ys.append(tgt[yy, xx])
            x = np.concatenate(xs).astype(np.float64)
            y = np.concatenate(ys).astype(np.float64)
            xm, ym = x.mean(axis=0), y.mean()
            xc = x - xm
            gram = xc.T @ xc
            gram[np.diag_indices_from(gram)] += self.ridge * max(1.0, np.trace(gram) / len(gram))
            wv = np.linalg.solve(gram, xc.T @ (y - ym))
            self.weights[ch] = wv.reshape(s, s).astype(np.float32)
            self.bias[ch] = np.float32(ym - xm @ wv)
        lo_hi = _region_range(box_filter(f, self.filter_size), mask) if self.clamp else None

        def apply(img: np.ndarray) -> np.ndarray:
            return np.stack([
                ndi.correlate(img[ch], self.weights[ch], mode="reflect") + self.bias[ch]
                for ch in range(img.shape[0])
            ]).astype(np.float32)

        blind = blind_prediction(f, apply)
        if lo_hi is not None:  # data term only, as for the CNN expert
            blind = np.clip(blind, lo_hi[0], lo_hi[1])
        return ExpertOutput(blind=blind, full=apply(f),
                            info={"steps": 0, "samples": int(x.shape[0])})


class CNNExpert(Noise2FastTrainer):
    """A Noise2Fast CNN trained on its region only, with a clamped data term.

    The network is kept between alternations (warm start).  Only the data
    term (``blind``) is clamped to the intensity range the expert saw in its
    region (collapse guard); the denoising output is left alone, since
    boundary pixels legitimately fall outside that range.
    """

    kind = "cnn"

    def __init__(self, channels: int = 1, *, clamp: bool = True, filter_size: int = 5,
                 **trainer):
        super().__init__(channels, **trainer)
        self.clamp = clamp
        self.filter_size = filter_size

    def iter_fit(self, f: np.ndarray, mask: np.ndarray, **kw
                 ) -> Generator[int, None, ExpertOutput]:
        out = yield from super().iter_fit(f, mask, **kw)
        blind = out.blind
        if self.clamp:
            lo, hi = _region_range(box_filter(f, self.filter_size), mask)
            blind = np.clip(blind, lo, hi)
        return ExpertOutput(blind=blind, full=out.full, info=out.info)


def make_expert(kind: str, *, channels: int, config, device, seed: int):
    """Build an expert of ``kind`` from a :class:`Self2SegConfig`."""
    if kind == "constant":
        return ConstantExpert(filter_size=config.filter_size)
    if kind == "linear":
        return LinearExpert(size=config.linear_size, clamp=config.clamp_experts,
                            filter_size=config.filter_size, seed=seed)
    if kind == "cnn":
        return CNNExpert(channels=channels, width=config.expert_width, depth=config.expert_depth,
                         lr=config.lr, batch_size=config.batch_size, crop=config.crop,
                         patience=config.patience, n_average=config.n_average,
                         clamp=config.clamp_experts, filter_size=config.filter_size,
                         device=device, seed=seed)
    raise ValueError(f"unknown expert kind {kind!r}")
