"""The process group of a tensor-parallel run: started from ``torchrun``'s environment (or explicit
arguments) with a timeout on every collective, and the collectives the run uses, each raising
``CollectiveFailed`` instead of waiting forever."""

import datetime
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from llmds_torch.distributed.errors import CollectiveFailed, ConfigMismatch


@dataclass(frozen=True, slots=True)
class TPGroup:
    """This process's place in the tensor-parallel group.

    Attributes
    ----------
    rank, world_size : int
    device : torch.device
        ``cuda:<local rank>`` with NCCL, ``cpu`` with gloo.
    """

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_driver(self) -> bool:
        """Rank 0 runs the block manager and the engine; the others follow its plans."""
        return self.rank == 0


def init_tensor_parallel(*, timeout_s: float = 60.0, backend: str | None = None, init_method: str | None = None,
                         rank: int | None = None, world_size: int | None = None) -> TPGroup:
    """Join (or start) the default process group.

    Parameters
    ----------
    timeout_s : float
        Every collective raises after this long instead of waiting forever (a dead rank).
    backend : ``"gloo"``, ``"nccl"`` or None (NCCL when CUDA is available, else gloo)
    init_method, rank, world_size
        Default: ``torchrun``'s environment (``env://``, ``RANK``, ``WORLD_SIZE``).
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method or "env://",
                                rank=-1 if rank is None else rank, world_size=-1 if world_size is None else world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return TPGroup(rank, world, device)


def broadcast_object(obj, group: TPGroup):
    """Rank 0's ``obj`` on every rank (one ``broadcast_object_list``)."""
    box = [obj if group.rank == 0 else None]
    try:
        dist.broadcast_object_list(box, src=0, device=group.device if group.device.type == "cuda" else None)
    except RuntimeError as exc:
        raise CollectiveFailed(f"rank {group.rank}: broadcast from rank 0 failed ({exc})") from exc
    return box[0]


def all_reduce_(tensor: torch.Tensor, group: TPGroup) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place."""
    try:
        dist.all_reduce(tensor)
    except RuntimeError as exc:
        raise CollectiveFailed(f"rank {group.rank}: all-reduce failed ({exc})") from exc
    return tensor


def fingerprint(*parts) -> str:
    """SHA-256 of the parts' ``repr``: what every rank must agree on."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def check_same_config(digest: str, group: TPGroup) -> None:
    """Raise ``ConfigMismatch`` on every rank unless all ranks passed the same ``digest``."""
    digests = [None] * group.world_size
    try:
        dist.all_gather_object(digests, digest)
    except RuntimeError as exc:
        raise CollectiveFailed(f"rank {group.rank}: config check failed ({exc})") from exc
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise ConfigMismatch(f"ranks {differ} started with a different model or cache configuration than rank 0 "
                             f"(fingerprints {digests[0][:12]} vs {digests[differ[0]][:12]})")
