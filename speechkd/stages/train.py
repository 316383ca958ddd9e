"""Stage ``train``: train one LSTM-CTC model with CTC (teachers and the no-KD baseline).

Reads the featurize stage (features, ``cmvn.json``, ``features.json``) and the tokenizer stage;
writes ``model.safetensors`` (average of the last epochs), ``best.safetensors``, ``metrics.csv``,
``checkpoints/`` and a copy of the tokenizer next to the model. Training utterances too short
for CTC at the model's frame rate are left out and counted. Resumes from its last checkpoint
when rerun after a crash. Runs on every rank under ``torchrun``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, replace
from typing import Any

from speechkd.config import check_name, field
from speechkd.data.dataset import FeatureDataset
from speechkd.features.cmvn import CMVNStats
from speechkd.models.lstm_ctc import build_model
from speechkd.text.tokenizer import load_tokenizer, tokenizer_fingerprint
from speechkd.train.trainer import TrainConfig, train

log = logging.getLogger(__name__)

DISTRIBUTED = True


@dataclass
class Config(TrainConfig):
    featurize: str = field("featurize", help="upstream featurize stage")
    tokenizer: str = field("tokenizer", help="upstream tokenizer stage")
    train_split: str = field("train", help="training split")
    dev_split: str = field("dev", help="split scored every epoch")
    train_limit: int = field(0, help="use only the first N training utterances (0 = all)")

    def __post_init__(self):
        super().__post_init__()
        check_name(self.train_split, "train_split", "split name")
        check_name(self.dev_split, "dev_split", "split name")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    return [("featurize", cfg.featurize, ("featurize",)), ("tokenizer", cfg.tokenizer, ("tokenizer",))]


def copy_tokenizer(src, dst) -> None:
    for name in ("tokenizer.json", "spm.model"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def feature_shift_ms(feat_dir) -> float:
    """The fbank hop the featurize stage used (its ``features.json``): the input frame duration."""
    try:
        return float(json.loads((feat_dir / "features.json").read_text())["fbank"]["frame_shift_ms"])
    except (OSError, KeyError, ValueError, TypeError):
        return 10.0


def prepare(cfg: Config, ctx):
    """Tokenizer, datasets and a freshly built model with CMVN loaded (shared with distillation)."""
    feat_dir, tok_dir = ctx.stage_dir(cfg.featurize), ctx.stage_dir(cfg.tokenizer)
    tok = load_tokenizer(tok_dir)
    copy_tokenizer(tok_dir, ctx.out_dir)
    if (feat_dir / "features.json").exists():  # the fbank options travel with the model (export reads them)
        shutil.copy2(feat_dir / "features.json", ctx.out_dir / "features.json")
    train_ds = FeatureDataset(feat_dir / f"{cfg.train_split}.jsonl", tok, limit=cfg.train_limit, stack=cfg.model.stack)
    if train_ds.too_short:
        log.warning("%s: %d training utterance(s) too short for CTC at stack %d left out (listed in outputs.json)",
                    cfg.train_split, len(train_ds.too_short), cfg.model.stack)
    dev_ds = FeatureDataset(feat_dir / f"{cfg.dev_split}.jsonl", tok)
    stats = CMVNStats.load(feat_dir / "cmvn.json")
    mcfg = replace(cfg.model, vocab_size=tok.vocab_size, input_dim=len(stats.mean),
                   frame_shift_ms=feature_shift_ms(feat_dir), tokenizer=tokenizer_fingerprint(tok))
    train_ds.dim = dev_ds.dim = mcfg.input_dim
    model = build_model(mcfg)
    model.set_cmvn(stats.mean, stats.std)
    return tok, train_ds, dev_ds, model


def left_out(train_ds: FeatureDataset) -> dict[str, Any]:
    return {"too_short_for_ctc": len(train_ds.too_short), "too_short_ids": [r["id"] for r in train_ds.too_short][:100]}


def run(cfg: Config, ctx) -> dict[str, Any]:
    tok, train_ds, dev_ds, model = prepare(cfg, ctx)
    summary = train(cfg, model, train_ds, dev_ds, tok, ctx.out_dir, seed=ctx.seed)
    summary["left_out"] = left_out(train_ds)
    return summary
