"""Stage ``featurize``: audio -> 80-dim log-mel fbank in a sharded feature store, plus global CMVN.

Reads the ``<split>.jsonl`` of every split the corpus stage declares (its ``corpus.json``); writes
``shards/<split>/feats-NNNNN.npy`` (with a ``.json`` index written after it), ``<split>.jsonl``
manifests whose rows carry a ``feats`` reference, ``cmvn.json`` (from the train split),
``features.json`` (the fbank options, which the training stages put into every model bundle),
``rejected/<split>.jsonl`` and ``summary.json`` (which declares the featurized splits and, under
``untranscribed``, those the corpus stage declares without transcripts; CMVN never comes from one). Shards are
the unit of resume: a rerun keeps every shard whose index exists. With ``on_the_fly: true`` no features are
stored: every utterance is still decoded and checked, CMVN is summed in the shard indexes, and the manifests'
rows carry ``fbank_frames`` (for batching) instead of ``feats``; the datasets compute fbank from the audio.

Under ``torchrun`` every rank featurizes its share of each split's shards (shard ``i`` on rank ``i % world``,
each rank with ``cores / processes per node`` worker processes); rank 0 then writes the manifests, CMVN and
summary. No rank waits while another featurizes alone.

The work is done by :mod:`speechkd.data.featurize`; this module is the stage's I/O. The "too short
for CTC" check is not made here: it depends on the tokenizer and the model's frame stacking, so the
training stages make it (:class:`speechkd.data.dataset.FeatureDataset`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speechkd.config import check_name, field
from speechkd.data.checks import BadInputLog
from speechkd.data.featurize import FeaturizeOptions, featurize_split, on_the_fly_cmvn
from speechkd.data.manifest import feature_frames, write_manifest
from speechkd.features.cmvn import compute_cmvn
from speechkd.utils import atomic_write_text, rank_world

log = logging.getLogger(__name__)

DISTRIBUTED = True  # every rank featurizes a share of the shards
ALONE = True  # its workers keep every core busy: `run --jobs` starts nothing beside it


@dataclass
class Config(FeaturizeOptions):
    corpus: str = field("corpus", help="upstream stage whose <split>.jsonl manifests are featurized")
    splits: list[str] = field(default_factory=list, help="splits to featurize (default: every split the corpus "
                                                         "stage declares)")
    cmvn_split: str = field("train", help="split the CMVN statistics come from")

    def __post_init__(self):
        super().__post_init__()
        for i, sp in enumerate(self.splits):
            check_name(sp, f"splits[{i}]", "split name")
        check_name(self.cmvn_split, "cmvn_split", "split name")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    return [("corpus", cfg.corpus, ("corpus",))]


def declared_splits(stage_dir: Path) -> list[str]:
    """The splits a corpus stage (``corpus.json``) or featurize stage (``summary.json``) declares."""
    for name in ("corpus.json", "summary.json"):
        p = stage_dir / name
        if p.exists():
            try:
                return list(json.loads(p.read_text())["splits"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{p}: cannot read the declared splits ({e})") from None
    raise FileNotFoundError(f"{stage_dir}: neither corpus.json nor summary.json declares its splits")


def untranscribed_splits(stage_dir: Path) -> list[str]:
    """The splits a corpus stage (``corpus.json``) or featurize stage (``summary.json``) declares untranscribed."""
    for name in ("corpus.json", "summary.json"):
        p = stage_dir / name
        if p.exists():
            try:
                return list(json.loads(p.read_text()).get("untranscribed", []))
            except (json.JSONDecodeError, AttributeError, TypeError) as e:
                raise ValueError(f"{p}: cannot read the untranscribed splits ({type(e).__name__})") from None
    return []


def run(cfg: Config, ctx) -> dict[str, Any]:
    src_dir = ctx.stage_dir(cfg.corpus)
    declared = declared_splits(src_dir)
    unknown = [s for s in cfg.splits if s not in declared]
    if unknown:
        raise ValueError(f"featurize.splits: {unknown} not among the corpus stage's splits {declared} "
                         f"({src_dir / 'corpus.json'})")
    splits = cfg.splits or declared
    if not splits:
        raise FileNotFoundError(f"{src_dir}: the corpus stage declares no splits to featurize")
    untranscribed = [s for s in untranscribed_splits(src_dir) if s in splits]
    if cfg.cmvn_split in untranscribed:
        raise ValueError(f"featurize.cmvn_split: {cfg.cmvn_split!r} is untranscribed; CMVN comes from the "
                         "transcribed training split, the audio every model is trained and tested on")
    out = ctx.out_dir
    rej_dir = out / "rejected"
    bad = BadInputLog(cfg.bad_input)
    rank, world = rank_world()
    # the node's cores are shared by the processes torchrun started on it
    workers = cfg.num_workers or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    summary: dict[str, Any] = {"splits": {}, "untranscribed": untranscribed}
    t_start = time.time()
    audio_seconds = 0.0

    for split in splits:
        manifest = src_dir / f"{split}.jsonl"
        bad.out_file = rej_dir / f"{split}.jsonl" if rank == 0 else None  # rank 0 lists the rejections
        if bad.out_file is not None and bad.out_file.exists():
            bad.out_file.unlink()  # rebuilt from the shard indexes, so a resumed run lists each once
        utts, rows, seconds = featurize_split(manifest, split, out, cfg, bad, workers,
                                              untranscribed=split in untranscribed, rank=rank, world=world)
        if rank != 0:
            continue
        audio_seconds += seconds
        write_manifest(rows, out / f"{split}.jsonl")
        summary["splits"][split] = {"input": len(utts), "kept": len(rows),
                                    "frames": sum(feature_frames(u) for u in rows),
                                    "hours": round(sum(u.duration for u in rows) / 3600, 4)}
        if not rows:
            log.warning("featurize %s: every utterance was rejected (see %s)", split, bad.out_file)

    if rank != 0:
        return {}
    if cfg.cmvn_split in splits:
        split_dir = out / "shards" / cfg.cmvn_split
        try:
            stats = (on_the_fly_cmvn(split_dir) if cfg.on_the_fly else
                     compute_cmvn(np.load(p, mmap_mode="r") for p in sorted(split_dir.glob("feats-*.npy"))))
        except ValueError as e:
            raise ValueError(f"{split_dir}: {e}") from None
        stats.save(out / "cmvn.json")
        summary["cmvn_frames"] = stats.count
    else:
        log.warning("no %r split: cmvn.json not written", cfg.cmvn_split)
    atomic_write_text(out / "features.json", json.dumps({"fbank": asdict(cfg.fbank), "dtype": cfg.dtype,
                                                         "dim": cfg.fbank.num_mel_bins, "on_the_fly": cfg.on_the_fly},
                                                        indent=1) + "\n")
    elapsed = time.time() - t_start
    summary["fbank"] = asdict(cfg.fbank)
    summary["rejected"] = bad.counts()
    summary["seconds"] = round(elapsed, 2)
    if audio_seconds:
        summary["x_real_time"] = round(audio_seconds / elapsed, 1)
    bad.out_file = None
    log.info("featurize: %s%s", bad.summary(), f" (listed in {rej_dir}/<split>.jsonl)" if bad.rejected else "")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary

