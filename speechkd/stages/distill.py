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

from speechkd.config import check_name, field, require
from speechkd.data.dataset import FeatureDataset, MixedDataset
from speechkd.distill.cache import TeacherCache
from speechkd.distill.compose import KDConfig, KDObjective
from speechkd.distill.timing import estimate_delay
from speechkd.models.bundle import load_bundle
from speechkd.models.io import check_vocabulary
from speechkd.models.lstm_ctc import ModelConfig
from speechkd.stages import MODEL_STAGES
from speechkd.stages.train import Config as TrainStageConfig
from speechkd.stages.train import dev_scorer, left_out, prepare
from speechkd.train.config import augment_inputs as fingerprint_inputs  # noqa: F401 (its noise recordings)
from speechkd.train.trainer import train
from speechkd.utils import pick_device

log = logging.getLogger(__name__)

DISTRIBUTED = True


@dataclass
class DataConfig:
    untranscribed: list[str] = field(default_factory=list, help="untranscribed splits the student also learns "
                                                                "from (by KD; they must be in the teacher cache)")
    ratio: float = field(0.5, help="share of the training steps on untranscribed batches")

    def __post_init__(self):
        require(0.0 <= self.ratio < 1.0, "ratio", f"must be in [0, 1), got {self.ratio}")
        for i, s in enumerate(self.untranscribed):
            check_name(s, f"untranscribed[{i}]", "split name")


@dataclass
class Config(TrainStageConfig):
    model: ModelConfig = field(default_factory=lambda: ModelConfig(bidirectional=False),
                               help="the student (unidirectional by default: it streams)")
    cache: str = field("teacher_cache", help="teacher_cache stage")
    kd: KDConfig = field(default_factory=KDConfig, help="distillation loss")
    data: DataConfig = field(default_factory=DataConfig, help="untranscribed audio (train_split is the "
                                                              "transcribed data)")
    max_steps_from: str = field("", help="a train or distill stage whose step count is this stage's max_steps "
                                         "(equal compute; '' = max_steps)")

    def __post_init__(self):
        super().__post_init__()
        d, kd = self.data, self.kd
        require(not d.untranscribed or d.ratio > 0, "data.ratio", "must be > 0 when data.untranscribed is given")
        require(not d.untranscribed or kd.alpha > 0 or (kd.pseudo != "none" and kd.pseudo_weight > 0),
                "data.untranscribed", "with kd.alpha 0 and no kd.pseudo there is nothing to learn from "
                                      "untranscribed audio; set kd.alpha > 0 or kd.pseudo")
        require(self.train_split not in d.untranscribed, "data.untranscribed",
                f"lists the transcribed train_split {self.train_split!r}")
        require(not self.augment.changes_frames or kd.online, "augment.speed",
                "speed perturbation changes the frames the teacher cache's posteriors align with; use it with "
                "kd.online (the teacher runs on the perturbed batch) or leave it to the teacher and baseline")
        require(not (kd.pseudo != "none" and not d.untranscribed), "kd.pseudo",
                "pseudo-labels are for untranscribed audio: name its splits in data.untranscribed")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    ups = [("featurize", cfg.featurize, ("featurize",)), ("tokenizer", cfg.tokenizer, ("tokenizer",))]
    if not cfg.kd.online:
        ups.append(("cache", cfg.cache, ("teacher_cache",)))
    if cfg.kd.delay is None:
        ups.append(("kd.delay_reference", cfg.kd.delay_reference, MODEL_STAGES))
    if cfg.kd.online:
        ups.append(("kd.teacher", cfg.kd.teacher, MODEL_STAGES))
    if cfg.max_steps_from:
        ups.append(("max_steps_from", cfg.max_steps_from, MODEL_STAGES))
    return ups


def check(cfg: Config, lookup) -> None:
    """Untranscribed splits must be ones the featurize stage declares untranscribed (and, read from the
    cache, ones the cache stage holds); the transcribed split must not be one."""
    from speechkd.stages import check_splits, planned_untranscribed

    feat = lookup(cfg.featurize)
    check_splits(cfg.data.untranscribed, feat, lookup, "data.untranscribed")
    unt = planned_untranscribed(feat, lookup)
    if unt is not None:
        for i, s in enumerate(cfg.data.untranscribed):
            if s not in unt:
                raise ValueError(f"data.untranscribed[{i}]: split {s!r} is transcribed (untranscribed splits: "
                                 f"{', '.join(unt) or 'none'}); train on it as train_split")
        if cfg.train_split in unt:
            raise ValueError(f"train_split: {cfg.train_split!r} is untranscribed; CTC needs transcripts "
                             "(name it in data.untranscribed)")
    if cfg.data.untranscribed and not cfg.kd.online:
        cache = lookup(cfg.cache)
        for i, s in enumerate(cfg.data.untranscribed):
            if s not in cache.cfg.splits:
                raise ValueError(f"data.untranscribed[{i}]: split {s!r} is not in teacher_cache stage "
                                 f"{cfg.cache!r} (its splits: {', '.join(cache.cfg.splits)}); add it there")


def stage_model(ctx, stage: str, device="cpu", file: str = "model.safetensors"):
    """The model bundle a train/distill/qat stage wrote."""
    return load_bundle(ctx.stage_dir(stage) / file, device=device)


def run(cfg: Config, ctx, *, init: Path | None = None, fake_quant: bool = False) -> dict[str, Any]:
    """Train the student; ``init`` (a model bundle of the same architecture) gives its starting weights,
    ``fake_quant`` trains it with fake-quantized int8 weights (the ``qat`` stage; applied from outside
    the model by :func:`speechkd.quant.fake.fake_quantize`)."""
    kd = cfg.kd
    if cfg.max_steps_from:
        import json
        from dataclasses import replace

        p = ctx.stage_dir(cfg.max_steps_from) / "outputs.json"
        try:
            steps = int(json.loads(p.read_text())["steps"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{p}: cannot read the step count of stage {cfg.max_steps_from!r} "
                             f"({type(e).__name__}); rerun it") from None
        cfg = replace(cfg, max_steps=steps)
        log.info("max_steps %d, as stage %s (equal compute)", steps, cfg.max_steps_from)
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
    unt_sets = [FeatureDataset(feat_dir / f"{s}.jsonl", tok, dim=model.cfg.input_dim, untranscribed=True)
                for s in cfg.data.untranscribed]
    if not kd.online:
        cache = TeacherCache(ctx.stage_dir(cfg.cache))
        cache.check(feat_dir / f"{cfg.train_split}.jsonl", tok, model.cfg.stack)  # before any training
        for s in cfg.data.untranscribed:
            cache.check(feat_dir / f"{s}.jsonl", tok, model.cfg.stack)
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
    data = train_ds
    untranscribed: dict[str, Any] = {}
    if unt_sets:
        data = MixedDataset(train_ds, unt_sets, cfg.data.ratio)
        untranscribed = {"splits": cfg.data.untranscribed, "ratio": cfg.data.ratio,
                         "utterances": sum(len(d) for d in unt_sets),
                         "hours": round(sum(sum(d.durations) for d in unt_sets) / 3600, 3)}
        if kd.pseudo != "none" and cache is not None:
            conf = [cache.confidence(u) for d in unt_sets for u in d.ids]
            untranscribed["pseudo_label_share"] = round(sum(c >= kd.pseudo_threshold for c in conf) / len(conf), 4)
            log.info("pseudo-labels: %.1f%% of %d untranscribed utterances at confidence >= %g",
                     100 * untranscribed["pseudo_label_share"], len(conf), kd.pseudo_threshold)
    summary = train(cfg, bundle, data, ctx.out_dir, seed=ctx.seed, objective=objective,
                    validate=dev_scorer(dev_ds, tok, cfg.max_frames, cfg.dev_limit))
    if untranscribed:
        summary["untranscribed"] = untranscribed
    if cfg.max_steps_from:
        summary["max_steps_from"] = {"stage": cfg.max_steps_from, "steps": cfg.max_steps}
    summary.update(delay_frames=delay, delay_estimated_frames=estimated if kd.delay is None else None,
                   delay_ms=delay * frame_ms, delay_pairs=pairs, left_out=left_out(train_ds), kd=kd_used)
    return summary
