"""``duet export-bmz``: package a ``.duet`` model as a bioimage.io model (zip).

The model file's header says which engine wrote it; that engine's ``_bmz``
module builds the package (imported by name, so this module depends on no
method package).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# Engines whose models can be exported, and the module that does it.
_EXPORTERS = {"nsn2n": "napari_duet.nsn2n._bmz", "denoisplit": "napari_duet.denoisplit._bmz"}


def register(subparsers) -> None:
    """Add the ``export-bmz`` sub-command to the ``duet`` parser."""
    p = subparsers.add_parser(
        "export-bmz",
        help="package a .duet model as a bioimage.io model (zip)",
        description=(
            "Writes MODEL.duet as a bioimage.io model package (spec 0.5): weights, "
            "architecture source, test tensors, cover, README and citation; the .duet "
            "file travels inside, so napari-duet opens the zip like the model. Needs "
            "bioimageio.spec (pip install 'napari-duet[bmz]'). NS-N2N and denoiSplit "
            "models; a denoiSplit package computes the MMSE of --samples posterior samples."
        ),
    )
    p.add_argument("model", metavar="MODEL.duet", help="napari-duet model file")
    p.add_argument("-o", "--output", default=None, metavar="MODEL.zip",
                   help="package to write (default: MODEL.zip beside the model)")
    p.add_argument("--test-input", default=None, metavar="IMAGE",
                   help="data like those the model is for; its centre becomes the test tensor "
                   "(NS-N2N: a stack, at most 8 x 64 x 64 of it; denoiSplit: a 2D image, 64 x "
                   "64; default: the napari-duet sample for the model's kind)")
    p.add_argument("--axis", type=int, default=0, metavar="A",
                   help="NS-N2N: slice axis of --test-input (default 0)")
    p.add_argument("--samples", type=int, default=20, metavar="N",
                   help="denoiSplit: posterior samples averaged by the exported model "
                   "(default 20, as the Split widget)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="denoiSplit: seed of the posterior samples (default 0)")
    p.add_argument("--name", default=None, help="model name (default: from the file name)")
    p.add_argument("--author", action="append", default=None, metavar="NAME",
                   help="author name (repeat for several; default 'napari-duet user')")
    p.add_argument("--license", default="CC-BY-4.0", metavar="SPDX",
                   help="license of the weights, an SPDX identifier (default CC-BY-4.0)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import DuetInputError
    from ..core.modelfile import read_model_header

    model = Path(args.model)
    kind = read_model_header(model)["kind"]
    if kind not in _EXPORTERS:
        raise DuetInputError(f"{model.name}: {kind} models cannot be exported to bioimage.io "
                             "(see docs/bioimageio.md)")
    exporter = importlib.import_module(_EXPORTERS[kind])
    output = Path(args.output) if args.output else model.with_suffix(".zip")
    if output.suffix.lower() != ".zip":
        raise DuetInputError(f"the package must end in .zip, got {output.name}")
    common = {"name": args.name, "authors": args.author, "license": args.license}
    if kind == "nsn2n":
        exporter.export_bmz(model, output, test_volume=_test_volume(args), **common)
    else:
        exporter.export_bmz(model, output, test_image=_test_image(args), samples=args.samples,
                            batch=min(args.samples, 4), seed=args.seed, **common)
    if not args.quiet:
        print(f"wrote {output}", file=sys.stderr)
    return 0


def _test_volume(args: argparse.Namespace):
    import numpy as np

    if args.test_input is None:
        from ..core.synthetic import synthetic_volume

        return synthetic_volume()[0]
    from ..core.errors import DuetInputError
    from ..core.io import open_image

    arr, _ = open_image(args.test_input)
    if arr.ndim != 3:
        raise DuetInputError(f"--test-input must be a 3D stack, got {arr.ndim}D")
    if not -3 <= args.axis < 3:
        raise DuetInputError(f"--axis {args.axis} is out of range for a 3D stack")
    axis = args.axis % 3
    # Only the centre becomes the test tensor: read it, never the whole (declared) volume.
    caps = [_TEST_SLICES if a == axis else _TEST_SIDE for a in range(3)]
    return np.moveaxis(_centre(arr, caps), axis, 0)


def _test_image(args: argparse.Namespace):

    if args.test_input is None:
        from ..denoisplit._demo import split_demo_data

        return split_demo_data()[0]
    from ..core.errors import DuetInputError
    from ..core.io import open_image

    arr, _ = open_image(args.test_input)
    if arr.ndim != 2:
        raise DuetInputError(f"--test-input must be a 2D image for a denoiSplit model, "
                             f"got {arr.ndim}D")
    return _centre(arr, [_TEST_SIDE, _TEST_SIDE])


# The exporters cut the test tensor from the centre, at most this big (see their help).
_TEST_SLICES, _TEST_SIDE = 8, 64


def _centre(arr, caps):
    """The centre of a lazy array, at most ``caps`` along each axis, as float32."""
    import numpy as np

    sel = []
    for n, cap in zip(arr.shape, caps, strict=True):
        start = max(0, (int(n) - cap) // 2)
        sel.append(slice(start, start + min(int(n), cap)))
    return np.asarray(arr[tuple(sel)], np.float32)
