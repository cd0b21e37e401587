"""The processes of one command: one (no launcher) or N data-parallel ones (docs/distributed.md).

`accelerate launch` and `torchrun` start N copies of a command with RANK / WORLD_SIZE / LOCAL_RANK in
the environment; `processes()` then joins them through accelerate's `PartialState` (NCCL on GPUs, gloo
on CPUs; one GPU per process, `cuda:LOCAL_RANK`). Without a launcher nothing is initialised and every
collective below is the identity, so one process runs exactly as it always did.

Why not `Accelerator.prepare` (DDP wrapping): the methods take gradients outside one `.backward()`
(EraseDiff's automatic λ and SA's Fisher use `torch.autograd.grad`, which DDP does not average),
run several forwards per step and train parameter subsets. The loop instead averages the trainable
gradients itself, once per optimiser step, in flat buckets (`Processes.mean_`; TrainState.finish_gradients):
every method's step is then the one-process computation on the global batch, by construction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .device import resolve_device
from .errors import ConfigError

_BUCKET = 2**25  # elements per all-reduce (128 MiB of float32): few calls, bounded extra memory


def launched() -> bool:
    """True in a process started by `accelerate launch` / `torchrun` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0, or no launcher; readable before any process group exists (error messages, progress bars)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class Processes:
    """This process's place among the command's processes and the collectives the loop needs."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average `tensors` (the same shapes and dtypes on every process) over the processes, in place."""
        self._reduce_(tensors, mean=True)

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum `tensors` over the processes, in place (e.g. a Fisher whose samples the processes split)."""
        self._reduce_(tensors, mean=False)

    def _reduce_(self, tensors: list[torch.Tensor], mean: bool) -> None:
        if self.world == 1 or not tensors:
            return
        bucket: list[torch.Tensor] = []
        for t in tensors:
            if bucket and (t.dtype != bucket[0].dtype or sum(b.numel() for b in bucket) + t.numel() > _BUCKET):
                self._reduce_bucket(bucket, mean)
                bucket = []
            bucket.append(t)
        self._reduce_bucket(bucket, mean)

    def _reduce_bucket(self, bucket: list[torch.Tensor], mean: bool) -> None:
        flat = torch.cat([t.reshape(-1) for t in bucket])
        torch.distributed.all_reduce(flat)
        if mean:
            flat.div_(self.world)
        for t, part in zip(bucket, flat.split([t.numel() for t in bucket])):
            t.copy_(part.view_as(t))

    def mean_values(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over the processes of each number (one all-reduce); keys must match on every process."""
        if self.world == 1 or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def max_ints(self, values: list[int]) -> list[int]:
        """Elementwise maximum over the processes (e.g. "a signal arrived", "a checkpoint is due")."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite `tensors` with the main process's values."""
        if self.world > 1:
            for t in tensors:
                torch.distributed.broadcast(t, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """The main process's `obj` (picklable) on every process."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather_object(self, obj: Any) -> list[Any]:
        """[obj of rank 0, ..., obj of rank N−1] on every process."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def processes(device: str) -> Processes:
    """The processes of this command for the config's `device` (auto, cpu, cuda, cuda:N).

    Without a launcher: one process on `resolve_device(device)`. Under a launcher: joins the process
    group (once per process) and puts process r on `cuda:LOCAL_RANK` (auto / cuda) or the CPU (cpu, or
    auto without CUDA); `cuda:N` names one GPU for N processes and is refused.
    """
    if not launched():
        return Processes(0, 1, resolve_device(device))
    if device.startswith("cuda:"):
        raise ConfigError(f"device '{device}' names one GPU but {os.environ['WORLD_SIZE']} processes run; valid "
                          "under accelerate launch / torchrun: auto, cuda (process r uses cuda:LOCAL_RANK), cpu")
    resolve_device(device)  # refuses cuda without CUDA
    from accelerate import PartialState  # late: configs load without accelerate's imports

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    where = torch.device(state.device)
    return Processes(state.process_index, state.num_processes, torch.device("cpu") if where.type == "cpu" else where)
