"""``duet nsn2n --model M``, slab by slab: volumes larger than memory, resumable.

The output (or, for a TIFF output, a staging OME-Zarr ``OUT.tif.partial.zarr``
beside it) records in its attributes (``napari_duet``) the run it belongs to
(input, model file hash, axis, TTA), the statistics of the input and the slabs
finished so far; ``--resume`` reuses them and skips those slabs.  Level 0 is
written slab by slab; the pyramid (OME-Zarr) or the TIFF is made at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .._chunks import ImageRef, RunRecord, TaskRunner, file_hash


def _store_for(path: Path) -> Path:
    from .._io import is_zarr_path

    return path if is_zarr_path(path) else path.with_name(path.name + ".partial.zarr")


def _level0(record: RunRecord):
    from .._errors import DuetInputError

    try:
        return record.group["0"]
    except KeyError:
        raise DuetInputError("the output to resume has no level 0: remove it or run without "
                             "--resume") from None


def run_chunked(args: argparse.Namespace) -> int:
    """Execute ``duet nsn2n --model M`` slab by slab (see the module docstring)."""
    import zarr

    from .._cli_progress import cli_run
    from .._errors import DuetInputError
    from .._io import build_pyramid, is_zarr_path, open_image, write_json, write_tiff_blocks
    from .._progress import run_to_end
    from .._versions import versions
    from ._chunked import auto_slab, iter_denoise_chunked
    from ._cli import _report_path
    from ._model import NSN2NModel
    from ._store import create_store
    from ._volume import layout_for

    out = Path(args.output)
    source, meta = open_image(args.volume)
    if out.resolve() == Path(args.volume).resolve():
        raise DuetInputError("the output would overwrite the input: choose another -o path")
    layout = layout_for(tuple(int(s) for s in source.shape), args.axis)
    if args.slab is not None and args.slab < 1:
        raise DuetInputError(f"--slab must be at least 1, got {args.slab}")
    tta = not args.no_tta
    unc_path = Path(args.uncertainty) if args.uncertainty and tta else None
    runner = TaskRunner(args.scheduler)  # connects when entered, below
    with cli_run(args, "nsn2n") as bar:
        t0 = time.perf_counter()
        log = (lambda *_: None) if args.quiet else (lambda msg: bar.write(msg, file=sys.stderr))
        with bar.stage("load model"):
            # On dask the workers load it on --device; here it only plans the tasks.
            model = NSN2NModel.load(args.model, device="cpu" if runner.distributed else args.device)
        signature = {"input": str(Path(args.volume).resolve()), "shape": list(source.shape),
                     "dtype": str(source.dtype), "axis": layout.axis,
                     "model_sha256": file_hash(args.model), "tta": tta,
                     "uncertainty": unc_path is not None}
        plane = layout.shape[layout.plane_axes[0]] * layout.shape[layout.plane_axes[1]]
        stores = [_store_for(out)] + ([_store_for(unc_path)] if unc_path else [])
        state: dict[str, Any] | None = None
        arrays = []
        if args.resume:
            found = [RunRecord.open(s, signature) for s in stores]
            if all(f is not None for f in found):
                record = found[0]
                arrays = [_level0(f) for f in found]
                state = record.state
                log(f"resuming {stores[0]}: {len(state.get('done', []))} slabs done")
            elif any(f is not None for f in found):
                raise DuetInputError("--resume: the output and the uncertainty store do not "
                                     "belong to the same run; remove them")
        if state is None:
            slab = args.slab or auto_slab(plane)
            arrays = [create_store(s, layout, meta, slab, signature) for s in stores]
            record = RunRecord(zarr.open_group(str(stores[0]), mode="r+"), signature)

        log(f"applying {args.model} to {args.volume} {tuple(source.shape)} slab by slab")
        with runner:
            # Workers open the input by path; here the open array is read.
            src = ImageRef.of(args.volume) if runner.distributed else source
            gen = iter_denoise_chunked(model, src, arrays[0], axis=layout.axis, tta=tta,
                                       slab=args.slab, state=state, save_state=record.save,
                                       uncertainty=arrays[1] if unc_path else None,
                                       runner=runner, device=args.device)
            final = run_to_end(gen, bar)
        bar.finish()
        for store, path, arr in zip(stores, [out, unc_path], arrays, strict=False):
            if is_zarr_path(path):
                with bar.stage("pyramid"):
                    levels = build_pyramid(store)
                log(f"wrote {path} ({levels} levels)")
            else:
                with bar.stage("write tiff"):
                    write_tiff_blocks(path, arr, pixel_info=meta.pixel_info())
                shutil.rmtree(store, ignore_errors=True)
        if is_zarr_path(out):
            record.finish(final)
        report = {
            "method": "nsn2n", "mode": "apply", "chunked": True, "model": str(args.model),
            "config": model.config.to_dict(), "model_info": model.info,
            "slab": final["slab"], "normalizers": final["normalizers"],
            "taus": final.get("taus"), "resumed": bool(args.resume and state),
            "scheduler": runner.scheduler or "local",
            "versions": versions(), "input": str(args.volume),
            "input_shape": list(source.shape), "input_dtype": str(source.dtype),
            "axis": layout.axis, "output": str(out), "threads": bar.threads,
            "axes": list(meta.axes), "scale": list(meta.scale),
            "seconds": time.perf_counter() - t0,
        }
        write_json(_report_path(out), report)
        log(f"wrote {out} and {_report_path(out)} in {time.perf_counter() - t0:.1f}s")
    return 0
