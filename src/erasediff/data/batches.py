"""An endless, deterministic, resumable stream of shuffled batches.

Training loops count steps, not epochs, and the EraseDiff loop draws from D_r and D_f at different
rates, so each set gets its own endless iterator. The k-th batch is a pure function of (seed, k):
epoch e shuffles with a generator seeded by seed * 1_000_003 + e, so resuming from a checkpoint
only needs the number of batches drawn, and fast-forwarding reads no image.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from erasediff.errors import DataError


class InfiniteBatches:
    """Endless shuffled batches over `indices` of `dataset`: deterministic given `seed`, and resumable.

    Each epoch is a fresh permutation of `indices` cut into batches of `batch_size`; the incomplete
    last batch is dropped, except when there are fewer indices than `batch_size`: then every epoch is
    one batch of all of them. Yields images (B, C, H, W) float32 and labels (B,) int64 on `device`.

    In-memory datasets (exposing a `.tensors` pair, like the digits TensorDataset) are indexed
    directly; others go through a per-epoch DataLoader with `num_workers` workers. The guarantee
    covers which items are drawn; random augmentations (hflip) follow torch's RNG.

    part = (r, N): process r of N data-parallel processes (docs/distributed.md) gets rows
    [r·B/N, (r+1)·B/N) of every batch (B must split evenly); N processes together see exactly the
    batches of one. `batch_size` stays the global B.
    """

    def __init__(self, dataset: Dataset, indices: torch.Tensor, batch_size: int, *, seed: int,
                 num_workers: int = 0, device: str | torch.device = "cpu", part: tuple[int, int] = (0, 1)):
        self.indices = torch.as_tensor(indices, dtype=torch.int64).flatten()
        if len(self.indices) == 0:
            raise DataError("cannot draw batches from an empty set of images: check the forget/remain split")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1 (got {batch_size})")
        self.dataset, self.seed, self.num_workers = dataset, seed, num_workers
        self.device = torch.device(device)
        self.batch_size = min(batch_size, len(self.indices))
        self.batches_per_epoch = len(self.indices) // self.batch_size
        self.rank, self.world = part
        if self.batch_size % self.world:
            raise DataError(f"a batch of {self.batch_size} images does not split over {self.world} processes: choose "
                            f"data.batch_size (and data.forget_batch_size) divisible by {self.world}")
        self.local_batch_size = self.batch_size // self.world
        tensors = getattr(dataset, "tensors", None)
        self._tensors = tensors if isinstance(tensors, (tuple, list)) and len(tensors) == 2 else None
        self._drawn = 0
        self._loader = None  # (epoch, iterator) of the DataLoader path

    def __iter__(self):
        return self

    def _epoch_batches(self, epoch: int) -> torch.Tensor:
        """(batches_per_epoch, B) dataset indices of `epoch`, a function of (seed, epoch) only."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.indices), generator=gen)
        used = self.batches_per_epoch * self.batch_size
        rows = self.indices[perm[:used]].view(self.batches_per_epoch, self.batch_size)
        b = self.local_batch_size
        return rows[:, self.rank * b : (self.rank + 1) * b]  # this process's share of every batch

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, b = divmod(self._drawn, self.batches_per_epoch)
        if self._tensors is not None:
            idx = self._epoch_batches(epoch)[b]
            images, labels = self._tensors[0][idx], self._tensors[1][idx]
        else:
            if self._loader is None or self._loader[0] != epoch:
                sampler = self._epoch_batches(epoch)[b:].tolist()
                loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                    pin_memory=self.device.type == "cuda",
                                    generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
                self._loader = (epoch, iter(loader))
            images, labels = next(self._loader[1])
        self._drawn += 1
        return (images.to(self.device, torch.float32, non_blocking=True),
                torch.as_tensor(labels).to(self.device, torch.int64, non_blocking=True))

    def state_dict(self) -> dict:
        return {"batches_drawn": self._drawn}

    def load_state_dict(self, state: dict) -> None:
        """Resume after `state["batches_drawn"]` batches, without reading any image."""
        drawn = state.get("batches_drawn")
        if isinstance(drawn, bool) or not isinstance(drawn, int) or drawn < 0:
            raise DataError(f"batch iterator state needs 'batches_drawn' as an int >= 0 (got {drawn!r})")
        self._drawn, self._loader = drawn, None
