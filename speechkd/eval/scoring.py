"""Greedy CTC decoding, WER/CER (jiwer) and icefall-style report files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from speechkd.utils import atomic_write_text


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path of ``(batch, T, vocab)`` log-probs: argmax, merge repeats, drop blanks."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for b in range(best.shape[0]):
        seq = best[b, : int(lengths[b])]
        if seq.numel() == 0:
            out.append([])
            continue
        keep = torch.ones_like(seq, dtype=torch.bool)
        keep[1:] = seq[1:] != seq[:-1]
        seq = seq[keep]
        out.append(seq[seq != blank].tolist())
    return out


def normalize_refs(refs: list[str]) -> list[str]:
    """References through the same normalisation as training text (what the importers apply), so
    ``"H."`` scores like ``"h"``. A non-string reference is an error naming its position."""
    from speechkd.text.normalize import normalize_text

    out = []
    for i, r in enumerate(refs):
        if not isinstance(r, str):
            raise ValueError(f"reference {i + 1} is a {type(r).__name__}, not text")
        out.append(normalize_text(r))
    return out


def score(refs: list[str], hyps: list[str]) -> dict[str, Any]:
    """WER and CER in percent, with substitution/deletion/insertion counts (jiwer). References and
    hypotheses are normalised first (:func:`normalize_refs`)."""
    return _score(normalize_refs(refs), normalize_refs(hyps))


def _score(refs: list[str], hyps: list[str]) -> dict[str, Any]:
    """:func:`score` of texts already normalised."""
    import jiwer

    if not refs:
        raise ValueError("nothing to score")
    if not any(refs):
        raise ValueError("every reference is empty after normalisation; nothing to score")
    w = jiwer.process_words(refs, hyps)
    c = jiwer.process_characters(refs, hyps)
    nref = w.hits + w.substitutions + w.deletions
    return {
        "wer": round(100 * w.wer, 2), "cer": round(100 * c.cer, 2),
        "substitutions": w.substitutions, "deletions": w.deletions, "insertions": w.insertions,
        "ref_words": nref, "utterances": len(refs),
        "char_substitutions": c.substitutions, "char_deletions": c.deletions, "char_insertions": c.insertions,
    }


def _aligned_line(ref: str, hyp: str) -> str:
    import jiwer

    out = jiwer.process_words(ref, hyp)
    r, h = out.references[0], out.hypotheses[0]
    parts = []
    for ch in out.alignments[0]:
        if ch.type == "equal":
            parts.extend(r[ch.ref_start_idx : ch.ref_end_idx])
        elif ch.type == "substitute":
            parts.extend(f"({a}->{b})" for a, b in zip(r[ch.ref_start_idx : ch.ref_end_idx],
                                                      h[ch.hyp_start_idx : ch.hyp_end_idx]))
        elif ch.type == "delete":
            parts.extend(f"({a}->*)" for a in r[ch.ref_start_idx : ch.ref_end_idx])
        else:
            parts.extend(f"(*->{b})" for b in h[ch.hyp_start_idx : ch.hyp_end_idx])
    return " ".join(parts)


def report_names(manifests: list) -> list[str]:
    """Report names for several manifests: the file stem, prefixed with as many parent folder names as it
    takes to tell them apart (``a/test.jsonl``, ``b/test.jsonl`` -> ``a_test``, ``b_test``), so no
    report overwrites another. The same manifest given twice is an error."""
    paths = [Path(m) for m in manifests]
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        dup = next(str(p) for p, r in zip(paths, resolved) if resolved.count(r) > 1)
        raise ValueError(f"{dup}: the same manifest is given twice")
    depth = 0
    while True:
        names = ["_".join([*r.parent.parts[len(r.parent.parts) - depth:], r.stem]) if depth else r.stem
                 for r in resolved]
        if len(set(names)) == len(names):
            return names
        depth += 1


def write_reports(out_dir: str | Path, name: str, ids: list[str], refs: list[str], hyps: list[str],
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``recogs-<name>.txt`` and ``errs-<name>.txt`` (icefall's layout, for reading),
    ``results-<name>.jsonl`` (one ``{"id", "ref", "hyp"}`` per utterance, normalised: what the report
    reads) and ``wer-summary-<name>.json``; return the summary."""
    out_dir = Path(out_dir)
    refs, hyps = normalize_refs(refs), normalize_refs(hyps)
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    summary = {**_score(refs, hyps), **(extra or {})}
    recogs = "".join(f"{ids[i]}:\tref={refs[i].split()}\n{ids[i]}:\thyp={hyps[i].split()}\n" for i in order)
    atomic_write_text(out_dir / f"recogs-{name}.txt", recogs)
    atomic_write_text(out_dir / f"results-{name}.jsonl",
                      "".join(json.dumps({"id": ids[i], "ref": refs[i], "hyp": hyps[i]}) + "\n" for i in order))
    lines = [f"%WER = {summary['wer']:.2f}", f"%CER = {summary['cer']:.2f}",
             f"Errors: {summary['insertions']} insertions, {summary['deletions']} deletions, "
             f"{summary['substitutions']} substitutions, over {summary['ref_words']} reference words "
             f"({summary['utterances']} utterances)", "", "PER-UTT DETAILS: corr or (ref->hyp)"]
    lines += [f"{ids[i]}:\t{_aligned_line(refs[i], hyps[i])}" for i in order]
    atomic_write_text(out_dir / f"errs-{name}.txt", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / f"wer-summary-{name}.json", json.dumps(summary, indent=1) + "\n")
    return summary
