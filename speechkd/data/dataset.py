"""Featurized data: features from the feature store, token targets, padded batches.

:class:`FeatureDataset` reads a featurize-stage manifest. Given the model's frame ``stack`` (a
training set), it leaves out utterances too short for CTC at that output rate with that
tokenizer, and lists them in :attr:`FeatureDataset.too_short`; decoding keeps every utterance.
A row without a transcript is refused unless the dataset is opened ``untranscribed`` (audio for
distillation: no targets; the teacher cache labels it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechkd.data.checks import ctc_min_frames
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
    seconds: float = 0.0  # audio in the batch (manifest durations)
    transcribed: bool = True  # False: untranscribed audio (no targets; the teacher cache labels it)

    def to(self, device) -> "Batch":
        nb = self.feats.is_pinned()  # a pinned batch (DataLoader workers on CUDA) copies asynchronously
        return Batch(self.ids, self.feats.to(device, non_blocking=nb), self.feat_lens.to(device, non_blocking=nb),
                     self.targets.to(device, non_blocking=nb), self.target_lens.to(device, non_blocking=nb),
                     self.texts, self.seconds, self.transcribed)

    def pin_memory(self) -> "Batch":
        """The DataLoader's pin_memory hook: page-locked tensors for an asynchronous copy to the GPU."""
        return Batch(self.ids, self.feats.pin_memory(), self.feat_lens.pin_memory(), self.targets.pin_memory(),
                     self.target_lens.pin_memory(), self.texts, self.seconds, self.transcribed)


class FeatureDataset:
    """Utterances of a featurize-stage manifest with their token ids."""

    def __init__(self, manifest: str | Path, tokenizer, *, limit: int = 0, stack: int | None = None,
                 dim: int | None = None, untranscribed: bool = False):
        """``dim``: the feature dimension the model takes (a shard of another is an error naming it).
        ``untranscribed``: every row is used as audio only (no token targets, empty text)."""
        manifest = Path(manifest)
        self.dim = dim
        self.untranscribed = untranscribed
        utts = read_manifest(manifest)
        if limit:
            utts = utts[:limit]
        self.manifest = manifest
        self.store = FeatureStore(manifest.parent)
        self.ids, self.refs, self.tokens, self.texts, self.durations = [], [], [], [], []
        self.speakers: list[str] = []
        self.too_short: list[dict] = []  # left out for CTC (training sets only)
        for lineno, u in enumerate(utts, 1):
            if "feats" not in u.extra:
                raise DataError(f"{manifest}:{lineno}: utterance {u.id!r} has no 'feats' (run the featurize stage)")
            ref = FeatureRef.from_json(u.extra["feats"], f"{manifest}:{lineno}")
            if untranscribed:
                toks, text = [], ""
            elif u.text is None:
                raise DataError(f"{manifest}:{lineno}: utterance {u.id!r} has no transcript (an untranscribed "
                                "split): it cannot be scored or trained on with CTC; a distill stage takes it as "
                                "data.untranscribed")
            else:
                text = u.text
                try:
                    toks = tokenizer.encode(text)
                except ValueError as e:
                    raise DataError(f"{manifest}:{lineno}: utterance {u.id!r}: {e}") from None
            if stack and not untranscribed:
                need, have = ctc_min_frames(toks), ref.frames // stack
                if have < need:
                    self.too_short.append({"id": u.id, "reason": "too_short_for_ctc",
                                           "detail": f"{ref.frames} frames (/{stack} = {have}) cannot emit "
                                                     f"{need} CTC labels ({len(toks)} tokens)"})
                    continue
            self.ids.append(u.id)
            self.refs.append(ref)
            self.tokens.append(toks)
            self.texts.append(text)
            self.durations.append(u.duration)
            self.speakers.append(u.speaker)
        if not self.ids:
            why = f" ({len(self.too_short)} too short for CTC at stack {stack})" if self.too_short else ""
            raise DataError(f"{manifest}: no utterances{why}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [r.frames for r in self.refs]

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, list[int], str]:
        return self.ids[i], self.store.get(self.refs[i], self.dim), self.tokens[i], self.texts[i]

    def batch(self, indices: list[int]) -> Batch:
        b = collate([self[i] for i in indices])
        b.seconds = float(sum(self.durations[i] for i in indices))
        b.transcribed = not self.untranscribed
        return b


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


class MixedDataset:
    """A transcribed training set and untranscribed audio (one or more untranscribed
    :class:`FeatureDataset`), indexed as one: ``0 .. n_transcribed - 1`` are the transcribed utterances,
    the rest untranscribed. A batch must hold one kind (:class:`~speechkd.data.sampler.MixedSampler`
    makes such batches; ``ratio`` is the untranscribed share of the steps)."""

    def __init__(self, transcribed: FeatureDataset, untranscribed: list[FeatureDataset], ratio: float):
        self.parts = [transcribed, *untranscribed]
        self.transcribed, self.ratio = transcribed, ratio
        self.n_transcribed = len(transcribed)
        self.too_short = transcribed.too_short
        self._where = [(p, i) for p in self.parts for i in range(len(p))]
        self.ids = [uid for p in self.parts for uid in p.ids]
        self.durations = [d for p in self.parts for d in p.durations]

    @property
    def dim(self):
        return self.transcribed.dim

    @dim.setter
    def dim(self, value):
        for p in self.parts:
            p.dim = value

    def __len__(self) -> int:
        return len(self._where)

    @property
    def lengths(self) -> list[int]:
        return [n for p in self.parts for n in p.lengths]

    def batch(self, indices: list[int]) -> Batch:
        part = self._where[indices[0]][0]
        if any(self._where[i][0] is not part for i in indices):
            raise DataError("a batch mixes transcribed and untranscribed utterances (use MixedSampler)")
        return part.batch([self._where[i][1] for i in indices])

    def make_sampler(self, max_frames: int, *, seed: int, rank: int = 0, world_size: int = 1, accum: int = 1):
        from speechkd.data.sampler import MixedSampler

        return MixedSampler(self.lengths, self.n_transcribed, self.ratio, max_frames, seed=seed, rank=rank,
                            world_size=world_size, accum=accum)
