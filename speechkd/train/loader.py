"""Batches for the training loop: collated in the main process, or by DataLoader workers that prefetch them.

The sampler stays in the main process and decides the order (a pure function of the seed and the epoch);
workers only build the batches it has already chosen, in that order, so a run with workers trains on exactly
the batches of a run without, and the sampler's position (what a checkpoint records) counts the batches the
loop has used, not the ones prefetched: resume stays exact.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from speechkd.data.dataset import Batch


class _Chosen(torch.utils.data.Dataset):
    """The rest of an epoch's batches (lists of utterance indices), built on demand by a worker."""

    def __init__(self, ds, batches: list[list[int]], seeds: list[int] | None = None):
        self.ds, self.batches, self.seeds = ds, batches, seeds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> "Batch | _Failed":
        try:
            return (self.ds.batch(self.batches[i]) if self.seeds is None else
                    self.ds.batch(self.batches[i], self.seeds[i]))
        except Exception as e:  # noqa: BLE001 - handed to the training process, which raises it as it was
            return _Failed(e)


class _Failed:
    """An error a worker met building a batch: raised again in the training process with its own type and
    one-line message (a DataLoader would wrap it in the worker's traceback)."""

    def __init__(self, e: Exception):
        self.type, self.args = type(e), e.args

    def raise_(self):
        try:
            err = self.type(*self.args)
        except Exception:  # noqa: BLE001 - a type that cannot be rebuilt from its args
            err = RuntimeError(*self.args)
        raise err from None


def batches(sampler, ds, *, workers: int = 0, prefetch: int = 2, pin_memory: bool = False,
            seed_of: Callable[[int], int] | None = None) -> Iterator[tuple[list[int], Batch]]:
    """``(indices, batch)`` for the rest of the sampler's current epoch, advancing its position as the loop
    takes each one. ``workers`` 0 builds each batch when it is needed, in this process. ``seed_of(position)``
    gives the seed of the audio perturbations of the epoch's batch at that position (training with augment)."""
    if workers <= 0:
        for b in sampler:
            yield b, (ds.batch(b) if seed_of is None else ds.batch(b, seed_of(sampler.position - 1)))
        return
    rest = sampler.batches(sampler.epoch)[sampler.position:]
    seeds = None if seed_of is None else [seed_of(sampler.position + k) for k in range(len(rest))]
    # its own generator: a DataLoader seeds its workers from the global RNG otherwise, which would move the
    # dropout masks of the training process (building a batch draws no random numbers)
    loader = torch.utils.data.DataLoader(_Chosen(ds, rest, seeds), batch_size=None, shuffle=False, num_workers=workers,
                                         prefetch_factor=prefetch, pin_memory=pin_memory,
                                         generator=torch.Generator().manual_seed(0))
    for b, batch in zip(sampler, loader):
        if isinstance(batch, _Failed):
            batch.raise_()
        yield b, batch
