"""The workflow samples: shapes, the noise they promise, and the bundled split model."""

from __future__ import annotations

import numpy as np
import pytest

from napari_duet._napari import _sample_data
from napari_duet.core.metrics import range_invariant_psnr


def test_nsn2n_volume_is_a_small_noisy_anisotropic_stack():
    layers = _sample_data.nsn2n_volume()
    (noisy, meta, kind), (clean, cmeta, ckind) = layers
    assert kind == ckind == "image"
    assert noisy.shape == clean.shape == (16, 96, 96)
    assert noisy.dtype == clean.dtype == np.float32
    assert noisy.nbytes <= 4 * 2**20  # a few MB at most
    assert meta["scale"] == cmeta["scale"] == (2.0, 1.0, 1.0)
    assert cmeta["visible"] is False
    np.testing.assert_array_equal(meta["metadata"]["clean"], clean)
    # Deterministic, with structures and a real noise level.
    again, _ = _sample_data.synthetic_volume()
    np.testing.assert_array_equal(noisy, again)
    assert 0.0 <= clean.min() and clean.max() <= 1.0
    assert 0.05 < (clean > 0.3).mean() < 0.5
    residual = noisy - clean
    sigma = meta["metadata"]["noise_sigma"]
    assert 0.9 * sigma < residual.std() < 1.1 * sigma
    # Correlated within a slice (neighbouring pixels), independent across slices.
    def corr(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    assert corr(residual[:, :, 1:], residual[:, :, :-1]) > 0.4
    assert abs(corr(residual[1:], residual[:-1])) < 0.05


def test_split_demo_data_without_a_viewer():
    layers = _sample_data.split_demo()  # no viewer: the layers alone
    assert [k for *_, k in layers] == ["image"] * 3
    (image, meta, _), (a, ameta, _), (b, bmeta, _) = layers
    assert image.shape == a.shape == b.shape == (256, 256)
    assert image.dtype == a.dtype == b.dtype == np.float32
    assert ameta["visible"] is False and bmeta["visible"] is False
    # The image is the two structures together (plus noise).
    assert abs(float((image - a - b).mean())) < 3.0
    assert 5.0 < float((image - a - b).std()) < 30.0


def test_bundled_split_model_is_small_and_loads():
    path = _sample_data.split_demo_model_path()
    assert path.is_file()
    assert path.stat().st_size <= 3 * 2**20
    from napari_duet.denoisplit import SplitModel

    model = SplitModel.load(path, device="cpu")
    meta = model.metadata()
    assert meta["n_channels"] == 2
    assert meta["channel_names"] == ["filaments", "puncta"]
    assert meta["noise_models"] and meta["calibration"]


@pytest.mark.usefixtures("one_torch_thread")
def test_bundled_split_model_beats_the_constant_split():
    from napari_duet.denoisplit import SplitModel

    model = SplitModel.load(_sample_data.split_demo_model_path(), device="cpu")
    image, clean_a, clean_b = _sample_data.split_demo_data()
    res = model.predict(image, samples=10, seed=0)
    assert res.mean.shape == (2, 256, 256)
    # The constant split: the input divided by each structure's intensity share.
    share = clean_a.mean() / (clean_a.mean() + clean_b.mean())
    for c, (clean, s) in enumerate(((clean_a, share), (clean_b, 1 - share))):
        split = range_invariant_psnr(res.mean[c], clean)
        const = range_invariant_psnr(image * s, clean)
        assert split > const + 1.5, (c, split, const)
