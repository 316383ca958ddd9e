"""Stage ``teacher_cache``: run the teacher(s) once over train and dev and store, per utterance,
top-k posteriors (float16, k = 8 by default) and the N-best of a prefix beam search.

Several teachers are averaged in the probability domain (multi-teacher KD). Shards are the unit
of resume: a rerun keeps every shard that loads and matches its index, and rebuilds truncated or
missing ones. Under torchrun each rank writes its own shards (shard i goes to rank i % world).
Records the cache size against dense float32 posteriors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import speechkd.kernels as K
from speechkd.config import field
from speechkd.data.manifest import read_manifest, write_manifest
from speechkd.distill.cache import CacheError, shard_ok, tokenizer_fingerprint, write_shard
from speechkd.text.tokenizer import load_tokenizer
from speechkd.train.checkpoint import load_model
from speechkd.train.data import BucketingSampler, FeatureDataset
from speechkd.train.trainer import pick_device
from speechkd.utils import atomic_write_text, progress

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
    device: str = field("auto", help="auto | cpu | cuda")


def teacher_log_probs(models, feats, lens) -> tuple[torch.Tensor, torch.Tensor]:
    """Average of the teachers' posteriors, as log-probs ``(B, T, V)``, and output lengths."""
    outs = [m(feats, lens) for m in models]
    if len(outs) == 1:
        return outs[0]
    lp = torch.stack([o[0] for o in outs]).logsumexp(0) - np.log(len(outs))
    return lp, outs[0][1]


def run(cfg: Config, ctx) -> dict[str, Any]:
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    device = pick_device(cfg.device)
    tdirs = [ctx.stage_dir(t) for t in cfg.teachers]
    models = [load_model(d / "model.safetensors", device=device).eval() for d in tdirs]
    stacks = {m.cfg.stack for m in models}
    vocabs = {m.cfg.vocab_size for m in models}
    if len(stacks) > 1 or len(vocabs) > 1:
        raise CacheError(f"teachers {cfg.teachers} differ in frame rate {stacks} or vocabulary {vocabs}")
    tok = load_tokenizer(tdirs[0])
    fdir = ctx.stage_dir(cfg.featurize)
    out = ctx.out_dir
    V = vocabs.pop()
    summary: dict[str, Any] = {"splits": {}}
    total_bytes = dense_bytes = 0
    for split in cfg.splits:
        manifest = fdir / f"{split}.jsonl"
        ds = FeatureDataset(manifest, tok)
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
            idx = chunks[si]
            entries: dict[int, dict] = {}
            sampler = BucketingSampler([ds.lengths[i] for i in idx], max(cfg.max_frames, max(ds.lengths)), seed=0,
                                       shuffle=False)
            for b in sampler.batches(0):
                batch = ds.batch([idx[j] for j in b]).to(device)
                with torch.no_grad():
                    lp, ol = teacher_log_probs(models, batch.feats, batch.feat_lens)
                lp, ol = lp.float().cpu(), ol.cpu()
                probs, ids, _ = K.topk(lp, ol, cfg.k)
                nb = K.prefix_beam_search(lp, ol, beam=cfg.beam, nbest=min(cfg.nbest, cfg.beam), blank=tok.blank_id)
                for j, i in enumerate(b):
                    n = int(ol[j])
                    entries[i] = {"id": batch.ids[j], "probs": probs[j, :n].numpy(), "ids": ids[j, :n].numpy(),
                                  "nbest": nb.hypotheses(j)}
                bar.update(len(b))
            write_shard(shard_dir / f"cache-{si:05d}.npz", [entries[i] for i in sorted(entries)], min_prob=cfg.min_prob)
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
            for u in read_manifest(manifest):
                si, e = index[u.id]
                frames += e["frames"]
                u.extra["cache"] = {"shard": f"shards/{split}/cache-{si:05d}.npz", "offset": e["offset"],
                                    "frames": e["frames"]}
                rows.append(u)
            write_manifest(rows, out / f"{split}.jsonl")
            dense_bytes += frames * V * 4
            summary["splits"][split] = {"utterances": len(rows), "frames": frames}
    if rank == 0:
        meta = {"vocab_size": V, "tokenizer": tokenizer_fingerprint(tok), "stack": models[0].cfg.stack,
                "k": cfg.k, "nbest": cfg.nbest, "teachers": cfg.teachers}
        atomic_write_text(out / "meta.json", json.dumps(meta, indent=1) + "\n")
        summary.update(cache_bytes=total_bytes, dense_float32_bytes=dense_bytes,
                       compression=round(dense_bytes / max(total_bytes, 1), 2))
        log.info("teacher cache: %.1f MB vs %.1f MB dense float32 posteriors (%.1fx smaller)", total_bytes / 1e6,
                 dense_bytes / 1e6, dense_bytes / max(total_bytes, 1))
    return summary
