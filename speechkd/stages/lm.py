"""Stage ``lm``: estimate a word n-gram language model (ARPA) from text that holds no held-out sentence.

The text is a file the recipe names (``text``, one sentence per line, normalised as transcripts are),
or else, for the embedded corpus, its whole sentence pool (the spec's fortunes and WordNet examples),
or, for an imported corpus, the train split's transcripts. Every sentence of the ``holdout`` splits of
the corpus stage is removed from it first, so no dev or test sentence reaches the LM. Writes
``lm.arpa`` (interpolated modified Kneser-Ney, else Witten-Bell: :mod:`speechkd.lm.ngram`), ``lm.tables.npz``
(the arrays the fused beam search indexes, built from that file: :mod:`speechkd.lm.tables`), ``text.txt``
(the sentences it was estimated from) and ``summary.json``; the outputs record the order, the vocabulary
size, the n-gram counts, the sentences removed, and perplexity and OOV rate on the ``eval_splits``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechkd.config import check_name, field, require

log = logging.getLogger(__name__)


@dataclass
class Config:
    corpus: str = field("corpus", help="corpus stage: its held-out splits never reach the LM text")
    text: str = field("", help="text file, one sentence per line ('' = the corpus: the embedded corpus's sentence "
                               "pool, or an imported corpus's train transcripts); relative to the recipe's folder")
    spec: str = field("data_manifests/synth-en.yaml", help="embedded corpus only: the spec whose sentence pool is "
                                                           "the text (as the corpus stage's spec)")
    order: int = field(3, help="n-gram order")
    holdout: list[str] = field(default_factory=lambda: ["dev", "test", "test_unseen_voice"],
                               help="splits whose sentences are removed from the LM text")
    eval_splits: list[str] = field(default_factory=lambda: ["dev", "test"],
                                   help="splits whose transcripts measure perplexity and OOV rate")

    def __post_init__(self):
        require(1 <= self.order <= 6, "order", f"must be in [1, 6], got {self.order}")
        for i, s in enumerate(self.holdout):
            check_name(s, f"holdout[{i}]", "split name")
        for i, s in enumerate(self.eval_splits):
            check_name(s, f"eval_splits[{i}]", "split name")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    return [("corpus", cfg.corpus, ("corpus",))]


def _text_file(cfg: Config, base: Path | None) -> Path:
    p = Path(cfg.text)
    if not p.is_absolute() and base is not None and (base / p).exists():
        p = base / p
    return p


def fingerprint_inputs(cfg: Config, base: Path | None = None) -> str | None:
    """The content of the text file (a new text reruns the stage); a missing one is refused at load."""
    if not cfg.text:
        return None
    from speechkd.config import read_small_file

    return hashlib.sha256(read_small_file(_text_file(cfg, base), "lm text", limit=1 << 30)).hexdigest()


def lm_text(cfg: Config, ctx, corpus_kind: str) -> list[str]:
    """The sentences the LM is estimated from, before held-out sentences are removed."""
    from speechkd.data.manifest import read_manifest, text_lines
    from speechkd.text.normalize import normalize_text

    if cfg.text:
        from speechkd.lm.ngram import LMError

        return [normalize_text(t) for _, t in text_lines(_text_file(cfg, ctx.recipe_dir), LMError, "LM text")]
    if corpus_kind == "synth":
        from speechkd.data.synth import load_spec
        from speechkd.data.synth.text import load_sentences
        from speechkd.stages.corpus import resolve_spec

        spec = load_spec(resolve_spec(cfg.spec, ctx.recipe_dir))
        return load_sentences(Path(spec.fortunes_dir), spec.fortune_files, Path(spec.wordnet_dir),
                              min_words=spec.min_words, max_words=spec.max_words)
    return [u.text for u in read_manifest(ctx.stage_dir(cfg.corpus) / "train.jsonl") if u.text is not None]


def run(cfg: Config, ctx) -> dict[str, Any]:
    from speechkd.data.manifest import read_manifest
    from speechkd.lm.ngram import estimate, write_arpa
    from speechkd.stages.featurize import declared_splits
    from speechkd.text.normalize import normalize_text
    from speechkd.utils import atomic_write_text

    cdir = ctx.stage_dir(cfg.corpus)
    splits = declared_splits(cdir)
    meta = json.loads((cdir / "corpus.json").read_text())
    kind = meta.get("kind", "synth") if isinstance(meta, dict) else "synth"
    held = {normalize_text(u.text) for s in cfg.holdout if s in splits for u in read_manifest(cdir / f"{s}.jsonl")
            if u.text is not None}
    digests: set[str] = set()
    for s in (meta.get("untranscribed", []) if isinstance(meta, dict) else []):
        f = cdir / f"{s}.text-sha256"
        if f.exists():
            digests.update(line.strip() for line in f.read_text().splitlines() if line.strip())
    raw = lm_text(cfg, ctx, kind)
    if digests:
        from speechkd.data.synth.build import text_digest

        kept = [t for t in raw if t and t not in held and text_digest(t) not in digests]
    else:
        kept = [t for t in raw if t and t not in held]
    if not kept:
        raise ValueError(f"lm: no LM text is left after removing the {len(held)} held-out sentences")
    lm = estimate([t.split() for t in kept], cfg.order)
    write_arpa(lm, ctx.out_dir / "lm.arpa")
    from speechkd.lm.tables import LMTables

    LMTables.from_lm(lm).save(ctx.out_dir / "lm.arpa")  # the arrays the fused beam search reads, ready to load
    atomic_write_text(ctx.out_dir / "text.txt", "\n".join(kept) + "\n")
    out: dict[str, Any] = {"order": lm.order, "methods": lm.methods, "vocab_size": len(lm.vocab) - 1,
                           "ngrams": lm.counts(), "sentences": len(kept), "words": sum(len(t.split()) for t in kept),
                           "heldout_sentences_removed": len(raw) - len(kept), "eval": {}}
    for s in cfg.eval_splits:
        if s in splits:
            rows = [u for u in read_manifest(cdir / f"{s}.jsonl") if u.text is not None]
            if not rows:
                continue
            out["eval"][s] = lm.perplexity([normalize_text(u.text).split() for u in rows])
            log.info("lm %s: perplexity %.1f, OOV rate %.2f%%", s, out["eval"][s]["perplexity"],
                     100 * out["eval"][s]["oov_rate"])
    atomic_write_text(ctx.out_dir / "summary.json", json.dumps(out, indent=1) + "\n")
    return out
