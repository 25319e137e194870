"""``duet self2seg``: joint segmentation and denoising of one image from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .._errors import DuetInputError


def _box(values):
    return [float(v) for v in values]


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``self2seg`` sub-command to ``duet``."""
    p = subparsers.add_parser(
        "self2seg",
        help="segment and denoise one image jointly (Self2Seg)",
        description=(
            "Self2Seg: split a 2D grey or RGB image into regions while training one "
            "self-supervised denoising expert per region. Writes mask.tif, denoised.tif, "
            "expert_<k>.tif and report.json to OUTDIR. Without boxes the regions are "
            "initialised automatically (brighter region = foreground)."
        ),
    )
    p.add_argument("image", metavar="IMAGE",
                   help="input image: a TIFF or any format scikit-image reads (2D grey or RGB)")
    p.add_argument("-o", "--outdir", required=True, metavar="OUTDIR",
                   help="output folder (created if needed)")
    p.add_argument("--fg-box", action="append", nargs=4, type=float, default=[],
                   metavar=("Y0", "X0", "Y1", "X1"),
                   help="foreground box, half-open pixel coordinates (repeatable; two classes)")
    p.add_argument("--bg-box", action="append", nargs=4, type=float, default=[],
                   metavar=("Y0", "X0", "Y1", "X1"),
                   help="background box, half-open pixel coordinates (repeatable; two classes)")
    p.add_argument("--class-box", action="append", nargs=5, type=float, default=[],
                   metavar=("K", "Y0", "X0", "Y1", "X1"),
                   help="box of class K (0..classes-1) for multi-class runs (repeatable)")
    p.add_argument("--lam", type=float, default=None, metavar="L",
                   help="boundary smoothness as a multiple of the data's robust scale "
                        "(default: automatic = 1; larger = smoother masks)")
    p.add_argument("--classes", type=int, default=2, metavar="K",
                   help="number of regions K >= 2 (default 2: background/foreground)")
    p.add_argument("--experts", choices=("cnn", "linear", "constant"), default=None,
                   help="region expert: small Noise2Fast CNN, linear filter, or constant "
                        "(= convex Chan-Vese); default: the library default (cnn)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="device for CNN experts (default auto: CUDA if available)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="random seed (results are deterministic on the CPU)")
    p.add_argument("--max-alternations", type=int, default=None, metavar="N",
                   help="maximum number of expert/mask alternations")
    p.add_argument("--invert", action="store_true",
                   help="automatic initialisation: the darker region is the foreground")
    p.add_argument("--expert-steps", type=int, default=None, metavar="N",
                   help="training steps per expert in the first alternation")
    p.add_argument("--quiet", action="store_true", help="do not print progress")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .._io import read_image, write_json, write_tiff
    from ._config import Self2SegConfig
    from ._engine import self2seg
    from ._regions import boxes_to_regions

    image = read_image(args.image)
    changes = {"n_classes": args.classes, "lam": args.lam, "device": args.device,
               "seed": args.seed, "invert": args.invert}
    if args.experts is not None:
        changes["experts"] = args.experts
    if args.max_alternations is not None:
        changes["max_alternations"] = args.max_alternations
    if args.expert_steps is not None:
        changes["expert_steps"] = args.expert_steps
    cfg = Self2SegConfig(**changes)

    regions = None
    if args.fg_box or args.bg_box or args.class_box:
        if (args.fg_box or args.bg_box) and args.classes != 2:
            raise DuetInputError("--fg-box/--bg-box are for two classes; use --class-box K ...")
        class_boxes: dict[int, list] = {}
        for k, *box in args.class_box:
            if not float(k).is_integer() or not 0 <= int(k) < args.classes:
                raise DuetInputError(f"--class-box class {k:g} must be in 0..{args.classes - 1}")
            class_boxes.setdefault(int(k), []).append(box)
        regions = boxes_to_regions(np.shape(image), [_box(b) for b in args.fg_box],
                                   [_box(b) for b in args.bg_box], class_boxes)

    def progress(state):
        if not args.quiet:
            print(f"alternation {state.alternation}/{state.max_alternations}: "
                  f"energy {state.energy:.6g}, {state.elapsed:.1f} s", flush=True)

    res = self2seg(image, regions, cfg, callback=progress)
    out = Path(args.outdir)
    write_tiff(out / "mask.tif", res.labels.astype(np.uint8))
    write_tiff(out / "denoised.tif", res.denoised.astype(np.float32))
    for k in range(res.experts.shape[0]):
        write_tiff(out / f"expert_{k}.tif", res.experts[k].astype(np.float32))
    report = res.report()
    report["input"] = str(args.image)
    report["boxes"] = {"fg": args.fg_box, "bg": args.bg_box, "class": args.class_box}
    write_json(out / "report.json", report)
    if not args.quiet:
        print(f"stopped after {res.alternations} alternation(s) ({res.stop_reason}); "
              f"wrote {out}/mask.tif, denoised.tif, expert_*.tif, report.json")
    return 0
