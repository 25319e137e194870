"""Large-volume I/O (OME-Zarr, lazy TIFF) and chunked, resumable NS-N2N inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

from napari_duet.cli import main
from napari_duet.core.chunks import staging_path
from napari_duet.core.io import (
    ImageMeta,
    build_pyramid,
    create_ome_zarr,
    open_image,
    write_ome_zarr,
    write_tiff_blocks,
)

SHAPE = (12, 48, 40)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _volume(shape=SHAPE, seed=0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    clean = ndimage.gaussian_filter(rng.random(shape), (1.5, 3, 3))
    clean = (clean - clean.min()) / np.ptp(clean)
    noisy = clean + 0.1 * rng.standard_normal(shape)
    return (noisy * 1000 + 200).clip(0, 65535).astype(np.uint16)


def _model(context: bool | str = True, seed: int = 0):
    """An untrained network with random weights: a non-trivial map, made in milliseconds.

    ``context``: True (2.5D), False (2D) or ``"blind"``.
    """
    import torch

    from napari_duet.core.networks.unet import UNet2D
    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel
    from napari_duet.nsn2n._blind import BlindNet
    from napari_duet.nsn2n._context import ContextNet

    torch.manual_seed(seed)
    if context == "blind":
        net = BlindNet(width=8, depth=2)
        torch.nn.init.normal_(net.unet.head.weight, std=0.05)
    elif context:
        net = ContextNet(width=8, depth=2)
        torch.nn.init.normal_(net.unet.head.weight, std=0.05)
    else:
        net = UNet2D(1, 1, width=8, depth=2)
    name = "blind" if context == "blind" else "2.5d" if context else "2d"
    cfg = NSN2NConfig(width=8, device="cpu", context=name)
    return NSN2NModel(net, cfg, [], {}, device="cpu")


# ---------------------------------------------------------------------- I/O
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_round_trip_keeps_axes_scale_dtype_and_has_a_pyramid(tmp_path, version):
    vol = _volume((6, 70, 50))
    meta = ImageMeta(("z", "y", "x"), (2.0, 0.25, 0.5), ("micrometer",) * 3)
    path = tmp_path / "v.ome.zarr"
    write_ome_zarr(path, vol, meta, levels=3, chunks=(2, 32, 32), version=version)
    arr, got = open_image(path)
    assert isinstance(arr, zarr.Array)  # lazy: nothing read yet
    assert arr.shape == vol.shape and arr.dtype == vol.dtype
    np.testing.assert_array_equal(arr[...], vol)
    assert got == meta
    group = zarr.open_group(str(path), mode="r")
    if version == "0.5":
        assert group.metadata.zarr_format == 3 and (path / "zarr.json").is_file()
        ms = group.attrs["ome"]["multiscales"]
        assert group.attrs["ome"]["version"] == "0.5"
    else:
        assert group.metadata.zarr_format == 2 and (path / ".zattrs").is_file()
        ms = group.attrs["multiscales"]
        assert ms[0]["version"] == "0.4"
    assert [a["name"] for a in ms[0]["axes"]] == ["z", "y", "x"]
    assert [a["type"] for a in ms[0]["axes"]] == ["space"] * 3
    datasets = ms[0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in datasets]
    assert scales == [[2.0, 0.25, 0.5], [2.0, 0.5, 1.0], [2.0, 1.0, 2.0]]
    assert [group[str(i)].shape for i in range(3)] == [(6, 70, 50), (6, 35, 25), (6, 18, 13)]
    assert group["1"].dtype == vol.dtype
    # Level 1 is the 2x2 mean of level 0.
    expect = vol[:, :70, :50].reshape(6, 35, 2, 25, 2).astype(np.float64).mean((2, 4))
    np.testing.assert_array_equal(group["1"][...], np.rint(expect).astype(np.uint16))


def test_ome_zarr_readable_by_ome_zarr_library(tmp_path):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    for version in ("0.4", "0.5"):
        path = tmp_path / f"v{version}.ome.zarr"
        write_ome_zarr(path, _volume((4, 64, 64)), levels=2, version=version)
        node = list(Reader(parse_url(str(path)))())[0]
        assert [d.shape for d in node.data] == [(4, 64, 64), (4, 32, 32)]


def test_plain_zarr_array_and_outer_scale(tmp_path):
    vol = _volume((5, 20, 24))
    zarr.save_array(str(tmp_path / "plain.zarr"), vol)
    arr, meta = open_image(tmp_path / "plain.zarr")
    assert isinstance(arr, zarr.Array) and meta.axes == ("z", "y", "x")
    np.testing.assert_array_equal(arr[...], vol)
    # NGFF allows a scale on the whole multiscale image too: the product is the pixel size.
    path = tmp_path / "outer.ome.zarr"
    write_ome_zarr(path, vol, ImageMeta(("z", "y", "x"), (1.0, 2.0, 2.0), (None,) * 3),
                   levels=1)
    group = zarr.open_group(str(path), mode="r+")
    ome = dict(group.attrs["ome"])
    ome["multiscales"][0]["coordinateTransformations"] = [{"type": "scale",
                                                           "scale": [3.0, 1.0, 0.5]}]
    group.attrs["ome"] = ome
    assert open_image(path)[1].scale == (3.0, 2.0, 1.0)


def test_tiff_is_read_lazily_with_axes_and_scale(tmp_path):
    vol = _volume((7, 30, 20))
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, vol, imagej=True, resolution=(1 / 0.2, 1 / 0.2),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    arr, meta = open_image(path)
    assert isinstance(arr, zarr.Array) and not isinstance(arr, np.ndarray)
    assert arr.shape == vol.shape and arr.dtype == vol.dtype
    np.testing.assert_array_equal(arr[3], vol[3])
    assert meta.axes == ("z", "y", "x")
    np.testing.assert_allclose(meta.scale, (1.5, 0.2, 0.2), rtol=1e-5)
    assert meta.units == ("micrometer",) * 3
    # Written back plane by plane (BigTIFF on request), the pixel size survives.
    out = tmp_path / "back.tif"
    write_tiff_blocks(out, arr, pixel_info=meta.pixel_info(), bigtiff=True)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff
    back, meta2 = open_image(out)
    np.testing.assert_array_equal(back[...], vol)
    np.testing.assert_allclose(meta2.scale, meta.scale, rtol=1e-5)


def test_ome_tiff_physical_size(tmp_path):
    path = tmp_path / "v.ome.tif"
    tifffile.imwrite(path, _volume((4, 16, 16)), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3,
                               "PhysicalSizeZ": 2.0})
    _, meta = open_image(path)
    assert meta.axes == ("z", "y", "x")
    np.testing.assert_allclose(meta.scale, (2.0, 0.3, 0.3))


def test_other_formats_stay_in_memory(tmp_path):
    from skimage.io import imsave

    img = (np.arange(20 * 30) % 255).astype(np.uint8).reshape(20, 30)
    imsave(tmp_path / "a.png", img, check_contrast=False)
    arr, meta = open_image(tmp_path / "a.png")
    assert isinstance(arr, np.ndarray) and meta.axes == ("y", "x")


# ---------------------------------------------------------------------- chunked NS-N2N
@pytest.mark.parametrize("context", [True, False, "blind"])
@pytest.mark.parametrize("slab", [1, 5])
def test_chunked_equals_in_memory(context, slab):
    from napari_duet.nsn2n._chunked import iter_denoise_chunked

    vol = _volume()
    model = _model(context)
    ref = model.predict(vol, axis=0, tta=True)
    out = np.full(vol.shape, np.nan, np.float32)
    unc = np.full(vol.shape, np.nan, np.float32)
    events = list(iter_denoise_chunked(model, zarr.array(vol), out, axis=0, tta=True,
                                       slab=slab, uncertainty=unc))
    den = [e for e in events if e.stage == "denoise"]
    assert len(den) == -(-SHAPE[0] // slab) and den[-1].done == den[-1].total == SHAPE[0]
    np.testing.assert_allclose(out, ref.denoised, rtol=1e-5, atol=1e-5 * np.ptp(vol))
    np.testing.assert_allclose(unc, ref.uncertainty, rtol=1e-5, atol=1e-5 * np.ptp(vol))


def test_chunked_4d_and_other_axis():
    """A (C, Y, Z, X) array with the slice axis 2: per-channel statistics, same result."""
    from napari_duet.nsn2n._chunked import iter_denoise_chunked

    vol = np.stack([_volume((20, 12, 24), seed=s) for s in (0, 1)]).transpose(0, 1, 2, 3)
    model = _model(True)
    ref = model.predict(vol, axis=2, tta=False).denoised
    out = np.zeros(vol.shape, np.float32)
    list(iter_denoise_chunked(model, vol, out, axis=2, tta=False, slab=4))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.ptp(vol))


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.duet"
    _model(True).save(path)
    return path


def test_cli_zarr_in_zarr_out_equals_in_memory(tmp_path, model_file):
    from napari_duet.nsn2n import NSN2NModel

    vol = _volume()
    meta = ImageMeta(("z", "y", "x"), (1.5, 0.2, 0.2), ("micrometer",) * 3)
    src = tmp_path / "vol.ome.zarr"
    write_ome_zarr(src, vol, meta, version="0.4", levels=1)
    out = tmp_path / "out.ome.zarr"
    log = tmp_path / "log.jsonl"
    assert main(["nsn2n", str(src), "-o", str(out), "--model", str(model_file), "-q",
                 "--device", "cpu", "--slab", "4", "--log-json", str(log)]) == 0
    arr, got = open_image(out)
    assert got == meta and arr.dtype == np.float32
    ref = NSN2NModel.load(model_file, device="cpu").predict(vol, axis=0).denoised
    np.testing.assert_allclose(arr[...], ref, rtol=1e-5, atol=1e-5 * np.ptp(vol))
    events = [json.loads(line) for line in log.read_text().splitlines()]
    slabs = [e for e in events if e.get("stage") == "denoise"]
    assert [e["done"] for e in slabs] == [4, 8, 12]  # progress per slab
    rep = json.loads((tmp_path / "out.ome.json").read_text())
    assert rep["chunked"] and rep["slab"] == 4 and rep["scale"] == [1.5, 0.2, 0.2]
    # A TIFF output from a TIFF input, through the same path (--slab), keeps the pixel size.
    tif = tmp_path / "vol.tif"
    tifffile.imwrite(tif, vol, imagej=True, resolution=(5.0, 5.0),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    assert main(["nsn2n", str(tif), "-o", str(tmp_path / "o.tif"), "--model", str(model_file),
                 "-q", "--device", "cpu", "--slab", "5"]) == 0
    np.testing.assert_allclose(tifffile.imread(tmp_path / "o.tif"), ref, rtol=1e-5,
                               atol=1e-5 * np.ptp(vol))
    assert not (tmp_path / "o.tif.partial.zarr").exists()
    _, m2 = open_image(tmp_path / "o.tif")
    np.testing.assert_allclose(m2.scale, (1.5, 0.2, 0.2), rtol=1e-5)


def test_cli_resume_after_kill(tmp_path, model_file, monkeypatch):
    from napari_duet.nsn2n import NSN2NModel

    vol = _volume()
    src = tmp_path / "vol.zarr"
    zarr.save_array(str(src), vol)
    out = tmp_path / "out.zarr"
    args = ["nsn2n", str(src), "-o", str(out), "--model", str(model_file), "-q",
            "--device", "cpu", "--slab", "3", "--no-tta"]
    full = tmp_path / "full.zarr"
    assert main([*args[:3], str(full), *args[4:]]) == 0
    calls = [0]
    original = NSN2NModel.predict_stack_slice

    def dying(self, *a, **k):
        calls[0] += 1
        if calls[0] > 6:  # two slabs of 3 slices finished, then the run is killed
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(NSN2NModel, "predict_stack_slice", dying)
    assert main(args) == 130
    # The interrupted run is staged beside the output, never under the result's name.
    assert not out.exists()
    group = zarr.open_group(str(staging_path(out)), mode="r")
    assert group.attrs["napari_duet"]["state"]["done"] == [0, 1]
    assert not group.attrs["napari_duet"]["complete"]

    calls[0] = -100  # no more kills; count the slices computed on resume
    assert main([*args, "--resume"]) == 0
    assert calls[0] + 100 == SHAPE[0] - 6  # finished slabs are not recomputed
    np.testing.assert_array_equal(open_image(out)[0][...], open_image(full)[0][...])
    assert zarr.open_group(str(out), mode="r").attrs["napari_duet"]["complete"]
    assert not staging_path(out).exists()


def test_resume_refuses_another_runs_output(tmp_path, model_file, capsys):
    vol = _volume()
    src = tmp_path / "vol.zarr"
    zarr.save_array(str(src), vol)
    out = tmp_path / "out.zarr"
    base = ["nsn2n", str(src), "-o", str(out), "--model", str(model_file), "-q",
            "--device", "cpu"]
    assert main([*base, "--no-tta"]) == 0
    capsys.readouterr()
    assert main([*base, "--resume"]) == 2  # TTA differs: not the same run
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]


@pytest.mark.parametrize("case", ["missing_zarr", "group_without_ngff", "unwritable",
                                  "resume_without_model", "bad_slab", "output_is_input"])
def test_bad_paths_exit_2_with_one_line(case, tmp_path, model_file, capsys):
    vol = _volume()
    src = tmp_path / "vol.zarr"
    zarr.save_array(str(src), vol)
    out = tmp_path / "out.zarr"
    args = ["nsn2n", str(src), "-o", str(out), "--model", str(model_file), "-q",
            "--device", "cpu"]
    if case == "missing_zarr":
        args[1] = str(tmp_path / "nope.ome.zarr")
    elif case == "group_without_ngff":
        zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
        args[1] = str(tmp_path / "g.zarr")
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        args[3] = str(tmp_path / "file" / "out.zarr")  # a folder inside a file
    elif case == "resume_without_model":
        args = [*args[:4], "--resume", "-q"]
    elif case == "output_is_input":
        args[3] = str(src)
    else:
        args += ["--slab", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duet nsn2n: error:")
    np.testing.assert_array_equal(zarr.open_array(str(src), mode="r")[...], vol)


def test_create_then_pyramid_is_resumable_layout(tmp_path):
    """Level 0 alone is a valid OME-Zarr (what a killed run leaves); the pyramid comes last."""
    meta = ImageMeta.default(3)
    arr = create_ome_zarr(tmp_path / "p.ome.zarr", (3, 600, 520), np.float32, meta)
    arr[1] = 1.0
    got, _ = open_image(tmp_path / "p.ome.zarr")
    assert got.shape == (3, 600, 520)
    assert build_pyramid(tmp_path / "p.ome.zarr") == 3  # 600 -> 300 -> 150 (< 256)
    ms = zarr.open_group(str(tmp_path / "p.ome.zarr"), mode="r").attrs["ome"]["multiscales"]
    assert len(ms[0]["datasets"]) == 3


def test_training_reads_zarr_and_writes_ome_zarr(tmp_path):
    """Without --model the volume is read into memory; a .zarr output is still OME-Zarr."""
    vol = _volume((6, 32, 32))
    meta = ImageMeta(("z", "y", "x"), (3.0, 0.5, 0.5), ("micrometer",) * 3)
    src = tmp_path / "v.ome.zarr"
    write_ome_zarr(src, vol, meta, levels=1)
    out = tmp_path / "out.ome.zarr"
    assert main(["nsn2n", str(src), "-o", str(out), "--iterations", "2", "--width", "8",
                 "--no-tta", "-q", "--device", "cpu"]) == 0
    arr, got = open_image(out)
    assert arr.shape == vol.shape and arr.dtype == np.float32 and got == meta


def test_write_ome_zarr_is_atomic(tmp_path, monkeypatch):
    """An interrupted write leaves the earlier result whole and no partial store behind."""
    from napari_duet.core import io as _io

    path = tmp_path / "out.ome.zarr"
    first = np.arange(4 * 16 * 16, dtype=np.float32).reshape(4, 16, 16)
    _io.write_ome_zarr(path, first)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.ngff, "build_pyramid", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _io.write_ome_zarr(path, np.zeros_like(first))
    monkeypatch.undo()
    arr, _ = _io.open_image(path)
    np.testing.assert_array_equal(np.asarray(arr[...]), first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ome.zarr"]

    second = first[::-1].copy()
    _io.write_ome_zarr(path, second)  # a finished write replaces the earlier result
    arr, _ = _io.open_image(path)
    np.testing.assert_array_equal(np.asarray(arr[...]), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ome.zarr"]
