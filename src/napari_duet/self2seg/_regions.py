"""Initial regions: user boxes, region masks, or an automatic threshold."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..core.errors import DuetInputError

__all__ = ["boxes_to_regions", "validate_regions", "auto_labels"]

Box = Sequence[float]

# Share of an initial foreground that, when explained by background noise alone, marks
# the threshold as a cut through the noise.
_NOISE_SHARE = 0.5


def _check_box(box: Box, shape: tuple[int, int], what: str) -> tuple[int, int, int, int]:
    try:
        y0, x0, y1, x1 = (int(round(float(v))) for v in box)
    except (TypeError, ValueError):
        raise DuetInputError(
            f"{what} {tuple(box) if isinstance(box, Iterable) else box!r} must be 4 numbers "
            "(y0, x0, y1, x1)"
        ) from None
    h, w = shape
    label = f"{what} ({y0}, {x0}, {y1}, {x1})"
    if y1 <= y0 or x1 <= x0:
        raise DuetInputError(f"{label} is empty: need y0 < y1 and x0 < x1 (half-open)")
    if y0 >= h or x0 >= w or y1 <= 0 or x1 <= 0:
        raise DuetInputError(f"{label} lies outside the {h}x{w} image")
    if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
        raise DuetInputError(
            f"{label} is partly outside the {h}x{w} image: keep 0 <= y0 < y1 <= {h} "
            f"and 0 <= x0 < x1 <= {w}"
        )
    return y0, x0, y1, x1


def boxes_to_regions(
    shape: Sequence[int],
    fg_boxes: Iterable[Box] = (),
    bg_boxes: Iterable[Box] = (),
    class_boxes: Mapping[int, Iterable[Box]] | None = None,
) -> np.ndarray:
    """Paint rectangles into a seed-region image.

    Parameters
    ----------
    shape : (Y, X) or (Y, X, C)
        Image shape (only the first two entries are used).
    fg_boxes, bg_boxes : iterables of (y0, x0, y1, x1)
        Half-open pixel boxes of the foreground (class 1) and background
        (class 0), for two classes.
    class_boxes : dict {class_index: [boxes]}, optional
        Boxes per class for K classes (merged with ``fg_boxes``/``bg_boxes``).

    Returns
    -------
    ndarray (Y, X) uint8
        0 = unassigned, ``k + 1`` = seed pixel of class ``k``.  Boxes are
        painted background first, then foreground, then ``class_boxes`` in
        the given order: later boxes overwrite earlier ones where they overlap.

    Raises
    ------
    DuetInputError
        If a box is empty, outside the image or partly outside it.
    """
    if len(shape) < 2:
        raise DuetInputError(f"image shape {tuple(shape)} is not 2D")
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), np.uint8)
    items: list[tuple[int, Box, str]] = []
    items += [(0, b, "background box") for b in bg_boxes]
    items += [(1, b, "foreground box") for b in fg_boxes]
    for cls, boxes in (class_boxes or {}).items():
        if int(cls) < 0 or int(cls) > 254:
            raise DuetInputError(f"class index {cls} out of range 0..254")
        items += [(int(cls), b, f"class {int(cls)} box") for b in boxes]
    for cls, box, what in items:
        y0, x0, y1, x1 = _check_box(box, (h, w), what)
        out[y0:y1, x0:x1] = cls + 1
    return out


def validate_regions(regions, shape2d: tuple[int, int], n_classes: int) -> np.ndarray:
    """Check a seed-region image and return it as an int array (0 = unassigned)."""
    reg = np.asarray(regions)
    if reg.shape != tuple(shape2d):
        raise DuetInputError(f"regions shape {reg.shape} does not match image shape {shape2d}")
    if reg.dtype.kind == "b":
        raise DuetInputError("regions must be integer labels (0 unassigned, k+1 class k), not bool")
    if reg.dtype.kind not in "iu":
        if reg.dtype.kind == "f" and np.all(np.isfinite(reg)) and np.all(reg == np.round(reg)):
            reg = reg.astype(np.int64)
        else:
            raise DuetInputError(f"regions must hold integer labels, got dtype {reg.dtype}")
    reg = reg.astype(np.int64)
    lo, hi = int(reg.min()), int(reg.max())
    if lo < 0 or hi > n_classes:
        raise DuetInputError(
            f"regions values must lie in 0..{n_classes} (0 unassigned, k+1 = class k); "
            f"found {lo}..{hi}"
        )
    present = np.bincount(reg.ravel(), minlength=n_classes + 1)
    for k in range(n_classes):
        if present[k + 1] == 0:
            name = {0: " (background)", 1: " (foreground)"}.get(k, "") if n_classes == 2 else ""
            raise DuetInputError(
                f"class {k}{name} has no seed pixels: give at least one region/box per class"
            )
    return reg


def auto_labels(
    grey: np.ndarray,
    n_classes: int = 2,
    *,
    method: str = "auto",
    sigma: float = 2.0,
    invert: bool = False,
    noise_floor: float = 0.0,
) -> np.ndarray:
    """Automatic initial labels of a grey image.

    ``auto``/``otsu``: Gaussian smoothing then Otsu (multi-Otsu for K > 2);
    ``threshold``: 0.5 on the min-max normalised smoothed image (the paper's
    rule; K > 2 uses equally spaced thresholds).  Class indices increase with
    brightness (the brightest region is the foreground), reversed if ``invert``.

    ``noise_floor`` > 0 keeps the lowest threshold at least ``noise_floor``
    robust standard deviations of the smoothed background above its mode
    (below it with ``invert``).  On a sparse, dim, noisy image Otsu's
    threshold falls inside the background's noise and the initial
    foreground is mostly noise blobs, which no later step recovers from; a
    level the background's own noise reaches only rarely cannot.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_multiotsu, threshold_otsu

    g = np.asarray(grey, np.float32)
    if sigma > 0:
        g = ndi.gaussian_filter(g, sigma, mode="reflect")
    lo, hi = float(g.min()), float(g.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        raise DuetInputError("image is constant: there is nothing to segment")
    if method == "threshold":
        t = np.linspace(0, 1, n_classes + 1)[1:-1] * (hi - lo) + lo
        thresholds = np.asarray(t, np.float32)
    elif n_classes == 2:
        thresholds = np.asarray([threshold_otsu(g)], np.float32)
    else:
        try:
            thresholds = threshold_multiotsu(g, classes=n_classes)
        except ValueError as exc:
            raise DuetInputError(f"cannot initialise {n_classes} classes automatically: {exc}") \
                from None
    if noise_floor > 0:
        thresholds = _apply_noise_floor(g, thresholds, noise_floor, invert)
    labels = np.digitize(g, thresholds).astype(np.uint8)
    if invert:
        labels = (n_classes - 1 - labels).astype(np.uint8)
    return labels


def background_level(g: np.ndarray) -> tuple[float, float]:
    """Mode of ``g`` and the robust std of the values on the mode's darker side.

    The darker side of the histogram's main peak is (almost) background
    alone, so its spread measures the background's noise even when bright
    objects cover part of the image.
    """
    from scipy import ndimage as ndi

    v = np.asarray(g, np.float32).ravel()
    hist, edges = np.histogram(v, bins=256)
    smooth = ndi.gaussian_filter1d(hist.astype(np.float64), 2.0)
    mode = float(0.5 * (edges[np.argmax(smooth)] + edges[np.argmax(smooth) + 1]))
    below = mode - v[v < mode]
    spread = 1.4826 * float(np.median(below)) if below.size else 0.0
    return mode, spread


def _mostly_noise(g: np.ndarray, t: float, mode: float, spread: float) -> bool:
    """True when most pixels above ``t`` are what the background's noise alone puts there.

    With a Gaussian background N(mode, spread^2), a fraction
    ``Q((t - mode) / spread)`` of the image lies above ``t`` by noise alone;
    when that is more than half of what does lie above ``t``, the threshold
    cut the background's noise, not the image into two regions.
    """
    from scipy.special import ndtr

    above = float(np.mean(g > t))
    if above == 0.0 or not spread > 0:
        return False
    return float(ndtr(-(t - mode) / spread)) > _NOISE_SHARE * above


def _apply_noise_floor(g: np.ndarray, thresholds: np.ndarray, z: float,
                       invert: bool) -> np.ndarray:
    # One rule for both cases: a dark foreground is the bright foreground of -g, cut from
    # the background by the highest threshold instead of the lowest.
    sign, i = (-1.0, -1) if invert else (1.0, 0)
    h = sign * np.asarray(g, np.float32)
    t = np.array(thresholds, np.float32)
    cut = sign * float(t[i])
    mode, spread = background_level(h)
    if mode < cut and _mostly_noise(h, cut, mode, spread):  # the mode is background
        t[i] = sign * max(cut, mode + z * spread)
    return np.sort(t)
