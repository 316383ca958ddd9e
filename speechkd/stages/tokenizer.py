"""Stage ``tokenizer``: train (sentencepiece) or write (characters) the tokenizer from train texts.

Writes ``tokenizer.json`` (+ ``spm.model``) and reports, for every split the featurize stage
wrote, tokens per utterance and the tightest frames-per-token ratio seen, which bounds how much
frame stacking CTC can take.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from speechkd.config import check_name, field, require
from speechkd.data.manifest import feature_frames, read_manifest
from speechkd.stages.featurize import declared_splits
from speechkd.text.tokenizer import train_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Config:
    featurize: str = field("featurize", help="upstream stage whose manifests hold the texts")
    kind: Literal["char", "sentencepiece"] = field("char", help="token unit")
    vocab_size: int = field(256, help="sentencepiece vocabulary size (including the blank)")
    model_type: Literal["unigram", "bpe"] = field("unigram", help="sentencepiece model type")
    train_split: str = field("train", help="split whose texts train the tokenizer")

    def __post_init__(self):
        require(self.vocab_size >= 3, "vocab_size", f"must be >= 3, got {self.vocab_size}")
        check_name(self.train_split, "train_split", "split name")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    return [("featurize", cfg.featurize, ("featurize",))]


def run(cfg: Config, ctx) -> dict[str, Any]:
    src = ctx.stage_dir(cfg.featurize)
    splits = declared_splits(src)
    if cfg.train_split not in splits:
        raise FileNotFoundError(f"{src}: no split {cfg.train_split!r} to train the tokenizer on; "
                                f"featurized splits: {', '.join(splits) or 'none'}")
    texts = [u.text for u in read_manifest(src / f"{cfg.train_split}.jsonl") if u.text is not None]
    if not texts:
        raise ValueError(f"{src / (cfg.train_split + '.jsonl')}: split {cfg.train_split!r} has no transcripts "
                         "(untranscribed audio cannot train a tokenizer); name a transcribed train_split")
    tok = train_tokenizer(cfg.kind, texts, vocab_size=cfg.vocab_size, model_type=cfg.model_type)
    tok.save(ctx.out_dir)
    stats: dict[str, Any] = {"kind": tok.kind, "vocab_size": tok.vocab_size, "splits": {}}
    for split in splits:
        utts = [u for u in read_manifest(src / f"{split}.jsonl") if u.text is not None]
        if not utts:  # also an untranscribed split: the tokenizer sees transcribed train text only
            continue
        lens = [len(tok.encode(u.text)) for u in utts]
        ratio = min(feature_frames(u) / max(n, 1) for u, n in zip(utts, lens))
        stats["splits"][split] = {"tokens_per_utt": round(sum(lens) / len(lens), 2),
                                  "min_frames_per_token": round(ratio, 2)}
    log.info("tokenizer: %s with %d tokens", tok.kind, tok.vocab_size)
    return stats
