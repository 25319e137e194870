import numpy as np
import pytest
import torch

from napari_duet.core.networks import count_parameters
from napari_duet.core.networks.unet import UNet2D, predict_2d


@pytest.mark.parametrize("shape", [(1, 1, 37, 50), (2, 1, 8, 8), (1, 1, 5, 3)])
def test_any_size_is_accepted(shape):
    net = UNet2D(1, 2, width=4, depth=3)
    assert net(torch.rand(shape)).shape == (shape[0], 2, *shape[2:])


def test_residual_starts_as_identity_and_width_scales_parameters():
    net = UNet2D(1, 1, width=4, depth=2, residual=True)
    x = torch.rand(1, 1, 20, 24)
    assert torch.equal(net(x), x)
    assert count_parameters(UNet2D(width=16, depth=2)) > 3 * count_parameters(
        UNet2D(width=8, depth=2))
    assert UNet2D(**net.config()).config() == net.config()


def test_predict_2d_tiles_large_images():
    torch.manual_seed(0)
    net = UNet2D(1, 1, width=4, depth=1).eval()
    img = np.random.default_rng(0).random((70, 150)).astype(np.float32)
    whole = predict_2d(net, img, tile=512)
    tiled = predict_2d(net, img, tile=64, overlap=16)
    assert whole.shape == img.shape and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
