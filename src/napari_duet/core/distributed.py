"""Training on several GPUs (or CPU processes) with torch DistributedDataParallel.

``torchrun --nproc-per-node N -m napari_duet nsn2n ...`` starts N processes
(ranks) with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment.
The command line calls :func:`session`, which joins the process group (NCCL on
CUDA, gloo on the CPU); the engines then use the helpers below, which do
nothing in a single process, so one code path serves both:

* :func:`rank_device`: each rank on its own GPU (``cuda:LOCAL_RANK``);
* :func:`wrap`: the network in :class:`~torch.nn.parallel.DistributedDataParallel`
  (gradients averaged over ranks; rank 0's initial weights broadcast to all);
* :func:`sampler_seed`: ``seed + rank``, so every rank draws different patches;
* :func:`agree`: rank 0's decision (a time budget ran out) for every rank, so no
  rank waits alone in a collective;
* :func:`is_main`: only rank 0 logs and writes files.

Each rank draws the configured batch, so the global batch is ``batch size x
world size``: N GPUs take N times more patches per step, at the same step time.
This module imports no engine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import DuetInputError

if TYPE_CHECKING:
    import torch

__all__ = ["agree", "barrier", "broadcast_float", "from_main", "is_active", "is_main",
           "launched", "on_main", "rank", "rank_device", "reseed", "sampler_seed",
           "session", "sum_", "unwrap", "world_size", "wrap"]


def launched() -> bool:
    """True when started by torchrun (or similar) with ``WORLD_SIZE`` > 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _dist():
    """``torch.distributed`` when a process group is running, else None."""
    import sys

    if "torch" not in sys.modules:  # nothing can be initialised without torch
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def is_active() -> bool:
    """True inside a process group of more than one rank."""
    dist = _dist()
    return dist is not None and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def world_size() -> int:
    """Number of ranks (1 in a single process)."""
    dist = _dist()
    return dist.get_world_size() if dist is not None else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``, 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def sampler_seed(seed: int | None) -> int:
    """Seed of this rank's patch sampler: ``seed + rank`` (``seed`` in a single process)."""
    return (0 if seed is None else int(seed)) + rank()


def reseed(seed: int | None) -> None:
    """Seed torch with ``seed + rank`` when distributed (no-op in a single process).

    Called after the network is built (the same initial weights everywhere), so
    that random draws inside the steps (latent samples) differ between ranks.
    """
    if is_active():
        import torch

        torch.manual_seed(sampler_seed(seed))


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda`` without an index becomes ``cuda:LOCAL_RANK``.

    An explicit index (``cuda:1``) and other devices are kept as given.
    """
    import torch

    if is_active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def _backend_for(device: torch.device) -> str:
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise DuetInputError(f"training on several processes needs CUDA or the CPU, not "
                         f"{device.type!r}: give --device cuda or --device cpu")


def init_from_env(device: str | torch.device | None = "auto") -> bool:
    """Join the process group described by torchrun's environment.

    Does nothing (returns False) without ``WORLD_SIZE`` > 1; returns True when the
    group is running.  The backend is NCCL when ``device`` resolves to CUDA (each
    rank then uses ``cuda:LOCAL_RANK``), gloo on the CPU.
    """
    if not launched():
        return False
    import torch
    import torch.distributed as dist

    from .devices import resolve_device

    if not dist.is_available():
        raise DuetInputError("started by torchrun, but this torch has no torch.distributed")
    if dist.is_initialized():
        return True
    dev = resolve_device(device)
    backend = _backend_for(dev)
    if dev.type == "cuda":
        # Before the group starts: NCCL binds each rank to its current device.
        torch.cuda.set_device(dev.index if dev.index is not None else local_rank())
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def shutdown() -> None:
    """Leave the process group (if any)."""
    dist = _dist()
    if dist is not None:
        dist.destroy_process_group()


@contextmanager
def session(device: str | torch.device | None = "auto") -> Iterator[bool]:
    """Run a command body in the torchrun process group (if launched by torchrun).

    Yields True when distributed.  After a successful body every rank meets at a
    barrier (rank 0 has written the outputs by then), then the group is destroyed;
    after an error it is destroyed at once (torchrun stops the other ranks).
    """
    active = init_from_env(device)
    try:
        yield active
        if active:
            barrier()
    finally:
        if active:
            shutdown()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            import torch

            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _comm_device():
    """Where collective tensors live: the current GPU with NCCL, else the CPU."""
    import torch

    dist = _dist()
    if dist is not None and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (``flag`` itself in a single process).

    Used for decisions taken from the clock (a time budget), which ranks could
    otherwise take one step apart, leaving one rank alone in a collective.
    """
    return bool(broadcast_float(1.0 if flag else 0.0))


def broadcast_float(value: float) -> float:
    """Rank 0's ``value`` on every rank (``value`` itself in a single process)."""
    if not is_active():
        return value
    import torch

    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    _dist().broadcast(t, src=0)
    return float(t.item())


def sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` itself in a single process).

    No host sync: usable inside a training step.
    """
    if not is_active():
        return t
    out = t.detach().clone()
    _dist().all_reduce(out)
    return out


def from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` (picklable, best on the CPU) on every rank."""
    if not is_active():
        return obj
    box = [obj if is_main() else None]
    _dist().broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (``[obj]`` alone)."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def on_main(fn, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` computed on rank 0 only, its result sent to every rank.

    For set-up work whose result must be identical everywhere (a fitted noise
    model); the other ranks wait meanwhile.  Plain call in a single process.
    """
    return from_main(fn(*args, **kwargs) if is_main() else None)


def wrap(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` in DistributedDataParallel when distributed, else ``net`` itself.

    DDP broadcasts rank 0's weights on construction (the same start on every
    rank) and averages the gradients during ``backward``.  Keep using ``net``
    (unwrapped) for evaluation and saving.
    """
    if not is_active():
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, output_device=device if ids else None)


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (``net`` itself otherwise)."""
    return getattr(net, "module", net)
