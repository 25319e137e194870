"""Training data: split, normalisation, patch sampling with augmentation."""

from __future__ import annotations

import numpy as np
import torch

from napari_duet.core.intensity import Normalizer
from napari_duet.denoisplit._data import (
    PatchSampler,
    fit_normalizers,
    prepare_data,
    replace_hot_pixels,
    validation_patches,
)


def test_frame_split_for_stacks_and_strip_split_for_images():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(10, 32, 32))
    d = prepare_data(a, a + 1, patch_size=16, val_fraction=0.2, rng=rng)
    assert d.split == "frames" and d.val.shape == (2, 2, 32, 32) and d.train.shape[0] == 8
    d = prepare_data(a[0], a[0], patch_size=8, val_fraction=0.2, rng=rng)
    assert d.split == "region" and d.train.shape == (1, 2, 24, 32)
    assert d.val.shape == (1, 2, 8, 32) and not d.val_overlaps_train
    d = prepare_data(a[0, :20, :20], a[0, :20, :20], patch_size=16, val_fraction=0.2, rng=rng)
    assert d.val_overlaps_train and d.train.shape == (1, 2, 20, 20)


def test_normalisers_and_validation_patches():
    rng = np.random.default_rng(1)
    train = np.stack([rng.normal(5, 2, (3, 16, 16)), rng.normal(50, 10, (3, 16, 16))], 1)
    inp, tgt = fit_normalizers(train)
    assert abs(tgt[0].offset - 5) < 0.5 and abs(tgt[1].scale - 10) < 1.5
    assert abs(inp.offset - 55) < 1.5
    assert validation_patches(train, 8).shape == (12, 2, 8, 8)


def test_patches_are_flipped_or_transposed_crops():
    data = np.arange(2 * 12 * 12, dtype=np.float32).reshape(1, 2, 12, 12)
    data[:, 1] *= -1
    ident = Normalizer(0.0, 1.0)
    s = PatchSampler(data, ident, [ident, ident], patch_size=4, device=torch.device("cpu"),
                     seed=0, augment=True)
    inp, tgt = s.sample(64)
    assert inp.shape == (64, 1, 4, 4) and tgt.shape == (64, 2, 4, 4)
    torch.testing.assert_close(inp[:, 0], tgt[:, 0] + tgt[:, 1])
    full = data[0, 0]
    seen_transposed = False
    for p in tgt[:, 0].numpy():
        # Undo the augmentation: some combination of flips/transpose gives a crop.
        cands = [p, p[::-1], p[:, ::-1], p[::-1, ::-1]]
        cands += [c.T for c in cands]
        ok = [any(np.array_equal(c, full[y:y + 4, x:x + 4]) for y in range(9) for x in range(9))
              for c in cands]
        assert any(ok)
        seen_transposed |= not any(ok[:4])
    assert seen_transposed


def test_camera_hot_pixels_are_replaced_before_training_and_counted():
    """One isolated pixel hundreds of times brighter than the structures (a camera hot
    pixel) is replaced by its neighbourhood's median in the training data; a bright
    structure of several pixels and the rest of the image are left alone."""
    rng = np.random.default_rng(0)
    a = rng.poisson(10.0, (1, 64, 64)).astype(np.float32)
    a[0, 30:33, 40:43] += 60.0  # a real bright spot (3 x 3)
    b = rng.poisson(5.0, (1, 64, 64)).astype(np.float32)
    hot_a, hot_b = a.copy(), b.copy()
    hot_a[0, 10, 12] = hot_b[0, 10, 12] = 20_000.0  # the same hot pixel in both acquisitions
    fixed, n = replace_hot_pixels(hot_a)
    assert n == 1 and fixed[0, 10, 12] <= 20
    mask = np.ones(a.shape, bool)
    mask[0, 10, 12] = False
    np.testing.assert_array_equal(fixed[mask], a[mask])  # the bright spot is kept
    same, k = replace_hot_pixels(a)  # nothing to replace: the frames as given
    assert k == 0 and same is a
    d = prepare_data(hot_a[0], hot_b[0], patch_size=16, val_fraction=0.2, rng=rng)
    assert d.hot_pixels == 2 and d.train.max() < 200
    np.testing.assert_array_equal(hot_a[0, 10, 12], 20_000.0)  # the caller's data untouched
