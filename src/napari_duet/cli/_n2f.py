"""``duet n2f``: Noise2Fast, single-image self-supervised denoising, plane by plane."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.devices import DEVICE_CHOICES
from ._progress import add_run_options, cli_run


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``n2f`` sub-command to ``duet``."""
    p = subparsers.add_parser(
        "n2f", help="denoise an image or every plane of a stack on its own (Noise2Fast)",
        description="Noise2Fast (Lequyer et al., 2022): a small network learns to predict "
        "one checkerboard half of an image from the other, so it denoises one image without "
        "clean targets. For noise independent between pixels; every 2D plane of a stack "
        "is denoised on its own (what 'Check noise' recommends when neighbouring slices "
        "do not match). Writes OUT.tif (float32, the input's shape) and OUT.json.",
        epilog="example:\n  duet n2f stack.tif -o stack_n2f.tif --steps 300",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE", help="2D image or stack (TIFF or any image file)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tif",
                   help="denoised image (TIFF); a JSON report OUT.json is written beside it")
    p.add_argument("--steps", type=int, default=300, metavar="N",
                   help="most training steps per plane (early stopping may end sooner). "
                   "Default: 300")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="where to compute. Default: auto (a GPU when there is one)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="random seed (plane i uses S + i). Default: 0")
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core.errors import DuetInputError
    from ..core.io import check_outputs, read_image, read_pixel_info, write_json, write_tiff
    from ..core.n2f._stack import iter_noise2fast_stack
    from ..core.progress import run_to_end

    out = Path(args.output)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise DuetInputError(f"-o {out} must end in .tif or .tiff")
    if args.steps < 1:
        raise DuetInputError(f"--steps must be >= 1, got {args.steps}")
    report_path = out.with_suffix(".json")
    check_outputs([args.image], [("-o", out), ("report", report_path),
                                 ("--log-json", getattr(args, "log_json", None))])
    image = read_image(args.image)
    with cli_run(args, "n2f") as bar:
        res = run_to_end(iter_noise2fast_stack(image, steps=args.steps, device=args.device,
                                               seed=args.seed, threads=bar.threads), bar)
        bar.finish()
    write_tiff(out, np.asarray(res.denoised, np.float32), pixel_info=read_pixel_info(args.image))
    rep = res.report()
    rep.update(input=str(args.image), output=str(out))
    write_json(report_path, rep)
    if not args.quiet:
        print(f"wrote {out} and {report_path} in {res.seconds:.1f} s")
    return 0
