"""The ``speechkd`` console script: thin subcommands that parse arguments and forward."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("speechkd.cli")


def _cmd_run(a: argparse.Namespace) -> int:
    from speechkd.stages.runner import run_recipe

    results = run_recipe(a.recipe, from_stage=a.from_stage, to_stage=a.to_stage, force=a.force,
                         overrides=a.overrides, exp_root=a.exp_root)
    for name, status in results:
        print(f"{name:>16}: {status}")
    return 0


def _cmd_synth(a: argparse.Namespace) -> int:
    from speechkd.data.synth import build_corpus, load_spec

    spec = load_spec(a.spec, hours=a.hours, seed=a.seed) if a.spec else load_spec(hours=a.hours, seed=a.seed)
    summary = build_corpus(spec, a.out, num_workers=a.workers, progress=not a.no_progress)
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_import(a: argparse.Namespace) -> int:
    from speechkd.data.importers import IMPORTERS

    utts = IMPORTERS[a.kind](a.source, a.out, policy=a.bad_input)
    print(f"wrote {len(utts)} utterances ({sum(u.duration for u in utts) / 3600:.3f} h) to {a.out}")
    return 0


def _cmd_validate(a: argparse.Namespace) -> int:
    from speechkd.data.manifest import validate_manifest

    problems = validate_manifest(a.manifest, check_audio=not a.no_audio)
    for p in problems:
        print(p)
    if not problems:
        print(f"{a.manifest}: ok")
    return 1 if problems else 0


def _cmd_decode(a: argparse.Namespace) -> int:
    from speechkd.data.dataset import FeatureDataset
    from speechkd.eval.decode import evaluate, pick_device
    from speechkd.eval.scoring import report_names, write_reports
    from speechkd.models.io import check_vocabulary, load_model
    from speechkd.text.tokenizer import load_tokenizer

    device = pick_device(a.device)
    model = load_model(a.model, device=device)
    tok = load_tokenizer(a.tokenizer or Path(a.model).parent)
    check_vocabulary(model, tok, a.model)
    names = report_names(a.manifests)  # two test.jsonl from different folders get different report names
    for manifest, name in zip(a.manifests, names):
        ev = evaluate(model, FeatureDataset(manifest, tok), tok, device, a.max_frames)
        s = write_reports(a.out, name, ev["ids"], ev["refs"], ev["hyps"], {"model": str(a.model),
                                                                           "manifest": str(manifest)})
        print(f"{name}: WER {s['wer']:.2f}%  CER {s['cer']:.2f}%  ({s['utterances']} utterances) -> {a.out}")
    return 0


def _cmd_config(a: argparse.Namespace) -> int:
    from speechkd.config import help_text
    from speechkd.stages import STAGE_TYPES, get_stage

    names = [a.stage] if a.stage else sorted(STAGE_TYPES)
    for n in names:
        if n not in STAGE_TYPES:
            print(f"unknown stage {n!r}; known: {', '.join(sorted(STAGE_TYPES))}", file=sys.stderr)
            return 2
        mod = get_stage(n)
        print(f"{n}: {(mod.__doc__ or '').strip().splitlines()[0]}")
        print(help_text(mod.Config))
        if len(names) > 1:
            print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechkd", description="Distill CTC speech recognizers into streaming students.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a recipe's stages (skips finished ones)")
    r.add_argument("recipe", help="recipe folder (pipelines/<name>) or its recipe.yaml")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. corpus.hours=0.1 featurize.num_workers=1")
    r.add_argument("--from", dest="from_stage", help="first stage to run")
    r.add_argument("--to", dest="to_stage", help="last stage to run")
    r.add_argument("--force", action="store_true", help="rerun the selected stages from scratch")
    r.add_argument("--exp-root", help="write exp/<recipe> under this folder instead of ./exp")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("corpus", help="build or import corpora")
    csub = c.add_subparsers(dest="corpus_cmd", required=True)
    s = csub.add_parser("synth", help="build the embedded synth-en corpus (resumable)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--hours", type=float, help="planned hours (default: the spec's)")
    s.add_argument("--seed", type=int, help="seed (default: the spec's)")
    s.add_argument("--spec", help="corpus spec YAML (default: data_manifests/synth-en.yaml)")
    s.add_argument("--workers", type=int, help="parallel jobs (default: CPU cores)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)
    i = csub.add_parser("import", help="import a corpus into a JSONL manifest")
    i.add_argument("kind", choices=["librispeech", "kaldi", "nemo", "commonvoice"])
    i.add_argument("source", help="LibriSpeech folder, Kaldi data dir, NeMo manifest or Common Voice TSV")
    i.add_argument("--out", required=True, help="output manifest (.jsonl)")
    i.add_argument("--bad-input", choices=["skip", "fail"], default="skip", help="policy for bad entries")
    i.set_defaults(func=_cmd_import)

    m = sub.add_parser("manifest", help="manifest tools")
    msub = m.add_subparsers(dest="manifest_cmd", required=True)
    v = msub.add_parser("validate", help="check a manifest; prints file:line problems")
    v.add_argument("manifest")
    v.add_argument("--no-audio", action="store_true", help="do not check that audio files exist")
    v.set_defaults(func=_cmd_validate)

    d = sub.add_parser("decode", help="batched greedy CTC decoding + WER/CER reports of featurized manifests")
    d.add_argument("--model", required=True, help="weights (.safetensors) written by a train stage")
    d.add_argument("--tokenizer", help="tokenizer folder (default: the model's folder)")
    d.add_argument("--out", required=True, help="folder for recogs-/errs-/wer-summary- files")
    d.add_argument("--max-frames", type=int, default=40000, help="padded frames per batch")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to decode")
    d.add_argument("manifests", nargs="+", help="featurize-stage manifests (<split>.jsonl)")
    d.set_defaults(func=_cmd_decode)

    cf = sub.add_parser("config", help="show a stage's config keys with help")
    cf.add_argument("stage", nargs="?")
    cf.set_defaults(func=_cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    from speechkd.utils import setup_logging

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `run` overrides may come after options: `run R --exp-root X a.b=1`
        if args.cmd == "run" and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:
        if args.verbose:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, or a library error type we do not know: still one line
        if args.verbose:
            raise
        print(f"error: {type(e).__name__}: {_one_line(e)} (internal error; rerun with -v for the traceback)",
              file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
