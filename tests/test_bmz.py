"""bioimage.io export (``duet export-bmz``): the package passes bioimage.io's own test, offline.

``bioimageio.core.test_model`` reloads the package from the zip, builds the
network from the packaged source file (no napari-duet code), runs the test
input and compares with the test output, which napari-duet's own predictor
produced; it also runs the model on other input sizes.
"""

from __future__ import annotations

import ast
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_duet.cli import main
from napari_duet.core.synthetic import synthetic_volume

pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed "
                    "(pip install 'napari-duet[bmz]' or the testing extra)")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any attempt of bioimage.io to reach the network fails the test."""
    import httpx

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    for name in ("request", "get", "head", "stream"):
        monkeypatch.setattr(httpx, name, no_network)


def _model(tmp_path: Path, context: str, vol: np.ndarray | None = None, width: int = 4) -> Path:
    from napari_duet.nsn2n import NSN2NConfig, train

    if vol is None:
        vol = synthetic_volume((6, 40, 40))[0] * 800 + 120  # not in [0, 1]: units matter
    cfg = NSN2NConfig(context=context, iterations=8, width=width, depth=1, crop_size=32,
                      batch_size=2, preview_every=0, device="cpu")
    return train(vol, axis=0, config=cfg).model.save(tmp_path / f"stack {context}.duet")


def _white_noise_volume(shape=(6, 40, 40)) -> np.ndarray:
    """The sample's cells with white noise (the blind-spot network's noise), in raw units.

    On it the blind-spot blend weight k is about 0.2: both the estimate and the
    noisy pixel count, so an error in either shows in the output.
    """
    clean = synthetic_volume(shape)[1]
    noise = np.random.default_rng(0).normal(0, 0.15, clean.shape).astype(np.float32)
    return (clean + noise) * 800 + 120


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny 2.5D model and its package (written once for the module)."""
    from napari_duet.core.devices import torch_threads

    tmp = tmp_path_factory.mktemp("bmz")
    with torch_threads(1):
        model = _model(tmp, "2.5d")
        zip_path = tmp / "stack.zip"
        assert main(["export-bmz", str(model), "-o", str(zip_path), "-q"]) == 0
    return model, zip_path


def _test_model(path: Path):
    from bioimageio.core import test_model

    return test_model(path)


def test_exported_package_passes_bioimageio_test(exported, one_torch_thread):
    _, zip_path = exported
    summary = _test_model(zip_path)
    assert summary.status == "passed", summary.format()
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert {"rdf.yaml", "weights.pt", "nsn2n_network.py", "test_input.npy", "test_output.npy",
            "cover.png", "README.md", "model.duet"} <= names


def test_package_contents(exported):
    import yaml

    model, zip_path = exported
    with zipfile.ZipFile(zip_path) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        assert zf.read("model.duet") == model.read_bytes()
        source = zf.read("nsn2n_network.py").decode()
        test_in = np.load(zf.open("test_input.npy"))
        test_out = np.load(zf.open("test_output.npy"))
    assert rdf["format_version"].startswith("0.5")
    assert rdf["cite"][0]["doi"] == "10.48550/arXiv.2411.10831"
    assert rdf["config"]["napari_duet"]["kind"] == "nsn2n"
    kwargs = rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]
    # The 2.5D network's second stage (3D windows, noise spectrum) is packaged too; the
    # export refused a module that differs from the predictor.
    assert kwargs["arch"] == "nsn2n-context" and kwargs["wiener"] == "bmw"
    # The architecture file runs without napari-duet: it imports torch only.
    modules = {n.module if isinstance(n, ast.ImportFrom) else a.name
               for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import | ast.ImportFrom)
               for a in n.names}
    assert modules <= {"__future__", "math", "torch", "torch.nn"}
    # (batch, z, y, x); the output denoises: closer to a smooth version than the input.
    assert test_in.shape == test_out.shape and test_in.ndim == 4 and test_in.shape[1] >= 3
    assert np.std(np.diff(test_out, axis=-1)) < np.std(np.diff(test_in, axis=-1))


def test_wrong_test_output_fails_the_check(exported, tmp_path, one_torch_thread):
    """The check compares outputs: a package whose test output is off does not pass."""
    _, zip_path = exported
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "test_output.npy":
                arr = np.load(src.open(item.filename))
                arr[..., ::7, :] += 0.05 * np.ptp(arr)  # 1 row in 7: far above 200 ppm
                buf = io.BytesIO()
                np.save(buf, arr)
                data = buf.getvalue()
            dst.writestr(item, data)
    summary = _test_model(bad)
    assert summary.status != "passed"
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert failed and all("Reproduce test outputs" in n for n in failed), failed


def test_2d_model_exports_and_passes(tmp_path, one_torch_thread):
    model = _model(tmp_path, "2d")
    out = tmp_path / "m2d.zip"
    assert main(["export-bmz", str(model), "-o", str(out), "-q"]) == 0
    summary = _test_model(out)
    assert summary.status == "passed", summary.format()


def test_blind_model_exports_and_passes(tmp_path, one_torch_thread):
    """The blind-spot network is packaged as itself (not as a 2D U-Net) and reproduces."""
    import tifffile
    import yaml

    from napari_duet.nsn2n import NSN2NModel

    model = _model(tmp_path, "blind", vol=_white_noise_volume(), width=8)
    assert NSN2NModel.load(model).is_blind
    tifffile.imwrite(tmp_path / "white.tif", _white_noise_volume((8, 48, 48)))
    out = tmp_path / "blind.zip"
    assert main(["export-bmz", str(model), "-o", str(out), "-q",
                 "--test-input", str(tmp_path / "white.tif")]) == 0
    summary = _test_model(out)
    assert summary.status == "passed", summary.format()
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        readme = zf.read("README.md").decode()
        test_in = np.load(zf.open("test_input.npy"))
        test_out = np.load(zf.open("test_output.npy"))
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    loaded = NSN2NModel.load(model)
    expected = {"arch": "nsn2n-blind", "width": 8, "depth": 1, "tta": True,
                "wiener": loaded.wiener_mode}
    if loaded.mix_weights is not None:  # the check's weighted sum of the stages
        expected["mix_weights"] = loaded.mix_weights
    assert arch["kwargs"] == expected
    assert "blind-spot" in rdf["description"] and "blind-spot" in readme
    # White noise: the output is smoother than the input.
    assert test_in.shape == (1, 8, 48, 48)
    assert np.std(np.diff(test_out, axis=-1)) < 0.8 * np.std(np.diff(test_in, axis=-1))


@pytest.mark.parametrize(("tta", "wiener"), [(False, "off"), (True, "off"), (False, "on"),
                                             (False, "3d2"), (False, "bm"),
                                             (False, "bmht-light"), (False, "mix")])
def test_standalone_blind_module_equals_the_predictor(tta, wiener, one_torch_thread):
    """``NSN2NDenoiser(arch="nsn2n-blind")`` computes what ``NSN2NModel.predict`` computes:
    hidden-pixel filling with mirrored borders (odd sides), mirrored neighbour slices
    (3 and 5 slices), every grid phase, the flips/rotations, the blend with the
    slice's noise level and the Wiener stage (spliced into the packaged source)."""
    import dataclasses

    import torch

    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel
    from napari_duet.nsn2n._blind import BlindNet
    from napari_duet.nsn2n._bmz import standalone_module

    torch.manual_seed(0)
    net = BlindNet(width=8, depth=2)
    torch.nn.init.normal_(net.unet.head.weight, std=0.1)  # not the identity start
    training = {}
    if wiener == "mix":  # only the check records it: every kind of stage, one weight 0
        training = {"wiener": {"mode": "mix", "use": True, "slices": [[0, 2]], "weights": {
            "off": 0.3, "2d": -0.1, "3d": 0.2, "3d2": 0.0, "bm": 0.25, "bmht": -0.15,
            "bm-light": 0.3, "bmht-light": 0.2}}}
    cfg = dataclasses.replace(NSN2NConfig(context="blind", width=8, depth=2), tta=tta,
                              wiener="auto" if wiener == "mix" else wiener)
    model = NSN2NModel(net, cfg, [], training, device="cpu")
    assert model.wiener_mode == ("mix" if wiener == "mix" else cfg.wiener.replace("on", "2d"))
    assert model.use_wiener == (wiener != "off")
    module = standalone_module(model)
    vol = _white_noise_volume((5, 27, 21))
    for crop in (vol, vol[1:4, :, :19]):
        expected = model.predict(crop, axis=0).denoised
        with torch.no_grad():
            got = module(torch.from_numpy(np.ascontiguousarray(crop)[None]))[0].numpy()
        span = np.percentile(crop, 99.9) - np.percentile(crop, 0.1)
        assert np.abs(got - expected).max() < 1e-5 * span
        # The network matters: the output is neither the input nor its 4-neighbour mean.
        assert np.abs(expected - crop).max() > 0.05 * span


def test_denoisplit_mmse_exports_and_passes(tmp_path, one_torch_thread):
    """The bundled demo model, its MMSE of 4 seeded samples: bioimage.io reproduces it."""
    import yaml

    from napari_duet.core.bmz import duet_package_entry
    from napari_duet.denoisplit._demo import split_demo_model_path

    out = tmp_path / "split.zip"
    assert main(["export-bmz", str(split_demo_model_path()), "-o", str(out), "-q",
                 "--samples", "4"]) == 0
    summary = _test_model(out)
    assert summary.status == "passed", summary.format()
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        source = zf.read("denoisplit_network.py").decode()
        test_out = np.load(zf.open("test_output.npy"))
    assert "napari_duet" not in source.replace("napari_duet.denoisplit.bmz_network", "")
    assert rdf["cite"][0]["doi"] == "10.48550/arXiv.2403.11854"
    assert rdf["outputs"][0]["postprocessing"][0]["id"] == "scale_linear"
    assert test_out.shape[:2] == (1, 2)
    assert duet_package_entry(out) == "model.duet"


def test_model_names_follow_bioimageio_rules():
    from napari_duet import DuetInputError
    from napari_duet.core.bmz import model_name

    assert model_name(None, "denoiSplit", "run:3 é") == "denoiSplit run-3 -"
    assert len(model_name(None, "NS-N2N denoiser", "x" * 300)) == 128  # cut, not refused
    assert model_name("My model (v2)", "denoiSplit", "ignored") == "My model (v2)"
    for bad in ("a/b model", "abc", "x" * 129):
        with pytest.raises(DuetInputError, match="5 to 128"):
            model_name(bad, "denoiSplit", "stem")


def test_packaged_unet_is_napari_duets_unet(one_torch_thread):
    """The packaged NS-N2N architecture file carries napari-duet's own U-Net source: with the
    same weights it computes what ``networks.unet.UNet2D`` computes, without napari-duet."""
    import torch

    from napari_duet.core.networks.unet import UNet2D
    from napari_duet.nsn2n._bmz import network_source

    source = network_source()
    assert "napari_duet" not in (source.replace("napari_duet.core.networks.unet", "")
                                 .replace("napari_duet.core.wiener", "")
                                 .replace("napari_duet.core.blockmatch", "")
                                 .replace("napari_duet.core.noiselevel", "")
                                 .replace("napari_duet.nsn2n._context", ""))
    namespace: dict = {"__name__": "packaged"}
    exec(compile(source, "nsn2n_network.py", "exec"), namespace)
    torch.manual_seed(0)
    ours = UNet2D(1, 1, width=4, depth=2, residual=True).eval()
    torch.nn.init.normal_(ours.head.weight)  # not the identity start: the network matters
    packaged = namespace["UNet2D"](1, 1, width=4, depth=2, residual=True).eval()
    packaged.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 1, 21, 19)
    with torch.no_grad():
        assert torch.equal(packaged(x), ours(x))
        assert not torch.equal(ours(x), x)
    # ... and its Wiener stage
    from napari_duet.core.wiener import dct_wiener

    noisy, pilot = torch.randn(2, 23, 17)
    assert torch.equal(namespace["dct_wiener"](noisy, pilot, 0.7), dct_wiener(noisy, pilot, 0.7))
    from napari_duet.core.wiener import dct_wiener_stack

    noisy, pilot = torch.randn(2, 5, 23, 17)
    assert torch.equal(namespace["dct_wiener_stack"](noisy, pilot, [0.7] * 5),
                       dct_wiener_stack(noisy, pilot, [0.7] * 5))
    from napari_duet.core.blockmatch import two_step

    assert all(torch.equal(a, b) for a, b in zip(
        namespace["two_step"](noisy, [0.7] * 5, {"bm": pilot, "ht": None, "l": None},
                              {"l": namespace["light_mu2"]()}).values(),
        two_step(noisy, [0.7] * 5, {"bm": pilot, "ht": None, "l": None}, {"l": 0.4}).values(),
        strict=True))
    # ... and the engine's choice of neighbouring slices at the volume's ends
    from napari_duet.nsn2n._context import GAP_IN, SELF_IN, neighbour_index

    cases = [(i, d, n, allowed) for n in (1, 2, 3, 5) for i in range(n)
             for d in (-2, -1, 0, 1, 2) for allowed in (GAP_IN, SELF_IN, (-1, 1))]
    assert [namespace["neighbour_index"](*c) for c in cases] == [
        neighbour_index(*c) for c in cases]


def test_reader_opens_exported_zip_like_the_model(exported, tmp_path):
    from napari_duet._napari._reader import get_reader, open_model_file
    from napari_duet.core.bmz import duet_model_in_package

    model, zip_path = exported
    # Both open with the model reader (a callable that docks the widget), not a guess.
    assert get_reader(str(zip_path)) is get_reader(str(model)) is open_model_file
    extracted = duet_model_in_package(zip_path, tmp_path)
    assert extracted.read_bytes() == model.read_bytes()
    foreign = tmp_path / "other.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("rdf.yaml", "type: model\nname: someone else's\n")
    assert get_reader(str(foreign)) is None
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert get_reader(str(tmp_path / "junk.zip")) is None


def test_cli_errors_are_one_line(exported, tmp_path, capsys):
    model, _ = exported
    assert main(["export-bmz", str(model), "-o", str(tmp_path / "x.tif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".zip" in err[0]
    assert main(["export-bmz", str(tmp_path / "missing.duet")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["export-bmz", str(model), "-o", str(tmp_path / "x.zip"),
                 "--license", "NOT-A-LICENSE"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SPDX" in err[0] and len(err[0]) < 200
    assert not (tmp_path / "x.zip").exists()


def test_dropping_the_zip_loads_the_model_in_the_widget(exported, make_napari_viewer):
    from napari_duet._napari._reader import get_reader

    viewer = make_napari_viewer()
    _, zip_path = exported
    assert get_reader(str(zip_path))(str(zip_path)) == [(None,)]  # no layer
    widget = viewer.window.dock_widgets["Slice denoising (NS-N2N) (napari-duet)"]
    assert widget.model is not None and widget.model.is_context
    assert len(viewer.layers) == 0
