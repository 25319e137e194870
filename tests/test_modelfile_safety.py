"""Model files are untrusted input: checked before anything large is built (issue 12).

Hostile files are made from real small saved models by rewriting their JSON
header (sizes that would build networks of many gigabytes, NaN or zero
scales) or their tensors (NaN weights).  Loading them must raise
ModelFileError naming what is wrong, quickly and without large allocations;
good files still load and predict the same.  Also: model files follow the
umask, and JSON reports are strict JSON.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_duet import ModelFileError
from napari_duet.cli import main
from napari_duet.core.intensity import Normalizer
from napari_duet.core.io import write_json
from napari_duet.core.modelfile import save_model_file
from napari_duet.core.noise_models import GaussianMixtureNoiseModel
from napari_duet.denoisplit import SplitConfig, SplitModel
from napari_duet.denoisplit._lvae import LadderVAE
from napari_duet.nsn2n import NSN2NConfig, NSN2NModel
from napari_duet.nsn2n._context import ContextNet

NAN = float("nan")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ small real models
def _noise_model(seed: int) -> GaussianMixtureNoiseModel:
    gen = torch.Generator().manual_seed(seed)
    weight = 0.1 * torch.randn(9, 2, generator=gen)
    weight[3:6, 1] = math.log(20.0)
    return GaussianMixtureNoiseModel(weight, 0.0, 20.0, 0.25)


def _split_model() -> SplitModel:
    torch.manual_seed(0)
    cfg = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0)
    net = LadderVAE(cfg, 16).eval()
    return SplitModel(net, cfg, patch_size=16, input_norm=Normalizer(10.0, 5.0),
                      target_norms=[Normalizer(4.0, 2.0), Normalizer(6.0, 3.0)],
                      noise_models=[_noise_model(1), _noise_model(2)],
                      calibration={"scalar": [1.5, 0.7], "linear": [[1.2, 0.1], [0.8, 0.0]]})


def _nsn2n_model() -> NSN2NModel:
    torch.manual_seed(0)
    net = ContextNet(width=4, depth=1)
    torch.nn.init.normal_(net.unet.head.weight, std=0.1)  # not the identity
    cfg = NSN2NConfig(width=4, depth=1, device="cpu", tta=False)
    return NSN2NModel(net, cfg, [Normalizer(10.0, 5.0)], {"note": "test"}, device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "denoisplit": _split_model().save(d / "split.duet"),
        "nsn2n": _nsn2n_model().save(d / "nsn2n.duet"),
        "noise_model": _noise_model(3).save(d / "nm.duet"),
    }


def _rewrite(src, dst, edit):
    """Copy a model file, letting ``edit(config, extra, tensors)`` change it in place."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config, extra = json.loads(meta["config"]), json.loads(meta["extra"])
    edit(config, extra, tensors)
    # json.dumps writes NaN/Infinity tokens, as an old writer (or an attacker) would.
    meta["config"], meta["extra"] = json.dumps(config), json.dumps(extra)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _set(section: str, path: tuple, value):
    def edit(config, extra, tensors):
        node = config if section == "config" else extra
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _nan_tensor(name: str):
    def edit(config, extra, tensors):
        t = tensors[name].clone()
        t.view(-1)[0] = NAN
        tensors[name] = t
    return edit


def _largest_split_network(config, extra, tensors):
    """Every size at the largest value a header may name: the slowest meta build."""
    config.update(n_levels=7, z_dims=1024, filters=1024, blocks_per_level=8,
                  multiscale_count=7, n_channels=4, predict_logvar=True)
    extra.update(patch_size=4096, noise_models=None)


# (engine, edit, text the error must contain)
HOSTILE = {
    # sizes: within the config's own bounds but not what the file holds ...
    "nsn2n_width512_depth6": ("nsn2n", _set("extra", ("network",),
                                            {"arch": "nsn2n-context", "width": 512, "depth": 6}),
                              "unet.down.0.0.weight"),
    "nsn2n_unet_512_6": ("nsn2n", _set("extra", ("network",),
                                       {"in_channels": 1, "out_channels": 1, "width": 512,
                                        "depth": 6, "residual": True}), "tensor"),
    # ... or beyond any bound
    "nsn2n_depth_40": ("nsn2n", _set("extra", ("network",),
                                     {"arch": "nsn2n-context", "width": 4, "depth": 40}),
                       "network.depth"),
    "nsn2n_channels": ("nsn2n", _set("extra", ("network",),
                                     {"in_channels": 10**6, "width": 4, "depth": 1}),
                       "network.in_channels"),
    "nsn2n_unknown_field": ("nsn2n", _set("extra", ("network",),
                                          {"arch": "nsn2n-context", "width": 4, "depth": 1,
                                           "heads": 10**9}), "unknown network fields"),
    "nsn2n_scale_nan": ("nsn2n", _set("extra", ("normalizers", 0, "scale"), NAN),
                        "normalizers[0].scale"),
    "nsn2n_scale_zero": ("nsn2n", _set("extra", ("normalizers", 0, "scale"), 0.0),
                         "normalizers[0].scale"),
    "nsn2n_offset_inf": ("nsn2n", _set("extra", ("normalizers", 0, "offset"), float("inf")),
                         "normalizers[0].offset"),
    "nsn2n_weight_nan": ("nsn2n", _nan_tensor("unet.head.weight"), "unet.head.weight"),
    "split_filters_3000": ("denoisplit", _set("config", ("filters",), 3000), "filters"),
    "split_filters_1000": ("denoisplit", _set("config", ("filters",), 1000), "net."),
    "split_z_dims": ("denoisplit", _set("config", ("z_dims",), 10**6), "z_dims"),
    "split_blocks": ("denoisplit", _set("config", ("blocks_per_level",), 10**7),
                     "blocks_per_level"),
    "split_blocks_in_bounds": ("denoisplit", _set("config", ("blocks_per_level",), 8), "net."),
    "split_every_size_at_its_bound": ("denoisplit", _largest_split_network, "net."),
    "split_patch": ("denoisplit", _set("extra", ("patch_size",), 2**20), "patch_size"),
    "split_patch_in_bounds": ("denoisplit", _set("extra", ("patch_size",), 4096),
                              "net.top_down.1.top_prior"),
    "split_var_clip_nan": ("denoisplit", _set("config", ("var_clip_max",), NAN),
                           "var_clip_max"),
    "split_input_scale_nan": ("denoisplit", _set("extra", ("input_normalizer", "scale"), NAN),
                              "input_normalizer.scale"),
    "split_input_scale_zero": ("denoisplit", _set("extra", ("input_normalizer", "scale"), 0),
                               "input_normalizer.scale"),
    "split_target_offset_nan": ("denoisplit",
                                _set("extra", ("target_normalizers", 1, "offset"), NAN),
                                "target_normalizers[1].offset"),
    "split_calibration_nan": ("denoisplit", _set("extra", ("calibration", "scalar", 0), NAN),
                              "calibration.scalar[0]"),
    "split_calibration_zero": ("denoisplit", _set("extra", ("calibration", "scalar", 1), 0.0),
                               "calibration.scalar[1]"),
    "split_calibration_linear_inf": ("denoisplit",
                                     _set("extra", ("calibration", "linear", 0, 1),
                                          float("-inf")), "calibration.linear[0][1]"),
    "split_min_sigma_nan": ("denoisplit", _set("extra", ("noise_models", 0, "min_sigma"), NAN),
                            "min_sigma"),
    "split_min_sigma_zero": ("denoisplit",
                             _set("extra", ("noise_models", 1, "min_sigma"), 0.0), "min_sigma"),
    "split_min_signal_inf": ("denoisplit",
                             _set("extra", ("noise_models", 0, "min_signal"), float("-inf")),
                             "min_signal"),
    "split_n_gaussian": ("denoisplit", _set("extra", ("noise_models", 0, "n_gaussian"), 10**8),
                         "n_gaussian"),
    "split_weight_nan": ("denoisplit", _nan_tensor("net.output.weight"), "net.output.weight"),
    "split_nm_weight_nan": ("denoisplit", _nan_tensor("noise_model_b.weight"),
                            "noise_model_b.weight"),
    "nm_min_sigma_nan": ("noise_model", _set("config", ("min_sigma",), NAN), "min_sigma"),
    "nm_min_sigma_zero": ("noise_model", _set("config", ("min_sigma",), 0), "min_sigma"),
    "nm_max_signal_nan": ("noise_model", _set("config", ("max_signal",), NAN), "max_signal"),
    "nm_n_coeff": ("noise_model", _set("config", ("n_coeff",), 10**9), "n_coeff"),
    "nm_n_gaussian_in_bounds": ("noise_model", _set("config", ("n_gaussian",), 64), "weight"),
    "nm_weight_nan": ("noise_model", _nan_tensor("weight"), "'weight'"),
}

LOADERS = {
    "denoisplit": lambda p: SplitModel.load(p, device="cpu"),
    "nsn2n": lambda p: NSN2NModel.load(p, device="cpu"),
    "noise_model": GaussianMixtureNoiseModel.load,
}


@pytest.fixture(scope="module")
def hostile_files(files, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    return {case: _rewrite(files[kind], d / f"{case}.duet", edit)
            for case, (kind, edit, _) in HOSTILE.items()}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_file_raises_model_file_error_naming_the_field(case, hostile_files):
    kind, _, needle = HOSTILE[case]
    with pytest.raises(ModelFileError) as info:
        LOADERS[kind](hostile_files[case])
    msg = str(info.value)
    assert needle in msg, msg
    assert hostile_files[case].name in msg
    assert "\n" not in msg


_PROBE = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    torch.set_num_threads(1)
    from napari_duet import ModelFileError
    from napari_duet.denoisplit import SplitModel
    from napari_duet.core.noise_models import GaussianMixtureNoiseModel
    from napari_duet.nsn2n import NSN2NModel

    loaders = {"denoisplit": lambda p: SplitModel.load(p, device="cpu"),
               "nsn2n": lambda p: NSN2NModel.load(p, device="cpu"),
               "noise_model": GaussianMixtureNoiseModel.load}
    jobs = json.loads(sys.argv[1])
    for kind, path in jobs["good"]:  # warm up: imports, first-call allocations
        loaders[kind](path)

    def vm_bytes():
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    limit = vm_bytes() + 2**30  # 1 GiB of address space above what is mapped now
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {}
    for case, kind, path in jobs["hostile"]:
        t0 = time.perf_counter()
        try:
            loaders[kind](path)
            res = "loaded"
        except ModelFileError as exc:
            res = "ModelFileError: " + str(exc)
        except BaseException as exc:
            res = type(exc).__name__ + ": " + str(exc)[:200]
        out[case] = [res, time.perf_counter() - t0]
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    print(json.dumps({"results": out, "rss_growth_kib": growth}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_hostile_files_fail_fast_without_large_allocations(files, hostile_files):
    """Every hostile file, loaded under a 1 GiB address-space limit: ModelFileError.

    Before the checks, the width-512/depth-6 NS-N2N header alone built a
    127 GB network and filters=3000 an 11 GB one.
    """
    jobs = {"good": [[k, str(p)] for k, p in files.items()],
            "hostile": [[case, HOSTILE[case][0], str(p)] for case, p in hostile_files.items()]}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(jobs)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # No time limit here (it flakes on a loaded machine): the address-space limit above turns
    # any large allocation into a MemoryError, which is not a ModelFileError.
    for case, (res, _seconds) in report["results"].items():
        assert res.startswith("ModelFileError"), (case, res)
    # Peak RSS grew by less than 200 MiB over all of them (the networks asked
    # for would have taken 10-130 GB).
    assert report["rss_growth_kib"] < 200 * 1024, report["rss_growth_kib"]


# ------------------------------------------------------------------ good files
def test_good_files_load_and_predict_the_same(files):
    model = _split_model()
    loaded = SplitModel.load(files["denoisplit"], device="cpu")
    img = np.random.default_rng(0).uniform(0, 20, size=(24, 40)).astype(np.float32)
    a = model.predict(img, deterministic=True, tile=32)
    b = loaded.predict(img, deterministic=True, tile=32)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    np.testing.assert_array_equal(a.noise_std, b.noise_std)
    assert loaded.calibration["scalar"] == [1.5, 0.7]
    assert loaded.noise_models[1].min_sigma == 0.25

    nsn = _nsn2n_model()
    nsn_loaded = NSN2NModel.load(files["nsn2n"], device="cpu")
    vol = np.random.default_rng(1).uniform(0, 20, size=(5, 20, 24)).astype(np.float32)
    # TTA is a run-time option, not saved with the model: the same for both here.
    np.testing.assert_array_equal(nsn.predict(vol, tta=False).denoised,
                                  nsn_loaded.predict(vol, tta=False).denoised)
    assert nsn_loaded.normalizers == [Normalizer(10.0, 5.0)]

    nm = GaussianMixtureNoiseModel.load(files["noise_model"])
    s = np.linspace(0, 20, 7, dtype=np.float32)
    np.testing.assert_array_equal(nm.std(s), _noise_model(3).std(s))


def test_zero_weights_and_optional_noise_model_histograms_are_fine(tmp_path):
    """Zeros are legitimate in weights (a fresh residual head); only NaN/inf are not."""
    net = ContextNet(width=4, depth=1)  # head initialised to zeros
    model = NSN2NModel(net, NSN2NConfig(width=4, depth=1, device="cpu"), [], device="cpu")
    assert NSN2NModel.load(model.save(tmp_path / "zero.duet"), device="cpu").is_context
    nm = _noise_model(4)
    nm.hist = np.ones((4, 5), np.float32)
    nm.hist_edges = (np.linspace(0, 20, 5, dtype=np.float32),
                     np.linspace(0, 20, 6, dtype=np.float32))
    back = GaussianMixtureNoiseModel.load(nm.save(tmp_path / "hist.duet"))
    assert back.hist.shape == (4, 5)


def test_old_two_channel_file_still_loads():
    from pathlib import Path

    path = Path(__file__).parent / "denoisplit" / "data" / "old_two_channel_v1.safetensors"
    model = SplitModel.load(path, device="cpu")
    assert model.n_channels == 2 and len(model.noise_models) == 2
    img = np.random.default_rng(0).uniform(0, 20, size=(24, 24)).astype(np.float32)
    out = model.predict(img, deterministic=True, samples=1, tile=24)
    assert out.mean.shape == (2, 24, 24) and np.isfinite(out.mean).all()


def test_unexpected_tensor_is_rejected(files, tmp_path):
    def edit(config, extra, tensors):
        tensors["net.extra_layer.weight"] = torch.zeros(3)
    bad = _rewrite(files["denoisplit"], tmp_path / "extra.duet", edit)
    with pytest.raises(ModelFileError, match="unexpected tensor 'net.extra_layer.weight'"):
        SplitModel.load(bad, device="cpu")


@pytest.mark.parametrize("case", ["split_filters_1000", "split_min_sigma_nan"])
def test_cli_turns_model_file_error_into_exit_2_and_one_line(case, hostile_files, tmp_path,
                                                             capsys):
    import tifffile

    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.ones((32, 32), np.float32))
    out = tmp_path / "out"
    rc = main(["split", "predict", str(img), "--model", str(hostile_files[case]),
               "-o", str(out), "--device", "cpu", "-q"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duet split: error:"), err
    assert hostile_files[case].name in err[0]


def test_cli_training_with_nan_min_sigma_noise_model_exits_2(hostile_files, tmp_path, capsys):
    """It used to skip every batch and save an untrained model with exit 0."""
    import tifffile

    rng = np.random.default_rng(0)
    chans = []
    for c in "ab":
        chans.append(tmp_path / f"{c}.tif")
        tifffile.imwrite(chans[-1], rng.uniform(0, 20, (32, 32)).astype(np.float32))
    out = tmp_path / "m.duet"
    rc = main(["split", "train", "--channel-a", str(chans[0]), "--channel-b", str(chans[1]),
               "--noise-model-a", str(hostile_files["nm_min_sigma_nan"]),
               "--noise-model-b", str(hostile_files["nm_min_sigma_nan"]),
               "-o", str(out), "--epochs", "1", "--config", "small", "--patch-size", "16",
               "--device", "cpu", "-q"])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "min_sigma" in err[0], err


def test_nsn2n_cli_with_hostile_model_exits_2(hostile_files, tmp_path, capsys):
    import tifffile

    vol = tmp_path / "vol.tif"
    tifffile.imwrite(vol, np.random.default_rng(0).uniform(0, 20, (5, 24, 24)).astype(np.float32))
    rc = main(["nsn2n", str(vol), "-o", str(tmp_path / "o.tif"), "--device", "cpu", "-q",
               "--model", str(hostile_files["nsn2n_width512_depth6"])])
    assert rc == 2 and not (tmp_path / "o.tif").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duet nsn2n: error:"), err
    assert "nsn2n_width512_depth6.duet" in err[0]


# ------------------------------------------------------------------ permissions, JSON
@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_model_file_mode_follows_the_umask(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        path = save_model_file(tmp_path / "m.duet", kind="test", config={},
                               tensors={"w": torch.zeros(2)})
        assert os.stat(path).st_mode & 0o777 == mode
        nm_path = _noise_model(0).save(tmp_path / "nm.duet")  # through an engine's save
        assert os.stat(nm_path).st_mode & 0o777 == mode
    finally:
        os.umask(old)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def test_write_json_is_strict_json(tmp_path):
    report = {
        "loss": NAN,
        "metrics": {"psnr": np.float32("inf"), "ssim": np.float64(0.5), "n": np.int64(3)},
        "history": [1.0, float("-inf"), np.float32(2.5)],
        "array": np.array([1.0, np.nan]),
        "tuple": (NAN, 1),
        "path": tmp_path,
        "ok": True,
        "none": None,
    }
    path = write_json(tmp_path / "report.json", report)
    back = json.loads(path.read_text(), parse_constant=_reject_constant)
    assert back["loss"] is None
    assert back["metrics"] == {"psnr": None, "ssim": 0.5, "n": 3}
    assert back["history"] == [1.0, None, 2.5]
    assert back["array"] == [1.0, None]
    assert back["tuple"] == [None, 1]
    assert back["path"] == str(tmp_path)
    assert back["ok"] is True and back["none"] is None
