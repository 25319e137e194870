"""A trained splitting model: network, normalisation, noise models, calibration."""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DuetInputError, ModelFileError, first_line
from ..core.intensity import Normalizer
from ..core.noise_models import GaussianMixtureNoiseModel
from ..core.progress import blocking_form
from ._calibration import apply_calibration
from ._config import SplitConfig
from ._data import as_frames, replace_hot_pixels
from ._predict import PredictProgress, SplitResult, tiled_sampling

KIND = "denoisplit"
# Smallest image side prediction accepts (smaller ones are padded noise, or a misread axis).
MIN_SIDE = 8


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
    from ..core.tiling import count_tiles

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

    def save(self, path: str | os.PathLike, *, resume: tuple[dict, dict] | None = None) -> Path:
        """Write one model file (safetensors + JSON header, kind ``"denoisplit"``).

        ``resume``: a training checkpoint's header entry and ``resume.*`` tensors
        (see :mod:`._resume`), stored beside the model.
        """
        from ..core.modelfile import save_model_file

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
            "calibration": None if self.calibration is None else dict(self.calibration),
            "channel_names": list(self.channel_names),
            "training": self.training,
        }
        if resume is not None:
            header, extra_tensors = resume
            extra["resume"] = {**header, "tensors": sorted(extra_tensors)}
            tensors.update(extra_tensors)
        return save_model_file(path, kind=KIND, config=self.config.model_dict(), tensors=tensors,
                               extra=extra)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> SplitModel:
        """Load a model file; foreign or damaged files raise ModelFileError."""
        from ..core.devices import resolve_device
        from ..core.modelfile import file_normalizer, load_model_file, meta_state_shapes
        from ._lvae import LadderVAE

        name = Path(path).name

        def expect(header: dict) -> dict:
            # Every size in the header is bounded, and the network it asks for is built
            # on the meta device (no memory) so that its shapes are checked against the
            # tensors the file holds before the real network is built.
            cfg, patch, nm_cfgs = _header_sizes(header)
            shapes: dict = {f"net.{k}": v for k, v in
                            meta_state_shapes(lambda: LadderVAE(cfg, patch)).items()}
            for i, c in enumerate(nm_cfgs):
                shapes.update(GaussianMixtureNoiseModel.file_shapes(c, _nm_prefix(i)))
            # A training checkpoint (see _resume.py) also holds the run's state.
            resume = header["extra"].get("resume") if isinstance(header, dict) else None
            if isinstance(resume, dict) and isinstance(resume.get("tensors"), list):
                shapes.update({str(n): None for n in resume["tensors"]
                               if str(n).startswith("resume.")})
            return shapes

        try:
            mf = load_model_file(path, kind=KIND, expect=expect, what="denoiSplit model")
            cfg, patch, nm_cfgs = _header_sizes(mf)
            ex = mf.extra
            n = cfg.n_channels
            input_norm = file_normalizer(ex.get("input_normalizer"), "input_normalizer")
            targets = ex.get("target_normalizers")
            if not isinstance(targets, list) or len(targets) != n:
                raise ValueError(f"target_normalizers must be a list of {n}")
            target_norms = [file_normalizer(d, f"target_normalizers[{c}]")
                            for c, d in enumerate(targets)]
            calibration = _checked_calibration(ex.get("calibration"), n)
            # Older files: see core.modelfile.migrate.
            nms = [
                GaussianMixtureNoiseModel.from_file_parts(c, mf.tensors, _nm_prefix(i),
                                                          name=name)
                for i, c in enumerate(nm_cfgs)
            ] or None
            net = LadderVAE(cfg, patch)
            state = {k[4:]: v for k, v in mf.tensors.items() if k.startswith("net.")}
            net.load_state_dict(state, strict=True)
            model = cls(
                net,
                cfg,
                patch_size=patch,
                input_norm=input_norm,
                target_norms=target_norms,
                noise_models=nms,
                calibration=calibration,
                channel_names=tuple(ex.get("channel_names") or
                                    default_channel_names(cfg.n_channels)),
                training=ex.get("training", {}),
            )
        except ModelFileError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError, RuntimeError,
                DuetInputError) as exc:
            raise ModelFileError(
                f"{name} is a damaged denoiSplit model ({first_line(exc, 150)})") from None
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
        samples: int = 20,
        tile: int | None = None,
        overlap: int | None = None,
        batch_size: int | None = None,
        return_samples: bool = False,
        calibration: str = "scalar",
        deterministic: bool = False,
        seed: int = 0,
        samples_out=None,
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
        samples_out : array-like, optional
            With ``return_samples``: a writable float32 array of the samples'
            shape, (N, C, Y, X) for an image or (N, C, F, Y, X) for a stack,
            e.g. a memory-mapped file (``tifffile.memmap``), that receives the
            samples, in the output scale, instead of an array in memory (the
            samples of a 4096^2 frame at N = 50 and two channels take 6.7 GB).
            It is returned as ``samples``.

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
        if min(frames.shape[-2:]) < MIN_SIDE:
            raise DuetInputError(f"image frames of {frames.shape[-2]} x {frames.shape[-1]} px "
                                 f"are too small to split: both sides must be >= {MIN_SIDE}")
        # The camera hot pixels that training replaced (replace_hot_pixels), replaced
        # in the input too: one left in would inflate the split around it.
        frames, hot_pixels = replace_hot_pixels(frames)
        plan = plan_prediction(self, frames.shape[-2:], tile, overlap, batch_size)
        tile, overlap, batch_size, m = (plan["tile"], plan["overlap"], plan["batch_size"],
                                        plan["multiple"])
        n_pass = 1 if deterministic else samples
        keep_samples = return_samples and not deterministic
        sink = None
        if keep_samples and samples_out is not None:
            # The engine writes (N, C, F, Y, X); an image's samples have no frame axis.
            sink = samples_out[:, :, None] if np.ndim(image) == 2 else samples_out
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
                return_samples=keep_samples,
                context=self.config.context_count,
                samples_out=sink,
            )
            while True:
                try:
                    done, total = next(gen)
                except StopIteration as stop:
                    raw = stop.value
                    break
                el = time.perf_counter() - t0
                yield PredictProgress(done=done, total=total, elapsed=el,
                                      eta=el / done * (total - done) if done else None)
        result = self._finish(raw, frames, np.ndim(image) == 2, samples=n_pass,
                              calibration=calibration, samples_out=samples_out if sink is not None
                              else None)
        result.info.update(
            tile=tile, overlap=overlap, batch_size=batch_size, seconds=time.perf_counter() - t0,
            device=str(dev), deterministic=deterministic, hot_pixels_replaced=hot_pixels,
        )
        return result

    predict = blocking_form(iter_predict, """Run :meth:`iter_predict` to the end (same parameters).

    ``callback`` (keyword) gets every :class:`PredictProgress`.  Returns a
    :class:`SplitResult`.
    """)

    def _finish(self, raw, frames, was_2d, *, samples, calibration,
                samples_out=None) -> SplitResult:
        import torch

        tn = self.target_norms
        n = self.n_channels
        mean = np.stack([tn[c].inverse(raw["mean"][c]) for c in range(n)])
        std = np.stack([tn[c].inverse_scale(raw["std"][c]) for c in range(n)])
        smp = None
        if samples_out is not None:
            # In place, one sample and channel at a time: memory stays bounded.
            for k in range(raw["samples"].shape[0]):
                for c in range(n):
                    raw["samples"][k, c] = tn[c].inverse(raw["samples"][k, c])
        elif raw["samples"] is not None:
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
        if samples_out is not None:
            smp = samples_out
        return SplitResult(
            mean=mean.astype(np.float32),
            std=std.astype(np.float32),
            samples=smp,
            noise_std=None if noise_std is None else noise_std.astype(np.float32),
            calibrated=calibrated,
            info={"samples": samples, "channel_names": list(self.channel_names),
                  "calibration_mode": calibration if calibrated else "none"},
        )


# Largest training patch a model file may name (the paper's is 64 px).
MAX_PATCH = 4096


def _header_sizes(header) -> tuple[SplitConfig, int, list[dict]]:
    """Network config, patch size and noise-model configs of a model-file header, checked.

    ``header`` is the parsed header dict or a ModelFile.  Raises ValueError /
    DuetInputError naming the field (SplitConfig bounds its own sizes).
    """
    from ..core.modelfile import file_int

    get = header.get if isinstance(header, dict) else lambda k: getattr(header, k)
    config, ex = get("config"), get("extra")
    cfg = SplitConfig.from_model_dict(config)
    patch = file_int(ex.get("patch_size"), "patch_size", cfg.multiple, MAX_PATCH)
    if patch % cfg.multiple:
        raise ValueError(f"patch_size {patch} must be a multiple of {cfg.multiple}")
    nm_cfgs = ex.get("noise_models") or []
    if not isinstance(nm_cfgs, list) or (nm_cfgs and len(nm_cfgs) != cfg.n_channels):
        raise ValueError(f"noise_models must be a list of {cfg.n_channels}")
    return cfg, patch, nm_cfgs


def _checked_calibration(cal, n: int) -> dict | None:
    """The stored calibration, with the numbers prediction uses checked.

    Scalar factors must be finite and positive (zero would report a zero
    std, NaN an all-NaN one); the linear maps' coefficients finite.
    """
    from ..core.modelfile import file_number

    if cal is None:
        return None
    if not isinstance(cal, dict):
        raise ValueError("calibration must be a mapping")
    scalar, linear = cal.get("scalar"), cal.get("linear")
    if not isinstance(scalar, list) or len(scalar) != n:
        raise ValueError(f"calibration.scalar must be a list of {n}")
    if not isinstance(linear, list) or len(linear) != n:
        raise ValueError(f"calibration.linear must be a list of {n}")
    out = dict(cal)
    out["scalar"] = [file_number(k, f"calibration.scalar[{c}]", positive=True)
                     for c, k in enumerate(scalar)]
    lin = []
    for c, ab in enumerate(linear):
        if not isinstance(ab, list) or len(ab) != 2:
            raise ValueError(f"calibration.linear[{c}] must be [a, b]")
        lin.append([file_number(ab[0], f"calibration.linear[{c}][0]"),
                    file_number(ab[1], f"calibration.linear[{c}][1]")])
    out["linear"] = lin
    return out


def plan_prediction(model, frame_shape: tuple[int, int], tile: int | None = None,
                    overlap: int | None = None, batch_size: int | None = None) -> dict:
    """Tile, overlap and batch size as :meth:`SplitModel.iter_predict` chooses them."""
    m = model.config.multiple
    margin = model.patch_size // 2 if overlap is None else int(overlap)
    if tile is None:
        tile = default_tile(frame_shape, model.patch_size, margin, m, model.config.filters,
                            model.device)
    if tile < m:
        raise DuetInputError(f"tile must be at least {m}")
    tile = -(-int(tile) // m) * m
    # A small tile given by the caller keeps at least its inner half.
    overlap = min(margin, tile // 4) if overlap is None else margin
    if not 0 <= overlap < tile / 2:
        raise DuetInputError("overlap must be >= 0 and below half the tile")
    if batch_size is None:
        side = min(tile, max(frame_shape))
        batch_size = default_batch_size(side, model.config.filters, model.device)
    if batch_size < 1:
        raise DuetInputError("batch_size must be >= 1")
    return {"tile": tile, "overlap": overlap, "batch_size": int(batch_size), "multiple": m}
