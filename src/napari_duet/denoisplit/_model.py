"""A trained splitting model: network, normalisation, noise models, calibration."""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import DuetInputError, ModelFileError
from .._progress import run_to_end
from ..intensity import Normalizer
from ..noise_models import GaussianMixtureNoiseModel
from ._calibration import apply_calibration
from ._config import SplitConfig
from ._data import as_frames
from ._predict import PredictProgress, SplitResult, tiled_sampling

KIND = "denoisplit"


def _nm_prefix(c: int) -> str:
    """Tensor-name prefix of channel c's noise model: noise_model_a., _b., _c., _d."""
    return f"noise_model_{chr(ord('a') + c)}."


def default_channel_names(n: int) -> tuple[str, ...]:
    from ._data import channel_letter

    return tuple(channel_letter(c) for c in range(n))


def _pass_budget(filters: int, device) -> tuple[float, int]:
    """(bytes available for one batch, activation bytes per pixel and pass)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.5 * free, 24 * filters
    return 1e9, 48 * filters


def default_tile(shape: tuple[int, int], patch: int, overlap: int, multiple: int, filters: int,
                 device) -> int:
    """The tile side that computes the fewest pixels for a frame of ``shape``.

    Every tile loses ``overlap`` pixels on each inner side, so small tiles
    compute a pixel several times (4x for 256-px tiles with a 64-px margin).
    Candidates run from twice the patch up to 1024 px, or what one pass of
    the network can hold in the batch budget; a frame that fits in one tile
    is computed once, untiled.
    """
    from ..tiling import count_tiles

    budget, per_px = _pass_budget(filters, device)
    largest = int(min(1024, (budget / per_px) ** 0.5)) // multiple * multiple
    smallest = -(-max(2 * patch, 2 * overlap + multiple) // multiple) * multiple
    largest = max(largest, smallest)
    h, w = (-(-n // multiple) * multiple for n in shape)
    best = None
    for t in range(smallest, largest + 1, multiple):
        cost = count_tiles((h, w), t, overlap) * min(t, h) * min(t, w)
        if best is None or cost < best[0]:
            best = (cost, t)
    return best[1]


def default_batch_size(tile: int, filters: int, device) -> int:
    """Network passes per prediction batch for ``tile``-px tiles.

    Activations take about ``24 * filters`` bytes per pixel and pass at the
    peak in bfloat16 (measured: 24 GiB for 64 passes of 512-px tiles, 64
    filters, on an H100), twice that in float32.  A CPU gets about 1 GB; a GPU
    up to half its free memory.
    """
    budget, per_px = _pass_budget(filters, device)
    return int(max(1, min(256, budget // (per_px * tile * tile))))


class SplitModel:
    """A trained denoiSplit model.

    Build it with :func:`~napari_duet.denoisplit.train` or :meth:`load`.
    Predictions come back in the training data's intensity scale.
    """

    def __init__(
        self,
        net,
        config: SplitConfig,
        *,
        patch_size: int,
        input_norm: Normalizer,
        target_norms: list[Normalizer],
        noise_models: list[GaussianMixtureNoiseModel] | None = None,
        calibration: dict | None = None,
        channel_names: tuple[str, ...] | None = None,
        training: dict[str, Any] | None = None,
    ):
        self.net = net
        self.config = config
        self.patch_size = int(patch_size)
        self.input_norm = input_norm
        self.target_norms = list(target_norms)
        self.noise_models = noise_models
        self.calibration = calibration
        n = config.n_channels
        names = tuple(channel_names) if channel_names else default_channel_names(n)
        if len(names) != n or len(target_norms) != n:
            raise DuetInputError(
                f"a {n}-channel model needs {n} channel names and target normalisers, got "
                f"{len(names)} and {len(target_norms)}")
        if noise_models is not None and len(noise_models) != n:
            raise DuetInputError(f"a {n}-channel model needs {n} noise models, "
                                 f"got {len(noise_models)}")
        self.channel_names = names
        self.training = dict(training or {})

    @property
    def n_channels(self) -> int:
        """Number of structures the model splits an image into."""
        return self.config.n_channels

    @property
    def device(self):
        return next(self.net.parameters()).device

    # ------------------------------------------------------------------ I/O
    def metadata(self) -> dict[str, Any]:
        """Channel names, training data size, noise models and calibration present."""
        return {
            "kind": KIND,
            "n_channels": self.n_channels,
            "channel_names": list(self.channel_names),
            "lateral_context": self.config.context_count,
            "config": self.config.to_dict(),
            "patch_size": self.patch_size,
            "training_data_shape": self.training.get("data_shape"),
            "training": self.training,
            "noise_models": self.noise_models is not None,
            "noise_model_info": [nm.info for nm in self.noise_models]
            if self.noise_models else None,
            "calibration": self.calibration is not None,
            "calibration_scalar": self.calibration["scalar"] if self.calibration else None,
            "calibration_linear": self.calibration["linear"] if self.calibration else None,
            "input_normalizer": self.input_norm.to_dict(),
            "target_normalizers": [n.to_dict() for n in self.target_norms],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write one model file (safetensors + JSON header, kind ``"denoisplit"``)."""
        from ..modelfile import save_model_file

        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        nm_cfg = None
        if self.noise_models is not None:
            nm_cfg = []
            for c, nm in enumerate(self.noise_models):
                cfg, tens = nm.to_file_parts(_nm_prefix(c))
                nm_cfg.append(cfg)
                tensors.update(tens)
        extra = {
            "patch_size": self.patch_size,
            "input_normalizer": self.input_norm.to_dict(),
            "target_normalizers": [n.to_dict() for n in self.target_norms],
            "noise_models": nm_cfg,
            "calibration": _calibration_for_file(self.calibration),
            "channel_names": list(self.channel_names),
            "training": self.training,
        }
        return save_model_file(path, kind=KIND, config=self.config.to_dict(), tensors=tensors,
                               extra=extra)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> SplitModel:
        """Load a model file; foreign or damaged files raise ModelFileError."""
        from ..devices import resolve_device
        from ..modelfile import load_model_file
        from ._lvae import LadderVAE

        name = Path(path).name
        mf = load_model_file(path, kind=KIND)
        try:
            cfg = SplitConfig.from_dict(mf.config)
            ex = mf.extra
            net = LadderVAE(cfg, int(ex["patch_size"]))
            state = {k[4:]: v for k, v in mf.tensors.items() if k.startswith("net.")}
            net.load_state_dict(state, strict=True)
            nms = None
            # Files written before N-channel support hold two channels, no n_channels
            # field (SplitConfig defaults to 2) and noise models a and b.
            if ex.get("noise_models"):
                if len(ex["noise_models"]) != cfg.n_channels:
                    raise ValueError(f"{len(ex['noise_models'])} noise models for "
                                     f"{cfg.n_channels} channels")
                nms = [
                    GaussianMixtureNoiseModel.from_file_parts(c, mf.tensors, _nm_prefix(i),
                                                              name=name)
                    for i, c in enumerate(ex["noise_models"])
                ]
            model = cls(
                net,
                cfg,
                patch_size=int(ex["patch_size"]),
                input_norm=Normalizer.from_dict(ex["input_normalizer"]),
                target_norms=[Normalizer.from_dict(d) for d in ex["target_normalizers"]],
                noise_models=nms,
                calibration=ex.get("calibration"),
                channel_names=tuple(ex.get("channel_names") or
                                    default_channel_names(cfg.n_channels)),
                training=ex.get("training", {}),
            )
        except ModelFileError:
            raise
        except (KeyError, ValueError, TypeError, RuntimeError, DuetInputError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:150]
            raise ModelFileError(f"{name} is a damaged denoiSplit model ({reason})") from None
        return model.to(resolve_device(device))

    def to(self, device) -> SplitModel:
        import torch

        device = torch.device(device)
        # NHWC lets cuDNN use tensor cores for the 64-channel convolutions.
        fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.net.to(device=device, memory_format=fmt)
        if self.noise_models:
            for nm in self.noise_models:
                nm.to(device)
        return self

    # ------------------------------------------------------------ prediction
    def iter_predict(
        self,
        image,
        *,
        samples: int = 50,
        tile: int | None = None,
        overlap: int | None = None,
        batch_size: int | None = None,
        return_samples: bool = False,
        calibration: str = "scalar",
        deterministic: bool = False,
        seed: int = 0,
    ) -> Generator[PredictProgress, None, SplitResult]:
        """Split ``image`` (Y, X) or a stack (F, Y, X), frame by frame, in tiles.

        Parameters
        ----------
        image : array-like
            The superposition (sum) of the structures, same scale as the sum
            of the training channels.
        samples : int
            Posterior samples per tile (MMSE = their mean, std = their spread).
        tile : int, optional
            Tile side (rounded up to a multiple of ``2**n_levels``); default:
            the size that computes the fewest pixels (:func:`default_tile`),
            up to 1024 px, so that a frame that fits is computed untiled.
        overlap : int, optional
            Margin dropped on each tile side; default half the training patch
            (the paper's 128-px tiles on a 64-px grid keep a quarter of the
            patch; a tile twice the patch keeps its inner half).
        batch_size : int, optional
            Network passes per batch (tiles x samples); bounds memory.
            Default: about 1 GB of activations on a CPU, up to half the free
            memory on a GPU (see :func:`default_batch_size`).
        return_samples : bool
            Also return the (N, C, ...) samples.
        calibration : {"scalar", "linear", "none"}
            Which stored calibration to apply to the std.
        deterministic : bool
            Use the posterior means of the latents instead of samples (one
            pass per tile; std is zero). For tests and previews.
        seed : int
            Seed of the latent sampling.

        Yields
        ------
        PredictProgress
        Returns
        -------
        SplitResult
        """
        import torch

        if samples < 1 or (batch_size is not None and batch_size < 1):
            raise DuetInputError("samples and batch_size must be >= 1")
        frames = as_frames(image, "image")
        m = self.config.multiple
        margin = self.patch_size // 2 if overlap is None else int(overlap)
        if tile is None:
            tile = default_tile(frames.shape[-2:], self.patch_size, margin, m,
                                self.config.filters, self.device)
        if tile < m:
            raise DuetInputError(f"tile must be at least {m}")
        tile = -(-int(tile) // m) * m
        # A small tile given by the caller keeps at least its inner half.
        overlap = min(margin, tile // 4) if overlap is None else margin
        if not 0 <= overlap < tile / 2:
            raise DuetInputError("overlap must be >= 0 and below half the tile")
        if batch_size is None:
            side = min(tile, max(frames.shape[-2:]))
            batch_size = default_batch_size(side, self.config.filters, self.device)
        n_pass = 1 if deterministic else samples
        x = self.input_norm.forward(frames)
        net, dev = self.net, self.device
        use_amp = dev.type == "cuda"
        net.eval()

        def net_fn(inp):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                out, _ = net(inp, compute_kl=False, sample=not deterministic)
            return out

        t0 = time.perf_counter()
        cuda_ids = []
        if dev.type == "cuda":
            cuda_ids = [dev.index if dev.index is not None else torch.cuda.current_device()]
        with torch.inference_mode(), torch.random.fork_rng(devices=cuda_ids):
            torch.manual_seed(int(seed))
            gen = tiled_sampling(
                net_fn, x, samples=n_pass, tile=tile, overlap=overlap, multiple=m,
                batch_size=batch_size, device=dev, out_channels=net.out_channels,
                return_samples=return_samples and not deterministic,
                context=self.config.context_count,
            )
            while True:
                try:
                    done, total = next(gen)
                except StopIteration as stop:
                    raw = stop.value
                    break
                yield PredictProgress(done, total, time.perf_counter() - t0)
        result = self._finish(raw, frames, np.ndim(image) == 2, samples=n_pass,
                              calibration=calibration)
        result.info.update(
            tile=tile, overlap=overlap, batch_size=batch_size, seconds=time.perf_counter() - t0,
            device=str(dev), deterministic=deterministic,
        )
        return result

    def predict(self, image, **kwargs) -> SplitResult:
        """Run :meth:`iter_predict` to the end (same parameters)."""
        return run_to_end(self.iter_predict(image, **kwargs))

    def _finish(self, raw, frames, was_2d, *, samples, calibration) -> SplitResult:
        import torch

        tn = self.target_norms
        n = self.n_channels
        mean = np.stack([tn[c].inverse(raw["mean"][c]) for c in range(n)])
        std = np.stack([tn[c].inverse_scale(raw["std"][c]) for c in range(n)])
        smp = None
        if raw["samples"] is not None:
            smp = np.stack([tn[c].inverse(raw["samples"][:, c]) for c in range(n)], axis=1)
        if self.config.predict_logvar:
            # Mean predicted log-variance is the aleatoric noise of each channel.
            noise_std = np.stack(
                [tn[c].inverse_scale(np.exp(0.5 * raw["mean"][n + c])) for c in range(n)]
            )
        elif self.noise_models:
            with torch.no_grad():
                noise_std = np.stack([self.noise_models[c].std(mean[c]) for c in range(n)])
        else:
            noise_std = None
        calibrated = self.calibration is not None and calibration != "none"
        std = apply_calibration(std, self.calibration if calibrated else None, calibration)
        if was_2d:
            mean, std = mean[:, 0], std[:, 0]
            smp = None if smp is None else smp[:, :, 0]
            noise_std = None if noise_std is None else noise_std[:, 0]
        return SplitResult(
            mean=mean.astype(np.float32),
            std=std.astype(np.float32),
            samples=smp,
            noise_std=None if noise_std is None else noise_std.astype(np.float32),
            calibrated=calibrated,
            info={"samples": samples, "channel_names": list(self.channel_names),
                  "calibration_mode": calibration if calibrated else "none"},
        )


def _calibration_for_file(cal: dict | None) -> dict | None:
    """Keep what prediction needs plus the evaluation bins (JSON-safe floats)."""
    if cal is None:
        return None
    return {k: v for k, v in cal.items()}
