"""Noise2Fast training of a small CNN on the pixels of a region, and its predictions.

Shared by the engines: whole-image Noise2Fast (:func:`napari_duet.core.n2f.noise2fast`)
trains on every pixel, a Self2Seg region expert on its region only.  The
network learns to predict one checkerboard phase of the image from the other
(:mod:`._checkerboard`), so it never sees a pixel's own noise.  Training runs
on batches of random crops, so a step costs the same for any image size.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from ..tiling import apply_tiled
from ._checkerboard import blind_prediction, checkerboard_split, even_crop

__all__ = ["Noise2FastOutput", "Noise2FastTrainer", "inference_tile"]

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


@dataclass
class Noise2FastOutput:
    """Predictions of a trained network, in the normalised scale of its input (C, Y, X)."""

    blind: np.ndarray  # each pixel from the other checkerboard phase only
    full: np.ndarray  # the network applied to the whole image (the denoising)
    info: dict = field(default_factory=dict)


class Noise2FastTrainer:
    """A small CNN trained with Noise2Fast on the pixels of a region (the whole image or less).

    Batches of random crops of the squeezed checkerboard phases centred on
    target pixels of the region, masked MSE (loss only on target pixels in
    the region), Adam, early stopping on a fixed validation batch, and the
    output is the mean of the predictions of the last ``n_average``
    checkpoints.  The network is kept between calls (warm start).
    """
    #: Tile side of whole-image predictions; None: :func:`inference_tile` (set per instance).
    tile: int | None = None

    def __init__(self, channels: int = 1, width: int = 16, depth: int = 5, lr: float = 1e-3,
                 batch_size: int = 8, crop: int = 40, patience: int = 50, n_average: int = 3,
                 check_every: int = 10, device=None, seed: int = 0):
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
        self.rng = np.random.default_rng(seed)
        self.total_steps = 0

    def load_weights_from(self, other: Noise2FastTrainer, lr_factor: float = 1.0) -> None:
        """Start from another trainer's weights (fresh optimiser, learning rate scaled)."""
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
            should_stop=None) -> Noise2FastOutput:
        """Train on ``mask`` for at most ``steps`` steps; return the predictions."""
        gen = self.iter_fit(f, mask, steps=steps, should_stop=should_stop)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def iter_fit(self, f: np.ndarray, mask: np.ndarray, *, steps: int = 150,
                 should_stop=None, yield_every: int = 10
                 ) -> Generator[int, None, Noise2FastOutput]:
        """:meth:`fit` as a generator: yields the number of steps done every ``yield_every``
        steps and returns the :class:`Noise2FastOutput`.

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
        return Noise2FastOutput(blind=blind, full=full,
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
