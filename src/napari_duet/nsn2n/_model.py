"""A trained NS-N2N denoiser: apply to volumes, save to / load from one safe file."""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import ModelFileError, first_line
from ..core.intensity import Normalizer
from ..core.modelfile import (
    file_int,
    file_normalizer,
    load_model_file,
    meta_state_shapes,
    save_model_file,
)
from ..core.progress import Progress, run_to_end
from ._config import NSN2NConfig
from ._noise import IDENTITY, NoiseModel
from ._volume import NORM_HIGH, NORM_LOW, prepare

if TYPE_CHECKING:
    import torch

KIND = "nsn2n"
# Bounds of a model file's "network" entry (those of NSN2NConfig; channels: the 2D U-Net's).
_MAX_WIDTH, _MAX_DEPTH, _MAX_CHANNELS = 512, 6, 16
# Pixels per forward pass at inference (bounds memory on CPU and small GPUs).
_PIXEL_BUDGET = 8 * 256 * 256


@dataclass
class DenoiseResult:
    """Output of :meth:`NSN2NModel.predict`.

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

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary: what was written (the caller adds model and input)."""
        from ..core.versions import versions

        return {"method": "nsn2n", "mode": "apply",
                "shape": [int(s) for s in np.shape(self.denoised)],
                "tta": self.uncertainty is not None, "versions": versions()}

    def save(self, folder, **kwargs) -> list:
        """Write denoised.tif, uncertainty.tif and report.json into ``folder``
        (:func:`._save.save_result`)."""
        from ._save import save_result

        return save_result(self, folder, **kwargs)


@dataclass(kw_only=True)
class DenoiseProgress(Progress):
    """Yielded by :meth:`NSN2NModel.iter_predict` after each slice (stage ``"denoise"``).

    ``done`` of ``total`` slices, ``elapsed`` and ``eta`` in seconds.
    """

    stage: str = "denoise"

    def fields(self) -> tuple[str, int | None, int | None, dict[str, Any]]:
        """Slices denoised, and the ETA (None until known)."""
        stage, done, total, extra = super().fields()
        extra["eta"] = self.eta
        return stage, done, total, extra


def _dihedral(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """One of the 8 flips/rotations of the last two axes."""
    if flip:
        x = x[..., ::-1]
    return np.rot90(x, k, axes=(-2, -1))


def _undihedral(y: np.ndarray, k: int, flip: bool) -> np.ndarray:
    y = np.rot90(y, -k, axes=(-2, -1))
    return y[..., ::-1] if flip else y


# Model-file ``network.arch`` of the networks that read neighbouring slices, and
# the ``context`` each was trained with; any other file holds the paper's 2D U-Net.
_CONTEXT_OF_ARCH = {"nsn2n-context": "2.5d", "nsn2n-blind": "blind"}


class NSN2NModel:
    """A trained NS-N2N network with its configuration and normalisation.

    Parameters
    ----------
    net : torch.nn.Module
        The denoiser (a :class:`~napari_duet.core.networks.unet.UNet2D`).
    config : NSN2NConfig
        Configuration it was trained with.
    normalizers : list of Normalizer
        Normalisation of the training stacks (kept for provenance; volumes to
        denoise are normalised with their own percentiles by default).
    training : dict, optional
        Training facts (tau, matched fraction, iterations done, ...).
    noise : NoiseModel, optional
        The fitted noise model (default: Gaussian, no transform; files written
        before noise models load so).  Volumes are transformed with it before
        the normalisation and mapped back after the network (``_noise.py``).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        config: NSN2NConfig,
        normalizers: list[Normalizer],
        training: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        noise: NoiseModel | None = None,
    ) -> None:
        from ..core.devices import resolve_device

        self.config = config
        self.noise = noise or IDENTITY
        self.normalizers = list(normalizers)
        self.training = dict(training or {})
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()

    def metadata(self) -> dict[str, Any]:
        """Kind, configuration, network, normalisation and training facts (for reports)."""
        return {
            "kind": KIND,
            "config": self.config.to_dict(),
            "network": self.net.config(),
            "context": self.context,
            "noise_model": self.noise.to_dict(),
            "normalizers": [n.to_dict() for n in self.normalizers],
            "training": self.training,
        }

    # ------------------------------------------------------------------ inference
    def iter_predict(
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
        layout, stacks, fitted = prepare(volume, axis, noise=self.noise)
        norms = fitted if normalizers is None else list(normalizers)
        if len(norms) != len(stacks):
            norms = fitted
        n_slices = stacks.shape[0] * stacks.shape[1]
        out = np.empty_like(stacks)
        unc = np.empty_like(stacks) if tta else None
        t0 = time.perf_counter()
        done = 0
        # With a second stage on runs of slices progress counts the network's estimates
        # (one per slice, all computed before the stage runs); otherwise the finished
        # slices.  Either way every slice's network pass is a point to stop at.
        staged = not self._per_slice_stage
        with torch.inference_mode():
            for s, stack in enumerate(stacks):
                w = self.pair_weights(stack) if self.is_context else None  # blind: none
                sigma = self.noise_level(stack)
                for item in self.iter_slices(stack, 0, stack.shape[0], w, tta, sigma):
                    if item is not None:
                        z, mean, std = item
                        d = norms[s].inverse(mean)
                        out[s, z] = self.noise.inverse(d)
                        if unc is not None:
                            unc[s, z] = self.noise.inverse_scale(norms[s].inverse_scale(std), d)
                    if (item is None) == staged:
                        done += 1
                        el = time.perf_counter() - t0
                        yield DenoiseProgress(done=done, total=n_slices, elapsed=el,
                                              eta=el / done * (n_slices - done))
        denoised = layout.from_stacks(out)
        uncertainty = None if unc is None else layout.from_stacks(unc)
        return DenoiseResult(denoised, uncertainty)

    def predict(self, volume, axis: int = 0, tta: bool | None = None) -> DenoiseResult:
        """Denoise a volume (see :meth:`iter_predict`)."""
        return run_to_end(self.iter_predict(volume, axis=axis, tta=tta))

    @property
    def context(self) -> str:
        """``"2.5d"``, ``"blind"`` or ``"2d"``: what the network reads."""
        return _CONTEXT_OF_ARCH.get(getattr(self.net, "arch", None), "2d")

    @property
    def wiener_mode(self) -> str:
        """The second stage after the network (:data:`._blind.STAGES`): ``config.wiener``,
        or for ``auto`` the one chosen after training (``training["wiener"]``; models
        saved before the check: ``off``; before the 3D stages: ``2d`` where it was
        used).  The 2D network (``context="2d"``) has none."""
        if self.context == "2d":
            return "off"
        choice = "2d" if self.config.wiener == "on" else self.config.wiener
        if choice != "auto":
            return choice
        check = self.training.get("wiener") or {}
        return check.get("mode", "2d" if check.get("use") else "off")

    @property
    def mix_weights(self) -> dict[str, float] | None:
        """The ``mix`` stage's weights of each candidate (None for any other stage)."""
        if self.wiener_mode != "mix":
            return None
        return dict((self.training.get("wiener") or {}).get("weights") or {})

    @property
    def use_wiener(self) -> bool:
        """Whether the network's output goes through a second stage."""
        return self.wiener_mode != "off"

    def describe_wiener(self) -> str | None:
        """One line on the second stage for logs and the widget (None: the 2D network)."""
        if self.context == "2d":
            return None
        mode = self.wiener_mode
        state = f"Wiener stage {mode}" if mode != "off" else "Wiener stage off"
        if self.config.wiener != "auto":
            return f"{state} (set by the wiener option)"
        check = self.training.get("wiener")
        if not check:
            return f"{state} (model trained before the stage existed)"
        if "reason" in check:
            return f"{state}: {check['reason']}"
        if mode == "mix":
            parts = ", ".join(f"{m} {w:+.2f}" for m, w in self.mix_weights.items())
            return (f"{state}: the weighted sum of the candidates closest to "
                    f"{len(check['slices'])} recorrupted slices ({parts}), ahead of the best "
                    f"one on the slices it was not fitted on")
        if "losses" not in check:  # saved before the 3D stages
            better = "lowers" if check["use"] else "does not lower"
            return (f"{state}: it {better} the error on {len(check['slices'])} "
                    f"recorrupted slices")
        return (f"{state}: the lowest error of {'/'.join(check['losses'])} on "
                f"{len(check['slices'])} recorrupted slices")

    @property
    def is_context(self) -> bool:
        """True for the 2.5D two-mode network (``context="2.5d"``)."""
        return self.context == "2.5d"

    @property
    def is_blind(self) -> bool:
        """True for the blind-spot 2.5D network (``context="blind"``)."""
        return self.context == "blind"

    @property
    def halo(self) -> int:
        """Slices read on each side of the slice denoised (2 for 2.5D and blind, 0 for 2D;
        a 3D second stage adds the slices it reads)."""
        from ._blind import stage_reach

        return 0 if self.context == "2d" else 2 + stage_reach(self.wiener_mode)

    def pair_weights(self, stack: np.ndarray) -> np.ndarray:
        """Matched-region maps W of a normalised (Z, Y, X) stack (threshold fitted to it)."""
        from ._guide import guide_stack
        from ._weights import weight_maps

        return weight_maps(guide_stack(stack, self.config), self.config)[0]

    def noise_level(self, stack) -> float | None:
        """The blind network's white-noise level in a normalised (Z, Y, X) stack.

        :func:`~napari_duet.core.noiselevel.white_noise_sigma` (its flattest
        pixels; ``stack`` may be a lazy reader of slices).  None for the other
        networks, and where the stack is too small to tell (then each slice's
        own estimate is used).
        """
        if not self.is_blind:
            return None
        from ..core.noiselevel import white_noise_sigma

        return white_noise_sigma(stack)

    def predict_normalized(self, image: np.ndarray, tta: bool = False) -> np.ndarray:
        """Denoise one normalised (Y, X) slice with the 2D network; returns normalised float32.

        For the 2.5D network use :meth:`predict_stack_slice` (it needs the neighbours);
        here the slice is treated as a stack of identical slices.
        """
        import torch

        img = np.asarray(image, np.float32)
        with torch.inference_mode():
            if self.is_blind:  # no neighbours (zeros): copies of the slice would leak its noise
                return self.predict_stack_slice(img[None], 0, None, tta)[0]
            if self.is_context:
                return self.predict_stack_slice(np.stack([img] * 3), 1, None, tta)[0]
            return self._predict_slice(img, tta)[0]

    def predict_stack_slice(
        self, stack: np.ndarray, z: int, w: np.ndarray | None, tta: bool,
        sigma: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Denoise slice ``z`` of a normalised (Z, Y, X) stack: mean and TTA spread.

        The network's estimate (:meth:`network_estimate`), then the second stage
        (:attr:`wiener_mode`).  A stage that reads neighbouring slices' estimates
        computes them too (:meth:`iter_slices`: to denoise many slices, use it).
        ``sigma``: the blind network's noise level (default: :meth:`noise_level`
        of ``stack``).
        """
        from ._blind import stage_stack

        if sigma is None:
            sigma = self.noise_level(stack)
        if not self._per_slice_stage:
            item = next(i for i in self.iter_slices(stack, z, z + 1, w, tta, sigma) if i)
            return item[1], item[2]
        mean, std, sigma = self.network_estimate(stack, z, w, tta, sigma)
        if self.wiener_mode != "off":  # the blind network's 2d stage
            mean = stage_stack(stack[z][None], mean[None], "2d", [sigma])[0]
        return mean, std

    @property
    def _per_slice_stage(self) -> bool:
        """No second stage, or the blind network's ``2d`` one (each slice on its own)."""
        mode = self.wiener_mode
        return mode == "off" or (self.is_blind and mode == "2d")

    def iter_slices(
        self, stack: np.ndarray, z0: int, z1: int, w: np.ndarray | None, tta: bool,
        sigma: float | None = None,
    ) -> Generator[tuple[int, np.ndarray, np.ndarray] | None, None, None]:
        """Denoise slices ``z0..z1-1`` of a normalised (Z, Y, X) stack, in order.

        Yields ``(z, mean, std)`` per slice.  A second stage that works on runs
        of slices (the 3D stages, and any stage after the 2.5D network, which
        reads each slice's noise spectrum) first computes the network's estimate
        of every slice it reads (``stage_reach`` more on each side, within the
        stack), yielding ``None`` after each (a point to report progress or
        stop), then runs the stage.  Slices ``z0..z1-1`` come out the same
        whichever run of the stack is given, as long as it holds ``self.halo``
        slices on each side of them (or the stack's end) and the same ``sigma``
        (the blind network's noise level, :meth:`noise_level` of the whole stack;
        None: each slice's own, see :meth:`network_estimate`).
        """
        from ._blind import stage_reach, stage_stack

        if self._per_slice_stage:
            for z in range(z0, z1):
                yield (z, *self.predict_stack_slice(stack, z, w, tta, sigma))
            return
        mode = self.wiener_mode
        reach = stage_reach(mode)
        lo, hi = max(0, z0 - reach), min(stack.shape[0], z1 + reach)
        means, stds, sigmas = [], [], []
        for z in range(lo, hi):
            mean, std, sig = self.network_estimate(stack, z, w, tta, sigma)
            means.append(mean)
            stds.append(std)
            sigmas.append(sig)
            yield None
        white = self.is_blind  # the 2.5D network's noise may be correlated: spectra
        out = stage_stack(stack[lo:hi], np.stack(means), mode, sigmas if white else None,
                          self.mix_weights)
        for z in range(z0, z1):
            yield z, out[z - lo], stds[z - lo]

    def network_estimate(self, stack: np.ndarray, z: int, w: np.ndarray | None, tta: bool,
                         sigma: float | None = None
                         ) -> tuple[np.ndarray, np.ndarray, float | None]:
        """The network's estimate of slice ``z``, its TTA spread and (blind) the noise level.

        ``sigma``: the blind network's noise level (:meth:`noise_level`); None:
        the slice's own (Immerkaer's estimator, which counts texture as noise:
        the training previews use it).

        For the 2.5D network both parity modes run; their mean is taken where
        slice z matches its neighbours (``w``, pair maps), the ``self`` mode's
        prediction elsewhere (the ``gap`` mode cannot see what only slice z shows).
        """
        import torch

        from ._context import context_input, slice_match

        with torch.inference_mode():
            if self.is_blind:
                return self._blind_blend(stack, z, tta, sigma)
            if not self.is_context:
                return (*self._predict_slice(np.asarray(stack[z], np.float32), tta), None)
            preds = {}
            for mode in ("self", "gap"):
                preds[mode] = self._predict_all(context_input(stack, z, mode), tta)
        m = slice_match(w, z, stack.shape[0], stack.shape[1:])
        p_self, p_gap = preds["self"], preds["gap"]
        mean = m * 0.5 * (p_self.mean(0) + p_gap.mean(0)) + (1 - m) * p_self.mean(0)
        # Uncertainty: spread of all predictions of both modes.  Their errors come
        # from different slices' noise, so their disagreement tracks the local
        # error; where the slices do not match it is large, as it should be.
        std = np.concatenate([p_self, p_gap]).std(axis=0)
        return mean.astype(np.float32), std.astype(np.float32), None

    def _blind_blend(self, stack: np.ndarray, z: int, tta: bool, sigma: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray, float]:
        """Blind-spot network: J-invariant estimate, combined with the pixel itself.

        Every grid phase is hidden once (each under the flips/rotations); the mean
        over them, ``mu``, never depends on a pixel's own value.  ``mu`` is then
        combined with the noisy slice as ``mu + k (x - mu)`` (:func:`_blind.posterior`).
        Returns the blend, the spread of ``mu`` over the flips/rotations (the
        uncertainty) and the slice's noise level.
        """
        from ._blind import posterior, predict_mu
        from ._guide import _noise_sigma

        mus = predict_mu(self._predict_all, stack, z, tta)
        x = np.asarray(stack[z], np.float32)
        if sigma is None:  # one estimate for the blend and the second stage
            sigma = _noise_sigma(x)
        mean = posterior(x, mus.mean(0), sigma)
        std = mus.std(axis=0) if len(mus) > 1 else np.zeros_like(mean)
        return mean.astype(np.float32), std.astype(np.float32), sigma

    def _predict_all(self, img: np.ndarray, tta: bool) -> np.ndarray:
        """Predictions (T, Y, X) for each flip/rotation of a (C, Y, X) input."""
        transforms = [(k, f) for f in (False, True) for k in range(4)] if tta else [(0, False)]
        preds: list = [None] * len(transforms)
        for parity in (0, 1):
            idx = [n for n, t in enumerate(transforms) if t[0] % 2 == parity]
            if not idx:
                continue
            batch = np.stack([_dihedral(img, *transforms[n]) for n in idx])
            res = self._forward(batch)
            for n, r in zip(idx, res, strict=True):
                preds[n] = _undihedral(r, *transforms[n])
        return np.stack(preds).astype(np.float32)

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
        """Run the network on (B, Y, X) or (B, C, Y, X), tiled above the tile size."""
        import torch

        from ..core.networks.unet import predict_2d

        if batch.ndim == 3:
            batch = batch[:, None]
        b, _, h, w = batch.shape
        tile = self.config.tile
        if h > tile or w > tile:
            return np.stack([
                predict_2d(self.net, im, device=self.device, tile=tile,
                           overlap=min(32, tile // 4))[0]
                for im in batch
            ])
        chunk = max(1, _PIXEL_BUDGET // (h * w))
        outs = []
        for i in range(0, b, chunk):
            t = torch.from_numpy(np.ascontiguousarray(batch[i : i + chunk]))
            with torch.inference_mode():
                outs.append(self.net(t.to(self.device))[:, 0].float().cpu().numpy())
        return np.concatenate(outs)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (weights, config, normalisation, training info) to one file."""
        return save_model_file(
            path,
            kind=KIND,
            # What defines the model; run-time options (tta, tile, device) are the user's.
            config=self.config.model_dict(),
            tensors=dict(self.net.state_dict()),
            extra={
                "network": self.net.config(),
                "normalizers": [n.to_dict() for n in self.normalizers],
                "normalization": {"mode": "percentile", "low": NORM_LOW, "high": NORM_HIGH},
                "info": self.training,
                "noise_model": self.noise.to_dict(),
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
        from ..core.devices import resolve_device

        dev = resolve_device(device)
        name = Path(path).name

        def expect(header: dict) -> dict:
            # The network the header asks for, built on the meta device (no memory),
            # so that its shapes are checked against the file before it is built.
            network = _network_spec(header["extra"].get("network"))
            return meta_state_shapes(lambda: build_net(network))

        try:
            mf = load_model_file(path, kind=KIND, device="cpu", expect=expect,
                                 what="NS-N2N model")
            network = _network_spec(mf.extra["network"])
            cfg = dict(mf.config)  # older files: see core.modelfile.migrate
            noise = NoiseModel.from_dict(mf.extra["noise_model"])
            cfg["noise_model"] = noise.kind
            config = NSN2NConfig.from_model_dict(cfg, device=str(device))
            norms = [file_normalizer(d, f"normalizers[{i}]")
                     for i, d in enumerate(mf.extra.get("normalizers") or [])]
            net = build_net(network)
            net.load_state_dict(mf.tensors, strict=True)
        except ModelFileError:
            raise
        except Exception as exc:  # wrong shapes/keys, bad config: the file is damaged
            raise ModelFileError(
                f"{name} is not a usable NS-N2N model ({first_line(exc)})") from None
        return cls(net, config, norms, mf.extra.get("info", {}), device=dev, noise=noise)


def build_net(network: dict):
    """Network from a model file's ``network`` entry (2.5D, blind-spot or the paper's 2D U-Net)."""
    from ..core.networks.unet import UNet2D
    from ._blind import BlindNet
    from ._context import ContextNet

    if network.get("arch") == ContextNet.arch:
        return ContextNet(width=int(network["width"]), depth=int(network["depth"]))
    if network.get("arch") == BlindNet.arch:
        return BlindNet(width=int(network["width"]), depth=int(network["depth"]))
    return UNet2D(**network)


def _network_spec(network: Any) -> dict[str, Any]:
    """A model file's ``network`` entry, checked: known fields, sizes within bounds.

    Raises ValueError naming the field; sizes beyond the bounds would build
    networks of many gigabytes from a few bytes of header.
    """
    if not isinstance(network, dict):
        raise ValueError(f"network must be a mapping, got {type(network).__name__}")
    if network.get("arch") in _CONTEXT_OF_ARCH:
        unknown = set(network) - {"arch", "width", "depth"}
        if unknown:
            raise ValueError(f"unknown network fields: {', '.join(sorted(map(str, unknown)))}")
        return {"arch": network["arch"],
                "width": file_int(network.get("width"), "network.width", 1, _MAX_WIDTH),
                "depth": file_int(network.get("depth"), "network.depth", 0, _MAX_DEPTH)}
    known = {"in_channels", "out_channels", "width", "depth", "residual"}
    unknown = set(network) - known
    if unknown:
        raise ValueError(f"unknown network fields: {', '.join(sorted(map(str, unknown)))}")
    spec: dict[str, Any] = {}
    for key in ("in_channels", "out_channels"):
        if key in network:
            spec[key] = file_int(network[key], f"network.{key}", 1, _MAX_CHANNELS)
    if "width" in network:
        spec["width"] = file_int(network["width"], "network.width", 1, _MAX_WIDTH)
    if "depth" in network:
        spec["depth"] = file_int(network["depth"], "network.depth", 0, _MAX_DEPTH)
    if "residual" in network:
        if not isinstance(network["residual"], bool):
            raise ValueError(f"network.residual must be true or false, "
                             f"got {network['residual']!r}")
        spec["residual"] = network["residual"]
    return spec
