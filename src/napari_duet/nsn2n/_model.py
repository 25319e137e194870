"""A trained NS-N2N denoiser: apply to volumes, save to / load from one safe file."""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import ModelFileError
from .._progress import run_to_end
from ..intensity import Normalizer
from ..modelfile import load_model_file, save_model_file
from ._config import NSN2NConfig
from ._volume import NORM_HIGH, NORM_LOW, prepare

if TYPE_CHECKING:
    import torch

KIND = "nsn2n"
# Pixels per forward pass at inference (bounds memory on CPU and small GPUs).
_PIXEL_BUDGET = 8 * 256 * 256


@dataclass
class DenoiseResult:
    """Output of :meth:`NSN2NModel.denoise`.

    Attributes
    ----------
    denoised : ndarray
        float32, same shape as the input, in the input's intensity scale.
    uncertainty : ndarray or None
        float32, same shape, in input intensity units: the per-pixel standard
        deviation of the predictions over the 8 flips/rotations (None without TTA).
    """

    denoised: np.ndarray
    uncertainty: np.ndarray | None


@dataclass
class DenoiseProgress:
    """Yielded by :meth:`NSN2NModel.iter_denoise` after each slice."""

    done: int
    total: int
    elapsed: float
    eta: float


def _dihedral(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """One of the 8 flips/rotations of the last two axes."""
    if flip:
        x = x[..., ::-1]
    return np.rot90(x, k, axes=(-2, -1))


def _undihedral(y: np.ndarray, k: int, flip: bool) -> np.ndarray:
    y = np.rot90(y, -k, axes=(-2, -1))
    return y[..., ::-1] if flip else y


class NSN2NModel:
    """A trained NS-N2N network with its configuration and normalisation.

    Parameters
    ----------
    net : torch.nn.Module
        The denoiser (a :class:`~napari_duet.networks.unet.UNet2D`).
    config : NSN2NConfig
        Configuration it was trained with.
    normalizers : list of Normalizer
        Normalisation of the training stacks (kept for provenance; volumes to
        denoise are normalised with their own percentiles by default).
    info : dict, optional
        Training facts (tau, matched fraction, iterations done, ...).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        config: NSN2NConfig,
        normalizers: list[Normalizer],
        info: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        from ..devices import resolve_device

        self.config = config
        self.normalizers = list(normalizers)
        self.info = dict(info or {})
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()

    # ------------------------------------------------------------------ inference
    def iter_denoise(
        self,
        volume,
        axis: int = 0,
        tta: bool | None = None,
        normalizers: list[Normalizer] | None = None,
    ) -> Generator[DenoiseProgress, None, DenoiseResult]:
        """Denoise slice by slice, yielding progress after each slice.

        Parameters
        ----------
        volume : array-like
            nD array (3D or more); ``axis`` is the slice axis, the last two other
            axes the image plane, any further axis is a separate stack.
        axis : int
            Slice axis.
        tta : bool, optional
            Average over the 8 flips/rotations and return their spread as the
            uncertainty (default: ``config.tta``).
        normalizers : list of Normalizer, optional
            One per stack; default: fitted to ``volume`` (percentiles), so a
            model applies to volumes with another intensity range.
        """
        import torch

        tta = self.config.tta if tta is None else bool(tta)
        layout, stacks, fitted = prepare(volume, axis)
        norms = fitted if normalizers is None else list(normalizers)
        if len(norms) != len(stacks):
            norms = fitted
        n_slices = stacks.shape[0] * stacks.shape[1]
        out = np.empty_like(stacks)
        unc = np.empty_like(stacks) if tta else None
        t0 = time.perf_counter()
        done = 0
        with torch.inference_mode():
            for s, stack in enumerate(stacks):
                for z, img in enumerate(stack):
                    mean, std = self._predict_slice(img, tta)
                    out[s, z] = norms[s].inverse(mean)
                    if unc is not None:
                        unc[s, z] = norms[s].inverse_scale(std)
                    done += 1
                    el = time.perf_counter() - t0
                    yield DenoiseProgress(done, n_slices, el, el / done * (n_slices - done))
        denoised = layout.from_stacks(out)
        uncertainty = None if unc is None else layout.from_stacks(unc)
        return DenoiseResult(denoised, uncertainty)

    def denoise(self, volume, axis: int = 0, tta: bool | None = None) -> DenoiseResult:
        """Denoise a volume (see :meth:`iter_denoise`)."""
        return run_to_end(self.iter_denoise(volume, axis=axis, tta=tta))

    def predict_normalized(self, image: np.ndarray, tta: bool = False) -> np.ndarray:
        """Denoise one normalised (Y, X) slice; returns normalised float32."""
        import torch

        with torch.inference_mode():
            return self._predict_slice(np.asarray(image, np.float32), tta)[0]

    def _predict_slice(self, img: np.ndarray, tta: bool) -> tuple[np.ndarray, np.ndarray]:
        transforms = [(k, f) for f in (False, True) for k in range(4)] if tta else [(0, False)]
        preds = []
        # Transforms with the same parity of k give the same shape: batch them.
        for parity in (0, 1):
            group = [t for t in transforms if t[0] % 2 == parity]
            if not group:
                continue
            batch = np.stack([_dihedral(img, k, f) for k, f in group])
            res = self._forward(batch)
            preds += [_undihedral(r, k, f) for r, (k, f) in zip(res, group, strict=True)]
        p = np.stack(preds).astype(np.float32)
        mean = p.mean(axis=0)
        std = p.std(axis=0) if len(preds) > 1 else np.zeros_like(mean)
        return mean, std

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on (B, Y, X); tiled when a slice exceeds the tile size."""
        import torch

        from ..networks.unet import predict_2d

        b, h, w = batch.shape
        tile = self.config.tile
        if h > tile or w > tile:
            return np.stack([
                predict_2d(self.net, im, device=self.device, tile=tile,
                           overlap=min(32, tile // 4))
                for im in batch
            ])
        chunk = max(1, _PIXEL_BUDGET // (h * w))
        outs = []
        for i in range(0, b, chunk):
            t = torch.from_numpy(np.ascontiguousarray(batch[i : i + chunk]))[:, None]
            outs.append(self.net(t.to(self.device))[:, 0].float().cpu().numpy())
        return np.concatenate(outs)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (weights, config, normalisation, training info) to one file."""
        return save_model_file(
            path,
            kind=KIND,
            config=self.config.to_dict(),
            tensors=dict(self.net.state_dict()),
            extra={
                "network": self.net.config(),
                "normalizers": [n.to_dict() for n in self.normalizers],
                "normalization": {"mode": "percentile", "low": NORM_LOW, "high": NORM_HIGH},
                "info": self.info,
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> NSN2NModel:
        """Load a model file written by :meth:`save`.

        Raises
        ------
        ModelFileError
            If the file is missing, corrupted, foreign or of another kind.
        """
        from ..devices import resolve_device
        from ..networks.unet import UNet2D

        dev = resolve_device(device)
        mf = load_model_file(path, kind=KIND, device="cpu")
        name = Path(path).name
        try:
            config = NSN2NConfig.from_dict(mf.config)
            net = UNet2D(**mf.extra["network"])
            net.load_state_dict(mf.tensors, strict=True)
            norms = [Normalizer.from_dict(d) for d in mf.extra.get("normalizers", [])]
        except ModelFileError:
            raise
        except Exception as exc:  # wrong shapes/keys, bad config: the file is damaged
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise ModelFileError(f"{name} is not a usable NS-N2N model ({reason})") from None
        return cls(net, config, norms, mf.extra.get("info", {}), device=dev)
