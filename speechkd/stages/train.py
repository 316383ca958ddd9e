"""Stage ``train``: train one LSTM-CTC model with CTC (teachers and the no-KD baseline).

Reads the featurize stage (features, ``cmvn.json``) and the tokenizer stage; writes
``model.safetensors`` (average of the last epochs), ``best.safetensors``, ``metrics.csv``,
``checkpoints/`` and a copy of the tokenizer next to the model. Resumes from its last
checkpoint when rerun after a crash. Runs on every rank under ``torchrun``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from typing import Any

from speechkd.config import field
from speechkd.features.cmvn import CMVNStats
from speechkd.models.lstm_ctc import build_model
from speechkd.text.tokenizer import load_tokenizer
from speechkd.train.data import FeatureDataset
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


def copy_tokenizer(src, dst) -> None:
    for name in ("tokenizer.json", "spm.model"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def prepare(cfg: Config, ctx):
    """Tokenizer, datasets and a freshly built model with CMVN loaded (shared with distillation)."""
    feat_dir, tok_dir = ctx.stage_dir(cfg.featurize), ctx.stage_dir(cfg.tokenizer)
    tok = load_tokenizer(tok_dir)
    copy_tokenizer(tok_dir, ctx.out_dir)
    train_ds = FeatureDataset(feat_dir / f"{cfg.train_split}.jsonl", tok, limit=cfg.train_limit)
    dev_ds = FeatureDataset(feat_dir / f"{cfg.dev_split}.jsonl", tok)
    stats = CMVNStats.load(feat_dir / "cmvn.json")
    mcfg = replace(cfg.model, vocab_size=tok.vocab_size, input_dim=len(stats.mean))
    model = build_model(mcfg)
    model.set_cmvn(stats.mean, stats.std)
    return tok, train_ds, dev_ds, model


def run(cfg: Config, ctx) -> dict[str, Any]:
    tok, train_ds, dev_ds, model = prepare(cfg, ctx)
    return train(cfg, model, train_ds, dev_ds, tok, ctx.out_dir, seed=ctx.seed)
