"""Seed shapes → per-class region masks for Self2Seg.

Shapes on a napari Shapes layer carry a ``role`` feature (background,
foreground, or class k).  Rectangles, polygons and ellipses are rasterised in
the *image layer's* data coordinates (through world coordinates, so layers
with different scale/translate still line up); lines and paths are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from skimage.draw import polygon as draw_polygon

ROLE_FEATURE = "role"
ROLE_COLORS = [
    "#22b8ff",  # background: blue
    "#ffae00",  # foreground / class 1: orange
    "#ff3d9a",
    "#3ddc84",
    "#b07cff",
    "#ff5f5f",
    "#f4f4f4",
    "#8bd3dd",
]
AREA_TYPES = ("rectangle", "polygon", "ellipse")


def role_names(n_classes: int) -> list[str]:
    """Role labels for ``n_classes`` classes; class 0 is always the background."""
    if n_classes == 2:
        return ["background", "foreground"]
    return ["background"] + [f"class {k}" for k in range(1, n_classes)]


def role_to_class(role: str) -> int:
    """Class index of a role label ("foreground" is class 1)."""
    role = str(role).strip().lower()
    if role == "background":
        return 0
    if role == "foreground":
        return 1
    if role.startswith("class "):
        return int(role.split()[1])
    raise ValueError(f"unknown seed role {role!r}")


def role_features(n_classes: int, roles: Sequence[str] = ()) -> pd.DataFrame:
    """A features table whose ``role`` column is categorical with a stable order.

    A role that no longer exists (fewer classes) is mapped onto the last class.
    """
    names = role_names(n_classes)
    fixed = []
    for r in roles:
        try:
            k = role_to_class(r)
        except ValueError:
            k = 0
        fixed.append(names[min(k, n_classes - 1)])
    return pd.DataFrame({ROLE_FEATURE: pd.Categorical(fixed, categories=names)})


def _ellipse_polygon(corners: np.ndarray, n: int = 64) -> np.ndarray:
    """Ellipse inscribed in a (possibly rotated) box given by its 4 corners."""
    c = corners.mean(axis=0)
    a = (corners[1] + corners[2]) / 2 - c
    b = (corners[2] + corners[3]) / 2 - c
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return c + np.cos(t) * a + np.sin(t) * b


def shape_mask(
    vertices_yx: np.ndarray, shape_type: str, image_shape: tuple[int, int]
) -> np.ndarray:
    """Rasterise one area shape (vertices in image pixel coordinates) to a bool mask."""
    verts = np.asarray(vertices_yx, dtype=float)
    if shape_type == "ellipse":
        verts = _ellipse_polygon(verts)
    mask = np.zeros(image_shape, dtype=bool)
    if shape_type == "rectangle":
        # Pixel-inclusive boxes: a rectangle drawn over pixels [y0, y1] covers them all.
        y0, x0 = np.floor(verts.min(axis=0) + 0.5).astype(int)
        y1, x1 = np.floor(verts.max(axis=0) + 0.5).astype(int)
        mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        return mask
    rr, cc = draw_polygon(verts[:, 0], verts[:, 1], shape=image_shape)
    mask[rr, cc] = True
    return mask


def seeds_to_regions(
    shapes_layer,
    image_layer,
    image_yx_shape: tuple[int, int],
    n_classes: int,
    lead_index: tuple[int, ...] = (),
) -> tuple[np.ndarray | None, list[str]]:
    """Region image (0 = unassigned, k+1 = class k) from a seeds Shapes layer.

    Parameters
    ----------
    shapes_layer : napari.layers.Shapes or None
    image_layer : napari.layers.Image
        The layer the seeds refer to; vertices are mapped into its data coordinates.
    image_yx_shape : (int, int)
        Size of the plane being segmented.
    lead_index : tuple of int
        Index of the plane along the image's leading (non-YX) axes; nD shapes
        count only on their own plane, 2D shapes on every plane.

    Returns
    -------
    regions : ndarray or None
        None when no area shape applies (automatic initialisation).
    notes : list of str
        What was ignored and why (for a notification).
    """
    notes: list[str] = []
    if shapes_layer is None or len(shapes_layer.data) == 0:
        return None, notes
    roles = (
        list(shapes_layer.features[ROLE_FEATURE])
        if ROLE_FEATURE in shapes_layer.features
        else ["foreground"] * len(shapes_layer.data)
    )
    regions = np.zeros(image_yx_shape, dtype=np.int32)
    used = 0
    n_img = image_layer.ndim
    for verts, stype, role in zip(shapes_layer.data, shapes_layer.shape_type, roles, strict=False):
        if stype not in AREA_TYPES:
            notes.append(f"ignored a {stype} seed (only rectangles, polygons and ellipses count)")
            continue
        try:
            k = role_to_class(role)
        except ValueError:
            notes.append(f"ignored a seed with unknown role {role!r}")
            continue
        if k >= n_classes:
            notes.append(f"ignored a seed of {role} (only {n_classes} classes)")
            continue
        world = np.array([shapes_layer.data_to_world(v) for v in verts])
        if world.shape[1] < n_img:  # 2D shapes over an nD image: pad leading axes
            pad = np.zeros((world.shape[0], n_img - world.shape[1]))
            world = np.concatenate([pad, world], axis=1)
        data = np.array([image_layer.world_to_data(w[-n_img:]) for w in world])
        if shapes_layer.ndim > 2 and lead_index:
            lead = np.round(data[0, : len(lead_index)]).astype(int)
            if tuple(lead) != tuple(lead_index):
                continue
        yx = data[:, -2:]
        mask = shape_mask(yx, stype, image_yx_shape)
        if mask.any():
            regions[mask] = k + 1
            used += 1
        else:
            notes.append("ignored a seed outside the image")
    return (regions if used else None), notes
