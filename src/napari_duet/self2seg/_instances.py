"""Instances from a foreground mask: connected components, touching nuclei split.

Users count and measure nuclei, so a binary mask is not enough.  Each connected
component of the mask is one object unless its distance transform has more than
one clear peak: then a marker-controlled watershed on the (negated) distance
transform splits it along its necks.  A peak counts only when it rises at least
``h`` pixels above the saddle to its neighbour (an h-maximum), so one round
nucleus, whose distance map has a single plateau, is never cut.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..core.errors import DuetInputError

__all__ = ["split_instances", "label_instances", "measure_objects", "OBJECT_COLUMNS"]

#: Columns of :func:`measure_objects` (and of the CSV written from it).
OBJECT_COLUMNS = ("label", "area", "mean_intensity", "centroid_y", "centroid_x")


def split_instances(
    mask: np.ndarray,
    *,
    h: float = 2.0,
    min_size: int = 8,
    smooth: float = 1.0,
) -> np.ndarray:
    """Label the objects of a 2D foreground mask, splitting touching ones.

    Parameters
    ----------
    mask : bool array (Y, X)
        Foreground mask (non-zero = object).
    h : float
        Least height (pixels of distance) by which a distance-transform peak
        must rise above the neck joining it to another peak for the two to be
        separate objects; larger values split less.
    min_size : int
        Objects smaller than this many pixels are dropped (noise specks).
    smooth : float
        Gaussian smoothing (pixels) of the distance transform before the
        peaks are found, so a ragged boundary does not create false peaks.

    Returns
    -------
    ndarray (Y, X) int32
        0 = background, 1..N = objects, numbered in raster order of their
        first pixel.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DuetInputError(f"instances need a 2D mask, got shape {m.shape}")
    if not (h >= 0 and min_size >= 0 and smooth >= 0):
        raise DuetInputError("h, min_size and smooth must be >= 0")
    m = m > 0
    if not m.any():
        return np.zeros(m.shape, np.int32)
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    if smooth > 0:
        dist = ndi.gaussian_filter(dist, smooth) * m
    markers, _ = ndi.label(h_maxima(dist, h) & m) if h > 0 else ndi.label(m)
    cc, _ = ndi.label(m)
    # A component without a marker (smaller than h) is still one object.
    missing = np.setdiff1d(np.unique(cc[m]), np.unique(cc[markers > 0]))
    if missing.size:
        extra = np.isin(cc, missing)
        markers = np.where(extra, cc + markers.max(), markers)
    labels = watershed(-dist, markers, mask=m)
    return _relabel(labels, min_size)


def label_instances(labels: np.ndarray, n_classes: int = 2, **kwargs) -> np.ndarray:
    """Instances of every class but the background (0), plane by plane for a stack.

    Each 2D plane (the last two axes) of each class ``k >= 1`` is split with
    :func:`split_instances` (``kwargs`` go there); numbers run on across
    classes and planes, so every object of the stack has its own label.
    """
    lab = np.asarray(labels)
    if lab.ndim < 2:
        raise DuetInputError(f"instances need at least a 2D label image, got shape {lab.shape}")
    out = np.zeros(lab.shape, np.int32)
    offset = 0
    for idx in np.ndindex(lab.shape[:-2]):
        plane = lab[idx]
        for k in range(1, max(int(n_classes), 2)):
            inst = split_instances(plane == k, **kwargs)
            n = int(inst.max())
            if n:
                out[idx] = np.where(inst > 0, inst + offset, out[idx])
                offset += n
    return out


def _relabel(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` pixels; number the rest 1..N in raster order."""
    flat = labels.ravel()
    counts = np.bincount(flat)
    keep = counts >= max(min_size, 1)
    keep[0] = False
    _, first = np.unique(flat, return_index=True)
    ids = np.unique(flat)
    order = [int(i) for i in ids[np.argsort(first)] if i > 0 and keep[i]]
    lut = np.zeros(counts.size, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


def measure_objects(instances: np.ndarray, intensity: np.ndarray | None = None
                    ) -> dict[str, np.ndarray]:
    """One row per object: label, area (pixels), mean intensity, centroid (y, x).

    Parameters
    ----------
    instances : int array (Y, X)
        Instance labels (0 = background), e.g. from :func:`split_instances`.
    intensity : array (Y, X), optional
        Image to average in each object (the denoised image, say); NaN when
        omitted.

    Returns
    -------
    dict of column name -> 1D array (see :data:`OBJECT_COLUMNS`)
    """
    lab = np.asarray(instances)
    if lab.ndim != 2:
        raise DuetInputError(f"instances must be 2D, got shape {lab.shape}")
    if intensity is not None and np.shape(intensity)[:2] != lab.shape:
        raise DuetInputError(f"intensity {np.shape(intensity)} does not match the labels "
                             f"{lab.shape}")
    lab = lab.astype(np.int64, copy=False)
    ids = np.unique(lab[lab > 0])
    n = int(lab.max()) + 1 if lab.size else 1
    area = np.bincount(lab.ravel(), minlength=n).astype(np.float64)
    yy, xx = np.indices(lab.shape)
    cy = np.bincount(lab.ravel(), yy.ravel(), minlength=n) / np.maximum(area, 1)
    cx = np.bincount(lab.ravel(), xx.ravel(), minlength=n) / np.maximum(area, 1)
    if intensity is not None:
        img = np.asarray(intensity, np.float64)
        if img.ndim == 3:  # colour: mean over channels
            img = img.mean(axis=-1)
        mean = np.bincount(lab.ravel(), img.ravel(), minlength=n) / np.maximum(area, 1)
    else:
        mean = np.full(n, np.nan)
    return {"label": ids.astype(np.int32), "area": area[ids].astype(np.int64),
            "mean_intensity": mean[ids], "centroid_y": cy[ids], "centroid_x": cx[ids]}
