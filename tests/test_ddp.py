"""Training on several processes (torch DDP, gloo on the CPU, 2 ranks).

Engine level: two ranks whose crops together are exactly one single-process
batch (the samplers are patched so) end with the same weights as the single
process trained on the whole batch, and with the same weights as each other.
Command level: ``torchrun -m napari_duet`` trains, and only rank 0 writes one
model file, which loads and applies, with the world size in its metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available")

WORLD = 2
PER_RANK = 2  # crops per rank and step; the single-process run takes WORLD * PER_RANK


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _volume() -> np.ndarray:
    """Smooth structures plus noise, 5 x 24 x 24."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    clean = ndimage.gaussian_filter(rng.random((5, 24, 24)), (1.5, 2, 2)) * 50
    return (clean + rng.normal(0, 0.3, clean.shape)).astype(np.float32)


def _channels() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:32, :32]
    a = 100 + 50 * np.sin(xx / 4.0)
    b = 80 + 40 * np.cos(yy / 5.0)
    return [(c + rng.normal(0, 5, c.shape)).astype(np.float32) for c in (a, b)]


# ---------------------------------------------------------------- shared patches
def _slice_of_global(batch: int) -> slice:
    from napari_duet.core import distributed as ddp

    r = ddp.rank()
    return slice(r * batch, (r + 1) * batch)


def _sharded_crops(sample):
    """NS-N2N sampler drawing the global batch from one fixed stream; each rank its part."""
    stream = np.random.default_rng(1234)

    def wrapper(rng, *data, batch, crop):
        from napari_duet.core import distributed as ddp

        out = sample(stream, *data, batch * ddp.world_size(), crop)
        return tuple(x[_slice_of_global(batch)] for x in out)

    def positional(rng, *args):  # the samplers' call: (rng, arrays..., batch, crop)
        return wrapper(rng, *args[:-2], batch=args[-2], crop=args[-1])

    return positional


def _sharded_patches(sample):
    """denoiSplit PatchSampler.sample, the same idea (a fixed torch stream)."""

    def wrapper(self, batch):
        from napari_duet.core import distributed as ddp

        if not hasattr(self, "_stream"):
            self._stream = torch.Generator(device=self.device).manual_seed(1234)
        own, self.gen = self.gen, self._stream
        try:
            inp, tgt = sample(self, batch * ddp.world_size())
        finally:
            self.gen = own
        part = _slice_of_global(batch)
        return inp[part], tgt[part]

    return wrapper


def _posterior_means(forward):
    """LadderVAE.forward without latent sampling: the same output for any batch split."""

    def wrapper(self, x, *, compute_kl=True, sample=True):
        return forward(self, x, compute_kl=compute_kl, sample=False)

    return wrapper


def _patch(setattr_) -> None:
    """Take the randomness out of a step, so that two ranks' steps equal one big step."""
    from napari_duet.denoisplit._data import PatchSampler
    from napari_duet.denoisplit._lvae import LadderVAE
    from napari_duet.nsn2n import _blind, _context, _train

    setattr_(_context, "sample_context_batch", _sharded_crops(_context.sample_context_batch))
    setattr_(_blind, "sample_blind_batch", _sharded_crops(_blind.sample_blind_batch))
    setattr_(_train, "_sample_batch", _sharded_crops(_train._sample_batch))
    setattr_(PatchSampler, "sample", _sharded_patches(PatchSampler.sample))
    setattr_(LadderVAE, "forward", _posterior_means(LadderVAE.forward))


def _params(net) -> dict:
    # Parameters only: BatchNorm running statistics are per rank under DDP.
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _nsn2n(batch: int):
    from napari_duet.nsn2n import NSN2NConfig, train

    cfg = NSN2NConfig(iterations=4, width=8, batch_size=batch, crop_size=16, preview_every=0,
                      tta=False, device="cpu", seed=0, lr=3e-3)
    res = train(_volume(), config=cfg)
    return _params(res.model.net), res.loss_history["total"], res.model.training


def _split(batch: int):
    from napari_duet.denoisplit import SplitConfig, TrainConfig, train

    # Batch norm off: its batch statistics are per rank (as in any DDP run).
    cfg = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0, batchnorm=False)
    tc = TrainConfig(epochs=1, patch_size=16, batch_size=batch, steps_per_epoch=4,
                     device="cpu", likelihood="gaussian", calibrate=False, log_every=1,
                     lr=3e-3)
    res = train(_channels(), cfg, tc)
    model = getattr(res, "model", res)
    return _params(model.net), None, model.training


def _worker(rank: int, port: int, out: str) -> None:
    """One rank: join the group as torchrun would, check the helpers, train both engines."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    from napari_duet.core import distributed as ddp

    assert ddp.init_from_env("cpu")
    try:
        checks = {
            "agree": ddp.agree(rank == 1),  # rank 0 decides: False everywhere
            "broadcast": ddp.broadcast_float(rank + 0.5),
            "on_main": ddp.on_main(lambda: {"rank": ddp.rank()}),
            "sum": float(ddp.sum_(torch.tensor(rank + 1.0))),
            "seed": ddp.sampler_seed(10),
        }
        _patch(setattr)
        results = {"nsn2n": _nsn2n(PER_RANK), "split": _split(PER_RANK), "checks": checks}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        ddp.shutdown()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True,
                       start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _dist(a: dict, b: dict) -> float:
    """Euclidean distance between two sets of weights."""
    return sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in b) ** 0.5


def _norm(a: dict) -> float:
    return sum(float((v.float() ** 2).sum()) for v in a.values()) ** 0.5


@pytest.mark.slow
def test_collective_helpers(ddp_runs):
    for r, res in enumerate(ddp_runs):
        c = res["checks"]
        assert c["agree"] is False
        assert c["broadcast"] == 0.5
        assert c["on_main"] == {"rank": 0}
        assert c["sum"] == 3.0
        assert c["seed"] == 10 + r


@pytest.mark.parametrize("engine", ["nsn2n", "split"])
def test_ranks_end_equal_and_match_single_process(ddp_runs, engine, monkeypatch):
    torch.set_num_threads(1)
    states = [res[engine][0] for res in ddp_runs]
    # The gradients were averaged: both ranks hold the same network.
    assert _dist(states[1], states[0]) < 1e-6 * _norm(states[0])
    assert ddp_runs[0][engine][2]["world_size"] == WORLD
    _patch(monkeypatch.setattr)
    run = _nsn2n if engine == "nsn2n" else _split
    single, single_loss, single_info = run(WORLD * PER_RANK)  # the same global batch
    assert single_info["world_size"] == 1
    half, *_ = run(PER_RANK)  # one rank's crops alone: what no averaging would give
    d_ddp, d_half = _dist(states[0], single), _dist(half, single)
    # Measured: 5e-8 against 0.05 (NS-N2N), 3e-7 against 0.7 (denoiSplit).
    assert d_ddp < 0.01 * d_half, (d_ddp, d_half)
    if single_loss is not None:  # rank 0's loss is on its half batch: close, not equal
        np.testing.assert_allclose(ddp_runs[0][engine][1][-1], single_loss[-1], rtol=0.5)


# ---------------------------------------------------------------- torchrun end to end
def _torchrun(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which(
        "torchrun")
    if exe is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DUET_PROGRESS": "0"}
    cmd = [exe, "--nnodes", "1", "--nproc-per-node", str(WORLD), "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "napari_duet", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_python_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "napari_duet", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("napari-duet ")


@pytest.mark.slow
def test_torchrun_nsn2n_writes_one_model_that_applies(tmp_path):
    from napari_duet.core.io import read_image, write_tiff
    from napari_duet.nsn2n import NSN2NModel

    vol = _volume()
    write_tiff(tmp_path / "vol.tif", vol)
    # A time budget: rank 0's clock decides when every rank stops.
    proc = _torchrun(["nsn2n", "vol.tif", "-o", "den.tif", "--save-model", "m.duet",
                      "--budget", "1.5", "--width", "8", "--no-tta", "--device", "cpu",
                      "--threads", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["den.json", "den.tif", "m.duet",
                                                          "vol.tif"]
    assert proc.stderr.count("training NS-N2N") == 1  # rank 0 logs, rank 1 is quiet
    report = json.loads((tmp_path / "den.json").read_text())
    assert report["training"]["world_size"] == WORLD
    assert report["training"]["iterations_done"] >= 1
    model = NSN2NModel.load(tmp_path / "m.duet", device="cpu")
    assert model.training["world_size"] == WORLD
    den = model.predict(vol, tta=False).denoised
    assert den.shape == vol.shape and np.isfinite(den).all()
    np.testing.assert_allclose(den, read_image(tmp_path / "den.tif"), atol=1e-3)


@pytest.mark.slow
def test_torchrun_split_train_writes_one_model_that_applies(tmp_path):
    from napari_duet.core.io import write_tiff
    from napari_duet.denoisplit import SplitModel

    a, b = _channels()
    write_tiff(tmp_path / "a.tif", a)
    write_tiff(tmp_path / "b.tif", b)
    proc = _torchrun(["split", "train", "--channel", "a.tif", "--channel", "b.tif",
                      "-o", "m.duet", "--config", "small", "--epochs", "1",
                      "--steps-per-epoch", "3", "--patch-size", "16", "--batch-size", "2",
                      "--likelihood", "gaussian", "--no-calibration", "--device", "cpu",
                      "--threads", "1", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif", "m.duet"]
    model = SplitModel.load(tmp_path / "m.duet", device="cpu")
    assert model.training["world_size"] == WORLD
    assert model.training["global_batch_size"] == WORLD * 2
    res = model.predict(a + b, samples=2, tile=32)
    assert res.mean.shape == (2, 32, 32) and np.isfinite(res.mean).all()


@pytest.mark.parametrize("argv", [
    ["split", "predict", "in.tif", "--model", "m.duet", "-o", "out"],
    ["noise-model", "fit", "--signal", "s.tif", "--observation", "o.tif", "-o", "nm.npz"],
    ["self2seg", "in.tif", "-o", "out"],
])
def test_commands_that_do_not_train_refuse_torchrun(argv, monkeypatch, capsys):
    """Under torchrun only training is distributed: anything else would run once per rank
    and every rank would write the same files."""
    from napari_duet.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not run under torchrun" in err and len(err.strip().splitlines()) == 1
