"""Training governed by a time budget, resolved by device and volume size."""

import time

import numpy as np
import pytest
import torch
from nsn2n_synth import FAST, add_noise, make_clean

from napari_duet import DuetInputError
from napari_duet.nsn2n import NSN2NConfig, resolve_budget, train
from napari_duet.nsn2n._train import CPU_BUDGET_RANGE, CPU_BUDGET_S, GPU_BUDGET_S


def test_auto_budget_by_device_and_size():
    auto = NSN2NConfig()
    assert auto.iterations is None and auto.budget == "auto"
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    ref = 48 * 256 * 256
    assert resolve_budget(auto, cpu, ref) == pytest.approx(CPU_BUDGET_S)
    # smaller volumes train less (4th root of the size: 16 x smaller, half as long)
    assert resolve_budget(auto, cpu, ref // 16) == pytest.approx(CPU_BUDGET_S / 2)
    assert resolve_budget(auto, cpu, 10) == CPU_BUDGET_RANGE[0]
    assert resolve_budget(auto, cpu, 100 * ref) == CPU_BUDGET_RANGE[1]
    assert resolve_budget(auto, cuda, ref) == GPU_BUDGET_S
    # the ceiling of the issue: <= 10 min in all on 2 CPU cores, training is the bulk
    assert CPU_BUDGET_RANGE[1] <= 360
    # fixed steps: no time limit unless a budget is given explicitly
    assert resolve_budget(auto.replace(iterations=50), cpu, ref) is None
    assert resolve_budget(auto.replace(iterations=50, budget=7), cpu, ref) == 7.0


class _Clock:
    """The training loop's clock, advancing 10 ms each time it is read.

    The budget logic is then tested on its own, not against the machine's load: a step costs
    a fixed number of readings, so "stops within the step that spends the budget" is exact.
    """

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 0.01
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch):
    from napari_duet.nsn2n import _train as train_module

    fake = _Clock()
    monkeypatch.setattr(train_module, "time", fake)
    return fake


def test_training_stops_at_the_time_budget_and_reports_it(clock):
    noisy = add_noise(make_clean(6, 32, 32))
    cfg = NSN2NConfig(**{**FAST, "iterations": None, "budget": 1.5, "preview_every": 0,
                         "tta": False})
    res = train(noisy, config=cfg)
    info = res.model.training
    steps = info["iterations_done"]
    assert info["budget_s"] == 1.5 and steps > 5
    # Trains until the budget is spent, and stops within the step that spends it.
    per_step = res.timings["train"] / steps
    assert 1.5 <= res.timings["train"] <= 1.5 + 2 * per_step, (res.timings, steps)
    assert len(res.loss_history["total"]) == steps
    rep = res.report()
    assert rep["training"]["budget_s"] == 1.5
    assert rep["training"]["iterations_done"] == steps


def test_budget_caps_fixed_iterations(clock):
    noisy = add_noise(make_clean(4, 24, 24))
    cfg = NSN2NConfig(**{**FAST, "iterations": 10**6, "budget": 0.5, "preview_every": 0,
                         "tta": False})
    res = train(noisy, config=cfg)
    steps = res.model.training["iterations_done"]
    assert 1 < steps < 10**6
    assert 0.5 <= res.timings["train"] <= 0.5 + 2 * res.timings["train"] / steps


@pytest.mark.parametrize("kw", [{"budget": 0}, {"budget": -3.0}, {"budget": "fast"},
                                {"iterations": 0}, {"context": "3d"}, {"width": 0}])
def test_bad_budget_and_context_raise_one_line(kw):
    with pytest.raises(DuetInputError) as e:
        NSN2NConfig(**kw)
    assert "\n" not in str(e.value)


def test_auto_width_by_device():
    from napari_duet.nsn2n._train import resolve_width

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_width(NSN2NConfig(), cpu) < resolve_width(NSN2NConfig(), cuda)
    assert resolve_width(NSN2NConfig(width=12), cuda) == 12
    assert resolve_width(NSN2NConfig(context="2d"), cpu) == 16
    # the blind-spot network: narrower on a CPU (more steps in the budget), 48 on a GPU
    assert resolve_width(NSN2NConfig(context="blind"), cpu) == 16
    assert resolve_width(NSN2NConfig(context="blind"), cuda) == 48
    assert resolve_width(NSN2NConfig(context="2.5d"), cpu) == 24
    np.testing.assert_equal(NSN2NConfig().context, "auto")
