"""``duet nsn2n --model M``, slab by slab: volumes larger than memory, resumable.

The output (or, for a TIFF output, a staging OME-Zarr ``OUT.tif.partial.zarr``
beside it) records in its attributes (``napari_duet``) the run it belongs to
(input, model file hash, axis, TTA), the statistics of the input and the slabs
finished so far; ``--resume`` reuses them and skips those slabs.  Level 0 is
written slab by slab; the pyramid (OME-Zarr) or the TIFF is made at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path
from typing import Any

RECORD = "napari_duet"


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _store_for(path: Path) -> Path:
    from .._io import is_zarr_path

    return path if is_zarr_path(path) else path.with_name(path.name + ".partial.zarr")


def _open_existing(store: Path, signature: dict[str, Any]):
    """The level-0 array and saved state of an earlier run into ``store``, or None."""
    import zarr

    from .._errors import DuetInputError
    from .._io import strict_jsonable

    if not store.exists():
        return None
    try:
        group = zarr.open_group(str(store), mode="r+")
        rec = dict(group.attrs.get(RECORD) or {})
        arr = group["0"]
    except Exception:
        rec, arr = {}, None
    if rec.get("run") != strict_jsonable(signature) or arr is None:
        raise DuetInputError(f"{store} is not an interrupted run of this input, model and "
                             "options: remove it or run without --resume")
    return group, arr, rec.get("state") or {}


def run_chunked(args: argparse.Namespace) -> int:
    """Execute ``duet nsn2n --model M`` slab by slab (see the module docstring)."""
    import numpy as np

    from .._cli_progress import cli_run
    from .._errors import DuetInputError
    from .._io import (
        build_pyramid,
        create_ome_zarr,
        is_zarr_path,
        open_image,
        strict_jsonable,
        write_json,
        write_tiff_blocks,
    )
    from .._versions import versions
    from ._chunked import auto_slab, iter_denoise_chunked
    from ._cli import _report_path
    from ._model import NSN2NModel
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
    with cli_run(args, "nsn2n") as bar:
        t0 = time.perf_counter()
        log = (lambda *_: None) if args.quiet else (lambda msg: bar.write(msg, file=sys.stderr))
        with bar.stage("load model"):
            model = NSN2NModel.load(args.model, device=args.device)
        signature = {"input": str(Path(args.volume).resolve()), "shape": list(source.shape),
                     "dtype": str(source.dtype), "axis": layout.axis,
                     "model_sha256": _file_hash(args.model), "tta": tta,
                     "uncertainty": unc_path is not None}
        plane = layout.shape[layout.plane_axes[0]] * layout.shape[layout.plane_axes[1]]
        stores = [_store_for(out)] + ([_store_for(unc_path)] if unc_path else [])
        state: dict[str, Any] | None = None
        arrays = []
        if args.resume:
            found = [_open_existing(s, signature) for s in stores]
            if all(f is not None for f in found):
                group = found[0][0]
                arrays = [f[1] for f in found]
                state = found[0][2]
                log(f"resuming {stores[0]}: {len(state.get('done', []))} slabs done")
            elif any(f is not None for f in found):
                raise DuetInputError("--resume: the output and the uncertainty store do not "
                                     "belong to the same run; remove them")
        if state is None:
            slab = args.slab or auto_slab(plane)
            chunks = [1] * len(layout.shape)
            chunks[layout.axis] = min(slab, layout.shape[layout.axis])
            for a in layout.plane_axes:
                chunks[a] = min(512, layout.shape[a])
            attrs = {RECORD: {"run": signature, "state": {}, "complete": False}}
            arrays = [create_ome_zarr(s, tuple(source.shape), np.float32, meta,
                                      chunks=tuple(chunks), attributes=attrs)
                      for s in stores]
            import zarr

            group = zarr.open_group(str(stores[0]), mode="r+")

        def save_state(st: dict[str, Any]) -> None:
            group.attrs[RECORD] = strict_jsonable(
                {"run": signature, "state": st, "complete": False})

        log(f"applying {args.model} to {args.volume} {tuple(source.shape)} slab by slab")
        gen = iter_denoise_chunked(model, source, arrays[0], axis=layout.axis, tta=tta,
                                   slab=args.slab, state=state, save_state=save_state,
                                   uncertainty=arrays[1] if unc_path else None)
        final = None
        while True:
            try:
                bar(next(gen))
            except StopIteration as stop:
                final = stop.value
                break
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
            group.attrs[RECORD] = strict_jsonable(
                {"run": signature, "state": final, "complete": True})
        report = {
            "method": "nsn2n", "mode": "apply", "chunked": True, "model": str(args.model),
            "config": model.config.to_dict(), "model_info": model.info,
            "slab": final["slab"], "normalizers": final["normalizers"],
            "taus": final.get("taus"), "resumed": bool(args.resume and state),
            "versions": versions(), "input": str(args.volume),
            "input_shape": list(source.shape), "input_dtype": str(source.dtype),
            "axis": layout.axis, "output": str(out), "threads": bar.threads,
            "axes": list(meta.axes), "scale": list(meta.scale),
            "seconds": time.perf_counter() - t0,
        }
        write_json(_report_path(out), report)
        log(f"wrote {out} and {_report_path(out)} in {time.perf_counter() - t0:.1f}s")
    return 0
