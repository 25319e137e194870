"""The DCT-domain Wiener stage (core.wiener) and the after-training check that decides it."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data

from napari_duet.core.metrics import psnr
from napari_duet.core.wiener import dct_basis, dct_wiener, dct_wiener_stack
from napari_duet.nsn2n._blind import choose_wiener


def _camera(sigma=0.1, seed=0):
    """skimage's camera (a real photograph: texture, edges, flat sky), scaled to [0, 1]."""
    clean = data.camera()[::2, ::2].astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    return clean, (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)


@pytest.mark.parametrize("depth", [1, 3])
def test_basis_is_orthonormal(depth):
    b = dct_basis(12, depth=depth).double()
    n = 144 * depth
    assert torch.allclose(b @ b.T, torch.eye(n, dtype=torch.float64), atol=1e-6)


def test_stack_stage_of_depth_one_is_the_slice_stage():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((4, 37, 41)).astype(np.float32))
    p = 0.5 * x + 0.1 * torch.from_numpy(rng.standard_normal((4, 37, 41)).astype(np.float32))
    sig = [0.3, 0.2, 0.25, 0.3]
    got = dct_wiener_stack(x, p, sig, depth=1, size=12, stride=2)
    want = torch.stack([dct_wiener(x[z], p[z], sig[z]) for z in range(4)])
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("shape", [(7, 30, 33), (2, 5, 7), (1, 9, 9)])
def test_stack_stage_full_of_signal_keeps_the_stack(shape):
    x = torch.from_numpy(np.random.default_rng(1).standard_normal(shape).astype(np.float32))
    assert torch.allclose(dct_wiener_stack(x, x * 1e4, 0.5), x, atol=1e-5)


def test_stack_stage_on_a_run_of_slices_equals_the_whole_stack():
    """Slice z reads slices z-2..z+2 only (depth 3): a run with 2 more slices on each
    side gives its inner slices exactly, whatever the per-slice sigmas elsewhere."""
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.standard_normal((12, 20, 24)).astype(np.float32))
    p = 0.6 * x
    sig = torch.from_numpy(rng.uniform(0.1, 0.4, 12))
    whole = dct_wiener_stack(x, p, sig)
    run = dct_wiener_stack(x[2:10], p[2:10], sig[2:10])
    assert torch.equal(whole[4:8], run[2:6])
    with pytest.raises(ValueError, match="one sigma or 12"):
        dct_wiener_stack(x, p, [0.1, 0.2])


def test_stack_stage_uses_what_neighbouring_slices_share():
    """Slices of one structure with independent noise: the 3D windows separate the
    shared structure from the noise and beat the slice stage by a clear margin."""
    clean = np.repeat(_camera()[0][None, :96, :96], 5, 0)
    rng = np.random.default_rng(5)
    noisy = (clean + 0.1 * rng.standard_normal(clean.shape)).astype(np.float32)
    pilot = ndimage.gaussian_filter(noisy, (0, 1.5, 1.5))
    x, p = torch.from_numpy(noisy), torch.from_numpy(pilot)
    flat = torch.stack([dct_wiener(x[z], p[z], 0.1) for z in range(5)]).numpy()
    deep = dct_wiener_stack(x, p, 0.1).numpy()
    assert psnr(deep, clean, 1.0) > psnr(flat, clean, 1.0) + 1.0


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
    assert set(got["losses"]) == {"off", "2d", "3d", "3d2", "bm", "bmht", "bm-light",
                                   "bmht-light"}
    # The slices repeat one image: the stages that read neighbouring slices win (alone,
    # or as most of the weight of the check's weighted sum).
    assert got["mode"] in ("3d", "3d2", "bm", "bmht", "mix")
    if got["mode"] == "mix":
        assert got["weights"]["off"] + got["weights"]["2d"] < 0.5, got["weights"]
    assert got["losses"]["3d"] < got["losses"]["2d"]


def test_check_picks_a_stage_as_good_as_the_best_where_slices_differ():
    """Neighbouring slices of unrelated content (thick slices): whichever stage the check
    picks is within 2 % of the best one's error against the clean slices."""
    from napari_duet.nsn2n._blind import STAGES, posterior, stage_stack

    cam = _camera()[0]
    clean = np.stack([cam[y:y + 64, x:x + 64] for y, x in
                      [(0, 0), (100, 150), (180, 20), (60, 190), (190, 190), (30, 90)]])
    rng = np.random.default_rng(6)
    stacks = (clean + 0.1 * rng.standard_normal(clean.shape)).astype(np.float32)[None]

    def blurring(inp, tta):
        return ndimage.gaussian_filter(inp[0], 2.0)[None]

    got = choose_wiener(blurring, stacks, tta=False)
    x = stacks[0]
    blend = np.stack([posterior(s, ndimage.gaussian_filter(s, 2.0), 0.1) for s in x])
    true = {m: float(np.mean((stage_stack(x, blend, m, [0.1] * 6) - clean) ** 2))
            for m in STAGES}
    true["mix"] = float(np.mean((stage_stack(x, blend, "mix", [0.1] * 6, got["weights"])
                                 - clean) ** 2))
    assert true[got["mode"]] <= 1.02 * min(true.values()), (got["losses"], true)
    assert true[got["mode"]] < 0.9 * true["off"]


def test_check_leaves_the_stage_off_behind_a_sharp_estimate():
    """Flat regions with clean edges and an estimate that is (almost) the truth: the
    windowed filter can only add back noise and ringing, and the check sees it."""
    yy, xx = np.mgrid[:96, :96]
    flat = (0.2 + 0.6 * ((yy // 24 + xx // 24) % 2)).astype(np.float32)
    clean, stacks = _stacks(flat)

    def sharp(inp, tta):
        return flat[None]

    got = choose_wiener(sharp, stacks, tta=False)
    assert got["use"] is False and got["mode"] == "off"
    assert min(v for m, v in got["losses"].items() if m != "off") > got["loss_blend"]


def test_model_follows_the_recorded_decision_and_says_so(tmp_path):
    """``wiener="auto"`` uses the check stored in the model; on/off override it; models
    without a check (saved before it) stay off; non-blind models have no stage."""
    import dataclasses

    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel
    from napari_duet.nsn2n._blind import BlindNet

    cfg = NSN2NConfig(context="blind", width=4, depth=1)
    model = NSN2NModel(BlindNet(width=4, depth=1), cfg, [], device="cpu")
    assert model.use_wiener is False and "before the stage existed" in model.describe_wiener()
    model.training["wiener"] = {"use": True, "loss_blend": 2.0, "loss_wiener": 1.0,
                                "slices": [[0, 0], [0, 3]]}
    # A model saved before the 3D stages: its "use" was the slice stage.
    assert model.use_wiener is True and model.wiener_mode == "2d" and model.halo == 2
    assert model.describe_wiener() == "Wiener stage 2d: it lowers the error on 2 recorrupted slices"
    model.training["wiener"] = {"mode": "3d2", "use": True, "slices": [[0, 0], [0, 1]],
                                "losses": {"off": 2.0, "2d": 1.5, "3d": 1.2, "3d2": 1.0},
                                "loss_blend": 2.0, "loss_wiener": 1.5}
    assert model.wiener_mode == "3d2" and model.halo == 6  # it reads 4 more slices a side
    assert model.describe_wiener() == ("Wiener stage 3d2: the lowest error of off/2d/3d/3d2 "
                                       "on 2 recorrupted slices")
    model.save(tmp_path / "m.duet")  # the decision travels in the model file
    loaded = NSN2NModel.load(tmp_path / "m.duet")
    assert loaded.training["wiener"] == model.training["wiener"] and loaded.wiener_mode == "3d2"
    model.config = dataclasses.replace(cfg, wiener="off")
    assert model.use_wiener is False and "set by the wiener option" in model.describe_wiener()
    model.training["wiener"]["mode"] = "off"
    model.config = dataclasses.replace(cfg, wiener="on")
    assert model.use_wiener is True and model.wiener_mode == "2d"
    model.config = dataclasses.replace(cfg, wiener="3d")
    assert model.wiener_mode == "3d" and model.halo == 4
    model.config = dataclasses.replace(cfg, wiener="bm")
    assert model.wiener_mode == "bm" and model.halo == 11  # the network's 2 + 9
    from napari_duet.core.networks.unet import UNet2D
    from napari_duet.nsn2n._blind import CONTEXT_STAGE
    from napari_duet.nsn2n._context import ContextNet

    ctx = NSN2NModel(ContextNet(width=4, depth=1), NSN2NConfig(context="2.5d"), [],
                     device="cpu")
    assert ctx.use_wiener is False and "before the stage existed" in ctx.describe_wiener()
    ctx.training["wiener"] = dict(CONTEXT_STAGE)  # what training records for the 2.5D network
    assert ctx.wiener_mode == "bmw" and ctx.halo == 6  # the network's 2 + 4
    assert "noise spectrum" in ctx.describe_wiener()
    flat = NSN2NModel(UNet2D(1, 1, width=4, depth=1), NSN2NConfig(context="2d", wiener="3d"),
                      [], device="cpu")
    assert flat.wiener_mode == "off" and flat.describe_wiener() is None and flat.halo == 0


def test_apply_follows_the_wiener_option_in_memory_and_slab_by_slab(tmp_path):
    """``duet nsn2n --model M --wiener on|off|3d2|bm`` sets the stage for that run (in
    memory and into OME-Zarr, where the choice is part of the run's signature), and slab by
    slab (slabs of 3 slices, the 3D stage reading 4 more on each side, the block-matched
    one 9) equals in memory."""
    import tifffile

    from napari_duet.cli import main
    from napari_duet.nsn2n import NSN2NConfig, train

    rng = np.random.default_rng(0)
    clean = ndimage.gaussian_filter(rng.random((11, 40, 40)), (0, 2, 2)).astype(np.float32)
    vol = (clean + 0.1 * rng.standard_normal(clean.shape)).astype(np.float32)
    res = train(vol, config=NSN2NConfig(context="blind", iterations=3, width=4, depth=1,
                                        batch_size=2, crop_size=16, device="cpu",
                                        preview_every=0, tta=False))
    res.model.save(tmp_path / "m.duet")
    tifffile.imwrite(tmp_path / "v.tif", vol)
    outs = {}
    for choice in ("on", "off", "3d2", "bm"):
        out = tmp_path / f"{choice}.tif"
        assert main(["nsn2n", str(tmp_path / "v.tif"), "--model", str(tmp_path / "m.duet"),
                     "-o", str(out), "--wiener", choice, "--no-tta", "-q"]) == 0
        outs[choice] = tifffile.imread(out)
        assert main(["nsn2n", str(tmp_path / "v.tif"), "--model", str(tmp_path / "m.duet"),
                     "-o", str(tmp_path / f"{choice}.ome.zarr"), "--wiener", choice,
                     "--no-tta", "--slab", "3", "-q"]) == 0
    assert not np.allclose(outs["on"], outs["off"], atol=1e-4)
    assert not np.allclose(outs["on"], outs["3d2"], atol=1e-4)
    assert not np.allclose(outs["bm"], outs["3d2"], atol=1e-4)
    from napari_duet.core.io import open_image

    for choice in ("on", "off", "3d2", "bm"):  # slab by slab equals in memory, for each choice
        zarr_out = np.asarray(open_image(tmp_path / f"{choice}.ome.zarr")[0])
        assert np.allclose(zarr_out, outs[choice], atol=1e-5)


def test_progress_and_stop_points_come_with_each_network_pass(monkeypatch):
    """With a stage on runs of slices (here the 2.5D network's 3D one) every slice's
    network pass yields progress before the stage runs, so Cancel lands within one
    slice and the bar moves; done counts every slice once."""
    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel, _blind
    from napari_duet.nsn2n._blind import CONTEXT_STAGE
    from napari_duet.nsn2n._context import ContextNet

    model = NSN2NModel(ContextNet(width=4, depth=1), NSN2NConfig(context="2.5d", tta=False),
                       [], device="cpu")
    model.training["wiener"] = dict(CONTEXT_STAGE)
    events, seen_at_stage = [], []
    real = _blind.stage_stack

    def recording(*args, **kwargs):
        seen_at_stage.append(len(events))
        return real(*args, **kwargs)

    monkeypatch.setattr(_blind, "stage_stack", recording)
    vol = np.random.default_rng(7).random((6, 24, 24)).astype(np.float32)
    gen = model.iter_predict(vol)
    while True:
        try:
            events.append(next(gen))
        except StopIteration:
            break
    assert seen_at_stage == [6]  # one stage run, after a progress event per slice
    assert [e.done for e in events] == list(range(1, 7))


def test_block_matched_stage_needs_white_noise():
    """The block-matched stages shrink by one noise level per slice: after the 2.5D network
    (noise correlated within slices) asking for one is a clear error before training."""
    from napari_duet.core.errors import DuetInputError
    from napari_duet.nsn2n import NSN2NConfig, train
    from napari_duet.nsn2n._blind import stage_stack

    vol = np.random.default_rng(0).random((5, 24, 24)).astype(np.float32)
    with pytest.raises(DuetInputError, match="needs white noise"):
        train(vol, config=NSN2NConfig(context="2.5d", wiener="bm", iterations=2, width=4,
                                      depth=1, crop_size=16, device="cpu", preview_every=0))
    with pytest.raises(DuetInputError, match="needs white noise"):
        stage_stack(vol, vol, "bmht", None)


def test_cli_refuses_a_block_matched_stage_for_a_25d_model(tmp_path, capsys):
    """``--wiener bm`` on a model of the 2.5D network: exit code 2, one line, no output."""
    import tifffile

    from napari_duet.cli import main
    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel
    from napari_duet.nsn2n._context import ContextNet

    NSN2NModel(ContextNet(width=4, depth=1), NSN2NConfig(context="2.5d"), [],
               device="cpu").save(tmp_path / "m.duet")
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((5, 16, 16), np.float32))
    out = tmp_path / "out.tif"
    assert main(["nsn2n", str(tmp_path / "v.tif"), "--model", str(tmp_path / "m.duet"),
                 "-o", str(out), "--wiener", "bm", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs white noise" in err[0] and not out.exists()
