"""Stage ``qat``: quantization-aware distillation of a trained student.

Starts from the ``init`` stage's ``model.safetensors`` (a KD student, or any unidirectional model)
and fine-tunes it with fake-quantized int8 weights (:mod:`speechkd.quant.fake`: per channel,
straight-through gradient, the grid ONNX Runtime's dynamic quantization uses) under the same teacher
cache and KD loss: by default the init student's own loss and delay, read from its model bundle
(``kd_from_init: false`` takes this stage's ``kd`` block instead); untranscribed audio only where this
stage's ``data`` block names it (as the init student's did). Dev scores every epoch are
those of the fake-quantized model.

Writes what a distill stage writes; ``model.safetensors`` and ``best.safetensors`` hold the *baked*
weights (float values on the int8 grid, ``quantization`` in the bundle), so decode, export and
ONNX Runtime's quantizer see exactly what was fine-tuned. Checkpoints keep the float weights, and a
killed run resumes exactly.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

from speechkd.config import field, require
from speechkd.distill.compose import KDConfig
from speechkd.models.bundle import load_bundle, save_bundle
from speechkd.models.lstm_ctc import ModelConfig
from speechkd.stages import MODEL_STAGES
from speechkd.stages.distill import Config as DistillConfig
from speechkd.stages.distill import run as distill_run
from speechkd.stages.distill import upstream as distill_upstream
from speechkd.train.config import OptimConfig
from speechkd.train.config import augment_inputs as fingerprint_inputs  # noqa: F401 (its noise recordings)

log = logging.getLogger(__name__)

DISTRIBUTED = True
OUTPUT_FORMAT = 2  # 2: weights baked on the [-64, 64] int8 grid (1: [-127, 127])
QUANTIZATION = "int8 weights in [-64, 64], symmetric per output channel (quantization-aware, speechkd qat)"


@dataclass
class Config(DistillConfig):
    init: str = field("student_frame", help="train/distill stage whose model is fine-tuned")
    kd_from_init: bool = field(True, help="use the init student's KD loss and delay (from its model bundle); "
                                          "false: the kd block of this stage")
    model: ModelConfig = field(default_factory=ModelConfig, help="ignored: the architecture is the init model's")
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=0),
                               help="optimizer and schedule (a fine-tune: small lr, no warm-up)")
    epochs: int = field(2, help="epochs of fine-tuning")
    average_last: int = field(1, help="final model = average of the last k epoch weights (1 = last)")
    specaug: bool = field(False, help="SpecAugment on training batches")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        "fp32", help="fp32 by default: the fake-quantized forward then matches ONNX Runtime's int8 arithmetic, "
                     "not a bf16 rounding of it")

    def __post_init__(self):
        super().__post_init__()
        require(self.model == ModelConfig(), "model", "a qat stage takes the architecture of its init model; "
                "remove the model block")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    ups = [("init", cfg.init, MODEL_STAGES)]
    if cfg.kd_from_init:
        return ups + [("featurize", cfg.featurize, ("featurize",)), ("tokenizer", cfg.tokenizer, ("tokenizer",)),
                      ("cache", cfg.cache, ("teacher_cache",))]
    return ups + distill_upstream(cfg)


def init_kd(init) -> KDConfig:
    """The KD loss the init model (a :class:`~speechkd.models.bundle.ModelBundle`) was trained with, its
    delay fixed to the one it used (no new estimate, no extra look-ahead on top); a model trained
    without KD gives plain CTC."""
    kd = init.kd
    if not isinstance(kd, dict):
        return KDConfig(alpha=0.0, delay=0)
    if kd.get("online"):
        raise ValueError("the init student used an online teacher; set kd_from_init: false and give a cache-based "
                         "kd block")
    fields = {k: v for k, v in kd.items() if k in KDConfig.__dataclass_fields__}
    return KDConfig(**{**fields, "delay": int(init.delay_frames), "extra_delay": 0})


def run(cfg: Config, ctx) -> dict[str, Any]:
    from speechkd.quant.fake import bake

    ipath = ctx.stage_dir(cfg.init) / "model.safetensors"
    init = load_bundle(ipath)
    if init.cfg.bidirectional:
        raise ValueError(f"{ipath}: a bidirectional model cannot stream; quantize a unidirectional student")
    if cfg.kd_from_init:
        try:
            kd = init_kd(init)
        except ValueError as e:
            raise ValueError(f"{ipath}: {e}") from None
        if not cfg.data.untranscribed and kd.pseudo != "none":
            kd = replace(kd, pseudo="none")  # pseudo-labels only with the untranscribed audio this stage names
        cfg = replace(cfg, kd=kd)
        log.info("QAT of %s with its KD loss (alpha %g, seq %s) and delay %d frames", cfg.init, cfg.kd.alpha,
                 cfg.kd.seq, cfg.kd.delay)
    cfg = copy.copy(cfg)
    cfg.model = replace(init.cfg)  # the init's architecture (set after the checks: the recipe may not give one)
    summary = distill_run(cfg, ctx, init=ipath, fake_quant=True)
    for name in ("model.safetensors", "best.safetensors"):
        p = ctx.out_dir / name
        if p.exists():
            b = load_bundle(p)
            save_bundle(b.with_model(bake(b.model), quantization=QUANTIZATION), p)
    summary.update(init=cfg.init, quantization=QUANTIZATION)
    return summary
