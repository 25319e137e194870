"""The white-noise level of a stack (core.noiselevel): texture is not noise."""

import numpy as np
import pytest
import torch

from napari_duet.core.noiselevel import white_noise_sigma


def _textured(shape=(12, 96, 96), sigma=0.1, seed=0):
    """Fine in-plane texture (as CT's) that changes slowly along z, plus white noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.standard_normal(shape[1:]), 0.7)
    tex *= 0.25 / tex.std()
    ramp = np.linspace(0.0, 1.0, shape[2])[None, :] * np.linspace(0.5, 1.0, shape[0])[:, None, None]
    clean = 0.4 + 0.3 * ramp + tex[None] * np.linspace(1.0, 1.1, shape[0])[:, None, None]
    return clean + sigma * rng.standard_normal(shape), clean


def test_texture_is_not_counted_as_noise():
    from napari_duet.nsn2n._guide import _noise_sigma

    noisy, _ = _textured()
    immerkaer = np.mean([_noise_sigma(s) for s in noisy.astype(np.float32)])
    assert immerkaer > 0.105  # the per-slice estimator that the stages used counts texture
    assert white_noise_sigma(noisy.astype(np.float32)) == pytest.approx(0.1, rel=0.03)


@pytest.mark.parametrize("sigma", [0.02, 0.3])
def test_flat_volume_any_level_and_input_types(sigma):
    rng = np.random.default_rng(1)
    vol = (0.5 + sigma * rng.standard_normal((8, 96, 90))).astype(np.float32)
    s = white_noise_sigma(vol)
    assert s == pytest.approx(sigma, rel=0.05)
    assert white_noise_sigma(torch.from_numpy(vol)) == s  # the bioimage.io export's input
    assert white_noise_sigma(vol[:2]) == pytest.approx(sigma, rel=0.1)  # in-plane only


def test_too_small_to_tell():
    assert white_noise_sigma(np.zeros((3, 7, 40), np.float32)) is None
    assert white_noise_sigma(np.zeros((1, 9, 9), np.float32)) is None  # < 200 pixels per band


@pytest.mark.parametrize("stage", ["3d", "mix"])
def test_blind_model_blends_with_the_stacks_level(stage, monkeypatch, one_torch_thread):
    """The blind network's blend and second stage use the stack's level, not each slice's
    Immerkaer estimate (which counts texture as noise); the chunked path gets the same."""
    import zarr

    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel, _guide
    from napari_duet.nsn2n._blind import BlindNet
    from napari_duet.nsn2n._chunked import iter_denoise_chunked

    torch.manual_seed(0)
    net = BlindNet(width=8, depth=2)
    torch.nn.init.normal_(net.unet.head.weight, std=0.05)
    training = {"wiener": {"mode": "mix", "use": True, "slices": [[0, 2]], "weights": {
        "off": 0.3, "2d": 0.1, "3d": 0.2, "3d2": 0.1, "bm": 0.1, "bmht": 0.0, "bm-light": 0.2,
        "bmht-light": 0.0}}} if stage == "mix" else {}
    cfg = NSN2NConfig(width=8, device="cpu", context="blind",
                      wiener="auto" if stage == "mix" else stage)
    model = NSN2NModel(net, cfg, [], training, device="cpu")
    assert model.wiener_mode == stage
    noisy, _ = _textured((8, 48, 40))
    noisy = noisy.astype(np.float32)

    def per_slice(img):
        raise AssertionError("the per-slice estimate was used")

    monkeypatch.setattr(_guide, "_noise_sigma", per_slice)
    ref = model.predict(noisy, axis=0, tta=False).denoised
    out = np.zeros(noisy.shape, np.float32)
    events = list(iter_denoise_chunked(model, zarr.array(noisy), out, axis=0, tta=False, slab=3))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.ptp(noisy))
    assert events  # statistics and slabs were reported
