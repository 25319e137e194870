"""Tiled posterior sampling: equality with untiled runs, bounded memory, stacks."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from napari_duet import DuetInputError
from napari_duet.core.intensity import Normalizer
from napari_duet.core.progress import run_to_end
from napari_duet.denoisplit import SplitModel
from napari_duet.denoisplit._lvae import LadderVAE
from napari_duet.denoisplit._predict import tiled_sampling


def _local_net(batch_sizes: list[int]):
    """A 3x3-neighbourhood 'network': tiled output must equal untiled where kept."""
    kernel = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3) / 36.0

    def fn(x):
        batch_sizes.append(x.shape[0])
        y = torch.nn.functional.conv2d(x, kernel, padding=1)
        return torch.cat([y, x**2], dim=1)

    return fn


def _run(frames, **kw):
    sizes: list[int] = []
    out = run_to_end(tiled_sampling(_local_net(sizes), frames, device="cpu", out_channels=2,
                                    return_samples=False, **kw))
    return out, sizes


@pytest.mark.parametrize("shape", [(1, 70, 45), (2, 33, 97)])
def test_tiled_equals_untiled_in_kept_regions(shape):
    frames = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    whole, _ = _run(frames, samples=1, tile=512, overlap=0, multiple=8, batch_size=4)
    tiled, sizes = _run(frames, samples=1, tile=16, overlap=4, multiple=8, batch_size=3)
    np.testing.assert_allclose(tiled["mean"], whole["mean"], atol=1e-6)
    assert max(sizes) <= 3 and len(sizes) > 5


def test_memory_stays_bounded_with_many_samples():
    frames = np.random.default_rng(0).normal(size=(1, 256, 256)).astype(np.float32)
    tracemalloc.start()
    out, sizes = _run(frames, samples=20, tile=32, overlap=8, multiple=8, batch_size=16)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert max(sizes) <= 16
    assert out["samples"] is None
    # Outputs are 2 x 2 x 256² float32 (1 MiB); 20 samples of the image would be 10 MiB.
    assert peak < 4 * 2**20


def _tiny_model(cfg, patch=16) -> SplitModel:
    torch.manual_seed(0)
    net = LadderVAE(cfg, patch).eval()
    return SplitModel(net, cfg, patch_size=patch, input_norm=Normalizer(10.0, 5.0),
                      target_norms=[Normalizer(4.0, 2.0), Normalizer(6.0, 3.0)])


def test_model_predict_shapes_for_odd_sizes_and_stacks(tiny_config):
    model = _tiny_model(tiny_config)
    img = np.random.default_rng(0).uniform(0, 20, size=(37, 53)).astype(np.float32)
    res = model.predict(img, samples=3, tile=16, batch_size=5, return_samples=True)
    assert res.mean.shape == (2, 37, 53) and res.std.shape == (2, 37, 53)
    assert res.samples.shape == (3, 2, 37, 53)
    np.testing.assert_allclose(res.samples.mean(0), res.mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.samples.std(0, ddof=1), res.std, rtol=1e-3, atol=1e-4)
    assert not res.calibrated
    stack = np.stack([img, img[::-1]])
    res = model.predict(stack, samples=2, tile=32)
    assert res.mean.shape == (2, 2, 37, 53) and res.samples is None
    report = res.report()
    assert report["samples"] == 2 and set(report["channels"]) == {"A", "B"}


def test_deterministic_predict_is_reproducible_and_progress_counts_tiles(tiny_config):
    model = _tiny_model(tiny_config)
    img = np.random.default_rng(1).uniform(0, 20, size=(40, 40)).astype(np.float32)
    gen = model.iter_predict(np.stack([img, img]), deterministic=True, tile=16, overlap=4)
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            res = stop.value
            break
    assert progress[-1].done == progress[-1].total == 2 * 25  # 40 padded to 40: 5x5 tiles
    assert np.all(res.std == 0)
    again = model.predict(img, deterministic=True, tile=16, overlap=4)
    np.testing.assert_allclose(again.mean, res.mean[:, 0], atol=1e-5)


def test_predict_replaces_camera_hot_pixels_in_its_input_as_training_does(tiny_config):
    """A hot pixel in the image to split is replaced (and counted) before the network
    sees it, as in training: the split equals that of the image without it, except
    where the median differs from the original pixel, and the report records it."""
    from napari_duet.denoisplit._data import replace_hot_pixels

    model = _tiny_model(tiny_config)
    img = np.random.default_rng(3).poisson(10.0, (48, 48)).astype(np.float32)
    hot = img.copy()
    hot[20, 30] = 50_000.0
    res = model.predict(hot, deterministic=True)
    fixed = replace_hot_pixels(hot[None])[0][0]
    ref = model.predict(fixed, deterministic=True)
    np.testing.assert_array_equal(res.mean, ref.mean)
    assert res.info["hot_pixels_replaced"] == 1 and res.report()["hot_pixels_replaced"] == 1
    assert res.mean.max() < 1000  # the hot pixel's 50 000 is not split into the output
    assert model.predict(img, deterministic=True).info["hot_pixels_replaced"] == 0


def test_predict_rejects_bad_arguments(tiny_config):
    model = _tiny_model(tiny_config)
    with pytest.raises(DuetInputError):
        model.predict(np.zeros((2, 2, 8, 8)))
    with pytest.raises(DuetInputError):
        model.predict(np.zeros((16, 16)), samples=0)
    with pytest.raises(DuetInputError):
        model.predict(np.zeros((16, 16)), tile=16, overlap=8)
    with pytest.raises(DuetInputError, match="1 x 1 px are too small"):
        model.predict(np.ones((1, 1)))


@pytest.mark.parametrize("shape", [(37, 53), (2, 37, 53)])
def test_samples_streamed_to_a_file_equal_those_in_memory(tiny_config, tmp_path, shape):
    """``samples_out`` (a memory-mapped TIFF) gets the same samples as the in-memory path,
    in the output scale, and is what the result holds."""
    import tifffile

    model = _tiny_model(tiny_config)
    img = np.random.default_rng(2).uniform(0, 20, size=shape).astype(np.float32)
    kw = dict(samples=3, tile=16, batch_size=5, return_samples=True, seed=4)
    ref = model.predict(img, **kw)
    sink = tifffile.memmap(tmp_path / "s.tif", shape=(3, 2, *shape), dtype=np.float32,
                           photometric="minisblack")
    res = model.predict(img, samples_out=sink, **kw)
    assert res.samples is sink
    sink.flush()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s.tif"), ref.samples)
    np.testing.assert_array_equal(res.mean, ref.mean)
    np.testing.assert_array_equal(res.std, ref.std)


@pytest.mark.parametrize("shape", [(96, 96), (512, 384), (1024, 1024), (300, 5000)])
def test_default_tile_computes_fewest_pixels_and_fits_memory(shape):
    from napari_duet.core.tiling import count_tiles
    from napari_duet.denoisplit._model import default_batch_size, default_tile

    dev = torch.device("cpu")
    tile = default_tile(shape, 64, 32, 8, 64, dev)
    assert tile % 8 == 0 and 128 <= tile <= 1024

    def work(t):
        return count_tiles(shape, t, 32) * min(t, shape[0]) * min(t, shape[1])

    assert work(tile) <= work(128)  # never worse than the paper's 2 x patch tiles
    if max(shape) <= 512:
        assert work(tile) == shape[0] * shape[1]  # fits: computed untiled
    side = min(tile, max(shape))
    assert default_batch_size(side, 64, dev) * 48 * 64 * side * side <= 1e9
