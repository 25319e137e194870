"""``duet self2seg``: joint segmentation and denoising of one image from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .._chunks import add_chunk_options
from .._cli_progress import add_run_options, cli_run
from .._errors import DuetInputError
from ..devices import DEVICE_CHOICES


def _box(values):
    return [float(v) for v in values]


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``self2seg`` sub-command to ``duet``."""
    p = subparsers.add_parser(
        "self2seg",
        help="segment and denoise an image or a stack jointly (Self2Seg)",
        description=(
            "Self2Seg: split a 2D grey or RGB image into regions while training one "
            "self-supervised denoising expert per region. A stack (Z, Y, X), (T, Z, Y, X), ... "
            "or (..., Y, X, 3) is segmented plane by plane with the same settings. Writes "
            "mask.tif, denoised.tif, expert_<k>.tif (each with the input's shape, axes and "
            "pixel size) and report.json to OUTDIR. Seeds come from boxes or from a label "
            "image (--regions); without seeds the regions are initialised automatically "
            "(brighter region = foreground)."
        ),
    )
    p.add_argument("image", metavar="IMAGE",
                   help="input image: a TIFF or any format scikit-image reads (2D grey or "
                        "RGB, or a stack of them; a last axis of 3 or 4 is colour)")
    p.add_argument("-o", "--outdir", "--output", dest="outdir", required=True, metavar="OUTDIR",
                   help="output folder (created if needed); or OUT.ome.zarr: the stack is "
                   "read lazily and segmented plane by plane into an OME-Zarr (denoised "
                   "image, labels/mask; resumable, see --resume and --scheduler)")
    p.add_argument("--fg-box", action="append", nargs=4, type=float, default=[],
                   metavar=("Y0", "X0", "Y1", "X1"),
                   help="foreground box, half-open pixel coordinates (repeatable; two classes)")
    p.add_argument("--bg-box", action="append", nargs=4, type=float, default=[],
                   metavar=("Y0", "X0", "Y1", "X1"),
                   help="background box, half-open pixel coordinates (repeatable; two classes)")
    p.add_argument("--class-box", action="append", nargs=5, type=float, default=[],
                   metavar=("K", "Y0", "X0", "Y1", "X1"),
                   help="box of class K (0..classes-1) for multi-class runs (repeatable)")
    p.add_argument("--regions", default=None, metavar="LABELS",
                   help="seeds from a label image (e.g. a napari Labels layer saved as TIFF): "
                        "0 = unlabelled, k+1 = class k (two classes: 1 background, "
                        "2 foreground); (Y, X) for every plane, or one per plane with the "
                        "stack's shape, where a plane without labels starts automatically. "
                        "Not together with the box options")
    p.add_argument("--lam", type=float, default=None, metavar="L",
                   help="boundary smoothness as a multiple of the data's robust scale "
                        "(default: automatic = 1; larger = smoother masks)")
    p.add_argument("--classes", type=int, default=2, metavar="K",
                   help="number of regions K >= 2 (default 2: background/foreground)")
    p.add_argument("--experts", choices=("cnn", "linear", "constant"), default=None,
                   help="region expert: small Noise2Fast CNN, linear filter, or constant "
                        "(= convex Chan-Vese); default: the library default (cnn)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="device for CNN experts (default auto: CUDA if available)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="random seed (results are deterministic on the CPU)")
    p.add_argument("--max-alternations", type=int, default=None, metavar="N",
                   help="maximum number of expert/mask alternations")
    p.add_argument("--invert", action="store_true",
                   help="automatic initialisation: the darker region is the foreground")
    p.add_argument("--expert-steps", type=int, default=None, metavar="N",
                   help="training steps per expert in the first alternation")
    add_chunk_options(p, unit="planes")
    add_run_options(p, quiet_help="do not print progress",
                    threads_help="torch CPU threads for CNN experts: a number, or auto "
                    "(default): 1 on a CPU (the tiny experts are fastest on one thread)")
    p.set_defaults(func=run)
    return p


def _output_names(n_classes: int) -> list[str]:
    """The files ``self2seg`` writes into OUTDIR for ``n_classes`` regions."""
    experts = [f"expert_{k}.tif" for k in range(max(int(n_classes), 0))]
    return ["mask.tif", "denoised.tif", *experts, "report.json"]


def run(args: argparse.Namespace) -> int:
    from .._chunks import report_path
    from .._io import (
        ResultSet,
        check_outputs,
        is_zarr_path,
        open_image,
        read_image,
        read_pixel_info,
        write_json,
        write_tiff,
    )
    from ._config import Self2SegConfig
    from ._engine import self2seg
    from ._regions import boxes_to_regions
    from ._stack import self2seg_stack, stack_layout

    out = Path(args.outdir)
    chunked = is_zarr_path(out)  # plane tasks into an OME-Zarr (self2seg/_chunked.py)
    if not chunked and (args.resume or args.scheduler):
        raise DuetInputError("--resume and --scheduler write an OME-Zarr: give -o OUT.ome.zarr")
    # Before any work: no output overwrites an input, the folder can be written.
    check_outputs([args.image, args.regions],
                  [("-o", out), ("report", report_path(out)),
                   ("--log-json", getattr(args, "log_json", None))] if chunked else
                  [*(("-o", out / name) for name in _output_names(args.classes)),
                   ("--log-json", getattr(args, "log_json", None))],
                  folders=None if chunked else {"-o": out})
    any_box = bool(args.fg_box or args.bg_box or args.class_box)
    if args.regions is not None and any_box:
        raise DuetInputError("give seeds either as --regions or as boxes "
                             "(--fg-box/--bg-box/--class-box), not both")
    image = open_image(args.image)[0] if chunked else read_image(args.image)
    pixel_info = read_pixel_info(args.image)
    lead, plane, _ = stack_layout(np.shape(image))
    changes = {"n_classes": args.classes, "lam": args.lam, "device": args.device,
               "seed": args.seed, "invert": args.invert}
    if args.experts is not None:
        changes["experts"] = args.experts
    if args.max_alternations is not None:
        changes["max_alternations"] = args.max_alternations
    if args.expert_steps is not None:
        changes["expert_steps"] = args.expert_steps
    if args.threads != "auto":  # auto: the engine's choice (1 thread for CNN experts on a CPU)
        changes["threads"] = args.threads
    cfg = Self2SegConfig(**changes)

    regions = None
    if args.regions is not None:
        regions = read_image(args.regions)
    elif any_box:
        if (args.fg_box or args.bg_box) and args.classes != 2:
            raise DuetInputError("--fg-box/--bg-box are for two classes; use --class-box K ...")
        class_boxes: dict[int, list] = {}
        for k, *box in args.class_box:
            if not float(k).is_integer() or not 0 <= int(k) < args.classes:
                raise DuetInputError(f"--class-box class {k:g} must be in 0..{args.classes - 1}")
            class_boxes.setdefault(int(k), []).append(box)
        # One set of boxes for every plane of a stack.
        regions = boxes_to_regions(plane, [_box(b) for b in args.fg_box],
                                   [_box(b) for b in args.bg_box], class_boxes)

    if chunked:
        from ._chunked import run_chunked

        return run_chunked(args, cfg, regions)
    cnn = cfg.experts == "cnn"
    threads = args.threads
    if threads == "auto" and cnn:  # as the engine: one thread for CNN experts on a CPU
        from ..devices import resolve_device

        threads = 1 if resolve_device(cfg.device).type == "cpu" else "auto"
    with cli_run(args, "self2seg", needs_torch=cnn, threads=threads) as bar:

        def progress(state):
            bar(state)
            if args.quiet:
                return
            where = ""
            if hasattr(state, "n_planes"):  # a stack: Self2SegStackState
                if state.finished:
                    return
                where = f"plane {state.plane + 1}/{state.n_planes} {state.index}: "
                state = state.state
            bar.write(f"{where}alternation {state.alternation}/{state.max_alternations}: "
                      f"energy {state.energy:.6g}, {state.elapsed:.1f} s")

        if lead:
            res = self2seg_stack(image, regions, cfg, callback=progress)
            summary = f"{len(res.indices)} plane(s)"
        else:
            res = self2seg(image, regions, cfg, callback=progress)
            summary = f"stopped after {res.alternations} alternation(s) ({res.stop_reason})"
        bar.finish()
        # One set: staged, moved in together, the report (listing exactly these files)
        # last; expert files of an earlier run with more classes are removed.
        with ResultSet(out, pattern=r"expert_\d+\.tif") as results:
            write_tiff(results.path("mask.tif"), res.labels.astype(np.uint8),
                       pixel_info=pixel_info)
            write_tiff(results.path("denoised.tif"), res.denoised.astype(np.float32),
                       pixel_info=pixel_info)
            for k in range(res.experts.shape[0]):
                write_tiff(results.path(f"expert_{k}.tif"), res.experts[k].astype(np.float32),
                           pixel_info=pixel_info)
            report = res.report()
            report["input"] = str(args.image)
            report["boxes"] = {"fg": args.fg_box, "bg": args.bg_box, "class": args.class_box}
            report["regions"] = None if args.regions is None else str(args.regions)
            if pixel_info:
                report["pixel_info"] = pixel_info
            write_json(results.path("report.json"), report)
        if not args.quiet:
            bar.write(f"{summary}; wrote {out}/mask.tif, denoised.tif, expert_*.tif, "
                      "report.json")
    return 0
