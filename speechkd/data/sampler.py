"""The bucketing sampler.

:class:`BucketingSampler` groups utterances of similar length so that a batch holds at most
``max_frames`` padded frames. Its order is a pure function of ``(seed, epoch)``, and its
``state_dict`` (epoch and batches consumed) makes resume exact. Under DDP each rank takes
every ``world_size``-th batch, and all ranks get the same number of batches.
"""

from __future__ import annotations

import numpy as np

from speechkd.data.dataset import DataError


class BucketingSampler:
    """Length-bucketed batches of at most ``max_frames`` padded frames, reshuffled every epoch."""

    def __init__(self, lengths: list[int], max_frames: int, *, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, max_batch: int = 256):
        if max_frames < max(lengths):
            raise DataError(f"max_frames={max_frames} is smaller than the longest utterance ({max(lengths)} frames)")
        self.lengths = np.asarray(lengths)
        self.max_frames, self.seed, self.shuffle = max_frames, seed, shuffle
        self.rank, self.world_size, self.max_batch = rank, world_size, max_batch
        self.epoch = 0
        self.position = 0  # batches of this epoch already consumed

    def batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:  # jitter lengths so buckets differ between epochs
            key = self.lengths * rng.uniform(0.9, 1.1, size=len(self.lengths))
        else:
            key = self.lengths.astype(float)
        order = np.argsort(key, kind="stable")
        out, cur, cur_max = [], [], 0
        for i in order:
            m = max(cur_max, int(self.lengths[i]))
            if cur and (m * (len(cur) + 1) > self.max_frames or len(cur) >= self.max_batch):
                out.append(cur)
                cur, m = [], int(self.lengths[i])
            cur.append(int(i))
            cur_max = m
        if cur:
            out.append(cur)
        if self.shuffle:
            out = [out[j] for j in rng.permutation(len(out))]
        n = len(out) // self.world_size * self.world_size if self.world_size > 1 else len(out)
        return out[self.rank : n : self.world_size]

    def __len__(self) -> int:
        return len(self.batches(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self):
        bs = self.batches(self.epoch)
        while self.position < len(bs):
            b = bs[self.position]
            self.position += 1
            yield b

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.position = int(d["epoch"]), int(d["position"])
