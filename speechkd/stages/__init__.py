"""Pipeline stages: one module per stage, each with a ``Config`` dataclass and ``run(cfg, ctx)``."""

from __future__ import annotations

import importlib
from types import ModuleType

STAGE_TYPES = {
    "corpus": "speechkd.stages.corpus",
    "featurize": "speechkd.stages.featurize",
    "tokenizer": "speechkd.stages.tokenizer",
    "train": "speechkd.stages.train",
    "decode": "speechkd.stages.decode",
    "teacher_cache": "speechkd.stages.teacher_cache",
    "distill": "speechkd.stages.distill",
    "qat": "speechkd.stages.qat",
    "export": "speechkd.stages.export",
    "latency": "speechkd.stages.latency",
    "report": "speechkd.stages.report",
}


# stage types that leave a model.safetensors (what decode, export, caches and students may name)
MODEL_STAGES = ("train", "distill", "qat")


def get_stage(stype: str) -> ModuleType:
    return importlib.import_module(STAGE_TYPES[stype])
