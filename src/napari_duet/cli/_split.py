"""``duet split train|predict`` and ``duet noise-model fit``."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from ..core import distributed as ddp
from ..core.config import cli_help
from ..core.devices import DEVICE_CHOICES
from ..core.errors import DuetInputError

# Every file ``split predict`` may write into its folder (which of them depends on the
# model and --samples); files of an earlier run that this one does not write are removed.
from ..denoisplit._save import PREDICT_FILES as _PREDICT_FILES
from ._params import add_param_options, config_from_args
from ._progress import add_chunk_options, add_run_options, cli_run, run_command


def register(subparsers) -> None:
    """Add the ``split`` and ``noise-model`` commands to the ``duet`` parser."""
    split = subparsers.add_parser(
        "split",
        help="split a superposition of 2 to 4 structures and denoise them (denoiSplit)",
        description="Train a denoiSplit model on 2 to 4 noisy single-structure acquisitions, "
        "or split an image with a trained model.",
    )
    ssub = split.add_subparsers(dest="split_command", metavar="SUBCOMMAND",
                                parser_class=type(split))
    split.set_defaults(func=lambda args: _usage(split))

    from ..denoisplit._config import PredictConfig as _PC
    from ..denoisplit._config import TrainConfig as _TC

    tr = ssub.add_parser("train", help="train a splitting model on 2 to 4 channels",
                         description="Train on noisy acquisitions of 2 to 4 structures "
                         "(images or stacks, same shape); the network input is their sum. "
                         "Give --channel once per structure, in order, or --channel-a and "
                         "--channel-b for two.")
    tr.add_argument("--channel", action="append", default=None, metavar="FILE",
                    help="noisy acquisition of one structure (Y,X) or (N,Y,X); repeat 2 to 4 "
                    "times, in the order of the output channels")
    tr.add_argument("--channel-a", metavar="A.tif",
                    help="first of two structures (same as the first --channel)")
    tr.add_argument("--channel-b", metavar="B.tif",
                    help="second of two structures, same shape as A")
    tr.add_argument("-o", "--output", required=True, metavar="MODEL",
                    help="model file to write (.duet); a calibration plot (PNG) goes beside it")
    tr.add_argument("--noise-model", action="append", default=None, metavar="NM",
                    help="noise model of one channel (from 'duet noise-model fit'), repeated "
                    "in the order of --channel; bootstrapped from the data when omitted")
    tr.add_argument("--noise-model-a", metavar="NM",
                    help="noise model of A (with --channel-a/--channel-b)")
    tr.add_argument("--noise-model-b", metavar="NM", help="noise model of B (see above)")
    tr.add_argument("--lateral-context", type=int, default=None, metavar="M",
                    help="multiscale count: 1 = off, M = the image plus M-1 coarser context "
                    "inputs (at most the number of levels; default: the config's)")
    # The training options (--epochs, --patch-size, --likelihood, --device,
    # --calibration/--no-calibration, --checkpoint, ...) come from TrainConfig's
    # declarations, as the Split widget's controls do.  --threads is the
    # run option every command has (add_run_options); the fields without a declared help
    # (lr, free_bits, ...) are set through a --config parameter file.
    add_param_options(tr, _TC, skip=("threads",), config_option=False,
                      overrides={"device": {"choices": DEVICE_CHOICES}})
    # Not the generic --config: it also names a network preset (SplitConfig, not
    # TrainConfig), so it keeps its default "small"/"default" choice beside a file.
    tr.add_argument("--config", default="auto", metavar="{auto,small,default,PARAMS.json}",
                    help="network size: auto (the default: small on a CPU, default on a GPU), "
                    "default (paper, ~3.0 M parameters: hours on a CPU) or small; or "
                    "a JSON file of training parameters (TrainConfig, as the Split widget's "
                    "\"Save parameters…\" writes them) with the network it records "
                    "(default when it records none; --lateral-context overrides): options "
                    "given on the command line override its values, an unknown parameter "
                    "exits with code 2")
    tr.add_argument("--denoiser", choices=("auto", "noise2fast", "smooth"), default="auto",
                    help="denoiser used to bootstrap noise models (default auto)")
    add_run_options(tr, quiet_help="no progress lines")
    # Under torchrun every rank trains; only rank 0 logs and writes the model.
    tr.set_defaults(func=lambda args: run_command(_train, args), distributed=True)

    pr = ssub.add_parser("predict", help="split an image with a trained model",
                         description="Tiled posterior sampling: MMSE per channel, std, "
                         "optional samples, report.json.")
    pr.add_argument("image", metavar="IMAGE", help="superposition to split, (Y,X) or (N,Y,X)")
    pr.add_argument("--model", required=True, metavar="MODEL", help="model file (.duet)")
    pr.add_argument("-o", "--output", "--outdir", dest="output", required=True,
                    metavar="OUTDIR",
                    help="OUT.ome.zarr: the image is read lazily and split block by block "
                    "into an OME-Zarr (MMSE image, std and samples arrays; resumable); or a "
                    "folder for mmse.tif and std.tif ((C,Y,X), or (T,C,Y,X) for a "
                    "stack), samples.tif, report.json; two-channel models also write a.tif, "
                    "b.tif, std_a.tif, std_b.tif")
    # --samples, --tile, --batch-size, --calibration, --device, --seed and --config:
    # from PredictConfig's declarations.
    add_param_options(pr, _PC, overrides={
        "device": {"choices": DEVICE_CHOICES},
        "samples": {"help": cli_help(_PC, "samples", extra="samples.tif is written when > 1.")}})
    pr.add_argument("--block", type=int, default=None, metavar="N",
                    help="with a .zarr output: output block side of one task in pixels "
                    "(default 1024)")
    add_chunk_options(pr, unit="blocks")
    add_run_options(pr, quiet_help="no progress bar")
    pr.set_defaults(func=_predict)

    nm = subparsers.add_parser("noise-model", help="fit pixel noise models (GMM)",
                               description="Gaussian-mixture noise models p(x|s) for denoiSplit.")
    nsub = nm.add_subparsers(dest="nm_command", metavar="SUBCOMMAND", parser_class=type(nm))
    nm.set_defaults(func=lambda args: _usage(nm))
    fit = nsub.add_parser("fit", help="fit a noise model from signal/observation pairs",
                          description="Fit from calibration data (--signal and --observation) "
                          "or bootstrap from noisy data alone (--observation only).")
    fit.add_argument("--signal", metavar="S",
                     help="clean signal (e.g. average of many recordings); omit to bootstrap "
                     "it with a self-supervised denoiser")
    fit.add_argument("--observation", required=True, metavar="O",
                     help="noisy observation(s) of the signal: same shape, or a stack (N, ...)")
    fit.add_argument("-o", "--output", required=True, metavar="NM",
                     help="noise-model file to write; a PNG plot is written beside it")
    fit.add_argument("--n-gaussian", type=int, default=3, help="mixture components (default 3)")
    fit.add_argument("--n-coeff", type=int, default=2,
                     help="polynomial coefficients per parameter (default 2)")
    fit.add_argument("--min-sigma", type=float, default=None,
                     help="variance floor in intensity^2 (default: from the signal range)")
    fit.add_argument("--iterations", type=int, default=None,
                     help="optimiser steps (default 2000 on GPU, 400 on CPU)")
    fit.add_argument("--denoiser", choices=("auto", "noise2fast", "smooth"), default="auto",
                     help="denoiser for bootstrapping (default auto)")
    fit.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                     help="compute device (default auto)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_run_options(fit, quiet_help="no progress bar")
    fit.set_defaults(func=_fit_noise_model)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load_nm(path):
    from ..core.noise_models import GaussianMixtureNoiseModel

    return GaussianMixtureNoiseModel.load(path)


def _channel_args(args) -> tuple[list[str], list[str] | None]:
    """The channel files and noise-model files in order, from either option style."""
    from ..denoisplit._config import MAX_CHANNELS, MIN_CHANNELS

    pair = (args.channel_a, args.channel_b)
    nm_pair = (args.noise_model_a, args.noise_model_b)
    if args.channel and any(p is not None for p in pair):
        raise DuetInputError("give either --channel (repeated) or --channel-a/--channel-b")
    if args.channel:
        files = list(args.channel)
    else:
        if None in pair:
            raise DuetInputError("give --channel once per structure (2 to 4), or both "
                                 "--channel-a and --channel-b")
        files = list(pair)
    if not MIN_CHANNELS <= len(files) <= MAX_CHANNELS:
        raise DuetInputError(f"give {MIN_CHANNELS} to {MAX_CHANNELS} channels, got "
                             f"{len(files)}")
    if args.noise_model and any(p is not None for p in nm_pair):
        raise DuetInputError("give either --noise-model (repeated) or "
                             "--noise-model-a/--noise-model-b")
    if any(p is not None for p in nm_pair):
        if None in nm_pair:
            raise DuetInputError("give both --noise-model-a and --noise-model-b, or neither")
        nm_files = list(nm_pair)
    else:
        nm_files = list(args.noise_model) if args.noise_model else None
    if nm_files is not None and len(nm_files) != len(files):
        raise DuetInputError(f"give one noise model per channel: {len(files)} channels, "
                             f"{len(nm_files)} noise models")
    return files, nm_files


def _channel_names(files: list[str]) -> tuple[str, ...]:
    """File stems, made unique (a_1, a_2) when two files share a stem."""
    stems = [Path(f).stem for f in files]
    return tuple(f"{s}_{i + 1}" if stems.count(s) > 1 else s for i, s in enumerate(stems))


def train_configs(args: argparse.Namespace, n_channels: int):
    """The (SplitConfig, TrainConfig) that ``duet split train`` options ask for: the
    ``--config`` file's training values and network (if it names a file), then the
    options given."""
    from ..core.config import read_params
    from ..core.errors import DuetInputError
    from ..denoisplit._config import SplitConfig, TrainConfig

    over = {"n_channels": n_channels}
    if args.lateral_context is not None:
        over["multiscale_count"] = args.lateral_context
    preset, params_file = args.config, None
    if str(preset).lower().endswith(".json"):  # a parameter file: its network, if recorded
        params_file = preset
    elif preset not in ("auto", "small", "default"):
        raise DuetInputError(f"--config must be auto, small, default or a .json parameter "
                             f"file, got {preset!r}")
    tc = config_from_args(TrainConfig, argparse.Namespace(**{**vars(args),
                                                             "config": params_file}),
                          skip=("threads",))
    if params_file is not None:
        network = read_params(params_file, TrainConfig)[1].get("network")
        cfg = SplitConfig.from_params_section(network, **over)
    else:
        if preset == "auto":  # the paper's network takes hours per field on a CPU
            from ..core.devices import resolve_device

            preset = "small" if resolve_device(tc.device).type == "cpu" else "default"
        cfg = SplitConfig.preset(preset, **over)
    # A checkpoint is always resumed from: the same command run again goes on.
    return cfg, tc.replace(resume=tc.checkpoint_path is not None)


def _calibration_png(model_path) -> Path:
    """The calibration plot written beside a trained model."""
    return Path(str(model_path)).with_suffix(".calibration.png")


def _noise_model_png(nm_path) -> Path:
    """The plot written beside a fitted noise model."""
    return Path(str(nm_path)).with_suffix(".png")


def _read_one_channel(path, what: str):
    """Read an image that must have no channel axis; one with channels is refused."""
    from ..core.channels import find_channel_axis, refuse_channels, stated_axes
    from ..core.io import read_image

    img = read_image(path)
    refuse_channels(Path(path).name, img.shape,
                    find_channel_axis(img.shape, axes=stated_axes(path)), what)
    return img


def _train(args) -> int:
    from ..core.io import check_outputs
    from ..denoisplit._train import iter_train

    files, nm_files = _channel_args(args)
    cfg, tc = train_configs(args, len(files))
    # Before training: the model (and its plot) can be written and overwrite no input.
    check_outputs([*files, *(nm_files or [])],
                  [("-o", args.output),
                   ("calibration plot",
                    _calibration_png(args.output) if tc.calibrate else None),
                   ("--checkpoint", tc.checkpoint_path),
                   ("--log-json", getattr(args, "log_json", None))])
    channels = [_read_one_channel(f, "split train takes one file per structure, each one "
                                     "channel: save the channels as separate files") for f in files]
    nms = None if nm_files is None else [_load_nm(f) for f in nm_files]
    names = _channel_names(files)
    with cli_run(args, "split train") as bar:
        gen = iter_train(channels, cfg, tc, nms, channel_names=names,
                         bootstrap_kwargs={"denoiser": args.denoiser})
        last_epoch = None
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                model = stop.value.model
                break
            bar(p)
            if args.quiet:
                continue
            if p.stage != "train":
                bar.write(f"[{p.elapsed:7.1f}s] {p.stage}", file=sys.stderr)
            elif (p.step == p.steps_per_epoch and p.val_loss is not None
                  and p.epoch != last_epoch):
                last_epoch = p.epoch
                loss = p.losses.get("loss", float("nan"))
                gains = "".join(f" {n} {g:+.2f} dB" for n, g in (p.val_gain_db or {}).items())
                bar.write(f"[{p.elapsed:7.1f}s] epoch {p.epoch}, step {p.done}/{p.total} "
                          f"loss {loss:.4f} "
                          f"val {p.val_loss:.4f}" + (f", over the constant split:{gains}"
                                                     if gains else ""), file=sys.stderr)
        if not ddp.is_main():  # rank 0 writes the model
            return 0
        with bar.stage("save"):
            out = model.save(args.output)
    print(f"wrote {out}")
    tr = model.training
    if tr.get("stop_reason"):
        print(f"training ended after {tr.get('steps_run')} steps ({tr['stop_reason']}); "
              f"kept epoch {tr.get('best_epoch')} ({tr.get('checkpoint_rule')})")
    summary = (model.training.get("validation") or {}).get("summary")
    if summary:
        print(f"validation PSNR over the constant split: {summary}")
    if model.calibration is not None:
        from ..denoisplit._calibration import calibration_plot

        png = calibration_plot(model.calibration["stats_after"], _calibration_png(out),
                               channel_names=names,
                               title="validation: RMSE vs calibrated RMV")
        k = ", ".join(f"{n} x{f:.3g}" for n, f in zip(names, model.calibration["scalar"],
                                                        strict=True))
        print(f"std calibration: {k}; plot {png}")
    return 0




def _samples_file(stack, path: Path, image_shape, lead: tuple[int, int], pixel_info: dict):
    """A memory-mapped float32 TIFF for the (N, C[, T], Y, X) samples, written under a
    temporary name that ``stack`` renames to ``path`` on success (removed on failure)."""
    import numpy as np
    import tifffile

    from ..core.io import atomic_path

    tmp = stack.enter_context(atomic_path(path))
    shape = (*lead, *image_shape)
    # Axes metadata keeps the (N, C, ...) shape when the file is read back.
    kwargs = {"metadata": {"axes": "ICYX" if len(image_shape) == 2 else "ICTYX",
                           **{k: pixel_info[k] for k in ("spacing", "unit") if k in pixel_info}}}
    if "resolution" in pixel_info:
        kwargs.update(resolution=tuple(pixel_info["resolution"]),
                      resolutionunit=pixel_info.get("resolutionunit", 1))
    return tifffile.memmap(str(tmp), shape=shape, dtype=np.float32, photometric="minisblack",
                           **kwargs)


def predict_config(args: argparse.Namespace):
    """The :class:`~napari_duet.denoisplit.PredictConfig` of ``duet split predict``: the
    ``--config`` file's values, then the options given."""
    from ..denoisplit._config import PredictConfig

    return config_from_args(PredictConfig, args)


def _predict(args) -> int:
    import numpy as np

    from ..core.io import (
        ResultSet,
        check_outputs,
        is_zarr_path,
        read_pixel_info,
    )
    from ..core.progress import run_to_end
    from ..denoisplit._model import SplitModel

    pc = predict_config(args)
    out = Path(args.output)
    if is_zarr_path(out):  # block tasks into an OME-Zarr (denoisplit/_chunked.py)
        from ._split_chunked import run_chunked

        return run_chunked(args, pc)
    if args.resume or args.scheduler or args.block is not None:
        raise DuetInputError("--resume, --scheduler and --block write an OME-Zarr: give "
                             "-o OUT.ome.zarr")
    check_outputs([args.image, args.model],
                  [*(("-o", out / name) for name in _PREDICT_FILES),
                   ("--log-json", getattr(args, "log_json", None))],
                  folders={"-o": out})
    with cli_run(args, "split predict") as bar:
        with bar.stage("load model"):
            model = SplitModel.load(args.model, device=pc.device)
        img = _read_one_channel(args.image, "split predict takes the one-channel sum of the "
                                "structures: save that channel on its own")
        # The input's pixel size and units go to every output (its axes do not:
        # the outputs add a channel or sample axis).
        pixel_info = {k: v for k, v in read_pixel_info(args.image).items() if k != "axes"}
        t0 = time.perf_counter()
        with_samples = pc.samples > 1
        # The files are one set: written into a staging folder, moved in together, the
        # report (listing exactly this run's files) last; see ResultSet.
        results = ResultSet(out, names=_PREDICT_FILES)
        with results, contextlib.ExitStack() as streamed:
            # The samples go straight into samples.tif (memory-mapped, renamed when
            # complete): they would take N times the outputs' memory.
            sink = None
            if with_samples:
                sink = _samples_file(streamed, results.path("samples.tif"), img.shape,
                                     (pc.samples, model.n_channels), pixel_info)
            gen = model.iter_predict(img, samples=pc.samples, tile=pc.tile,
                                     batch_size=pc.batch_size,
                                     return_samples=with_samples,
                                     calibration=pc.calibration, seed=pc.seed,
                                     samples_out=sink)
            res = run_to_end(gen, bar)
            seconds = time.perf_counter() - t0
            if sink is not None:
                sink.flush()
                samples_shape = list(sink.shape)
                res.samples = sink = None  # unmapped before the file is renamed
            streamed.close()  # samples.tif is complete before the set moves in
            extra = dict(image=str(args.image), model=str(args.model), seconds=seconds,
                         threads=bar.threads,
                         megapixels_per_second=float(np.prod(img.shape)) / 1e6
                         / max(seconds, 1e-9), model_metadata=model.metadata())
            # One writer for the command and the widget's "Save results…" (SplitResult.save).
            res.save(out, pixel_info=pixel_info, report=extra, results=results,
                     samples_shape=samples_shape if with_samples else None)
    print(f"wrote {out}")
    return 0


def _fit_noise_model(args) -> int:
    from ..core.io import check_outputs
    from ..core.noise_models import bootstrap_noise_model, fit_noise_model

    png = _noise_model_png(args.output)
    if Path(args.output).suffix.lower() == ".png":
        raise DuetInputError(f"-o {args.output}: the noise model would be overwritten by its "
                             f"plot ({png.name}); give a model file name such as "
                             f"{png.stem}.duet")
    check_outputs([args.signal, args.observation],
                  [("-o", args.output), ("plot", png),
                   ("--log-json", getattr(args, "log_json", None))])
    one = "a noise model is fitted to one channel: save that channel on its own"
    obs = _read_one_channel(args.observation, one)
    kw = dict(n_gaussian=args.n_gaussian, n_coeff=args.n_coeff, min_sigma=args.min_sigma,
              iterations=args.iterations, device=args.device, seed=args.seed)
    with cli_run(args, "noise-model fit") as bar:
        if args.signal is not None:
            signal = _read_one_channel(args.signal, one)
            with bar.stage("fit noise model"):
                nm = fit_noise_model(signal, obs, **kw)
        else:
            with bar.stage("bootstrap noise model"):
                nm = bootstrap_noise_model(obs, denoiser=args.denoiser, **kw)
        out = nm.save(args.output)
    png = nm.plot(_noise_model_png(out))
    print(f"wrote {out} and {png}")
    return 0
