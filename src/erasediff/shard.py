"""Per-sample random draws that give every process its share of ONE global batch (docs/distributed.md).

Data parallelism must not change what a step computes: N processes with B/N samples each take the
same step as one process with B samples. The samples are split by the batch iterators
(data/batches.py); the random numbers drawn *per sample* (ε, the timesteps t, label dropout, the
random other class) must be split the same way, so every draw of a training step draws the whole
global batch's numbers from the generator (identical on every process) and keeps this process's rows.
Each process's generator therefore advances exactly as the one-process generator does.

`ShardedGenerator` is a `torch.Generator` (so draws that are not per sample, e.g. ESD's one k per step,
are unchanged) that also knows this process's part: rows [index·b, (index+1)·b) of a global batch of
count·b rows. Gradient accumulation is one more level of the same split (micro-batch m of process r
is part r·k + m of world·k). A plain `torch.Generator` is the one-process case: every helper below
then is exactly the torch call it replaces.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch


class ShardedGenerator(torch.Generator):
    """A torch.Generator plus this process's part (`index` of `count`) of every per-sample draw."""

    def __new__(cls, device: str | torch.device = "cpu", index: int = 0, count: int = 1):
        return super().__new__(cls, device)

    def __init__(self, device: str | torch.device = "cpu", index: int = 0, count: int = 1):
        if not 0 <= index < count:
            raise ValueError(f"part index {index} is not in [0, {count})")
        self.index, self.count = index, count


def part(generator: torch.Generator) -> tuple[int, int]:
    """(index, count) of `generator`'s part; (0, 1) for a plain torch.Generator."""
    if isinstance(generator, ShardedGenerator):
        return generator.index, generator.count
    return 0, 1


def global_rows(n: int, generator: torch.Generator) -> int:
    """The global batch size of which this process holds `n` rows."""
    return n * part(generator)[1]


def local_rows(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """This process's rows of a global tensor (count·b, ...) -> (b, ...)."""
    index, count = part(generator)
    if count == 1:
        return x
    b = x.shape[0] // count
    return x[index * b : (index + 1) * b]


def randn(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """N(0, I) noise of local `shape` (b, ...) on the generator's device: rows of the global draw."""
    return local_rows(torch.randn((global_rows(shape[0], generator), *shape[1:]), generator=generator,
                                  device=generator.device), generator)


def rand(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """U[0, 1) of local `shape` (b, ...): rows of the global draw."""
    return local_rows(torch.rand((global_rows(shape[0], generator), *shape[1:]), generator=generator,
                                 device=generator.device), generator)


def randint(low: int, high: int, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Integers in [low, high) of local `shape` (b, ...): rows of the global draw."""
    return local_rows(torch.randint(low, high, (global_rows(shape[0], generator), *shape[1:]), generator=generator,
                                    device=generator.device), generator)


@contextmanager
def whole(generator: torch.Generator) -> Iterator[torch.Generator]:
    """Within: draws of `generator` return the whole global batch (part 0 of 1), e.g. to take the
    timesteps of one set for a slice of another (EraseDiff's shared timesteps); its parts after."""
    if not isinstance(generator, ShardedGenerator):
        yield generator
        return
    index, count = generator.index, generator.count
    generator.index, generator.count = 0, 1
    try:
        yield generator
    finally:
        generator.index, generator.count = index, count


def micro_batch(batch: Any, k: int, m: int) -> Any:
    """Micro-batch m of k of a batch (a tensor, or a tuple / list of tensors with one leading batch
    dimension; None stays None): rows [m·b/k, (m+1)·b/k) (gradient accumulation)."""
    if batch is None or k == 1:
        return batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(micro_batch(x, k, m) for x in batch)
    b = batch.shape[0]
    if b % k:
        raise ValueError(f"a batch of {b} rows does not split into {k} micro-batches")
    return batch[m * (b // k) : (m + 1) * (b // k)]
