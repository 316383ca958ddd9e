"""Stage ``decode``: batched greedy CTC decoding and scoring of a trained model.

Writes, per split, icefall-style ``recogs-<split>.txt`` and ``errs-<split>.txt`` (aligned
references and hypotheses) and ``wer-summary-<split>.json`` (WER, CER, substitutions,
deletions, insertions), plus ``summary.json`` over all splits.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from speechkd.config import check_name, field, require
from speechkd.data.dataset import FeatureDataset
from speechkd.eval.decode import evaluate
from speechkd.eval.scoring import write_reports
from speechkd.models.bundle import load_bundle
from speechkd.models.lstm_ctc import count_parameters
from speechkd.stages import MODEL_STAGES
from speechkd.stages.featurize import declared_splits, fbank_options
from speechkd.utils import atomic_write_text, pick_device

log = logging.getLogger(__name__)


@dataclass
class Config:
    model: str = field("teacher", help="stage whose model is decoded")
    checkpoint: Literal["model.safetensors", "best.safetensors"] = field(
        "model.safetensors", help="weights file in that stage (the averaged model or the best epoch)")
    featurize: str = field("featurize", help="featurize stage holding the splits")
    splits: list[str] = field(default_factory=list, help="splits to score (default: every split the featurize "
                                                         "stage writes except the training split)")
    train_split: str = field("train", help="the split left out of the default splits")
    max_frames: int = field(40000, help="padded frames per decoding batch")
    device: Literal["auto", "cpu", "cuda"] = field("auto", help="where to decode")

    def __post_init__(self):
        check_name(self.train_split, "train_split", "split name")
        for i, s in enumerate(self.splits):
            check_name(s, f"splits[{i}]", "split name")
        require(self.max_frames >= 1, "max_frames", f"must be >= 1, got {self.max_frames}")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    return [("model", cfg.model, MODEL_STAGES), ("featurize", cfg.featurize, ("featurize",))]


def check(cfg: Config, lookup) -> None:
    from speechkd.stages import check_splits

    check_splits(cfg.splits, lookup(cfg.featurize), lookup)


def run(cfg: Config, ctx) -> dict[str, Any]:
    mdir, fdir = ctx.stage_dir(cfg.model), ctx.stage_dir(cfg.featurize)
    device = pick_device(cfg.device)
    bundle = load_bundle(mdir / cfg.checkpoint, device=device)
    model, tok = bundle.model, bundle.tokenizer
    if fbank_options(fdir) != bundle.fbank:
        raise ValueError(f"{mdir / cfg.checkpoint}: the model was trained on other fbank options than "
                         f"{fdir / 'features.json'} describes; decode it on features made with its own options")
    out: dict[str, Any] = {"model": f"{cfg.model}/{cfg.checkpoint}", "parameters": count_parameters(model),
                           "bidirectional": model.cfg.bidirectional, "splits": {}}
    have = declared_splits(fdir)
    splits = cfg.splits or [s for s in have if s != cfg.train_split]
    for split in splits:
        path = fdir / f"{split}.jsonl"
        if split not in have or not path.exists():  # checked with the recipe; a featurize rerun may differ
            raise FileNotFoundError(f"decode.splits: {fdir} has no split {split!r} (it has {', '.join(have)})")
        ev = evaluate(model, FeatureDataset(path, tok, dim=model.cfg.input_dim), tok, device, cfg.max_frames)
        summ = write_reports(ctx.out_dir, split, ev["ids"], ev["refs"], ev["hyps"], {"model": out["model"]})
        out["splits"][split] = {k: summ[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions",
                                                     "ref_words", "utterances")}
        log.info("decode %s: WER %.2f%% CER %.2f%% (%d utterances)", split, summ["wer"], summ["cer"], summ["utterances"])
    if not out["splits"]:
        raise FileNotFoundError(f"{fdir}: none of the splits {splits} was featurized; nothing to decode")
    atomic_write_text(ctx.out_dir / "summary.json", json.dumps(out, indent=1) + "\n")
    return out
