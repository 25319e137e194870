"""Synthetic images with known ground truth, for sample data, tests and benchmarks.

Generated in code (nothing is downloaded), deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticNuclei:
    """A noisy nuclei image with its clean version and foreground mask."""

    noisy: np.ndarray  # uint8 (Y, X)
    clean: np.ndarray  # float32 (Y, X), 8-bit scale
    mask: np.ndarray  # uint8 (Y, X), 1 = nucleus
    noise_sigma: float


def synthetic_nuclei(
    shape: tuple[int, int] = (256, 256),
    *,
    n_nuclei: int | None = None,
    radius: tuple[float, float] = (9.0, 18.0),
    noise_sigma: float = 30.0,
    background: float = 30.0,
    foreground: tuple[float, float] = (120.0, 200.0),
    seed: int = 0,
) -> SyntheticNuclei:
    """Ellipsoidal nuclei with textured interiors on a dim background.

    Parameters
    ----------
    shape : (int, int)
        Image size.
    n_nuclei : int, optional
        Number of nuclei; by default about one per 2500 pixels.
    radius : (float, float)
        Range of the ellipse semi-axes in pixels.
    noise_sigma : float
        Standard deviation of additive Gaussian noise on the 8-bit scale.
    background, foreground : float, (float, float)
        Background level and range of nucleus brightness (8-bit scale).
    seed : int
        Seed of the generator.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    h, w = shape
    if n_nuclei is None:
        n_nuclei = max(1, int(h * w / 2500))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mask = np.zeros(shape, dtype=bool)
    clean = np.full(shape, background, dtype=np.float32)
    texture = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 2.0)
    texture /= texture.std() + 1e-6
    for _ in range(n_nuclei * 4):
        if n_nuclei <= 0:
            break
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(*radius, size=2)
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / a
        v = (-dx * np.sin(t) + dy * np.cos(t)) / b
        nucleus = u**2 + v**2 <= 1.0
        if not nucleus.any() or (nucleus & ndi.binary_dilation(mask, iterations=2)).any():
            continue  # keep nuclei apart so the mask is unambiguous
        level = rng.uniform(*foreground)
        clean[nucleus] = level * (1.0 + 0.12 * texture[nucleus])
        mask |= nucleus
        n_nuclei -= 1
    # Soft edges as in a real, slightly blurred acquisition.
    clean = ndi.gaussian_filter(clean, 1.0).astype(np.float32)
    noisy = clean + rng.normal(0.0, noise_sigma, size=shape).astype(np.float32)
    noisy = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return SyntheticNuclei(noisy, clean, mask.astype(np.uint8), float(noise_sigma))


TEXTURES = ("grating", "blobs", "fine", "coarse", "horizontal", "vertical")


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-12)


def texture(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A zero-mean, unit-std texture: ``grating`` (oriented stripes, wandering phase),
    ``blobs`` (isotropic, correlation length 2 px), ``fine``/``coarse`` (correlation
    lengths 0.8/3 px), ``horizontal``/``vertical`` (anisotropic filtered noise)."""
    from scipy import ndimage as ndi

    noise = rng.normal(size=shape)
    if kind == "grating":
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
        theta, period = rng.uniform(0, np.pi), rng.uniform(5, 8)
        phase = ndi.gaussian_filter(rng.normal(size=shape), 8) * 20
        return _standardise(np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta))
                                   / period + phase))
    sigmas = {"blobs": 2.0, "fine": 0.8, "coarse": 3.0, "horizontal": (0.7, 4.0),
              "vertical": (4.0, 0.7)}
    if kind not in sigmas:
        raise ValueError(f"unknown texture {kind!r}; choose from {', '.join(TEXTURES)}")
    return _standardise(ndi.gaussian_filter(noise, sigmas[kind]))


def two_textures(
    inside: str | np.ndarray, outside: str | np.ndarray, shape: tuple[int, int] = (128, 128),
    *, noise: float = 0.5, seed: int = 0, box: int = 30,
) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    """Two textures of equal mean and std in large smooth regions, plus Gaussian noise.

    ``inside`` and ``outside`` are names of :func:`texture` or grey images
    of at least ``shape`` (e.g. photographs of textures; a random crop is
    used, standardised to zero mean and unit std).  Returns ``(image, mask,
    fg_box, bg_box)``: ``mask`` is True where ``inside`` is, each box (y0,
    x0, y1, x1) of ``box`` px lies inside one region.  ``noise`` is the
    noise std relative to the textures' std.  Mean and variance carry no
    information, so intensity-based (constant-expert) Chan-Vese is near
    chance.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.normal(size=shape), min(shape) / 5, mode="wrap")
    mask = field > np.quantile(field, rng.uniform(0.35, 0.65))
    def pick(t) -> np.ndarray:
        if isinstance(t, str):
            return texture(t, shape, rng)
        t = np.asarray(t, np.float64)
        if t.shape[0] < shape[0] or t.shape[1] < shape[1]:
            raise ValueError(f"texture image {t.shape} is smaller than {shape}")
        y0 = int(rng.integers(t.shape[0] - shape[0] + 1))
        x0 = int(rng.integers(t.shape[1] - shape[1] + 1))
        return _standardise(t[y0:y0 + shape[0], x0:x0 + shape[1]])

    clean = np.where(mask, pick(inside), pick(outside))
    img = 100.0 + 20.0 * (clean + noise * rng.normal(size=shape))

    def box_in(region: np.ndarray) -> tuple[int, int, int, int]:
        core = ndi.binary_erosion(region, iterations=box // 2 + 1, border_value=0)
        if not core.any():
            raise ValueError("region too small for the seed box; use a larger shape")
        ys, xs = np.nonzero(core)
        i = int(rng.integers(ys.size))
        y0, x0 = int(ys[i]) - box // 2, int(xs[i]) - box // 2
        return (y0, x0, y0 + box, x0 + box)

    return img.astype(np.float32), mask, box_in(mask), box_in(~mask)


def random_ellipse(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator, r_mean: float,
                   size: tuple[float, float] = (0.6, 1.4), aspect: tuple[float, float] = (0.6, 1.0)
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A randomly placed, sized and oriented ellipse on the grid ``(yy, xx)``.

    Returns its mask and the squared normalised radius ``rho2`` (0 at the
    centre, 1 on the outline) for intensity profiles.
    """
    h, w = yy.shape
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    a = r_mean * rng.uniform(*size)
    b = a * rng.uniform(*aspect)
    t = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dy * np.cos(t) + dx * np.sin(t)) / a
    v = (-dy * np.sin(t) + dx * np.cos(t)) / b
    rho2 = u * u + v * v
    return rho2 <= 1, rho2


def sparse_dim_nuclei(seed: int = 0, shape: tuple[int, int] = (192, 256)
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Small (radius 3-7 px), dim (25-50 grey levels) and sparse (3-12 %) nuclei.

    The hard case of noisy nuclei images: at high noise Otsu's threshold of a
    smoothed image falls inside the background's noise.  Returns the clean
    8-bit-scale image (float32) and its foreground mask.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), bool)
    clean = np.zeros((h, w), np.float32)
    target, r_mean = rng.uniform(0.03, 0.12), rng.uniform(3, 7)
    bg, contrast = rng.uniform(5, 30), rng.uniform(25, 50)
    for _ in range(2000):
        if mask.mean() >= target:
            break
        e, _ = random_ellipse(yy, xx, rng, r_mean, (0.7, 1.3), (0.7, 1.0))
        if (e & mask).any():
            continue
        clean = np.where(e, contrast * rng.uniform(0.6, 1.2), clean)
        mask |= e
    img = ndi.gaussian_filter(bg + clean, 0.7)
    return np.clip(img, 0, 255).astype(np.float32), mask


# ----------------------------------------------------------------- NS-N2N volume
#: Voxel size (z, y, x) of the NS-N2N sample: slices twice as far apart as pixels.
NSN2N_SCALE = (2.0, 1.0, 1.0)
# Small enough that the automatic CPU training budget of NS-N2N stays under a minute
# (it grows with the square root of the volume: 52 s for 16 x 96 x 96).
NSN2N_SHAPE = (16, 96, 96)
NSN2N_NOISE = 0.12  # std of the noise, on a [0, 1] signal


def synthetic_volume(shape: tuple[int, int, int] = NSN2N_SHAPE, *, noise: float = NSN2N_NOISE,
                     seed: int = 11):
    """A noisy 3D stack of cells and its clean version, both float32 in about [0, 1].

    Ellipsoidal nuclei (flattened along z, as in an anisotropic stack) with a
    textured interior and a brighter rim, over a dim smooth background; the
    noise is Gaussian, correlated within each slice (about 1 px) and
    independent between slices, which is the noise NS-N2N removes and
    pixel-wise blind-spot methods cannot.  Returns ``(noisy, clean)``.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    clean = np.zeros(shape, np.float32)
    anis = NSN2N_SCALE[0] / NSN2N_SCALE[1]
    for _ in range(max(4, ny * nx // 300)):
        cz, cy, cx = rng.uniform(0, nz), rng.uniform(0, ny), rng.uniform(0, nx)
        ry, rx = rng.uniform(7, 14, 2)
        rz = rng.uniform(6, 12) / anis
        z0, z1 = max(0, int(cz - rz) - 1), min(nz, int(cz + rz) + 2)
        y0, y1 = max(0, int(cy - ry) - 1), min(ny, int(cy + ry) + 2)
        x0, x1 = max(0, int(cx - rx) - 1), min(nx, int(cx + rx) + 2)
        if z0 >= z1 or y0 >= y1 or x0 >= x1:
            continue
        zz, yy, xx = np.ogrid[z0:z1, y0:y1, x0:x1]
        r = np.sqrt(((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        inside = r <= 1
        value = rng.uniform(0.45, 0.8) * (1 + 0.35 * (r > 0.8))  # brighter nuclear rim
        box = clean[z0:z1, y0:y1, x0:x1]
        box[inside] = np.maximum(box[inside], np.broadcast_to(value, r.shape)[inside])
    texture = ndi.gaussian_filter(rng.standard_normal(shape), (0.7, 1.5, 1.5))
    texture /= texture.std()
    clean *= 1 + 0.15 * texture
    background = ndi.gaussian_filter(rng.random(shape), (4, 16, 16))
    background = 0.08 + 0.1 * (background - background.min()) / np.ptp(background)
    clean = ndi.gaussian_filter(np.maximum(clean, background), (0.5, 0.8, 0.8))
    clean = np.clip(clean / clean.max(), 0, 1).astype(np.float32)
    n = ndi.gaussian_filter(rng.standard_normal(shape), (0, 1.0, 1.0))
    n /= n.std()
    noisy = (clean + noise * n).astype(np.float32)
    return noisy, clean
