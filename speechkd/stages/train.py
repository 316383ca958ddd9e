"""Stage ``train``: train one LSTM-CTC model with CTC (teachers and the no-KD baseline).

Reads the featurize stage (features, ``cmvn.json``, ``features.json``) and the tokenizer stage;
writes ``model.safetensors`` (average of the last epochs) and ``best.safetensors``, each a model bundle
that carries its fbank options, CMVN and tokenizer (:mod:`speechkd.models.bundle`), ``metrics.csv``
and ``checkpoints/``. Training utterances too short
for CTC at the model's frame rate are left out and counted. Resumes from its last checkpoint
when rerun after a crash. Runs on every rank under ``torchrun``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from speechkd.config import check_name, field
from speechkd.data.dataset import FeatureDataset
from speechkd.eval.decode import evaluate
from speechkd.features.cmvn import CMVNStats
from speechkd.models.bundle import ModelBundle
from speechkd.models.lstm_ctc import build_model
from speechkd.features.fbank import read_fbank_options
from speechkd.text.tokenizer import load_tokenizer, tokenizer_fingerprint
from speechkd.train.config import TrainConfig
from speechkd.train.config import augment_inputs as fingerprint_inputs  # noqa: F401 (its noise recordings)
from speechkd.train.trainer import train

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


def dev_scorer(dev_ds: FeatureDataset, tok, max_frames: int, limit: int):
    """What the trainer calls after every epoch: greedy CER/WER of the model on the dev set."""
    def validate(model, device):
        return evaluate(model, dev_ds, tok, device, max_frames, limit)

    return validate


def prepare(cfg: Config, ctx):
    """The tokenizer, datasets and a fresh model bundle (CMVN loaded, the featurize stage's fbank options,
    this stage's provenance); shared with distillation."""
    feat_dir, tok_dir = ctx.stage_dir(cfg.featurize), ctx.stage_dir(cfg.tokenizer)
    tok = load_tokenizer(tok_dir)
    fbank = read_fbank_options(feat_dir)
    train_ds = FeatureDataset(feat_dir / f"{cfg.train_split}.jsonl", tok, limit=cfg.train_limit, stack=cfg.model.stack)
    if train_ds.too_short:
        log.warning("%s: %d training utterance(s) too short for CTC at stack %d left out (listed in outputs.json)",
                    cfg.train_split, len(train_ds.too_short), cfg.model.stack)
    dev_ds = FeatureDataset(feat_dir / f"{cfg.dev_split}.jsonl", tok)
    stats = CMVNStats.load(feat_dir / "cmvn.json")
    if len(stats.mean) != fbank.num_mel_bins:
        raise ValueError(f"{feat_dir / 'cmvn.json'}: {len(stats.mean)}-dim statistics for {fbank.num_mel_bins}-bin "
                         "features; rerun the featurize stage")
    mcfg = replace(cfg.model, vocab_size=tok.vocab_size, input_dim=fbank.num_mel_bins,
                   frame_shift_ms=fbank.frame_shift_ms, tokenizer=tokenizer_fingerprint(tok))
    train_ds.dim = dev_ds.dim = mcfg.input_dim
    model = build_model(mcfg)
    model.set_cmvn(stats.mean, stats.std)
    bundle = ModelBundle(model, tok, fbank, provenance=ctx.provenance())
    return bundle, train_ds, dev_ds


def left_out(train_ds: FeatureDataset) -> dict[str, Any]:
    return {"too_short_for_ctc": len(train_ds.too_short), "too_short_ids": [r["id"] for r in train_ds.too_short][:100]}


def run(cfg: Config, ctx) -> dict[str, Any]:
    bundle, train_ds, dev_ds = prepare(cfg, ctx)
    summary = train(cfg, bundle, train_ds, ctx.out_dir, seed=ctx.seed,
                    validate=dev_scorer(dev_ds, bundle.tokenizer, cfg.max_frames, cfg.dev_limit))
    summary["left_out"] = left_out(train_ds)
    return summary
