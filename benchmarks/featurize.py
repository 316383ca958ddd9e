"""Featurization speed as a multiple of real time, against librosa on the same audio.

Contenders (one process, same files, threads pinned to 1 per process, median of --repeats):
  * ours, 1 process: soundfile load + 80-dim kaldi fbank (``featurize_utterance``);
  * ours, the ``featurize`` stage end to end (shards, manifests, CMVN) with one worker per core;
  * peer: soundfile load + ``librosa.feature.melspectrogram`` (80 mels, 25/10 ms) + log.

Target: the stage at >= 200x real time on 2 cores. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    ap.add_argument("--hours", type=float, help="hours of synth-en audio to featurize (default 0.05 quick, 0.5 full)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", default=str(REPO / "exp" / "bench"), help="where the benchmark corpus is kept")
    a = ap.parse_args()
    hours = a.hours or (0.05 if a.quick else 0.5)

    import numpy as np
    import soundfile as sf
    import torch

    from speechkd.utils import set_threads
    set_threads(1)  # numba first: its pool would reset torch's threads
    from speechkd.config import from_dict
    from speechkd.data.featurize import featurize_utterance
    from speechkd.data.manifest import read_manifest
    from speechkd.data.synth import build_corpus, load_spec
    from speechkd.stages import featurize
    from speechkd.stages.runner import StageContext
    from speechkd.utils import setup_logging

    setup_logging()
    corpus = Path(a.cache) / f"featurize-corpus-{hours:g}h"
    if not (corpus / "corpus.json").exists():
        build_corpus(load_spec(hours=hours), corpus, progress=False)
    utts = [(u, corpus / u.audio_filepath) for s in ("train", "dev", "test") for u in read_manifest(corpus / f"{s}.jsonl")]
    audio_s = sum(u.duration for u, _ in utts)
    cfg = from_dict(featurize.Config, {"shard_size": 200})

    def ours_1proc() -> None:
        for u, p in utts:
            featurize_utterance(u, p, cfg)

    def peer_librosa() -> None:
        import librosa

        for _, p in utts:
            wav, sr = sf.read(str(p), dtype="float32")
            m = librosa.feature.melspectrogram(y=wav, sr=sr, n_fft=512, win_length=400, hop_length=160, n_mels=80,
                                               fmin=20, center=False)
            np.log(np.maximum(m, 1e-10))

    def ours_stage() -> None:
        tmp = Path(tempfile.mkdtemp(dir=a.cache))
        try:
            (tmp / "exp").mkdir()
            src = tmp / "exp" / "corpus"
            shutil.copytree(corpus, src, ignore=shutil.ignore_patterns("audio"))
            (src / "audio").symlink_to(corpus / "audio")
            (src / ".done").write_text("{}")
            out = tmp / "exp" / "featurize"
            out.mkdir()
            featurize.run(cfg, StageContext("bench", tmp / "exp", out, 0, REPO))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def timed(fn) -> float:
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    ours_1proc()  # warm caches (file system, librosa/numba JIT)
    peer_librosa()
    t_ours = timed(ours_1proc)
    t_peer = timed(peer_librosa)
    t_stage = timed(ours_stage)
    res = {
        "audio_seconds": round(audio_s, 1), "utterances": len(utts), "cores": os.cpu_count(), "repeats": a.repeats,
        "ours_1proc_x_real_time": round(audio_s / t_ours, 1),
        "librosa_1proc_x_real_time": round(audio_s / t_peer, 1),
        "ratio_ours_vs_librosa_1proc": round(t_peer / t_ours, 2),
        "stage_x_real_time": round(audio_s / t_stage, 1),
        "target_stage_x_real_time": 200, "meets_target": audio_s / t_stage >= 200,
    }
    print(f"ours (1 proc)   {res['ours_1proc_x_real_time']:8.1f}x real time")
    print(f"librosa (1 proc){res['librosa_1proc_x_real_time']:8.1f}x real time")
    print(f"featurize stage {res['stage_x_real_time']:8.1f}x real time ({os.cpu_count()} cores)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
