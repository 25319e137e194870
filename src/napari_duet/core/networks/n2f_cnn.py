"""A small fully convolutional denoiser for Noise2Fast-style training.

Plain 3x3 convolutions with reflect padding and ReLU, linear output, no
down-sampling and no normalisation: small (about 10k parameters at width 16,
depth 5), so it trains in a few hundred steps on a CPU and does not have the
capacity to memorise a single image's noise.  The receptive field is
``2 * depth + 1`` pixels.  Used by the Self2Seg region experts and by
:func:`napari_duet.core.n2f.noise2fast`.
"""

from __future__ import annotations

import torch
from torch import nn


class N2FNet(nn.Module):
    """Stack of ``depth`` 3x3 convolutions (reflect padding), ReLU between them.

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels (1 for grey, 3 for RGB).
    width : int
        Feature channels of the hidden layers.
    depth : int
        Number of convolutions (>= 2).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 16,
                 depth: int = 5):
        super().__init__()
        if depth < 2:
            raise ValueError("depth must be >= 2")
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(depth - 1):
            layers += [nn.Conv2d(cin, width, 3, padding=1, padding_mode="reflect"),
                       nn.ReLU(inplace=True)]
            cin = width
        layers.append(nn.Conv2d(cin, out_channels, 3, padding=1, padding_mode="reflect"))
        self.body = nn.Sequential(*layers)

    @property
    def halo(self) -> int:
        """Pixels from a border within which that border's padding changes the output.

        Each 3x3 convolution (padding 1) reaches one pixel further, so an
        output pixel at least ``depth`` pixels from a tile's edge equals the
        one computed on the whole image: tiles that overlap by this much and
        drop it reproduce whole-image inference exactly.
        """
        return sum(m.padding[0] * m.dilation[0] for m in self.body if isinstance(m, nn.Conv2d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
