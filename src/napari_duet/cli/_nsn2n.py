"""``duet nsn2n``: train NS-N2N on a volume (or apply a saved model) from the shell."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..core import distributed as ddp
from ..core.channels import CHANNEL_AXIS_HELP
from ..core.devices import DEVICE_CHOICES
from ._nsn2n_chunked import _report_path, cli_layout, run_chunked, with_wiener
from ._params import add_param_options, config_from_args
from ._progress import add_run_options, channel_axis_arg, cli_run, run_command


def register(subparsers) -> None:
    """Add the ``nsn2n`` sub-command to the ``duet`` parser."""
    from ..core.config import cli_help
    from ..nsn2n._config import NSN2NConfig as C

    p = subparsers.add_parser(
        "nsn2n",
        help="denoise a volume or time-lapse from its neighbouring slices (NS-N2N)",
        description=(
            "Neighboring Slice Noise2Noise: trains a U-Net on neighbouring slices of VOLUME "
            "(where they match) and writes the denoised volume, float32, same shape and "
            "intensity scale as VOLUME. Training runs for a time budget (default: by device "
            "and volume size, about 4 minutes on a CPU for 48 x 256 x 256). With --model, "
            "only applies a saved model."
        ),
    )
    p.add_argument("volume", metavar="VOLUME",
                   help="input stack, 3D+: TIFF/OME-TIFF, OME-Zarr or zarr (read lazily), or "
                   "any image file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tif",
                   help="denoised volume, float32: OME-Zarr (with a pyramid) when it ends in "
                   ".zarr, TIFF when it ends in .tif or .tiff; a JSON report (OUT.json) is "
                   "written beside it")
    p.add_argument("--axis", type=int, default=0, metavar="A",
                   help="slice axis: z of a stack or t of a time-lapse (default 0)")
    p.add_argument("--channel-axis", type=channel_axis_arg, default="auto", metavar="C",
                   help=CHANNEL_AXIS_HELP + "; each channel is denoised as its own stack, "
                   "one network for all")
    # --budget, --iterations, --width, --context, --noise-model, --guide, --tau, ...,
    # --tta/--no-tta, --device, --seed and --config: from NSN2NConfig's declarations, as the
    # widget's controls; --threads is a run option.
    add_param_options(p, C, skip=("threads",), overrides={
        "budget": {"help": cli_help(C, "budget", extra="Or 'auto'; the resolved value is in "
                                    "the report.")},
        "device": {"choices": DEVICE_CHOICES}})
    p.add_argument("--save-model", metavar="M", default=None,
                   help="write the trained model to this file (.duet)")
    p.add_argument("--model", metavar="M", default=None,
                   help="apply this saved model instead of training")
    p.add_argument("--resume", action="store_true",
                   help="with --model: continue an interrupted run into the same OUTPUT, "
                   "skipping the slabs it finished")
    p.add_argument("--slab", type=int, default=None, metavar="N",
                   help="with --model on large volumes: slices denoised per slab (default: "
                   "about 8 Mpx per slab, at most 16, or 4 times the slices the model reads on "
                   "each side: 44 for a block-matched stage)")
    from ._progress import add_chunk_options

    add_chunk_options(p, resume=False, unit="slabs", when="with --model")  # dask
    p.add_argument("--uncertainty", metavar="U.tif", default=None,
                   help="also write the uncertainty map (spread over flips/rotations), "
                   "TIFF or OME-Zarr as for -o")
    add_run_options(p)
    # Under torchrun every rank runs the command; only rank 0 logs and writes.
    p.set_defaults(func=lambda args: run_command(run, args), distributed=True)


# A TIFF input is read lazily and denoised slab by slab (with --model) above this size.
CHUNKED_TIFF_BYTES = 1 << 30


def _wants_chunked(args: argparse.Namespace) -> bool:
    """Apply the model slab by slab: zarr in or out, --resume/--slab, or a large TIFF."""
    from ..core.io import is_tiff_path, is_zarr_path

    if args.resume or args.slab is not None or args.scheduler:
        return True
    if is_zarr_path(args.volume) or is_zarr_path(args.output):
        return True
    path = Path(args.volume)
    return is_tiff_path(path) and path.is_file() and path.stat().st_size > CHUNKED_TIFF_BYTES


def _channels_first(volume, args: argparse.Namespace, meta):
    """``(volume, slice axis, channel axis)`` with any channel axis moved first.

    The engine takes axes beyond the slice axis and the plane as separate stacks
    (one network for all), so each channel becomes its own stack; outputs are
    moved back.  One image with channels, (Y, X, C), has no slices: refused.
    """
    import numpy as np

    from ..core.channels import find_channel_axis, stated_axes
    from ..core.errors import DuetInputError

    c = find_channel_axis(volume.shape, axes=stated_axes(args.volume, meta),
                          given=args.channel_axis)
    axis = args.axis
    if c is None:
        return volume, axis, None
    name, shape = Path(args.volume).name, tuple(volume.shape)
    if volume.ndim < 4:
        raise DuetInputError(
            f"{name} is one image with channels (axis {c} of shape {shape}): NS-N2N needs a "
            "stack of slices, (Z, Y, X) or (Z, Y, X, C); --channel-axis none if axis "
            f"{c} is not channels")
    if not -volume.ndim <= axis < volume.ndim:
        return volume, axis, None  # layout_for reports the bad axis
    axis %= volume.ndim
    if axis == c:
        raise DuetInputError(f"--axis {args.axis} is the channel axis of {name} {shape}: "
                             "give the slice axis (or --channel-axis)")
    return np.moveaxis(volume, c, 0), axis + 1 if axis < c else axis, c


def _refuse_plane_channels(args: argparse.Namespace) -> None:
    """Slab by slab, any axis but the slices and the plane is a stack of its own, so
    channels before the plane are handled; channels the plane would take are refused."""
    from ..core.channels import find_channel_axis, refuse_channels, stated_axes
    from ..core.io import open_image

    lazy, meta = open_image(args.volume)
    shape = tuple(int(n) for n in lazy.shape)
    c = find_channel_axis(shape, axes=stated_axes(args.volume, meta), given=args.channel_axis)
    layout = cli_layout(shape, args.axis, c)
    if c is not None and (c in layout.plane_axes or c == layout.axis):
        refuse_channels(Path(args.volume).name, shape, c,
                        "applying a model slab by slab needs the channels before the image "
                        "plane (e.g. C, Z, Y, X); move them, or --channel-axis none")


def run(args: argparse.Namespace) -> int:
    """Execute ``duet nsn2n``; returns the exit code (errors raise DuetError -> exit 2)."""
    import numpy as np

    if not args.model:
        _config(args)  # bad parameters (or --config file) stop here, before any work

    from ..core.errors import DuetInputError
    from ..core.io import (
        ImageMeta,
        array_bytes,
        check_outputs,
        is_tiff_path,
        is_zarr_path,
        open_image,
        read_image,
        read_pixel_info,
        require_image_suffix,
        require_memory,
        write_json,
        write_ome_zarr,
        write_tiff,
    )
    from ..core.progress import run_to_end
    from ..core.versions import versions
    from ..nsn2n._diagnostics import noise_correlation, recommend_method, summarize_pairs
    from ..nsn2n._model import NSN2NModel
    from ..nsn2n._train import train

    out = Path(args.output)
    if args.model and args.save_model:
        raise DuetInputError("--model applies a saved model; --save-model needs training")
    if args.model and ddp.is_active():
        raise DuetInputError("torchrun runs training on several processes; apply a model "
                             "(--model) with one process, without torchrun")
    if (args.resume or args.slab is not None or args.scheduler) and not args.model:
        raise DuetInputError("--resume, --slab and --scheduler apply a saved model (--model); "
                             "training cannot resume")
    # Before reading the volume or training: every output can be written, none
    # overwrites an input or another output (the report is named after -o).
    require_image_suffix("-o", args.output)
    require_image_suffix("--uncertainty", args.uncertainty)
    chunked = bool(args.model) and _wants_chunked(args)
    outputs = [("-o", out), ("--uncertainty", args.uncertainty), ("report", _report_path(out)),
               ("--save-model", args.save_model),
               ("--log-json", getattr(args, "log_json", None))]
    if chunked:
        from ..core.chunks import staging_path

        # Every output is staged in an OME-Zarr store beside it.
        outputs += [("-o", staging_path(p)) for p in (args.output, args.uncertainty)
                    if p is not None]
    check_outputs([args.volume, args.model], outputs)
    if chunked:

        _refuse_plane_channels(args)
        return run_chunked(args)
    if is_zarr_path(args.volume) or is_tiff_path(args.volume):
        # A few KiB of OME-Zarr or TIFF can declare any shape: the volume and the float32
        # copies training holds (normalised, guides, result) must fit before reading.
        lazy, meta = open_image(args.volume)
        hint = ("apply a trained model slab by slab instead (--model M.duet -o OUT.ome.zarr)"
                if args.model else "train on a crop (fewer slices or a smaller plane), "
                "then apply the model slab by slab (--model M.duet -o OUT.ome.zarr)")
        require_memory(array_bytes(lazy.shape, lazy.dtype) + 16 * array_bytes(lazy.shape, "u1"),
                       f"NS-N2N on {Path(args.volume).name} {tuple(lazy.shape)} in memory",
                       hint)
    if is_zarr_path(args.volume):
        volume = np.asarray(lazy[...])
    else:
        volume, meta = read_image(args.volume), None
    in_shape = volume.shape
    volume, axis, channel_axis = _channels_first(volume, args, meta)
    cli_layout(volume.shape, axis, 0 if channel_axis is not None else None)  # fail fast
    with cli_run(args, "nsn2n") as bar:
        tta = args.tta is not False  # the model's default: on
        t0 = time.perf_counter()
        log = (lambda *_: None) if args.quiet else (lambda msg: bar.write(msg, file=sys.stderr))

        if args.model:
            with bar.stage("load model"):
                model = NSN2NModel.load(args.model, device=args.device or "auto")
            model = with_wiener(model, args)
            log(f"applying {args.model} to {args.volume} {volume.shape}")
            if model.describe_wiener():
                log(model.describe_wiener())
            res = run_to_end(model.iter_predict(volume, axis=axis, tta=tta), bar)
            denoised, unc = res.denoised, res.uncertainty
            report = {
                "method": "nsn2n", "mode": "apply", "model": str(args.model),
                "config": model.config.to_dict(), "model_info": model.training,
                "noise_model": model.noise.to_dict(),
                "versions": versions(),
            }
        else:
            config = _config(args)
            last_log = [0.0]

            def progress(p) -> None:
                bar(p)
                if p.stage == "train" and (p.iteration == 1 or p.elapsed - last_log[0] >= 15):
                    last_log[0] = p.elapsed
                    terms = " ".join(f"{k}={v:.4g}" for k, v in p.losses.items())
                    log(f"[{p.iteration}/~{p.iterations}] {terms} matched={p.matched_fraction:.2f} "
                        f"eta={p.eta:.0f}s")

            log(f"training NS-N2N on {args.volume} {in_shape}, axis {args.axis}")
            result = train(volume, axis=axis, config=config, callback=progress)
            bar.finish()
            if not ddp.is_main():  # rank 0 writes the outputs
                return 0
            denoised, unc = result.denoised, result.uncertainty
            report = {"mode": "train", **result.report()}
            for w in result.warnings:
                log(f"warning: {w}")
            info = result.model.training
            log(f"trained {info.get('iterations_done')} steps in {result.timings['train']:.0f}s "
                f"(budget {info.get('budget_s')}, width {info.get('width')}, "
                f"{info.get('context')}, {info.get('device')})")
            pairs_line = summarize_pairs(result.pairs)
            if pairs_line:
                log(pairs_line)
            # measured once: by training (context "auto") or here
            rho = info.get("noise_correlation")
            if rho is None:
                rho = noise_correlation(volume, axis=axis)
            noise = result.model.noise
            log(f"noise model: {noise.describe()}")
            if result.model.describe_wiener():
                log(result.model.describe_wiener())
            method, reason = recommend_method(volume, axis=axis, rho=rho, noise=noise)
            report["noise_correlation"] = rho
            report["recommendation"] = {"method": method, "reason": reason}
            log(f"recommendation: {method} ({reason})")

        for path, arr in ((out, denoised), (args.uncertainty, unc)):
            if path is None or arr is None:
                continue
            arr = np.asarray(arr, dtype=np.float32)
            if channel_axis is not None:  # back to the input's layout
                arr = np.moveaxis(arr, 0, channel_axis)
            if is_zarr_path(path):
                write_ome_zarr(path, arr, meta or ImageMeta.default(arr.ndim))
            else:
                write_tiff(path, arr, pixel_info=meta.pixel_info() if meta
                           else read_pixel_info(args.volume))
        if not args.model and args.save_model:  # after the results, which matter most
            result.model.save(args.save_model)
            report["saved_model"] = str(args.save_model)
        report.update({"input": str(args.volume), "input_shape": list(in_shape),
                       "input_dtype": str(volume.dtype), "axis": args.axis,
                       "channel_axis": channel_axis, "output": str(out),
                       "threads": bar.threads, "seconds": time.perf_counter() - t0})
        write_json(_report_path(out), report)
        log(f"wrote {out} and {_report_path(out)} in {time.perf_counter() - t0:.1f}s")
    return 0


def _config(args: argparse.Namespace):
    """The training configuration: the ``--config`` file, then the options given."""
    from ..nsn2n import NSN2NConfig

    return config_from_args(NSN2NConfig, args, skip=("threads",))
