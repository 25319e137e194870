import numpy as np
import pytest
import torch
from nsn2n_synth import add_noise, make_clean

from napari_duet import ModelFileError
from napari_duet.core.modelfile import read_model_header, save_model_file
from napari_duet.nsn2n import DenoiseResult, NSN2NModel


def test_save_load_round_trip_on_another_volume(trained, tmp_path):
    result, _ = trained
    path = result.model.save(tmp_path / "m.duet")
    loaded = NSN2NModel.load(path, device="cpu")
    # The file holds what defines the model; run-time options are the user's.
    saved = read_model_header(path)["config"]
    assert not set(saved) & {"tta", "tile", "device", "preview_every", "preview_index"}
    assert loaded.config.model_dict() == result.model.config.model_dict() == saved
    assert loaded.config.device == "cpu"
    other = (add_noise(make_clean(6, 40, 36, seed=5)) * 1000 + 200).astype(np.uint16)
    a = result.model.predict(other, axis=0)
    b = loaded.predict(other, axis=0)
    assert isinstance(b, DenoiseResult)
    np.testing.assert_array_equal(a.denoised, b.denoised)
    np.testing.assert_array_equal(a.uncertainty, b.uncertainty)
    assert b.denoised.shape == other.shape and b.denoised.dtype == np.float32
    # applied in the other volume's intensity scale
    assert abs(b.denoised.mean() - other.mean()) < 0.1 * (other.max() - other.min())
    assert loaded.training["matched_fraction"] == pytest.approx(result.matched_fraction)


def test_tta_off_gives_no_uncertainty_and_iter_denoise_reports_slices(trained):
    model = trained[0].model
    vol = add_noise(make_clean(4, 20, 20))
    assert model.predict(vol, tta=False).uncertainty is None
    gen = model.iter_predict(vol, axis=0)
    dones = [p.done for p in gen]
    assert dones == [1, 2, 3, 4]


def test_tiled_inference_matches_untiled_for_large_slices(trained):
    model = trained[0].model
    vol = add_noise(make_clean(3, 70, 90))
    full = model.predict(vol, tta=False).denoised
    model_tiled = NSN2NModel(model.net, model.config.replace(tile=48), model.normalizers)
    model_tiled.training = model.training  # the same second stage
    tiled = model_tiled.predict(vol, tta=False).denoised
    assert tiled.shape == full.shape
    # overlaps hide most seams; the border of each kept region can differ slightly
    diff = np.abs(tiled - full)
    assert diff.mean() < 0.01 * float(np.ptp(vol)) and diff.max() < 0.2 * float(np.ptp(vol))


def test_foreign_and_wrong_kind_files(tmp_path):
    junk = tmp_path / "junk.duet"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError):
        NSN2NModel.load(junk)
    other = save_model_file(tmp_path / "other.duet", kind="denoisplit", config={},
                            tensors={"w": torch.zeros(2)})
    with pytest.raises(ModelFileError, match="'denoisplit' model"):
        NSN2NModel.load(other)
    bad = save_model_file(tmp_path / "bad.duet", kind="nsn2n", config={},
                          tensors={"w": torch.zeros(2)},
                          extra={"network": {"width": 4, "depth": 1}})
    with pytest.raises(ModelFileError, match="not a usable NS-N2N model"):
        NSN2NModel.load(bad)
    with pytest.raises(ModelFileError, match="not found"):
        NSN2NModel.load(tmp_path / "missing.duet")


def test_model_files_from_before_the_25d_network_load_as_2d(tmp_path):
    """Old files: no 'context' in the config, a plain UNet2D in 'network'."""
    from nsn2n_synth import FAST

    from napari_duet.nsn2n import NSN2NConfig, train

    noisy = add_noise(make_clean(5, 24, 24))
    res = train(noisy, config=NSN2NConfig(**{**FAST, "context": "2d", "iterations": 3}))
    cfg = res.model.config.to_dict()
    del cfg["context"], cfg["budget"]  # fields that did not exist then
    cfg["iterations"] = 3
    cfg.update(tta=False, tile=64)  # old files also saved run-time options
    path = save_model_file(tmp_path / "old.duet", kind="nsn2n", config=cfg,
                           tensors=dict(res.model.net.state_dict()),
                           extra={"network": res.model.net.config(), "normalizers": []})
    old = NSN2NModel.load(path, device="cpu")
    assert old.config.context == "2d" and not old.is_context
    assert old.config.tta and old.config.tile == 512  # dropped: the defaults apply
    np.testing.assert_allclose(old.predict(noisy, tta=False).denoised,
                               res.model.predict(noisy, tta=False).denoised, atol=1e-5)


def test_25d_model_round_trip(trained, tmp_path):
    model = trained[0].model
    assert model.is_context and model.net.config()["arch"] == "nsn2n-context"
    loaded = NSN2NModel.load(model.save(tmp_path / "m.duet"), device="cpu")
    assert loaded.is_context and loaded.config.context == "2.5d"
