"""Training data: features from the feature store, token targets, padded batches, bucketing.

:class:`BucketingSampler` groups utterances of similar length so that a batch holds at most
``max_frames`` padded frames. Its order is a pure function of ``(seed, epoch)``, and its
``state_dict`` (epoch and batches consumed) makes resume exact. Under DDP each rank takes
every ``world_size``-th batch, and all ranks get the same number of batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechkd.data.manifest import read_manifest
from speechkd.features.store import FeatureRef, FeatureStore


class DataError(ValueError):
    pass


@dataclass
class Batch:
    ids: list[str]
    feats: torch.Tensor  # (batch, frames, dim) float32, zero-padded
    feat_lens: torch.Tensor  # (batch,) frames
    targets: torch.Tensor  # (sum of target lengths,) token ids, concatenated
    target_lens: torch.Tensor  # (batch,)
    texts: list[str]

    def to(self, device) -> "Batch":
        return Batch(self.ids, self.feats.to(device), self.feat_lens.to(device), self.targets.to(device),
                     self.target_lens.to(device), self.texts)

    @property
    def seconds(self) -> float:
        return float(self.feat_lens.sum()) / 100.0


class FeatureDataset:
    """Utterances of a featurize-stage manifest with their token ids."""

    def __init__(self, manifest: str | Path, tokenizer, *, limit: int = 0):
        manifest = Path(manifest)
        utts = read_manifest(manifest)
        if limit:
            utts = utts[:limit]
        self.store = FeatureStore(manifest.parent)
        self.ids, self.refs, self.tokens, self.texts = [], [], [], []
        for lineno, u in enumerate(utts, 1):
            if "feats" not in u.extra:
                raise DataError(f"{manifest}:{lineno}: utterance {u.id!r} has no 'feats' (run the featurize stage)")
            self.ids.append(u.id)
            self.refs.append(FeatureRef.from_json(u.extra["feats"], f"{manifest}:{lineno}"))
            try:
                self.tokens.append(tokenizer.encode(u.text))
            except ValueError as e:
                raise DataError(f"{manifest}:{lineno}: utterance {u.id!r}: {e}") from None
            self.texts.append(u.text)
        if not self.ids:
            raise DataError(f"{manifest}: no utterances")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [r.frames for r in self.refs]

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, list[int], str]:
        return self.ids[i], self.store.get(self.refs[i]), self.tokens[i], self.texts[i]

    def batch(self, indices: list[int]) -> Batch:
        return collate([self[i] for i in indices])


def collate(items: list[tuple[str, np.ndarray, list[int], str]]) -> Batch:
    lens = [f.shape[0] for _, f, _, _ in items]
    dim = items[0][1].shape[1]
    feats = np.zeros((len(items), max(lens), dim), dtype=np.float32)
    for i, (_, f, _, _) in enumerate(items):
        feats[i, : f.shape[0]] = f
    targets = [t for _, _, t, _ in items]
    return Batch(
        ids=[i for i, _, _, _ in items], feats=torch.from_numpy(feats), feat_lens=torch.tensor(lens),
        targets=torch.tensor([x for t in targets for x in t], dtype=torch.long),
        target_lens=torch.tensor([len(t) for t in targets]), texts=[t for _, _, _, t in items],
    )


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
