"""``duet split predict IMAGE -o OUT.ome.zarr``: block tasks into an OME-Zarr (resumable)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.chunks import TaskRunner
from ..core.errors import DuetInputError
from ..denoisplit._chunked import DEFAULT_BLOCK, iter_predict_chunked
from ..denoisplit._config import PredictConfig
from ..denoisplit._model import plan_prediction


def _create_outputs(out: Path, shape: tuple, meta, n_channels: int, samples: int, block: int,
                    names: list[str]):
    """The output group: MMSE as the OME-Zarr image, ``std`` and ``samples`` beside it."""
    import zarr

    from ..core.io import ImageMeta, create_ome_zarr

    lead = shape[:-2]
    axes = (*meta.axes[:-2], "c", *meta.axes[-2:])
    omeg = ImageMeta(axes, (*meta.scale[:-2], 1.0, *meta.scale[-2:]),
                     (*meta.units[:-2], None, *meta.units[-2:]))
    if len(set(axes)) != len(axes):
        omeg = ImageMeta.default(len(axes))
    full = (*lead, n_channels, *shape[-2:])
    chunks = (*(1,) * len(lead), n_channels, *(min(block, n) for n in shape[-2:]))
    create_ome_zarr(out, full, np.float32, omeg, chunks=chunks)
    group = zarr.open_group(str(out), mode="r+")
    kw: dict[str, Any] = {"dimension_names": list(omeg.axes)}
    group.create_array("std", shape=full, dtype=np.float32, chunks=chunks, fill_value=0, **kw)
    if samples > 1:
        kw = {"dimension_names": ["sample", *omeg.axes]}
        group.create_array("samples", shape=(samples, *full), dtype=np.float32,
                           chunks=(1, *chunks), fill_value=0, **kw)
    group.attrs["channel_names"] = list(names)
    return group, omeg


def run_chunked(args: argparse.Namespace, pc: PredictConfig) -> int:
    """``duet split predict IMG -o OUT.ome.zarr --model M``: block tasks, resumable;
    ``pc``: the command's :class:`~napari_duet.denoisplit.PredictConfig`."""
    from ..core.chunks import (
        ChunkedRun,
        announce_chunked,
        eta_notes,
        file_hash,
        report_path,
        run_signature,
    )
    from ..core.io import check_outputs, open_image, write_json
    from ..denoisplit._model import SplitModel
    from ._progress import cli_run

    out = Path(args.output)
    if args.block is not None and args.block < 1:
        raise DuetInputError(f"--block must be at least 1, got {args.block}")
    check_outputs([args.image, args.model], [("-o", out), ("report", report_path(out)),
                                             ("--log-json", getattr(args, "log_json", None))])
    image, meta = open_image(args.image)
    shape = tuple(int(s) for s in image.shape)
    if len(shape) not in (2, 3):
        raise DuetInputError(f"the image must be (Y, X) or (N, Y, X), got shape {shape}")
    block = args.block or DEFAULT_BLOCK
    with cli_run(args, "split predict") as bar:
        def say(msg: str) -> None:
            bar.write(msg, file=sys.stderr)

        with bar.stage("load model"):
            # On dask the workers load it on --device; here it only plans the tasks.
            distributed = TaskRunner(args.scheduler).distributed
            model = SplitModel.load(args.model, device="cpu" if distributed else pc.device)
        plan = plan_prediction(model, shape[-2:], pc.tile, None, pc.batch_size)
        signature = run_signature(
            image, input=Path(args.image).resolve(), model_sha256=file_hash(args.model),
            samples=pc.samples, seed=pc.seed, block=block, calibration=pc.calibration,
            plan=plan)
        # Built beside the output and swapped in when complete: an earlier result survives.
        run = ChunkedRun([out], signature, resume=args.resume, scheduler=args.scheduler)
        record = run.open(lambda path: _create_outputs(
            path, shape, meta, model.n_channels, pc.samples, block,
            list(model.channel_names))[0])
        group = record.group
        outs = {"mmse": group["0"], "std": group["std"],
                "samples": group["samples"] if pc.samples > 1 else None}
        t0 = time.perf_counter()
        with run.runner as runner:
            gen = iter_predict_chunked(model, run.source(args.image, image), outs,
                                       samples=pc.samples, tile=plan["tile"],
                                       batch_size=plan["batch_size"],
                                       calibration=pc.calibration, seed=pc.seed,
                                       block=block, state=record.state,
                                       save_state=record.save, runner=runner,
                                       device=pc.device)
            announce_chunked(say, shape, image.dtype, run.store.path)
            final = run.run(gen, eta_notes(bar, say))
        bar.finish()
        seconds = time.perf_counter() - t0
        levels = run.finish(final, bar)[0]
    report = {"method": "denoisplit", "chunked": True, "image": str(args.image),
              "model": str(args.model), "output": str(out), "shape": list(shape),
              "channel_names": list(model.channel_names), "samples": pc.samples,
              "seed": pc.seed, "block": block, **plan, "calibration": pc.calibration,
              "arrays": ["0 (mmse)", "std", *(["samples"] if pc.samples > 1 else [])],
              "levels": levels, "scheduler": runner.scheduler or "local", "seconds": seconds,
              "megapixels_per_second": float(np.prod(shape)) / 1e6 / max(seconds, 1e-9),
              "model_metadata": model.metadata()}
    write_json(report_path(out), report)
    print(f"wrote {out}")
    return 0
