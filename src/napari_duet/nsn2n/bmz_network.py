"""NS-N2N volume denoiser as one torch module, for bioimage.io packages.

This file is copied into every NS-N2N bioimage.io package that napari-duet
exports (``duet export-bmz``) as the architecture source, with the import
lines marked ``# bmz: drop`` replaced by the source of napari-duet's U-Net
(``_block`` and ``UNet2D`` of :mod:`napari_duet.core.networks.unet`), of its
Wiener stage (``dct_basis`` and ``dct_wiener`` of :mod:`napari_duet.core.wiener`) and
of the slice choice at the volume's ends (``neighbour_index`` of
:mod:`napari_duet.nsn2n._context`), so the packaged file imports nothing but torch:
the package runs without napari-duet (in ``bioimageio.core``, deepImageJ, ilastik, ...).

:class:`NSN2NDenoiser` takes raw (B, Z, Y, X) stacks and returns the denoised
stacks in the same intensity units.  It repeats napari-duet's predictor
(``NSN2NModel.predict``) step by step, in torch:

1. per stack, percentile normalisation (0.1 / 99.9 % to 0 / 1), fitted to the
   stack itself, and its inverse at the end: the normalisation depends on the
   data and its inverse is needed afterwards, which bioimage.io's pre/post-
   processing operators cannot express, so it lives here;
2. for the 2.5D network (``arch="nsn2n-context"``): guide images (Gaussian,
   then 5x5 median, SciPy's ``reflect`` boundary), the matched-region maps
   between neighbouring slices with the automatic threshold, both parity modes
   (``self`` and ``gap``) and their mix;
   for the blind-spot network (``arch="nsn2n-blind"``): each phase of a 2 x 2
   pixel grid hidden once (replaced by the mean of its 4 direct neighbours, a
   mask channel, the neighbouring slices x(i-2) .. x(i+2) without x(i)), each
   pixel taken from the pass that hid it (``mu``), then blended with the noisy
   slice as ``mu + k (x - mu)``, ``k`` from the slice's noise level (Immerkaer),
   and, with ``wiener``, the second stage: the slice Wiener-filtered in DCT
   windows with that estimate as the pilot (``dct_wiener``);
3. the 8 flips/rotations averaged (test-time augmentation) when ``tta`` (for the
   blind-spot network: averaged before the blend).

Unlike napari-duet it does not tile planes larger than the model's tile size:
each plane is processed whole (the result differs from a tiled run only near
tile seams).  The parameter names of :class:`UNet2D`, :class:`ContextNet` and
:class:`BlindNet` are those of napari-duet's networks, under the prefix ``net.``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..core.blockmatch import guided_wiener, light_mu2, two_step  # bmz: drop
from ..core.networks.unet import UNet2D  # bmz: drop
from ..core.noiselevel import white_noise_sigma  # bmz: drop
from ..core.wiener import dct_wiener, dct_wiener_stack, noise_spectrum  # bmz: drop
from ._context import neighbour_index  # bmz: drop

NORM_LOW, NORM_HIGH = 0.1, 99.9
CONTEXT_ARCH = "nsn2n-context"
BLIND_ARCH = "nsn2n-blind"
UNET_ARCH = "unet2d"
OFFSETS = (-2, -1, 0, 1, 2)
SELF_IN = (0,)
GAP_IN = (-2, -1, 1, 2)
N_IN = len(OFFSETS) + 1  # five slice channels + the mode channel
TRANSFORMS = [(k, f) for f in (False, True) for k in range(4)]
# Blind-spot network: one phase of a GRID x GRID pixel grid hidden per pass.
GRID = 2
BLIND_IN = 2 + len(GAP_IN)  # filled x_i, mask, neighbours x(i-2), x(i-1), x(i+1), x(i+2)


# ---------------------------------------------------------------- networks
class ContextNet(nn.Module):
    """2.5D network: (B, 6, H, W) -> base image + U-Net correction."""

    def __init__(self, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.unet = UNet2D(N_IN, 1, width=width, depth=depth, residual=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = x[:, 5:6]  # 1: self, 0: gap
        base_gap = 0.5 * (x[:, 1:2] + x[:, 3:4])
        return mode * x[:, 2:3] + (1 - mode) * base_gap + self.unet(x)


class BlindNet(nn.Module):
    """Blind-spot network: (B, 6, H, W) -> filled x_i + U-Net correction."""

    def __init__(self, width: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.unet = UNet2D(BLIND_IN, 1, width=width, depth=depth, residual=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0:1] + self.unet(x)


# ---------------------------------------------------------------- helpers
def quantile(values: torch.Tensor, q: float) -> float:
    """NumPy's default (linear) quantile of a float32 tensor; no size limit."""
    flat = values.reshape(-1)
    pos = q * (flat.numel() - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, flat.numel() - 1)
    v_lo = torch.kthvalue(flat, lo + 1).values.double()
    v_hi = torch.kthvalue(flat, hi + 1).values.double()
    return float((v_lo + (v_hi - v_lo) * (pos - lo)).float())


def _symmetric_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices of SciPy's ``reflect`` extension (d c b a | a b c d | d c b a)."""
    i = torch.arange(-before, n + after, device=device)
    j = torch.remainder(i, 2 * n)
    return torch.where(j >= n, 2 * n - 1 - j, j)


def _correlate1d(img: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Correlate a (Y, X) image with a 1D kernel along ``dim``, reflect boundary, float64."""
    r = (kernel.numel() - 1) // 2
    x = img.double().movedim(dim, -1)
    n = x.shape[-1]
    x = x.index_select(-1, _symmetric_index(n, r, r, x.device))
    y = F.conv1d(x.reshape(-1, 1, n + 2 * r), kernel.view(1, 1, -1))
    # SciPy writes each pass into the float32 output: round the same way.
    return y.reshape(*x.shape[:-1], n).float().movedim(-1, dim)


def gaussian_guide(img: torch.Tensor, sigma: float, median_size: int) -> torch.Tensor:
    """``median(gaussian(img))`` of one (Y, X) slice, as SciPy's ndimage computes it."""
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=img.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    low = _correlate1d(_correlate1d(img, kernel, 0), kernel, 1)
    if median_size > 1:
        r = median_size // 2
        h, w = low.shape
        pad = low.index_select(0, _symmetric_index(h, r, median_size - 1 - r, low.device))
        pad = pad.index_select(1, _symmetric_index(w, r, median_size - 1 - r, low.device))
        patches = pad.unfold(0, median_size, 1).unfold(1, median_size, 1)
        low = patches.reshape(h, w, -1).median(dim=-1).values
    return low


def context_input(stack: torch.Tensor, i: int, mode: str) -> torch.Tensor:
    """(6, Y, X) input of slice ``i`` of a (Z, Y, X) stack in ``mode`` (``self``/``gap``)."""
    n_z = stack.shape[0]
    allowed = SELF_IN if mode == "self" else GAP_IN
    out = stack.new_zeros((N_IN, *stack.shape[1:]))
    for c, d in enumerate(OFFSETS):
        if d in allowed:
            j = neighbour_index(i, d, n_z, allowed)
            if j is not None:
                out[c] = stack[j]
    out[5] = 1.0 if mode == "self" else 0.0
    return out


def phase_mask(shape: tuple[int, int], phase: int, device) -> torch.Tensor:
    """Boolean (Y, X) mask of one phase (0 .. GRID**2 - 1) of the pixel grid."""
    py, px = divmod(int(phase), GRID)
    m = torch.zeros(shape, dtype=torch.bool, device=device)
    m[py::GRID, px::GRID] = True
    return m


def _mirror_index(n: int, device) -> torch.Tensor:
    """Indices of NumPy's ``reflect`` padding by 1 (b | a b c d | c): no edge repeated."""
    i = torch.arange(-1, n + 1, device=device).abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def fill_hidden(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``img`` with the ``mask`` pixels replaced by the mean of their 4 direct neighbours.

    Borders mirrored without repeating the edge pixel, so no filled value
    depends on a hidden one; a plane 1 pixel wide gets zeros there.
    """
    h, w = img.shape
    if min(h, w) < 2:
        return torch.where(mask, torch.zeros_like(img), img)
    p = img.index_select(0, _mirror_index(h, img.device))
    p = p.index_select(1, _mirror_index(w, img.device))
    # Same order of float32 operations as napari-duet (NumPy).
    nb = 0.25 * (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:])
    return torch.where(mask, nb, img)


def blind_input(stack: torch.Tensor, i: int, mask: torch.Tensor) -> torch.Tensor:
    """(6, Y, X) input of slice ``i`` of a (Z, Y, X) stack with the ``mask`` pixels hidden."""
    out = stack.new_zeros((BLIND_IN, *stack.shape[1:]))
    out[0] = fill_hidden(stack[i], mask)
    out[1] = mask.to(stack.dtype)
    for c, d in enumerate(GAP_IN):
        j = neighbour_index(i, d, stack.shape[0], GAP_IN)  # never i: no 0 offset
        if j is not None:
            out[2 + c] = stack[j]
    return out


def noise_sigma(img: torch.Tensor) -> float:
    """Noise standard deviation of a (Y, X) slice (Immerkaer 1996), as napari-duet computes it.

    Only the interior of the Laplacian-difference image is used, so the border
    rule does not matter; SciPy convolves in float64 and stores float32.
    """
    h, w = img.shape
    if h < 3 or w < 3:
        return 1e-4
    kernel = torch.tensor([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=torch.float64,
                          device=img.device)
    r = F.conv2d(img.double()[None, None], kernel[None, None])[0, 0].float()
    return float(max(math.sqrt(math.pi / 2) * float(r.abs().mean()) / 6.0, 1e-4))


def posterior(x: torch.Tensor, mu: torch.Tensor, sigma: float) -> torch.Tensor:
    """``mu + k (x - mu)``, ``k = clip(1 - sigma^2 / mean((x - mu)^2), 0, 1)``."""
    r = x - mu
    ms = float((r * r).mean())
    if ms <= 0:
        return mu
    k = min(max(1.0 - sigma ** 2 / ms, 0.0), 1.0)
    return mu + k * r


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1))


def _undihedral(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    y = torch.rot90(y, -k, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if flip else y


# ---------------------------------------------------------------- the module
class NSN2NDenoiser(nn.Module):
    """Raw (B, Z, Y, X) stacks -> denoised stacks, same shape and units.

    Parameters
    ----------
    arch : str
        ``"nsn2n-context"`` (2.5D network), ``"nsn2n-blind"`` (blind-spot 2.5D
        network) or ``"unet2d"`` (the paper's 2D network).
    width, depth : int
        U-Net size.
    in_channels, out_channels : int
        Channels of the 2D network (``unet2d`` only).
    residual : bool
        Residual 2D network (``unet2d`` only).
    guide_sigma : float
        Gaussian sigma of the guide images (2.5D network only).
    median_size : int
        Median filter size of the guide images.
    tau : float or None
        Matching threshold; None: from the data (robust spread times ``tau_factor``).
    tau_factor : float
        Factor of the automatic threshold.
    tta : bool
        Average the 8 flips/rotations.

    Raises
    ------
    ValueError
        For an unknown ``arch``.
    """

    def __init__(self, arch: str = CONTEXT_ARCH, width: int = 32, depth: int = 2,
                 in_channels: int = 1, out_channels: int = 1, residual: bool = True,
                 guide_sigma: float = 2.0, median_size: int = 5, tau: float | None = None,
                 tau_factor: float = 3.0, tta: bool = True, wiener: bool | str = False,
                 mix_weights: dict | None = None) -> None:
        super().__init__()
        if arch not in (CONTEXT_ARCH, BLIND_ARCH, UNET_ARCH):
            raise ValueError(f"unknown arch {arch!r}")
        self.context = arch == CONTEXT_ARCH
        self.blind = arch == BLIND_ARCH
        if self.context:
            self.net = ContextNet(width=width, depth=depth)
        elif self.blind:
            self.net = BlindNet(width=width, depth=depth)
        else:
            self.net = UNet2D(in_channels, out_channels, width=width, depth=depth,
                              residual=residual)
        self.guide_sigma = float(guide_sigma)
        self.median_size = int(median_size)
        self.tau = tau
        self.tau_factor = float(tau_factor)
        self.tta = bool(tta)
        # The second stage: "off", "2d", "3d", "3d2", "bm", "bmht", "bm-light",
        # "bmht-light", "bmw" or "mix", the weighted sum (``mix_weights``) of the
        # others but bmw (True/False: "2d"/"off", the values of packages written
        # before the 3D stages).
        self.wiener = {True: "2d", False: "off"}.get(wiener, wiener) if isinstance(
            wiener, bool) else str(wiener)
        if self.wiener not in ("off", "2d", "3d", "3d2", "bm", "bmht", "bm-light",
                               "bmht-light", "bmw", "mix"):
            raise ValueError(f"unknown second stage {wiener!r}")
        self.mix_weights = {str(k): float(v) for k, v in (mix_weights or {}).items()}
        if self.wiener == "mix" and not (self.blind and self.mix_weights):
            raise ValueError("the mix stage needs the blind network and its weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, Z, Y, X), Z >= 3; returns float32 of the same shape."""
        x = x.float()
        return torch.stack([self.denoise_stack(stack) for stack in x])

    def denoise_stack(self, stack: torch.Tensor) -> torch.Tensor:
        """Denoise one raw (Z, Y, X) stack."""
        lo, hi = quantile(stack, NORM_LOW / 100), quantile(stack, NORM_HIGH / 100)
        scale = float(torch.tensor(hi, dtype=torch.float32) - torch.tensor(lo, dtype=torch.float32))
        if not math.isfinite(scale) or scale <= 1e-12 * max(1.0, abs(lo)):
            scale = 1.0  # a constant stack still round-trips
        norm = (stack - lo) / scale
        w = self.pair_weights(norm) if self.context else None
        # The blind network's noise level: the stack's (napari_duet.core.noiselevel),
        # each slice's own where the stack is too small to tell.
        sigmas = None  # the 2.5D network's stages read noise spectra instead
        if self.blind:
            level = white_noise_sigma(norm)
            sigmas = [noise_sigma(s) if level is None else level for s in norm]
        out = torch.empty_like(norm)
        for z in range(norm.shape[0]):
            out[z] = self.denoise_slice(norm, z, w, sigmas[z] if sigmas else 0.0)
        if self.wiener == "mix":
            out = self.mix(norm, out, sigmas)
        elif self.wiener == "bmw":  # block-matched Wiener guided by the network itself
            if self.blind:
                out = guided_wiener(norm, sigmas, out)
            else:
                out = guided_wiener(norm, 1.0, out, torch.stack(
                    [noise_spectrum(norm[z], out[z], 8) for z in range(norm.shape[0])]))
        elif self.wiener.startswith("bm"):  # blind network only: white noise
            light = {"s": light_mu2()} if self.wiener.endswith("-light") else None
            pilot = None if self.wiener.startswith("bmht") else out
            out = two_step(norm, sigmas, {"s": pilot}, light)["s"]
        elif self.wiener != "off" and not (self.blind and self.wiener == "2d"):
            # A stage on the whole stack (as stage_stack of nsn2n/_blind.py): after
            # the blind network white noise of each slice's level, after the 2.5D
            # network each slice's noise spectrum; 3 x 8 x 8 windows (2d: 1 x 8 x 8).
            if self.blind:
                kw = {"sigmas": sigmas}
            else:
                kw = {"spectra": torch.stack([noise_spectrum(norm[z], out[z], 8)
                                              for z in range(norm.shape[0])])}
            depth = 1 if self.wiener == "2d" else 3
            for stride in ((2, 1) if self.wiener == "3d2" else (1,)):  # the last pass: stride 1
                out = dct_wiener_stack(norm, out, depth=depth, size=8, stride=stride, **kw)
        return out * scale + lo

    def mix(self, norm: torch.Tensor, blend: torch.Tensor, sigmas: list) -> torch.Tensor:
        """The ``mix`` stage: the weighted sum of the candidate stages after the blind
        network (as ``mix_stages`` of napari-duet's ``nsn2n/_blind.py``)."""
        blocks = [m for m in ("bm", "bmht", "bm-light", "bmht-light") if self.mix_weights.get(m)]
        outs = two_step(norm, sigmas, {m: None if m.startswith("bmht") else blend for m in blocks},
                        {m: light_mu2() for m in blocks if m.endswith("-light")}) if blocks else {}
        total = torch.zeros_like(blend, dtype=torch.float64)
        for m, wt in self.mix_weights.items():
            if not wt:
                continue
            if m in outs:
                o = outs[m]
            elif m == "off":
                o = blend
            elif m == "2d":
                o = torch.stack([dct_wiener(norm[z], blend[z], sigmas[z])
                                 for z in range(norm.shape[0])])
            else:  # "3d", "3d2": 3 x 8 x 8 windows, the last pass stride 1
                o = blend
                for stride in ((2, 1) if m == "3d2" else (1,)):
                    o = dct_wiener_stack(norm, o, depth=3, size=8, stride=stride, sigmas=sigmas)
            total = total + wt * o.double()
        return total.float()

    def pair_weights(self, norm: torch.Tensor) -> torch.Tensor:
        """(Z-1, Y, X) maps: 1 where neighbouring guides agree within the threshold."""
        guides = torch.stack([gaussian_guide(s, self.guide_sigma, self.median_size)
                              for s in norm])
        diffs = (guides[1:] - guides[:-1]).abs()
        tau = self.tau
        if tau is None:
            d = diffs.reshape(-1)
            if d.numel() > 2_000_000:  # the same strided subsample as napari-duet
                d = d[:: d.numel() // 1_000_000]
            sigma = quantile(d, 0.25) / 0.3186
            tau = max(self.tau_factor * sigma, 1e-4)
        return (diffs <= tau).float()

    def denoise_slice(self, norm: torch.Tensor, z: int, w: torch.Tensor | None,
                      sigma: float = 0.0) -> torch.Tensor:
        """Denoised normalised slice ``z`` of a normalised (Z, Y, X) stack (``sigma``:
        the blind network's noise level)."""
        if self.blind:
            return self.denoise_blind(norm, z, sigma)
        if not self.context:
            return self._predict(norm[z][None]).mean(0)
        p_self = self._predict(context_input(norm, z, "self")).mean(0)
        p_gap = self._predict(context_input(norm, z, "gap")).mean(0)
        m = torch.ones_like(p_self)
        if w is not None:
            for j in (z - 1, z + 1):
                if 0 <= j < norm.shape[0]:
                    m = m * w[min(z, j)]
        return m * 0.5 * (p_self + p_gap) + (1 - m) * p_self

    def denoise_blind(self, norm: torch.Tensor, z: int, sigma: float) -> torch.Tensor:
        """Blind-spot network: each pixel predicted with its own value hidden, then the blend."""
        mu = None
        for phase in range(GRID * GRID):
            mask = phase_mask(norm.shape[1:], phase, norm.device)
            pred = self._predict(blind_input(norm, z, mask))  # (T, Y, X)
            mu = torch.where(mask, pred, torch.zeros_like(pred) if mu is None else mu)
        out = posterior(norm[z], mu.mean(0), sigma)
        if self.wiener == "2d":  # the second stage (napari_duet.core.wiener); 3D: denoise_stack
            out = dct_wiener(norm[z], out, sigma)
        return out

    def _predict(self, img: torch.Tensor) -> torch.Tensor:
        """(T, Y, X) predictions for each flip/rotation of a (C, Y, X) input."""
        transforms = TRANSFORMS if self.tta else TRANSFORMS[:1]
        preds: list = [None] * len(transforms)
        for parity in (0, 1):  # same parity of k, same shape: one batch
            idx = [n for n, t in enumerate(transforms) if t[0] % 2 == parity]
            if idx:
                batch = torch.stack([_dihedral(img, *transforms[n]) for n in idx])
                res = self.net(batch)[:, 0]
                for n, r in zip(idx, res, strict=True):
                    preds[n] = _undihedral(r, *transforms[n])
        return torch.stack(preds)
