"""The ladder VAE: sizes, parameter count, variance handling, KL forms."""

from __future__ import annotations

import math

import pytest
import torch

from napari_duet import DuetInputError
from napari_duet.core.networks import count_parameters
from napari_duet.denoisplit import SplitConfig
from napari_duet.denoisplit._losses import gaussian_nll, kl_denoisplit, kl_musplit
from napari_duet.denoisplit._lvae import LadderVAE, stable_variance


def test_default_config_matches_reference_parameter_count():
    n = count_parameters(LadderVAE(SplitConfig.default(), 128))
    assert abs(n - 3.003e6) / 3.003e6 < 0.01  # reference LVAE: 3.003 M


def test_small_config_is_small():
    assert count_parameters(LadderVAE(SplitConfig.small(), 64)) < 400_000


@pytest.mark.parametrize("hw", [(16, 16), (24, 40), (48, 8)])
def test_output_and_latent_shapes(tiny_config, hw):
    net = LadderVAE(tiny_config, 16)
    out, kls = net(torch.randn(3, 1, *hw))
    assert out.shape == (3, 2, *hw)
    assert len(kls) == tiny_config.n_levels and all(k.shape == (3,) for k in kls)
    assert net.latent_shapes(hw)[0] == (tiny_config.z_dims, hw[0] // 2, hw[1] // 2)


def test_rejects_sizes_not_multiple_of_stride(tiny_config):
    net = LadderVAE(tiny_config, 16)
    with pytest.raises(ValueError):
        net(torch.randn(1, 1, 18, 16))


def test_inference_mode_skips_kl_and_mean_mode_is_deterministic(tiny_config):
    net = LadderVAE(tiny_config, 16).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        a, kl = net(x, compute_kl=False, sample=False)
        b, _ = net(x, compute_kl=False, sample=False)
        c, _ = net(x, compute_kl=False, sample=True)
    assert kl is None
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_gaussian_mode_predicts_bounded_logvar(tiny_config):
    from dataclasses import replace

    net = LadderVAE(replace(tiny_config, predict_logvar=True), 16)
    with torch.no_grad():
        out, _ = net(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 4, 16, 16)
    assert out[:, 2:].min().item() >= tiny_config.logvar_lower_bound
    assert torch.isfinite(gaussian_nll(out, torch.randn(2, 2, 16, 16)))


def test_stable_variance_is_continuous_and_linear_above_zero():
    lv = torch.tensor([-30.0, -1.0, -1e-4, 0.0, 1e-4, 5.0, 1e4])
    v = stable_variance(lv)
    assert torch.isfinite(v).all()
    assert float(v[2]) == pytest.approx(float(v[4]), abs=1e-3)
    assert float(v[5]) == pytest.approx(6.0, rel=1e-5)
    assert float(v[1]) == pytest.approx(math.exp(-1.0), rel=1e-4)


def test_kl_forms():
    kls = [torch.tensor([0.5, 3.0]), torch.tensor([10.0, 20.0])]
    # denoiSplit: free bits per sample (0.5 -> 1.0) before the batch mean, summed, / H·W.
    assert float(kl_denoisplit(kls, 4, free_bits=1.0)) == pytest.approx((2.0 + 15.0) / 4)
    assert float(kl_denoisplit(kls, 4, free_bits=0.0)) == pytest.approx((1.75 + 15.0) / 4)
    # μSplit: each level per latent element, levels averaged.
    assert float(kl_musplit(kls, [10, 5])) == pytest.approx((1.75 / 10 + 15.0 / 5) / 2)


def test_denoisplit_kl_weighs_fine_levels_more(tiny_config):
    """Same per-element KL everywhere: denoiSplit's sum gives the finest level most weight."""
    sizes = [4 * 8 * 8, 4 * 4 * 4]
    kls = [torch.full((2,), 0.1 * n) for n in sizes]
    assert float(kl_musplit(kls, sizes)) == pytest.approx(0.1)
    assert float(kl_denoisplit(kls, 256, free_bits=0.0)) == pytest.approx(0.1 * sum(sizes) / 256)


def test_config_validation_and_roundtrip():
    with pytest.raises(DuetInputError):
        SplitConfig(n_levels=0)
    with pytest.raises(DuetInputError):
        SplitConfig(dropout=1.5)
    with pytest.raises(DuetInputError):
        SplitConfig.preset("huge")
    cfg = SplitConfig.small()
    assert SplitConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(DuetInputError):
        SplitConfig.from_dict({"bogus": 1})
