"""A small 2D U-Net shared by the engines.

Plain convolutions + LeakyReLU, no normalisation layers: denoisers are trained
with small batches of crops, where batch statistics are noisy, and a network
without normalisation is exactly equivariant to intensity offsets of the input
(useful for residual denoising).  The network pads its input to a multiple of
``2**depth`` itself, so it accepts any image size; :func:`predict_2d` does the
same for numpy images via :func:`napari_duet.core.tiling.pad_to_multiple` and tiles
large images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..tiling import apply_tiled


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
    )


class UNet2D(nn.Module):
    """2D U-Net with configurable depth and width.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of input and output.
    width : int
        Feature channels at the first level; doubled at every down-sampling.
    depth : int
        Number of down-sampling steps (sizes are padded to ``2**depth``).
    residual : bool
        If True (and ``in_channels == out_channels``), predict ``x - net(x)``:
        the network learns the noise, which trains faster for denoising.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        width: int = 32,
        depth: int = 3,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if width < 1 or depth < 0:
            raise ValueError("width must be >= 1 and depth >= 0")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.width = width
        self.depth = depth
        self.residual = residual and in_channels == out_channels
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(_block(cin, c))
            cin = c
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for lvl in range(depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(chans[lvl], chans[lvl - 1], 2, stride=2))
            self.merge.append(_block(2 * chans[lvl - 1], chans[lvl - 1]))
        self.head = nn.Conv2d(chans[0], out_channels, 1)
        if self.residual:
            # Start as the identity: the first outputs are the input, not an
            # offset from random weights, and training only learns the noise.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be a multiple of this (the network pads itself)."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        xin = x
        if ph or pw:
            # Reflect needs pad < size; replicate covers tiny inputs.
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            xin = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)
        skips = []
        y = xin
        for i, block in enumerate(self.down):
            y = block(y)
            if i < self.depth:
                skips.append(y)
                y = F.max_pool2d(y, 2)
        for up, merge in zip(self.up, self.merge, strict=True):
            y = up(y)
            y = merge(torch.cat([y, skips.pop()], dim=1))
        y = self.head(y)
        if ph or pw:
            y = y[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        return x - y if self.residual else y

    def config(self) -> dict:
        """Constructor arguments, for model files."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "width": self.width,
            "depth": self.depth,
            "residual": self.residual,
        }


@torch.no_grad()
def predict_2d(
    net: nn.Module,
    image: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    tile: int = 512,
    overlap: int = 32,
) -> np.ndarray:
    """Apply ``net`` to a (C, Y, X) or (Y, X) float image, tiled for large images.

    Returns float32 of shape (out_channels, Y, X), or (Y, X) for a single channel
    2D input.
    """
    squeeze = image.ndim == 2
    img = image[None] if squeeze else image
    multiple = getattr(net, "multiple", 1)
    out_ch = getattr(net, "out_channels", img.shape[0])

    def run(patch: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))[None].to(device)
        return net(t)[0].float().cpu().numpy()

    out = apply_tiled(run, img, tile=tile, overlap=overlap, multiple=multiple,
                      out_channels=out_ch)
    return out[0] if squeeze and out_ch == 1 else out
