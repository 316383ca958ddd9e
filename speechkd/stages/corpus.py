"""Stage ``corpus``: build the embedded ``synth-en`` corpus, or import a user corpus.

Writes one manifest per split (``<split>.jsonl``) into the stage folder, and ``corpus.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechkd.config import ConfigError, field
from speechkd.utils import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class Config:
    kind: str = field("synth", help="synth | librispeech | kaldi | nemo | commonvoice")
    spec: str = field("data_manifests/synth-en.yaml", help="synth: corpus spec (relative to the repo root)")
    hours: float | None = field(None, help="synth: planned hours (overrides the spec)")
    seed: int | None = field(None, help="synth: corpus seed (default: the spec's seed)")
    num_workers: int = field(0, help="synth: parallel jobs (0 = one per CPU core)")
    splits: dict[str, str] = field(default_factory=dict,
                                   help="importers: split name -> source (folder, data dir, manifest or TSV)")
    bad_input: str = field("skip", help="importers: skip | fail for missing or unreadable audio")


def fingerprint_inputs(cfg: Config) -> str | None:
    """The spec file's content, so editing the spec reruns the stage (paths relative to the cwd)."""
    p = Path(cfg.spec)
    if cfg.kind == "synth" and p.exists():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    return None


def run(cfg: Config, ctx) -> dict[str, Any]:
    if cfg.kind == "synth":
        from speechkd.data.synth import build_corpus, load_spec

        spec_path = Path(cfg.spec)
        if not spec_path.is_absolute():
            spec_path = ctx.repo_root / spec_path
        spec = load_spec(spec_path, hours=cfg.hours, seed=cfg.seed)
        return build_corpus(spec, ctx.out_dir, num_workers=cfg.num_workers or None)

    from speechkd.data.importers import IMPORTERS

    if cfg.kind not in IMPORTERS:
        raise ConfigError(f"corpus.kind: unknown kind {cfg.kind!r}; expected synth or one of {sorted(IMPORTERS)}")
    if not cfg.splits:
        raise ConfigError(f"corpus.splits: give at least one 'split: source' for kind {cfg.kind!r}")
    summary: dict[str, Any] = {"kind": cfg.kind, "splits": {}}
    for split, src in cfg.splits.items():
        utts = IMPORTERS[cfg.kind](src, ctx.out_dir / f"{split}.jsonl", policy=cfg.bad_input)
        summary["splits"][split] = {"utterances": len(utts), "hours": round(sum(u.duration for u in utts) / 3600, 4),
                                    "speakers": len({u.speaker for u in utts})}
    atomic_write_text(ctx.out_dir / "corpus.json", json.dumps(summary, indent=1) + "\n")
    return summary
