"""denoiSplit's MMSE as one torch module, for bioimage.io packages.

At export, the packaged architecture file is ``_lvae.py`` followed by this
file, less the two import lines marked ``# bmz: drop`` (the network is then
defined in the same file, and nothing imports napari-duet).

:class:`DenoiSplitMMSE` maps a normalised (B, 1, Y, X) image to the mean of
``samples`` posterior samples of each structure, (B, C, Y, X), normalised:
the bioimage.io pre/post-processing (``scale_linear``) applies the model's
fixed input and per-channel output normalisation.  The latents are drawn
from torch's generator seeded with ``seed`` for every image, in chunks of
``batch`` samples, which is how napari-duet's predictor draws them for one
untiled frame with ``batch_size=batch`` (so the two agree on a CPU).
"""

from __future__ import annotations

import torch
from torch import nn

from ._lvae import LadderVAE  # bmz: drop


class _Architecture:
    """The fields of napari-duet's ``SplitConfig`` that the ladder VAE reads."""

    def __init__(self, **fields) -> None:
        self.__dict__.update(fields)

    @property
    def context_count(self) -> int:
        return self.multiscale_count - 1

    @property
    def multiple(self) -> int:
        return 2 ** (self.n_levels + (1 if self.multiscale_count > 1 else 0))


class DenoiSplitMMSE(nn.Module):
    """Normalised (B, 1, Y, X) -> MMSE (B, C, Y, X) of ``samples`` posterior samples.

    Y and X must be multiples of ``2**n_levels``.  Keyword arguments other
    than ``samples``, ``batch``, ``seed`` and ``patch_size`` are the
    network's architecture (napari-duet's ``SplitConfig`` fields).
    """

    def __init__(self, samples: int = 16, batch: int = 4, seed: int = 0, patch_size: int = 64,
                 **architecture) -> None:
        super().__init__()
        self.samples, self.batch, self.seed = int(samples), int(batch), int(seed)
        self.net = LadderVAE(_Architecture(**architecture), patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net.n_channels
        outs = []
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        for image in x.float():
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                parts = []
                for start in range(0, self.samples, self.batch):
                    k = min(self.batch, self.samples - start)
                    out, _ = self.net(image[None].expand(k, -1, -1, -1), compute_kl=False,
                                      sample=True)
                    parts.append(out[:, :n].float())
            outs.append(torch.cat(parts).mean(0))
        return torch.stack(outs)
