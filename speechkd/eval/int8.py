"""What int8 changes: an fp32 and an int8 export of one model, run through the streaming runtime on
the same raw audio.

Per model: WER/CER with substitutions, deletions and insertions (int8 errors tend to show up as
deletions, the blank taking over) and the blank rate (share of output frames whose best token is the
blank). ``per_utterance`` holds the ids, references and both hypotheses. Between the two: the largest per-frame posterior difference ``max |p_fp32 - p_int8|`` over all
frames and tokens, its mean over frames, and how often the best token of a frame differs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from speechkd.data.manifest import read_manifest
from speechkd.utils import progress

log = logging.getLogger(__name__)


def compare_int8(fp32: str | Path, int8: str | Path, manifest: str | Path, *, limit: int = 0,
                 chunk_ms: float = 160.0) -> dict[str, Any]:
    from speechkd.eval.scoring import score
    from speechkd.runtime.recognizer import StreamingRecognizer, transcribe_file

    manifest = Path(manifest)
    rows = read_manifest(manifest)
    rows = [u for u in rows if u.offset is None][: limit or None]
    recs = {"fp32": StreamingRecognizer(fp32, keep_log_probs=True),
            "int8": StreamingRecognizer(int8, keep_log_probs=True)}
    blank = recs["fp32"].blank
    refs: list[str] = []
    ids: list[str] = []
    hyps: dict[str, list[str]] = {"fp32": [], "int8": []}
    blanks = {"fp32": 0, "int8": 0}
    frames = argmax_diff = 0
    max_diff, sum_frame_max, failed = 0.0, 0.0, []
    for u in progress(rows, desc=f"fp32 vs int8 {manifest.name}", unit="utt"):
        path = u.resolve_audio(manifest.parent)
        lps = {}
        try:
            for name, rec in recs.items():
                hyps[name].append(transcribe_file(rec, path, chunk_ms).text)
                lps[name] = np.concatenate(rec.log_probs) if rec.log_probs else np.zeros((0, 1), np.float32)
        except ValueError as e:
            log.warning("skipping %s: %s", u.id, e)
            failed.append(u.id)
            for name in hyps:
                del hyps[name][len(refs):]
            continue
        refs.append(u.text)
        ids.append(u.id)
        a, b = lps["fp32"], lps["int8"]
        if len(a):
            pa, pb = np.exp(a), np.exp(b)
            d = np.abs(pa - pb).max(axis=1)
            max_diff = max(max_diff, float(d.max()))
            sum_frame_max += float(d.sum())
            ka, kb = a.argmax(1), b.argmax(1)
            argmax_diff += int((ka != kb).sum())
            blanks["fp32"] += int((ka == blank).sum())
            blanks["int8"] += int((kb == blank).sum())
            frames += len(a)
    if not refs:
        raise ValueError(f"{manifest}: no utterance could be compared")
    out: dict[str, Any] = {"utterances": len(refs), "frames": frames, "failed": failed,
                           "per_utterance": {"ids": ids, "refs": refs, "fp32": hyps["fp32"], "int8": hyps["int8"]}}
    for name in ("fp32", "int8"):
        s = score(refs, hyps[name])
        out[name] = {k: s[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions")}
        out[name]["blank_rate"] = round(blanks[name] / max(1, frames), 4)
    out.update(max_posterior_diff=float(f"{max_diff:.3g}"),
               mean_frame_max_posterior_diff=float(f"{sum_frame_max / max(1, frames):.3g}"),
               argmax_changed_frames=float(f"{argmax_diff / max(1, frames):.3g}"),
               wer_delta=round(out["int8"]["wer"] - out["fp32"]["wer"], 2))
    return out
