"""Stage ``distill``: train a (streaming) student from the teacher cache.

The loss is :class:`speechkd.distill.compose.KDObjective` (frame-level KD from the top-k cache
with a teacher delay, optional window matching, sequence-level KD on the cached N-best, or an
online teacher with an optional hint loss). The students read the cache, never the teacher,
except: ``delay: null`` estimates the delay by running the ``delay_reference`` model (the no-KD
streaming baseline) on the dev split against the cached teacher posteriors; ``online: true``
runs the teacher itself, for comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechkd.config import field
from speechkd.data.dataset import FeatureDataset
from speechkd.distill.cache import TeacherCache
from speechkd.distill.compose import KDConfig, KDObjective
from speechkd.distill.timing import estimate_delay
from speechkd.models.bundle import load_bundle
from speechkd.models.io import check_vocabulary
from speechkd.models.lstm_ctc import ModelConfig
from speechkd.stages import MODEL_STAGES
from speechkd.stages.train import Config as TrainStageConfig
from speechkd.stages.train import dev_scorer, left_out, prepare
from speechkd.train.trainer import train
from speechkd.utils import pick_device

log = logging.getLogger(__name__)

DISTRIBUTED = True


@dataclass
class Config(TrainStageConfig):
    model: ModelConfig = field(default_factory=lambda: ModelConfig(bidirectional=False),
                               help="the student (unidirectional by default: it streams)")
    cache: str = field("teacher_cache", help="teacher_cache stage")
    kd: KDConfig = field(default_factory=KDConfig, help="distillation loss")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    ups = [("featurize", cfg.featurize, ("featurize",)), ("tokenizer", cfg.tokenizer, ("tokenizer",))]
    if not cfg.kd.online:
        ups.append(("cache", cfg.cache, ("teacher_cache",)))
    if cfg.kd.delay is None:
        ups.append(("kd.delay_reference", cfg.kd.delay_reference, MODEL_STAGES))
    if cfg.kd.online:
        ups.append(("kd.teacher", cfg.kd.teacher, MODEL_STAGES))
    return ups


def stage_model(ctx, stage: str, device="cpu", file: str = "model.safetensors"):
    """The model bundle a train/distill/qat stage wrote."""
    return load_bundle(ctx.stage_dir(stage) / file, device=device)


def run(cfg: Config, ctx, *, init: Path | None = None, fake_quant: bool = False) -> dict[str, Any]:
    """Train the student; ``init`` (a model bundle of the same architecture) gives its starting weights,
    ``fake_quant`` trains it with fake-quantized int8 weights (the ``qat`` stage; applied from outside
    the model by :func:`speechkd.quant.fake.fake_quantize`)."""
    kd = cfg.kd
    bundle, train_ds, dev_ds = prepare(cfg, ctx)
    model, tok = bundle.model, bundle.tokenizer
    if init is not None:
        start = load_bundle(init)
        check_vocabulary(start.model, tok, init)
        model.load_state_dict(start.model.state_dict())
    if fake_quant:
        from speechkd.quant.fake import fake_quantize

        fake_quantize(model)
    if model.cfg.bidirectional:
        log.warning("distilling into a bidirectional student: it will not stream")
    device = pick_device(cfg.device)
    feat_dir = ctx.stage_dir(cfg.featurize)
    frame_ms = model.cfg.frame_ms

    cache = teacher = None
    if not kd.online:
        cache = TeacherCache(ctx.stage_dir(cfg.cache))
        cache.check(feat_dir / f"{cfg.train_split}.jsonl", tok, model.cfg.stack)  # before any training
    else:
        teacher = stage_model(ctx, kd.teacher, device).model
        check_vocabulary(teacher, tok, ctx.stage_dir(kd.teacher) / "model.safetensors")
        for p in teacher.parameters():
            p.requires_grad_(False)

    delay, pairs = kd.delay, 0
    if delay is None:
        ref = stage_model(ctx, kd.delay_reference, device).model
        check_vocabulary(ref, tok, ctx.stage_dir(kd.delay_reference) / "model.safetensors")
        delay, pairs = estimate_delay(cache, FeatureDataset(feat_dir / f"{cfg.dev_split}.jsonl", tok), ref,
                                      blank=tok.blank_id)
        log.info("estimated teacher delay: %d frames (%g ms) from %d matched spikes", delay, delay * frame_ms, pairs)
    estimated = delay
    delay += kd.extra_delay
    if kd.extra_delay:
        log.info("teacher delay used: %d frames (%g ms), %d of them extra look-ahead", delay, delay * frame_ms,
                 kd.extra_delay)
    kd_used = {k: getattr(kd, k) for k in kd.__dataclass_fields__}
    # the bundle records the delay the student emits with (export and the runtime flush it) and its KD loss
    bundle = bundle.with_model(model, delay_frames=delay, kd={**kd_used, "delay": delay, "extra_delay": 0})

    objective = KDObjective(kd, tok.blank_id, delay, cache=cache, teacher=teacher, student_cfg=model.cfg)
    summary = train(cfg, bundle, train_ds, ctx.out_dir, seed=ctx.seed, objective=objective,
                    validate=dev_scorer(dev_ds, tok, cfg.max_frames, cfg.dev_limit))
    summary.update(delay_frames=delay, delay_estimated_frames=estimated if kd.delay is None else None,
                   delay_ms=delay * frame_ms, delay_pairs=pairs, left_out=left_out(train_ds), kd=kd_used)
    return summary
