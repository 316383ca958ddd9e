"""The ``speechkd corpus`` and ``speechkd manifest`` commands (argument parsers and handlers).

``corpus synth`` builds the embedded corpus, ``corpus import KIND SOURCE`` writes a manifest with one
of the importers, ``corpus export lhotse MANIFEST`` writes a manifest as lhotse recordings, supervisions
and cuts, ``manifest validate`` lists a manifest's problems as ``file:line`` lines.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

IMPORT_KINDS = ["librispeech", "kaldi", "nemo", "commonvoice", "audio", "lhotse"]


def _synth(a: argparse.Namespace) -> int:
    from speechkd.data.synth import build_corpus, load_spec

    spec = load_spec(a.spec, hours=a.hours, seed=a.seed) if a.spec else load_spec(hours=a.hours, seed=a.seed)
    summary = build_corpus(spec, a.out, num_workers=a.workers, progress=not a.no_progress)
    print(json.dumps(summary, indent=1))
    return 0


def _import(a: argparse.Namespace) -> int:
    from speechkd.data.importers import import_to_manifest

    print(import_to_manifest(a.kind, a.source, a.out, policy=a.bad_input, untranscribed=a.untranscribed))
    return 0


def _export(a: argparse.Namespace) -> int:
    from speechkd.data.lhotse_io import export_lhotse

    counts = export_lhotse(a.manifest, a.out)
    print(f"wrote {counts['recordings']} recordings, {counts['supervisions']} supervisions and {counts['cuts']} "
          f"cuts to {a.out} (recordings.jsonl.gz, supervisions.jsonl.gz, cuts.jsonl.gz)")
    return 0


def _validate(a: argparse.Namespace) -> int:
    from speechkd.data.manifest import validate_manifest

    problems = validate_manifest(a.manifest, check_audio=not a.no_audio)
    for p in problems:
        print(p)
    if not problems:
        print(f"{a.manifest}: ok")
    return 1 if problems else 0


def add_commands(sub, workers_type: Callable[[str], int]) -> None:
    """Add ``corpus`` and ``manifest`` to the top-level subparsers ``sub``."""
    c = sub.add_parser("corpus", help="build, import or export corpora")
    csub = c.add_subparsers(dest="corpus_cmd", required=True)
    s = csub.add_parser("synth", help="build the embedded synth-en corpus (resumable)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--hours", type=float, help="planned hours (default: the spec's)")
    s.add_argument("--seed", type=int, help="seed (default: the spec's)")
    s.add_argument("--spec", help="corpus spec YAML (default: data_manifests/synth-en.yaml)")
    s.add_argument("--workers", type=workers_type, help="parallel jobs (default: CPU cores)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_synth)
    i = csub.add_parser("import", help="import a corpus into a JSONL manifest")
    i.add_argument("kind", choices=IMPORT_KINDS,
                   help="audio: a folder tree of audio files, written as untranscribed rows; lhotse: a cut "
                        "manifest, or a recording manifest with its supervisions beside it")
    i.add_argument("source", help="LibriSpeech folder, Kaldi data dir, NeMo manifest, Common Voice TSV, a "
                                  "folder of audio files or a lhotse manifest")
    i.add_argument("--untranscribed", action="store_true",
                   help="nemo, lhotse: write every row without text (rows without text are otherwise rejected)")
    i.add_argument("--out", required=True, help="output manifest (.jsonl)")
    i.add_argument("--bad-input", choices=["skip", "fail"], default="skip", help="policy for bad entries")
    i.set_defaults(func=_import)
    e = csub.add_parser("export", help="write a manifest in another toolkit's format")
    e.add_argument("format", choices=["lhotse"], help="lhotse: recordings, supervisions and cuts (.jsonl.gz), "
                                                      "for icefall or NeMo")
    e.add_argument("manifest", help="a speechkd (NeMo-style) JSONL manifest")
    e.add_argument("--out", required=True, help="output folder")
    e.set_defaults(func=_export)

    m = sub.add_parser("manifest", help="manifest tools")
    msub = m.add_subparsers(dest="manifest_cmd", required=True)
    v = msub.add_parser("validate", help="check a manifest; prints file:line problems")
    v.add_argument("manifest")
    v.add_argument("--no-audio", action="store_true", help="do not check that audio files exist")
    v.set_defaults(func=_validate)
