"""When training stops (plateau, step cap from the data size, time budget) and which
epoch it keeps (per-structure validation gains, not the loss over all channels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_duet.denoisplit import SplitConfig, TrainConfig, train
from napari_duet.denoisplit._data import MIN_STEP_CAP, default_max_steps
from napari_duet.denoisplit._train import checkpoint_score, keep_best, resolved_minutes


def _pick(history, rule):
    bests: dict = {}
    for epoch, (loss, gains) in enumerate(history, start=1):
        keep_best(bests, epoch, loss, gains, lambda e=epoch: {"w": torch.tensor(float(e))})
    score, state, epoch = bests[rule]
    assert float(state["w"]) == epoch  # the weights of the epoch it names
    return epoch


def test_gain_rule_keeps_the_epoch_where_every_structure_gains_not_the_least_loss():
    """Epoch 2 has the least loss over all channels because one easy structure gains
    3 dB there, while the other gains 0.3 dB; epoch 3 gains at least 1.2 dB on both.
    The loss rule (and the sum of gains) keep epoch 2, the smallest-gain rule epoch 3."""
    history = [(1.0, [0.5, 0.2]), (0.8, [3.0, 0.3]), (0.9, [2.0, 1.2]), (1.1, [1.0, 1.0])]
    assert _pick(history, "val_loss") == 2
    assert _pick(history, "min_gain") == 3
    assert _pick(history, "sum_gain") == 2  # 3.3 dB in all against 3.2: the easy one decides
    # A non-finite validation never counts as better.
    assert checkpoint_score("min_gain", 1.0, [float("nan"), 2.0]) == math.inf
    assert checkpoint_score("val_loss", float("inf"), [1.0, 1.0]) == math.inf


def test_a_structure_not_learned_yet_does_not_decide_the_kept_epoch():
    """Structure C stays a little below the constant split (the fallback will give it
    that split) while A and B keep improving: ``min_learned`` keeps the last epoch,
    where A and B gain most, and keeps finding better epochs (so no plateau);
    ``min_gain`` (the default before) keeps epoch 2, where C's estimate happened to be
    least negative, and finds nothing better after it."""
    history = [(1.0, [0.3, 0.2, -0.09]), (1.0, [0.5, 0.5, -0.01]), (1.0, [1.0, 1.1, -0.3]),
               (1.0, [1.5, 1.6, -0.4]), (1.0, [2.0, 2.4, -0.35]), (1.0, [2.6, 3.1, -0.3])]
    assert TrainConfig().checkpoint_rule == "min_learned"
    assert _pick(history, "min_gain") == 2
    assert _pick(history, "min_learned") == 6
    # Every structure learned: the smallest gain decides, as with min_gain.
    learned = [(1.0, [4.0, 0.5, 1.0]), (1.0, [3.0, 1.2, 1.3]), (1.0, [6.0, 1.1, 1.4])]
    assert _pick(learned, "min_learned") == _pick(learned, "min_gain") == 2
    assert checkpoint_score("min_learned", 1.0, [2.0, -1.0]) == pytest.approx(-0.02)


def _data(side=96, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    a = 20 + 15 * (np.sin(xx / 5.0) > 0.5)
    b = 10 + 10 * (np.cos(yy / 7.0) > 0.3)
    return [rng.poisson(a).astype(np.float32), rng.poisson(b).astype(np.float32)]


def _tc(**kw):
    base = dict(patch_size=16, batch_size=4, steps_per_epoch=3, device="cpu",
                calibrate=False, likelihood="gaussian", kl="musplit", log_every=1)
    return TrainConfig(**{**base, **kw})


def test_training_stops_on_a_plateau_and_records_why():
    """With a learning rate too small to change anything (and no batch norm, whose
    statistics would still move) the validation never improves after the first
    epoch: training stops after ``early_stopping`` more epochs, keeps epoch 1 and says
    so in the model."""
    res = train(_data(), SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0, batchnorm=False),
                _tc(epochs=50, early_stopping=3, lr=1e-12, plateau_min_fraction=0.0))
    tr = res.model.training
    assert tr["stop_reason"] == "plateau"
    assert tr["epochs_run"] == 4 and tr["best_epoch"] == 1 and tr["steps_run"] == 12
    assert len(res.history) == 4 and res.history[-1]["steps"] == 12
    assert tr["checkpoint_rule"] == "min_learned" and set(tr["best_epoch_by_rule"]) >= {
        "min_learned", "min_gain", "sum_gain", "val_loss", "min_gain@1 noise model"}


def test_the_plateau_waits_for_half_the_step_cap():
    """On a small field an epoch is 10 steps, so the plateau's 30 epochs can be 300 of
    1500 steps (the development set's nuclei + tubulin + actin stopped after 380-480,
    actin +0.67 dB).  Nothing improves after epoch 1 here (learning rate 1e-12): by
    default the plateau waits for half of the 40-step cap (epoch 7, 21 steps) instead of
    stopping after 3 more epochs (12 steps, as before and with 0)."""
    cfg = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0, batchnorm=False)
    tr = train(_data(), cfg, _tc(epochs=50, early_stopping=3, lr=1e-12,
                                 max_steps=40)).model.training
    assert (tr["stop_reason"], tr["steps_run"], tr["epochs_run"]) == ("plateau", 21, 7)
    assert tr["best_epoch"] == 1
    assert tr["train_config"]["plateau_min_fraction"] == 0.5  # recorded in the model
    tr = train(_data(), cfg, _tc(epochs=50, early_stopping=3, lr=1e-12, max_steps=40,
                                 plateau_min_fraction=0.0)).model.training
    assert (tr["stop_reason"], tr["steps_run"]) == ("plateau", 12)


def test_training_stops_at_the_step_cap_inside_an_epoch():
    res = train(_data(), SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0, batchnorm=False),
                _tc(epochs=50, max_steps=7, early_stopping=50))
    tr = res.model.training
    assert (tr["stop_reason"], tr["steps_run"], tr["epochs_run"]) == ("step cap", 7, 3)
    assert tr["max_steps"] == 7 and tr["max_minutes"] == 9.0  # the CPU's default budget


def test_step_cap_and_time_budget_follow_the_data_and_the_device():
    small = np.zeros((1, 2, 435, 384), np.float32)  # a development-set training field
    assert default_max_steps(small, 64, 8) == 40 * 6 * 6 * 8 // 8  # 1440
    field = np.zeros((1, 2, 384, 384), np.float32)
    big = np.zeros((1, 2, 768, 768), np.float32)  # four times the field: four times
    assert default_max_steps(big, 64, 8) == 4 * default_max_steps(field, 64, 8)
    assert default_max_steps(big, 64, 16) == 2 * default_max_steps(field, 64, 8)
    stack = np.zeros((3, 2, 384, 384), np.float32)  # three frames: three times
    assert default_max_steps(stack, 64, 8) == 3 * default_max_steps(field, 64, 8)
    assert default_max_steps(np.zeros((1, 2, 40, 40), np.float32), 64, 16) == MIN_STEP_CAP
    # More structures in a small field: a higher floor (each structure has to be learned
    # from the same few patches); a large field's cap is the data's, whatever the count.
    held_out = np.zeros((1, 3, 297, 262), np.float32)  # a 350 x 350 field's training part
    assert default_max_steps(held_out[:, :2], 64, 8) == MIN_STEP_CAP == 1000
    assert default_max_steps(held_out, 64, 8) == 1500
    assert default_max_steps(np.zeros((1, 4, 40, 40), np.float32), 64, 8) == 2000
    large = np.zeros((1, 3, 870, 768), np.float32)
    assert default_max_steps(large, 64, 8) == default_max_steps(large[:, :2], 64, 8) == 6240
    assert resolved_minutes(TrainConfig(), torch.device("cpu")) == 9.0
    assert resolved_minutes(TrainConfig(), torch.device("cuda")) == math.inf
    assert resolved_minutes(TrainConfig(max_minutes=2.5), torch.device("cuda")) == 2.5
