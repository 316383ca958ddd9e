"""Stage ``teacher_cache``: run the teacher(s) once over train and dev (and any untranscribed split named in
``splits``: the teacher labels audio that has no transcript) and store, per utterance,
top-k posteriors (float16, k = 8 by default) and the N-best of a prefix beam search, or, when ``lm`` names
an lm stage, of the beam fused with its word LM (weights ``alpha``/``beta``, or the ones a decode stage
picked on dev when ``weights_from`` names it), scored by the fused score, with the 1-best's confidence
(its posterior among the N-best): the pseudo-labels of untranscribed audio.

Several teachers are averaged in the probability domain (multi-teacher KD). Shards are the unit
of resume: a rerun keeps every shard that loads and matches its index, and rebuilds truncated or
missing ones. Under torchrun each rank writes its own shards (shard i goes to rank i % world).
Records the cache size against dense float32 posteriors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch.distributed as dist

from speechkd.config import check_name, field, require
from speechkd.data.dataset import FeatureDataset
from speechkd.data.manifest import read_manifest, write_manifest
from speechkd.distill.cache import cache_entries, check_teachers, shard_ok, tokenizer_fingerprint, write_shard
from speechkd.lm.files import BEAM_PRUNE, TOKEN_MIN_LOGP, UNK_CHAR, UNK_OFFSET
from speechkd.models.bundle import load_bundle
from speechkd.models.io import check_vocabulary
from speechkd.stages import MODEL_STAGES
from speechkd.stages.featurize import untranscribed_splits
from speechkd.utils import atomic_write_text, pick_device, progress

log = logging.getLogger(__name__)

DISTRIBUTED = True


@dataclass
class Config:
    teachers: list[str] = field(default_factory=lambda: ["teacher"], help="train stages whose models are averaged")
    featurize: str = field("featurize", help="featurize stage")
    splits: list[str] = field(default_factory=lambda: ["train", "dev"], help="splits to cache")
    k: int = field(8, help="posteriors kept per frame")
    nbest: int = field(8, help="hypotheses kept per utterance")
    beam: int = field(8, help="prefix beam search width")
    min_prob: float = field(1e-4, help="top-k entries below this probability are not stored")
    shard_size: int = field(500, help="utterances per shard")
    max_frames: int = field(40000, help="padded input frames per teacher batch")
    device: Literal["auto", "cpu", "cuda"] = field("auto", help="where the teachers run")
    lm: str = field("", help="lm stage: the N-best comes from the beam fused with its word LM ('' = no LM)")
    alpha: float = field(0.5, help="with lm: LM weight")
    beta: float = field(1.0, help="with lm: word bonus")
    weights_from: str = field("", help="with lm: a decode stage (decoder lm) whose tuned alpha and beta are used")
    token_min_logp: float = field(TOKEN_MIN_LOGP, help="with lm: tokens below this log-posterior in a frame are not "
                                                        "extended")
    prune: float = field(BEAM_PRUNE, help="with lm: hypotheses this far below the best are dropped (-inf: never)")
    unk_offset: float = field(UNK_OFFSET, help="with lm: extra log10 cost of an out-of-vocabulary word")
    unk_char: float = field(UNK_CHAR, help="with lm: extra log10 cost per character of an out-of-vocabulary word")
    recombine: bool = field(False, help="with lm: keep only the best of hypotheses with the same LM state, partial "
                                        "word and last token (off: an N-best keeps the alternatives of older words)")

    def __post_init__(self):
        require(len(self.teachers) >= 1, "teachers", "name at least one teacher stage")
        require(len(self.splits) >= 1, "splits", "name at least one split")
        require(self.unk_char <= 0, "unk_char", f"must be <= 0 (a cost), got {self.unk_char}")
        for i, s in enumerate(self.splits):
            check_name(s, f"splits[{i}]", "split name")
        require(self.k >= 1, "k", f"must be >= 1, got {self.k}")
        require(1 <= self.nbest <= self.beam, "nbest", f"must be in [1, beam={self.beam}], got {self.nbest}")
        require(0.0 <= self.min_prob < 1.0, "min_prob", f"must be in [0, 1), got {self.min_prob}")
        require(self.shard_size >= 1, "shard_size", f"must be >= 1, got {self.shard_size}")
        require(self.max_frames >= 1, "max_frames", f"must be >= 1, got {self.max_frames}")
        require(bool(self.lm) or not self.weights_from, "weights_from", "needs lm (the LM the weights belong to)")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    up = [("featurize", cfg.featurize, ("featurize",))] + [
        (f"teachers[{i}]", t, MODEL_STAGES) for i, t in enumerate(cfg.teachers)]
    if cfg.lm:
        up.append(("lm", cfg.lm, ("lm",)))
    if cfg.weights_from:
        up.append(("weights_from", cfg.weights_from, ("decode",)))
    return up


MAX_BEAM = 1024


def check(cfg: Config, lookup) -> None:
    from speechkd.stages import check_splits, planned_vocab

    require(cfg.beam <= MAX_BEAM, "beam", f"must be <= {MAX_BEAM}, got {cfg.beam}")
    check_splits(cfg.splits, lookup(cfg.featurize), lookup)
    for t in cfg.teachers:
        v = planned_vocab(lookup(t), lookup)
        if v is not None and cfg.k > v:
            raise ValueError(f"k: {cfg.k} posteriors per frame, but teacher {t!r} has a vocabulary of {v}")


def run(cfg: Config, ctx) -> dict[str, Any]:
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    device = pick_device(cfg.device)
    tdirs = [ctx.stage_dir(t) for t in cfg.teachers]
    bundles = [load_bundle(d / "model.safetensors", device=device) for d in tdirs]
    models = [b.model for b in bundles]
    check_teachers(models, cfg.teachers)
    tok = bundles[0].tokenizer
    for d, m in zip(tdirs, models):
        check_vocabulary(m, tok, d / "model.safetensors")
    fdir = ctx.stage_dir(cfg.featurize)
    out = ctx.out_dir
    lm_decoder, lm_info = None, None
    if cfg.lm:
        from speechkd.lm.decoder import LMDecoder

        alpha, beta = cfg.alpha, cfg.beta
        if cfg.weights_from:
            d = json.loads((ctx.stage_dir(cfg.weights_from) / "summary.json").read_text()).get("lm")
            if not isinstance(d, dict) or d.get("stage") != cfg.lm:
                raise ValueError(f"weights_from: decode stage {cfg.weights_from!r} did not decode with lm stage "
                                 f"{cfg.lm!r}")
            alpha, beta = float(d["alpha"]), float(d["beta"])
        lm_decoder = LMDecoder.load(ctx.stage_dir(cfg.lm), tok.tokens(), alpha=alpha, beta=beta, beam=cfg.beam,
                                    blank=tok.blank_id, token_min_logp=cfg.token_min_logp, prune=cfg.prune,
                                    unk_offset=cfg.unk_offset, unk_char=cfg.unk_char, recombine=cfg.recombine)
        lm_info = {"stage": cfg.lm, "alpha": alpha, "beta": beta}
        log.info("teacher_cache: N-best from the beam fused with %s (alpha=%g, beta=%g)", cfg.lm, alpha, beta)
    V = models[0].cfg.vocab_size
    untranscribed = untranscribed_splits(fdir)
    summary: dict[str, Any] = {"splits": {}, "lm": lm_info, "untranscribed": [s for s in cfg.splits if s in untranscribed]}
    total_bytes = dense_bytes = 0
    for split in cfg.splits:
        manifest = fdir / f"{split}.jsonl"
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest}: split {split!r} was not featurized")
        ds = FeatureDataset(manifest, tok, untranscribed=split in untranscribed)
        shard_dir = out / "shards" / split
        shard_dir.mkdir(parents=True, exist_ok=True)
        chunks = [list(range(i, min(i + cfg.shard_size, len(ds)))) for i in range(0, len(ds), cfg.shard_size)]
        mine = [si for si in range(len(chunks)) if si % world == rank]
        todo = [si for si in mine if not shard_ok(shard_dir / f"cache-{si:05d}.npz")]
        if len(mine) - len(todo):
            log.info("teacher_cache %s: %d of %d shards already done", split, len(mine) - len(todo), len(mine))
        bar = progress(total=sum(len(chunks[si]) for si in todo), desc=f"cache {split}", unit="utt",
                       disable=rank != 0)
        for si in todo:
            entries = cache_entries(models, ds, chunks[si], k=cfg.k, beam=cfg.beam, nbest=cfg.nbest,
                                    blank=tok.blank_id, max_frames=cfg.max_frames, device=device,
                                    lm_decoder=lm_decoder)
            write_shard(shard_dir / f"cache-{si:05d}.npz", entries, min_prob=cfg.min_prob)
            bar.update(len(chunks[si]))
        bar.close()
        if world > 1:
            dist.barrier()
        if rank == 0:
            frames = 0
            rows = []
            index = {}
            for si in range(len(chunks)):
                sidx = json.loads((shard_dir / f"cache-{si:05d}.json").read_text())
                for u in sidx["utts"]:
                    index[u["id"]] = (si, u)
                total_bytes += (shard_dir / f"cache-{si:05d}.npz").stat().st_size
                total_bytes += (shard_dir / f"cache-{si:05d}.json").stat().st_size
            beyond = 0.0
            conf = []
            for u in read_manifest(manifest):
                si, e = index[u.id]
                frames += e["frames"]
                beyond += float(e.get("beyond_k", 0.0))
                conf.append(float(e.get("confidence", 0.0)))
                u.extra["cache"] = {"shard": f"shards/{split}/cache-{si:05d}.npz", "offset": e["offset"],
                                    "frames": e["frames"], "nbest_offset": e["nbest_offset"], "nbest": e["nbest"],
                                    "confidence": e.get("confidence", 0.0)}
                rows.append(u)
            write_manifest(rows, out / f"{split}.jsonl")
            dense_bytes += frames * V * 4
            # the teacher's mass outside the stored top k, per frame on average (what k leaves out)
            summary["splits"][split] = {"utterances": len(rows), "frames": frames,
                                        "mass_beyond_k_per_frame": round(beyond / max(frames, 1), 5),
                                        "confidence_mean": round(sum(conf) / max(len(conf), 1), 4),
                                        "confidence_quartiles": [round(float(q), 4) for q in
                                                                 np.percentile(conf, [25, 50, 75])] if conf else []}
    if rank == 0:
        meta = {"vocab_size": V, "tokenizer": tokenizer_fingerprint(tok), "stack": models[0].cfg.stack,
                "k": cfg.k, "nbest": cfg.nbest, "teachers": cfg.teachers, "splits": cfg.splits, "lm": lm_info}
        atomic_write_text(out / "meta.json", json.dumps(meta, indent=1) + "\n")
        summary.update(cache_bytes=total_bytes, dense_float32_bytes=dense_bytes,
                       compression=round(dense_bytes / max(total_bytes, 1), 2))
        log.info("teacher cache: %.1f MB vs %.1f MB dense float32 posteriors (%.1fx smaller)", total_bytes / 1e6,
                 dense_bytes / 1e6, dense_bytes / max(total_bytes, 1))
    return summary
