"""``duet nsn2n --model M``, slab by slab: volumes larger than memory, resumable.

The run writes into a staging OME-Zarr beside the output (``OUT.partial.zarr``),
put in place only when complete, so a failed or interrupted run never harms an
earlier result (:class:`~napari_duet.core.chunks.RunStore`).  The staging store
records in its attributes (``napari_duet``) the run it belongs to (input and a
sample of its data, model file hash, axis, TTA), the statistics of the input and the slabs
finished so far; ``--resume`` reuses them and skips those slabs.  Level 0 is
written slab by slab; the pyramid (OME-Zarr) or the TIFF is made at the end
(:func:`~napari_duet.nsn2n._store.iter_denoise_into`, the widget's run too).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..core.chunks import (
    ChunkedRun,
    TaskRunner,
    announce_chunked,
    eta_notes,
    file_hash,
    run_signature,
)
from ..core.progress import run_to_end


def with_wiener(model, args: argparse.Namespace):
    """``model`` with the Wiener stage set by ``--wiener`` when given (else as trained)."""
    from ..nsn2n._config import check_stage_fits

    choice = getattr(args, "wiener", None)
    if choice:
        check_stage_fits(choice, model.context)
        model.config = model.config.replace(wiener=choice)
    return model


def cli_layout(shape: tuple[int, ...], axis: int, channel_axis=None):
    """:func:`~._volume.layout_for`, its "too few slices" error naming the options that
    pick the axes (``--axis``, ``--channel-axis``) when another axis would do."""
    from ..core.errors import DuetInputError
    from ..nsn2n._volume import MIN_SLICES, layout_for

    try:
        return layout_for(shape, axis)
    except DuetInputError as exc:
        if "slices along axis" not in str(exc) or len(shape) < 3:
            raise
        others = [a for a in range(len(shape) - 2) if shape[a] >= MIN_SLICES
                  and a != channel_axis]
        which = f" (axis {others[0]} has {shape[others[0]]})" if others else ""
        raise DuetInputError(f"{exc} in the {len(shape)}D input {tuple(shape)}: give the slice "
                             f"axis with --axis{which} and a channel axis with --channel-axis"
                             ) from None


def _report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".json")


def run_chunked(args: argparse.Namespace) -> int:
    """Execute ``duet nsn2n --model M`` slab by slab (see the module docstring)."""
    from ..core.errors import DuetInputError
    from ..core.io import open_image, require_memory, write_json
    from ..core.versions import versions
    from ..nsn2n._chunked import auto_slab
    from ..nsn2n._model import NSN2NModel
    from ..nsn2n._store import iter_denoise_into
    from ._progress import cli_run

    out = Path(args.output)
    source, meta = open_image(args.volume)
    if out.resolve() == Path(args.volume).resolve():
        raise DuetInputError("the output would overwrite the input: choose another -o path")
    layout = cli_layout(tuple(int(s) for s in source.shape), args.axis)
    if args.slab is not None and args.slab < 1:
        raise DuetInputError(f"--slab must be at least 1, got {args.slab}")
    tta = args.tta is not False  # --no-tta turns it off
    unc_path = Path(args.uncertainty) if args.uncertainty and tta else None
    device = args.device or "auto"
    with cli_run(args, "nsn2n") as bar:
        t0 = time.perf_counter()
        log = (lambda *_: None) if args.quiet else (lambda msg: bar.write(msg, file=sys.stderr))
        with bar.stage("load model"):
            # On dask the workers load it on --device; here it only plans the tasks.
            distributed = TaskRunner(args.scheduler).distributed
            model = with_wiener(NSN2NModel.load(args.model, device="cpu" if distributed
                                                else device), args)
        signature = run_signature(source, input=Path(args.volume).resolve(), axis=layout.axis,
                                  model_sha256=file_hash(args.model), tta=tta,
                                  uncertainty=unc_path is not None, wiener=model.wiener_mode)
        plane = layout.shape[layout.plane_axes[0]] * layout.shape[layout.plane_axes[1]]
        # Memory is bounded by one slab (and its halo): its float32 input, guides, network
        # activations and result, about 24 copies; it must fit even at one slice.
        depth = (args.slab or auto_slab(plane, model.halo)) + 2 * model.halo
        require_memory(depth * plane * 4 * 24, f"one slab of {depth} slices of "
                       f"{tuple(layout.shape[a] for a in layout.plane_axes)} px",
                       "give --slab 1, or bin the planes")
        # Each output is built in a staging store beside it and put in place only when
        # complete: an earlier result survives a failed or interrupted run.
        paths = [out] + ([unc_path] if unc_path else [])
        run = ChunkedRun(paths, signature, resume=args.resume, scheduler=args.scheduler)
        state = run.state
        if not run.fresh:
            log(f"resuming {run.store.path}: {len(state.get('done', []))} slabs done")
        announce_chunked(None if args.quiet else log, source.shape, source.dtype,
                         run.store.path)
        log(f"applying {args.model} to {args.volume} {tuple(source.shape)} slab by slab")
        with run.runner as runner:
            gen = iter_denoise_into(run, model, run.source(args.volume, source), layout, meta,
                                    tta=tta, slab=args.slab, runner=runner, device=device)
            result = run_to_end(gen, eta_notes(bar, None if args.quiet else log))
        bar.finish()
        final = result.final
        for s, path in zip(run.stores, paths, strict=True):
            log(f"{path} was already complete" if s.reused else f"wrote {path}")
        report = {
            "method": "nsn2n", "mode": "apply", "chunked": True, "model": str(args.model),
            "config": model.config.to_dict(), "model_info": model.training,
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
