import numpy as np
import pytest

from napari_duet.core.n2f._checkerboard import (
    blind_prediction,
    checkerboard_merge,
    checkerboard_split,
    even_crop,
)


def test_split_phases_are_checkerboard_and_merge_inverts():
    img = np.arange(6 * 8).reshape(6, 8)
    a, b, c, d = checkerboard_split(img)
    yy, xx = np.mgrid[0:6, 0:8]
    odd = img[(yy + xx) % 2 == 1]
    even = img[(yy + xx) % 2 == 0]
    assert sorted(a.ravel()) == sorted(odd) == sorted(c.ravel())
    assert sorted(b.ravel()) == sorted(even) == sorted(d.ravel())
    assert a.shape == (3, 8) and c.shape == (6, 4)
    # A pixel of A sits vertically next to the B pixel it pairs with.
    assert a[0, 0] == img[1, 0] and b[0, 0] == img[0, 0]
    assert c[0, 0] == img[0, 1] and d[0, 0] == img[0, 0]
    np.testing.assert_array_equal(checkerboard_merge(a, b), img)
    np.testing.assert_array_equal(checkerboard_merge(c, d, horizontal=True), img)


def test_split_works_on_channel_stacks_and_rejects_odd():
    img = np.random.default_rng(0).normal(size=(3, 4, 6))
    parts = checkerboard_split(img)
    for ch in range(3):
        for p, q in zip(parts, checkerboard_split(img[ch]), strict=True):
            np.testing.assert_array_equal(p[ch], q)
    with pytest.raises(ValueError):
        checkerboard_split(np.zeros((5, 4)))
    assert even_crop(np.zeros((5, 7))).shape == (4, 6)


@pytest.mark.parametrize("shape", [(8, 10), (7, 9)])
def test_blind_prediction_never_sees_own_pixel(shape):
    img = np.zeros(shape, np.float32)
    img[3, 4] = 100.0
    out = blind_prediction(img, lambda phase: phase)  # "predict" = copy the other phase
    assert out.shape == shape
    assert out[3, 4] == 0.0  # the spike does not leak into its own prediction
    assert out.sum() > 0  # but it is used to predict its neighbours
