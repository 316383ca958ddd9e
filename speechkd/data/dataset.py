"""Featurized data: features from the feature store, token targets, padded batches.

:class:`FeatureDataset` reads a featurize-stage manifest. Given the model's frame ``stack`` (a
training set), it leaves out utterances too short for CTC at that output rate with that
tokenizer, and lists them in :attr:`FeatureDataset.too_short`; decoding keeps every utterance.
A row without a transcript is refused unless the dataset is opened ``untranscribed`` (audio for
distillation: no targets; the teacher cache labels it).

A featurize stage run ``on_the_fly`` stores no features: its rows carry ``fbank_frames`` and the dataset
computes fbank from the audio when a batch is built (in DataLoader workers where the trainer has them), with
the same code and options featurize uses, so the features equal stored float32 ones. Only then can training
perturb the waveform (:meth:`FeatureDataset.set_augment`: speed and noise, drawn from the batch's seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechkd.data.checks import ctc_min_frames
from speechkd.data.manifest import read_manifest
from speechkd.features.store import FeatureRef, FeatureStore


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class AudioRef:
    """An utterance whose fbank is computed when it is used: its audio and its frame count at speed 1."""

    path: str
    offset: float | None
    duration: float
    frames: int


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
    wave: bool = False  # True: ``feats`` are padded waveforms (batch, samples), ``feat_lens`` sample counts

    def to(self, device) -> "Batch":
        nb = self.feats.is_pinned()  # a pinned batch (DataLoader workers on CUDA) copies asynchronously
        return Batch(self.ids, self.feats.to(device, non_blocking=nb), self.feat_lens.to(device, non_blocking=nb),
                     self.targets.to(device, non_blocking=nb), self.target_lens.to(device, non_blocking=nb),
                     self.texts, self.seconds, self.transcribed, self.wave)

    def pin_memory(self) -> "Batch":
        """The DataLoader's pin_memory hook: page-locked tensors for an asynchronous copy to the GPU."""
        return Batch(self.ids, self.feats.pin_memory(), self.feat_lens.pin_memory(), self.targets.pin_memory(),
                     self.target_lens.pin_memory(), self.texts, self.seconds, self.transcribed, self.wave)


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
        self.stack = stack
        self._fbank = None  # the featurize stage's fbank options, read on first use by an on-the-fly row
        self._augment = None
        self._waves = False  # batches of on-the-fly rows carry waveforms (fbank computed where they are used)
        for lineno, u in enumerate(utts, 1):
            if "feats" in u.extra:
                ref = FeatureRef.from_json(u.extra["feats"], f"{manifest}:{lineno}")
            elif "fbank_frames" in u.extra:
                try:
                    n = int(u.extra["fbank_frames"])
                except (TypeError, ValueError):
                    n = 0
                if n < 1:
                    raise DataError(f"{manifest}:{lineno}: utterance {u.id!r}: 'fbank_frames' must be a positive "
                                    "integer")
                ref = AudioRef(str(u.resolve_audio(manifest.parent)), u.offset, u.duration, n)
            else:
                raise DataError(f"{manifest}:{lineno}: utterance {u.id!r} has no 'feats' (run the featurize stage)")
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
        """Frames per utterance, for batching: with speed perturbation below 1, the most an utterance can
        become (its audio is stretched by ``1 / speed``; the fbank window adds up to two frames), so that
        no batch exceeds the sampler's ``max_frames``."""
        cfg = self._augment.cfg if self._augment is not None else None
        slowest = min(cfg.speed) if cfg is not None and cfg.changes_frames else 1.0
        if slowest >= 1.0:
            return [r.frames for r in self.refs]
        return [math.ceil(r.frames / slowest) + 2 for r in self.refs]

    @property
    def on_the_fly(self) -> bool:
        return any(isinstance(r, AudioRef) for r in self.refs)

    def fbank(self):
        """The fbank options of the featurize stage that wrote the manifest (``features.json`` beside it)."""
        if self._fbank is None:
            from speechkd.features.fbank import read_fbank_options

            self._fbank = read_fbank_options(self.manifest.parent)
        return self._fbank

    def set_augment(self, cfg) -> None:
        """Perturb training audio (a :class:`~speechkd.data.augment.WaveAugment`); only on-the-fly rows
        have audio to perturb."""
        from speechkd.data.augment import Augmenter

        if not cfg.active:
            self._augment = None
            return
        if not self.on_the_fly:
            raise DataError(f"{self.manifest}: augment (speed, noise) perturbs the audio, but these rows point at "
                            "stored features; run the featurize stage with on_the_fly: true")
        self._augment = Augmenter(cfg, self.fbank().sample_rate)

    def set_wave_batches(self, on: bool) -> None:
        """Batches of waveforms instead of features (``Batch.wave``): the trainer computes fbank on its own
        device (:func:`wave_features`; the GPU where there is one)."""
        if on and not self.on_the_fly:
            raise DataError(f"{self.manifest}: fbank_on: device computes features from the audio, but these rows "
                            "point at stored features; run the featurize stage with on_the_fly: true")
        self._waves = on

    def _waveform(self, i: int, rng: np.random.Generator | None) -> np.ndarray:
        from speechkd.data.audio import AudioError, load_audio

        ref, opts = self.refs[i], self.fbank()
        try:
            wav = load_audio(ref.path, offset=ref.offset, duration=ref.duration if ref.offset is not None else None,
                             target_sr=opts.sample_rate)
        except AudioError as e:
            raise DataError(f"{self.manifest}: utterance {self.ids[i]!r}: {e.detail} ({ref.path}; it featurized "
                            "cleanly: was the file changed since?)") from None
        if rng is not None and self._augment is not None:
            factor = None
            if self.stack and self._augment.cfg.changes_frames:  # keep speed 1 where faster is too short for CTC
                fastest = max(self._augment.cfg.speed)
                if int(ref.frames / fastest) // self.stack < ctc_min_frames(self.tokens[i]):
                    factor = 1.0
            wav = self._augment(wav, rng, factor)
        return wav

    def _audio_features(self, i: int, rng: np.random.Generator | None) -> np.ndarray:
        from speechkd.features.fbank import compute_fbank

        f = compute_fbank(self._waveform(i, rng), self.fbank()).numpy()
        _check_features(f, self.dim, f"{self.manifest}: utterance {self.ids[i]!r}")
        return f

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, list[int], str]:
        ref = self.refs[i]
        feats = self._audio_features(i, None) if isinstance(ref, AudioRef) else self.store.get(ref, self.dim)
        return self.ids[i], feats, self.tokens[i], self.texts[i]

    def batch(self, indices: list[int], seed: int | None = None) -> Batch:
        """The padded batch of ``indices``. ``seed`` (training) draws the audio perturbations of on-the-fly rows,
        one generator per utterance from ``(seed, its place in the batch)``."""
        if self._waves and all(isinstance(self.refs[i], AudioRef) for i in indices):
            use = seed is not None and self._augment is not None
            waves = [self._waveform(i, np.random.default_rng([seed, k]) if use else None)
                     for k, i in enumerate(indices)]
            b = collate_waves([(self.ids[i], w, self.tokens[i], self.texts[i]) for i, w in zip(indices, waves)])
        elif seed is not None and self._augment is not None:
            b = collate([(self.ids[i], self._audio_features(i, np.random.default_rng([seed, k])), self.tokens[i],
                          self.texts[i]) if isinstance(self.refs[i], AudioRef) else self[i]
                         for k, i in enumerate(indices)])
        else:
            b = collate([self[i] for i in indices])
        b.seconds = float(sum(self.durations[i] for i in indices))
        b.transcribed = not self.untranscribed
        return b


def _check_features(f, dim: int | None, where: str) -> None:
    if dim is not None and f.shape[1] != dim:
        raise DataError(f"{where}: features are {f.shape[1]}-dimensional; the model takes {dim}")
    if f.shape[0] == 0 or not bool(np.isfinite(f).all() if isinstance(f, np.ndarray) else torch.isfinite(f).all()):
        raise DataError(f"{where}: its features are empty or not finite")


def collate_waves(items: list[tuple[str, np.ndarray, list[int], str]]) -> Batch:
    """A batch of padded waveforms ``(batch, samples)`` with their sample counts (``wave=True``)."""
    lens = [w.shape[0] for _, w, _, _ in items]
    waves = np.zeros((len(items), max(lens)), dtype=np.float32)
    for i, (_, w, _, _) in enumerate(items):
        waves[i, : w.shape[0]] = w
    targets = [t for _, _, t, _ in items]
    return Batch(ids=[i for i, _, _, _ in items], feats=torch.from_numpy(waves), feat_lens=torch.tensor(lens),
                 targets=torch.tensor([x for t in targets for x in t], dtype=torch.long),
                 target_lens=torch.tensor([len(t) for t in targets]), texts=[t for _, _, _, t in items], wave=True)


def wave_features(batch: Batch, opts, dim: int | None = None) -> Batch:
    """fbank of a waveform batch, computed where its tensors are (the GPU after ``batch.to("cuda")``), with
    the featurize stage's options ``opts``: the feature batch of the same utterances."""
    from speechkd.features.fbank import compute_fbank

    feats = [compute_fbank(batch.feats[i, : int(batch.feat_lens[i])], opts) for i in range(len(batch.ids))]
    for uid, f in zip(batch.ids, feats):
        _check_features(f, dim, f"utterance {uid!r}")
    lens = [f.shape[0] for f in feats]
    out = torch.zeros(len(feats), max(lens), feats[0].shape[1], device=batch.feats.device)
    for i, f in enumerate(feats):
        out[i, : lens[i]] = f
    return Batch(batch.ids, out, torch.tensor(lens, device=batch.feat_lens.device), batch.targets,
                 batch.target_lens, batch.texts, batch.seconds, batch.transcribed)


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

    def set_augment(self, cfg) -> None:
        for p in self.parts:
            p.set_augment(cfg)

    def set_wave_batches(self, on: bool) -> None:
        for p in self.parts:
            p.set_wave_batches(on)

    def fbank(self):
        return self.transcribed.fbank()

    def batch(self, indices: list[int], seed: int | None = None) -> Batch:
        part = self._where[indices[0]][0]
        if any(self._where[i][0] is not part for i in indices):
            raise DataError("a batch mixes transcribed and untranscribed utterances (use MixedSampler)")
        return part.batch([self._where[i][1] for i in indices], seed)

    def make_sampler(self, max_frames: int, *, seed: int, rank: int = 0, world_size: int = 1, accum: int = 1):
        from speechkd.data.sampler import MixedSampler

        return MixedSampler(self.lengths, self.n_transcribed, self.ratio, max_frames, seed=seed, rank=rank,
                            world_size=world_size, accum=accum)
