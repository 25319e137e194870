"""Training data: input checks, train/validation split, normalisation and patches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._errors import DuetInputError
from ..intensity import Normalizer, as_float_image

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
    """Raw training and validation data, channels stacked: (frames, 2, Y, X)."""

    train: np.ndarray
    val: np.ndarray
    val_overlaps_train: bool
    split: str  # "frames" or "region"
    shape: tuple[int, ...]  # shape of one channel as given


def prepare_data(
    channel_a, channel_b, *, patch_size: int, val_fraction: float, rng: np.random.Generator
) -> SplitData:
    """Check A and B, then hold out validation frames (stacks) or a strip (images)."""
    a = as_frames(channel_a, "channel A")
    b = as_frames(channel_b, "channel B")
    if a.shape != b.shape:
        raise DuetInputError(
            f"channel A {tuple(np.shape(channel_a))} and channel B "
            f"{tuple(np.shape(channel_b))} must have the same shape"
        )
    n, h, w = a.shape
    if h < patch_size or w < patch_size:
        raise DuetInputError(
            f"images ({h}x{w}) are smaller than the patch size {patch_size}; "
            f"use a patch size of at most {min(h, w)} (a multiple of the network's stride)"
        )
    given = tuple(np.shape(channel_a))
    data = np.stack([a, b], axis=1)  # (N, 2, Y, X)
    if n >= _MIN_FRAMES_FOR_FRAME_SPLIT:
        n_val = max(1, round(val_fraction * n))
        val_idx = np.linspace(0, n - 1, n_val).round().astype(int)
        train_idx = np.setdiff1d(np.arange(n), val_idx)
        return SplitData(data[train_idx], data[val_idx], False, "frames", given)
    # Few frames: hold out a strip at the end of the longer axis.
    axis = 2 if h >= w else 3
    length = data.shape[axis]
    strip = max(patch_size, int(round(val_fraction * length)))
    if length - strip >= patch_size:
        train = np.take(data, np.arange(0, length - strip), axis=axis)
        val = np.take(data, np.arange(length - strip, length), axis=axis)
        return SplitData(train, val, False, "region", given)
    # Too small to hold anything out: validate on (part of) the training data.
    val = np.take(data, np.arange(length - strip, length), axis=axis)
    return SplitData(data, val, True, "region", given)


def fit_normalizers(train: np.ndarray) -> tuple[Normalizer, list[Normalizer]]:
    """Mean/std of the input (A + B) and of each channel, from the training data."""
    def meanstd(x):
        sd = float(x.std())
        return Normalizer(offset=float(x.mean()), scale=sd if sd > 1e-12 else 1.0)

    return meanstd(train.sum(axis=1)), [meanstd(train[:, c]) for c in range(train.shape[1])]


def default_steps_per_epoch(train: np.ndarray, patch_size: int, batch_size: int) -> int:
    pixels = train.shape[0] * train.shape[2] * train.shape[3]
    return int(np.clip(math.ceil(4 * pixels / (patch_size**2 * batch_size)), 10, 500))


class PatchSampler:
    """Random patches with flips and transposes, gathered on the device in one op.

    Holds the raw (frames, 2, Y, X) data as a tensor and normalises patches
    as they are drawn, so no per-patch Python work or host sync is needed.
    """

    def __init__(self, data: np.ndarray, input_norm, target_norms, *, patch_size: int,
                 device, seed: int, augment: bool):
        import torch

        self.torch = torch
        self.data = torch.as_tensor(data, device=device)
        self.p = patch_size
        self.augment = augment
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(int(seed))
        self.in_off = float(input_norm.offset)
        self.in_scale = float(input_norm.scale)
        self.t_off = torch.tensor([n.offset for n in target_norms], device=device).view(1, 2, 1, 1)
        self.t_scale = torch.tensor([n.scale for n in target_norms], device=device).view(
            1, 2, 1, 1
        )
        self.ar = torch.arange(patch_size, device=device)

    def normalise(self, raw):
        """(B, 2, P, P) raw channels -> (input (B, 1, P, P), target (B, 2, P, P))."""
        inp = (raw.sum(dim=1, keepdim=True) - self.in_off) / self.in_scale
        tgt = (raw - self.t_off) / self.t_scale
        return inp, tgt

    def sample(self, batch: int):
        torch = self.torch
        n, _, h, w = self.data.shape
        g, dev, p = self.gen, self.device, self.p
        f = torch.randint(0, n, (batch,), generator=g, device=dev)
        y0 = torch.randint(0, h - p + 1, (batch,), generator=g, device=dev)
        x0 = torch.randint(0, w - p + 1, (batch,), generator=g, device=dev)
        ry = self.ar.expand(batch, p)
        rx = ry
        if self.augment:
            fy, fx, tr = (torch.rand((3, batch), generator=g, device=dev) < 0.5).unbind(0)
            ry = torch.where(fy[:, None], p - 1 - self.ar, self.ar)
            rx = torch.where(fx[:, None], p - 1 - self.ar, self.ar)
        iy = (y0[:, None] + ry)[:, :, None]
        ix = (x0[:, None] + rx)[:, None, :]
        raw = self.data[f[:, None, None], :, iy, ix].permute(0, 3, 1, 2)  # (B, 2, P, P)
        if self.augment:
            # Flips plus an optional transpose give all 8 rotations/reflections.
            raw = torch.where(tr[:, None, None, None], raw.transpose(-1, -2), raw)
        return self.normalise(raw)


def validation_patches(val: np.ndarray, patch_size: int) -> np.ndarray:
    """Non-overlapping patches of the validation data, at most 64, evenly chosen."""
    n, _, h, w = val.shape
    ys = list(range(0, h - patch_size + 1, patch_size))
    xs = list(range(0, w - patch_size + 1, patch_size))
    patches = [val[i, :, y : y + patch_size, x : x + patch_size]
               for i in range(n) for y in ys for x in xs]
    if len(patches) > _MAX_VAL_PATCHES:
        keep = np.linspace(0, len(patches) - 1, _MAX_VAL_PATCHES).round().astype(int)
        patches = [patches[i] for i in keep]
    return np.stack(patches)
