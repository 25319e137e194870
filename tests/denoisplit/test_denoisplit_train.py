"""Training: the split beats the constant split, calibration helps, models round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_duet import DuetInputError
from napari_duet.core.metrics import range_invariant_psnr
from napari_duet.denoisplit import (
    SplitConfig,
    SplitModel,
    SplitTrainProgress,
    TrainConfig,
    fit_noise_model,
    iter_train,
    train,
)
from napari_duet.denoisplit._calibration import calibration_stats
from napari_duet.denoisplit._synthetic import synthetic_split


def _fast(**kw) -> TrainConfig:
    base = dict(epochs=1, patch_size=16, batch_size=4, steps_per_epoch=3, device="cpu",
                calib_samples=2, log_every=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    d = synthetic_split((96, 96), seed=3)
    nms = [fit_noise_model(c, n, iterations=150, batch_size=10_000, device="cpu")
           for c, n in ((d.clean_a, d.noisy_a), (d.clean_b, d.noisy_b))]
    cfg = SplitConfig(n_levels=2, z_dims=8, filters=16, dropout=0.0)
    tc = TrainConfig(epochs=5, patch_size=32, batch_size=8, steps_per_epoch=40, device="cpu",
                     calib_samples=8, lr=3e-3, log_every=1000)
    model = train([d.noisy_a, d.noisy_b], cfg, tc, noise_models=nms).model
    inp = d.noisy_a + d.noisy_b
    res = model.predict(inp, samples=8, tile=32, batch_size=32)
    return d, model, res


@pytest.mark.slow
def test_split_beats_constant_split(trained):
    d, model, res = trained
    inp = d.noisy_a + d.noisy_b
    share = d.noisy_a.mean() / inp.mean()
    for c, (clean, s) in enumerate(((d.clean_a, share), (d.clean_b, 1 - share))):
        split = range_invariant_psnr(res.mean[c], clean)
        const = range_invariant_psnr(inp * s, clean)
        assert split > const + 1.5, (c, split, const)


@pytest.mark.slow
def test_calibration_reduces_miscalibration_against_clean_truth(trained):
    d, model, res = trained
    assert res.calibrated and model.calibration["noise_aware"]
    for c, clean in enumerate((d.clean_a, d.clean_b)):
        raw_std = res.std[c] / model.calibration["scalar"][c]
        before = calibration_stats(res.mean[c], raw_std, clean)["ence"]
        after = calibration_stats(res.mean[c], res.std[c], clean)["ence"]
        assert after < before, (c, before, after)


@pytest.mark.slow
def test_save_load_roundtrip(trained, tmp_path):
    d, model, _ = trained
    path = model.save(tmp_path / "m.duet")
    back = SplitModel.load(path, device="cpu")
    meta = back.metadata()
    assert meta["noise_models"] and meta["calibration"]
    assert meta["training_data_shape"] == [96, 96]
    assert meta["channel_names"] == ["A", "B"]
    img = d.noisy_a + d.noisy_b
    a = model.predict(img, deterministic=True, tile=32)
    b = back.predict(img, deterministic=True, tile=32)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-5)
    c = model.predict(img, samples=3, tile=32, seed=5)
    e = back.predict(img, samples=3, tile=32, seed=5)
    np.testing.assert_allclose(c.std, e.std, atol=1e-5)


def test_iter_train_progress_and_cancel(tiny_config, tmp_path, monkeypatch):
    """Progress after every step; closing the generator (Cancel) stops training at once:
    no further step, no validation, no checkpoint, no calibration."""
    from napari_duet.denoisplit import _train

    steps, validated = [], []
    real_make = _train.make_train_step

    def counting_make(*args, **kwargs):
        step = real_make(*args, **kwargs)

        def counted():
            steps.append(1)
            return step()

        return counted

    monkeypatch.setattr(_train, "make_train_step", counting_make)
    monkeypatch.setattr(_train, "calibrate_on", lambda *a, **k: validated.append(1))
    d = synthetic_split((40, 40), seed=0)
    ckpt = tmp_path / "best.duet"
    gen = iter_train([d.noisy_a, d.noisy_b], tiny_config,
                     _fast(epochs=3, likelihood="gaussian", kl="musplit",
                           checkpoint_path=str(ckpt)))
    first = next(gen)
    assert isinstance(first, SplitTrainProgress) and first.stage == "train"
    assert not hasattr(first, "phase")  # one name for the stage
    assert (first.epoch, first.step, first.epochs, first.steps_per_epoch) == (1, 1, 3, 3)
    assert (first.done, first.total) == (1, 9) and 0.05 < first.fraction < 0.2
    assert set(first.losses) == {"loss", "recons", "kl"} and first.val_loss is None
    second = next(gen)
    assert (second.done, len(steps)) == (2, 2)  # one step per progress state
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)
    assert len(steps) == 2 and not ckpt.exists() and validated == []


def test_gaussian_likelihood_trains_and_calibrates(tiny_config):
    d = synthetic_split((40, 40), seed=0)
    seen = []
    result = train([d.noisy_a, d.noisy_b], tiny_config, _fast(likelihood="gaussian", kl="musplit"),
                   callback=seen.append)
    model = result.model
    rep = result.report()
    assert rep["method"] == "denoisplit" and len(rep["history"]) == 1
    assert rep["history"][0]["val_loss"] == seen[-2].val_loss
    assert model.config.predict_logvar and model.noise_models is None
    assert seen[-1].stage == "calibrate" and np.isfinite(seen[-2].val_loss)
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] >= 0.95
    assert model.calibration is not None and not model.calibration["noise_aware"]
    res = model.predict(d.noisy_a + d.noisy_b, samples=2, tile=16)
    assert res.noise_std is not None and np.all(res.noise_std > 0)


def test_bootstraps_noise_models_when_missing(tiny_config, tmp_path):
    d = synthetic_split((2, 32, 32), seed=0)
    ckpt = tmp_path / "best.duet"
    model = train([d.noisy_a, d.noisy_b], tiny_config,
                  _fast(calibrate=False, checkpoint_path=str(ckpt)),
                  bootstrap_kwargs={"denoiser": "smooth", "iterations": 30,
                                    "batch_size": 2000}).model
    assert len(model.noise_models) == 2
    assert model.noise_models[0].info["source"] == "bootstrap:smooth"
    assert model.calibration is None
    assert SplitModel.load(ckpt).metadata()["noise_models"]


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "patch"),
    [((32, 32), (32, 30), 16), ((20, 40), (20, 40), 32), ((32, 32), (32, 32), 14),
     ((2, 2, 32, 32), (2, 2, 32, 32), 16)],
)
def test_bad_input_raises(tiny_config, a_shape, b_shape, patch):
    with pytest.raises(DuetInputError):
        next(iter_train([np.ones(a_shape), np.ones(b_shape)], tiny_config,
                        _fast(patch_size=patch, likelihood="gaussian")))


def test_train_config_validation():
    with pytest.raises(DuetInputError):
        TrainConfig(likelihood="poisson")
    with pytest.raises(DuetInputError):
        TrainConfig(kl="analytic")
    with pytest.raises(DuetInputError):
        TrainConfig(epochs=0)
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_flat_grads_match_per_tensor_clipping_and_zero_non_finite_batches():
    from napari_duet.denoisplit._train import FlatGrads

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(3, 1, 9, 9).to(memory_format=torch.channels_last)
    ref = [q.detach().clone() for q in net.parameters()]
    loss = (net(x) ** 2).sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
    expected = [q.grad.clone() for q in net.parameters()]

    grads = FlatGrads(net.parameters())
    assert net[0].weight.grad.is_contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # accumulates into the same buffer after zero()
        grads.zero()
        loss = (net(x) ** 2).sum()
        loss.backward()
        assert bool(grads.sanitise(loss, 0.5))
    for q, e in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(q.grad, e)
    grads.zero()
    bad = (net(x) ** 2).sum() * float("nan")
    bad.backward()
    assert not bool(grads.sanitise(bad, 0.5))
    assert float(grads.flat.abs().sum()) == 0.0
    assert all(torch.equal(q, r) for q, r in zip(net.parameters(), ref, strict=True))


@pytest.mark.parametrize("average", [0.0, 0.9])
def test_checkpoint_resumes_to_the_same_model_as_an_uninterrupted_run(tmp_path, average):
    """Stopped after epoch 1 and resumed from the checkpoint, training ends with the same
    weights as a run that was never stopped (CPU, same seed), also with the weights'
    moving average (which the checkpoint carries)."""
    d = synthetic_split((40, 40), seed=0)
    cfg = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.1)  # dropout: RNG in training
    kw = dict(likelihood="gaussian", kl="musplit", calibrate=False, steps_per_epoch=3,
              weight_average=average)
    whole = train([d.noisy_a, d.noisy_b], cfg, _fast(epochs=3, **kw))  # no checkpoint
    full = whole.model
    ckpt = tmp_path / "run.duet"
    first = train([d.noisy_a, d.noisy_b], cfg,
                  _fast(epochs=1, checkpoint_path=str(ckpt), resume=True, **kw))
    assert len(first.history) == 1
    assert SplitModel.load(ckpt).metadata()["training"]["checkpoint_epoch"] >= 1  # a model
    seen = []
    rest = train([d.noisy_a, d.noisy_b], cfg,
                 _fast(epochs=3, checkpoint_path=str(ckpt), resume=True, **kw),
                 callback=seen.append)
    assert {p.epoch for p in seen if p.stage == "train"} == {2, 3}  # epoch 1 not redone
    assert [h["epoch"] for h in rest.history] == [1, 2, 3]
    # Every epoch validated the same weights (the moving average's, where there is one).
    assert [h["val_loss"] for h in rest.history] == [h["val_loss"] for h in whole.history]
    for k, v in full.net.state_dict().items():
        assert torch.equal(v, rest.model.net.state_dict()[k]), k
    # Another run's checkpoint is refused, naming what differs.
    with pytest.raises(DuetInputError, match="another run .*train_config"):
        next(iter_train([d.noisy_a, d.noisy_b], cfg,
                        _fast(epochs=3, checkpoint_path=str(ckpt), resume=True, lr=5e-3, **kw)))
