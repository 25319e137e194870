"""Noise2Fast (Lequyer et al., 2022): self-supervised denoising of one image, shared by the engines.

* :func:`noise2fast`: denoise a whole 2D image.
* :class:`Noise2FastTrainer`: the small CNN and its training on the pixels of
  a region (Self2Seg's region experts build on it).
* :mod:`._checkerboard`: the checkerboard phases and blind predictions.
"""

from ._checkerboard import blind_prediction, checkerboard_merge, checkerboard_split, even_crop
from ._denoise import noise2fast
from ._trainer import Noise2FastOutput, Noise2FastTrainer, inference_tile

__all__ = [
    "noise2fast",
    "Noise2FastTrainer",
    "Noise2FastOutput",
    "inference_tile",
    "blind_prediction",
    "checkerboard_split",
    "checkerboard_merge",
    "even_crop",
]
