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
    "lm": "speechkd.stages.lm",
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


# -- what a stage will produce, known from the recipe alone (checked before anything runs) ---------

def planned_splits(stage, lookup) -> list[str] | None:
    """The splits a corpus or featurize stage will declare, or ``None`` when unknown until it runs.
    ``stage`` has ``type`` and ``cfg``; ``lookup(name)`` gives an earlier stage of the recipe."""
    if stage.type == "corpus":
        if stage.cfg.kind == "synth":
            from speechkd.data.synth.build import SPLITS, UNTRANSCRIBED

            return list(SPLITS) + [UNTRANSCRIBED]
        return list(stage.cfg.splits)
    if stage.type == "featurize":
        return list(stage.cfg.splits) or planned_splits(lookup(stage.cfg.corpus), lookup)
    return None


def planned_untranscribed(stage, lookup) -> list[str] | None:
    """The untranscribed splits a corpus or featurize stage will declare (``None``: unknown until it runs)."""
    if stage.type == "corpus":
        if stage.cfg.kind == "synth":
            from speechkd.data.synth.build import UNTRANSCRIBED

            return [UNTRANSCRIBED]
        return stage.cfg.untranscribed_splits()
    if stage.type == "featurize":
        return planned_untranscribed(lookup(stage.cfg.corpus), lookup)
    return None


def planned_bidirectional(stage, lookup) -> bool | None:
    """Whether a model stage's model is bidirectional (a qat stage takes its init model's)."""
    if stage.type == "qat":
        return planned_bidirectional(lookup(stage.cfg.init), lookup)
    if stage.type in ("train", "distill"):
        return bool(stage.cfg.model.bidirectional)
    return None


def planned_vocab(stage, lookup) -> int | None:
    """The vocabulary size (blank included) of a model stage's tokenizer, or ``None`` when unknown."""
    if stage.type == "qat":
        return planned_vocab(lookup(stage.cfg.init), lookup)
    if stage.type in ("train", "distill"):
        tok = lookup(stage.cfg.tokenizer)
        if tok.cfg.kind == "char":
            from speechkd.text.tokenizer import CharTokenizer

            return CharTokenizer().vocab_size
        return int(tok.cfg.vocab_size)
    return None


def check_splits(names: list[str], featurize_stage, lookup, key: str = "splits") -> None:
    """Each of ``names`` must be a split the featurize stage will write (ValueError naming the key)."""
    have = planned_splits(featurize_stage, lookup)
    if have is None:
        return
    for i, s in enumerate(names):
        if s and s not in have:
            raise ValueError(f"{key}[{i}]: {s!r} is not a split of stage {featurize_stage.name!r} "
                             f"(it writes {', '.join(have)})")
