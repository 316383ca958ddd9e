"""Stage ``decode``: batched greedy CTC decoding and scoring of a trained model.

Writes, per split, icefall-style ``recogs-<split>.txt`` and ``errs-<split>.txt`` (aligned
references and hypotheses) and ``wer-summary-<split>.json`` (WER, CER, substitutions,
deletions, insertions), plus ``summary.json`` over all splits.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import torch

from speechkd.config import field
from speechkd.eval.scoring import write_reports
from speechkd.models.lstm_ctc import count_parameters
from speechkd.text.tokenizer import load_tokenizer
from speechkd.train.checkpoint import load_model
from speechkd.train.data import FeatureDataset
from speechkd.train.trainer import evaluate, pick_device
from speechkd.utils import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class Config:
    model: str = field("teacher", help="stage whose model is decoded")
    checkpoint: str = field("model.safetensors", help="weights file in that stage (model or best)")
    featurize: str = field("featurize", help="featurize stage holding the splits")
    splits: list[str] = field(default_factory=lambda: ["dev", "test", "test_unseen_voice"], help="splits to score")
    max_frames: int = field(40000, help="padded frames per decoding batch")
    device: str = field("auto", help="auto | cpu | cuda")


def run(cfg: Config, ctx) -> dict[str, Any]:
    mdir, fdir = ctx.stage_dir(cfg.model), ctx.stage_dir(cfg.featurize)
    device = pick_device(cfg.device)
    model = load_model(mdir / cfg.checkpoint, device=device)
    tok = load_tokenizer(mdir)
    out: dict[str, Any] = {"model": f"{cfg.model}/{cfg.checkpoint}", "parameters": count_parameters(model),
                           "bidirectional": model.cfg.bidirectional, "splits": {}}
    for split in cfg.splits:
        path = fdir / f"{split}.jsonl"
        if not path.exists():
            log.warning("decode: %s not found, skipping split %r", path, split)
            continue
        ds = FeatureDataset(path, tok)
        with torch.no_grad():
            ev = evaluate(model, ds, tok, device, cfg.max_frames)
        summ = write_reports(ctx.out_dir, split, ev["ids"], ev["refs"], ev["hyps"], {"model": out["model"]})
        out["splits"][split] = {k: summ[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions",
                                                     "ref_words", "utterances")}
        log.info("decode %s: WER %.2f%% CER %.2f%% (%d utterances)", split, summ["wer"], summ["cer"], summ["utterances"])
    atomic_write_text(ctx.out_dir / "summary.json", json.dumps(out, indent=1) + "\n")
    return out
