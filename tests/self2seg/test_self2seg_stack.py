"""Self2Seg on stacks: the core generator and ``duet self2seg`` with stacks and ``--regions``."""

import json

import numpy as np
import pytest
import tifffile

from napari_duet.cli import main
from napari_duet.core.errors import DuetInputError
from napari_duet.core.progress import run_to_end
from napari_duet.core.synthetic import synthetic_nuclei
from napari_duet.self2seg import (
    Self2SegConfig,
    Self2SegStackResult,
    Self2SegStackState,
    boxes_to_regions,
    iter_self2seg_stack,
    self2seg,
    self2seg_stack,
)

FAST = {"experts": "constant", "max_alternations": 2}


def _imwrite(path, arr, **kw):
    tifffile.imwrite(path, arr, photometric="minisblack", **kw)


def _planes(n=3, shape=(48, 48), sigma=15):
    return [synthetic_nuclei(shape, noise_sigma=sigma, seed=s) for s in range(n)]


@pytest.fixture(scope="module")
def stack():
    return np.stack([p.noisy for p in _planes()])


def _seeds(shape=(48, 48), fg=(20, 20, 28, 28), bg=(0, 0, 6, 6)):
    return boxes_to_regions(shape, [fg], [bg])


def _assert_plane_equal(res, i, single):
    assert np.array_equal(res.labels[i], single.labels)
    assert np.array_equal(res.denoised[i], single.denoised)
    assert np.array_equal(res.experts[:, i], single.experts)


@pytest.mark.parametrize("experts", ["constant", "linear"])
def test_stack_planes_equal_single_runs(stack, experts):
    """Per-plane results equal self2seg on each plane (same config and seed); a plane
    without seeds starts automatically, like self2seg(plane, None)."""
    cfg = Self2SegConfig(experts=experts, max_alternations=2, seed=4)
    regions = np.zeros(stack.shape, np.uint8)
    regions[0] = _seeds()
    regions[2] = _seeds(fg=(10, 30, 16, 40), bg=(40, 0, 48, 8))
    res = self2seg_stack(stack, regions, cfg)
    assert isinstance(res, Self2SegStackResult)
    assert res.labels.shape == stack.shape and res.labels.dtype == np.uint8
    assert res.denoised.shape == stack.shape and res.denoised.dtype == np.float32
    assert res.experts.shape == (2, *stack.shape) and res.experts.dtype == np.float32
    assert res.seeded == [True, False, True]
    for i in range(3):
        seeds = regions[i] if regions[i].any() else None
        _assert_plane_equal(res, i, self2seg(stack[i], seeds, cfg))


def test_shared_seeds_apply_to_every_plane(stack):
    cfg = Self2SegConfig(**FAST)
    seeds = _seeds()
    res = self2seg_stack(stack, seeds, cfg)
    assert res.seeded == [True] * 3
    for i in range(3):
        _assert_plane_equal(res, i, self2seg(stack[i], seeds, cfg))


def test_progress_states_and_report(stack):
    cfg = Self2SegConfig(**FAST)
    four_d = stack[:2, None].repeat(2, axis=1)  # (2, 2, Y, X)
    states = []
    res = run_to_end(iter_self2seg_stack(four_d, None, cfg), states.append)
    assert all(isinstance(s, Self2SegStackState) for s in states)
    assert all(s.n_planes == 4 for s in states)
    done = [s for s in states if s.finished]
    assert [s.index for s in done] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [s.plane for s in done] == [0, 1, 2, 3]
    # The base fields count planes: done planes of total, fraction over the stack.
    assert [(s.done, s.total) for s in done] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    fractions = [s.fraction for s in states]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] < 0.25
    # Every alternation of a plane is reported before its final state.
    for s in states:
        assert s.state.alternation >= 1 and s.state.labels.shape == four_d.shape[-2:]
    for d in done:
        assert np.array_equal(res.labels[d.index], d.result.labels)
        assert len([s for s in states if s.plane == d.plane and not s.finished]) == \
            d.result.alternations
    assert res.labels.shape == four_d.shape and res.experts.shape == (2, *four_d.shape)
    assert np.array_equal(res.labels[0, 0], res.labels[0, 1])  # same plane, same result
    rep = json.loads(json.dumps(res.report()))
    assert rep["image"]["shape"] == list(four_d.shape) and rep["image"]["planes"] == 4
    assert [p["index"] for p in rep["planes"]] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert all(len(p["energies"]) == p["alternations"] for p in rep["planes"])
    assert rep["parameters"]["experts"] == "constant" and "numpy" in rep["versions"]


def test_stopping_between_planes_leaves_nothing_running(stack):
    gen = iter_self2seg_stack(stack, None, Self2SegConfig(**FAST))
    first = next(gen)
    assert first.plane == 0 and not first.finished and first.done == 0
    gen.close()  # what Cancel does
    with pytest.raises(StopIteration):
        next(gen)


def test_rgb_stack_and_2d_image(stack):
    cfg = Self2SegConfig(**FAST)
    rgb = np.stack([stack[:2], stack[:2] // 2, stack[:2]], axis=-1)  # (2, Y, X, 3)
    res = self2seg_stack(rgb, None, cfg)
    assert res.rgb and res.labels.shape == rgb.shape[:-1]
    assert res.denoised.shape == rgb.shape and res.experts.shape == (2, *rgb.shape)
    for i in range(2):
        _assert_plane_equal(res, i, self2seg(rgb[i], None, cfg))
    # A 2D image is a stack of one plane; rgb=False refuses a 3-pixel-wide "grey" reading.
    one = self2seg_stack(stack[0], None, cfg)
    assert one.labels.shape == stack.shape[1:] and one.indices == [()]
    with pytest.raises(DuetInputError, match="too small"):
        self2seg_stack(rgb, None, cfg, rgb=False)


def test_bad_seeds_are_reported_before_any_plane_runs(stack):
    cfg = Self2SegConfig(**FAST)
    with pytest.raises(DuetInputError, match="does not fit the stack"):
        next(iter_self2seg_stack(stack, np.zeros((2, 48, 48), np.uint8), cfg))
    partial = np.zeros(stack.shape, np.uint8)
    partial[0] = _seeds()
    partial[1, 20:28, 20:28] = 2  # foreground only
    with pytest.raises(DuetInputError, match=r"plane \(1,\): class 0 \(background\) has no seed"):
        next(iter_self2seg_stack(stack, partial, cfg))


# ---------------------------------------------------------------------------- CLI


def _run(args, capsys):
    code = main(["self2seg", *args, "--experts", "constant", "--max-alternations", "2",
                 "--quiet"])
    return code, capsys.readouterr().err


def test_cli_stack_outputs_have_the_stack_shape_and_pixel_size(stack, tmp_path, capsys):
    four_d = np.stack([stack, stack[::-1]])  # (2, 3, Y, X): T, Z, Y, X
    path = tmp_path / "stack.tif"
    _imwrite(path, four_d, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": "TZYX", "spacing": 2.0, "unit": "um"})
    out = tmp_path / "out"
    code, err = _run([str(path), "-o", str(out)], capsys)
    assert code == 0, err
    api = self2seg_stack(four_d, None, Self2SegConfig(**FAST))
    names = ["mask.tif", "denoised.tif", "expert_0.tif", "expert_1.tif"]
    for name in names:
        with tifffile.TiffFile(out / name) as tif:
            arr = tif.asarray()
            assert arr.shape == four_d.shape, name
            assert tif.series[0].axes == "TZYX"
            assert tif.pages[0].resolution == pytest.approx((4.0, 4.0))
            assert tif.shaped_metadata[0]["spacing"] == 2.0
    assert np.array_equal(tifffile.imread(out / "mask.tif"), api.labels)
    assert np.array_equal(tifffile.imread(out / "expert_1.tif"), api.experts[1])
    rep = json.loads((out / "report.json").read_text())
    assert rep["image"]["planes"] == 6 and len(rep["planes"]) == 6
    assert rep["pixel_info"]["axes"] == "TZYX"


def test_cli_regions_equal_api_regions(stack, tmp_path, capsys):
    cfg = Self2SegConfig(**FAST)
    # 2D image, 2D labels.
    img = tmp_path / "img.tif"
    _imwrite(img, stack[0])
    seeds = _seeds()
    lab = tmp_path / "labels.tif"
    _imwrite(lab, seeds)
    code, err = _run([str(img), "-o", str(tmp_path / "o2"), "--regions", str(lab)], capsys)
    assert code == 0, err
    assert np.array_equal(tifffile.imread(tmp_path / "o2" / "mask.tif"),
                          self2seg(stack[0], seeds, cfg).labels)
    # Stack, one label image per plane (the middle plane unlabelled: automatic start).
    st = tmp_path / "stack.tif"
    _imwrite(st, stack)
    per_plane = np.zeros(stack.shape, np.int32)
    per_plane[0] = seeds
    per_plane[2] = _seeds(fg=(10, 30, 16, 40))
    labs = tmp_path / "labels3.tif"
    _imwrite(labs, per_plane)
    code, err = _run([str(st), "-o", str(tmp_path / "o3"), "--regions", str(labs)], capsys)
    assert code == 0, err
    api = self2seg_stack(stack, per_plane, cfg)
    assert np.array_equal(tifffile.imread(tmp_path / "o3" / "mask.tif"), api.labels)
    assert np.array_equal(tifffile.imread(tmp_path / "o3" / "denoised.tif"), api.denoised)
    with tifffile.TiffFile(tmp_path / "o3" / "mask.tif") as tif:  # 3 planes, not one RGB image
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert len(tif.pages) == 3
    rep = json.loads((tmp_path / "o3" / "report.json").read_text())
    assert [p["seeded"] for p in rep["planes"]] == [True, False, True]
    # Stack, one 2D label image for every plane; boxes likewise apply to every plane.
    code, err = _run([str(st), "-o", str(tmp_path / "o4"), "--regions", str(lab)], capsys)
    assert code == 0, err
    shared = self2seg_stack(stack, seeds, cfg).labels
    assert np.array_equal(tifffile.imread(tmp_path / "o4" / "mask.tif"), shared)
    code, err = _run([str(st), "-o", str(tmp_path / "o5"), "--fg-box", "20", "20", "28", "28",
                      "--bg-box", "0", "0", "6", "6"], capsys)
    assert code == 0, err
    assert np.array_equal(tifffile.imread(tmp_path / "o5" / "mask.tif"), shared)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--fg-box", "20", "20", "28", "28"], "not both"),
        (["--class-box", "0", "0", "0", "6", "6"], "not both"),
    ],
)
def test_cli_regions_and_boxes_exclusive(stack, tmp_path, capsys, extra, words):
    img = tmp_path / "img.tif"
    _imwrite(img, stack[0])
    lab = tmp_path / "labels.tif"
    _imwrite(lab, _seeds())
    code, err = _run([str(img), "-o", str(tmp_path / "o"), "--regions", str(lab), *extra],
                     capsys)
    assert code == 2 and words in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()


def test_cli_bad_regions_exit_2(stack, tmp_path, capsys):
    st = tmp_path / "stack.tif"
    _imwrite(st, stack)
    wrong = tmp_path / "wrong.tif"
    _imwrite(wrong, np.zeros((2, 48, 48), np.uint8))
    code, err = _run([str(st), "-o", str(tmp_path / "o"), "--regions", str(wrong)], capsys)
    assert code == 2 and "does not fit the stack" in err and err.strip().count("\n") == 0
    too_many = tmp_path / "many.tif"
    _imwrite(too_many, np.full((48, 48), 5, np.uint8))
    code, err = _run([str(st), "-o", str(tmp_path / "o"), "--regions", str(too_many)], capsys)
    assert code == 2 and "0..2" in err
    code, err = _run([str(st), "-o", str(tmp_path / "o"), "--regions",
                      str(tmp_path / "missing.tif")], capsys)
    assert code == 2 and "not found" in err


def test_cli_help_mentions_stacks_and_regions(capsys):
    with pytest.raises(SystemExit):
        main(["self2seg", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--regions" in text and "plane by plane" in text and "k+1 = class k" in text
