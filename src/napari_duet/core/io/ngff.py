"""OME-Zarr (NGFF 0.4/0.5): lazy reading, chunked writing, pyramids, labels."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DuetInputError
from .jsonio import strict_jsonable
from .meta import _AXIS_TYPES, NGFF_VERSIONS, ImageMeta, _reason
from .outputs import _remove, replace_tree


def _multiscales(attrs: dict) -> list | None:
    """The NGFF ``multiscales`` list of a group's attributes (0.5: under ``ome``)."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and isinstance(ome.get("multiscales"), list):
        return ome["multiscales"]
    ms = attrs.get("multiscales")
    return ms if isinstance(ms, list) else None


def _scale_of(transforms) -> list[float] | None:
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale":
            return [float(v) for v in t["scale"]]
    return None


def _open_zarr(path: Path):
    import zarr

    if not path.exists():
        raise DuetInputError(f"image file not found: {path}")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise DuetInputError(f"cannot read {path.name} as zarr: {_reason(exc)}") from None
    if isinstance(node, zarr.Array):
        return node, ImageMeta.default(node.ndim)
    ms = _multiscales(dict(node.attrs))
    if not ms:
        raise DuetInputError(f"{path.name} is a zarr group without NGFF multiscales metadata")
    try:
        image = ms[0]
        ds0 = image["datasets"][0]
        arr = node[str(ds0["path"])]
        axes_raw = image.get("axes") or []
        axes = tuple(a["name"] if isinstance(a, dict) else str(a) for a in axes_raw)
        units = tuple(a.get("unit") if isinstance(a, dict) else None for a in axes_raw)
        scale = _scale_of(ds0.get("coordinateTransformations")) or [1.0] * arr.ndim
        outer = _scale_of(image.get("coordinateTransformations"))
        if outer:
            scale = [a * b for a, b in zip(scale, outer, strict=True)]
    except Exception as exc:
        raise DuetInputError(f"{path.name} has unreadable NGFF metadata: {_reason(exc)}") from None
    if not isinstance(arr, zarr.Array):
        raise DuetInputError(f"{path.name}: multiscale dataset {ds0['path']!r} is not an array")
    if len(axes) != arr.ndim:
        default = ImageMeta.default(arr.ndim)
        axes, units = default.axes, default.units
    if len(scale) != arr.ndim:
        scale = [1.0] * arr.ndim
    return arr, ImageMeta(axes, tuple(float(s) for s in scale), tuple(units))


def _ngff_axes(meta: ImageMeta) -> list[dict[str, Any]]:
    out = []
    for name, unit in zip(meta.axes, meta.units, strict=True):
        ax: dict[str, Any] = {"name": name}
        if name in _AXIS_TYPES:
            ax["type"] = _AXIS_TYPES[name]
        if unit and ax.get("type") in ("space", "time"):
            ax["unit"] = unit
        out.append(ax)
    return out


def _plane_axes(meta: ImageMeta) -> tuple[int, int]:
    """The two axes the pyramid halves: y and x when named, else the last two."""
    if "y" in meta.axes and "x" in meta.axes:
        return meta.axes.index("y"), meta.axes.index("x")
    n = len(meta.axes)
    return n - 2, n - 1


def _level_scale(meta: ImageMeta, level: int) -> tuple[list[float], list[float]]:
    scale, trans = list(meta.scale), [0.0] * len(meta.scale)
    for a in _plane_axes(meta):
        scale[a] = meta.scale[a] * 2**level
        trans[a] = meta.scale[a] * (2**level - 1) / 2
    return scale, trans


def _set_ngff_metadata(group, meta: ImageMeta, n_levels: int, version: str,
                       name: str = "image") -> None:
    datasets = []
    for level in range(n_levels):
        scale, trans = _level_scale(meta, level)
        ct: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if any(trans):
            ct.append({"type": "translation", "translation": trans})
        datasets.append({"path": str(level), "coordinateTransformations": ct})
    ms = {"name": name, "axes": _ngff_axes(meta), "datasets": datasets,
          "type": "mean" if n_levels > 1 else None}
    ms = {k: v for k, v in ms.items() if v is not None}
    if version == "0.4":
        group.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        ome = dict(group.attrs.get("ome") or {})
        ome.update({"version": "0.5", "multiscales": [ms]})
        group.attrs["ome"] = ome


def default_chunks(shape: tuple[int, ...], meta: ImageMeta | None = None,
                   plane: int = 512, depth: int = 16) -> tuple[int, ...]:
    """Chunks for an OME-Zarr level: up to ``plane`` px in y/x, ``depth`` in z, 1 elsewhere."""
    meta = meta or ImageMeta.default(len(shape))
    py, px = _plane_axes(meta)
    out = []
    for a, n in enumerate(shape):
        if a in (py, px):
            out.append(min(n, plane))
        elif meta.axes[a] == "z":
            out.append(min(n, depth))
        else:
            out.append(1)
    return tuple(out)


def create_ome_zarr(path: str | os.PathLike, shape: tuple[int, ...], dtype, meta: ImageMeta, *,
                    chunks: tuple[int, ...] | None = None, version: str = "0.5",
                    attributes: dict[str, Any] | None = None):
    """Create an OME-Zarr image (level 0 only, zeros) to be filled chunk by chunk.

    Returns the zarr array of level 0; :func:`build_pyramid` adds the lower
    resolutions once it is filled.  ``version`` "0.5" writes zarr v3, "0.4" zarr v2.
    """
    import zarr

    if version not in NGFF_VERSIONS:
        raise DuetInputError(f"NGFF version must be one of {NGFF_VERSIONS}, got {version!r}")
    if len(meta.axes) != len(shape):
        raise DuetInputError(f"{len(meta.axes)} axes for a {len(shape)}D image")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            # Never deleted here: a chunked run builds its store beside the earlier
            # result and swaps it in only when complete (``replace_tree``).
            raise DuetInputError(f"{path} exists: remove it or choose another output")
        group = zarr.open_group(str(path), mode="w-", zarr_format=3 if version == "0.5" else 2)
        kwargs: dict[str, Any] = {}
        if version == "0.5":
            kwargs["dimension_names"] = list(meta.axes)
        else:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        arr = group.create_array(
            "0", shape=tuple(int(s) for s in shape), dtype=np.dtype(dtype),
            chunks=tuple(chunks or default_chunks(tuple(shape), meta)), fill_value=0, **kwargs)
        _set_ngff_metadata(group, meta, 1, version)
        for k, v in (attributes or {}).items():
            group.attrs[k] = strict_jsonable(v)
    except DuetInputError:
        raise
    except OSError as exc:
        raise DuetInputError(f"cannot write {path}: {_reason(exc)}") from None
    return arr


def create_ome_zarr_labels(image: str | os.PathLike, name: str, shape: tuple[int, ...], dtype,
                           meta: ImageMeta, *, chunks: tuple[int, ...] | None = None):
    """Add an NGFF label image ``labels/<name>`` (one level, zeros) to an OME-Zarr image.

    The image at ``image`` must exist (:func:`create_ome_zarr`); the label image
    gets its NGFF version and ``meta``'s axes and scale.  Returns its level-0 array.
    """
    import zarr

    version = ngff_version(zarr.open_group(str(image), mode="r"))
    arr = create_ome_zarr(Path(image) / "labels" / name, shape, dtype, meta, chunks=chunks,
                          version=version)
    labels = zarr.open_group(str(Path(image) / "labels"), mode="a",
                             zarr_format=3 if version == "0.5" else 2)
    member = zarr.open_group(str(Path(image) / "labels" / name), mode="r+")
    source = {"source": {"image": "../../"}}
    if version == "0.4":
        labels.attrs["labels"] = [name]
        member.attrs["image-label"] = {"version": "0.4", **source}
    else:
        labels.attrs["ome"] = {"version": "0.5", "labels": [name]}
        ome = dict(member.attrs["ome"])
        ome["image-label"] = source
        member.attrs["ome"] = ome
    return arr


def ngff_version(group) -> str:
    """NGFF version of an OME-Zarr group written by :func:`create_ome_zarr`."""
    return "0.5" if isinstance(group.attrs.get("ome"), dict) else "0.4"


def auto_levels(shape: tuple[int, ...], meta: ImageMeta, max_levels: int = 4,
                min_size: int = 256) -> int:
    """Pyramid levels: halve y/x while the plane is larger than ``min_size`` (at most 4)."""
    py, px = _plane_axes(meta)
    n, size = 1, max(shape[py], shape[px])
    while n < max_levels and size > min_size:
        size = (size + 1) // 2
        n += 1
    return n


def _halve(block: np.ndarray, axes: tuple[int, int], dtype) -> np.ndarray:
    """Mean of 2x2 blocks over ``axes`` (odd sizes: the last row/column is repeated)."""
    x = block.astype(np.float64)
    for a in axes:
        if x.shape[a] % 2:
            edge = np.take(x, [-1], axis=a)
            x = np.concatenate([x, edge], axis=a)
        n = x.shape[a] // 2
        x = np.take(x, np.arange(0, 2 * n, 2), axis=a) + np.take(x, np.arange(1, 2 * n, 2), axis=a)
        x = x / 2
    if np.dtype(dtype).kind in "iub":
        x = np.rint(x)
    return x.astype(dtype)


def build_pyramid(path: str | os.PathLike, levels: int | None = None) -> int:
    """Add lower resolutions (y/x halved per level, 2x2 mean) to an OME-Zarr image.

    Reads level 0 block by block (bounded memory), writes levels ``1..levels-1``
    and lists them in the NGFF metadata.  ``levels`` None: :func:`auto_levels`.
    Returns the number of levels.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    version = ngff_version(group)
    _, meta = _open_zarr(Path(path))
    src = group["0"]
    levels = auto_levels(src.shape, meta) if levels is None else max(1, int(levels))
    py, px = _plane_axes(meta)
    fmt = group.metadata.zarr_format
    for level in range(1, levels):
        shape = list(src.shape)
        for a in (py, px):
            shape[a] = (shape[a] + 1) // 2
        chunks = tuple(min(c, s) for c, s in zip(src.chunks, shape, strict=True))
        kwargs: dict[str, Any] = {}
        if fmt == 3:
            kwargs["dimension_names"] = list(meta.axes)
        else:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        dst = group.create_array(str(level), shape=tuple(shape), dtype=src.dtype, chunks=chunks,
                                 fill_value=0, overwrite=True, **kwargs)
        lead = [a for a in range(src.ndim) if a not in (py, px)]
        if not lead:
            dst[...] = _halve(src[...], (py, px), src.dtype)
        else:
            # Blocks along the last leading axis, one chunk deep; every index of the others.
            blk_axis = lead[-1]
            step = src.chunks[blk_axis]
            for idx in np.ndindex(*[src.shape[a] for a in lead[:-1]]):
                for b0 in range(0, src.shape[blk_axis], step):
                    sel: list[Any] = [slice(None)] * src.ndim
                    for a, i in zip(lead[:-1], idx, strict=True):
                        sel[a] = slice(i, i + 1)
                    sel[blk_axis] = slice(b0, min(b0 + step, src.shape[blk_axis]))
                    block = np.asarray(src[tuple(sel)])
                    # Plane by plane: float64 temporaries of one plane, not of the block.
                    half = np.empty_like(block, shape=tuple(
                        (n + 1) // 2 if a in (py, px) else n for a, n in enumerate(block.shape)))
                    for i in range(block.shape[blk_axis]):
                        at = [slice(None)] * block.ndim
                        at[blk_axis] = slice(i, i + 1)
                        half[tuple(at)] = _halve(block[tuple(at)], (py, px), src.dtype)
                    dst[tuple(sel)] = half
        src = dst
    _set_ngff_metadata(group, meta, levels, version)
    return levels


def write_ome_zarr(path: str | os.PathLike, array, meta: ImageMeta | None = None, *,
                   chunks: tuple[int, ...] | None = None, levels: int | None = None,
                   version: str = "0.5") -> Path:
    """Write an array (numpy or any array-like, copied block by block) as OME-Zarr.

    ``meta`` gives axes, pixel size and units (default: guessed from the number of
    dimensions); ``levels`` the pyramid depth (default :func:`auto_levels`).
    """
    meta = meta or ImageMeta.default(len(array.shape))
    path = Path(path)
    # Written beside the target (a fresh private folder) and swapped in when complete,
    # so an interrupted run (Ctrl-C, full disk) never leaves a half-written store under
    # the result's name and an earlier result stays intact until the new one is whole.
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{path.name}-", dir=path.parent))
    tmp = staging / path.name
    try:
        dst = create_ome_zarr(tmp, tuple(array.shape), array.dtype, meta, chunks=chunks,
                              version=version)
        if len(array.shape) < 3:
            dst[...] = np.asarray(array[...])
        else:
            step = dst.chunks[0]
            for b0 in range(0, array.shape[0], step):
                dst[b0:b0 + step] = np.asarray(array[b0:b0 + step])
        build_pyramid(tmp, levels)
        replace_tree(tmp, path)
    finally:
        _remove(staging)
    return path
