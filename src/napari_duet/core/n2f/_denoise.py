"""Whole-image Noise2Fast denoising (Lequyer et al., 2022), shared by the engines.

A small CNN (:class:`napari_duet.core.networks.n2f_cnn.N2FNet`) learns to predict
one checkerboard phase of the image from the other; applied to the whole
image it denoises without clean targets.  Trained on batches of random crops,
so the cost per step does not depend on the image size; early stopping on a
fixed validation batch; the output is the mean of the last predictions.
"""

from __future__ import annotations

import numpy as np

from ..errors import DuetInputError
from ..intensity import as_float_image, fit_normalizer

__all__ = ["noise2fast"]


def noise2fast(
    image2d,
    *,
    steps: int = 300,
    device="auto",
    seed: int = 0,
    width: int = 16,
    depth: int = 5,
    lr: float = 1e-3,
    batch_size: int = 8,
    crop: int = 40,
    patience: int = 100,
    n_average: int = 3,
    threads: int | None = None,
) -> np.ndarray:
    """Denoise one 2D image (grey (Y, X) or channels-last (Y, X, C)) with Noise2Fast.

    Parameters
    ----------
    image2d : array
        Any integer or float dtype.
    steps : int
        Maximum Adam steps (early stopping may end sooner).
    device : str or torch.device
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    seed : int
        Seed of weights and crop sampling (deterministic on the CPU).
    threads : int, optional
        Torch CPU threads for this call (restored afterwards); None keeps
        torch's setting.  On a busy machine 1 thread is often fastest.

    Returns
    -------
    ndarray float32, same shape as the input, in the input's intensity scale.
    """
    import torch

    from ..devices import resolve_device
    from ._trainer import Noise2FastTrainer

    x = as_float_image(image2d, name="image")
    if x.ndim == 2:
        chw = x[None]
    elif x.ndim == 3 and x.shape[-1] <= 4:
        chw = np.moveaxis(x, -1, 0)
    else:
        raise DuetInputError(f"noise2fast needs a 2D image (Y, X) or (Y, X, C), got {x.shape}")
    if min(chw.shape[-2:]) < 4:
        raise DuetInputError(f"image {chw.shape[-2:]} is too small for Noise2Fast")
    if steps < 1:
        raise DuetInputError(f"steps must be >= 1, got {steps}")
    norm = fit_normalizer(chw, mode="percentile", low=0.1, high=99.9)
    f = norm.forward(chw)
    dev = resolve_device(device)
    expert = Noise2FastTrainer(f.shape[0], width=width, depth=depth, lr=lr,
                               batch_size=batch_size, crop=crop, patience=patience,
                               n_average=n_average, device=dev, seed=seed)
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        with torch.random.fork_rng(devices=[]):
            out = expert.fit(f, np.ones(f.shape[-2:], bool), steps=steps)
    finally:
        torch.set_num_threads(old_threads)
    den = norm.inverse(out.full)
    return (den[0] if x.ndim == 2 else np.moveaxis(den, 0, -1)).astype(np.float32)
