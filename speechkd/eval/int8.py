"""What int8 changes: an fp32 and an int8 export of one model, run through the streaming runtime on
the same raw audio.

Per model: WER/CER with substitutions, deletions and insertions (int8 errors tend to show up as
deletions, the blank taking over) and the blank rate (share of output frames whose best token is the
blank). ``per_utterance`` holds the ids, references and both hypotheses. Between the two: the largest
per-frame posterior difference ``max |p_fp32 - p_int8|`` over all frames and tokens, its mean over
frames, and how often the best token of a frame differs. An evaluation, so it lives here and reuses
:func:`speechkd.eval.raw.evaluate_manifest`; :mod:`speechkd.quant` keeps the quantization itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np


log = logging.getLogger(__name__)


def compare_int8(fp32: str | Path, int8: str | Path, manifest: str | Path, *, limit: int = 0,
                 chunk_ms: float = 160.0) -> dict[str, Any]:
    """Run both exports over the first ``limit`` rows of ``manifest`` (0 = all) with
    :func:`speechkd.eval.raw.evaluate_manifest`'s loop and compare them (see the module docstring)."""
    from speechkd.eval.raw import evaluate_manifest
    from speechkd.eval.scoring import score
    from speechkd.runtime.recognizer import StreamingRecognizer, transcribe_file

    manifest = Path(manifest)
    recs = {"fp32": StreamingRecognizer(fp32, keep_log_probs=True),
            "int8": StreamingRecognizer(int8, keep_log_probs=True)}
    blank = recs["fp32"].blank
    kept_log_probs: list[dict[str, np.ndarray]] = []

    def both(path, offset=None, duration=None) -> dict[str, str]:
        texts, lps = {}, {}
        for name, rec in recs.items():
            texts[name] = transcribe_file(rec, path, chunk_ms, offset=offset, duration=duration).text
            lps[name] = np.concatenate(rec.log_probs) if rec.log_probs else np.zeros((0, 1), np.float32)
        kept_log_probs.append(lps)  # only when both models ran (a refusal raises before this)
        return texts

    ev = evaluate_manifest(both, manifest, limit=limit, desc=f"fp32 vs int8 {manifest.name}")
    refs, ids = ev["refs"], ev["ids"]
    if not refs:
        raise ValueError(f"{manifest}: no utterance could be compared")
    hyps = {name: [h[name] for h in ev["hyps"]] for name in recs}
    blanks = {"fp32": 0, "int8": 0}
    frames = argmax_diff = 0
    max_diff, sum_frame_max = 0.0, 0.0
    for lps in kept_log_probs:
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
    out: dict[str, Any] = {"utterances": len(refs), "frames": frames, "failed": [f[0] for f in ev["failed"]],
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
