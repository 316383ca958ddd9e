"""Stage ``distill``: train a (streaming) student from the teacher cache, never the teacher.

Loss, all terms optional and weighted in the recipe::

    L = alpha * tau^2 * KL(teacher || student)                        frame-level (top-k cache)
      + (1 - alpha) * [(1 - seq_weight) * CTC(reference) + seq_weight * L_seq]
      + hint_weight * hint                                           (online teacher only)

``L_seq`` is CTC on the teacher's 1-best (``seq: 1best``), on its N-best weighted by normalised
scores (``seq: nbest``), or cross-entropy to forward-backward occupancies constrained to the 1-best
(``seq: occupancy``). The teacher's posteriors are delayed by ``delay`` frames; ``delay: null``
estimates it from the data: the median lag of the ``delay_reference`` model's CTC spikes (the
no-KD streaming baseline) behind the teacher's, on the dev split. ``window > 0`` lets each student
frame match its best teacher frame within +-window. ``online: true`` runs the teacher (dense KD)
instead of reading the cache, for comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import speechkd.kernels as K
from speechkd.config import ConfigError, field
from speechkd.distill import losses as L
from speechkd.distill.cache import TeacherCache
from speechkd.stages.train import Config as TrainStageConfig
from speechkd.stages.train import prepare
from speechkd.train.checkpoint import load_model
from speechkd.train.data import FeatureDataset
from speechkd.train.trainer import ctc_loss, pick_device, train

log = logging.getLogger(__name__)

DISTRIBUTED = True


@dataclass
class KDConfig:
    alpha: float = field(0.5, help="weight of frame-level KD (the rest goes to CTC / sequence KD)")
    temperature: float = field(1.0, help="KD temperature tau (loss scaled by tau^2)")
    delay: int | None = field(None, help="teacher delay in frames; null = estimate from the data")
    extra_delay: int = field(0, help="look-ahead frames added to the delay: the student emits this much later "
                                     "than the estimated spike lag, trading latency for accuracy")
    delay_reference: str = field("baseline", help="stage whose streaming model gives the student-side spikes")
    window: int = field(0, help="match the best teacher frame within +-window (0 = off)")
    seq: str = field("none", help="sequence KD: none | 1best | nbest | occupancy")
    seq_weight: float = field(0.5, help="share of sequence KD in the non-frame part")
    nbest: int = field(4, help="hypotheses used by seq: nbest")
    online: bool = field(False, help="run the teacher online (dense KD) instead of reading the cache")
    teacher: str = field("teacher", help="teacher stage (online mode and hint loss)")
    hint_weight: float = field(0.0, help="weight of the hint loss on the last hidden layer (online only)")


@dataclass
class Config(TrainStageConfig):
    cache: str = field("teacher_cache", help="teacher_cache stage")
    kd: KDConfig = field(default_factory=KDConfig, help="distillation loss")


def estimate_delay(cache: TeacherCache, manifest, reference_model, tok, device, limit: int = 200) -> tuple[int, int]:
    """Median lag (frames) of ``reference_model``'s spikes after the cached teacher's, and the pair count."""
    ds = FeatureDataset(manifest, tok, limit=limit)
    deltas = []
    for i in range(len(ds)):
        uid, feats, _, _ = ds[i]
        with torch.no_grad():
            slp, ol = reference_model(torch.tensor(np.asarray(feats))[None].to(device),
                                      torch.tensor([feats.shape[0]], device=device))
        c = cache.get(uid)
        n = min(int(ol[0]), c.probs.shape[0])
        dense = K.densify(c.probs[None, :n].astype(np.float32), c.ids[None, :n].astype(np.int64), slp.shape[-1])
        _, d = K.estimate_delay(np.log(np.maximum(dense, 1e-8)), slp[:, :n].float().cpu().numpy(), blank=tok.blank_id)
        deltas.append(d)
    allv = np.concatenate(deltas) if deltas else np.zeros(0)
    return (int(np.round(np.median(allv))) if allv.size else 0), int(allv.size)


def make_loss_fn(kd: KDConfig, tok, delay: int, *, cache: TeacherCache | None = None, teacher=None, proj=None):
    """The student's loss ``loss_fn(model, batch, log_probs, out_lens)`` for :func:`speechkd.train.trainer.train`."""

    def loss_fn(m, batch, lp, ol):
        terms = {}
        frames = lp.shape[1]
        if kd.online:
            with torch.no_grad():
                th, tol = teacher.encode(batch.feats, batch.feat_lens)
                tlp = teacher.out(th[-1]).log_softmax(-1)
            if delay:
                tlp = K.shift_posteriors(tlp, delay, tol, blank=tok.blank_id)
            terms["frame"] = L.frame_kd_dense(lp, tlp[:, :frames], ol, kd.temperature)
            if kd.hint_weight:
                sh, _ = m.encode(batch.feats, batch.feat_lens)
                terms["hint"] = L.hint_loss(sh[-1], th[-1][:, :frames], proj, ol)
            nbest = None
        else:
            probs, ids, nbest = cache.batch(batch.ids, frames, lp.device)
            probs, ids = L.shift_topk(probs, ids, ol, delay, tok.blank_id)
            if kd.alpha > 0:
                terms["frame"] = (L.window_kd(lp, probs, ids, ol, kd.temperature, kd.window) if kd.window
                                  else L.frame_kd(lp, probs, ids, ol, kd.temperature))
        ctc = ctc_loss(lp, ol, batch, tok.blank_id)
        rest = ctc
        if kd.seq != "none" and nbest is not None:
            if kd.seq == "occupancy":
                gamma = L.occupancy_targets(probs, ids, ol, nbest, lp.shape[-1], tok.blank_id)
                seq = L.occupancy_kd(lp, gamma, ol)
            else:
                seq = L.nbest_ctc(lp, ol, nbest, 1 if kd.seq == "1best" else kd.nbest, tok.blank_id)
            rest = (1 - kd.seq_weight) * ctc + kd.seq_weight * seq
        loss = (1 - kd.alpha) * rest + kd.alpha * terms.get("frame", 0.0)
        if "hint" in terms:
            loss = loss + kd.hint_weight * terms["hint"]
        return loss

    return loss_fn


def run(cfg: Config, ctx) -> dict[str, Any]:
    kd = cfg.kd
    if kd.seq not in ("none", "1best", "nbest", "occupancy"):
        raise ConfigError(f"distill.kd.seq must be none, 1best, nbest or occupancy; got {kd.seq!r}")
    if kd.hint_weight and not kd.online:
        raise ConfigError("distill.kd.hint_weight needs kd.online: true (hidden states come from a live teacher)")
    tok, train_ds, dev_ds, model = prepare(cfg, ctx)
    if model.cfg.bidirectional:
        log.warning("distilling into a bidirectional student: it will not stream")
    device = pick_device(cfg.device)
    cache_dir = ctx.stage_dir(cfg.cache)
    cache = TeacherCache(cache_dir)
    feat_dir = ctx.stage_dir(cfg.featurize)
    cache.check(feat_dir / f"{cfg.train_split}.jsonl", tok, model.cfg.stack)  # before any training

    delay, pairs = kd.delay, 0
    if delay is None:
        ref = load_model(ctx.stage_dir(kd.delay_reference) / "model.safetensors", device=device).eval()
        delay, pairs = estimate_delay(cache, feat_dir / f"{cfg.dev_split}.jsonl", ref, tok, device)
        log.info("estimated teacher delay: %d frames (%d ms) from %d matched spikes", delay,
                 delay * 10 * model.cfg.stack, pairs)
    estimated = delay
    delay += kd.extra_delay
    if kd.extra_delay:
        log.info("teacher delay used: %d frames (%d ms), %d of them extra look-ahead", delay,
                 delay * 10 * model.cfg.stack, kd.extra_delay)

    teacher = None
    proj = None
    if kd.online:
        teacher = load_model(ctx.stage_dir(kd.teacher) / "model.safetensors", device=device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if kd.hint_weight:
            t_dim = (teacher.cfg.proj or teacher.cfg.hidden) * (2 if teacher.cfg.bidirectional else 1)
            s_dim = (model.cfg.proj or model.cfg.hidden) * (2 if model.cfg.bidirectional else 1)
            proj = torch.nn.Linear(s_dim, t_dim)
            model.add_module("hint_proj", proj)  # trained and checkpointed with the student

    loss_fn = make_loss_fn(kd, tok, delay, cache=cache, teacher=teacher, proj=proj)

    summary = train(cfg, model, train_ds, dev_ds, tok, ctx.out_dir, seed=ctx.seed, loss_fn=loss_fn)
    summary.update(delay_frames=delay, delay_estimated_frames=estimated if kd.delay is None else None,
                   delay_ms=delay * 10 * model.cfg.stack, delay_pairs=pairs,
                   kd={k: getattr(kd, k) for k in kd.__dataclass_fields__})
    return summary
