"""Channel axes: (Y, X, C) and (Z, Y, X, C) inputs are recognised and handled, or refused."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_duet import DuetInputError
from napari_duet.cli import main
from napari_duet.core.channels import find_channel_axis


@pytest.mark.parametrize(("shape", "axes", "given", "expected"), [
    ((48, 48, 4), None, "auto", 2),  # (Y, X, C): guessed from the shape
    ((8, 48, 48, 3), None, "auto", 3),  # (Z, Y, X, C)
    ((8, 48, 48), None, "auto", None),  # a plain stack
    ((3, 3, 3), None, "auto", None),  # too small a plane to guess channels
    ((10, 48, 3), "ZYX", "auto", None),  # the file says there is none
    ((2, 10, 48, 48), "CZYX", "auto", 0),  # the file names it
    ((48, 48, 3), "YXS", "auto", 2),  # TIFF samples (RGB)
    ((8, 48, 48, 3), None, "none", None),  # the user says there is none
    ((3, 8, 48, 48), None, 0, 0),  # the user names it
    ((8, 48, 48, 3), None, -1, 3),
])
def test_find_channel_axis(shape, axes, given, expected):
    assert find_channel_axis(shape, axes=axes, given=given) == expected


def test_a_channel_axis_outside_the_image_is_refused():
    with pytest.raises(DuetInputError, match="--channel-axis 4 is not an axis"):
        find_channel_axis((8, 48, 48), given=4)


def _stack(z=5, y=24, x=24, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    clean = ndimage.gaussian_filter(rng.random((z, y, x)), (1, 2, 2))
    return (clean + 0.05 * rng.standard_normal((z, y, x))).astype(np.float32)


def test_nsn2n_denoises_each_channel_of_a_zyxc_stack(tmp_path):
    base = _stack()
    vol = np.stack([base, 3 * base + 10], axis=-1)  # (Z, Y, X, 2)
    path, out = tmp_path / "zyxc.tif", tmp_path / "den.tif"
    tifffile.imwrite(path, vol)
    # A continuous second stage: block matching's hard thresholding is discontinuous, so
    # the two channels' last-bit differences after normalisation would flip coefficients.
    assert main(["nsn2n", str(path), "-o", str(out), "--iterations", "2", "--width", "4",
                 "--device", "cpu", "--no-tta", "-q", "--threads", "1",
                 "--wiener", "3d2"]) == 0
    den = tifffile.imread(out)
    assert den.shape == vol.shape
    # Each channel is its own stack (own normalisation, one network): the second
    # channel, an affine copy of the first, is denoised to the same affine copy.
    # Read as (Z, Y, X) slices of X x 2 pixels it would not be.
    np.testing.assert_allclose(den[..., 1], 3 * den[..., 0] + 10, rtol=1e-4, atol=1e-3)
    assert np.abs(den[..., 0] - base).mean() < np.abs(base).mean()


def test_nsn2n_refuses_one_image_with_channels(tmp_path, capsys):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((32, 32, 4), np.float32), photometric="rgb")
    assert main(["nsn2n", str(path), "-o", str(tmp_path / "o.tif"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "channels (axis 2 of shape (32, 32, 4))" in err[0]


def test_noise_model_fit_refuses_channels(tmp_path, capsys):
    path = tmp_path / "obs.tif"
    tifffile.imwrite(path, np.ones((6, 32, 32, 3), np.float32), photometric="rgb")
    assert main(["noise-model", "fit", "--observation", str(path), "-o",
                 str(tmp_path / "nm.duet"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has a channel axis (axis 3 of shape (6, 32, 32, 3)" in err[0]


@pytest.mark.parametrize("shape", [(32, 32, 4), (6, 32, 32, 3)])
def test_nsn2n_api_refuses_channels_last(shape):
    from napari_duet.nsn2n import iter_train

    with pytest.raises(DuetInputError, match=r"last axis .* looks like channels"):
        next(iter_train(np.zeros(shape, np.float32)))
