"""Resumable training checkpoints of denoiSplit.

The checkpoint is a denoiSplit model file (the best weights so far: it loads
and predicts as any model) that also holds what training needs to go on
exactly where it stopped, under names starting with ``resume.``: the current
weights, the optimiser's state, the random generators' states, and (in the
header) the epoch, the best validation loss, the scheduler's counters and the
loss history.  It is rewritten after every epoch (under a temporary name,
renamed when complete), so an interrupted run loses at most one epoch, and a
resumed run on the CPU gives the same model as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "resume."


@dataclass
class ResumeState:
    """Where a run stopped: after ``epoch`` (all epochs up to it are done)."""

    epoch: int
    best_val: float
    best_epoch: int
    bad_epochs: int
    val_loss: float | None
    losses: dict[str, float]
    history: list[dict]
    skipped: int
    scheduler: dict[str, Any]
    run: dict[str, Any]  # what identifies the run (configs, data shape, seed)
    tensors: dict[str, Any] = field(default_factory=dict)  # resume.* tensors
    world_size: int = 1  # processes that trained (DDP): one random state each


def run_identity(cfg, tc, data_shape, names, data=None) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: network, recipe, data, channels.

    ``data`` (the prepared :class:`~._data.SplitData`): a sampled fingerprint of the
    training and validation frames (:func:`~napari_duet.core.io.content_fingerprint`), so
    a checkpoint never goes on with other data of the same shape.
    """
    from ..core.io import content_fingerprint

    recipe = {k: v for k, v in tc.model_dict().items() if k not in ("epochs", "max_minutes",
                                                                     "max_steps", "calibrate")}
    run = {"config": cfg.model_dict(), "train_config": recipe,
           "data_shape": [int(s) for s in data_shape], "channel_names": list(names)}
    if data is not None:
        run["data_sha256"] = content_fingerprint(data.train) + content_fingerprint(data.val)
    return run


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def rng_states(sampler) -> dict[str, Any]:
    """This process's random generators (torch, the patch sampler's, CUDA's), on the CPU."""
    import torch

    out = {"torch": torch.get_rng_state(), "sampler": sampler.gen.get_state().to("cpu")}
    if torch.cuda.is_available() and sampler.gen.device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(sampler.gen.device)
    return out


def state_parts(*, net, opt, sched, sampler, epoch, best, bad_epochs, val_loss, losses,
                history, skipped, run, rank_states=None) -> tuple[dict, dict]:
    """The ``resume`` header entry and the ``resume.*`` tensors after ``epoch``.

    ``rank_states``: every rank's :func:`rng_states`, in rank order (DDP); rank 0's
    are stored as ``rng.*``, rank r's as ``rng.*.r<r>``.
    """
    import torch

    tensors = {f"{PREFIX}net.{k}": v.detach().to("cpu").clone()
               for k, v in net.state_dict().items()}
    opt_state = opt.state_dict()
    for i, st in opt_state["state"].items():
        for key, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"{PREFIX}opt.{i}.{key}"] = t.detach().to("cpu").clone()
    # Every rank's own generators (gathered by the caller under DDP; only rank 0
    # writes): a resumed rank goes on with its own patches, not rank 0's.
    for r, states in enumerate(rank_states or [rng_states(sampler)]):
        for name, t in states.items():
            tensors[f"{PREFIX}rng.{name}" + (f".r{r}" if r else "")] = t
    sch = sched.state_dict()
    header = {
        "epoch": int(epoch), "best_val": _finite_or_none(best[0]), "best_epoch": int(best[2]),
        "bad_epochs": int(bad_epochs), "val_loss": _finite_or_none(val_loss),
        "losses": {k: _finite_or_none(v) for k, v in losses.items()}, "history": history,
        "skipped": int(skipped), "run": run, "world_size": len(rank_states or [None]),
        "scheduler": {"best": _finite_or_none(sch.get("best")),
                      "num_bad_epochs": int(sch.get("num_bad_epochs", 0)),
                      "cooldown_counter": int(sch.get("cooldown_counter", 0)),
                      "last_epoch": int(sch.get("last_epoch", 0)),
                      "lrs": [float(g["lr"]) for g in opt.param_groups]},
    }
    return header, tensors


def read_state(path: str | Path) -> ResumeState | None:
    """The resume state of a checkpoint file (None: the file holds none)."""
    from ..core.modelfile import load_model_file

    mf = load_model_file(path, kind="denoisplit", what="denoiSplit checkpoint")
    info = mf.extra.get("resume")
    if not isinstance(info, dict):
        return None
    try:
        return ResumeState(
            epoch=int(info["epoch"]),
            best_val=math.inf if info["best_val"] is None else float(info["best_val"]),
            best_epoch=int(info["best_epoch"]), bad_epochs=int(info["bad_epochs"]),
            val_loss=info["val_loss"], losses=dict(info["losses"]),
            history=list(info["history"]), skipped=int(info["skipped"]),
            scheduler=dict(info["scheduler"]), run=dict(info["run"]),
            world_size=int(info.get("world_size", 1)),
            tensors={k[len(PREFIX):]: v for k, v in mf.tensors.items() if k.startswith(PREFIX)}
            | {"best." + k[4:]: v for k, v in mf.tensors.items() if k.startswith("net.")},
        )
    except (KeyError, TypeError, ValueError) as exc:
        from ..core.errors import ModelFileError, first_line

        raise ModelFileError(f"{Path(path).name} is a damaged checkpoint ({first_line(exc)})"
                             ) from None


def restore(state: ResumeState, *, net, opt, sched, sampler, device) -> dict:
    """Put the weights, optimiser, scheduler and generators back; returns the best weights."""
    import torch

    t = state.tensors
    net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")}, strict=True)
    opt_state = opt.state_dict()
    for i in list(opt_state["state"]) or range(len(list(net.parameters()))):
        keys = [k for k in t if k.startswith(f"opt.{i}.")]
        if keys:
            opt_state["state"][i] = {k.split(".", 2)[2]: t[k].to(device) if t[k].ndim else t[k]
                                     for k in keys}
    for g, lr in zip(opt_state["param_groups"], state.scheduler["lrs"], strict=False):
        g["lr"] = lr
    opt.load_state_dict(opt_state)
    sch = sched.state_dict()
    sch.update(best=math.inf if state.scheduler["best"] is None else state.scheduler["best"],
               num_bad_epochs=state.scheduler["num_bad_epochs"],
               cooldown_counter=state.scheduler["cooldown_counter"],
               last_epoch=state.scheduler["last_epoch"],
               _last_lr=list(state.scheduler["lrs"]))
    sched.load_state_dict(sch)
    from ..core import distributed as ddp

    # Each rank its own generators (rank 0's are the plain names).
    suffix = f".r{ddp.rank()}" if ddp.rank() else ""
    if f"rng.torch{suffix}" not in t:
        from ..core.errors import DuetInputError

        raise DuetInputError(f"the checkpoint holds no random state for rank {ddp.rank()} "
                             f"(it was written by {state.world_size} process(es)): resume "
                             "with as many processes, or remove it to start afresh")
    torch.set_rng_state(t[f"rng.torch{suffix}"])
    sampler.gen.set_state(t[f"rng.sampler{suffix}"])
    if f"rng.cuda{suffix}" in t and sampler.gen.device.type == "cuda":
        torch.cuda.set_rng_state(t[f"rng.cuda{suffix}"], sampler.gen.device)
    return {k[5:]: v.to(device) for k, v in t.items() if k.startswith("best.")}
