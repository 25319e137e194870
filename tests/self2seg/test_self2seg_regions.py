import numpy as np
import pytest

from napari_duet import DuetInputError
from napari_duet.self2seg import boxes_to_regions
from napari_duet.self2seg._regions import auto_labels, validate_regions


def test_boxes_paint_classes_and_later_boxes_win():
    reg = boxes_to_regions((10, 12), fg_boxes=[(2, 2, 5, 6)], bg_boxes=[(0, 0, 4, 4)])
    assert reg.dtype == np.uint8 and reg.shape == (10, 12)
    assert reg[0, 0] == 1  # background seed = class 0 + 1
    assert reg[3, 3] == 2  # overlap: the foreground box was painted later
    assert reg[4, 5] == 2 and reg[5, 5] == 0 and reg[9, 11] == 0
    assert (reg == 2).sum() == 3 * 4


def test_class_boxes_for_k_classes_and_rgb_shape():
    reg = boxes_to_regions((8, 8, 3), class_boxes={0: [(0, 0, 2, 2)], 2: [(6, 6, 8, 8)]})
    assert reg[0, 0] == 1 and reg[7, 7] == 3 and reg[4, 4] == 0


@pytest.mark.parametrize(
    "box, words",
    [((20, 20, 30, 30), "outside"), ((5, 5, 12, 9), "partly outside"),
     ((-1, 0, 3, 3), "partly outside"), ((4, 4, 4, 8), "empty")],
)
def test_bad_boxes_raise_one_line(box, words):
    with pytest.raises(DuetInputError) as info:
        boxes_to_regions((10, 10), fg_boxes=[box])
    msg = str(info.value)
    assert words in msg and "\n" not in msg and "foreground box" in msg


def test_validate_regions_errors():
    reg = np.zeros((6, 6), int)
    reg[0, 0] = 2
    with pytest.raises(DuetInputError, match="class 0 .background. has no seed"):
        validate_regions(reg, (6, 6), 2)
    reg[5, 5] = 1
    assert validate_regions(reg, (6, 6), 2).dtype == np.int64
    with pytest.raises(DuetInputError, match="does not match"):
        validate_regions(reg, (6, 7), 2)
    reg[3, 3] = 5
    with pytest.raises(DuetInputError, match="0..2"):
        validate_regions(reg, (6, 6), 2)
    with pytest.raises(DuetInputError, match="integer"):
        validate_regions(reg > 0, (6, 6), 2)


def test_auto_labels_brighter_is_foreground_and_invert():
    img = np.zeros((20, 20), np.float32)
    img[5:15, 5:15] = 10
    lab = auto_labels(img, 2, sigma=1.0)
    assert lab[10, 10] == 1 and lab[0, 0] == 0
    inv = auto_labels(img, 2, sigma=1.0, invert=True)
    assert inv[10, 10] == 0 and inv[0, 0] == 1
    img3 = np.zeros((20, 30), np.float32)
    img3[:, 10:20] = 5
    img3[:, 20:] = 10
    lab3 = auto_labels(img3, 3, sigma=0.5)
    assert lab3[10, 2] == 0 and lab3[10, 15] == 1 and lab3[10, 27] == 2
    with pytest.raises(DuetInputError, match="constant"):
        auto_labels(np.ones((10, 10)), 2)
