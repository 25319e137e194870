"""``duet self2seg``: joint segmentation and denoising of one image from the command line."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np

from ..core.devices import DEVICE_CHOICES
from ..core.errors import DuetInputError
from ._params import HelpFormatter, add_param_options, config_from_args
from ._progress import add_chunk_options, add_run_options, cli_run


def _box(values):
    return [float(v) for v in values]


EXAMPLES = """\
examples:
  duet self2seg cells.tif -o out/
      automatic start (brighter objects are the foreground)
  duet self2seg cells.tif -o out/ --fg-box 40 60 70 90 --bg-box 0 0 30 30
      seed boxes: rows Y0..Y1 and columns X0..X1 (Y0 X0 Y1 X1, top-left then
      bottom-right, end exclusive), NOT Fiji's x, y, width, height
  duet self2seg cells.tif -o out/ --regions seeds.tif --lam 0.5
      seeds painted in napari (a Labels layer saved as TIFF), finer borders
  duet self2seg "plates/*.tif" -o out/
  duet self2seg plates/ -o out/
      every image of a folder or glob, each into out/<name>/, one progress bar;
      a rerun skips the images already finished (a complete report.json)
"""

_BOX_HELP = ("in pixels: Y0 X0 Y1 X1 = top row, left column, bottom row, right column "
             "(half-open: rows Y0..Y1-1), not Fiji's x, y, width, height; repeatable")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``self2seg`` sub-command to ``duet``."""
    from ..self2seg import Self2SegConfig as C

    p = subparsers.add_parser(
        "self2seg",
        help="segment and denoise an image or a stack jointly (Self2Seg)",
        description=textwrap.fill(
            "Self2Seg: split a 2D grey or RGB image into regions while training one "
            "self-supervised denoising expert per region. A stack (Z, Y, X), (T, Z, Y, X), ... "
            "or (..., Y, X, 3) is segmented plane by plane with the same settings. Writes "
            "mask.tif (classes), labels.tif (objects, touching nuclei split), denoised.tif, "
            "expert_<k>.tif (each with the input's shape, axes and pixel size) and "
            "report.json to OUTDIR. Seeds come from boxes or from a label "
            "image (--regions); without seeds the regions are initialised automatically "
            "(brighter region = foreground). The report and the last lines say when the "
            "result contradicts the seeds or the mask collapsed, and what to change. "
            "A folder or a glob pattern processes every image in it, each into "
            "OUTDIR/<name>/.", 79),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE",
                   help="input image: a TIFF or any format scikit-image reads (2D grey or "
                        "RGB, or a stack of them; a last axis of 3 or 4 is colour); or a "
                        "folder, or a quoted glob pattern such as 'plates/*.tif': every "
                        "image, each into OUTDIR/<name>/")
    p.add_argument("-o", "--outdir", "--output", dest="outdir", required=True, metavar="OUTDIR",
                   help="output folder (created if needed); or OUT.ome.zarr: the stack is "
                   "read lazily and segmented plane by plane into an OME-Zarr (denoised "
                   "image, labels/mask; resumable, see --resume and --scheduler)")
    p.add_argument("--fg-box", action="append", nargs=4, type=float, default=[],
                   metavar=("Y0", "X0", "Y1", "X1"),
                   help=f"foreground box (two classes), {_BOX_HELP}")
    p.add_argument("--bg-box", action="append", nargs=4, type=float, default=[],
                   metavar=("Y0", "X0", "Y1", "X1"),
                   help=f"background box (two classes), {_BOX_HELP}")
    p.add_argument("--class-box", action="append", nargs=5, type=float, default=[],
                   metavar=("K", "Y0", "X0", "Y1", "X1"),
                   help=f"box of class K (0..classes-1) for multi-class runs, {_BOX_HELP}")
    p.add_argument("--regions", default=None, metavar="LABELS",
                   help="seeds from a label image (e.g. a napari Labels layer saved as TIFF): "
                        "0 = unlabelled, k+1 = class k (two classes: 1 background, "
                        "2 foreground); (Y, X) for every plane, or one per plane with the "
                        "stack's shape, where a plane without labels starts automatically. "
                        "Not together with the box options")
    # --classes, --lam, --experts, ... and --config: from Self2SegConfig's declarations.
    add_param_options(p, C, skip=("threads",),  # --threads: add_run_options ("auto" too)
                      overrides={"device": {"choices": DEVICE_CHOICES}})
    add_chunk_options(p, unit="planes")
    add_run_options(p, quiet_help="do not print progress",
                    threads_help="torch CPU threads for CNN experts: a number, or auto "
                    "(default): 1 on a CPU (the tiny experts are fastest on one thread)")
    p.set_defaults(func=run)
    return p


def _output_names(n_classes: int) -> list[str]:
    """The files ``self2seg`` writes into OUTDIR for ``n_classes`` regions."""
    experts = [f"expert_{k}.tif" for k in range(max(int(n_classes), 0))]
    return ["mask.tif", "labels.tif", "denoised.tif", *experts, "report.json"]


_GLOB_CHARS = set("*?[")
_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif")


def batch_inputs(spec: str) -> list[Path] | None:
    """The images of a batch run: the image files of a folder, or a glob pattern's
    matches (sorted); None when ``spec`` is one image.  No match: a clear error."""
    import glob

    path = Path(spec)
    if path.is_dir() and not spec.endswith((".zarr", ".zarr/")):
        files = sorted(f for f in path.iterdir()
                       if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES)
        where = f"folder {spec}"
    elif _GLOB_CHARS & set(spec) and not path.exists():
        files = sorted(Path(f) for f in glob.glob(spec) if Path(f).is_file())
        where = f"pattern {spec!r}"
    else:
        return None
    if not files:
        raise DuetInputError(f"no image files in the {where} (looked for "
                             f"{', '.join(_IMAGE_SUFFIXES)})")
    return files


def finished(folder: Path, n_classes: int | None = None) -> bool:
    """True when ``folder`` holds one complete Self2Seg result: a report whose manifest
    matches the files beside it (sizes; see :func:`~napari_duet.core.io.verify_result_set`),
    for ``n_classes`` classes when given."""
    from ..core.io import verify_result_set

    try:
        report = verify_result_set(folder, digest=False)
    except DuetInputError:
        return False
    if report.get("method") != "self2seg":
        return False
    return n_classes is None or len(report.get("class_fractions") or []) == n_classes


def _stems(files: list[Path]) -> list[str]:
    """One output folder name per input: the file's stem, with its parent folder's name
    when two inputs share a stem."""
    stems = [f.name.split(".")[0] for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    return [f"{f.parent.name}_{s}" if s in dup else s for f, s in zip(files, stems, strict=True)]


def run(args: argparse.Namespace) -> int:
    from ..core.io import is_zarr_path

    _config(args)  # bad parameters (or --config file) stop here, before any work
    files = batch_inputs(args.image)
    if files is None:
        return _run_one(args, Path(args.image), Path(args.outdir))
    if is_zarr_path(args.outdir):
        raise DuetInputError("a batch run writes one folder per image: give -o OUTDIR, "
                             "not an OME-Zarr")
    if args.fg_box or args.bg_box or args.class_box or args.regions:
        raise DuetInputError("seed boxes and --regions belong to one image: run a batch "
                             "without seeds, or each image on its own with its seeds")
    out = Path(args.outdir)
    stems = _stems(files)
    todo = [(f, s) for f, s in zip(files, stems, strict=True)
            if not finished(out / s, args.classes)]
    skipped = len(files) - len(todo)
    if skipped and not args.quiet:
        print(f"{skipped} of {len(files)} image(s) already finished in {out}: skipped",
              file=sys.stderr)
    cfg = _config(args)
    threads = _threads(args, cfg)
    with cli_run(args, "self2seg", needs_torch=cfg.experts == "cnn", threads=threads) as bar:
        batch = _Batch(bar, len(todo), cfg.max_alternations)
        for i, (f, stem) in enumerate(todo):
            batch.image = i
            _run_one(args, f, out / stem, bar=bar, batch=batch, label=f"{f.name}: ")
        bar.finish()
    if not args.quiet:
        print(f"{len(todo)} image(s) segmented, {skipped} skipped; results in {out}/<name>/")
    return 0


class _Batch:
    """Where a run is within a batch: one bar for all images, in alternations."""

    def __init__(self, bar, n_images: int, per_image: int):
        self.bar, self.n_images, self.per_image, self.image = bar, n_images, per_image, 0


def _config(args):
    """The run's configuration: ``--config`` file, then the options given, then
    ``--threads`` (auto: the engine's choice, 1 thread for CNN experts on a CPU)."""
    from ..self2seg import Self2SegConfig

    extra = {} if args.threads == "auto" else {"threads": args.threads}
    cfg = config_from_args(Self2SegConfig, args, skip=("threads",), **extra)
    args.classes = cfg.n_classes  # the file names and seed checks follow the config
    return cfg


def _threads(args, cfg):
    threads = args.threads
    if threads == "auto" and cfg.experts == "cnn":  # as the engine: one thread on a CPU
        from ..core.devices import resolve_device

        threads = 1 if resolve_device(cfg.device).type == "cpu" else "auto"
    return threads


def _run_one(args: argparse.Namespace, image_path: Path, out: Path, *, bar=None, batch=None,
             label: str = "") -> int:
    from ..core.chunks import report_path
    from ..core.io import (
        check_outputs,
        is_zarr_path,
        open_image,
        read_image,
        read_pixel_info,
    )
    from ..self2seg._regions import boxes_to_regions
    from ..self2seg._stack import stack_layout

    chunked = is_zarr_path(out)  # plane tasks into an OME-Zarr (self2seg/_chunked.py)
    if not chunked and (args.resume or args.scheduler):
        raise DuetInputError("--resume and --scheduler write an OME-Zarr: give -o OUT.ome.zarr")
    # Before any work: no output overwrites an input, the folder can be written.
    check_outputs([image_path, args.regions],
                  [("-o", out), ("report", report_path(out)),
                   ("--log-json", getattr(args, "log_json", None))] if chunked else
                  [*(("-o", out / name) for name in _output_names(args.classes)),
                   ("--log-json", getattr(args, "log_json", None))],
                  folders=None if chunked else {"-o": out})
    any_box = bool(args.fg_box or args.bg_box or args.class_box)
    if args.regions is not None and any_box:
        raise DuetInputError("give seeds either as --regions or as boxes "
                             "(--fg-box/--bg-box/--class-box), not both")
    image = open_image(image_path)[0] if chunked else read_image(image_path)
    pixel_info = read_pixel_info(image_path)
    lead, plane, _ = stack_layout(np.shape(image))
    cfg = _config(args)

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
        from ._self2seg_chunked import run_chunked

        return run_chunked(args, cfg, regions)
    if bar is None:
        with cli_run(args, "self2seg", needs_torch=cfg.experts == "cnn",
                     threads=_threads(args, cfg)) as own_bar:
            return _segment(args, image, image_path, out, regions, cfg, lead, pixel_info,
                            own_bar, None, label)
    return _segment(args, image, image_path, out, regions, cfg, lead, pixel_info, bar, batch,
                    label)


def _segment(args, image, image_path, out, regions, cfg, lead, pixel_info, bar, batch, label):
    from ..core.progress import run_to_end
    from ..self2seg._engine import Self2SegProgress, iter_self2seg
    from ..self2seg._stack import Self2SegStackState, iter_self2seg_stack

    n_planes = int(np.prod(np.shape(image)[:len(lead)], dtype=np.int64)) if lead else 1
    per = cfg.max_alternations
    offset, total = 0.0, n_planes * per
    if batch is not None:  # one bar over the batch: every image counts max_alternations
        offset, total = batch.image * batch.per_image, batch.n_images * batch.per_image
        per = batch.per_image / n_planes
    scale = per / cfg.max_alternations

    def show(done: float, **fields):
        bar.update("self2seg", round(offset + done * scale, 3), total, **fields)

    show(0.0)  # the clock starts with the run, not at the first alternation

    def progress(item):
        if isinstance(item, Self2SegProgress):  # within an alternation: a steady bar
            plane = item.plane
            within = item.fraction * item.n_planes - plane  # this plane's share done
            what = "training experts" if item.stage == "experts" else "updating the mask"
            show((plane + min(max(within, 0.0), 1.0)) * cfg.max_alternations,
                 alternation=item.alternation, plane=plane + 1, planes=item.n_planes,
                 stage_name=what)
            return
        where = ""
        if isinstance(item, Self2SegStackState):
            st = item.state
            done = (item.plane + (1 if item.finished else
                                  st.alternation / max(st.max_alternations, 1)))
            show(done * cfg.max_alternations, plane=item.plane + 1, planes=item.n_planes,
                 alternation=st.alternation, energy=st.energy)
            if item.finished or args.quiet:
                return
            where = f"plane {item.plane + 1}/{item.n_planes} {item.index}: "
            state = st
        else:
            state = item
            show(float(state.alternation), alternation=state.alternation,
                 energy=state.energy)
        if not args.quiet:
            bar.write(f"{label}{where}alternation {state.alternation}/"
                      f"{state.max_alternations}: energy {state.energy:.6g}, "
                      f"{state.elapsed:.1f} s")

    if lead:
        res = run_to_end(iter_self2seg_stack(image, regions, cfg, progress=True), progress)
        summary = f"{len(res.indices)} plane(s)"
        checks = [(f"plane {list(idx)}: ", rep.get("checks") or {})
                  for idx, rep in zip(res.indices, res.plane_reports, strict=False)]
    else:
        res = run_to_end(iter_self2seg(image, regions, cfg, progress=True), progress)
        stopped = (res.checks or {}).get("stopped") or res.stop_reason
        summary = f"{stopped}"
        checks = [("", res.checks or {})]
    show(n_planes * cfg.max_alternations)
    if batch is None:
        bar.finish()
    report = {"input": str(image_path),
              "boxes": {"fg": args.fg_box, "bg": args.bg_box, "class": args.class_box},
              "regions": None if args.regions is None else str(args.regions)}
    # A non-negative input gives non-negative intensities (a CNN expert may undershoot).
    res.save(out, pixel_info=pixel_info, nonnegative=float(np.nanmin(image)) >= 0,
             report=report)
    n_objects = int(res.instances.max(initial=0))
    # Warnings go to stderr even with -q: a wrecked result must not pass silently.
    for where, chk in checks:
        for line in [f"warning: {w}" for w in chk.get("warnings", [])] + [
                f"hint: {h}" for h in chk.get("hints", [])]:
            bar.write(f"duet self2seg: {label}{where}{line}", file=sys.stderr)
    if not args.quiet:
        bar.write(f"{label}{summary}, {n_objects} object(s); wrote {out}/mask.tif, "
                  "labels.tif, denoised.tif, expert_*.tif, report.json")
    return 0
