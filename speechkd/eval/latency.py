"""Token emission latency of a streaming model, measured against a forced alignment.

For each utterance, the reference tokens are force-aligned (Viterbi, :func:`speechkd.kernels.viterbi_align`)
to an offline model's posteriors (the teacher); a token "ends" at the last output frame of its aligned
span. The streaming model's emitted tokens (from the runtime, chunk by chunk) are matched to the
reference in order (edit-distance alignment); for each matched token, the latency is the output frame at
which the stream emitted it minus the frame where it ends, in ms. The first-partial latency is the audio
time at which the runtime's result first holds text minus the end of the first aligned token: it adds the
chunking to the model's own delay.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np
import torch

import speechkd.kernels as K
from speechkd.utils import progress


def token_ends(teacher, feats: np.ndarray, tokens: list[int], blank: int = 0) -> np.ndarray | None:
    """Last output frame of each reference token in the teacher's Viterbi alignment (None if infeasible)."""
    with torch.no_grad():
        lp, ol = teacher(torch.from_numpy(np.array(feats, dtype=np.float32))[None], torch.tensor([feats.shape[0]]))
    if not tokens:
        return None
    al = K.viterbi_align(lp.float(), torch.tensor([tokens]), ol, torch.tensor([len(tokens)]), blank=blank)
    spans = np.asarray(al.spans)[0]
    if not np.isfinite(float(np.asarray(al.scores)[0])):
        return None
    return spans[:, 1] - 1


def _share(n: int, part: tuple[int, int]) -> range:
    """Utterance indices ``i < n`` with ``i % world == rank`` (``part = (rank, world)``)."""
    return range(part[0], n, part[1])


def alignment_ends(teacher, ds, *, limit: int = 0, blank: int = 0, part: tuple[int, int] = (0, 1)
                   ) -> dict[str, np.ndarray]:
    """Token end frames (teacher output frames) of the first ``limit`` utterances of ``ds`` (0 = all), by id;
    utterances whose alignment is infeasible are left out. Computed once and shared by every model measured.
    ``part = (rank, world)``: only every ``world``-th utterance from ``rank`` (a share of a distributed run)."""
    n = len(ds) if not limit else min(limit, len(ds))
    out = {}
    for i in progress(_share(n, part), desc="align", unit="utt", disable=part[0] != 0):
        uid, feats, toks, _ = ds[i]
        ends = token_ends(teacher, feats, toks, blank)
        if ends is not None:
            out[uid] = ends
    return out


def measure(recognizer, ends_by_id: dict[str, np.ndarray], teacher_frame_ms: float, ds, audio_paths: dict[str, Path],
            *, limit: int = 0, chunk_ms: float = 160.0) -> dict[str, Any]:
    """Latency figures (ms) of ``recognizer`` (a :class:`speechkd.runtime.StreamingRecognizer`) on the first
    ``limit`` utterances of the featurized dataset ``ds``: ``ends_by_id`` from :func:`alignment_ends` (in
    teacher output frames of ``teacher_frame_ms``); ``audio_paths`` maps ids to their audio files."""
    raw = measure_part(recognizer, ends_by_id, teacher_frame_ms, ds, audio_paths, limit=limit, chunk_ms=chunk_ms)
    return summarize([raw], recognizer.frame_ms, chunk_ms)


def measure_part(recognizer, ends_by_id, teacher_frame_ms, ds, audio_paths, *, limit: int = 0,
                 chunk_ms: float = 160.0, part: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """:func:`measure`'s raw latencies on a share of the utterances (``part = (rank, world)``), for
    :func:`summarize` to merge."""
    from speechkd.runtime.recognizer import read_audio

    frame_ms = recognizer.frame_ms
    hop_ms = float(recognizer.fbank["frame_shift_ms"])
    lat, first = [], []
    n = len(ds) if not limit else min(limit, len(ds))
    for i in progress(_share(n, part), desc="latency", unit="utt", disable=part[0] != 0):
        uid, _, toks, _ = ds[i]
        ends = ends_by_id.get(uid)
        if ends is None:
            continue
        end_ms = ends * teacher_frame_ms
        wav, sr = read_audio(audio_paths[uid])
        recognizer.reset()
        step = max(1, int(sr * chunk_ms / 1000))
        first_at = None
        for j in range(0, len(wav), step):
            recognizer.accept_waveform(wav[j : j + step], sr)
            if first_at is None and recognizer.result().tokens:
                first_at = min(len(wav), j + step) / sr * 1000
        res = recognizer.input_finished()
        if first_at is None and res.tokens:
            first_at = len(wav) / sr * 1000 + recognizer.flush_frames * hop_ms
        emitted = [round(t / frame_ms) for t in res.times_ms]
        sm = difflib.SequenceMatcher(None, toks, res.tokens, autojunk=False)
        for blk in sm.get_matching_blocks():
            for k in range(blk.size):
                lat.append(emitted[blk.b + k] * frame_ms - end_ms[blk.a + k])
        if first_at is not None:
            first.append(first_at - (end_ms[0] + teacher_frame_ms))
    return {"lat": lat, "first": first, "utterances": n}


def summarize(parts: list[dict[str, Any]], frame_ms: float, chunk_ms: float) -> dict[str, Any]:
    """The figures of :func:`measure` from the raw latencies of every share (percentiles do not depend on
    the order, so any split of the utterances gives one process's figures)."""
    lat = [x for p in parts for x in p["lat"]]
    first = [x for p in parts for x in p["first"]]
    n = parts[0]["utterances"]
    pct = lambda v, q: round(float(np.percentile(v, q)), 1) if v else None
    return {"tokens_matched": len(lat), "utterances": n, "emission_median_ms": pct(lat, 50),
            "emission_p90_ms": pct(lat, 90), "first_partial_median_ms": pct(first, 50),
            "first_partial_p90_ms": pct(first, 90), "chunk_ms": chunk_ms, "frame_ms": frame_ms}
