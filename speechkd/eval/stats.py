"""Per-utterance error counts and the report's statistics.

:class:`System` scores one model on one split per utterance (word S/D/I and reference words, character
errors and reference characters) after the training normaliser. WER and CER get 95% intervals from a
bootstrap that resamples *speakers* (an utterance of one speaker is not independent of the others);
:func:`paired` compares two systems on the same resampled speakers (Bisani & Ney 2004: the probability
of improvement is the share of resamples in which the second has fewer errors); :func:`gap_closed` is
the share of the baseline-to-teacher gap a student closes. Seeded: the same inputs give the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

RESAMPLES = 1000


@dataclass
class System:
    """One model scored on one split: per-utterance word and character error counts."""

    name: str
    split: str
    ids: list[str]
    refs: list[str]
    hyps: list[str]
    kind: str = "torch"  # torch (decode stage), fp32 / int8 (runtime, export stage)
    errs: np.ndarray = field(default=None)  # (n, 4): S, D, I, reference words
    cerrs: np.ndarray = field(default=None)  # (n, 2): char errors, reference chars
    align: list = field(default=None)  # jiwer word alignment chunks per utterance

    def __post_init__(self):
        import jiwer

        from speechkd.eval.scoring import normalize_refs

        self.refs, self.hyps = normalize_refs(self.refs), normalize_refs(self.hyps)
        w = jiwer.process_words(self.refs, self.hyps)
        c = jiwer.process_characters(self.refs, self.hyps)
        self.align = w.alignments
        rows = []
        for k, chunks in enumerate(w.alignments):
            s = d = i = n = 0
            for ch in chunks:
                if ch.type == "substitute":
                    s += ch.ref_end_idx - ch.ref_start_idx
                elif ch.type == "delete":
                    d += ch.ref_end_idx - ch.ref_start_idx
                elif ch.type == "insert":
                    i += ch.hyp_end_idx - ch.hyp_start_idx
                if ch.type != "insert":
                    n += ch.ref_end_idx - ch.ref_start_idx
            rows.append((s, d, i, n))
        self.errs = np.array(rows, dtype=np.int64).reshape(-1, 4)
        crow = []
        for chunks in c.alignments:
            e = n = 0
            for ch in chunks:
                if ch.type in ("substitute", "delete"):
                    e += ch.ref_end_idx - ch.ref_start_idx
                elif ch.type == "insert":
                    e += ch.hyp_end_idx - ch.hyp_start_idx
                if ch.type != "insert":
                    n += ch.ref_end_idx - ch.ref_start_idx
            crow.append((e, n))
        self.cerrs = np.array(crow, dtype=np.int64).reshape(-1, 2)

    @property
    def word_errors(self) -> np.ndarray:
        return self.errs[:, :3].sum(1)


# -- statistics ---------------------------------------------------------------------------------

def _groups(ids: list[str], speaker: dict[str, str]) -> tuple[np.ndarray, int]:
    names = [speaker.get(u, u) for u in ids]  # no speaker known: the utterance is its own group
    index = {s: k for k, s in enumerate(dict.fromkeys(names))}
    return np.array([index[s] for s in names], dtype=np.int64), len(index)


def _per_group(values: np.ndarray, g: np.ndarray, ng: int) -> np.ndarray:
    out = np.zeros((ng,) + values.shape[1:], dtype=np.float64)
    np.add.at(out, g, values)
    return out


def resample_indices(ng: int, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, ng, size=(resamples, ng))


def rate_ci(err: np.ndarray, ref: np.ndarray, idx: np.ndarray) -> tuple[float, float, float]:
    """Percentage and its 95% bootstrap interval; ``err``/``ref`` per group, ``idx`` the resampled groups."""
    point = 100 * err.sum() / max(ref.sum(), 1)
    r = 100 * err[idx].sum(1) / np.maximum(ref[idx].sum(1), 1)
    lo, hi = np.percentile(r, [2.5, 97.5])
    return round(float(point), 2), round(float(lo), 2), round(float(hi), 2)


def _paired_delta(ea, eb, n, g, ng, idx) -> tuple[float, float, float, float]:
    """``b`` minus ``a`` in percent of the reference units, its 95% interval and P(b better)."""
    ga, gb, gn = _per_group(ea, g, ng), _per_group(eb, g, ng), _per_group(n, g, ng)
    d = 100 * (gb[idx].sum(1) - ga[idx].sum(1)) / np.maximum(gn[idx].sum(1), 1)
    delta = 100 * (eb.sum() - ea.sum()) / max(n.sum(), 1)
    lo, hi = np.percentile(d, [2.5, 97.5])
    return float(delta), float(lo), float(hi), float((d < 0).mean())


def paired(a: System, b: System, speaker: dict[str, str], seed: int) -> dict[str, Any]:
    """WER (and CER) of ``b`` minus that of ``a`` on the utterances both scored, with a speaker-level
    paired bootstrap interval and the probability that ``b`` is better (fewer errors) than ``a``.
    Raises ValueError when the two share no utterance."""
    common = sorted(set(a.ids) & set(b.ids))
    if not common:
        raise ValueError(f"{a.name} and {b.name} share no utterance on {a.split}: nothing to compare")
    ia = {u: k for k, u in enumerate(a.ids)}
    ib = {u: k for k, u in enumerate(b.ids)}
    ka = np.array([ia[u] for u in common])
    kb = np.array([ib[u] for u in common])
    g, ng = _groups(common, speaker)
    idx = resample_indices(ng, seed)
    n = a.errs[ka, 3].astype(np.float64)
    delta, lo, hi, p_better = _paired_delta(a.word_errors[ka].astype(np.float64),
                                            b.word_errors[kb].astype(np.float64), n, g, ng, idx)
    nc = a.cerrs[ka, 1].astype(np.float64)
    cdelta, clo, chi, cp = _paired_delta(a.cerrs[ka, 0].astype(np.float64), b.cerrs[kb, 0].astype(np.float64), nc,
                                         g, ng, idx)
    noise = lo <= 0 <= hi
    verdict = ("within noise (the interval holds 0)" if noise else
               ("better" if hi < 0 else "worse") + f" (p = {p_better:.3f} of improvement)")
    cnoise = clo <= 0 <= chi
    return {"a": a.name, "b": b.name, "split": a.split, "utterances": len(common), "speakers": ng,
            "wer_a": round(100 * float(a.word_errors[ka].sum()) / max(n.sum(), 1), 2),
            "wer_b": round(100 * float(b.word_errors[kb].sum()) / max(n.sum(), 1), 2),
            "delta": round(delta, 2), "ci": [round(lo, 2), round(hi, 2)],
            "p_improvement": round(p_better, 4), "within_noise": bool(noise), "verdict": verdict,
            "cer_a": round(100 * float(a.cerrs[ka, 0].sum()) / max(nc.sum(), 1), 2),
            "cer_b": round(100 * float(b.cerrs[kb, 0].sum()) / max(nc.sum(), 1), 2),
            "cer_delta": round(cdelta, 2), "cer_ci": [round(clo, 2), round(chi, 2)],
            "cer_p_improvement": round(cp, 4), "cer_within_noise": bool(cnoise),
            "cer_verdict": "within noise" if cnoise else ("better" if chi < 0 else "worse")}


def gap_closed(base: np.ndarray, teach: np.ndarray, stud: np.ndarray, idx: np.ndarray) -> dict[str, Any]:
    """Share of the baseline-to-teacher error gap a student closes, from per-group error counts, with a
    bootstrap interval; when the teacher does not beat the baseline beyond noise there is no gap to share
    out, and the result says so (``status``, ``note``) instead of giving a share."""
    gap = base.sum() - teach.sum()
    den = base[idx].sum(1) - teach[idx].sum(1)
    glo, ghi = np.percentile(den, [2.5, 97.5]) if den.size else (0.0, 0.0)
    if gap <= 0:
        return {"status": "teacher_not_better", "note": "no gap: the teacher is not better"}
    if glo <= 0:
        return {"status": "gap_within_noise", "note": "no share: the gap is within noise"}
    ok = den > 0  # resamples without a gap say nothing about the share
    shares = (base[idx].sum(1) - stud[idx].sum(1))[ok] / den[ok]
    lo, hi = np.percentile(shares, [2.5, 97.5])
    return {"status": "ok", "value": round(100 * float((base.sum() - stud.sum()) / gap), 1),
            "ci": [round(100 * float(lo), 1), round(100 * float(hi), 1)]}
