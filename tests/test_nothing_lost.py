"""Issue 23: nothing lost, nothing trusted blindly.

Each test holds one concrete trigger from the issue: an earlier result that a
failed run destroyed, a resume that mixed two inputs, a result set left half
replaced, a temporary name that could be hijacked.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_duet.cli import main
from napari_duet.core.chunks import staging_path
from napari_duet.core.io import (
    ImageMeta,
    ResultSet,
    atomic_path,
    open_image,
    verify_result_set,
    write_json,
    write_ome_zarr,
    write_tiff,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (10, 32, 28)


def _volume(shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000 + 200).astype(np.uint16)


def _nsn2n_model_file(path):
    import torch

    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel
    from napari_duet.nsn2n._context import ContextNet

    torch.manual_seed(0)
    net = ContextNet(width=4, depth=2)
    torch.nn.init.normal_(net.unet.head.weight, std=0.05)
    NSN2NModel(net, NSN2NConfig(width=4, device="cpu", context="2.5d"), [], {},
               device="cpu").save(path)
    return path


@pytest.fixture
def model_file(tmp_path):
    return _nsn2n_model_file(tmp_path / "m.duet")


def _snapshot(store) -> dict[str, bytes]:
    """Every file of a folder tree, by relative path."""
    return {str(p.relative_to(store)): p.read_bytes()
            for p in sorted(store.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- 1. chunked store
def test_failed_chunked_run_keeps_the_previous_store(tmp_path, model_file, capsys):
    """Trigger: a good run into prev.ome.zarr, then the same command on a volume with a
    NaN exits 2; the earlier store must be left byte for byte, and no staging behind."""
    good, bad = tmp_path / "vol1.zarr", tmp_path / "vol2.zarr"
    zarr.save_array(str(good), _volume().astype(np.float32))
    nan = _volume(seed=1).astype(np.float32)
    nan[7, 3, 3] = np.nan  # found in the statistics pass, after the store was opened
    zarr.save_array(str(bad), nan)
    out = tmp_path / "prev.ome.zarr"
    args = ["-o", str(out), "--model", str(model_file), "-q", "--device", "cpu", "--no-tta",
            "--slab", "4"]
    assert main(["nsn2n", str(good), *args]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["nsn2n", str(bad), *args]) == 2
    assert "NaN" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert not staging_path(out).exists()


def test_self2seg_chunked_run_replaces_the_store_only_when_complete(tmp_path, monkeypatch):
    """An interrupted self2seg run into an existing store leaves that store whole."""
    import napari_duet.self2seg._engine as engine
    from napari_duet.core.synthetic import synthetic_nuclei

    stack = np.stack([synthetic_nuclei((32, 32), seed=s).noisy for s in range(3)])
    src = tmp_path / "s.ome.zarr"
    write_ome_zarr(src, stack, ImageMeta.default(3), levels=1)
    out = tmp_path / "seg.ome.zarr"
    args = ["self2seg", str(src), "-o", str(out), "--experts", "constant",
            "--max-alternations", "1", "-q"]
    assert main(args) == 0
    before = _snapshot(out)
    original, calls = engine.self2seg, [0]

    def dying(*a, **k):
        calls[0] += 1
        if calls[0] > 1:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(engine, "self2seg", dying)
    assert main([*args, "--max-alternations", "2"]) == 130
    assert _snapshot(out) == before
    assert staging_path(out).is_dir()  # kept for --resume


# ---------------------------------------------------------------------- 2. resume identity
def test_resume_refuses_an_input_replaced_by_other_data_of_the_same_shape(
        tmp_path, model_file, monkeypatch, capsys):
    """Trigger: an interrupted run, the input replaced by other data of the same name,
    shape and dtype, then --resume: it must refuse (exit 2), not mix the two."""
    from napari_duet.nsn2n import NSN2NModel

    src = tmp_path / "vol.zarr"
    zarr.save_array(str(src), _volume())
    out = tmp_path / "out.ome.zarr"
    args = ["nsn2n", str(src), "-o", str(out), "--model", str(model_file), "-q",
            "--device", "cpu", "--no-tta", "--slab", "2"]
    original, calls = NSN2NModel.predict_stack_slice, [0]

    def dying(self, *a, **k):
        calls[0] += 1
        if calls[0] > 4:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(NSN2NModel, "predict_stack_slice", dying)
    assert main(args) == 130
    monkeypatch.setattr(NSN2NModel, "predict_stack_slice", original)
    shutil.rmtree(src)
    zarr.save_array(str(src), _volume(seed=5))  # same path, shape and dtype
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    assert "not an interrupted run of this input" in capsys.readouterr().err
    assert not out.exists()


def test_split_checkpoint_refuses_other_training_data_of_the_same_shape():
    from napari_duet import DuetInputError
    from napari_duet.denoisplit import SplitConfig, TrainConfig, iter_train
    from napari_duet.denoisplit._synthetic import synthetic_split

    d = synthetic_split((40, 40), seed=0)
    other = synthetic_split((40, 40), seed=1)
    cfg = SplitConfig(n_levels=2, z_dims=4, filters=8)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "run.duet")
        tc = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, patch_size=16,
                         device="cpu", likelihood="gaussian", kl="musplit", log_every=1,
                         calibrate=False, checkpoint_path=ckpt, resume=True)
        for _ in iter_train([d.noisy_a, d.noisy_b], cfg, tc):
            pass
        with pytest.raises(DuetInputError, match="another run .*data_sha256"):
            next(iter_train([other.noisy_a, other.noisy_b], cfg, tc))
        for _ in iter_train([d.noisy_a, d.noisy_b], cfg, tc):  # the same data: resumes
            pass


# ---------------------------------------------------------------------- 3. result sets
def _split_predict_files(tmp_path):
    import torch

    from napari_duet.core.intensity import Normalizer
    from napari_duet.denoisplit import SplitConfig, SplitModel
    from napari_duet.denoisplit._lvae import LadderVAE

    torch.manual_seed(0)
    cfg = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0)
    model = SplitModel(LadderVAE(cfg, 16).eval(), cfg, patch_size=16,
                       input_norm=Normalizer(0.5, 0.3),
                       target_norms=[Normalizer(0.2, 0.1), Normalizer(0.3, 0.1)])
    path = tmp_path / "m.duet"
    model.save(path)
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.random.default_rng(0).random((24, 24)).astype(np.float32))
    return path, img


def test_interrupted_split_predict_leaves_the_earlier_complete_set(tmp_path, monkeypatch):
    """Trigger: split predict writes mmse.tif, std.tif, a.tif... one at a time; killed
    after the first, the folder held a new mmse.tif beside the old std.tif and report."""
    import napari_duet.core.io as io

    model, img = _split_predict_files(tmp_path)
    out = tmp_path / "pred"
    args = ["split", "predict", str(img), "--model", str(model), "-o", str(out),
            "--samples", "2", "--device", "cpu", "-q"]
    assert main([*args, "--seed", "0"]) == 0
    first = verify_result_set(out)
    assert set(first["manifest"]) == {"mmse.tif", "std.tif", "a.tif", "b.tif", "std_a.tif",
                                      "std_b.tif", "samples.tif"}
    before = _snapshot(out)
    original, calls = io.write_tiff, [0]

    def dying(*a, **k):
        calls[0] += 1
        if calls[0] > 1:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(io, "write_tiff", dying)
    assert main([*args, "--seed", "1"]) == 130
    assert _snapshot(out) == before  # the earlier set, whole; no staging left
    monkeypatch.setattr(io, "write_tiff", original)
    assert main([*args, "--seed", "1"]) == 0
    second = verify_result_set(out)
    assert second["manifest"]["mmse.tif"] != first["manifest"]["mmse.tif"]


def test_result_set_killed_while_moving_in_leaves_no_trusted_report(tmp_path, monkeypatch):
    """Between the renames of the set's files the folder holds no report: a reader
    (verify_result_set) never takes a mixed folder for a result."""
    from napari_duet import DuetInputError

    out = tmp_path / "res"

    def write_set(version: int) -> None:
        with ResultSet(out) as rs:
            write_tiff(rs.path("a.tif"), np.full((4, 4), version, np.float32))
            write_tiff(rs.path("b.tif"), np.full((4, 4), version, np.float32))
            write_json(rs.path("report.json"), {"version": version})

    write_set(1)
    assert verify_result_set(out)["version"] == 1
    real = os.replace

    def dying(a, b):
        if Path(b) == out / "b.tif":  # the commit, after a.tif was moved in
            raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(os, "replace", dying)
    with pytest.raises(KeyboardInterrupt):
        write_set(2)
    monkeypatch.setattr(os, "replace", real)
    with pytest.raises(DuetInputError, match="no complete result"):
        verify_result_set(out)
    assert not list(out.glob(".partial-*"))
    write_set(3)
    assert verify_result_set(out)["version"] == 3


def test_self2seg_report_lists_exactly_its_files(tmp_path):
    from napari_duet.core.synthetic import synthetic_nuclei

    img = tmp_path / "n.tif"
    tifffile.imwrite(img, synthetic_nuclei((32, 32), seed=0).noisy)
    out = tmp_path / "seg"
    assert main(["self2seg", str(img), "-o", str(out), "--experts", "constant",
                 "--max-alternations", "1", "-q"]) == 0
    rep = verify_result_set(out)
    assert set(rep["manifest"]) == {"mask.tif", "labels.tif", "denoised.tif", "expert_0.tif",
                                    "expert_1.tif"}
    (out / "denoised.tif").write_bytes(b"other run")
    from napari_duet import DuetInputError

    with pytest.raises(DuetInputError, match="mixes runs"):
        verify_result_set(out)


# ---------------------------------------------------------------------- 6. temp names
def test_atomic_writers_never_write_through_a_planted_symlink(tmp_path):
    """Trigger: a symlink planted at the old predictable temporary name
    ``.partial-{pid}-{name}`` got the TIFF written through it, onto another file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "shared"
    out.mkdir()
    for name in ("den.tif", "den.json"):
        (out / f".partial-{os.getpid()}-{name}").symlink_to(victim)
    write_tiff(out / "den.tif", np.ones((4, 4), np.float32))
    write_json(out / "den.json", {"a": 1})
    assert victim.read_text() == "precious"
    assert tifffile.imread(out / "den.tif").shape == (4, 4)
    assert json.loads((out / "den.json").read_text()) == {"a": 1}
    # Fresh, unpredictable names, created exclusively; mode as any new file.
    with atomic_path(out / "x.tif") as t1, atomic_path(out / "x.tif") as t2:
        assert t1 != t2 and t1.is_file() and not t1.is_symlink()
        assert str(os.getpid()) not in t1.name.replace("x.tif", "")
        t1.write_bytes(b"1")
        t2.write_bytes(b"2")
    assert (out / "x.tif").stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_write_ome_zarr_staging_is_not_predictable(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    out = tmp_path / "v.ome.zarr"
    for name in (f".{out.name}.tmp-{os.getpid()}", f".{out.name}.old-{os.getpid()}"):
        (tmp_path / name).symlink_to(target)
    write_ome_zarr(out, _volume((3, 8, 8)), levels=1)
    write_ome_zarr(out, _volume((3, 8, 8), seed=1), levels=1)
    assert list(target.iterdir()) == []
    np.testing.assert_array_equal(open_image(out)[0][...], _volume((3, 8, 8), seed=1))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------- 5. bioimage.io zips
def _package(path, model_bytes: bytes, compression=None):
    import zipfile

    rdf = "type: model\nname: x\nconfig:\n  napari_duet:\n    model_file: model.duet\n"
    method = zipfile.ZIP_DEFLATED if compression is None else compression
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("rdf.yaml", rdf)
        zf.writestr("model.duet", model_bytes)
    return path


def test_package_model_entry_is_bounded_checked_and_not_left_behind(tmp_path, model_file,
                                                                    monkeypatch):
    """Trigger: a 204 KB zip whose model.duet inflates to 200 MB was read whole into
    memory, into a temporary folder never removed; a bad CRC raised BadZipFile."""
    import tempfile
    import zipfile

    import napari_duet.core.bmz as bmz
    from napari_duet import DuetInputError

    good = _package(tmp_path / "good.zip", model_file.read_bytes())
    before = set(os.listdir(tempfile.gettempdir()))
    with bmz.package_model(good) as extracted:
        assert extracted.read_bytes() == model_file.read_bytes()
        folder = extracted.parent
    assert not folder.exists()
    assert set(os.listdir(tempfile.gettempdir())) - before == set()

    monkeypatch.setattr(bmz, "MAX_MODEL_BYTES", 1 << 20)
    bomb = _package(tmp_path / "bomb.zip", bytes(8 << 20))  # 8 MiB of zeros: ~8 KiB zipped
    assert bomb.stat().st_size < 100_000
    with pytest.raises(DuetInputError, match="declares 8,388,608 bytes"):
        bmz.duet_model_in_package(bomb, tmp_path / "x")

    # A model entry whose stored bytes were damaged: bad CRC.
    crc = _package(tmp_path / "crc.zip", b"A" * 4096, compression=zipfile.ZIP_STORED)
    data = bytearray(crc.read_bytes())
    data[data.index(b"A" * 64) + 10] ^= 0xFF
    crc.write_bytes(bytes(data))
    with pytest.raises(DuetInputError, match="damaged zip .*CRC"):
        bmz.duet_model_in_package(crc, tmp_path / "y")
    assert not list((tmp_path / "y").glob("*.duet"))
    # A broken deflate stream (zlib.error) or a truncated file: one line as well.
    broken = _package(tmp_path / "broken.zip", os.urandom(1 << 16) * 4)
    data = bytearray(broken.read_bytes())
    start = data.index(b"model.duet") + len(b"model.duet")
    data[start + 100:start + 200] = bytes(100)
    broken.write_bytes(bytes(data))
    with pytest.raises(DuetInputError, match="damaged zip"):
        bmz.duet_model_in_package(broken, tmp_path / "z")


# ---------------------------------------------------------------------- 7. huge integers
def test_huge_integer_in_a_model_header_is_a_one_line_error(tmp_path, capsys):
    """Trigger: ``duet export-bmz bigint.duet`` printed a traceback and exited 1 (Python
    refuses to convert integers of more than 4300 digits)."""
    import torch
    from safetensors.torch import save_file

    from napari_duet import ModelFileError
    from napari_duet._napari._reader import model_kind
    from napari_duet.core.noise_models import GaussianMixtureNoiseModel

    big = "1" * 5000
    for kind, field in (("nsn2n", "config"), ("noise_model", "config")):
        path = tmp_path / f"{kind}.duet"
        meta = {"format": "napari-duet", "format_version": "1", "kind": kind,
                "config": "{}", "extra": "{}", "versions": "{}"}
        meta[field] = '{"width": ' + big + "}"
        save_file({"w": torch.zeros(1)}, str(path), metadata=meta)
        assert model_kind(path) is None
        capsys.readouterr()
        assert main(["export-bmz", str(path), "-q"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "too long" in err and len(err) < 300
    with pytest.raises(ModelFileError, match="too long"):
        GaussianMixtureNoiseModel.load(tmp_path / "noise_model.duet")
    meta["format_version"] = big
    save_file({"w": torch.zeros(1)}, str(path), metadata=meta)
    assert main(["export-bmz", str(path), "-q"]) == 2
    assert len(capsys.readouterr().err) < 300


# ---------------------------------------------------------------------- 11. messages
def test_corrupt_tiff_is_named_damaged_in_one_line(tmp_path, capsys):
    """Trigger: a TIFF whose first-page offset is garbage printed a tifffile log line,
    then "holds no usable image data (dtype float64)"."""
    good = tmp_path / "v.tif"
    tifffile.imwrite(good, np.random.default_rng(0).random((5, 32, 32)).astype(np.float32))
    data = bytearray(good.read_bytes())
    data[4:8] = b"\xff\xff\xff\x7f"
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(data))
    trunc = tmp_path / "trunc.tif"
    trunc.write_bytes(good.read_bytes()[: len(data) // 2])
    for path in (bad, trunc):
        for cmd in (["self2seg", str(path), "-o", str(tmp_path / "o")],
                    ["nsn2n", str(path), "-o", str(tmp_path / "o.tif")]):
            capsys.readouterr()
            assert main([*cmd, "-q"]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "it is a damaged TIFF file" in err, err
            assert "<tifffile" not in err and "dtype" not in err


def test_five_d_input_with_too_few_slices_names_axis_options(tmp_path, capsys):
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, np.zeros((2, 3, 4, 16, 16), np.float32), photometric="minisblack")
    assert main(["nsn2n", str(path), "-o", str(tmp_path / "o.tif"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--axis" in err and "--channel-axis" in err and "axis 1 has 3" in err


def test_read_errors_are_not_reported_as_write_errors(tmp_path, model_file, monkeypatch,
                                                      capsys):
    """Trigger: a PermissionError reading --model was reported as "cannot write ...;
    choose another output or free disk space"."""
    import errno

    import napari_duet.cli._nsn2n_chunked as chunked_cli

    src = tmp_path / "vol.zarr"
    zarr.save_array(str(src), _volume())

    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(chunked_cli, "file_hash", denied)
    assert main(["nsn2n", str(src), "-o", str(tmp_path / "o.ome.zarr"), "--model",
                 str(model_file), "-q", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {model_file}: Permission denied" in err and "disk" not in err
    # Writing: disk full names the output and the remedy.
    from napari_duet.cli import os_error_message

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o.tif"))
    assert "cannot write" in os_error_message(full) and "free disk space" in \
        os_error_message(full)


# ---------------------------------------------------------------------- 8. declared sizes
def _declared(path, shape, dtype=np.uint16):
    """An OME-Zarr of a few KiB that declares ``shape`` (no chunk written)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=shape, dtype=dtype, chunks=(1, 256, 256), fill_value=0)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": a, "type": "space"} for a in "zyx"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale",
                                                     "scale": [1.0, 1.0, 1.0]}]}]}]
    return path


def test_declared_sizes_are_checked_before_allocating(tmp_path, model_file, monkeypatch,
                                                      capsys):
    """Trigger: a 16 KiB OME-Zarr declaring a large shape was read whole (np.asarray) by
    ``duet nsn2n`` training and ``export-bmz --test-input``; chunked runs said nothing."""
    import argparse

    import napari_duet.core.io as io
    from napari_duet import DuetInputError
    from napari_duet.cli._export import _test_volume

    big = _declared(tmp_path / "big.ome.zarr", (8, 2048, 2048))  # 64 MiB declared
    assert sum(p.stat().st_size for p in big.rglob("*") if p.is_file()) < 16 << 10
    monkeypatch.setattr(io.memory, "available_memory", lambda: 16 << 20, raising=False)
    assert main(["nsn2n", str(big), "-o", str(tmp_path / "o.tif"), "-q", "--device", "cpu",
                 "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert "of memory" in err and "16.0 MiB is available" in err and "--model" in err
    assert err.count("\n") == 1
    # A TIFF that declares more than fits is refused before tifffile allocates it.
    tif = tmp_path / "big.tif"
    tifffile.imwrite(tif, np.zeros((4, 2048, 2048), np.uint16), compression="zlib",
                     photometric="minisblack")
    assert tif.stat().st_size < 1 << 20
    with pytest.raises(DuetInputError, match="of memory.*chunk by chunk"):
        io.read_image(tif)
    # export-bmz reads only the centre of --test-input.
    huge = _declared(tmp_path / "huge.ome.zarr", (4096, 1 << 16, 1 << 16))  # 32 TiB
    vol = _test_volume(argparse.Namespace(test_input=str(huge), axis=0))
    assert vol.shape == (8, 64, 64)
    # A chunked run names what it will process before the first chunk.
    monkeypatch.setattr(io.memory, "available_memory", lambda: None, raising=False)
    src = tmp_path / "vol.zarr"
    zarr.save_array(str(src), _volume())
    assert main(["nsn2n", str(src), "-o", str(tmp_path / "o.ome.zarr"), "--model",
                 str(model_file), "--device", "cpu", "--no-tta"]) == 0
    err = capsys.readouterr().err
    assert f"{int(np.prod(SHAPE)):,} voxels" in err and "estimated time left" in err


# ---------------------------------------------------------------------- 10. dask clusters
def _square(x):
    return x * x


def test_local_process_cluster_is_tls_on_loopback():
    """Trigger: ``--scheduler processes:N`` started a LocalCluster listening without TLS;
    anyone who reached the port could submit work (results are unpickled here)."""
    pytest.importorskip("distributed")
    from distributed import Client

    from napari_duet.core.chunks import TaskRunner

    with TaskRunner("processes:1") as runner:
        address = runner._cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        assert runner._cluster.security.require_encryption
        assert dict(runner.run(_square, [3])) == {3: 9}
        # Without the run's credentials nobody connects.
        with pytest.raises((OSError, TimeoutError, ValueError, TypeError)):
            Client(address.replace("tls://", "tcp://"), timeout="2s")


def test_scheduler_from_the_environment_is_said(monkeypatch, capsys):
    pytest.importorskip("distributed")
    from napari_duet import DuetInputError
    from napari_duet.core.chunks import TaskRunner

    monkeypatch.setattr("napari_duet.core.chunks.CONNECT_TIMEOUT", "1s")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:9")
    with pytest.raises(DuetInputError, match="cannot reach"), TaskRunner():
        pass
    err = capsys.readouterr().err
    assert "from $DASK_SCHEDULER_ADDRESS" in err and "--scheduler local" in err
    with pytest.raises(DuetInputError), TaskRunner("tcp://127.0.0.1:9"):
        pass
    assert "DASK_SCHEDULER_ADDRESS" not in capsys.readouterr().err


# ---------------------------------------------------------------------- 4. DDP resume
def _ddp_resume_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: train 2 epochs straight, then 1 + resume 1 from a checkpoint."""
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    from napari_duet.core import distributed as ddp
    from napari_duet.denoisplit import SplitConfig, TrainConfig, train

    assert ddp.init_from_env("cpu")
    try:
        rng = np.random.default_rng(3)
        chans = [(100 + 20 * rng.random((32, 32))).astype(np.float32) for _ in range(2)]
        # No batch norm (per-rank statistics); dropout and latent sampling draw randomly.
        cfg = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.1, batchnorm=False)
        ckpt = str(Path(out) / "ckpt.duet")

        def tc(epochs, **kw):
            return TrainConfig(epochs=epochs, patch_size=16, batch_size=2, steps_per_epoch=2,
                               device="cpu", likelihood="gaussian", kl="musplit",
                               calibrate=False, log_every=1, lr=3e-3, early_stopping=99, **kw)

        full = train(chans, cfg, tc(2))
        train(chans, cfg, tc(1, checkpoint_path=ckpt, resume=True))
        ddp.barrier()  # rank 0 has written the checkpoint
        resumed = train(chans, cfg, tc(2, checkpoint_path=ckpt, resume=True))
        # Epoch 2's losses and validation loss: they follow every rank's draws (the
        # returned model is the best epoch's, which may be epoch 1 in both runs).
        # (Training losses in the history are each rank's own; a resumed run has rank 0's
        # for the epochs before the checkpoint: compare them on rank 0 only.)
        hist = (full.history == resumed.history) if rank == 0 else (
            [h["val_loss"] for h in full.history] == [h["val_loss"] for h in resumed.history])
        same = (hist
                and all(torch.equal(v, resumed.model.net.state_dict()[k])
                        for k, v in full.model.net.state_dict().items()))
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(
            {"same": same, "full": full.history, "resumed": resumed.history}))
    finally:
        ddp.shutdown()


@pytest.mark.slow
def test_ddp_resume_equals_an_uninterrupted_two_process_run(tmp_path):
    """Trigger: only rank 0 saved the checkpoint and every rank restored rank 0's
    generators, so after a resume both ranks drew the same patches and latents."""
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_resume_worker, args=(port, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for r in range(2):
        assert json.loads((tmp_path / f"rank{r}.json").read_text())["same"], r


# ---------------------------------------------------------------------- fault injection
def _run_cli(argv) -> None:
    import torch

    torch.set_num_threads(1)
    os._exit(main(argv))


def _arrays(store) -> dict[str, bytes] | None:
    """Every array of an OME-Zarr result (all levels) and its record's completeness."""
    if not store.exists():
        return None
    group = zarr.open_group(str(store), mode="r")
    out = {k: np.asarray(group[k][...]).tobytes() for k in sorted(group.array_keys())}
    out["complete"] = bytes([bool((group.attrs.get("napari_duet") or {}).get("complete"))])
    return out


@pytest.mark.slow
def test_sigkill_at_random_points_never_loses_or_mixes_a_chunked_result(tmp_path, model_file):
    """SIGKILL (not Ctrl-C) a chunked ``duet nsn2n`` run at random points, 24 times, on
    two inputs in turn: after every kill the output is the earlier complete result or
    the new complete one, and ``--resume`` then gives the uninterrupted result bit for
    bit."""
    import multiprocessing
    import random
    import signal

    ctx = multiprocessing.get_context("fork")
    vols = []
    for seed in (0, 1):
        src = tmp_path / f"vol{seed}.zarr"
        zarr.save_array(str(src), _volume((12, 24, 24), seed=seed))
        vols.append(src)
    opts = ["--model", str(model_file), "--device", "cpu", "--no-tta", "--slab", "2", "-q"]
    refs = []
    t0 = time.perf_counter()
    for i, src in enumerate(vols):
        ref = tmp_path / f"ref{i}.ome.zarr"
        assert main(["nsn2n", str(src), "-o", str(ref), *opts]) == 0
        refs.append(_arrays(ref))
    full = (time.perf_counter() - t0) / 2
    out = tmp_path / "out.ome.zarr"
    assert main(["nsn2n", str(vols[1]), "-o", str(out), *opts]) == 0
    rng = random.Random(23)
    outcomes = {"earlier": 0, "new": 0, "resumed": 0}
    for run in range(24):
        i = run % 2
        earlier, new = refs[1 - i], refs[i]
        child = ctx.Process(target=_run_cli, args=(["nsn2n", str(vols[i]), "-o", str(out),
                                                    *opts],))
        child.start()
        time.sleep(rng.uniform(0.0, 1.6 * full))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        got = _arrays(out)
        assert got in (earlier, new), f"run {run}: the output is neither result"
        outcomes["earlier" if got == earlier else "new"] += 1
        # Continue the staged run; a run killed before it staged anything is run again
        # (--resume refuses to take another run's result for this one's).
        if staging_path(out).exists() or got == new:
            outcomes["resumed"] += 1
            assert main(["nsn2n", str(vols[i]), "-o", str(out), *opts, "--resume"]) == 0
        else:
            assert main(["nsn2n", str(vols[i]), "-o", str(out), *opts]) == 0
        assert _arrays(out) == new, f"run {run}: resumed result differs"
        assert not staging_path(out).exists()
        report = json.loads((tmp_path / "out.ome.json").read_text())
        assert report["input"] == str(vols[i])
    assert outcomes["earlier"] >= 3 and outcomes["resumed"] >= 3, outcomes
    assert not list(tmp_path.glob(".partial-*"))
