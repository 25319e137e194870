"""Instance labels: touching nuclei split, single nuclei kept whole; the DSB AP metric."""

import numpy as np
import pytest
import tifffile

from napari_duet.core.metrics import average_precision
from napari_duet.self2seg import (
    Self2SegConfig,
    label_instances,
    measure_objects,
    self2seg,
    split_instances,
)


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def test_two_touching_discs_become_two_objects():
    m = _disc((80, 100), 40, 32, 14) | _disc((80, 100), 40, 57, 14)
    assert np.sum(m) > 0 and len(np.unique(m)) == 2
    inst = split_instances(m)
    assert inst.max() == 2
    # each disc is (almost) one object: the cut runs along the neck
    for cx in (32, 57):
        ids, counts = np.unique(inst[_disc(m.shape, 40, cx, 10)], return_counts=True)
        assert len(ids) == 1 and ids[0] > 0
    assert (inst > 0).sum() == m.sum()


@pytest.mark.parametrize("r", [4, 9, 25])
def test_one_disc_is_not_split(r):
    m = _disc((80, 80), 40, 40, r)
    assert split_instances(m).max() == 1


def test_ellipse_and_ragged_disc_not_split():
    yy, xx = np.mgrid[:100, :100]
    ell = ((yy - 50) / 12.0) ** 2 + ((xx - 50) / 30.0) ** 2 < 1
    assert split_instances(ell).max() == 1
    rng = np.random.default_rng(0)
    ragged = _disc((100, 100), 50, 50, 20) ^ (rng.random((100, 100)) < 0.02) & \
        ~_disc((100, 100), 50, 50, 17)
    assert split_instances(ragged).max() == 1


def test_specks_dropped_and_numbering_is_compact():
    m = _disc((60, 60), 20, 20, 8)
    m[50, 50] = True  # a one-pixel speck
    inst = split_instances(m, min_size=8)
    assert inst.max() == 1 and inst[50, 50] == 0


def test_label_instances_stack_and_classes_numbered_uniquely():
    lab = np.zeros((2, 60, 60), np.uint8)
    lab[0][_disc((60, 60), 20, 20, 8)] = 1
    lab[1][_disc((60, 60), 40, 40, 8)] = 1
    lab[1][_disc((60, 60), 10, 45, 6)] = 2
    inst = label_instances(lab, n_classes=3)
    assert sorted(np.unique(inst)) == [0, 1, 2, 3]


def test_measure_objects_columns():
    inst = np.zeros((40, 40), np.int32)
    inst[2:6, 2:12] = 1
    inst[20:30, 20:30] = 2
    img = np.zeros((40, 40))
    img[inst == 2] = 5.0
    t = measure_objects(inst, img)
    assert list(t["label"]) == [1, 2]
    assert list(t["area"]) == [40, 100]
    assert t["mean_intensity"][1] == pytest.approx(5.0)
    assert t["centroid_y"][0] == pytest.approx(3.5) and t["centroid_x"][1] == pytest.approx(24.5)


def test_average_precision_counts_matches():
    gt = np.zeros((50, 50), np.int32)
    gt[5:15, 5:15] = 1
    gt[30:40, 30:40] = 2
    pred = np.zeros_like(gt)
    pred[5:15, 5:15] = 7  # perfect
    pred[30:40, 30:36] = 3  # IoU 0.6
    pred[45:48, 45:48] = 4  # false positive
    ap = average_precision(pred, gt)
    assert ap[0.5] == pytest.approx(2 / 3)  # TP 2, FP 1, FN 0
    assert ap[0.65] == pytest.approx(1 / 4)  # TP 1, FP 2, FN 1
    assert average_precision(np.zeros_like(gt), np.zeros_like(gt))[0.5] == 1.0


def test_result_and_cli_give_instances(tmp_path):
    from napari_duet.cli import main

    m = _disc((64, 90), 32, 30, 12) | _disc((64, 90), 32, 52, 12)
    img = (20 + 100 * m + np.random.default_rng(1).normal(0, 8, m.shape)).astype(np.float32)
    res = self2seg(img, config=Self2SegConfig(experts="constant"))
    assert res.instances.max() == 2
    tifffile.imwrite(tmp_path / "in.tif", img)
    assert main(["self2seg", str(tmp_path / "in.tif"), "-o", str(tmp_path / "o"),
                 "--experts", "constant", "-q"]) == 0
    lab = tifffile.imread(tmp_path / "o" / "labels.tif")
    assert lab.dtype == np.uint16 and lab.shape == img.shape and lab.max() == 2
