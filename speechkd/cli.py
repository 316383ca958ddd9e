"""The ``speechkd`` console script: thin subcommands that parse arguments and forward."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from speechkd.data.commands import add_commands as add_data_commands
from speechkd.lm.files import add_cli_args, cli_choice, ship_lm

log = logging.getLogger("speechkd.cli")


def _bounded(kind, lo, hi, what):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (lo <= v <= hi):  # NaN fails this too
            raise argparse.ArgumentTypeError(f"{what} must be in [{lo:g}, {hi:g}], got {text}")
        return v

    return parse


_chunk_ms = _bounded(float, 1.0, 60000.0, "chunk (ms)")
_threads = _bounded(int, 1, 256, "threads")
_rate = _bounded(int, 1000, 384000, "sample rate (Hz)")
_delay = _bounded(int, 0, 1000, "delay (output frames)")


def _cmd_run(a: argparse.Namespace) -> int:
    from speechkd.stages.runner import run_recipe

    results = run_recipe(a.recipe, from_stage=a.from_stage, to_stage=a.to_stage, force=a.force,
                         overrides=a.overrides, exp_root=a.exp_root, jobs=a.jobs)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 alone prints the summary
        return 0
    for name, status in results:
        print(f"{name:>16}: {status}")
    return 0


def _cmd_decode(a: argparse.Namespace) -> int:
    from speechkd.data.dataset import FeatureDataset
    from speechkd.eval.decode import greedy_hyps, utterance_posteriors
    from speechkd.eval.scoring import report_names, write_reports
    from speechkd.lm.decoder import load_choice
    from speechkd.models.bundle import load_bundle
    from speechkd.utils import pick_device

    device = pick_device(a.device)
    bundle = load_bundle(a.model, device=device)
    model, tok = bundle.model, bundle.tokenizer
    lm, weights = cli_choice(a, a.model)
    decoder = load_choice(a.model, lm, tok.tokens(), tok.blank_id, weights)
    names = report_names(a.manifests)  # two test.jsonl from different folders get different report names
    for manifest, name in zip(a.manifests, names):
        ids, refs, lps = utterance_posteriors(model, FeatureDataset(manifest, tok, dim=model.cfg.input_dim), device,
                                              a.max_frames)
        if decoder is not None:  # the LM-fused beam on the model's posteriors (as the decode stage)
            import torch

            from speechkd.eval.lmdecode import search_hyps

            hyps = search_hyps(lps, tok, decoder=decoder, threads=torch.get_num_threads())
        else:
            hyps = greedy_hyps(lps, tok)
        s = write_reports(a.out, name, ids, refs, hyps, {"model": str(a.model), "manifest": str(manifest)})
        print(f"{name}: WER {s['wer']:.2f}%  CER {s['cer']:.2f}%  ({s['utterances']} utterances) -> {a.out}")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from speechkd.export import export_streaming

    if a.lm:  # refused before anything is written: a missing LM, or one for sherpa-onnx (it has no n-gram fusion)
        from speechkd.lm.files import find_arpa

        if a.format == "sherpa":
            raise ValueError("--lm: sherpa-onnx has no n-gram fusion for online CTC; export --format onnx with the LM")
        find_arpa(a.lm)

    if a.format == "sherpa":
        from speechkd.data.manifest import read_manifest
        from speechkd.export.sherpa import export_sherpa

        audio = None
        if a.adapt_manifest:
            m = Path(a.adapt_manifest)
            audio = [u.resolve_audio(m.parent) for u in read_manifest(m)][:: max(1, a.adapt_every)]
        else:
            print("warning: no --adapt-manifest: sherpa-onnx's features go to the model unadapted (less accurate)",
                  file=sys.stderr)
        meta = export_sherpa(a.model, a.out, chunk_ms=a.chunk_ms, adapt_audio=audio)
        print(f"wrote {Path(a.out) / 'model.onnx'} ({meta['bytes'] / 1e6:.2f} MB, sherpa-onnx flavour, feature adapter: "
              f"{meta['feature_adapter']}; feed {meta['tail_padding_ms']} ms of tail padding) and tokens.txt")
    else:
        meta = export_streaming(a.model, a.out, chunk_ms=a.chunk_ms, delay_frames=a.delay)
        print(f"wrote {Path(a.out) / 'model.onnx'} ({meta['bytes'] / 1e6:.2f} MB; chunk {meta['chunk_frames']} frames, "
              f"delay {meta['delay_frames']} frames = {meta['delay_ms']:g} ms) and {Path(a.out) / 'tokens.txt'}")
    if a.lm:  # ship the LM and its weights beside the model: transcribe and eval then decode with it
        ship_lm(a.lm, Path(a.out), cli_choice(a, a.model)[1])
        print(f"wrote {Path(a.out) / 'lm.arpa'} and lm.json (the fused beam search's weights)")
    if a.int8:
        from speechkd.quant.ort import quantize_int8

        rep = quantize_int8(Path(a.out) / "model.onnx", Path(a.out) / "model.int8.onnx")
        q = ", ".join(f"{v} {k}" for k, v in sorted(rep["quantized"].items()))
        print(f"wrote {Path(a.out) / 'model.int8.onnx'} ({rep['bytes'] / 1e6:.2f} MB, {rep['size_ratio']}x smaller; "
              f"int8: {q}; float: {', '.join(rep['float_ops'])})")
    return 0


def _cmd_upgrade_model(a: argparse.Namespace) -> int:
    from speechkd.models.bundle import upgrade_legacy

    b = upgrade_legacy(a.model, a.out, features=a.features, tokenizer_dir=a.tokenizer, delay_frames=a.delay)
    print(f"wrote {a.out or a.model}: a model bundle ({b.tokenizer.kind} tokenizer, {b.fbank.num_mel_bins}-bin fbank "
          f"at {b.fbank.frame_shift_ms:g} ms, delay {b.delay_frames} frames)")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from speechkd.eval.decode import first_utterance_posteriors
    from speechkd.eval.report import best_student, build, write_report

    exp = Path(a.exp_dir)
    if a.rtf and not Path(a.rtf).is_file():
        raise FileNotFoundError(f"{a.rtf}: --rtf names no file (a streaming benchmark's JSON)")
    rtf = a.rtf or (exp / "benchmarks" / "streaming.json" if (exp / "benchmarks" / "streaming.json").exists() else None)
    rep = build(exp, teacher=a.teacher, baseline=a.baseline, seed=a.seed, compare=a.compare, rtf=rtf, pairs=a.pair)
    post = None
    student = best_student(rep, "test")
    models = {m: exp / m / "model.safetensors" for m in (a.teacher, student or "")}
    manifest = exp / "featurize" / "test.jsonl"
    if student and not a.no_posteriors and manifest.exists() and all(p.exists() for p in models.values()):
        post = first_utterance_posteriors(models, manifest)
    paths = write_report(a.exp_dir, a.out, teacher=a.teacher, baseline=a.baseline, seed=a.seed, posteriors=post, rep=rep)
    for a_ in rep["absent"]:
        print(f"absent: {a_}", file=sys.stderr)
    print("\n".join(str(p) for p in paths.values()))
    return 0


def _cmd_transcribe(a: argparse.Namespace) -> int:
    from speechkd.runtime.recognizer import StreamingRecognizer, transcribe_file, transcribe_stream

    lm, weights = cli_choice(a, a.model)
    rec = StreamingRecognizer(a.model, num_threads=a.threads, lm=lm, lm_weights=weights)
    tty = sys.stderr.isatty() and not a.no_partials
    failed = 0
    for f in a.files:
        if f == "-":  # a WAV stream (header detected) or raw 16-bit little-endian mono PCM at --rate
            show = (lambda t: print(f"\r\033[K-: {t}", end="", file=sys.stderr, flush=True)) if tty else None
            try:
                res, fmt, was_wav = transcribe_stream(rec, sys.stdin.buffer.read, a.chunk_ms, a.rate, show)
            except ValueError as e:
                print(f"error: stdin: {e}", file=sys.stderr)
                failed += 1
                continue
            if not was_wav and a.rate is None:
                print(f"note: stdin: read as raw 16-bit mono PCM at the model's {fmt.rate} Hz (no WAV header; "
                      "give --rate for another rate)", file=sys.stderr)
        else:
            show = (lambda t, f=f: print(f"\r\033[K{f}: {t}", end="", file=sys.stderr, flush=True)) if tty else None
            try:
                res = transcribe_file(rec, f, a.chunk_ms, show)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                failed += 1
                continue
            if rec.resampled_from:
                print(f"note: {f}: resampled from {rec.resampled_from} Hz to {rec.sample_rate} Hz", file=sys.stderr)
        if tty:
            print("\r\033[K", end="", file=sys.stderr)
        print(f"{f}\t{res.text}", flush=True)
    return 1 if failed else 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from speechkd.eval.raw import (evaluate_manifest, is_sherpa_model, onnx_transcriber, sherpa_transcriber,
                                   torch_transcriber)
    from speechkd.eval.scoring import report_names, write_reports

    onnx = str(a.model).endswith(".onnx")
    lm, weights = cli_choice(a, a.model)
    if onnx and is_sherpa_model(a.model):  # the sherpa-onnx flavour: scored through sherpa-onnx itself
        if a.lm:
            print("error: --lm: sherpa-onnx has no n-gram fusion for online CTC; evaluate model.onnx (our runtime) "
                  "with the LM instead", file=sys.stderr)
            return 2
        run = sherpa_transcriber(a.model, a.chunk_ms, a.threads)
    elif onnx:
        run = onnx_transcriber(a.model, a.chunk_ms, a.threads, lm=lm, lm_weights=weights)
    else:
        run = torch_transcriber(a.model, a.device, lm=lm, lm_weights=weights)
    bad = 0
    for manifest, name in zip(a.manifests, report_names(a.manifests)):
        ev = evaluate_manifest(run, manifest)
        for uid, path, msg in ev["failed"]:
            print(f"error: utterance {uid!r}: {msg}", file=sys.stderr)
        bad += len(ev["failed"])
        if not ev["ids"]:
            print(f"error: {manifest}: no utterance could be scored", file=sys.stderr)
            continue
        s = write_reports(a.out, name, ev["ids"], ev["refs"], ev["hyps"],
                          {"model": str(a.model), "manifest": str(manifest), "failed": len(ev["failed"])})
        print(f"{name}: WER {s['wer']:.2f}%  CER {s['cer']:.2f}%  ({s['utterances']} utterances"
              + (f", {len(ev['failed'])} failed" if ev["failed"] else "") + f") -> {a.out}")
    return 1 if bad else 0


def _cmd_config(a: argparse.Namespace) -> int:
    """``config``: every stage type; ``config TYPE``; or ``config RECIPE STAGE`` (a stage of a recipe, with
    the recipe's values as the defaults shown)."""
    from speechkd.config import help_text
    from speechkd.stages import STAGE_TYPES, get_stage

    if a.stage_name is not None:
        from speechkd.stages.runner import load_recipe

        _, planned = load_recipe(a.stage)
        st = {p.name: p for p in planned}.get(a.stage_name)
        if st is None:
            print(f"error: {a.stage}: no stage {a.stage_name!r}; stages: {', '.join(p.name for p in planned)}",
                  file=sys.stderr)
            return 2
        mod = get_stage(st.type)
        print(f"{st.name} ({st.type}): {(mod.__doc__ or '').strip().splitlines()[0]}")
        print(help_text(mod.Config, defaults=st.cfg))
        return 0
    names = [a.stage] if a.stage else sorted(STAGE_TYPES)
    for n in names:
        if n not in STAGE_TYPES:
            print(f"error: unknown stage type {n!r}; known: {', '.join(sorted(STAGE_TYPES))} (or give a recipe and "
                  f"one of its stages: speechkd config pipelines/default {n})", file=sys.stderr)
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
    r.add_argument("recipe", nargs="?", help="recipe folder (pipelines/<name>) or its recipe.yaml")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. corpus.hours=0.1 featurize.num_workers=1")
    r.add_argument("--from", dest="from_stage", help="first stage to run")
    r.add_argument("--to", dest="to_stage", help="last stage to run")
    r.add_argument("--force", action="store_true", help="rerun the selected stages from scratch")
    r.add_argument("--exp-root", help="write exp/<recipe> under this folder instead of ./exp")
    r.add_argument("--jobs", type=_bounded(int, 1, 64, "--jobs"), default=1,
                   help="run up to N stages whose inputs are ready side by side, each in its own process on "
                        "1/N of the threads (corpus, featurize and latency alone); the thread count moves "
                        "trained weights by float rounding, so compare runs with the same --jobs (default 1: "
                        "in order, in this process)")
    r.set_defaults(func=_cmd_run)

    add_data_commands(sub, _bounded(int, 1, 256, "--workers"))

    d = sub.add_parser("decode", help="batched greedy CTC decoding (or with --lm the LM-fused beam) + WER/CER "
                                      "reports of featurized manifests")
    d.add_argument("--model", required=True,
                   help="a model file (.safetensors) written by a train, distill or qat stage")
    d.add_argument("--out", required=True, help="folder for recogs-/errs-/wer-summary- files")
    d.add_argument("--max-frames", type=_bounded(int, 1, 10**8, "--max-frames"), default=40000,
                   help="padded frames per batch")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to decode")
    d.add_argument("manifests", nargs="+", help="featurize-stage manifests (<split>.jsonl)")
    add_cli_args(d)
    d.set_defaults(func=_cmd_decode)

    e = sub.add_parser("export", help="export a unidirectional model as a streaming ONNX model + tokens.txt")
    e.add_argument("--model", required=True, help="a model file (.safetensors) of a train, distill or qat stage")
    e.add_argument("--out", required=True, help="output folder (model.onnx, tokens.txt)")
    e.add_argument("--chunk-ms", type=_chunk_ms, default=160.0, help="default chunk the runtime feeds (ms)")
    e.add_argument("--delay", type=_delay,
                   help="KD delay in output frames, 0 to 1000 (default: the one the model file records)")
    e.add_argument("--lm", help="onnx: an ARPA file (or a folder with lm.arpa) to ship beside model.onnx, with "
                               "--alpha/--beta/--beam in lm.json")
    e.add_argument("--alpha", type=float, default=0.5, help="with --lm: LM weight")
    e.add_argument("--beta", type=float, default=1.0, help="with --lm: word bonus")
    e.add_argument("--beam", type=_bounded(int, 1, 4096, "--beam"), default=32, help="with --lm: beam width")
    e.add_argument("--no-lm", action="store_true", help=argparse.SUPPRESS)
    e.add_argument("--format", choices=["onnx", "sherpa"], default="onnx",
                   help="onnx: speechkd's runtime; sherpa: sherpa_onnx.OnlineRecognizer.from_nemo_ctc")
    e.add_argument("--adapt-manifest", help="sherpa: manifest of training audio to fit the feature adapter on")
    e.add_argument("--adapt-every", type=_bounded(int, 1, 10**6, "--adapt-every"), default=16, help="sherpa: use every N-th file of that manifest")
    e.add_argument("--int8", action="store_true",
                   help="also write model.int8.onnx (ONNX Runtime dynamic int8: LSTM and MatMul weights per channel)")
    e.set_defaults(func=_cmd_export)

    r = sub.add_parser("report", help="WER report of an experiment: report.{md,html,json} with intervals, "
                                      "paired comparisons, breakdowns and plots")
    r.add_argument("exp_dir", help="experiment folder (exp/<recipe>)")
    r.add_argument("--compare", help="another experiment folder: a delta table with paired significance")
    r.add_argument("--out", help="output folder (default EXP_DIR/report)")
    r.add_argument("--teacher", default="teacher", help="the teacher's stage name")
    r.add_argument("--baseline", default="baseline", help="the no-KD baseline's stage name")
    r.add_argument("--seed", type=int, default=1234, help="bootstrap seed")
    r.add_argument("--rtf", help="a streaming benchmark's JSON (default EXP_DIR/benchmarks/streaming.json if present)")
    r.add_argument("--no-posteriors", action="store_true", help="skip the posteriors plot (runs two models)")
    r.add_argument("--pair", action="append", metavar="A,B", type=lambda x: tuple(x.split(",")),
                   help="also compare model B against model A, paired (repeatable; as the report stage's pairs)")
    r.set_defaults(func=_cmd_report)

    t = sub.add_parser("transcribe", help="stream audio files (or - for raw 16-bit PCM on stdin) through an exported model")
    t.add_argument("--model", required=True, help="model.onnx written by `speechkd export`")
    t.add_argument("files", nargs="+", help="audio files, or - for stdin: a WAV stream (as arecord writes) or raw "
                                            "16-bit little-endian mono PCM at --rate")
    t.add_argument("--chunk-ms", type=_chunk_ms, default=160.0, help="audio per chunk (ms, 1 to 60000)")
    t.add_argument("--threads", type=_threads, default=1, help="ONNX Runtime threads (1 to 256)")
    t.add_argument("--rate", type=_rate, help="stdin without a WAV header: its sample rate (Hz; default the "
                                              "model's)")
    t.add_argument("--no-partials", action="store_true", help="do not show partial results on a terminal")
    add_cli_args(t)
    t.set_defaults(func=_cmd_transcribe)

    ev = sub.add_parser("eval", help="WER/CER of a model (.onnx or .safetensors) on manifests of raw audio")
    ev.add_argument("--model", required=True, help="model.onnx (streaming runtime; a --format sherpa model runs in sherpa-onnx) or "
                    "model.safetensors (offline)")
    ev.add_argument("--out", default="eval", help="folder for recogs-/errs-/wer-summary- files")
    ev.add_argument("--chunk-ms", type=_chunk_ms, default=160.0, help=".onnx only: audio per chunk (ms, 1 to 60000)")
    ev.add_argument("--threads", type=_threads, default=1, help=".onnx only: ONNX Runtime threads (1 to 256)")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=".safetensors only")
    add_cli_args(ev)
    ev.add_argument("manifests", nargs="+", help="NeMo-style JSONL manifests (audio_filepath, duration, text)")
    ev.set_defaults(func=_cmd_eval)

    u = sub.add_parser("upgrade-model", help="turn a model file written before model bundles into one, from the "
                                             "features.json, tokenizer and outputs.json beside it")
    u.add_argument("model", help="model.safetensors (or best.safetensors) of an older speechkd")
    u.add_argument("--out", help="write the bundle here (default: replace the file)")
    u.add_argument("--features", help="features.json with the fbank options (default: the one beside the model)")
    u.add_argument("--tokenizer", help="tokenizer folder (default: the model's folder)")
    u.add_argument("--delay", type=_delay, help="KD delay in output frames (default: the one in the outputs.json beside the model; "
                                                "without that file it must be given)")
    u.set_defaults(func=_cmd_upgrade_model)

    cf = sub.add_parser("config", help="show a stage's config keys with help: config [TYPE] or config RECIPE STAGE")
    cf.add_argument("stage", nargs="?", help="a stage type (train, distill, ...), or a recipe folder")
    cf.add_argument("stage_name", nargs="?", help="with a recipe: one of its stages (e.g. teacher)")
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
    if args.cmd == "run" and not args.recipe:
        parser.error("run: give a recipe folder, e.g. `speechkd run pipelines/quick` (overrides are optional)")
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `speechkd config | head`: the reader left; stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
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
