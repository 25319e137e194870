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

from ..tiling import apply_tiled
from ._checkerboard import blind_prediction, checkerboard_split, even_crop

__all__ = ["ExpertOutput", "ConstantExpert", "LinearExpert", "CNNExpert", "box_filter",
           "make_expert", "inference_tile"]

#: Memory one inference tile may take (about three ``width``-channel activations).
INFERENCE_BYTES = 256 * 2**20


def inference_tile(net, budget_bytes: int = INFERENCE_BYTES) -> int:
    """Tile side for whole-image predictions of an N2F network: 128..1024 px.

    At inference a 3x3 convolution holds its input, the padded input and its
    output, about ``3 * width * side**2`` float32 values; the side is chosen
    so this stays within ``budget_bytes`` (1024 px at width 16, 256 px at
    width 256), in multiples of 64.
    """
    from torch import nn

    width = max(m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d))
    side = int(np.sqrt(budget_bytes / (3 * 4 * width))) // 64 * 64
    return int(min(1024, max(128, side)))


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

    def __init__(self, filter_size: int = 5, **_):
        self.filter_size = filter_size
        self.value: np.ndarray | None = None

    def fit(self, f: np.ndarray, mask: np.ndarray, **_) -> ExpertOutput:
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
                 clamp: bool = True, filter_size: int = 5, seed: int = 0, **_):
        self.size = size
        self.max_samples = max_samples
        self.ridge = ridge
        self.clamp = clamp
        self.filter_size = filter_size
        self.seed = seed
        self.weights: np.ndarray | None = None  # (C, s, s)
        self.bias: np.ndarray | None = None  # (C,)

    def fit(self, f: np.ndarray, mask: np.ndarray, **_) -> ExpertOutput:
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


class CNNExpert:
    """Small CNN trained with Noise2Fast on crops centred in its region.

    Batches of random crops of the squeezed checkerboard phases centred on
    target pixels of the region, masked MSE (loss only on target pixels in
    the region), Adam, early stopping on a fixed validation batch, and the
    output is the mean of the predictions of the last ``n_average``
    checkpoints.  The network is kept between alternations (warm start).
    """

    kind = "cnn"
    #: Tile side of whole-image predictions; None: :func:`inference_tile` (set per instance).
    tile: int | None = None

    def __init__(self, channels: int = 1, width: int = 16, depth: int = 5, lr: float = 1e-3,
                 batch_size: int = 8, crop: int = 40, patience: int = 50, n_average: int = 3,
                 check_every: int = 10, clamp: bool = True, filter_size: int = 5,
                 device=None, seed: int = 0, **_):
        import torch

        from ..networks.n2f_cnn import N2FNet

        self.device = device if device is not None else torch.device("cpu")
        self.seed = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = N2FNet(channels, channels, width=width, depth=depth).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.batch_size = batch_size
        self.crop = crop
        self.patience = patience
        self.n_average = n_average
        self.check_every = check_every
        self.clamp = clamp
        self.filter_size = filter_size
        self.rng = np.random.default_rng(seed)
        self.total_steps = 0

    def load_weights_from(self, other: CNNExpert, lr_factor: float = 1.0) -> None:
        """Start from another expert's weights (fresh optimiser, learning rate scaled)."""
        self.net.load_state_dict(other.net.state_dict())
        self.total_steps = max(self.total_steps, 1)
        for grp in self.opt.param_groups:
            grp["lr"] *= lr_factor

    # -- data -------------------------------------------------------------
    def _prepare(self, f: np.ndarray, mask: np.ndarray):
        fe, me = even_crop(f), even_crop(mask)
        phases = checkerboard_split(fe)
        mphases = checkerboard_split(me.astype(np.float32)[None])
        cs = self.crop
        pairs = []
        for i, t in ((1, 0), (0, 1), (3, 2), (2, 3)):
            h, w = phases[t].shape[-2:]
            ch, cw = min(cs, h), min(cs, w)
            ry, rx = ch // 2, cw // 2
            mode = "reflect" if min(h, w) > max(ry, rx) else "edge"
            inp = np.pad(phases[i], ((0, 0), (ry, ch - ry), (rx, cw - rx)), mode=mode)
            tgt = np.pad(phases[t], ((0, 0), (ry, ch - ry), (rx, cw - rx)), mode=mode)
            msk = np.pad(mphases[t], ((0, 0), (ry, ch - ry), (rx, cw - rx)), mode="constant")
            centres = np.flatnonzero(mphases[t][0] > 0)
            if centres.size:
                pairs.append((inp, tgt, msk, centres, w, ch, cw))
        return pairs

    def _batch(self, pairs, n: int, rng: np.random.Generator):
        import torch

        k = int(rng.integers(len(pairs)))
        inp, tgt, msk, centres, w, ch, cw = pairs[k]
        idx = centres[rng.integers(centres.size, size=n)]
        ys, xs = np.divmod(idx, w)
        # Crop top-left in padded coordinates = centre in unpadded coordinates.
        xi = np.stack([inp[:, y:y + ch, x:x + cw] for y, x in zip(ys, xs, strict=True)])
        yt = np.stack([tgt[:, y:y + ch, x:x + cw] for y, x in zip(ys, xs, strict=True)])
        mt = np.stack([msk[:, y:y + ch, x:x + cw] for y, x in zip(ys, xs, strict=True)])
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        return to(xi), to(yt), to(mt)

    # -- training ---------------------------------------------------------
    def fit(self, f: np.ndarray, mask: np.ndarray, *, steps: int = 150,
            should_stop=None) -> ExpertOutput:
        """Train on ``mask`` for at most ``steps`` steps; return the expert's predictions."""
        gen = self.iter_fit(f, mask, steps=steps, should_stop=should_stop)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def iter_fit(self, f: np.ndarray, mask: np.ndarray, *, steps: int = 150,
                 should_stop=None, yield_every: int = 10
                 ) -> Generator[int, None, ExpertOutput]:
        """:meth:`fit` as a generator: yields the number of steps done every ``yield_every``
        steps and returns the :class:`ExpertOutput`.

        The training is the same as :meth:`fit` (same random numbers), whoever
        drives it; closing the generator between yields stops the training
        there (the network keeps the weights it has).
        """
        import torch

        pairs = self._prepare(f, mask)
        if not pairs:
            raise ValueError("region has no pixels to train on")
        val_rng = np.random.default_rng(self.seed + 7919)
        val = [self._batch(pairs, self.batch_size, val_rng) for _ in range(2)]
        best = np.inf
        since_best = 0
        snapshots: list[dict] = []
        self.net.train()
        done = 0
        for step in range(1, steps + 1):
            xi, yt, mt = self._batch(pairs, self.batch_size, self.rng)
            out = self.net(xi)
            loss = (((out - yt) ** 2) * mt).sum() / mt.sum().clamp_min(1.0)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            done = step
            if step % self.check_every == 0 or step == steps:
                with torch.no_grad():
                    vl = 0.0
                    for vx, vy, vm in val:
                        vl += float((((self.net(vx) - vy) ** 2) * vm).sum() / vm.sum().clamp_min(1))
                snapshots.append({k: v.detach().clone() for k, v in self.net.state_dict().items()})
                snapshots = snapshots[-self.n_average:]
                if vl < best * (1 - 1e-4):
                    best, since_best = vl, 0
                else:
                    since_best += self.check_every
                if self.patience and since_best >= self.patience:
                    break
            if should_stop is not None and should_stop():
                break
            if yield_every and step % yield_every == 0 and step < steps:
                yield step
        self.total_steps += done
        # The predictions of a large image take seconds: yield between their passes too.
        blind, full = yield from self._iter_predict_average(
            f, snapshots, done if yield_every else None)
        if self.clamp:
            # Only the data term is clamped (collapse guard); the denoising output is
            # left alone, since boundary pixels legitimately fall outside the range.
            lo, hi = _region_range(box_filter(f, self.filter_size), mask)
            blind = np.clip(blind, lo, hi)
        return ExpertOutput(blind=blind, full=full,
                            info={"steps": done, "val_loss": float(best)})

    def _predict_average(self, f: np.ndarray, snapshots: list[dict]):
        """Blind and full predictions averaged over ``snapshots`` (the current weights if none)."""
        gen = self._iter_predict_average(f, snapshots, None)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def _iter_predict_average(self, f: np.ndarray, snapshots: list[dict], mark: int | None):
        """:meth:`_predict_average` as a generator yielding ``mark`` between its passes
        (nothing when ``mark`` is None); the network gets its weights back even when the
        generator is closed early."""
        import torch

        current = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.net.eval()
        blind = np.zeros_like(f, dtype=np.float32)
        full = np.zeros_like(f, dtype=np.float32)

        # Tiled, so memory stays bounded on large images; tiles overlap by the network's
        # halo and drop it, which reproduces whole-image inference (reflect padding at
        # the image border included) up to float rounding.
        halo = self.net.halo
        tile = max(int(self.tile or inference_tile(self.net)), 4 * halo)

        def run_tile(img: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                t = torch.from_numpy(np.ascontiguousarray(img[None], dtype=np.float32))
                return self.net(t.to(self.device))[0].cpu().numpy()

        def run(img: np.ndarray) -> np.ndarray:
            return apply_tiled(run_tile, img, tile=tile, overlap=halo)

        if snapshots and _close_weights(snapshots):
            # One network with the snapshots' mean weights: near the end of a converged
            # training they lie close together, where averaging weights and averaging
            # predictions agree, at a third of the inference cost for three snapshots.
            snapshots = [{k: torch.stack([s[k] for s in snapshots]).mean(dim=0)
                          for k in current}]
        try:
            for snap in snapshots or [current]:
                self.net.load_state_dict(snap)
                blind += blind_prediction(f, run)
                if mark is not None:
                    yield mark
                full += run(f)
                if mark is not None:
                    yield mark
        finally:
            self.net.load_state_dict(current)
            self.net.train()
        n = max(1, len(snapshots))
        return blind / n, full / n


def _close_weights(snapshots: list[dict], tol: float = 0.05) -> bool:
    """True when every snapshot lies within ``tol`` (relative L2) of the first one.

    Early in training (a short run) snapshots are far apart and their mean
    weights need not be a good network, so their predictions are averaged.
    """
    import torch

    ref = torch.cat([v.float().ravel() for v in snapshots[0].values()])
    scale = float(ref.norm()) or 1.0
    for snap in snapshots[1:]:
        vec = torch.cat([v.float().ravel() for v in snap.values()])
        if float((vec - ref).norm()) > tol * scale:
            return False
    return True


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
