"""The DCT-domain Wiener stage (core.wiener) and the after-training check that decides it."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data

from napari_duet.core.metrics import psnr
from napari_duet.core.wiener import dct_basis, dct_wiener
from napari_duet.nsn2n._blind import choose_wiener


def _camera(sigma=0.1, seed=0):
    """skimage's camera (a real photograph: texture, edges, flat sky), scaled to [0, 1]."""
    clean = data.camera()[::2, ::2].astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    return clean, (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)


def test_basis_is_orthonormal():
    b = dct_basis(12).double()
    assert torch.allclose(b @ b.T, torch.eye(144, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("shape", [(64, 64), (37, 53), (5, 7), (1, 9), (3, 1)])
@pytest.mark.parametrize("stride", [1, 2])
def test_pilot_full_of_signal_keeps_the_image(shape, stride):
    """Every factor 1: windows taken to the DCT domain and back, every pixel covered
    (odd sides, images smaller than the window, strides)."""
    x = torch.from_numpy(np.random.default_rng(1).standard_normal(shape).astype(np.float32))
    out = dct_wiener(x, x * 1e4, 0.5, stride=stride, block_rows=3)
    assert out.shape == x.shape and torch.allclose(out, x, atol=1e-5)


def test_blocks_do_not_change_the_result():
    clean, noisy = _camera()
    x, p = torch.from_numpy(noisy), torch.from_numpy(ndimage.gaussian_filter(noisy, 1.5))
    a, b = dct_wiener(x, p, 0.1, block_rows=2), dct_wiener(x, p, 0.1, block_rows=1000)
    assert torch.allclose(a, b, atol=1e-6)


def test_wiener_stage_recovers_detail_a_blurred_pilot_lost():
    """With a pilot that smoothed the texture away the stage gains >1 dB over the
    pilot (measured 22.98 -> 24.42 dB), and a zero sigma returns the noisy image untouched."""
    clean, noisy = _camera()
    pilot = ndimage.gaussian_filter(noisy, 2.0)
    out = dct_wiener(torch.from_numpy(noisy), torch.from_numpy(pilot), 0.1).numpy()
    assert psnr(out, clean, 1.0) > psnr(pilot, clean, 1.0) + 1.0
    assert psnr(out, clean, 1.0) > psnr(noisy, clean, 1.0) + 4.0  # measured +4.4
    same = dct_wiener(torch.from_numpy(noisy), torch.from_numpy(pilot), 0.0).numpy()
    assert np.array_equal(same, noisy)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="one shape"):
        dct_wiener(torch.zeros(8, 8), torch.zeros(8, 9), 0.1)


def _stacks(clean_slice, sigma=0.1, n_z=6, seed=3):
    rng = np.random.default_rng(seed)
    clean = np.repeat(clean_slice[None], n_z, 0)
    return clean, (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)[None]


def test_check_turns_the_stage_on_behind_a_blurring_estimate():
    """An estimate that blurs texture away: the recorrupted-slice check prefers the stage."""
    clean, stacks = _stacks(_camera()[0][:96, :96])

    def blurring(inp, tta):  # (C, Y, X) -> (1, Y, X): the filled slice, smoothed
        return ndimage.gaussian_filter(inp[0], 2.0)[None]

    got = choose_wiener(blurring, stacks, tta=False)
    assert got["use"] is True and got["loss_wiener"] < got["loss_blend"]
    assert len(got["slices"]) == 6


def test_check_leaves_the_stage_off_behind_a_sharp_estimate():
    """Flat regions with clean edges and an estimate that is (almost) the truth: the
    windowed filter can only add back noise and ringing, and the check sees it."""
    yy, xx = np.mgrid[:96, :96]
    flat = (0.2 + 0.6 * ((yy // 24 + xx // 24) % 2)).astype(np.float32)
    clean, stacks = _stacks(flat)

    def sharp(inp, tta):
        return flat[None]

    got = choose_wiener(sharp, stacks, tta=False)
    assert got["use"] is False and got["loss_wiener"] > got["loss_blend"]


def test_model_follows_the_recorded_decision_and_says_so(tmp_path):
    """``wiener="auto"`` uses the check stored in the model; on/off override it; models
    without a check (saved before it) stay off; non-blind models have no stage."""
    import dataclasses

    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel
    from napari_duet.nsn2n._blind import BlindNet

    cfg = NSN2NConfig(context="blind", width=4, depth=1)
    model = NSN2NModel(BlindNet(width=4, depth=1), cfg, [], device="cpu")
    assert model.use_wiener is False and "before the check" in model.describe_wiener()
    model.training["wiener"] = {"use": True, "loss_blend": 2.0, "loss_wiener": 1.0,
                                "slices": [[0, 0], [0, 3]]}
    assert model.use_wiener is True
    assert model.describe_wiener() == "Wiener stage on: it lowers the error on 2 recorrupted slices"
    model.save(tmp_path / "m.duet")  # the decision travels in the model file
    loaded = NSN2NModel.load(tmp_path / "m.duet")
    assert loaded.training["wiener"] == model.training["wiener"] and loaded.use_wiener
    model.config = dataclasses.replace(cfg, wiener="off")
    assert model.use_wiener is False and "set by the wiener option" in model.describe_wiener()
    model.training["wiener"]["use"] = False
    model.config = dataclasses.replace(cfg, wiener="on")
    assert model.use_wiener is True
    from napari_duet.nsn2n._context import ContextNet

    ctx = NSN2NModel(ContextNet(width=4, depth=1), NSN2NConfig(context="2.5d"), [],
                     device="cpu")
    assert ctx.use_wiener is False and ctx.describe_wiener() is None


def test_apply_follows_the_wiener_option_in_memory_and_slab_by_slab(tmp_path):
    """``duet nsn2n --model M --wiener on|off`` sets the stage for that run (in memory and
    into OME-Zarr, where the choice is part of the run's signature), and says so."""
    import tifffile

    from napari_duet.cli import main
    from napari_duet.nsn2n import NSN2NConfig, train

    rng = np.random.default_rng(0)
    clean = ndimage.gaussian_filter(rng.random((6, 40, 40)), (0, 2, 2)).astype(np.float32)
    vol = (clean + 0.1 * rng.standard_normal(clean.shape)).astype(np.float32)
    res = train(vol, config=NSN2NConfig(context="blind", iterations=3, width=4, depth=1,
                                        batch_size=2, crop_size=16, device="cpu",
                                        preview_every=0, tta=False))
    res.model.save(tmp_path / "m.duet")
    tifffile.imwrite(tmp_path / "v.tif", vol)
    outs = {}
    for choice in ("on", "off"):
        out = tmp_path / f"{choice}.tif"
        assert main(["nsn2n", str(tmp_path / "v.tif"), "--model", str(tmp_path / "m.duet"),
                     "-o", str(out), "--wiener", choice, "--no-tta", "-q"]) == 0
        outs[choice] = tifffile.imread(out)
        assert main(["nsn2n", str(tmp_path / "v.tif"), "--model", str(tmp_path / "m.duet"),
                     "-o", str(tmp_path / f"{choice}.ome.zarr"), "--wiener", choice,
                     "--no-tta", "--slab", "3", "-q"]) == 0
    assert not np.allclose(outs["on"], outs["off"], atol=1e-4)
    from napari_duet.core.io import open_image

    for choice in ("on", "off"):  # slab by slab equals in memory, for either choice
        zarr_out = np.asarray(open_image(tmp_path / f"{choice}.ome.zarr")[0])
        assert np.allclose(zarr_out, outs[choice], atol=1e-5)
