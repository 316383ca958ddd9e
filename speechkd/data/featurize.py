"""Featurization: audio of a manifest -> log-mel fbank in a sharded feature store.

The library side of the ``featurize`` stage (:mod:`speechkd.stages.featurize` is its thin I/O shell):
:func:`featurize_utterance` computes one utterance's features or says why it is bad input,
:func:`text_problem` screens transcripts, and :func:`featurize_split` featurizes a whole manifest into
``shards/<split>/feats-NNNNN.npy`` (a ``.json`` index written after each, the unit of resume) with a
process pool, applying the bad-input policy in shard order, and returns the manifest rows with their
``feats`` references.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from speechkd.config import field, require
from speechkd.data.audio import AudioError, load_audio
from speechkd.data.checks import BadInputLog
from speechkd.data.manifest import Utterance, read_manifest, relative_to_manifest
from speechkd.features.cmvn import cmvn_sums
from speechkd.features.fbank import FbankOptions, compute_fbank
from speechkd.features.store import FeatureRef, write_shard
from speechkd.text.normalize import ALPHABET, normalize_text
from speechkd.utils import atomic_write_text, progress

log = logging.getLogger(__name__)
# A pool of worker processes pays back its start (each spawned worker imports torch: about 4 s a pool on a 2-core
# AMD EPYC, where one process featurizes an hour of audio in about 7 s) only from about an hour of audio to do.
POOL_MIN_SECONDS = 3600.0


@dataclass
class FeaturizeOptions:
    fbank: FbankOptions = field(default_factory=FbankOptions, help="fbank options")
    shard_size: int = field(500, help="utterances per shard")
    dtype: Literal["float32", "float16"] = field("float32", help="stored feature dtype")
    num_workers: int = field(0, help="worker processes (0 = one per CPU core; a split with less than an hour of "
                                     "audio to do is featurized in the stage's own process)", fingerprint=False)
    bad_input: Literal["skip", "fail"] = field("skip", help="skip (count, list, summarise) | fail (stop with a "
                                                           "clear error)")
    max_duration: float = field(30.0, help="longest utterance kept (seconds; checked on the header, before decoding)")
    duration_tolerance: float = field(0.1, help="allowed |manifest duration - audio duration| (seconds)")
    on_the_fly: bool = field(False, help="store no features: every utterance is still read and checked, and CMVN "
                                         "accumulated, but the manifests point at the audio and training computes "
                                         "fbank per batch (corpora whose features do not fit on disk; needed for "
                                         "speed perturbation and noise)", fingerprint="unless_default")

    def __post_init__(self):
        require(self.shard_size >= 1, "shard_size", f"must be >= 1, got {self.shard_size}")
        require(self.num_workers >= 0, "num_workers", f"must be >= 0 (0 = one per core), got {self.num_workers}")
        require(self.max_duration > 0, "max_duration", f"must be > 0 seconds, got {self.max_duration}")
        require(self.duration_tolerance >= 0, "duration_tolerance", f"must be >= 0, got {self.duration_tolerance}")


def text_problem(text: str) -> tuple[str, str] | None:
    """``(reason, detail)`` when a transcript is unusable for character CTC, else ``None``."""
    if not normalize_text(text):
        return "empty_transcript", f"transcript {text!r} has no usable characters"
    bad = sorted({c for c in text if c not in ALPHABET and c != " "})
    if bad:
        return "bad_characters", f"transcript has characters outside [a-z' ]: {''.join(bad)!r} (normalise it first)"
    return None


def featurize_utterance(u: Utterance, audio_path: Path, cfg: FeaturizeOptions) -> tuple[np.ndarray | None, tuple[str, str] | None]:
    """Features ``(frames, mels)`` of one utterance, or ``(None, (reason, detail))`` if it is bad input."""
    segment = u.offset is not None  # a segment reads `duration` seconds from `offset`
    try:
        wav = load_audio(audio_path, offset=u.offset, duration=u.duration if segment else None,
                         target_sr=cfg.fbank.sample_rate, max_seconds=cfg.max_duration)
    except AudioError as e:
        return None, (e.reason, e.detail)
    actual = wav.shape[0] / cfg.fbank.sample_rate
    if not np.any(wav):
        return None, ("silent", "audio is digital silence (all samples are zero)")
    if abs(actual - u.duration) > cfg.duration_tolerance:
        where = f" from offset {u.offset}s" if segment else ""
        return None, ("duration_mismatch", f"manifest says {u.duration:.3f}s, audio has {actual:.3f}s{where}")
    feats = compute_fbank(wav, cfg.fbank).numpy()
    if feats.shape[0] == 0:
        return None, ("too_short", f"{actual:.3f}s is shorter than one {cfg.fbank.frame_length_ms} ms frame")
    if not np.isfinite(feats).all():
        n = int((~np.isfinite(feats).all(axis=1)).sum())
        return None, ("non_finite_features", f"{n} of {feats.shape[0]} feature frames are NaN/Inf")
    return feats, None


def _shard_job(args: tuple) -> dict[str, Any]:
    """Featurize one shard (runs in a worker process). If ``fail`` and a problem is found, writes no shard, only
    an index that says so (``written: false``; the shard counts as not done: a rerun retries it), so that the
    other ranks of a distributed run learn of it."""
    utts, audio_paths, cfg, shard_path, index_path = args
    import torch

    # one thread per worker; restored because a single-shard split runs this in the stage's own process,
    # and later stages there (training) must keep their thread count
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        feats, kept, rejected = [], [], []
        seconds = 0.0
        for u, ap in zip(utts, audio_paths):
            f, problem = featurize_utterance(u, Path(ap), cfg)
            if problem is not None:
                rejected.append({"id": u.id, "path": ap, "reason": problem[0], "detail": problem[1]})
                if cfg.bad_input == "fail":
                    index = {"entries": [], "rejected": rejected, "written": False, "seconds": seconds}
                    atomic_write_text(Path(index_path), json.dumps(index) + "\n")
                    return index
                continue
            feats.append(f)
            kept.append(u.id)
            seconds += u.duration
        if cfg.on_the_fly:  # no shard: the frame counts, and the CMVN sums (the features are not kept)
            s, sq, n = cmvn_sums(feats)
            index = {"entries": [{"id": i, "frames": int(f.shape[0])} for i, f in zip(kept, feats)],
                     "rejected": rejected, "written": True, "seconds": seconds, "on_the_fly": True,
                     "cmvn": {"sum": [] if s is None else s.tolist(), "sq": [] if sq is None else sq.tolist(),
                              "frames": n}}
            atomic_write_text(Path(index_path), json.dumps(index) + "\n")
            return index
        offsets = write_shard(shard_path, feats, cfg.dtype)
        index = {"entries": [{"id": i, "offset": o, "frames": n} for i, (o, n) in zip(kept, offsets)],
                 "rejected": rejected, "written": True, "seconds": seconds}
        atomic_write_text(Path(index_path), json.dumps(index) + "\n")
        return index
    finally:
        torch.set_num_threads(prev)


def featurize_split(manifest: Path, split: str, out: Path, cfg: FeaturizeOptions, bad: BadInputLog,
                    workers: int, *, untranscribed: bool = False, rank: int = 0,
                    world: int = 1) -> tuple[list[Utterance], list[Utterance], float]:
    """Featurize the manifest ``manifest`` into ``out/shards/<split>/`` (shards whose index exists are
    kept: a rerun resumes). Bad input goes to ``bad`` (which raises under ``fail``, after the finished
    shards are on disk). Returns ``(input rows, featurized rows, seconds of audio featurized now)``;
    the featurized rows' audio paths are relative to ``out``. In an ``untranscribed`` split no row
    carries text (a row with text is refused: the corpus stage strips it); elsewhere a row without text
    is bad input (``no_transcript``).

    In a distributed run (``world`` > 1, a process group initialised) rank ``r`` featurizes the shards
    ``i`` with ``i % world == r``; then every rank reads every shard's index from disk, so all return
    the same rows and apply the policy alike."""
    utts = read_manifest(manifest, check_unique=False)
    seen: set[str] = set()
    good: list[Utterance] = []
    for u in utts:
        path = str(u.resolve_audio(manifest.parent))
        if u.id in seen:
            bad.reject(u.id, path, "duplicate_id", f"id repeated in {manifest}")
            continue
        seen.add(u.id)
        if untranscribed:
            problem = ("has_transcript", f"row has 'text' in {split!r}, which the corpus stage declares "
                                         "untranscribed") if u.text is not None else None
        elif u.text is None:
            problem = ("no_transcript", f"row has no 'text', and the corpus stage does not declare {split!r} "
                                        "untranscribed")
        else:
            problem = text_problem(u.text)
        if problem:
            bad.reject(u.id, path, *problem)
            continue
        good.append(u)

    shard_dir = out / "shards" / split
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = [good[i : i + cfg.shard_size] for i in range(0, len(good), cfg.shard_size)]
    indexes: dict[int, dict] = {}
    jobs = []
    for si, chunk in enumerate(shards):
        npy, idx = shard_dir / f"feats-{si:05d}.npy", shard_dir / f"feats-{si:05d}.json"
        if idx.exists() and (npy.exists() or cfg.on_the_fly):
            index = json.loads(idx.read_text())
            if bool(index.get("on_the_fly")) == cfg.on_the_fly:
                indexes[si] = index
                continue
        aps = [str(u.resolve_audio(manifest.parent)) for u in chunk]
        jobs.append((si, (chunk, aps, cfg, str(npy), str(idx))))
    if len(shards) - len(jobs) and rank == 0:
        log.info("featurize %s: %d of %d shards already done", split, len(shards) - len(jobs), len(shards))
    others = [(si, a) for si, a in jobs if si % world != rank]
    jobs = [(si, a) for si, a in jobs if si % world == rank]

    bar = progress(total=sum(len(j[1][0]) for j in jobs), desc=f"featurize {split}", unit="utt", disable=rank != 0)
    try:
        todo = sum(u.duration for _, a in jobs for u in a[0])
        if workers > 1 and len(jobs) > 1 and todo >= POOL_MIN_SECONDS:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                     mp_context=mp.get_context("spawn")) as ex:
                futs = {si: ex.submit(_shard_job, a) for si, a in jobs}
                for si, a in jobs:
                    indexes[si] = futs[si].result()
                    bar.update(len(a[0]))
                    if not indexes[si]["written"]:
                        for f in futs.values():
                            f.cancel()
                        break
        else:
            for si, a in jobs:
                indexes[si] = _shard_job(a)
                bar.update(len(a[0]))
                if not indexes[si]["written"]:
                    break
    finally:
        bar.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank's shards (or its 'fail' index) are on disk
        for si, a in others:
            idx = Path(a[4])
            if idx.exists():
                indexes[si] = json.loads(idx.read_text())
        jobs += others
    # apply the policy in shard order (raises under 'fail': finished shards stay on disk)
    for si in sorted(indexes):
        for r in indexes[si]["rejected"]:
            bad.reject(r["id"], r["path"], r["reason"], r["detail"])

    ran = {si for si, _ in jobs}
    by_id = {u.id: u for u in good}
    rows: list[Utterance] = []
    seconds = 0.0
    for si in sorted(indexes):
        rel_shard = f"shards/{split}/feats-{si:05d}.npy"
        if not indexes[si].get("written", True):
            continue
        for e in indexes[si]["entries"]:
            u = by_id[e["id"]]
            if cfg.on_the_fly:  # no stored features: the frame count for batching, fbank per batch from the audio
                extra = {**{k: v for k, v in u.extra.items() if k != "feats"}, "fbank_frames": int(e["frames"])}
            else:
                extra = {**u.extra, "feats": FeatureRef(rel_shard, e["offset"], e["frames"]).to_json()}
            rows.append(Utterance(id=u.id, audio_filepath=relative_to_manifest(u.resolve_audio(manifest.parent), out),
                                  duration=u.duration, text=u.text, speaker=u.speaker, offset=u.offset, extra=extra))
        if si in ran:
            seconds += indexes[si].get("seconds", 0.0)
    return utts, rows, seconds


def on_the_fly_cmvn(shard_dir: Path):
    """CMVN statistics of an on-the-fly split, merged from the sums its shard indexes hold."""
    from speechkd.features.cmvn import stats_from_sums

    s = sq = None
    n = 0
    for p in sorted(shard_dir.glob("feats-*.json")):
        c = json.loads(p.read_text()).get("cmvn")
        if not c or not c["frames"]:
            continue
        a, b = np.asarray(c["sum"], np.float64), np.asarray(c["sq"], np.float64)
        s, sq, n = (a, b, c["frames"]) if s is None else (s + a, sq + b, n + c["frames"])
    if s is None:
        raise ValueError("no frames to compute CMVN statistics from")
    return stats_from_sums(s, sq, n)
