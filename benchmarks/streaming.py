"""Streaming speed, one process, 1 thread, same test utterances for every contender.

Real-time factor (compute seconds / audio seconds; lower is faster) of:
* the teacher in torch on whole utterances (fbank + forward; a BiLSTM cannot stream);
* the student in torch on whole utterances (fbank + forward);
* the student through speechkd's runtime (online fbank + ONNX Runtime chunk by chunk + greedy decoding);
* the student in sherpa-onnx (its own fbank, our sherpa-flavour graph), if exported;
plus the runtime's per-chunk latency (one ONNX call per 150 ms chunk) and an estimate of the concurrent
real-time streams 2 cores sustain (2 / runtime RTF). Medians of --repeats passes. Prints one JSON line last.

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
    ap.add_argument("--utts", type=int, default=60, help="test utterances")
    ap.add_argument("--repeats", type=int, default=3, help="passes; medians are reported")
    ap.add_argument("--quick", action="store_true", help="pipelines/quick (built if missing), few utterances")
    a = ap.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(1)
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
    from speechkd.data.audio import load_audio
    from speechkd.data.manifest import read_manifest
    from speechkd.eval.scoring import greedy_decode
    from speechkd.features.fbank import compute_fbank
    from speechkd.models.io import load_model
    from speechkd.runtime.recognizer import StreamingRecognizer, read_audio

    corpus = exp / "corpus"
    rows = read_manifest(corpus / "test.jsonl")[: a.utts]
    files = [u.resolve_audio(corpus) for u in rows]
    audio_s = sum(u.duration for u in rows)
    waves = [read_audio(f) for f in files]

    def torch_pass(model):
        def run():
            with torch.no_grad():
                for f in files:
                    feats = compute_fbank(load_audio(f))[None]
                    lp, ol = model(feats, torch.tensor([feats.shape[1]]))
                    greedy_decode(lp, ol)
        return run

    onnx_path = exp / "export" / a.student / "model.onnx"
    rec = StreamingRecognizer(onnx_path, num_threads=1)
    chunk_times: list[float] = []

    def runtime_pass():
        for wav, sr in waves:
            rec.reset()
            step = int(sr * 0.16)
            for i in range(0, len(wav), step):
                rec.accept_waveform(wav[i : i + step], sr)
            rec.input_finished()
            chunk_times.extend(rec.chunk_seconds)

    sherpa_dir = exp / "export" / a.student / "sherpa"
    contenders_extra = {}
    if (sherpa_dir / "model.onnx").exists():
        import onnx
        import sherpa_onnx

        pad = int({p.key: p.value for p in onnx.load(str(sherpa_dir / "model.onnx")).metadata_props}["tail_padding_ms"])
        srec = sherpa_onnx.OnlineRecognizer.from_nemo_ctc(tokens=str(sherpa_dir / "tokens.txt"),
                                                          model=str(sherpa_dir / "model.onnx"), num_threads=1)

        def sherpa_pass():
            for wav, sr in waves:
                s = srec.create_stream()
                step = int(sr * 0.16)
                for i in range(0, len(wav), step):
                    s.accept_waveform(sr, wav[i : i + step])
                    while srec.is_ready(s):
                        srec.decode_stream(s)
                s.accept_waveform(sr, np.zeros(int(pad * sr / 1000), np.float32))
                s.input_finished()
                while srec.is_ready(s):
                    srec.decode_stream(s)
                srec.get_result(s)

        contenders_extra["sherpa"] = sherpa_pass

    contenders = {"teacher": torch_pass(load_model(exp / "teacher" / "model.safetensors").eval()),
                  "student_torch": torch_pass(load_model(exp / a.student / "model.safetensors").eval()),
                  "onnx": runtime_pass}
    contenders.update(contenders_extra)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for k, fn in contenders.items():  # warm-up
        fn()
    chunk_times.clear()
    for _ in range(a.repeats):
        for k, fn in contenders.items():  # interleaved, so machine noise hits all alike
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    rtf = {k: statistics.median(v) / audio_s for k, v in times.items()}
    res = {"exp": str(exp), "student": a.student, "utterances": len(rows), "audio_seconds": round(audio_s, 1),
           "threads": 1, "repeats": a.repeats,
           **{f"{k}_rtf": round(v, 5) for k, v in rtf.items()},
           "onnx_speedup_vs_teacher": round(rtf["teacher"] / rtf["onnx"], 2),
           "onnx_speedup_vs_student_torch": round(rtf["student_torch"] / rtf["onnx"], 2),
           "chunk_ms": 150, "chunk_latency_median_ms": round(1000 * statistics.median(chunk_times), 3),
           "chunk_latency_p90_ms": round(1000 * float(np.percentile(chunk_times, 90)), 3),
           "streams_2_cores_estimate": int(2 / rtf["onnx"]),
           "onnx_bytes": onnx_path.stat().st_size,
           "teacher_bytes": (exp / "teacher" / "model.safetensors").stat().st_size}
    if "sherpa" in rtf:
        res["sherpa_speedup_vs_teacher"] = round(rtf["teacher"] / rtf["sherpa"], 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
