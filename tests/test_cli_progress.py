"""CLI progress bars, ``--log-json``, ``-q`` and ``--threads`` on every compute command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
import torch

from napari_duet.cli import main
from napari_duet.cli._progress import CLIProgress, describe
from napari_duet.core.devices import parse_threads, resolve_threads, run_with_threads, torch_threads
from napari_duet.core.progress import run_to_end


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:24, 0:24]
    clean = np.stack([60 + 100 * ((yy - 12) ** 2 + (xx - 12 - z) ** 2 < 40) for z in range(5)])
    vol = (clean + rng.normal(0, 20, clean.shape)).clip(0, 255).astype(np.uint8)
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, vol)
    return path


@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
    from napari_duet.denoisplit._synthetic import synthetic_split

    root = tmp_path_factory.mktemp("split_progress")
    d = synthetic_split((32, 32), seed=0)
    paths = {"root": root}
    for name, arr in {"a": d.noisy_a, "b": d.noisy_b, "ca": d.clean_a, "cb": d.clean_b,
                      "sum": d.noisy_a + d.noisy_b}.items():
        paths[name] = root / f"{name}.tif"
        tifffile.imwrite(paths[name], arr.astype(np.float32))
    return paths


def _events(path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert lines, "empty JSON log"
    # Strict JSON: NaN / Infinity would fail here.
    recs = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
            for line in lines]
    assert recs[0]["event"] == "start" and recs[-1]["event"] == "end"
    assert recs[-1]["status"] == "ok"
    for r in recs:
        assert {"time", "elapsed", "command", "event"} <= set(r)
        for v in r.values():
            assert not (isinstance(v, float) and not math.isfinite(v))
    return recs


def _progress(recs, stage) -> list[dict]:
    return [r for r in recs if r["event"] == "progress" and r["stage"] == stage]


def _assert_increasing(evs, total=None):
    assert evs
    done = [e["done"] for e in evs]
    assert done == sorted(done) and done[-1] > done[0] or len(done) == 1
    if total is not None:
        assert {e["total"] for e in evs} == {total}
        assert all(0 <= d <= total for d in done)


# --------------------------------------------------------------------------- self2seg
def test_self2seg_bar_on_stderr_and_json_log(blob_tif, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DUET_PROGRESS", "1")
    log = tmp_path / "log.jsonl"
    code = main(["self2seg", str(blob_tif), "-o", str(tmp_path / "o"), "--experts", "constant",
                 "--max-alternations", "3", "--log-json", str(log)])
    assert code == 0
    cap = capsys.readouterr()
    assert "self2seg:" in cap.err and "\r" in cap.err and "/3" in cap.err  # the tqdm bar
    assert "alternation 1/3" in cap.out and "wrote" in cap.out  # existing lines kept
    recs = _events(log)
    assert recs[0]["command"] == "self2seg" and recs[0]["threads"] >= 1
    evs = _progress(recs, "self2seg")
    _assert_increasing(evs, total=3)
    # The clock starts with the run (done 0), then moves within alternations; the
    # alternation states carry the energy.
    assert evs[0]["done"] == 0
    states = [e for e in evs if "energy" in e]
    assert [e["done"] for e in states][:1] == [1] and "alternations" in cap.err
    assert "alt/s" not in cap.err  # no rate in alternations per second


def test_self2seg_bar_moves_within_alternations(blob_tif, tmp_path):
    """CNN experts: progress events between alternations, at fractional counts."""
    log = tmp_path / "cnn.jsonl"
    assert main(["self2seg", str(blob_tif), "-o", str(tmp_path / "o"), "--expert-steps", "30",
                 "--max-alternations", "2", "-q", "--log-json", str(log)]) == 0
    evs = _progress(_events(log), "self2seg")
    _assert_increasing(evs, total=2)
    inside = [e["done"] for e in evs if 0 < e["done"] < 1]
    assert inside and any(e.get("stage_name") == "training experts" for e in evs)


def test_self2seg_quiet_has_no_bar_but_keeps_log(blob_tif, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DUET_PROGRESS", "1")
    log = tmp_path / "q.jsonl"
    code = main(["self2seg", str(blob_tif), "-o", str(tmp_path / "o"), "--experts", "constant",
                 "--max-alternations", "2", "-q", "--log-json", str(log)])
    assert code == 0
    cap = capsys.readouterr()
    assert cap.err == "" and cap.out == ""
    assert _progress(_events(log), "self2seg")


def test_self2seg_stack_progress_covers_planes(blob_tif, tmp_path, monkeypatch):
    img = tifffile.imread(blob_tif)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([img, img[::-1]]))
    log = tmp_path / "s.jsonl"
    assert main(["self2seg", str(path), "-o", str(tmp_path / "o"), "--experts", "constant",
                 "--max-alternations", "2", "-q", "--log-json", str(log)]) == 0
    evs = _progress(_events(log), "self2seg")
    _assert_increasing(evs, total=4)
    assert evs[-1]["done"] == 4 and {e["plane"] for e in evs if "plane" in e} == {1, 2}


def test_no_bar_when_stderr_is_not_a_terminal(blob_tif, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DUET_PROGRESS", raising=False)
    assert main(["self2seg", str(blob_tif), "-o", str(tmp_path / "o"), "--experts", "constant",
                 "--max-alternations", "1"]) == 0
    assert "\r" not in capsys.readouterr().err


# --------------------------------------------------------------------------- threads
def test_threads_set_during_run_and_restored(blob_tif, tmp_path, monkeypatch):
    before = torch.get_num_threads()
    target = 2 if before == 1 else 1
    seen = []
    import napari_duet.core.progress as engine  # the CLI drives the engine with run_to_end

    real = engine.run_to_end

    def spy(gen, callback=None):
        def cb(state):
            seen.append(torch.get_num_threads())
            if callback is not None:
                callback(state)
        return real(gen, cb)

    monkeypatch.setattr(engine, "run_to_end", spy)
    assert main(["self2seg", str(blob_tif), "-o", str(tmp_path / "o"), "--experts", "constant",
                 "--max-alternations", "2", "-q", "--threads", str(target)]) == 0
    assert seen and set(seen) == {target}
    assert torch.get_num_threads() == before
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["parameters"]["threads"] == target


def test_threads_restored_after_error(tmp_path):
    before = torch.get_num_threads()
    assert main(["self2seg", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o"),
                 "--threads", "1", "-q"]) == 2
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", ["0", "-2", "many"])
def test_bad_threads_exit_2_with_one_line(blob_tif, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        main(["self2seg", str(blob_tif), "-o", str(tmp_path / "o"), "--threads", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--threads" in err and err.count("\n") == 0


def test_resolve_threads_and_context_manager():
    assert parse_threads("auto") == "auto" and parse_threads("3") == 3
    assert resolve_threads(4) == 4
    assert resolve_threads("auto", napari_open=True) == 1
    assert 1 <= resolve_threads("auto", napari_open=False) <= max(torch.get_num_threads(), 1)
    before = torch.get_num_threads()
    with torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_run_with_threads_wraps_a_generator():
    before = torch.get_num_threads()
    target = 2 if before == 1 else 1

    def engine(n):
        for _ in range(n):
            yield torch.get_num_threads()
        return "result"

    seen = []
    assert run_to_end(run_with_threads(target, engine, 3), seen.append) == "result"
    assert seen == [target] * 3 and torch.get_num_threads() == before
    gen = run_with_threads(target, engine, 5)
    next(gen)
    gen.close()  # a cancelled run (widget Cancel) restores the count too
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------- reporter
def test_reporter_strict_json_and_stage(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DUET_PROGRESS", "1")
    log = tmp_path / "r.jsonl"
    prog = CLIProgress("demo", log_json=log)
    prog.update("train", 1, 10, losses={"total": float("nan"), "recon": np.float32(0.5)},
                eta=float("inf"), preview=np.zeros((4, 4)))
    with prog.stage("fit"):
        pass
    prog.close()
    recs = _events(log)
    first = _progress(recs, "train")[0]
    assert first["losses_total"] is None and first["losses_recon"] == 0.5
    assert first["eta"] is None and "preview" not in first
    assert [r["done"] for r in _progress(recs, "fit")] == [0, 1]
    assert "fit" in capsys.readouterr().err


def test_describe_maps_engine_objects():
    from napari_duet.denoisplit._predict import PredictProgress
    from napari_duet.denoisplit._train import SplitTrainProgress

    ev = describe(SplitTrainProgress(epoch=2, epochs=3, step=4, steps_per_epoch=10,
                                losses={"loss": 1.0}))
    assert (ev.stage, ev.done, ev.total) == ("train", 14, 30)
    assert ev.fields["losses"] == {"loss": 1.0} and ev.fields["epoch"] == 2
    ev = describe(SplitTrainProgress(epochs=3, stage="noise_model", done=0, total=2))
    assert ev.stage == "noise model" and ev.total is None
    ev = describe(PredictProgress(done=3, total=8, elapsed=1.0))
    assert (ev.stage, ev.done, ev.total) == ("predict", 3, 8)


def test_describe_reads_the_base_fields_of_any_progress():
    from napari_duet.core.progress import Progress

    ev = describe(Progress(stage="fit", done=2, total=5, losses={"nll": 0.5}, eta=3.0))
    assert (ev.stage, ev.done, ev.total) == ("fit", 2, 5)
    assert ev.fields == {"losses": {"nll": 0.5}, "eta": 3.0}
    ev = describe(Progress(stage="load"))
    assert (ev.stage, ev.done, ev.total) == ("load", 0, None)


# --------------------------------------------------------------------------- nsn2n
def test_nsn2n_train_and_apply_progress(volume, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DUET_PROGRESS", "1")
    out, model, log = tmp_path / "d.tif", tmp_path / "m.duet", tmp_path / "n.jsonl"
    assert main(["nsn2n", str(volume), "-o", str(out), "--iterations", "3", "--device", "cpu",
                 "--no-tta", "--save-model", str(model), "--log-json", str(log),
                 "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "train:" in err and "denoise:" in err and "\r" in err
    recs = _events(log)
    _assert_increasing(_progress(recs, "guide"), total=5)
    train = _progress(recs, "train")
    _assert_increasing(train, total=3)
    assert train[-1]["done"] == 3 and "losses_total" in train[-1]
    _assert_increasing(_progress(recs, "denoise"), total=5)
    assert json.loads((tmp_path / "d.json").read_text())["threads"] == 1

    # Applying a saved model: silent before, now a bar over the slices.
    log2 = tmp_path / "apply.jsonl"
    assert main(["nsn2n", str(volume), "-o", str(tmp_path / "a.tif"), "--model", str(model),
                 "--device", "cpu", "--no-tta", "--log-json", str(log2)]) == 0
    assert "denoise:" in capsys.readouterr().err
    recs = _events(log2)
    den = _progress(recs, "denoise")
    _assert_increasing(den, total=5)
    assert den[-1]["done"] == 5 and _progress(recs, "load model")

    assert main(["nsn2n", str(volume), "-o", str(tmp_path / "q.tif"), "--model", str(model),
                 "--device", "cpu", "--no-tta", "-q"]) == 0
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- split
def test_split_and_noise_model_progress(split_files, capsys, monkeypatch):
    monkeypatch.setenv("DUET_PROGRESS", "1")
    root = split_files["root"]
    log = root / "nm.jsonl"
    assert main(["noise-model", "fit", "--signal", str(split_files["ca"]), "--observation",
                 str(split_files["a"]), "-o", str(root / "nm_a.duet"), "--iterations", "20",
                 "--device", "cpu", "--log-json", str(log), "--threads", "1"]) == 0
    assert "fit noise model" in capsys.readouterr().err
    assert [e["done"] for e in _progress(_events(log), "fit noise model")] == [0, 1]
    assert main(["noise-model", "fit", "--signal", str(split_files["cb"]), "--observation",
                 str(split_files["b"]), "-o", str(root / "nm_b.duet"), "--iterations", "20",
                 "--device", "cpu", "-q"]) == 0
    assert capsys.readouterr().err == ""

    model, log = root / "m.duet", root / "train.jsonl"
    assert main(["split", "train", "--channel-a", str(split_files["a"]), "--channel-b",
                 str(split_files["b"]), "-o", str(model), "--noise-model-a",
                 str(root / "nm_a.duet"), "--noise-model-b", str(root / "nm_b.duet"),
                 "--config", "small", "--epochs", "2", "--steps-per-epoch", "2",
                 "--patch-size", "16", "--batch-size", "2", "--device", "cpu",
                 "--no-calibration", "--log-json", str(log)]) == 0
    err = capsys.readouterr().err
    assert "train:" in err and "epoch 1, step 2/4" in err
    train = _progress(_events(log), "train")
    _assert_increasing(train, total=4)
    assert train[-1]["done"] == 4 and any(e.get("val_loss") is not None for e in train)

    out, log = root / "pred", root / "pred.jsonl"
    assert main(["split", "predict", str(split_files["sum"]), "--model", str(model), "-o",
                 str(out), "--samples", "2", "--tile", "16", "--device", "cpu",
                 "--log-json", str(log), "--threads", "1"]) == 0
    assert "predict:" in capsys.readouterr().err
    pred = _progress(_events(log), "predict")
    total = pred[-1]["total"]
    _assert_increasing(pred, total=total)
    assert total >= 1 and pred[-1]["done"] == total
    assert json.loads((out / "report.json").read_text())["threads"] == 1

    assert main(["split", "predict", str(split_files["sum"]), "--model", str(model), "-o",
                 str(root / "pq"), "--samples", "2", "--tile", "16", "--device", "cpu",
                 "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_describe_asks_the_progress_not_its_class_name():
    """A progress type describes itself (``fields()``): a type that only shares an engine
    type's name is not read as that engine's (the old describe branched on the name)."""
    from dataclasses import dataclass

    from napari_duet.core.progress import Progress

    @dataclass(kw_only=True)
    class Self2SegState(Progress):  # the engine's class name, none of its fields
        pass

    ev = describe(Self2SegState(stage="merge", done=1, total=4, losses={"l1": 0.5}))
    assert (ev.stage, ev.done, ev.total) == ("merge", 1, 4)
    assert ev.fields == {"losses": {"l1": 0.5}}

    @dataclass(kw_only=True)
    class Custom(Progress):
        score: float = 0.0

        def fields(self):
            return "scoring", 3, 5, {"score": self.score}

    ev = describe(Custom(score=0.25))
    assert (ev.stage, ev.done, ev.total, ev.fields) == ("scoring", 3, 5, {"score": 0.25})


@pytest.mark.parametrize("engine", ["nsn2n", "denoisplit"])
def test_engines_take_threads_like_self2seg(engine):
    """``threads`` in the configuration sets torch's CPU threads for the run and restores
    them, in NS-N2N and denoiSplit as in Self2Seg (no such field before)."""
    before = torch.get_num_threads()
    seen = []
    if engine == "nsn2n":
        from napari_duet.nsn2n import NSN2NConfig, iter_train

        cfg = NSN2NConfig(iterations=2, width=4, batch_size=2, crop_size=16, device="cpu",
                          context="2.5d", threads=before + 1)
        vol = np.random.default_rng(0).random((5, 24, 24)).astype(np.float32)
        gen = iter_train(vol, 0, cfg)
    else:
        from napari_duet.denoisplit import SplitConfig, TrainConfig, iter_train

        rng = np.random.default_rng(0)
        chans = [rng.random((32, 32)).astype(np.float32) for _ in range(2)]
        tc = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, patch_size=16,
                         device="cpu", likelihood="gaussian", kl="musplit", calibrate=False,
                         threads=before + 1)
        gen = iter_train(chans, SplitConfig(n_levels=2, z_dims=4, filters=8), tc)
    for _ in gen:
        seen.append(torch.get_num_threads())
    assert seen and set(seen) == {before + 1}
    assert torch.get_num_threads() == before
