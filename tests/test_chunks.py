"""Chunk tasks on dask: a 2-worker LocalCluster gives the output of the local run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from napari_duet.cli import main
from napari_duet.core.chunks import RunRecord, TaskRunner, blocks, report_path, with_halo
from napari_duet.core.errors import DuetInputError
from napari_duet.core.io import ImageMeta, open_image, write_ome_zarr

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one thread each (started once for the module)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as lc:
        yield lc.scheduler_address


def _volume(shape=(9, 40, 36), seed=0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    clean = ndimage.gaussian_filter(rng.random(shape), 2)
    noisy = (clean - clean.min()) / np.ptp(clean) + 0.1 * rng.standard_normal(shape)
    return (noisy * 1000 + 200).clip(0, 65535).astype(np.uint16)


def _task_square(task, offset):
    return task * task + offset


def _task_fail(task):
    raise DuetInputError(f"task {task} refused")


# ---------------------------------------------------------------------- generic pieces
def test_planning_helpers():
    assert blocks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert blocks(3, 0) == [(0, 1), (1, 2), (2, 3)]
    assert with_halo(0, 4, 2, 10) == (0, 6) and with_halo(8, 10, 2, 10) == (6, 10)
    assert report_path("a/out.ome.zarr").name == "out.ome.json"


def test_runner_local_and_cluster_give_every_result(cluster):
    with TaskRunner("local") as local:
        assert not local.distributed
        assert dict(local.run(_task_square, range(5), 1)) == {t: t * t + 1 for t in range(5)}
    with TaskRunner(cluster) as remote:
        assert remote.distributed
        got = dict(remote.run(_task_square, range(5), 1))
        assert got == {t: t * t + 1 for t in range(5)}
        # A task's error reaches the client as the same exception type.
        with pytest.raises(DuetInputError, match="refused"):
            list(remote.run(_task_fail, [3]))


def test_scheduler_from_environment(monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    assert TaskRunner().scheduler == "tcp://127.0.0.1:1"
    assert TaskRunner("local").scheduler is None  # explicit local wins


def test_unreachable_scheduler_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("napari_duet.core.chunks.CONNECT_TIMEOUT", "1s")
    vol = _volume((5, 16, 16))
    src = tmp_path / "v.zarr"
    zarr.save_array(str(src), vol)
    model = tmp_path / "m.duet"
    _model().save(model)
    assert main(["nsn2n", str(src), "-o", str(tmp_path / "o.zarr"), "--model", str(model),
                 "-q", "--device", "cpu", "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scheduler" in err[0]


def test_run_record_refuses_another_run(tmp_path):
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    rec = RunRecord.create(group, {"input": "a", "n": 1})
    rec.save({"done": [0, 2]})
    again = RunRecord.open(tmp_path / "s.zarr", {"input": "a", "n": 1})
    assert again.state == {"done": [0, 2]}
    with pytest.raises(DuetInputError, match="--resume"):
        RunRecord.open(tmp_path / "s.zarr", {"input": "b", "n": 1})
    assert RunRecord.open(tmp_path / "missing.zarr", {}) is None


def test_run_record_belongs_and_finish(tmp_path):
    """The widgets' checks (``belongs``) and the end of a run (``finish``) read the same record."""
    from napari_duet.core.chunks import read_record

    sig = {"input": "a", "shape": [3, 4]}
    rec = RunRecord.create(zarr.open_group(str(tmp_path / "s.zarr"), mode="w"), sig)
    assert RunRecord.belongs(tmp_path / "s.zarr", sig)
    assert not RunRecord.belongs(tmp_path / "s.zarr", dict(sig, input="b"))
    assert not RunRecord.open(tmp_path / "s.zarr", sig).complete
    rec.finish({"done": [0, 1, 2]})
    again = RunRecord.open(tmp_path / "s.zarr", sig)
    assert again.complete and again.state == {"done": [0, 1, 2]}
    (tmp_path / "plain").mkdir()  # a folder that is not a store: no record, not a run's
    assert read_record(tmp_path / "plain") is None
    assert not RunRecord.belongs(tmp_path / "plain", sig)
    with pytest.raises(DuetInputError, match="choose another"):
        RunRecord.open(tmp_path / "plain", sig, hint="choose another output")


def test_in_place_store_is_continued_or_refused_never_overwritten(tmp_path):
    """An in-place run (the Self2Seg widget's plane store, shown while it fills) reopens a
    store of its own run and refuses anything else; before, the widget's own logic opened
    any other store with mode "w", deleting what it held."""
    from napari_duet.core.chunks import ChunkedRun, run_fits, staging_path

    sig = {"input": "a"}
    run = ChunkedRun([tmp_path / "p.zarr"], sig, resume=True, staged=False)
    assert run.fresh and run.store.path == tmp_path / "p.zarr"
    rec = run.open(lambda path: zarr.open_group(str(path), mode="w"))
    rec.save({"done": [1]})
    again = ChunkedRun([tmp_path / "p.zarr"], sig, resume=True, staged=False)
    assert not again.fresh and again.state == {"done": [1]}
    with pytest.raises(DuetInputError, match="choose another"):
        ChunkedRun([tmp_path / "p.zarr"], {"input": "b"}, resume=True, staged=False,
                   hint="choose another folder")
    assert RunRecord.belongs(tmp_path / "p.zarr", sig)
    # A name is free for a run when neither it nor its staging store holds another run's.
    assert run_fits(tmp_path / "p.zarr", sig) and not run_fits(tmp_path / "p.zarr", {"x": 1})
    RunRecord.create(zarr.open_group(str(staging_path(tmp_path / "q.zarr")), mode="w"), sig)
    assert run_fits(tmp_path / "q.zarr", sig) and not run_fits(tmp_path / "q.zarr", {"x": 1})


def test_widget_store_is_staged_until_complete_and_resumes(tmp_path):
    """The NS-N2N widget's large-layer run goes through the chunked-run engine: closed
    mid-way (Cancel), the output does not exist yet (before, a half-written store sat at
    the output's name, written in place) and the next run continues the staged store to
    the result of an uninterrupted run."""
    from napari_duet.core.chunks import staging_path
    from napari_duet.nsn2n import iter_denoise_to_zarr
    from napari_duet.nsn2n._store import run_signature

    model, vol = _model(), _volume((8, 24, 20)).astype(np.float32)
    sig = run_signature(model, vol, axis=0, tta=False, input_name="vol")

    def run(path, stop_after=None):
        gen = iter_denoise_to_zarr(model, vol, path, ImageMeta.default(3), axis=0, tta=False,
                                   signature=sig, slab=2)
        n = 0
        try:
            while True:
                p = next(gen)
                n += getattr(p, "stage", "") == "denoise"
                if stop_after and n >= stop_after:
                    gen.close()
                    return None
        except StopIteration as stop:
            return stop.value

    whole = run(tmp_path / "whole.ome.zarr")
    assert whole.levels >= 1 and not whole.reused
    out = tmp_path / "cut.ome.zarr"
    assert run(out, stop_after=2) is None
    assert not out.exists() and staging_path(out).exists()
    done = zarr.open_group(str(staging_path(out))).attrs["napari_duet"]["state"]["done"]
    assert 1 <= len(done) < 4
    res = run(out)
    assert res.resumed_slabs == len(done) and out.exists() and not staging_path(out).exists()
    np.testing.assert_array_equal(zarr.open_group(str(out))["0"][...],
                                  zarr.open_group(str(tmp_path / "whole.ome.zarr"))["0"][...])
    assert run(out).reused  # finished: returned as it is


# ---------------------------------------------------------------------- NS-N2N on a cluster
def _model():
    import torch

    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel
    from napari_duet.nsn2n._context import ContextNet

    torch.manual_seed(0)
    net = ContextNet(width=8, depth=2)
    torch.nn.init.normal_(net.unet.head.weight, std=0.05)
    return NSN2NModel(net, NSN2NConfig(width=8, device="cpu", context="2.5d"), [], {},
                      device="cpu")


def test_nsn2n_cluster_equals_local(tmp_path, cluster):
    vol = _volume()
    meta = ImageMeta(("z", "y", "x"), (2.0, 0.5, 0.5), ("micrometer",) * 3)
    src = tmp_path / "v.ome.zarr"
    write_ome_zarr(src, vol, meta, levels=1)
    model = tmp_path / "m.duet"
    _model().save(model)
    base = ["nsn2n", str(src), "--model", str(model), "-q", "--device", "cpu", "--slab", "2"]
    assert main([*base, "-o", str(tmp_path / "local.ome.zarr")]) == 0
    assert main([*base, "-o", str(tmp_path / "dask.ome.zarr"), "--scheduler", cluster,
                 "--uncertainty", str(tmp_path / "unc.ome.zarr")]) == 0
    local, _ = open_image(tmp_path / "local.ome.zarr")
    remote, got = open_image(tmp_path / "dask.ome.zarr")
    assert got == meta
    # Same statistics from partial histograms, same slabs: the same numbers.
    np.testing.assert_array_equal(remote[...], local[...])
    assert np.ptp(open_image(tmp_path / "unc.ome.zarr")[0][...]) > 0
    rep = json.loads((tmp_path / "dask.ome.json").read_text())
    assert rep["scheduler"] == cluster
    assert zarr.open_group(str(tmp_path / "dask.ome.zarr"), mode="r").attrs[
        "napari_duet"]["complete"]


# ---------------------------------------------------------------------- Self2Seg, denoiSplit
def test_self2seg_cluster_equals_local(tmp_path, cluster):
    from napari_duet.core.synthetic import synthetic_nuclei

    stack = np.stack([synthetic_nuclei((32, 36), noise_sigma=15, seed=s).noisy
                      for s in range(3)]).astype(np.uint16)
    src = tmp_path / "s.ome.zarr"
    write_ome_zarr(src, stack, levels=1)
    base = ["self2seg", str(src), "--experts", "linear", "--max-alternations", "2", "-q"]
    assert main([*base, "-o", str(tmp_path / "local.ome.zarr")]) == 0
    assert main([*base, "-o", str(tmp_path / "dask.ome.zarr"), "--scheduler", cluster]) == 0
    a = zarr.open_group(str(tmp_path / "local.ome.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "dask.ome.zarr"), mode="r")
    np.testing.assert_array_equal(b["labels/mask/0"][...], a["labels/mask/0"][...])
    np.testing.assert_array_equal(b["0"][...], a["0"][...])
    assert b["labels/mask/0"][...].any()


def test_split_cluster_equals_local(tmp_path, cluster):
    import torch

    from napari_duet.core.intensity import Normalizer
    from napari_duet.denoisplit import SplitConfig, SplitModel
    from napari_duet.denoisplit._lvae import LadderVAE

    cfg = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0, multiscale_count=2)
    torch.manual_seed(0)
    model = SplitModel(LadderVAE(cfg, 16).eval(), cfg, patch_size=16,
                       input_norm=Normalizer(10.0, 5.0),
                       target_norms=[Normalizer(4.0, 2.0), Normalizer(6.0, 3.0)])
    model.save(tmp_path / "m.duet")
    img = np.random.default_rng(0).uniform(0, 20, size=(2, 40, 44)).astype(np.float32)
    src = tmp_path / "img.ome.zarr"
    write_ome_zarr(src, img, levels=1)
    base = ["split", "predict", str(src), "--model", str(tmp_path / "m.duet"), "--samples",
            "2", "--tile", "32", "--block", "24", "--device", "cpu", "-q", "-o"]
    assert main([*base, str(tmp_path / "local.ome.zarr")]) == 0
    assert main([*base, str(tmp_path / "dask.ome.zarr"), "--scheduler", cluster]) == 0
    a = zarr.open_group(str(tmp_path / "local.ome.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "dask.ome.zarr"), mode="r")
    for name in ("0", "std", "samples"):  # same per-block seeds: the same samples
        np.testing.assert_array_equal(b[name][...], a[name][...])
