"""2.5D NS-N2N: neighbouring slices as *input* too, without leaking the target's noise.

The paper's network sees one slice x_i and learns to predict a neighbour.  A
network that also sees the neighbours would denoise far better (a volume is
smoother along z than noise), but if a slice is both input and target the
network learns to copy its noise.  The slices are therefore split by parity
around the slice being denoised, two ways (modes), and one network learns both:

* mode ``"self"``: input x_i, x_(i-2), x_(i+2); target (x_(i-1) + x_(i+1)) / 2,
  the mean of the two neighbours, on the pixels where both match x_i (W maps).
  Inputs and target never share a slice, so the target's noise is independent
  of the input: a Noise2Noise pair.  The target differs from the clean slice
  by a second-order (curvature) term only, which the mask keeps small.
* mode ``"gap"``: input x_(i-2), x_(i-1), x_(i+1), x_(i+2) (x_i left out);
  target x_i, every pixel.  This is a Noise2Self split along z: unbiased,
  since the target *is* slice i, but blind to what only slice i shows.

The network gets five slice channels (offsets -2..2; a left-out slice is zero)
plus a mode channel, and outputs a correction added to a base image (x_i in
mode ``self``, the mean of x_(i-1) and x_(i+1) in mode ``gap``).  At inference
both modes run and their predictions are averaged: their errors come from
different slices' noise, so the mean beats either one.  Where slices do not
match (motion, a structure starting), the ``gap`` prediction cannot know
slice i, so there the output falls back to the ``self`` prediction.

Edges: a neighbour outside the stack is replaced by its mirror *about slice i*
(offset -d by +d), which keeps it in the same parity class, so no edge rule
can put the target into the input.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.networks.unet import UNet2D

OFFSETS = (-2, -1, 0, 1, 2)
SELF_IN = (0,)
GAP_IN = (-2, -1, 1, 2)
N_IN = len(OFFSETS) + 1  # + mode channel
MODES = ("self", "gap")


class CorrectionNet(nn.Module):
    """A U-Net whose output is added to a base image taken from its input.

    The last layer starts at zero, so training starts at the base image, like a
    residual denoiser.  Subclasses name the architecture and the base.
    """

    arch = ""
    n_in = 1

    def __init__(self, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.unet = UNet2D(self.n_in, 1, width=width, depth=depth, residual=False)
        nn.init.zeros_(self.unet.head.weight)
        nn.init.zeros_(self.unet.head.bias)

    @property
    def multiple(self) -> int:
        return self.unet.multiple

    @property
    def out_channels(self) -> int:
        return 1

    def base(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.unet(x)

    def config(self) -> dict:
        return {"arch": self.arch, "width": self.unet.width, "depth": self.unet.depth}


class ContextNet(CorrectionNet):
    """U-Net on (5 slice channels + mode channel) -> base + correction.

    ``x``: (B, 6, H, W) built by :func:`context_input`; the base is x_i in mode
    ``self``, the mean of x_(i-1) and x_(i+1) in mode ``gap``.
    """

    arch = "nsn2n-context"
    n_in = N_IN

    def base(self, x: torch.Tensor) -> torch.Tensor:
        mode = x[:, 5:6]  # 1: self, 0: gap
        base_self = x[:, 2:3]
        base_gap = 0.5 * (x[:, 1:2] + x[:, 3:4])
        return mode * base_self + (1 - mode) * base_gap


def neighbour_index(i: int, d: int, n_z: int, allowed: tuple[int, ...]) -> int | None:
    """Index of the slice at offset ``d`` from ``i``, mirrored about ``i`` at the edges.

    ``allowed`` are the offsets the mode may read; the fallback never leaves
    them (a missing +-2 falls back to +-2 mirrored, then to the same-side
    allowed offset nearest to i).  None if nothing allowed exists.
    """
    for dd in (d, -d):
        if dd in allowed and 0 <= i + dd < n_z:
            return i + dd
    sign = 1 if d > 0 else -1
    for dd in sorted((a for a in allowed if a != 0), key=abs):
        for s in (sign, -sign):
            if (dd > 0) == (s > 0) and 0 <= i + dd < n_z:
                return i + dd
    return i if 0 in allowed else None


def context_input(stack: np.ndarray, i: int, mode: str) -> np.ndarray:
    """(6, Y, X) float32 input for slice ``i`` of a (Z, Y, X) stack in ``mode``."""
    n_z = stack.shape[0]
    allowed = SELF_IN if mode == "self" else GAP_IN
    out = np.zeros((N_IN, *stack.shape[1:]), np.float32)
    for c, d in enumerate(OFFSETS):
        if d not in allowed:
            continue
        j = neighbour_index(i, d, n_z, allowed)
        if j is not None:
            out[c] = stack[j]
    out[5] = 1.0 if mode == "self" else 0.0
    return out


def context_target(
    stack: np.ndarray, w: np.ndarray | None, i: int, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Target and loss weights for slice ``i``.

    ``w`` is the (Z-1, Y, X) pair weight map (W[k] for the pair k, k+1), or
    None for all ones.  Mode ``self``: mean of the existing neighbours,
    weighted where every used pair matches; mode ``gap``: x_i, weight 1.
    """
    n_z = stack.shape[0]
    if mode == "gap":
        return stack[i], np.ones(stack.shape[1:], np.float32)
    nbs = [j for j in (i - 1, i + 1) if 0 <= j < n_z]
    target = np.mean([stack[j] for j in nbs], axis=0).astype(np.float32)
    weight = np.ones(stack.shape[1:], np.float32)
    if w is not None:
        for j in nbs:
            weight = weight * w[min(i, j)]
    return target, weight


def random_crop(rng: np.random.Generator, stacks: np.ndarray, centres: np.ndarray, c: int
                ) -> tuple[int, int, tuple[slice, slice]]:
    """A random (stack, z) row of ``centres`` and a random ``c`` x ``c`` window of the plane."""
    _, _, h, wd = stacks.shape
    s, z = centres[rng.integers(len(centres))]
    y0 = int(rng.integers(0, h - c + 1))
    x0 = int(rng.integers(0, wd - c + 1))
    return int(s), int(z), (slice(y0, y0 + c), slice(x0, x0 + c))


def random_dihedral(rng: np.random.Generator, arrs: list[np.ndarray]) -> list[np.ndarray]:
    """The same random flip and 90-degree rotation of the last two axes of each array."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    if flip:
        arrs = [a[..., ::-1] for a in arrs]
    return [np.rot90(a, k, axes=(-2, -1)) for a in arrs]


def empty_batch(stacks: np.ndarray, batch: int, crop: int, n_in: int
                ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """The crop side ``c`` and empty inputs (B, n_in, c, c), targets and weights (B, 1, c, c)."""
    _, _, h, wd = stacks.shape
    c = min(crop, h, wd)  # square: rotations need it
    tgt = np.empty((batch, 1, c, c), np.float32)
    return c, np.empty((batch, n_in, c, c), np.float32), tgt, np.empty_like(tgt)


def sample_context_batch(
    rng: np.random.Generator,
    stacks: np.ndarray,
    w: np.ndarray,
    centres: np.ndarray,
    batch: int,
    crop: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random centre slices, modes, crops, flips and rotations.

    ``centres`` are (stack, z) rows.  Returns inputs (B, 6, c, c), targets and
    weights (B, 1, c, c).
    """
    c, xin, tgt, wgt = empty_batch(stacks, batch, crop, N_IN)
    for b in range(batch):
        mode = MODES[b % 2]  # half of each batch per mode
        s, z, sl = random_crop(rng, stacks, centres, c)
        stack = stacks[s][(slice(None), *sl)]
        inp = context_input(stack, z, mode)
        t, m = context_target(stack, w[s][(slice(None), *sl)], z, mode)
        if rng.random() < 0.5:  # z flip: the stack read backwards is as valid
            inp[:5] = inp[4::-1]
        xin[b], tgt[b], wgt[b] = random_dihedral(rng, [inp, t[None], m[None]])
    return xin, tgt, wgt


def context_loss(
    net: nn.Module, xin: torch.Tensor, tgt: torch.Tensor, wgt: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted MSE, averaged per mode (each mode counts half)."""
    from ._losses import masked_mean

    y = net(xin)
    err = (y - tgt) ** 2
    is_self = xin[:, 5:6, :1, :1]
    l_self = masked_mean(err, wgt * is_self)
    l_gap = masked_mean(err, wgt * (1 - is_self))
    total = 0.5 * (l_self + l_gap)
    return total, {"total": total.detach(), "recon": total.detach(),
                   "self": l_self.detach(), "gap": l_gap.detach()}


def slice_match(w: np.ndarray | None, i: int, n_z: int, shape) -> np.ndarray:
    """Where slice i matches both neighbours (product of the pair maps), in [0, 1]."""
    m = np.ones(shape, np.float32)
    if w is None:
        return m
    for j in (i - 1, i + 1):
        if 0 <= j < n_z:
            m = m * w[min(i, j)]
    return m
