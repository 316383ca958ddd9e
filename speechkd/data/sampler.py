"""The bucketing sampler.

:class:`BucketingSampler` groups utterances of similar length so that a batch holds at most
``max_frames`` padded frames. Its order is a pure function of ``(seed, epoch)``, and its
``state_dict`` (epoch and batches consumed) makes resume exact.

An optimizer step takes ``per_step = world_size * accum`` batches of the epoch's global list, in order: rank
``r`` takes the ``accum`` batches at ``step * per_step + r * accum + a``. The global list, and so which
batches make each step, does not depend on how they are shared out, and the position a checkpoint records
is global (batches of the epoch consumed by all ranks together): a run resumes on another world size with
the same ``per_step`` (4 ranks x 1 on 2 ranks x 2, or on 1 process x 4).
"""

from __future__ import annotations

import numpy as np

from speechkd.data.dataset import DataError


class _EpochSampler:
    """What both samplers share: ``global_batches(epoch)`` (a pure function of the seed and the epoch), this
    rank's share of it (``batches``), the current epoch and this rank's batches of it already consumed
    (``position``), which make resume exact."""

    seed: int
    epoch: int = 0
    position: int = 0
    rank: int = 0
    world_size: int = 1
    accum: int = 1

    def _share(self, rank: int, world_size: int, accum: int) -> None:
        if not (0 <= rank < world_size and accum >= 1):
            raise DataError(f"bad share: rank {rank} of {world_size}, {accum} batch(es) per step")
        self.rank, self.world_size, self.accum = rank, world_size, accum

    @property
    def per_step(self) -> int:
        """Batches one optimizer step takes, all ranks together."""
        return self.world_size * self.accum

    def global_batches(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of the epoch, in the order it trains on them (whole steps only)."""
        g = self.global_batches(epoch)
        k, a, r = self.per_step, self.accum, self.rank
        return [g[s * k + r * a + j] for s in range(len(g) // k) for j in range(a)]

    def global_index(self, local: int) -> int:
        """Where this rank's ``local``-th batch of the epoch sits in the global list."""
        s, j = divmod(local, self.accum)
        return s * self.per_step + self.rank * self.accum + j

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
        """``consumed``: batches of the epoch all ranks have taken (checkpoints are written between steps)."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "per_step": self.per_step,
                "consumed": self.position // self.accum * self.per_step}

    def load_state_dict(self, d: dict) -> None:
        per_step = int(d.get("per_step", self.per_step))
        if per_step != self.per_step:
            raise DataError(f"the checkpoint's steps take {per_step} batches each, this run's {self.per_step} "
                            f"({self.world_size} rank(s) x {self.accum}): the same data order needs the same "
                            "batches per step")
        self.epoch = int(d["epoch"])
        consumed = int(d["consumed"]) if "consumed" in d else int(d["position"]) * self.per_step // self.accum
        self.position = consumed // self.per_step * self.accum


class BucketingSampler(_EpochSampler):
    """Length-bucketed batches of at most ``max_frames`` padded frames, reshuffled every epoch."""

    def __init__(self, lengths: list[int], max_frames: int, *, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, accum: int = 1, max_batch: int = 256):
        if max_frames < max(lengths):
            raise DataError(f"max_frames={max_frames} is smaller than the longest utterance ({max(lengths)} frames)")
        self.lengths = np.asarray(lengths)
        self.max_frames, self.seed, self.shuffle, self.max_batch = max_frames, seed, shuffle, max_batch
        self._share(rank, world_size, accum)
        self.epoch = 0
        self.position = 0  # this rank's batches of this epoch already consumed

    def global_batches(self, epoch: int) -> list[list[int]]:
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
        return out


class MixedSampler(_EpochSampler):
    """Batches of transcribed and untranscribed utterances, interleaved at a ratio.

    An epoch is one pass over the transcribed batches (a :class:`BucketingSampler` over
    ``lengths[:n_transcribed]``) with ``round(n * ratio / (1 - ratio))`` untranscribed batches placed among
    them at seeded positions, so ``ratio`` is the share of steps (and, batches being frame-bounded, about
    the share of frames) that untranscribed audio takes. A batch holds one kind only. The untranscribed
    batches run on through their own reshuffled passes across epochs, so every untranscribed utterance is
    seen before any is seen twice. Like :class:`BucketingSampler` its order is a pure function of
    ``(seed, epoch)`` and its state (epoch, position) makes resume exact; indices of untranscribed
    utterances are offset by ``n_transcribed``.
    """

    def __init__(self, lengths: list[int], n_transcribed: int, ratio: float, max_frames: int, *, seed: int,
                 rank: int = 0, world_size: int = 1, accum: int = 1, max_batch: int = 256):
        if not 0.0 <= ratio < 1.0:
            raise DataError(f"untranscribed ratio must be in [0, 1), got {ratio}")
        if not 0 < n_transcribed <= len(lengths):
            raise DataError(f"need transcribed utterances (got {n_transcribed} of {len(lengths)})")
        self.n, self.ratio, self.seed = n_transcribed, ratio, seed
        self._share(rank, world_size, accum)
        kw = dict(seed=seed, max_batch=max_batch)  # the global lists: this sampler shares out the interleaving
        self.labeled = BucketingSampler(lengths[:n_transcribed], max_frames, **kw)
        self.unlabeled = (BucketingSampler(lengths[n_transcribed:], max_frames, **{**kw, "seed": seed + 7919})
                          if n_transcribed < len(lengths) and ratio > 0 else None)
        self._lens: dict[int, int] = {}
        self._ks: dict[int, int] = {}
        self.epoch = 0
        self.position = 0

    def _pass_len(self, p: int) -> int:
        """Batches in pass ``p`` over the untranscribed audio (bucketing differs between passes)."""
        if p not in self._lens:
            self._lens[p] = len(self.unlabeled.global_batches(p))
        return self._lens[p]

    def _per_epoch(self, e: int) -> int:
        """Untranscribed batches in epoch ``e``."""
        if e not in self._ks:
            self._ks[e] = self.untranscribed_per_epoch(len(self.labeled.global_batches(e)))
        return self._ks[e]

    def untranscribed_per_epoch(self, n_labeled: int) -> int:
        return 0 if self.unlabeled is None else int(round(n_labeled * self.ratio / (1.0 - self.ratio)))

    def global_batches(self, epoch: int) -> list[list[int]]:
        lab = self.labeled.global_batches(epoch)
        k = self.untranscribed_per_epoch(len(lab))
        if not k:
            return lab
        unl: list[list[int]] = []
        # the untranscribed stream continues across epochs: skip what the earlier epochs took
        start = sum(self._per_epoch(e) for e in range(epoch))
        j, p = 0, 0
        while len(unl) < k:
            n = self._pass_len(p)
            if n == 0:
                return lab
            if j + n > start:
                for q, b in enumerate(self.unlabeled.global_batches(p)):
                    if start <= j + q < start + k:
                        unl.append([i + self.n for i in b])
            j, p = j + n, p + 1
        rng = np.random.default_rng([self.seed, epoch, 2])
        is_unl = np.zeros(len(lab) + k, bool)
        is_unl[rng.choice(len(lab) + k, size=k, replace=False)] = True
        out, a, b = [], iter(lab), iter(unl)
        for flag in is_unl:
            out.append(next(b) if flag else next(a))
        return out
