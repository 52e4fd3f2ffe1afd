"""Data-parallel training on torch.distributed: the process group as the trainer sees it.

One code path for world size 1 and N. :class:`DistContext` answers "which rank am I, how many are
we" and does the few collectives the trainer needs; at world size 1 (no process group, or a group
of one) every one of them is the identity and nothing touches ``torch.distributed``, so a
one-process run is exactly the run without this module.

What the trainer takes from here:

* ``batch_size`` is the global batch; each rank takes ``batch_size / world`` (:meth:`local_batch`
  refuses a spec where it does not divide, naming the field).
* :func:`gather_with_grad`: an all-gather whose backward hands every rank the summed gradient of its
  own slice (SimCLR's negatives are the other images of the *global* batch).
* :meth:`DistContext.wrap`: the method in ``DistributedDataParallel`` (gradients averaged over
  ranks), after an optional ``SyncBatchNorm`` conversion (CUDA only: torch refuses CPU tensors).
* :meth:`any` (the stop flag: one rank asked, every rank stops at the same step), :meth:`mean`
  (metrics averaged over ranks), :meth:`gather_objects` (every rank's RNG states for the checkpoint),
  :meth:`same_on_all` (every rank resumes from the same checkpoint). These host-side collectives run
  on a gloo group even when the gradients go over NCCL, so they never wait on the GPU stream.

A rank process is set up by :func:`init_rank_process` from the environment ``torchrun`` (or
``torch.distributed.launcher``) gives it: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``; NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import inspect
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ssl_core.errors import SpecError


def launched_by_torchrun() -> bool:
    """Whether this process is a rank started by torchrun / the elastic launcher (it sets these)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


@dataclass
class DistContext:
    """This process's place in the job. ``cpu_group`` carries the host-side collectives (gloo)."""

    rank: int = 0
    world: int = 1
    cpu_group: Any = None

    @classmethod
    def current(cls) -> "DistContext":
        """The initialised process group (more than one process), else the one-process context."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return cls()
        group = None if dist.get_backend() == "gloo" else _gloo_group()
        return cls(dist.get_rank(), dist.get_world_size(), group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def local_batch(self, batch_size: int) -> int:
        """This rank's share of the global ``batch_size``."""
        if batch_size % self.world:
            raise SpecError(f"batch_size: the global batch {batch_size} does not divide among {self.world} "
                            f"processes; use a multiple of {self.world}")
        return batch_size // self.world

    # -- host-side collectives (identity at world size 1) ---------------------------------------
    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any (a stop request reaches all at the same step)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(bool(flag))])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(t.item())

    def mean(self, values: list[float]) -> list[float]:
        """Element-wise mean over ranks."""
        if not self.distributed or not values:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.cpu_group)
        return (t / self.world).tolist()

    def min_int(self, value: int) -> int:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(t.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects; tensors go through the CPU)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.cpu_group)
        return out

    def same_on_all(self, value: Any, what: str) -> None:
        """Raise on every rank unless ``value`` is equal on all ranks (``what`` says why it must be)."""
        values = self.gather_objects(value)
        if any(v != values[0] for v in values):
            from ssl_core.errors import PermanentError

            raise PermanentError(f"{what}: the ranks disagree ({values})")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.cpu_group)

    # -- the model ---------------------------------------------------------------------------------
    def wrap(self, method: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
        """The module whose call runs a training step: the method itself at world size 1, else the
        method in DistributedDataParallel (gradients averaged over ranks in backward)."""
        if not self.distributed:
            return method
        if sync_bn:
            if device.type != "cuda":
                raise SpecError("method.sync_bn: SyncBatchNorm needs CUDA devices (torch refuses CPU tensors); "
                                "set it off (each rank then normalises its own share of the batch)")
            nn.SyncBatchNorm.convert_sync_batchnorm(method)  # children replaced in place, parameters kept
        # MoCo's queue is identical on every rank by construction (each enqueues the global batch's
        # keys): broadcasting it from rank 0 at every step would move K x D values for nothing
        kw: dict[str, Any] = {}
        if hasattr(method, "queue"):
            ddp_args = inspect.signature(nn.parallel.DistributedDataParallel).parameters
            kw = {"forward_sync_buffers": False} if "forward_sync_buffers" in ddp_args else {"broadcast_buffers": False}
        return nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None, **kw)


def _gloo_group() -> Any:
    """A gloo group over all ranks for host-side collectives (created once; collective call)."""
    global _GLOO
    if _GLOO is None:
        _GLOO = dist.new_group(backend="gloo")
    return _GLOO


_GLOO: Any = None


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient of the gathered tensor and returns this
    rank's slice (a reduce-scatter written as all_reduce + slice, which gloo and NCCL both do)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """(n, ...) per rank -> (world * n, ...) in rank order, differentiable; ``x`` itself at world size 1.

    Every rank computes the same global loss from the gathered tensor; the backward sums the ranks'
    gradients for each slice, and DDP's average over ranks then yields exactly the gradient of the
    one-process run on the global batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


# ---------------------------------------------------------------------------------------------
# A rank process
def init_rank_process(device_name: str, devices: list[int] | None = None) -> torch.device:
    """Join the process group the launcher's environment describes; pin this rank's device.

    CUDA: rank ``LOCAL_RANK`` takes ``devices[LOCAL_RANK]`` (default: device LOCAL_RANK), NCCL.
    CPU: gloo, and ``cores / local ranks`` threads each unless OMP_NUM_THREADS says otherwise."""
    from ssl_core.runtime import resolve_device

    local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_name)
    if device.type == "cuda":
        index = devices[local_rank] if devices else local_rank
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    elif "OMP_NUM_THREADS" not in os.environ:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return device


def close_rank_process() -> None:
    global _GLOO
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _GLOO = None


def stop_on_signals() -> Callable[[], bool]:
    """SIGTERM and SIGINT become a stop request (checked between steps, agreed by all ranks), so a
    cancelled distributed run checkpoints at one step on every rank instead of dying mid-collective."""
    asked = {"stop": False}

    def handler(signum, frame) -> None:
        asked["stop"] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return lambda: asked["stop"]
