"""Stage ``corpus``: build the embedded ``synth-en`` corpus, or import a user corpus.

Writes one manifest per split (``<split>.jsonl``) into the stage folder and ``corpus.json``,
which declares the splits and, under ``untranscribed``, those without transcripts (the only files
later stages read as data). An untranscribed split's rows carry no ``text``: the ``audio`` importer's
splits, the splits the recipe lists in ``untranscribed`` (any text an importer found is dropped), and
the embedded corpus's ``untranscribed`` split (``untranscribed_hours``), whose sentences are known only
as SHA-256 digests (``untranscribed.text-sha256``), so the lm stage can leave them out of its text.
Rejected entries and synthesis failures are listed under ``rejected/``. Relative paths in the config (the spec, the
import sources) resolve against the recipe's folder first; the spec then against the toolkit's
own ``data_manifests/``, import sources against the working directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from speechkd.config import ConfigError, check_name, field, require
from speechkd.utils import atomic_write_text

log = logging.getLogger(__name__)

ALONE = True  # synthesis keeps every core busy: `run --jobs` starts nothing beside it

@dataclass
class Config:
    kind: Literal["synth", "librispeech", "kaldi", "nemo", "commonvoice", "audio", "lhotse"] = field(
        "synth", help="synth (the embedded corpus) or an importer (audio: a folder tree of untranscribed audio; "
                      "lhotse: cuts, or recordings with their supervisions)")
    spec: str = field("data_manifests/synth-en.yaml", help="synth: corpus spec (relative: to the recipe's folder, "
                                                           "then the toolkit's)")
    hours: float | None = field(None, help="synth: planned hours (overrides the spec)")
    untranscribed_hours: float | None = field(None, help="synth: planned hours of the untranscribed split (overrides "
                                                         "the spec; 0 = none)")
    seed: int | None = field(None, help="synth: corpus seed (default: the spec's seed)")
    num_workers: int = field(0, help="synth: parallel jobs (0 = one per CPU core)", fingerprint=False)
    splits: dict[str, str] = field(default_factory=dict,
                                   help="importers: split name -> source (folder, data dir, manifest or TSV)")
    root: str = field("", help="importers: the folder relative sources are in ('' = the recipe's folder, then the "
                               "working directory), e.g. root=/data/LibriSpeech with splits {train: "
                               "train-clean-100}")
    kinds: dict[str, str] = field(default_factory=dict,
                                  help="importers: split name -> importer kind for that split (default: kind), "
                                       "e.g. {dev: nemo} beside kind: librispeech")
    untranscribed: list[str] = field(default_factory=list,
                                     help="importers: splits without transcripts (any text is dropped); audio "
                                          "splits always are")
    bad_input: Literal["skip", "fail"] = field("skip", help="importers: policy for missing or unreadable audio")

    def __post_init__(self):
        require(self.hours is None or self.hours > 0, "hours", f"must be > 0, got {self.hours}")
        require(self.untranscribed_hours is None or self.untranscribed_hours >= 0, "untranscribed_hours",
                f"must be >= 0, got {self.untranscribed_hours}")
        require(self.num_workers >= 0, "num_workers", f"must be >= 0 (0 = one per core), got {self.num_workers}")
        for name in self.splits:
            check_name(name, f"splits.{name}", "split name")
        if self.kind == "synth":
            require(not self.splits, "splits", "is for importers; the synth corpus makes its own splits")
            require(not self.kinds, "kinds", "is for importers")
            require(not self.untranscribed, "untranscribed", "is for importers; the synth corpus's untranscribed "
                                                             "split is set by untranscribed_hours")
            require(not self.root, "root", "is for importers")
        else:
            require(bool(self.splits), "splits", f"give at least one 'split: source' for kind {self.kind!r}")
        importers = ("librispeech", "kaldi", "nemo", "commonvoice", "audio", "lhotse")
        for name, k in self.kinds.items():
            require(name in self.splits, "kinds", f"names split {name!r}, which splits does not list")
            require(k in importers, f"kinds.{name}", f"must be one of {', '.join(importers)}, got {k!r}")
        for i, name in enumerate(self.untranscribed):
            require(name in self.splits, f"untranscribed[{i}]", f"names split {name!r}, which splits does not list")

    def kind_of(self, split: str) -> str:
        return self.kinds.get(split, self.kind)

    def untranscribed_splits(self) -> list[str]:
        """Importers: the splits written without transcripts."""
        from speechkd.data.importers import UNTRANSCRIBED_KINDS

        return [s for s in self.splits if s in self.untranscribed or self.kind_of(s) in UNTRANSCRIBED_KINDS]


def resolve_spec(spec: str, base: Path | None) -> Path:
    """The spec file: absolute as given; else in the recipe's folder, else in the toolkit's tree."""
    p = Path(spec)
    if p.is_absolute():
        return p
    from speechkd.data.synth.build import TOOLKIT_ROOT

    tried = [b / p for b in (base, TOOLKIT_ROOT) if b is not None]
    for c in tried:
        if c.exists():
            return c
    raise ConfigError(f"corpus.spec: {spec!r} not found (looked in {', '.join(str(c.parent) for c in tried)}; the "
                      "embedded corpus's spec is in the source tree's data_manifests/, not in an installed package: "
                      "give corpus.spec a path)")


def resolve_source(src: str, base: Path | None, root: str = "") -> Path:
    """An import source: absolute as given; under ``root`` when one is set; else in the recipe's folder, else
    the working directory."""
    p = Path(src)
    if root and not p.is_absolute():
        return Path(root).expanduser() / p
    if p.is_absolute() or base is None or not (base / p).exists():
        return p
    return base / p


def _text_inputs(kind: str, src: Path) -> list[Path]:
    """The text files an importer reads (audio is not fingerprinted: it is checked when featurized)."""
    if kind == "kaldi":
        return [src / n for n in ("wav.scp", "text", "utt2spk", "segments") if (src / n).exists()]
    if kind == "librispeech":
        from speechkd.data.importers import find_files

        return find_files(src, ".trans.txt") if src.is_dir() else []
    if kind == "lhotse" and "recordings" in src.name:  # its supervisions are read from beside it
        sup = src.with_name(src.name.replace("recordings", "supervisions"))
        return [p for p in (src, sup) if p.is_file()]
    return [src] if src.is_file() else []


def fingerprint_inputs(cfg: Config, base: Path | None = None) -> str:
    """Content of the files this stage reads: the spec (synth), or the importers' manifests, TSVs,
    Kaldi files and transcripts, so editing any of them reruns the stage. Raises ConfigError when an
    input is missing or unreadable: the recipe is refused before any stage folder is touched."""
    from speechkd.config import read_small_file

    h = hashlib.sha256()
    if cfg.kind == "synth":
        from speechkd.data.synth import load_spec

        spec = resolve_spec(cfg.spec, base)
        h.update(read_small_file(spec, "corpus spec"))
        # a spec that cannot be used is refused now, not after the runner has cleared the finished corpus
        load_spec(spec, hours=cfg.hours, seed=cfg.seed, untranscribed_hours=cfg.untranscribed_hours)
        return h.hexdigest()
    for split, src in sorted(cfg.splits.items()):
        root = resolve_source(src, base, cfg.root)
        if not root.exists():
            where = f" (in corpus.root {cfg.root})" if cfg.root else (
                f" (looked in {base} and the working directory)" if base else "")
            raise ConfigError(f"corpus.splits.{split}: {src!r} not found{where}")
        h.update(f"{split}\0{root.resolve()}\0".encode())
        h.update(f"{cfg.kind_of(split)}\0".encode())
        for f in _text_inputs(cfg.kind_of(split), root):
            h.update(f"{f.relative_to(root) if f != root and f.is_relative_to(root) else f.name}\0".encode())
            try:
                h.update(f.read_bytes())
            except OSError as e:
                raise ConfigError(f"corpus.splits.{split}: cannot read {f}: {e.strerror}") from None
    return h.hexdigest()


def run(cfg: Config, ctx) -> dict[str, Any]:
    if cfg.kind == "synth":
        from speechkd.data.synth import build_corpus, load_spec

        spec = load_spec(resolve_spec(cfg.spec, ctx.recipe_dir), hours=cfg.hours, seed=cfg.seed,
                         untranscribed_hours=cfg.untranscribed_hours)
        return build_corpus(spec, ctx.out_dir, num_workers=cfg.num_workers or None)

    from speechkd.data.checks import BadInputLog
    from speechkd.data.importers import DECLARED_UNTRANSCRIBED, IMPORTERS, rejected_path

    from speechkd.data.manifest import write_manifest

    untranscribed = cfg.untranscribed_splits()
    summary: dict[str, Any] = {"kind": cfg.kind, "splits": {}, "untranscribed": untranscribed, "rejected": {}}
    for split, src in cfg.splits.items():
        out_manifest = ctx.out_dir / f"{split}.jsonl"
        bad = BadInputLog(cfg.bad_input, rejected_path(out_manifest))
        kind = cfg.kind_of(split)
        extra = {"untranscribed": True} if kind in DECLARED_UNTRANSCRIBED and split in untranscribed else {}
        utts = IMPORTERS[kind](resolve_source(src, ctx.recipe_dir, cfg.root), out_manifest, policy=cfg.bad_input, bad=bad,
                               **extra)
        if split in untranscribed and any(u.text is not None for u in utts):
            for u in utts:  # declared untranscribed: whatever text the source had is not kept
                u.text = None
                u.extra.pop("raw_text", None)
            write_manifest(utts, out_manifest)
        summary["splits"][split] = {"kind": kind, "utterances": len(utts),
                                    "hours": round(sum(u.duration for u in utts) / 3600, 4),
                                    "speakers": len({u.speaker for u in utts})}
        if bad.rejected:
            summary["rejected"][split] = bad.counts()
    atomic_write_text(ctx.out_dir / "corpus.json", json.dumps(summary, indent=1) + "\n")
    return summary
