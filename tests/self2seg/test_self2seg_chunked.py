"""``duet self2seg STACK -o OUT.ome.zarr``: plane tasks, equal to the in-memory stack run."""

import json

import numpy as np
import pytest
import zarr

from napari_duet.cli import main
from napari_duet.core.chunks import staging_path
from napari_duet.core.io import ImageMeta, open_image, write_ome_zarr
from napari_duet.core.synthetic import synthetic_nuclei
from napari_duet.self2seg import Self2SegConfig, boxes_to_regions, self2seg_stack
from napari_duet.self2seg._chunked import iter_self2seg_chunked

FAST = ["--experts", "constant", "--max-alternations", "2"]
META = ImageMeta(("z", "y", "x"), (2.0, 0.3, 0.3), ("micrometer",) * 3)


@pytest.fixture(scope="module")
def stack():
    return np.stack([synthetic_nuclei((40, 44), noise_sigma=15, seed=s).noisy
                     for s in range(4)]).astype(np.uint16)


@pytest.fixture
def stack_zarr(tmp_path, stack):
    path = tmp_path / "stack.ome.zarr"
    write_ome_zarr(path, stack, META, levels=1, chunks=(2, 40, 44))
    return path


@pytest.mark.parametrize("experts", ["constant", "linear"])
def test_chunked_equals_in_memory_stack(stack, experts):
    cfg = Self2SegConfig(experts=experts, max_alternations=2, seed=3)
    seeds = boxes_to_regions(stack.shape[1:], [(15, 15, 25, 25)], [(0, 0, 5, 5)])
    ref = self2seg_stack(stack, seeds, cfg)
    labels = np.full(stack.shape, 9, np.uint8)
    den = np.full(stack.shape, np.nan, np.float32)
    events = list(iter_self2seg_chunked(zarr.array(stack), labels, den, seeds, cfg))
    assert [e.done for e in events] == [1, 2, 3, 4] and events[-1].total == 4
    np.testing.assert_array_equal(labels, ref.labels)
    np.testing.assert_array_equal(den, ref.denoised)


def test_cli_zarr_output_keeps_axes_and_scale(tmp_path, stack, stack_zarr):
    out = tmp_path / "seg.ome.zarr"
    log = tmp_path / "log.jsonl"
    assert main(["self2seg", str(stack_zarr), "-o", str(out), *FAST, "-q",
                 "--log-json", str(log)]) == 0
    den, meta = open_image(out)
    assert meta == META and den.shape == stack.shape and den.dtype == np.float32
    group = zarr.open_group(str(out), mode="r")
    labels = group["labels/mask/0"]
    assert labels.dtype == np.uint8 and labels.shape == stack.shape
    assert zarr.open_group(str(out / "labels"), mode="r").attrs["ome"]["labels"] == ["mask"]
    mask_ms = zarr.open_group(str(out / "labels" / "mask"), mode="r").attrs["ome"]
    assert [a["name"] for a in mask_ms["multiscales"][0]["axes"]] == ["z", "y", "x"]
    ref = self2seg_stack(stack, None, Self2SegConfig(experts="constant", max_alternations=2))
    np.testing.assert_array_equal(labels[...], ref.labels)
    np.testing.assert_array_equal(den[...], ref.denoised)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["done"] for e in events if e.get("stage") == "planes"] == [1, 2, 3, 4]
    rep = json.loads((tmp_path / "seg.ome.json").read_text())
    assert rep["chunked"] and rep["image"]["planes"] == 4 and len(rep["planes"]) == 4
    assert rep["scale"] == [2.0, 0.3, 0.3]
    assert group.attrs["napari_duet"]["complete"]


def test_cli_resume_segments_the_missing_planes_only(tmp_path, stack_zarr, monkeypatch):
    import napari_duet.self2seg._engine as engine

    out, full = tmp_path / "seg.ome.zarr", tmp_path / "full.ome.zarr"
    args = ["self2seg", str(stack_zarr), "-o", str(out), *FAST, "-q"]
    assert main([*args[:3], str(full), *args[4:]]) == 0
    calls = [0]
    original = engine.self2seg

    def dying(*a, **k):
        calls[0] += 1
        if calls[0] > 2:  # two planes finished, then the run is killed
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(engine, "self2seg", dying)
    assert main(args) == 130
    assert not out.exists()  # staged beside the output until complete
    state = zarr.open_group(str(staging_path(out)), mode="r").attrs["napari_duet"]["state"]
    assert state["done"] == [0, 1]
    calls[0] = -100
    assert main([*args, "--resume"]) == 0
    assert calls[0] + 100 == 2  # planes 2 and 3 only
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(full), mode="r")
    np.testing.assert_array_equal(a["0"][...], b["0"][...])
    np.testing.assert_array_equal(a["labels/mask/0"][...], b["labels/mask/0"][...])
    rep = json.loads((tmp_path / "seg.ome.json").read_text())
    assert len(rep["planes"]) == 4


def test_resume_refuses_another_runs_store(tmp_path, stack_zarr, capsys):
    out = tmp_path / "seg.ome.zarr"
    assert main(["self2seg", str(stack_zarr), "-o", str(out), *FAST, "-q"]) == 0
    capsys.readouterr()
    assert main(["self2seg", str(stack_zarr), "-o", str(out), *FAST, "-q", "--seed", "5",
                 "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]
    assert main(["self2seg", str(stack_zarr), "-o", str(tmp_path / "dir"), *FAST, "-q",
                 "--resume"]) == 2  # --resume needs a zarr output
