"""Every CLI result keeps the input's physical pixel size (TIFF resolution, z spacing, unit).

The OME-Zarr outputs are checked in test_zarr_io.py (NS-N2N) and
denoisplit/test_denoisplit_chunked.py (split); Self2Seg stacks in
self2seg/test_self2seg_stack.py.  Here: the TIFF outputs of the three
commands' in-memory paths.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_duet.cli import main

PIXEL = 0.25  # um


def _write(path, arr, axes, spacing=None):
    meta = {"axes": axes, "unit": "um"}
    if spacing is not None:
        meta["spacing"] = spacing
    tifffile.imwrite(path, arr, imagej=True, resolution=(1 / PIXEL, 1 / PIXEL), metadata=meta)


def _assert_scale(path, spacing=None):
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].resolution == pytest.approx((1 / PIXEL, 1 / PIXEL)), path.name
        meta = (tif.shaped_metadata or ({},))[0] if tif.is_shaped else tif.imagej_metadata
        assert meta.get("unit") == "um", path.name
        if spacing is not None:
            assert meta.get("spacing") == spacing, path.name


def test_split_predict_outputs_keep_pixel_size(tmp_path, one_torch_thread):
    from napari_duet.denoisplit._demo import split_demo_data, split_demo_model_path

    image = split_demo_data()[0][:64, :64].astype(np.float32)
    src = tmp_path / "sum.tif"
    _write(src, image, "YX")
    out = tmp_path / "split"
    assert main(["split", "predict", str(src), "--model", str(split_demo_model_path()),
                 "-o", str(out), "--samples", "2", "-q", "--device", "cpu"]) == 0
    for name in ("mmse.tif", "std.tif", "a.tif", "b.tif", "std_a.tif", "std_b.tif",
                 "samples.tif"):
        _assert_scale(out / name)
    assert tifffile.imread(out / "mmse.tif").shape == (2, 64, 64)


def test_nsn2n_training_output_keeps_voxel_size(tmp_path, one_torch_thread):
    from napari_duet.core.synthetic import synthetic_volume

    vol = synthetic_volume((5, 32, 32))[0]
    src = tmp_path / "vol.tif"
    _write(src, vol, "ZYX", spacing=2.0)
    out = tmp_path / "den.tif"
    unc = tmp_path / "unc.tif"
    assert main(["nsn2n", str(src), "-o", str(out), "--iterations", "2", "--width", "4",
                 "--uncertainty", str(unc), "-q", "--device", "cpu"]) == 0
    _assert_scale(out, spacing=2.0)
    _assert_scale(unc, spacing=2.0)


def test_self2seg_2d_outputs_keep_pixel_size(tmp_path):
    from napari_duet.core.synthetic import synthetic_nuclei

    img = np.asarray(synthetic_nuclei(shape=(48, 48), seed=0).noisy, np.float32)
    src = tmp_path / "img.tif"
    _write(src, img, "YX")
    out = tmp_path / "out"
    assert main(["self2seg", str(src), "-o", str(out), "--experts", "constant",
                 "--max-alternations", "2", "-q"]) == 0
    for name in ("mask.tif", "denoised.tif"):
        _assert_scale(out / name)
