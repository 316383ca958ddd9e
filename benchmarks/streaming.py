"""Streaming speed, one process, 1 thread, same test utterances for every contender.

Every contender starts from the same decoded waveforms (file reading is timed for none). Real-time factor
(compute seconds / audio seconds; lower is faster) of:
* the teacher in torch on whole utterances (fbank + forward; a BiLSTM cannot stream);
* the student in torch on whole utterances (fbank + forward);
* the teacher's forward alone on features computed beforehand (``teacher_network_rtf``);
* the student through speechkd's runtime (online fbank + ONNX Runtime chunk by chunk + greedy decoding);
* the int8 student (``model.int8.onnx``, ONNX Runtime dynamic int8; the QAT student's by default) through
  the same runtime, greedy and (``lm_rtf``) with the word LM shipped beside it fused into the beam search;
* the student in sherpa-onnx (its own fbank, our sherpa-flavour graph), fp32 and int8, if exported;
plus the runtime's per-chunk latency (one ONNX call per 160 ms chunk), an estimate of the concurrent
real-time streams 2 cores sustain (2 / runtime RTF), and where the runtime's time goes: the online fbank
alone (``fbank_rtf``) and the ONNX calls alone (``*_network_rtf``). Medians of --repeats passes, the
contenders interleaved. Prints one JSON line last and saves it as ``<exp>/benchmarks/streaming.json``
(which `speechkd report` reads, and the report stage when its `rtf` names it).

    python benchmarks/streaming.py            # exp/default (after make demo)
    python benchmarks/streaming.py --quick    # pipelines/quick, built if missing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", default=str(REPO / "exp" / "default"), help="experiment folder (after make demo)")
    ap.add_argument("--student", default="student_frame", help="exported student")
    ap.add_argument("--int8-student", help="exported model whose model.int8.onnx is timed "
                                           "(default: <student>_qat if exported, else <student>)")
    ap.add_argument("--utts", type=int, default=60, help="test utterances")
    ap.add_argument("--repeats", type=int, default=3, help="passes; medians are reported")
    ap.add_argument("--quick", action="store_true", help="pipelines/quick (built if missing), few utterances")
    a = ap.parse_args()
    import numpy as np
    import torch

    from speechkd.utils import set_threads
    set_threads(1)  # numba first: its pool would reset torch's threads
    exp = Path(a.exp)
    if a.quick:
        exp = REPO / "exp" / "quick"
        if not (exp / "export" / ".done").exists():
            import os

            from speechkd.stages.runner import run_recipe

            os.chdir(REPO)
            run_recipe(REPO / "pipelines" / "quick", to_stage="export")
        a.utts, a.repeats = min(a.utts, 8), min(a.repeats, 2)
    if not (exp / "export" / ".done").exists():
        sys.exit(f"{exp / 'export'} not found: run `make demo` first (or use --quick)")
    from speechkd.data.manifest import read_manifest
    from speechkd.eval.scoring import greedy_decode
    from speechkd.features.fbank import compute_fbank
    from speechkd.models.bundle import load_bundle
    from speechkd.runtime.recognizer import StreamingRecognizer, read_audio

    corpus = exp / "corpus"
    rows = read_manifest(corpus / "test.jsonl")[: a.utts]
    files = [u.resolve_audio(corpus) for u in rows]
    audio_s = sum(u.duration for u in rows)
    waves = [read_audio(f) for f in files]

    def torch_pass(bundle):  # from the same decoded waveforms the runtime gets, with the model's own fbank
        def run():
            with torch.no_grad():
                for wav, _ in waves:
                    feats = compute_fbank(wav, bundle.fbank)[None]
                    lp, ol = bundle.model(feats, torch.tensor([feats.shape[1]]))
                    greedy_decode(lp, ol)
        return run

    onnx_path = exp / "export" / a.student / "model.onnx"
    int8_student = a.int8_student or (f"{a.student}_qat" if (exp / "export" / f"{a.student}_qat").exists()
                                      else a.student)
    int8_path = exp / "export" / int8_student / "model.int8.onnx"
    chunk_times: dict[str, list[float]] = {"onnx": [], "int8": []}

    def runtime_pass(path, sink, lm=None):
        rec = StreamingRecognizer(path, num_threads=1, lm=lm)

        def run():
            for wav, sr in waves:
                rec.reset()
                step = int(sr * 0.16)
                for i in range(0, len(wav), step):
                    rec.accept_waveform(wav[i : i + step], sr)
                rec.input_finished()
                sink.extend(rec.chunk_seconds)
        return run, rec

    onnx_pass, rec = runtime_pass(onnx_path, chunk_times["onnx"])

    def fbank_pass():  # the runtime's online fbank alone, fed the same 160 ms pieces
        for wav, sr in waves:
            fb = rec._new_fbank()
            step = int(sr * 0.16)
            done = 0
            for i in range(0, len(wav), step):  # each frame read once, then popped, as the runtime does
                fb.accept_waveform(float(sr), wav[i : i + step].tolist())
                ready = fb.num_frames_ready
                np.array([fb.get_frame(t) for t in range(done, ready)], np.float32)
                fb.pop(ready - done)
                done = ready

    sherpa_dir = exp / "export" / a.student / "sherpa"
    contenders_extra = {}
    if int8_path.exists():
        contenders_extra["int8"] = runtime_pass(int8_path, chunk_times["int8"])[0]
        if (int8_path.parent / "lm.arpa").exists():  # the same, decoding with the LM-fused beam shipped beside it
            contenders_extra["int8_lm"] = runtime_pass(int8_path, [], lm=True)[0]
    contenders_extra["fbank"] = fbank_pass

    def sherpa_contender(model):
        from speechkd.eval.raw import sherpa_decoder

        decode = sherpa_decoder(model, chunk_ms=160.0, num_threads=1)

        def sherpa_pass():
            for wav, sr in waves:
                decode(wav, sr)
        return sherpa_pass

    for name, f in (("sherpa", "model.onnx"), ("sherpa_int8", "model.int8.onnx")):
        if (sherpa_dir / f).exists():
            contenders_extra[name] = sherpa_contender(sherpa_dir / f)

    tb = load_bundle(exp / "teacher" / "model.safetensors")
    teacher = tb.model
    teacher_feats = [compute_fbank(wav, tb.fbank)[None] for wav, _ in waves]

    def teacher_network():  # the teacher's forward alone, on features computed beforehand
        with torch.no_grad():
            for feats in teacher_feats:
                teacher(feats, torch.tensor([feats.shape[1]]))

    contenders_extra["teacher_network"] = teacher_network
    contenders = {"teacher": torch_pass(tb),
                  "student_torch": torch_pass(load_bundle(exp / a.student / "model.safetensors")),
                  "onnx": onnx_pass}
    contenders.update(contenders_extra)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for k, fn in contenders.items():  # warm-up
        fn()
    for v in chunk_times.values():
        v.clear()
    for _ in range(a.repeats):
        for k, fn in contenders.items():  # interleaved, so machine noise hits all alike
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    rtf = {k: statistics.median(v) / audio_s for k, v in times.items()}
    ct = chunk_times["onnx"]
    res = {"exp": str(exp), "student": a.student, "utterances": len(rows), "audio_seconds": round(audio_s, 1),
           "threads": 1, "repeats": a.repeats,
           **{f"{k}_rtf": round(v, 5) for k, v in rtf.items()},
           "onnx_network_rtf": round(sum(ct) / a.repeats / audio_s, 5),
           "onnx_speedup_vs_teacher": round(rtf["teacher"] / rtf["onnx"], 2),
           "onnx_speedup_vs_student_torch": round(rtf["student_torch"] / rtf["onnx"], 2),
           "chunk_ms": 160, "chunk_latency_median_ms": round(1000 * statistics.median(ct), 3),
           "chunk_latency_p90_ms": round(1000 * float(np.percentile(ct, 90)), 3),
           "streams_2_cores_estimate": int(2 / rtf["onnx"]),
           "onnx_bytes": onnx_path.stat().st_size,
           "teacher_bytes": (exp / "teacher" / "model.safetensors").stat().st_size}
    if "int8" in rtf:
        c8 = chunk_times["int8"]
        res.update(int8_student=int8_student, int8_speedup_vs_fp32=round(rtf["onnx"] / rtf["int8"], 2),
                   int8_speedup_vs_teacher=round(rtf["teacher"] / rtf["int8"], 2),
                   int8_network_rtf=round(sum(c8) / a.repeats / audio_s, 5),
                   int8_network_speedup_vs_fp32=round(sum(ct) / sum(c8), 2),
                   int8_network_speedup_vs_teacher_network=round(rtf["teacher_network"] * a.repeats * audio_s / sum(c8), 2),
                   int8_chunk_latency_median_ms=round(1000 * statistics.median(c8), 3),
                   int8_bytes=int8_path.stat().st_size,
                   size_ratio_fp32_over_int8=round(onnx_path.stat().st_size / int8_path.stat().st_size, 2),
                   size_ratio_teacher_over_int8=round(res["teacher_bytes"] / int8_path.stat().st_size, 2))
    if "int8_lm" in rtf:  # the name for it: the int8 student decoding with the LM in the runtime
        res.update(lm_rtf=res.pop("int8_lm_rtf"), lm_cost_over_greedy=round(rtf["int8_lm"] / rtf["int8"], 2))
    if "sherpa" in rtf:
        res["sherpa_speedup_vs_teacher"] = round(rtf["teacher"] / rtf["sherpa"], 2)
    # `speechkd report` reads RTF from here; the report stage when its rtf names this file
    out = exp / "benchmarks" / "streaming.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
