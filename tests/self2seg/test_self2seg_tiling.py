"""Tiled whole-image inference of the CNN experts equals untiled inference."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_duet.core.networks.n2f_cnn import N2FNet  # noqa: E402
from napari_duet.core.tiling import apply_tiled, count_tiles  # noqa: E402
from napari_duet.self2seg._experts import CNNExpert, inference_tile  # noqa: E402


def _untiled(net, img):
    with torch.inference_mode():
        return net(torch.from_numpy(np.ascontiguousarray(img[None])))[0].numpy()


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_halo_is_the_receptive_radius(depth):
    """With overlap = halo tiles are exact; one pixel less is not (so halo is the minimum)."""
    torch.manual_seed(0)
    net = N2FNet(1, 1, width=4, depth=depth).eval()
    assert net.halo == depth
    img = np.random.default_rng(1).random((1, 45, 38)).astype(np.float32)
    full = _untiled(net, img)
    run = lambda t: _untiled(net, t)  # noqa: E731
    tile = 4 * depth + 4
    assert count_tiles(img.shape[-2:], tile, depth) > 4
    exact = apply_tiled(run, img, tile=tile, overlap=depth)
    assert np.abs(exact - full).max() < 1e-5
    short = apply_tiled(run, img, tile=tile, overlap=depth - 1)
    assert np.abs(short - full).max() > 1e-4


@pytest.mark.parametrize("channels", [1, 3])
def test_expert_predictions_tiled_equal_untiled(channels):
    """Blind (checkerboard phases) and full predictions, averaged over snapshots."""
    expert = CNNExpert(channels=channels, width=8, depth=5, seed=3)
    # Trained-looking weights: perturb the initialisation a little per snapshot.
    snaps = []
    for i in range(2):
        torch.manual_seed(10 + i)
        weights = expert.net.state_dict().items()
        snaps.append({k: v + 0.05 * torch.randn_like(v) for k, v in weights})
    f = np.random.default_rng(0).random((channels, 101, 87)).astype(np.float32)  # odd sizes
    expert.tile = 10_000  # one tile: the whole image at once
    blind0, full0 = expert._predict_average(f, snaps)
    expert.tile = 24  # about 10 x 10 tiles on the full image
    assert count_tiles(f.shape[-2:], 24, expert.net.halo) >= 25
    blind1, full1 = expert._predict_average(f, snaps)
    assert blind1.shape == f.shape and full1.shape == f.shape
    assert np.abs(blind1 - blind0).max() < 1e-5
    assert np.abs(full1 - full0).max() < 1e-5
    assert np.abs(full0).max() > 1e-3  # not trivially zero


def test_tiles_bound_what_the_network_sees():
    """No forward pass gets more than one tile: memory does not grow with the image."""
    expert = CNNExpert(channels=1, width=4, depth=3, seed=0)
    expert.tile = 40
    seen = []
    forward = expert.net.forward
    expert.net.forward = lambda x: (seen.append(tuple(x.shape[-2:])), forward(x))[1]
    f = np.random.default_rng(0).random((1, 150, 130)).astype(np.float32)
    expert._predict_average(f, [])
    assert len(seen) > 10
    assert max(max(s) for s in seen) <= 40


def test_default_tile_bounds_memory():
    assert inference_tile(N2FNet(1, 1, width=16, depth=5)) == 1024
    small = inference_tile(N2FNet(1, 1, width=256, depth=2))
    assert 128 <= small < 1024 and small % 64 == 0
    # About 3 activations of width x side^2 float32 stay within the 256 MiB budget.
    assert 3 * 256 * small**2 * 4 <= 256 * 2**20
    assert CNNExpert.tile is None  # the default follows the network
