"""``duet self2seg STACK -o OUT.ome.zarr``: plane tasks into an OME-Zarr (resumable)."""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np

from ..core.chunks import ChunkProgress
from ..self2seg._chunked import iter_self2seg_chunked, summary
from ..self2seg._config import Self2SegConfig
from ..self2seg._stack import stack_layout


def _output_meta(meta, shape: tuple, lead: tuple, plane: tuple, rgb: bool):
    """Axes/scale of the denoised output and of the labels (no colour axis)."""
    from ..core.io import ImageMeta

    keep = len(lead) + 2 + (1 if rgb else 0)  # a trailing grey axis of 1 is dropped
    den = ImageMeta(meta.axes[:keep], meta.scale[:keep], meta.units[:keep])
    n = len(lead) + 2
    lab = ImageMeta(meta.axes[:n], meta.scale[:n], meta.units[:n])
    if len(set(den.axes)) != len(den.axes):
        den, lab = ImageMeta.default(keep), ImageMeta.default(n)
    return den, lab


def run_chunked(args: argparse.Namespace, cfg: Self2SegConfig, regions) -> int:
    """``duet self2seg STACK -o OUT.ome.zarr``: plane tasks into an OME-Zarr (resumable)."""
    import zarr

    from ..core.chunks import ChunkedRun, announce_chunked, report_path, run_signature
    from ..core.io import create_ome_zarr, create_ome_zarr_labels, open_image, write_json
    from ._progress import cli_run

    out = Path(args.outdir)
    image, meta = open_image(args.image)
    shape = tuple(int(s) for s in image.shape)
    lead, plane, rgb = stack_layout(shape)
    den_meta, lab_meta = _output_meta(meta, shape, lead, plane, rgb)
    den_shape = lead + plane + ((3,) if rgb else ())
    signature = run_signature(
        image, input=Path(args.image).resolve(), config=cfg.to_dict(),
        regions=None if regions is None else hashlib.sha256(
            np.ascontiguousarray(regions).tobytes()).hexdigest())
    # Built beside the output and swapped in when complete: an earlier result survives.
    run = ChunkedRun([out], signature, resume=args.resume, scheduler=args.scheduler)

    def build(path: Path):
        ones = (1,) * len(lead)
        tile = tuple(min(n, 512) for n in plane)
        create_ome_zarr(path, den_shape, np.float32, den_meta,
                        chunks=ones + tile + ((3,) if rgb else ()))
        create_ome_zarr_labels(path, "mask", lead + plane, np.uint8, lab_meta,
                               chunks=ones + tile)
        return zarr.open_group(str(path), mode="r+")

    record = run.open(build)
    labels_out, denoised_out = record.group["labels/mask/0"], record.group["0"]
    cnn = cfg.experts == "cnn"
    threads = args.threads
    if threads == "auto" and cnn:  # as the engine: one thread for CNN experts on a CPU
        from ..core.devices import resolve_device

        threads = 1 if resolve_device(cfg.device).type == "cpu" else "auto"
    t0 = time.perf_counter()
    with cli_run(args, "self2seg", needs_torch=cnn, threads=threads) as bar:
        with run.runner as runner:
            gen = iter_self2seg_chunked(run.source(args.image, image), labels_out,
                                        denoised_out, regions, cfg, rgb=rgb,
                                        state=record.state, save_state=record.save,
                                        runner=runner)

            def show(p: ChunkProgress) -> None:
                bar(p)
                if not args.quiet:
                    bar.write(f"plane {p.done}/{p.total} done ({p.elapsed:.1f} s)")

            announce_chunked(None if args.quiet else bar.write, shape, image.dtype,
                             run.store.path)
            final = run.run(gen, show)
        bar.finish()
        levels = run.finish(final, bar)[0]
        report = summary(final, cfg, shape, str(image.dtype), rgb)
        report.update(input=str(args.image), output=str(out), levels=levels,
                      axes=list(den_meta.axes), scale=list(den_meta.scale),
                      scheduler=runner.scheduler or "local",
                      regions=None if args.regions is None else str(args.regions),
                      seconds=time.perf_counter() - t0)
        write_json(report_path(out), report)
        if not args.quiet:
            bar.write(f"{len(final['done'])} plane(s); wrote {out} (denoised, labels/mask) "
                      f"and {report_path(out)}")
    return 0
