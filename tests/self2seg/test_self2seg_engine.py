import numpy as np
import pytest

from napari_duet import DuetInputError
from napari_duet.core.metrics import dice
from napari_duet.core.progress import run_to_end
from napari_duet.self2seg import (
    Self2SegConfig,
    Self2SegResult,
    Self2SegState,
    boxes_to_regions,
    convex_chan_vese,
    iter_self2seg,
    self2seg,
    sequential_n2f_chan_vese,
)

FAST = dict(expert_steps=40, expert_steps_warm=20, patience=20, n_average=2, batch_size=4,
            crop=24, expert_width=8, expert_depth=3, device="cpu", threads=1)


def blobs(shape=(64, 64), sigma=0.35, seed=0, contrast=1.0):
    """Disks of varied brightness on a flat background, Gaussian noise; returns (noisy, mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    mask = np.zeros(shape, bool)
    img = np.zeros(shape, np.float32)
    for cy, cx, r, a in [(16, 16, 9, 1.0), (44, 20, 7, 0.8), (30, 46, 11, 1.2), (52, 52, 5, 0.9)]:
        d = (yy - cy * shape[0] / 64) ** 2 + (xx - cx * shape[1] / 64) ** 2 <= r * r
        mask |= d
        img[d] = a * contrast
    return img + rng.normal(0, sigma, shape).astype(np.float32), mask


def test_config_validation_and_roundtrip():
    cfg = Self2SegConfig(n_classes=3, lam=2.0, experts="linear")
    assert Self2SegConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (dict(n_classes=1), dict(experts="unet"), dict(lam=-1.0), dict(expert_steps=0),
                dict(max_fraction_change=1.0), dict(linear_size=4)):
        with pytest.raises(DuetInputError):
            Self2SegConfig(**bad)
    with pytest.raises(DuetInputError, match="unknown"):
        Self2SegConfig.from_dict({"nope": 1})
    assert type(Self2SegConfig(n_classes=np.int64(3)).n_classes) is int  # widget values


def test_constant_experts_segment_noisy_blobs_and_energy_decreases():
    img, mask = blobs(sigma=0.5)
    states = []
    cfg = Self2SegConfig(experts="constant", max_alternations=6)
    res = run_to_end(iter_self2seg(img, config=cfg), states.append)
    assert isinstance(res, Self2SegResult) and all(isinstance(s, Self2SegState) for s in states)
    assert dice(res.labels == 1, mask) > 0.9
    e = np.array(res.energies)
    assert np.all(np.diff(e) <= 1e-6 * np.abs(e[:-1]))  # never increases
    assert [s.alternation for s in states] == list(range(1, len(states) + 1))
    assert states[-1].energies == res.energies and res.alternations == len(states)
    assert res.labels.dtype == np.uint8 and res.u.shape == (2, 64, 64)
    assert res.experts.shape == (2, 64, 64) and res.denoised.shape == (64, 64)
    # Composite = each region's expert inside that region.
    np.testing.assert_allclose(res.denoised[res.labels == 1], res.experts[1][res.labels == 1])
    assert dice(res.labels == 1, mask) > dice(img > 0.5, mask)


def test_cnn_experts_end_to_end_quality_determinism_and_report():
    img, mask = blobs(sigma=0.4, seed=1)
    img16 = np.clip(img * 1000 + 2000, 0, 65535).astype(np.uint16)
    cfg = Self2SegConfig(max_alternations=3, seed=3, **FAST)
    res = self2seg(img16, config=cfg)
    assert dice(res.labels == 1, mask) > 0.85
    assert res.energies == sorted(res.energies, reverse=True)
    # Outputs are in the input's intensity scale.
    assert res.denoised.dtype == np.float32
    assert abs(float(np.median(res.denoised[~mask])) - 2000) < 300
    res2 = self2seg(img16, config=cfg)
    np.testing.assert_array_equal(res.labels, res2.labels)
    np.testing.assert_allclose(res.denoised, res2.denoised, rtol=1e-5, atol=1e-3)
    rep = res.report()
    import json

    json.dumps(rep)
    assert rep["image"]["dtype"] == "uint16" and rep["parameters"]["seed"] == 3
    assert len(rep["energies"]) == res.alternations and "torch" in rep["versions"]


def test_linear_experts_and_boxes():
    img, mask = blobs(sigma=0.4, seed=2)
    reg = boxes_to_regions(img.shape, fg_boxes=[(26, 40, 34, 52)], bg_boxes=[(0, 30, 10, 60)])
    res = self2seg(img, reg, Self2SegConfig(experts="linear", max_alternations=3))
    assert dice(res.labels == 1, mask) > 0.85


def test_invert_and_dark_objects():
    img, mask = blobs(sigma=0.3, seed=4)
    dark = -img
    res = self2seg(dark, config=Self2SegConfig(experts="constant", invert=True))
    assert dice(res.labels == 1, mask) > 0.9
    res = self2seg(dark, config=Self2SegConfig(experts="constant"))
    assert dice(res.labels == 1, mask) < 0.3  # without invert the bright background wins


def test_three_classes():
    rng = np.random.default_rng(5)
    truth = np.zeros((48, 60), np.uint8)
    truth[:, 20:40] = 1
    truth[:, 40:] = 2
    truth[10:30, 5:15] = 2
    img = truth.astype(np.float32) + rng.normal(0, 0.4, truth.shape)
    # Unfiltered residuals: a box filter turns the 0|2 edge into a thin band of the
    # middle class (documented limitation for K > 2).
    res = self2seg(img, config=Self2SegConfig(n_classes=3, experts="constant", filter_size=0))
    assert res.u.shape == (3, 48, 60) and res.experts.shape == (3, 48, 60)
    np.testing.assert_allclose(res.u.sum(0), 1, atol=1e-4)
    assert np.mean(res.labels == truth) > 0.98
    assert np.all(np.diff(res.energies) <= 1e-6 * np.abs(np.array(res.energies[:-1])))


def test_rgb_input_uses_colour():
    rng = np.random.default_rng(6)
    img, mask = blobs(sigma=0.0)
    rgb = np.zeros(mask.shape + (4,), np.float32)
    rgb[..., 0] = np.where(mask, 0.2, 0.8)  # equal grey level, different colour
    rgb[..., 1] = np.where(mask, 0.8, 0.2)
    rgb[..., 2] = 0.5
    rgb[..., 3] = 1.0  # alpha, dropped
    rgb[..., :3] += rng.normal(0, 0.3, mask.shape + (3,))
    reg = boxes_to_regions(mask.shape, fg_boxes=[(10, 10, 20, 20)], bg_boxes=[(0, 50, 10, 64)])
    res = self2seg(rgb, reg, Self2SegConfig(experts="constant"))
    assert res.experts.shape == (2, 64, 64, 3) and res.denoised.shape == (64, 64, 3)
    assert dice(res.labels == 1, mask) > 0.9


def test_bad_inputs():
    with pytest.raises(DuetInputError, match="2D"):
        self2seg(np.zeros((3, 20, 20)))
    with pytest.raises(DuetInputError, match="too small"):
        self2seg(np.zeros((4, 40)))
    with pytest.raises(DuetInputError, match="constant"):
        self2seg(np.ones((20, 20)))
    img, _ = blobs()
    reg = np.zeros(img.shape, np.uint8)
    reg[:5, :5] = 2
    with pytest.raises(DuetInputError, match="class 0"):
        self2seg(img, reg)
    with pytest.raises(DuetInputError, match="NaN"):
        self2seg(np.full((20, 20), np.nan))


def test_cancellation_mid_alternation_restores_torch_threads():
    """Closing the generator (what a cancelled worker does) inside an alternation stops
    there and undoes the run's torch thread setting."""
    import torch

    img, _ = blobs()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = iter_self2seg(img, config=Self2SegConfig(max_alternations=5, **FAST),
                            progress=True)
        first = next(gen)
        while isinstance(first, Self2SegState) or first.stage != "experts":
            first = next(gen)
        assert torch.get_num_threads() == 1  # the run's setting (FAST: threads=1)
        gen.close()
        assert torch.get_num_threads() == 2
        with pytest.raises(StopIteration):
            next(gen)
    finally:
        torch.set_num_threads(before)


def test_baseline_convex_chan_vese_is_constant_experts():
    img, mask = blobs(sigma=0.5, seed=7)
    res = convex_chan_vese(img)
    assert res.config.experts == "constant"
    assert all(h["expert_kind"] == "constant" for h in res.history)
    assert dice(res.labels == 1, mask) > 0.85


def test_sequential_baseline_denoises_then_segments():
    img, mask = blobs(sigma=0.5, seed=8)
    res = sequential_n2f_chan_vese(img, Self2SegConfig(device="cpu", threads=1), n2f_steps=40)
    assert dice(res.labels == 1, mask) > 0.85
    assert res.denoised.shape == img.shape and "noise2fast" in res.timings
    # The whole-image denoiser removed noise in the flat background.
    assert np.std(res.denoised[~mask]) < 0.6 * np.std(img[~mask])


def dim_and_bright_disks(noise, seed=0):
    """Bright disks and one dim disk (0.3) on a flat background, Gaussian noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.zeros((64, 64), np.float32)
    mask = np.zeros((64, 64), bool)
    dim = (yy - 46) ** 2 + (xx - 46) ** 2 <= 64
    for cy, cx, r, a in [(16, 16, 8, 1.0), (16, 46, 8, 1.1), (46, 16, 8, 0.9), (46, 46, 8, 0.3)]:
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[d] = a
        mask |= d
    return img + rng.normal(0, noise, img.shape).astype(np.float32), mask, dim


def test_automatic_filter_size_follows_the_noise_level():
    clean, _, _ = dim_and_bright_disks(0.02)
    noisy, _, _ = dim_and_bright_disks(0.4)
    cfg = Self2SegConfig(experts="constant")
    res_clean = convex_chan_vese(clean, cfg)
    res_noisy = convex_chan_vese(noisy, cfg)
    assert res_clean.filter_size == 1 and res_noisy.filter_size == 3
    assert res_noisy.report()["resolved"]["filter_size"] == 3
    assert res_noisy.report()["parameters"]["filter_size"] is None
    # An explicit size is used as given.
    assert convex_chan_vese(clean, cfg.replace(filter_size=5)).filter_size == 5
    with pytest.raises(DuetInputError):
        Self2SegConfig(filter_size=-1)


def test_region_variance_keeps_dim_objects_that_chan_vese_drops():
    img, mask, dim = dim_and_bright_disks(0.02)
    cfg = Self2SegConfig(experts="constant")
    cv = convex_chan_vese(img, cfg.replace(region_variance=False))
    rv = convex_chan_vese(img, cfg)
    # Chan-Vese's midpoint threshold (about 0.5) gives the dim disk (0.3) to the background;
    # the wide foreground intensity spread of the Gaussian-likelihood term keeps it.
    assert (cv.labels[dim] == 1).mean() < 0.2
    assert (rv.labels[dim] == 1).mean() > 0.9
    assert dice(rv.labels == 1, mask) > 0.95 > dice(cv.labels == 1, mask)
    assert all(b <= a + 1e-6 for a, b in zip(rv.energies, rv.energies[1:], strict=False))


@pytest.mark.slow
def test_ensembled_expert_denoising_beats_each_expert_alone():
    from napari_duet.core.metrics import psnr
    from napari_duet.core.synthetic import synthetic_nuclei

    gains = []
    for seed in (0, 1):
        s = synthetic_nuclei((112, 128), noise_sigma=30.0, seed=seed)
        # (Border refinement off: it cuts from the denoised image, which is what differs.)
        cfg = Self2SegConfig(max_alternations=3, seed=seed, threads=1, refine_borders=False)
        ens = self2seg(s.noisy, config=cfg)
        alone = self2seg(s.noisy, config=cfg.replace(ensemble_shared=False))
        # The data term is the expert's own prediction either way: same segmentation.
        np.testing.assert_array_equal(ens.labels, alone.labels)
        gains.append(psnr(ens.denoised, s.clean, 255.0) - psnr(alone.denoised, s.clean, 255.0))
    assert np.mean(gains) > 0.2, gains


def test_progress_events_within_alternations_change_nothing(monkeypatch):
    """``progress=True`` adds Self2SegProgress events between the states (expert steps,
    then the mask); the states and the result stay bit-identical."""
    from napari_duet.self2seg import Self2SegProgress, _engine, iter_self2seg_stack

    monkeypatch.setattr(_engine, "PROGRESS_INTERVAL", 0.0)  # every 10 steps
    img, _ = blobs()
    cfg = Self2SegConfig(max_alternations=3, **FAST)
    plain = self2seg(img, config=cfg)
    items = []
    with_events = run_to_end(iter_self2seg(img, config=cfg, progress=True), items.append)
    for a, b in ((plain.labels, with_events.labels), (plain.experts, with_events.experts),
                 (plain.denoised, with_events.denoised)):
        np.testing.assert_array_equal(a, b)
    assert plain.energies == with_events.energies
    states = [x for x in items if isinstance(x, Self2SegState)]
    assert len(states) == with_events.alternations
    events = [x for x in items if isinstance(x, Self2SegProgress)]
    # Alternation 2 trains CNN experts: its step count rises, then the mask follows.
    alt2 = [e for e in events if e.alternation == 2]
    steps = [e.done for e in alt2 if e.stage == "experts"]
    assert len(steps) >= 3 and steps == sorted(steps) and steps[-1] > steps[0]
    assert alt2[-1].stage == "mask"
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 1
    # The stack runner passes them on, with the plane set.
    stack_items = list(_take(iter_self2seg_stack(np.stack([img, img]), config=cfg,
                                                 progress=True)))
    planes = {e.plane for e in stack_items if isinstance(e, Self2SegProgress)}
    assert planes == {0, 1}
    assert all(e.n_planes == 2 for e in stack_items if isinstance(e, Self2SegProgress))
    # Without progress, consumers see states only.
    assert all(isinstance(x, Self2SegState) for x in _take(iter_self2seg(img, config=cfg)))


def _take(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return
