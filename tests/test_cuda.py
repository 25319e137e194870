"""The CUDA paths of every engine: run where a GPU is present, skipped elsewhere.

CI has no GPU; these run on a lent GPU machine (``pytest tests/test_cuda.py``).
Each checks quality or agreement with the CPU, and that a model trained on
the GPU loads and predicts on the CPU (``map_location``).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_picks_cuda():
    from napari_duet.core.devices import resolve_device

    assert resolve_device("auto").type == "cuda"


def test_self2seg_on_cuda_matches_cpu_quality():
    from napari_duet.core.metrics import dice, psnr
    from napari_duet.core.synthetic import synthetic_nuclei
    from napari_duet.self2seg import Self2SegConfig, self2seg

    s = synthetic_nuclei((128, 160), noise_sigma=30.0, seed=4)
    cfg = Self2SegConfig(max_alternations=3, seed=1)
    gpu = self2seg(s.noisy, config=cfg.replace(device="cuda"))
    cpu = self2seg(s.noisy, config=cfg.replace(device="cpu"))
    assert gpu.labels.shape == s.noisy.shape and gpu.denoised.dtype == np.float32
    d_gpu, d_cpu = dice(gpu.labels == 1, s.mask), dice(cpu.labels == 1, s.mask)
    assert d_gpu > 0.85 and abs(d_gpu - d_cpu) < 0.03
    assert psnr(gpu.denoised, s.clean, 255.0) > psnr(s.noisy, s.clean, 255.0) + 5
    again = self2seg(s.noisy, config=cfg.replace(device="cuda"))
    assert dice(again.labels == 1, gpu.labels == 1) > 0.99


def test_self2seg_mask_solver_on_cuda_matches_numpy():
    from scipy import ndimage as ndi

    from napari_duet.self2seg._solver import solve_binary

    rng = np.random.default_rng(4)
    g = (ndi.gaussian_filter(rng.normal(size=(256, 256)), 3) * 30
         + rng.normal(size=(256, 256))).astype(np.float32)
    m_np, r_np = solve_binary(g, 2.0, tol=1e-5)
    m_gpu, r_gpu = solve_binary(g, 2.0, tol=1e-5, device=torch.device("cuda"))
    assert abs(r_gpu.iterations - r_np.iterations) <= 15
    assert np.mean(m_np != m_gpu) < 1e-3


def test_noise2fast_on_cuda_denoises():
    from napari_duet.core.metrics import psnr
    from napari_duet.core.n2f import noise2fast
    from napari_duet.core.synthetic import synthetic_nuclei

    s = synthetic_nuclei((96, 97), noise_sigma=30.0, seed=2)
    den = noise2fast(s.noisy, steps=150, device="cuda", seed=0)
    assert den.shape == s.noisy.shape
    assert psnr(den, s.clean, 255.0) > psnr(s.noisy, s.clean, 255.0) + 5


def test_nsn2n_trains_on_cuda_and_loads_on_cpu(tmp_path):
    from napari_duet.core.metrics import psnr
    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel, train
    from nsn2n.nsn2n_synth import FAST, add_noise, make_clean

    clean = make_clean(z=8, y=40, x=45)
    noisy = add_noise(clean, sigma=0.1)
    res = train(noisy, axis=0, config=NSN2NConfig(**{**FAST, "device": "cuda",
                                                     "iterations": 200}))
    assert res.denoised.shape == noisy.shape
    assert psnr(res.denoised, clean, 1.0) > psnr(noisy, clean, 1.0) + 2
    path = res.model.save(tmp_path / "n.duet")
    back = NSN2NModel.load(path, device="cpu")
    on_cpu = back.predict(noisy, axis=0).denoised
    np.testing.assert_allclose(on_cpu, res.denoised, atol=2e-3)


def test_denoisplit_trains_with_amp_on_cuda_and_predicts_on_cpu(tmp_path):
    from napari_duet.denoisplit import SplitConfig, SplitModel, TrainConfig, fit_noise_model, train
    from napari_duet.denoisplit._synthetic import synthetic_split

    d = synthetic_split((96, 96), seed=3)
    nms = [fit_noise_model(c, n, iterations=150, batch_size=10_000, device="cuda")
           for c, n in ((d.clean_a, d.noisy_a), (d.clean_b, d.noisy_b))]
    cfg = SplitConfig(n_levels=2, z_dims=8, filters=16, dropout=0.0)
    tc = TrainConfig(epochs=2, patch_size=32, batch_size=8, steps_per_epoch=20, device="cuda",
                     calib_samples=4, log_every=1000)
    model = train([d.noisy_a, d.noisy_b], cfg, tc, noise_models=nms).model
    img = d.noisy_a + d.noisy_b
    gpu = model.predict(img, deterministic=True, tile=32)
    assert gpu.mean.shape == (2, 96, 96) and np.isfinite(gpu.mean).all()
    sampled = model.predict(img, samples=4, tile=32, seed=1)
    assert np.isfinite(sampled.std).all() and (sampled.std > 0).mean() > 0.9
    back = SplitModel.load(model.save(tmp_path / "s.duet"), device="cpu")
    cpu = back.predict(img, deterministic=True, tile=32)
    # bf16 autocast on the GPU against float32 on the CPU: close, not equal.
    scale = float(np.abs(cpu.mean).max())
    assert float(np.abs(cpu.mean - gpu.mean).max()) < 0.05 * scale


def test_noise_model_fit_as_cuda_graph_recovers_poisson_gaussian_std():
    from denoisplit.denoisplit_helpers import poisson_gaussian
    from napari_duet.core.noise_models import fit_noise_model

    s, x = poisson_gaussian(400_000, seed=1)
    nm = fit_noise_model(s, x, device="cuda")  # defaults: 2000 steps, graph replay
    assert nm.weight.device.type == "cpu" and nm.info["iterations"] == 2000
    sig = np.array([500.0, 2500.0, 4500.0])
    np.testing.assert_allclose(nm.std(sig), np.sqrt(10.0 * sig + 50.0**2), rtol=0.04)
    again = fit_noise_model(s, x, device="cuda")
    np.testing.assert_allclose(again.std(sig), nm.std(sig), rtol=1e-4)  # seeded
