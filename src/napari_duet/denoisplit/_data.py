"""Training data: input checks, train/validation split, normalisation and patches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import DuetInputError
from ..core.intensity import Normalizer, as_float_image

_MIN_FRAMES_FOR_FRAME_SPLIT = 5
_MAX_VAL_PATCHES = 64


def as_frames(image, name: str) -> np.ndarray:
    """(Y, X) or (N, Y, X) image as float32 (N, Y, X)."""
    arr = as_float_image(image, name=name)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        return arr
    raise DuetInputError(
        f"{name} must be a 2D image (Y, X) or a stack of frames (N, Y, X), got shape {arr.shape}"
    )


@dataclass
class SplitData:
    """Raw training and validation data, channels stacked: (frames, N, Y, X)."""

    train: np.ndarray
    val: np.ndarray
    val_overlaps_train: bool
    split: str  # "frames" or "region"
    shape: tuple[int, ...]  # shape of one channel as given
    hot_pixels: int = 0  # camera hot pixels replaced (see replace_hot_pixels)


#: A hot pixel is brighter than this many times its channel's 99.9th percentile ...
HOT_FACTOR = 20.0
#: ... and than this many times the brightest of its 8 neighbours (a real structure,
#: blurred by the optics, spans several pixels).
HOT_ISOLATION = 5.0


def replace_hot_pixels(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace the camera hot pixels of one channel's (F, Y, X) frames by the median of
    their 3 x 3 neighbourhood; returns ``(frames, count)`` (a copy only when one was found).

    One hot pixel of a real camera (about 800 times the brightest structure on the
    development set's membranes + nuclei image) inflates the normalisation and the
    noise model's signal range: the network then learned nothing there (-1.6 / 0.0 dB
    against the constant split) and +5.7 / +5.8 dB once it was replaced.
    """
    from scipy.ndimage import maximum_filter, median_filter

    ref = float(np.percentile(frames, 99.9)) if frames.size else 0.0
    if not ref > 0:
        return frames, 0
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    out, count = frames, 0
    for i, f in enumerate(frames):
        cand = f > HOT_FACTOR * ref
        if not cand.any():
            continue
        neigh = maximum_filter(f, footprint=ring, mode="reflect")
        hot = cand & (f > HOT_ISOLATION * np.maximum(neigh, ref))
        if hot.any():
            if out is frames:
                out = frames.copy()
            out[i][hot] = median_filter(f, size=3, mode="reflect")[hot]
            count += int(hot.sum())
    return out, count


def prepare_data(
    *channels, patch_size: int, val_fraction: float, rng: np.random.Generator
) -> SplitData:
    """Check the N channels, then hold out validation frames (stacks) or a strip (images)."""
    from ._config import MAX_CHANNELS, MIN_CHANNELS

    if not MIN_CHANNELS <= len(channels) <= MAX_CHANNELS:
        raise DuetInputError(
            f"give {MIN_CHANNELS} to {MAX_CHANNELS} channels (one noisy acquisition per "
            f"structure), got {len(channels)}")
    labels = [f"channel {channel_letter(c)}" for c in range(len(channels))]
    arrs = [as_frames(ch, lab) for ch, lab in zip(channels, labels, strict=True)]
    a = arrs[0]
    for ch, arr, lab in zip(channels[1:], arrs[1:], labels[1:], strict=True):
        if arr.shape != a.shape:
            raise DuetInputError(
                f"channel A {tuple(np.shape(channels[0]))} and {lab} "
                f"{tuple(np.shape(ch))} must have the same shape"
            )
    n, h, w = a.shape
    if h < patch_size or w < patch_size:
        raise DuetInputError(
            f"images ({h}x{w}) are smaller than the patch size {patch_size}; "
            f"use a patch size of at most {min(h, w)} (a multiple of the network's stride)"
        )
    given = tuple(np.shape(channels[0]))
    fixed = [replace_hot_pixels(x) for x in arrs]
    hot = sum(k for _, k in fixed)
    data = np.stack([x for x, _ in fixed], axis=1)  # (frames, N, Y, X)
    if n >= _MIN_FRAMES_FOR_FRAME_SPLIT:
        n_val = max(1, round(val_fraction * n))
        val_idx = np.linspace(0, n - 1, n_val).round().astype(int)
        train_idx = np.setdiff1d(np.arange(n), val_idx)
        return SplitData(data[train_idx], data[val_idx], False, "frames", given, hot)
    # Few frames: hold out a strip at the end of the longer axis.
    axis = 2 if h >= w else 3
    length = data.shape[axis]
    strip = max(patch_size, int(round(val_fraction * length)))
    if length - strip >= patch_size:
        train = np.take(data, np.arange(0, length - strip), axis=axis)
        val = np.take(data, np.arange(length - strip, length), axis=axis)
        return SplitData(train, val, False, "region", given, hot)
    # Too small to hold anything out: validate on (part of) the training data.
    val = np.take(data, np.arange(length - strip, length), axis=axis)
    return SplitData(data, val, True, "region", given, hot)


def channel_letter(c: int) -> str:
    """"A", "B", "C", ... for channel index ``c``."""
    return chr(ord("A") + c)


def fit_normalizers(train: np.ndarray) -> tuple[Normalizer, list[Normalizer]]:
    """Mean/std of the input (the sum of the channels) and of each channel."""
    def meanstd(x):
        sd = float(x.std())
        return Normalizer(offset=float(x.mean()), scale=sd if sd > 1e-12 else 1.0)

    return meanstd(train.sum(axis=1)), [meanstd(train[:, c]) for c in range(train.shape[1])]


def default_steps_per_epoch(train: np.ndarray, patch_size: int, batch_size: int) -> int:
    pixels = train.shape[0] * train.shape[2] * train.shape[3]
    return int(np.clip(math.ceil(4 * pixels / (patch_size**2 * batch_size)), 10, 500))


#: Passes over a field's distinct patches that the automatic step cap allows.
STEP_CAP_PASSES = 40
#: The automatic step cap of two structures is at least this many steps (a small field
#: still gets the updates it needs; the plateau rule stops it when it has learned what
#: it can), of N structures N / 2 times as many (:func:`default_max_steps`).
MIN_STEP_CAP = 1000


def distinct_patches(train: np.ndarray, patch_size: int) -> int:
    """Distinct training patches of (F, N, Y, X) frames: the non-overlapping patches of
    each frame (at least one) times the 8 flips and rotations of the augmentation."""
    fy = max(train.shape[2] // patch_size, 1)
    fx = max(train.shape[3] // patch_size, 1)
    return int(train.shape[0] * fy * fx * 8)


def default_max_steps(train: np.ndarray, patch_size: int, batch_size: int) -> int:
    """The step cap that follows the amount of data: ``STEP_CAP_PASSES`` passes over
    its :func:`distinct_patches` (counted in patches, so a batch twice as large gets
    half the steps), at least ``MIN_STEP_CAP`` steps for two structures and half as
    many more for each structure beyond (1500 for three, 2000 for four).

    A 512 x 384 field (a 435 x 384 training part) in 64-px patches gets 1440 steps of
    batch 8, about 9 minutes of the small network on an idle 2-core laptop; a field
    four times larger, or four frames, four times as many.  A small field of three
    structures gets the floor of 1500 steps: on the development set's three-structure
    images of 214 x 204 and 350 x 350 px (tune half, seed 0) the weakest structure
    gained 0.4 and 0.5 dB more from 1500 steps than from 1000 (golgi +2.56 against
    +2.15 dB over the constant split, nuclear pores +0.69 against +0.18).
    """
    floor = math.ceil(MIN_STEP_CAP * max(train.shape[1], 2) / 2)
    return max(floor, math.ceil(STEP_CAP_PASSES * distinct_patches(train, patch_size)
                                / batch_size))


def _reflect_index(idx, n: int):
    """Mirror indices into 0..n-1 (numpy "reflect" padding, any overhang)."""
    import torch

    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    j = idx.remainder(period)
    return torch.where(j < n, j, period - j)


def context_inputs(frames, f, y0, x0, hw: tuple[int, int], count: int):
    """Lateral-context inputs of patches: (B, count, h, w).

    Input k (1..count) covers 2^k times the patch's extent, centred on the
    patch, averaged over 2^k x 2^k blocks, so it has the patch's pixel count.
    Pixels outside the frame are mirrored.

    Parameters
    ----------
    frames : torch.Tensor
        (F, Y, X) normalised input frames.
    f, y0, x0 : torch.Tensor
        (B,) frame index and top-left corner of each patch.
    hw : (int, int)
        Patch size (multiples of ``2**(count + 1)``).
    count : int
        Number of context inputs.
    """
    import torch
    from torch.nn import functional as F

    h, w = hw
    _, ny, nx = frames.shape
    out = []
    for k in range(1, count + 1):
        s = 2**k
        ay = torch.arange(s * h, device=frames.device)
        ax = torch.arange(s * w, device=frames.device)
        ry = _reflect_index(y0[:, None] + (h // 2 - s * h // 2) + ay, ny)
        rx = _reflect_index(x0[:, None] + (w // 2 - s * w // 2) + ax, nx)
        region = frames[f[:, None, None], ry[:, :, None], rx[:, None, :]]
        out.append(F.avg_pool2d(region[:, None], s))
    return torch.cat(out, dim=1)


class PatchSampler:
    """Random patches with flips and transposes, gathered on the device in one op.

    Holds the raw (frames, N, Y, X) data as a tensor and normalises patches
    as they are drawn, so no per-patch Python work or host sync is needed.
    With ``context > 0`` the input also carries that many lateral-context
    channels (see :func:`context_inputs`), flipped with the patch.
    """

    def __init__(self, data: np.ndarray, input_norm, target_norms, *, patch_size: int,
                 device, seed: int, augment: bool, context: int = 0):
        import torch

        self.torch = torch
        self.data = torch.as_tensor(data, device=device)
        self.n = self.data.shape[1]
        self.p = patch_size
        self.augment = augment
        self.device = device
        self.context = int(context)
        self.gen = torch.Generator(device=device).manual_seed(int(seed))
        self.in_off = float(input_norm.offset)
        self.in_scale = float(input_norm.scale)
        n = self.n
        self.t_off = torch.tensor([q.offset for q in target_norms], device=device).view(1, n, 1, 1)
        self.t_scale = torch.tensor([q.scale for q in target_norms], device=device).view(
            1, n, 1, 1
        )
        self.ar = torch.arange(patch_size, device=device)
        self.inputs = None
        if self.context:
            self.inputs = (self.data.sum(dim=1) - self.in_off) / self.in_scale  # (F, Y, X)

    def normalise(self, raw):
        """(B, N, P, P) raw channels -> (input (B, 1, P, P), target (B, N, P, P))."""
        inp = (raw.sum(dim=1, keepdim=True) - self.in_off) / self.in_scale
        tgt = (raw - self.t_off) / self.t_scale
        return inp, tgt

    def _gather(self, f, y0, x0, flips=None):
        torch, p = self.torch, self.p
        batch = f.shape[0]
        ry = self.ar.expand(batch, p)
        rx = ry
        if flips is not None:
            fy, fx, _ = flips
            ry = torch.where(fy[:, None], p - 1 - self.ar, self.ar)
            rx = torch.where(fx[:, None], p - 1 - self.ar, self.ar)
        iy = (y0[:, None] + ry)[:, :, None]
        ix = (x0[:, None] + rx)[:, None, :]
        raw = self.data[f[:, None, None], :, iy, ix].permute(0, 3, 1, 2)  # (B, N, P, P)
        if flips is not None:
            # Flips plus an optional transpose give all 8 rotations/reflections.
            raw = torch.where(flips[2][:, None, None, None], raw.transpose(-1, -2), raw)
        inp, tgt = self.normalise(raw)
        if self.context:
            ctx = context_inputs(self.inputs, f, y0, x0, (p, p), self.context)
            if flips is not None:
                fy, fx, tr = (m[:, None, None, None] for m in flips)
                ctx = torch.where(fy, ctx.flip(-2), ctx)
                ctx = torch.where(fx, ctx.flip(-1), ctx)
                ctx = torch.where(tr, ctx.transpose(-1, -2), ctx)
            inp = torch.cat([inp, ctx], dim=1)
        return inp, tgt

    def sample(self, batch: int):
        torch = self.torch
        n, _, h, w = self.data.shape
        g, dev, p = self.gen, self.device, self.p
        f = torch.randint(0, n, (batch,), generator=g, device=dev)
        y0 = torch.randint(0, h - p + 1, (batch,), generator=g, device=dev)
        x0 = torch.randint(0, w - p + 1, (batch,), generator=g, device=dev)
        flips = None
        if self.augment:
            flips = (torch.rand((3, batch), generator=g, device=dev) < 0.5).unbind(0)
        return self._gather(f, y0, x0, flips)

    def patches_at(self, positions: np.ndarray):
        """Unaugmented patches at ``positions`` (rows of frame, y0, x0)."""
        pos = self.torch.as_tensor(np.asarray(positions), device=self.device).long()
        return self._gather(pos[:, 0], pos[:, 1], pos[:, 2])


def validation_positions(val: np.ndarray, patch_size: int) -> np.ndarray:
    """(frame, y0, x0) of non-overlapping validation patches, at most 64, evenly chosen."""
    n, _, h, w = val.shape
    pos = [(i, y, x) for i in range(n) for y in range(0, h - patch_size + 1, patch_size)
           for x in range(0, w - patch_size + 1, patch_size)]
    if len(pos) > _MAX_VAL_PATCHES:
        keep = np.linspace(0, len(pos) - 1, _MAX_VAL_PATCHES).round().astype(int)
        pos = [pos[i] for i in keep]
    return np.asarray(pos, dtype=np.int64)


def validation_patches(val: np.ndarray, patch_size: int) -> np.ndarray:
    """The raw (P, N, patch, patch) patches at :func:`validation_positions`."""
    p = patch_size
    return np.stack([val[i, :, y : y + p, x : x + p]
                     for i, y, x in validation_positions(val, p)])
