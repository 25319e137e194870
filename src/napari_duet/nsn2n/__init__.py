"""Neighboring Slice Noise2Noise (NS-N2N): self-supervised denoising of one volume.

Neighbouring slices of a stack (or frames of a time-lapse) show nearly the same
structure with independent noise, so each is a Noise2Noise target for the
other wherever they match.  See ``docs/nsn2n.md`` for the algorithm, the
choices made where re-implementations disagree, and measured results.

Typical use::

    from napari_duet.nsn2n import NSN2NConfig, train
    result = train(volume, axis=0, config=NSN2NConfig())   # time budget by device
    result = train(volume, axis=0, config=NSN2NConfig(iterations=2000))  # fixed steps
    result.denoised, result.uncertainty, result.matched_fraction
    result.model.save("stack.duet")
"""

from ._chunked import SlabProgress, iter_denoise_chunked
from ._config import NSN2NConfig
from ._diagnostics import (
    matched_fraction,
    noise_correlation,
    noise_model,
    pair_diagnostics,
    recommend_method,
    slice_similarity,
    summarize_pairs,
    weight_map,
)
from ._model import DenoiseProgress, DenoiseResult, NSN2NModel
from ._noise import NoiseModel, fit_noise
from ._store import StoreResult, iter_denoise_to_zarr
from ._train import NSN2NProgress, NSN2NResult, iter_train, resolve_budget, train

__all__ = [
    "DenoiseProgress",
    "DenoiseResult",
    "NSN2NConfig",
    "NSN2NModel",
    "NSN2NProgress",
    "NSN2NResult",
    "NoiseModel",
    "SlabProgress",
    "StoreResult",
    "iter_denoise_chunked",
    "iter_denoise_to_zarr",
    "iter_train",
    "fit_noise",
    "matched_fraction",
    "noise_correlation",
    "noise_model",
    "pair_diagnostics",
    "recommend_method",
    "resolve_budget",
    "slice_similarity",
    "summarize_pairs",
    "train",
    "weight_map",
]
