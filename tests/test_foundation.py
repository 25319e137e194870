"""Shared pieces: devices, intensity, tiling, model files, metrics, I/O, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_duet import DuetInputError, ModelFileError
from napari_duet.cli import main
from napari_duet.core.devices import resolve_device
from napari_duet.core.intensity import as_float_image, fit_normalizer
from napari_duet.core.io import read_image, write_tiff
from napari_duet.core.metrics import dice, psnr, range_invariant_psnr
from napari_duet.core.modelfile import load_model_file, read_model_header, save_model_file
from napari_duet.core.progress import blocking_form, run_to_end
from napari_duet.core.tiling import apply_tiled, count_tiles, iter_tiles, pad_to_multiple


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(DuetInputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DuetInputError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, bool])
def test_as_float_image_accepts_common_dtypes(dtype):
    arr = (np.arange(12).reshape(3, 4) % 2).astype(dtype)
    out = as_float_image(arr)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_array_equal(out, arr.astype(np.float32))


def test_as_float_image_rejects_bad_input():
    with pytest.raises(DuetInputError, match="NaN"):
        as_float_image(np.array([[1.0, np.nan]]))
    with pytest.raises(DuetInputError, match="dtype"):
        as_float_image(np.array([[1 + 1j]]))
    with pytest.raises(DuetInputError, match="empty"):
        as_float_image(np.zeros((0, 5)))


@pytest.mark.parametrize("mode", ["percentile", "minmax", "meanstd"])
def test_normalizer_round_trip(mode):
    x = np.random.default_rng(0).normal(100, 20, (32, 32)).astype(np.float32)
    n = fit_normalizer(x, mode)
    np.testing.assert_allclose(n.inverse(n.forward(x)), x, rtol=1e-5, atol=1e-3)
    assert type(n).from_dict(n.to_dict()) == n
    const = fit_normalizer(np.full((4, 4), 7.0), mode)
    np.testing.assert_allclose(const.inverse(const.forward(np.full((4, 4), 7.0))), 7.0)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 31), (64, 64)])
def test_pad_to_multiple_crops_back(shape):
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    padded, crop = pad_to_multiple(x, 16)
    assert padded.shape[0] % 16 == 0 and padded.shape[1] % 16 == 0
    np.testing.assert_array_equal(padded[crop], x)


@pytest.mark.parametrize("shape,tile,overlap", [((100, 77), 32, 8), ((33, 200), 64, 16),
                                                ((20, 20), 64, 8)])
def test_tiles_cover_every_pixel_once(shape, tile, overlap):
    hits = np.zeros(shape, int)
    tiles = list(iter_tiles(shape, tile, overlap))
    assert len(tiles) == count_tiles(shape, tile, overlap)
    for t in tiles:
        hits[t.write] += 1
        ry, rx = t.read
        assert ry.stop - ry.start <= tile and rx.stop - rx.start <= tile
    assert (hits == 1).all()


def test_apply_tiled_matches_untiled_for_local_operator():
    from scipy.ndimage import uniform_filter

    x = np.random.default_rng(2).random((90, 130)).astype(np.float32)
    full = uniform_filter(x, 5, mode="reflect")
    tiled = apply_tiled(lambda t: uniform_filter(t, 5, mode="reflect"), x, tile=40, overlap=4,
                        multiple=8)
    # Away from the image border the result is independent of the tiling.
    np.testing.assert_allclose(tiled[4:-4, 4:-4], full[4:-4, 4:-4], atol=1e-6)


def test_model_file_round_trip(tmp_path):
    t = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    path = save_model_file(tmp_path / "m.duet", kind="demo", config={"a": 1}, tensors=t,
                           extra={"norm": {"offset": 1.0, "scale": 2.0}})
    mf = load_model_file(path, kind="demo")
    assert mf.config == {"a": 1} and mf.extra["norm"]["scale"] == 2.0
    assert torch.equal(mf.tensors["w"], t["w"])
    assert "torch" in mf.versions
    assert read_model_header(path)["kind"] == "demo"


def test_model_file_errors(tmp_path):
    from safetensors.torch import save_file

    path = save_model_file(tmp_path / "m.duet", kind="demo", config={}, tensors={
        "w": torch.zeros(3)})
    with pytest.raises(ModelFileError, match="'demo' model, but a 'nsn2n'"):
        load_model_file(path, kind="nsn2n")
    bad = tmp_path / "bad.duet"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelFileError, match="bad.duet"):
        load_model_file(bad)
    truncated = tmp_path / "trunc.duet"
    truncated.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ModelFileError):
        load_model_file(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelFileError, match="foreign"):
        load_model_file(foreign)
    with pytest.raises(ModelFileError, match="not found"):
        load_model_file(tmp_path / "missing.duet")


def test_metrics():
    a = np.zeros((10, 10), bool)
    a[:5] = True
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    ref = np.linspace(0, 1, 100).reshape(10, 10)
    assert psnr(ref + 0.1, ref) == pytest.approx(20.0, abs=1e-6)
    # Range-invariant PSNR ignores a global affine change of the prediction.
    noisy = ref + np.random.default_rng(0).normal(0, 0.05, ref.shape)
    assert range_invariant_psnr(3 * noisy + 7, ref) == pytest.approx(
        range_invariant_psnr(noisy, ref), abs=1e-9)


def test_io_round_trip_and_errors(tmp_path):
    x = np.arange(20, dtype=np.uint16).reshape(4, 5)
    write_tiff(tmp_path / "a" / "x.tif", x)
    np.testing.assert_array_equal(read_image(tmp_path / "a" / "x.tif"), x)
    x4 = np.arange(2 * 2 * 3 * 5, dtype=np.float32).reshape(2, 2, 3, 5)
    write_tiff(tmp_path / "x4.tif", x4)
    np.testing.assert_array_equal(read_image(tmp_path / "x4.tif"), x4)
    with pytest.raises(DuetInputError, match="not found"):
        read_image(tmp_path / "nope.tif")
    junk = tmp_path / "junk.tif"
    junk.write_text("not a tiff")
    with pytest.raises(DuetInputError, match="cannot read junk.tif"):
        read_image(junk)


def test_run_to_end_returns_generator_value():
    seen = []

    def gen():
        yield 1
        yield 2
        return "done"

    assert run_to_end(gen(), seen.append) == "done"
    assert seen == [1, 2]


def test_blocking_form_keeps_the_generator_signature_and_adds_callback():
    import inspect

    class Engine:
        def iter_run(self, n: int, *, scale: float = 1.0):
            yield from range(n)
            return n * scale

        run = blocking_form(iter_run, "Run :meth:`iter_run` to the end.")

    seen = []
    assert Engine().run(3, scale=2.0, callback=seen.append) == 6.0
    assert seen == [0, 1, 2]
    assert Engine().run(2) == 2.0
    assert Engine.run.__name__ == "run" and Engine.run.__doc__.startswith("Run :meth:")
    assert list(inspect.signature(Engine().run).parameters) == ["n", "scale", "callback"]
    with pytest.raises(TypeError):
        Engine().run(1, bogus=1)


def test_cli_help_and_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "self2seg" in out
    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1


def test_report_json_is_plain(tmp_path):
    from napari_duet.core.io import write_json

    p = write_json(tmp_path / "r.json", {"a": np.float32(1.5), "b": np.arange(3)})
    assert json.loads(p.read_text()) == {"a": 1.5, "b": [0, 1, 2]}
