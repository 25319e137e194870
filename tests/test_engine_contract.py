"""One contract for the three engines: progress base fields, results, model methods."""

from __future__ import annotations

import numpy as np
import pytest

from napari_duet.core.progress import Progress, run_to_end
from napari_duet.denoisplit import PredictProgress, SplitModel, TrainProgress
from napari_duet.nsn2n import NSN2NConfig, NSN2NModel, NSN2NProgress, iter_train
from napari_duet.nsn2n._chunked import SlabProgress
from napari_duet.nsn2n._model import DenoiseProgress
from napari_duet.self2seg import Self2SegConfig, Self2SegProgress, Self2SegState, iter_self2seg
from napari_duet.self2seg._stack import Self2SegStackState


@pytest.mark.parametrize("cls", [NSN2NProgress, DenoiseProgress, SlabProgress, Self2SegState,
                                 Self2SegProgress, Self2SegStackState, TrainProgress,
                                 PredictProgress])
def test_every_progress_type_extends_the_base(cls):
    assert issubclass(cls, Progress)


def _volume():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    clean = ndimage.gaussian_filter(rng.random((4, 24, 24)), (1, 2, 2))
    return (clean + 0.05 * rng.standard_normal(clean.shape)).astype(np.float32)


def test_nsn2n_fills_the_base_fields_and_the_model_has_the_common_methods():
    cfg = NSN2NConfig(iterations=4, width=4, batch_size=2, crop_size=16, device="cpu",
                      tta=False, preview_every=0)
    states = []
    result = run_to_end(iter_train(_volume(), 0, cfg), states.append)
    assert [s.stage for s in states] == ["guide"] * 4 + ["train"] * 4 + ["denoise"] * 4
    assert [(s.done, s.total) for s in states if s.stage != "train"] == [(1, 4), (2, 4),
                                                                         (3, 4), (4, 4)] * 2
    assert [s.done for s in states if s.stage == "train"] == [1, 2, 3, 4]
    fractions = [s.fraction for s in states]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert all(s.eta is None for s in states[:4])  # unknown before training, never NaN
    assert all(s.eta is not None and s.eta >= 0 for s in states[4:])
    assert all(s.losses for s in states[4:]) and not states[0].losses
    assert result.report()["method"] == "nsn2n"
    model = result.model
    # One name per method, no pre-1.0 aliases (denoise, iter_denoise, info).
    assert not {"denoise", "iter_denoise", "info"} & set(dir(NSN2NModel))
    meta = model.metadata()
    assert meta["kind"] == "nsn2n" and meta["training"]["iterations_done"] == 4
    assert {"predict", "iter_predict", "metadata"} <= set(dir(SplitModel))


def test_self2seg_states_count_alternations():
    rng = np.random.default_rng(1)
    img = np.zeros((32, 32), np.float32)
    img[8:24, 8:24] = 1.0
    img += 0.2 * rng.standard_normal(img.shape).astype(np.float32)
    cfg = Self2SegConfig(experts="constant", max_alternations=3)
    items = []
    result = run_to_end(iter_self2seg(img, None, cfg, progress=True), items.append)
    states = [s for s in items if isinstance(s, Self2SegState)]
    assert states and all(s.stage == "alternation" for s in states)
    assert [(s.done, s.total) for s in states] == [(i + 1, 3) for i in range(len(states))]
    steps = [s for s in items if isinstance(s, Self2SegProgress)]
    assert not hasattr(steps[0], "step") and not hasattr(steps[0], "total_steps")  # no aliases
    assert result.report()["method"] == "self2seg"
