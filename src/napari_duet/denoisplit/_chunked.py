"""denoiSplit prediction on images larger than memory: block tasks into an OME-Zarr.

The in-memory prediction (:meth:`SplitModel.iter_predict`) pads each frame to
the network's multiple, cuts it into tiles (each keeps its inner part) and
feeds each tile, with its lateral-context inputs gathered from the whole
frame, through the network.  Here the output is cut into blocks (``block``
pixels, whole chunks of the output store), one task per block of a frame:
a task computes exactly the in-memory tiles whose kept part meets its block,
from the same input values (the tile and its context windows are gathered
through the padding's index map, so only the rows and columns they reach
are read: the block's halo), and writes only its block.  With
``deterministic=True`` the result equals the in-memory result everywhere;
with sampling, each task draws its own latents (seeded from the seed, the
frame and the block; the first task uses the seed itself, so an image that
is a single task gives the in-memory samples exactly).

``duet split predict IMG -o OUT.ome.zarr --model M`` writes the MMSE as the
OME-Zarr image ((C, Y, X), or (T, C, Y, X) for frames; with a pyramid) and
``std`` (same shape) and ``samples`` ((N, ...) with ``--samples`` > 1) as
arrays of the same group; the run and its finished blocks are recorded in
the group's attributes (``--resume``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from ..core.chunks import ChunkProgress, TaskRunner, blocks, resolve, resolve_model, worker_threads
from ..core.errors import DuetInputError
from ._model import plan_prediction

__all__ = ["iter_predict_chunked", "plan_prediction"]

# Output block side (pixels) of one task when not given: bounds a task's memory
# (samples: N x C x block² floats) while keeping the tiles computed twice few.
DEFAULT_BLOCK = 1024


def _index_maps(shape: tuple[int, int], multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row/column of the padded frame, the frame row/column it copies."""
    from ..core.tiling import pad_to_multiple

    # Padding an index image copies indices exactly as it copies pixels (separably).
    return tuple(pad_to_multiple(np.arange(n, dtype=np.int64)[:, None], multiple,
                                 axes=(0,))[0][:, 0] for n in shape)


def _tile_rows(read: slice, n_padded: int, context: int) -> list[np.ndarray]:
    """Padded rows of a tile (first) and of each of its context windows (as ``context_inputs``)."""
    import torch

    from ._data import _reflect_index

    h = read.stop - read.start
    rows = [np.arange(read.start, read.stop)]
    for k in range(1, context + 1):
        s = 2**k
        idx = torch.arange(s * h) + (read.start + h // 2 - s * h // 2)
        rows.append(_reflect_index(idx, n_padded).numpy())
    return rows


def _task_block(task, model, source, outs: dict, plan: dict, frame_shape: tuple[int, int],
                is_stack: bool, n_pass: int, samples: int, deterministic: bool,
                calibration: str) -> int:
    """Predict one output block of one frame (the in-memory tiles that meet it); write it."""
    import torch
    from torch.nn import functional as F

    from ..core.tiling import iter_tiles
    from ._predict import _write_tile

    number, f, (y0, y1), (x0, x1), seed = task
    worker_threads()
    model = resolve_model(model)
    m, tile, overlap = plan["multiple"], plan["tile"], plan["overlap"]
    rmap, cmap = _index_maps(frame_shape, m)
    # Rows/columns of padding before the frame (as pad_to_multiple splits it).
    by, bx = ((len(mp) - n) // 2 for mp, n in zip((rmap, cmap), frame_shape, strict=True))
    block = (slice(y0 + by, y1 + by), slice(x0 + bx, x1 + bx))  # in padded coordinates
    tiles = [t for t in iter_tiles((len(rmap), len(cmap)), tile, overlap)
             if t.write[0].start < block[0].stop and t.write[0].stop > block[0].start
             and t.write[1].start < block[1].stop and t.write[1].stop > block[1].start]
    ctx = model.config.context_count
    rows = [_tile_rows(t.read[0], len(rmap), ctx) for t in tiles]
    cols = [_tile_rows(t.read[1], len(cmap), ctx) for t in tiles]
    # Read once the frame's rows and columns the tiles reach (the block and its halo).
    r_all = np.concatenate([rmap[r] for rs in rows for r in rs])
    c_all = np.concatenate([cmap[c] for cs in cols for c in cs])
    r0, r1, c0, c1 = int(r_all.min()), int(r_all.max()) + 1, int(c_all.min()), int(c_all.max()) + 1
    src = resolve(source)
    raw = src[f, r0:r1, c0:c1] if is_stack else src[r0:r1, c0:c1]
    x = model.input_norm.forward(np.asarray(raw, dtype=np.float32))
    frame = torch.as_tensor(np.ascontiguousarray(x), device=model.device)

    def tile_input(i: int):
        parts = []
        for k, (ry, rx) in enumerate(zip(rows[i], cols[i], strict=True)):
            ry = torch.as_tensor(rmap[ry] - r0, device=model.device)
            rx = torch.as_tensor(cmap[rx] - c0, device=model.device)
            region = frame[ry[:, None], rx[None, :]]
            # Context window k: 2^k times the tile, averaged back to the tile's size.
            parts.append(region[None] if k == 0 else F.avg_pool2d(region[None, None], 2**k)[0])
        return torch.cat(parts, dim=0)

    net, dev = model.net, model.device
    c_out = net.out_channels
    h, w = y1 - y0, x1 - x0
    mean = np.zeros((c_out, 1, h, w), np.float32)
    std = np.zeros_like(mean)
    with_samples = samples > 1 and not deterministic
    smp = np.zeros((n_pass, c_out, 1, h, w), np.float32) if with_samples else None
    net.eval()
    items = [(t, k) for t in range(len(tiles)) for k in range(n_pass)]
    cuda_ids = [dev.index or 0] if dev.type == "cuda" else []
    with torch.inference_mode(), torch.random.fork_rng(devices=cuda_ids):
        torch.manual_seed(int(seed))
        pending: dict[int, list] = {}
        inputs: dict[int, Any] = {}
        for start in range(0, len(items), plan["batch_size"]):
            chunk = items[start:start + plan["batch_size"]]
            for t, _ in chunk:
                if t not in inputs:
                    inputs[t] = tile_input(t)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                out, _ = net(torch.stack([inputs[t] for t, _ in chunk]), compute_kl=False,
                             sample=not deterministic)
            out = out.float()
            for j, (t, _) in enumerate(chunk):
                pending.setdefault(t, []).append(out[j])
            for t in [t for t, o in pending.items() if len(o) == n_pass]:
                inputs.pop(t, None)
                _write_tile(tiles[t], torch.stack(pending.pop(t)), block, 0, mean, std, smp)
    res = model._finish({"mean": mean, "std": std, "samples": smp}, None, False,
                        samples=n_pass, calibration=calibration)
    # The block is whole chunks of every output: no other task writes them.
    lead = (f,) if is_stack else ()
    region = (slice(None), slice(y0, y1), slice(x0, x1))
    resolve(outs["mmse"])[lead + region] = res.mean[:, 0]
    resolve(outs["std"])[lead + region] = res.std[:, 0]
    if smp is not None and outs.get("samples") is not None:
        resolve(outs["samples"])[(slice(None), *lead, *region)] = res.samples[:, :, 0]
    return number


def plan_tasks(shape: tuple[int, ...], block: int, seed: int) -> list[tuple]:
    """``(number, frame, rows, cols, seed)`` of every block task of an image or stack."""
    n_frames = shape[0] if len(shape) == 3 else 1
    out = []
    for f in range(n_frames):
        for ys in blocks(shape[-2], block):
            for xs in blocks(shape[-1], block):
                n = len(out)
                # The first task keeps the seed: a one-task image equals the in-memory run.
                s = seed if n == 0 else int(np.random.SeedSequence(
                    [int(seed), f, ys[0], xs[0]]).generate_state(1)[0])
                out.append((n, f, ys, xs, s))
    return out


def iter_predict_chunked(
    model, image, outs: dict, *, samples: int = 50, tile: int | None = None,
    overlap: int | None = None, batch_size: int | None = None, calibration: str = "scalar",
    deterministic: bool = False, seed: int = 0, block: int = DEFAULT_BLOCK,
    state: dict[str, Any] | None = None,
    save_state: Callable[[dict[str, Any]], None] | None = None,
    runner: TaskRunner | None = None, device: str = "auto",
) -> Generator[ChunkProgress, None, dict[str, Any]]:
    """Split ``image`` block by block into the arrays ``outs``, yielding progress per block.

    Parameters
    ----------
    model : SplitModel
    image : array-like or ImageRef
        (Y, X) or (F, Y, X), read block by block (with the tiles' halo).
    outs : dict
        Writable arrays: ``"mmse"`` and ``"std"`` of shape (C, Y, X) or
        (F, C, Y, X), optionally ``"samples"`` (N, ...) (written when
        ``samples`` > 1); chunk them ``block`` deep in y and x (whole blocks).
    samples, tile, overlap, batch_size, calibration, deterministic, seed
        As :meth:`SplitModel.iter_predict` (see the module docstring for seeds).
    block : int
        Output block side of one task, in pixels.
    state, save_state
        Resume: finished blocks (``done``) are skipped; ``save_state`` gets the
        state after every block.
    runner : TaskRunner, optional
        Where the block tasks run (default: here, one after the other).
    device : str
        Device the workers load the model on (dask only).

    Returns the final state (``done``, ``plan``).
    """
    if samples < 1:
        raise DuetInputError("samples must be >= 1")
    if block < 1:
        raise DuetInputError(f"block must be at least 1 pixel, got {block}")
    shape = tuple(int(s) for s in image.shape)
    if len(shape) not in (2, 3):
        raise DuetInputError(f"image must be (Y, X) or (N, Y, X), got shape {shape}")
    runner = runner or TaskRunner("local")
    plan = plan_prediction(model, shape[-2:], tile, overlap, batch_size)
    state = dict(state or {})
    done = set(int(i) for i in state.get("done", []))
    tasks = plan_tasks(shape, block, seed)
    todo = [t for t in tasks if t[0] not in done]
    skipped = len(done)
    n_pass = 1 if deterministic else samples
    payload = runner.model(model, device) if todo else None
    src = runner.ref(image, "image")
    refs = {k: runner.ref(v, "output") for k, v in outs.items() if v is not None}
    t0 = time.perf_counter()
    for n, (_, number) in enumerate(runner.run(
            _task_block, todo, payload, src, refs, plan, shape[-2:], len(shape) == 3, n_pass,
            samples, deterministic, calibration), start=1):
        done.add(number)
        state.update(done=sorted(done), plan=plan)
        if save_state is not None:
            save_state(dict(state))
        el = time.perf_counter() - t0
        yield ChunkProgress(stage="predict", done=len(done), total=len(tasks), skipped=skipped,
                            elapsed=el, eta=el / n * (len(todo) - n))
    state.update(done=sorted(done), plan=plan)
    return state
