"""Stage ``tokenizer``: train (sentencepiece) or write (characters) the tokenizer from train texts.

Writes ``tokenizer.json`` (+ ``spm.model``) and reports tokens per utterance and the tightest
frames-per-token ratio seen, which bounds how much frame stacking CTC can take.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from speechkd.config import field
from speechkd.data.manifest import read_manifest
from speechkd.text.tokenizer import train_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Config:
    featurize: str = field("featurize", help="upstream stage whose manifests hold the texts")
    kind: str = field("char", help="char | sentencepiece")
    vocab_size: int = field(256, help="sentencepiece vocabulary size (including the blank)")
    model_type: str = field("unigram", help="sentencepiece model: unigram | bpe")
    train_split: str = field("train", help="split whose texts train the tokenizer")


def run(cfg: Config, ctx) -> dict[str, Any]:
    src = ctx.stage_dir(cfg.featurize)
    texts = [u.text for u in read_manifest(src / f"{cfg.train_split}.jsonl")]
    tok = train_tokenizer(cfg.kind, texts, vocab_size=cfg.vocab_size, model_type=cfg.model_type)
    tok.save(ctx.out_dir)
    stats: dict[str, Any] = {"kind": tok.kind, "vocab_size": tok.vocab_size, "splits": {}}
    for manifest in sorted(src.glob("*.jsonl")):
        utts = read_manifest(manifest)
        if not utts:
            continue
        lens = [len(tok.encode(u.text)) for u in utts]
        ratio = min(u.extra["feats"]["frames"] / max(n, 1) for u, n in zip(utts, lens))
        stats["splits"][manifest.stem] = {"tokens_per_utt": round(sum(lens) / len(lens), 2),
                                          "min_frames_per_token": round(ratio, 2)}
    log.info("tokenizer: %s with %d tokens", tok.kind, tok.vocab_size)
    return stats
