"""WER reports a team decides from: one experiment folder -> ``report.json``, ``report.md`` and a
self-contained ``report.html`` (plots embedded as PNG data URIs, no network references).

This module assembles the report: per model and split, WER and CER with speaker-bootstrap intervals and
the share of the teacher gap closed; paired comparisons (every student against the baseline, every int8
export against its fp32 source); breakdowns by voice model, engine, speaker and length; top errors and
worst utterances; the headline recommendation. The inputs come from :mod:`speechkd.eval.collect`, the
statistics from :mod:`speechkd.eval.stats`, the Markdown, HTML and plots from :mod:`speechkd.eval.render`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from speechkd.eval.collect import SEARCHES, Experiment, collect, corpus_summary
from speechkd.eval.stats import (RESAMPLES, System, _groups, _per_group, gap_closed, paired, rate_ci,  # noqa: F401
                                 resample_indices)

log = logging.getLogger(__name__)

LENGTH_BINS = ((1, 3), (4, 7), (8, 12), (13, 10**6))


# -- the report ------------------------------------------------------------------------------------

def build(exp: str | Path, *, teacher: str = "teacher", baseline: str = "baseline", seed: int = 1234,
          compare: str | Path | None = None, stages: set[str] | None = None,
          rtf: str | Path | None = None, pairs: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict (what ``report.json`` holds), from the stage folders of ``exp`` named in
    ``stages`` (``None``: all) and the streaming benchmark ``rtf`` (see :func:`speechkd.eval.collect.collect`).
    ``pairs``: more paired comparisons ``(a, b)`` of two models (and of their LM rows), on every split both have."""
    from speechkd.eval.scoring import _aligned_line

    e = collect(exp, stages, rtf)
    speaker = {u: v["speaker"] for u, v in e.info.items() if "speaker" in v}
    splits = sorted({s for _, s in e.systems})
    rep: dict[str, Any] = {"exp": str(e.root), "seed": seed, "bootstrap": {"resamples": RESAMPLES, "unit": "speaker",
                                                                          "interval": "95% percentile"},
                           "teacher": teacher, "baseline": baseline, "splits": splits, "models": {}, "paired": [],
                           "breakdowns": {}, "top_errors": {}, "worst_utterances": {}, "absent": list(e.absent)}
    if not speaker:
        rep["absent"].append("no speaker labels in the corpus manifests: intervals resample utterances")
    order = sorted(e.models, key=lambda n: (n != teacher, n != baseline, e.models[n]["kind"] != "torch", n))
    for name in order:  # teacher, baseline, the other torch models, then the runtime fp32/int8 rows
        rep["models"][name] = {**e.models[name], "splits": {}}
    for (name, split), s in sorted(e.systems.items()):
        g, ng = _groups(s.ids, speaker)
        idx = resample_indices(ng, seed)
        we, wn = _per_group(s.word_errors.astype(float), g, ng), _per_group(s.errs[:, 3].astype(float), g, ng)
        ce, cn = _per_group(s.cerrs[:, 0].astype(float), g, ng), _per_group(s.cerrs[:, 1].astype(float), g, ng)
        wer, wlo, whi = rate_ci(we, wn, idx)
        cer, clo, chi = rate_ci(ce, cn, idx)
        row = {"wer": wer, "wer_ci": [wlo, whi], "cer": cer, "cer_ci": [clo, chi],
               "substitutions": int(s.errs[:, 0].sum()), "deletions": int(s.errs[:, 1].sum()),
               "insertions": int(s.errs[:, 2].sum()), "ref_words": int(s.errs[:, 3].sum()),
               "utterances": len(s.ids), "speakers": ng}
        kind = e.models[name]["kind"]
        suffix = f" [{kind}]" if kind in SEARCHES else ""  # a search's rows against the teacher's and baseline's
        t, b = e.systems.get((teacher + suffix, split)), e.systems.get((baseline + suffix, split))
        source = e.models[name].get("source", name)
        if t is not None and b is not None and source not in (teacher, baseline) and t.ids == s.ids == b.ids:
            for unit, get, mine in (("", lambda x: x.word_errors, we), ("cer_", lambda x: x.cerrs[:, 0], ce)):
                gc = gap_closed(_per_group(get(b).astype(float), g, ng), _per_group(get(t).astype(float), g, ng),
                                mine, idx)
                if gc["status"] == "ok":
                    row[f"{unit}gap_closed"], row[f"{unit}gap_closed_ci"] = gc["value"], gc["ci"]
                else:
                    row[f"{unit}gap_closed_note"] = gc["note"]
        rep["models"][name]["splits"][split] = row
    # paired comparisons: every student against the baseline; every int8 model against its fp32 source; every
    # search (LM) row against the same model's greedy row, and a student's against the baseline's
    for (name, split), s in sorted(e.systems.items()):
        info = e.models[name]
        if info["kind"] == "torch" and name not in (teacher, baseline) and (baseline, split) in e.systems \
                and not info.get("bidirectional"):
            _add_paired(rep, e.systems[(baseline, split)], s, speaker, seed)
        if info["kind"] == "int8":
            src = f"{info['source']} [fp32 runtime]"
            if (src, split) in e.systems:
                _add_paired(rep, e.systems[(src, split)], s, speaker, seed)
        if info["kind"] in SEARCHES:  # the search against greedy decoding of the same model; students also
            if (info["source"], split) in e.systems:  # against the baseline with the same search
                _add_paired(rep, e.systems[(info["source"], split)], s, speaker, seed)
            ref = (f"{baseline} [{info['kind']}]", split)
            if info["source"] not in (teacher, baseline) and not info.get("bidirectional") and ref in e.systems:
                _add_paired(rep, e.systems[ref], s, speaker, seed)
    for pair in pairs or ():  # the comparisons a recipe asks for besides those against the baseline
        if len(pair) != 2 or not all(pair):
            raise ValueError(f"pair {','.join(pair)!r}: give two model names, A,B (B is compared against A)")
        a, b = pair
        for (name, split), s in sorted(e.systems.items()):
            if name.startswith(b) and name[len(b):] in ("", *(f" [{k}]" for k in SEARCHES)):
                other = (a + name[len(b):], split)
                if other in e.systems:
                    _add_paired(rep, e.systems[other], s, speaker, seed)
    # breakdowns, error lists and worst utterances
    for split in splits:
        bd: dict[str, Any] = {}
        for key in ("voice_model", "engine", "speaker"):
            table: dict[str, dict[str, float]] = defaultdict(dict)
            for (name, sp), s in e.systems.items():
                if sp != split:
                    continue
                err, ref = defaultdict(int), defaultdict(int)
                for k, u in enumerate(s.ids):
                    grp = e.info.get(u, {}).get(key)
                    if grp is None:
                        continue
                    err[grp] += int(s.word_errors[k])
                    ref[grp] += int(s.errs[k, 3])
                for grp in err:
                    table[grp][name] = round(100 * err[grp] / max(ref[grp], 1), 2)
            if table:
                bd[key] = dict(sorted(table.items()))
        length: dict[str, dict[str, float]] = {}
        for lo, hi in LENGTH_BINS:
            label = f"{lo}-{hi} words" if hi < 10**6 else f"{lo}+ words"
            for (name, sp), s in e.systems.items():
                if sp != split:
                    continue
                m = (s.errs[:, 3] >= lo) & (s.errs[:, 3] <= hi)
                if m.any():
                    length.setdefault(label, {})[name] = round(100 * s.word_errors[m].sum() / s.errs[m, 3].sum(), 2)
        bd["length"] = length
        rep["breakdowns"][split] = bd
    for (name, split), s in e.systems.items():
        subs, dels, ins = Counter(), Counter(), Counter()
        rows = []
        for k, chunks in enumerate(s.align):
            r, h = s.refs[k].split(), s.hyps[k].split()
            for ch in chunks:
                rr, hh = r[ch.ref_start_idx:ch.ref_end_idx], h[ch.hyp_start_idx:ch.hyp_end_idx]
                if ch.type == "substitute":
                    subs.update(zip(rr, hh))
                elif ch.type == "delete":
                    dels.update(rr)
                elif ch.type == "insert":
                    ins.update(hh)
            rows.append((int(s.word_errors[k]), s.ids[k], k))
        rep["top_errors"].setdefault(name, {})[split] = {
            "substitutions": [[a, b, n] for (a, b), n in subs.most_common(10)],
            "deletions": [[a, n] for a, n in dels.most_common(10)],
            "insertions": [[a, n] for a, n in ins.most_common(10)]}
        rows.sort(key=lambda x: (-x[0], x[1]))
        rep["worst_utterances"].setdefault(name, {})[split] = [
            {"id": uid, "errors": n, "ref_words": int(s.errs[k, 3]), "aligned": _aligned_line(s.refs[k], s.hyps[k])}
            for n, uid, k in rows[:25] if n > 0]
    if compare is not None:
        rep["compare"] = compare_runs(e, collect(compare), speaker, seed)
    rep["corpus"] = corpus_summary(e.root, e.ok)
    rep["summary"] = headline(rep)
    rep["curves"] = {m: [{k: r.get(k) for k in ("epoch", "dev_cer", "dev_wer", "train_loss")} for r in rows]
                     for m, rows in e.curves.items()}
    return rep


def headline(rep: dict[str, Any]) -> dict[str, Any]:
    """What a team decides from: the recommended model for shipping (the best WER, then CER, among streaming
    models on ``test``, else the first split) with its size, RTF and emission latency, and one sentence each on how it
    compares with the baseline and with the teacher."""
    split = "test" if "test" in rep["splits"] else (rep["splits"][0] if rep["splits"] else None)
    teacher, baseline = rep["teacher"], rep["baseline"]
    cands = [(m["splits"][split]["wer"], m["splits"][split]["cer"], n) for n, m in rep["models"].items()
             if split and m["kind"] == "torch" and n != teacher and not m.get("bidirectional") and split in m["splits"]]
    if not cands:
        return {"split": split, "recommended": None, "sentences": ["No streaming model was scored: nothing to "
                                                                    "recommend."]}
    name = min(cands)[2]  # the best WER; CER breaks ties (small sets saturate WER)
    m = rep["models"][name]
    s = m["splits"][split]
    facts = [f"{split} WER {s['wer']:.2f}% [{s['wer_ci'][0]:.2f}, {s['wer_ci'][1]:.2f}]",
             f"CER {s['cer']:.2f}% [{s['cer_ci'][0]:.2f}, {s['cer_ci'][1]:.2f}]"]
    if m.get("bytes"):
        facts.append(f"{m['bytes'] / 1e6:.2f} MB of weights")
    int8 = rep["models"].get(f"{name} [int8 runtime]")
    if int8 and int8.get("bytes") and split in int8["splits"]:
        facts.append(f"{int8['bytes'] / 1e6:.2f} MB as int8 ONNX (WER {int8['splits'][split]['wer']:.2f}%)")
    if m.get("rtf") or (rep["models"].get(f"{name} [fp32 runtime]") or {}).get("rtf"):
        rtf = m.get("rtf") or rep["models"][f"{name} [fp32 runtime]"]["rtf"]
        facts.append(f"real-time factor {rtf:.4f} (one thread)")
    if m.get("latency_ms"):
        facts.append(f"token emission latency {m['latency_ms'][0]:g} ms median, {m['latency_ms'][1]:g} ms p90")
    sentences = [f"Recommended for shipping: {name} ({', '.join(facts)})."]
    if name == baseline:
        sentences.append(f"It is the baseline itself: no student beats it on {split}.")
    else:
        p = next((p for p in rep["paired"] if p["a"] == baseline and p["b"] == name and p["split"] == split), None)
        if p:
            sentences.append(f"Against the baseline (no KD): WER {p['wer_b']:.2f}% vs {p['wer_a']:.2f}%, "
                             f"{p['delta']:+.2f} [{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}], {p['verdict']}; CER "
                             f"{p['cer_delta']:+.2f} [{p['cer_ci'][0]:+.2f}, {p['cer_ci'][1]:+.2f}], {p['cer_verdict']}.")
    lm = rep["models"].get(f"{name} [lm]", {}).get("splits", {}).get(split)
    if lm:
        sentences.append(f"With the word LM (fused beam search) its WER is {lm['wer']:.2f}% "
                         f"[{lm['wer_ci'][0]:.2f}, {lm['wer_ci'][1]:.2f}], CER {lm['cer']:.2f}%.")
    t = rep["models"].get(teacher, {}).get("splits", {}).get(split)
    if t:
        gap = (f"it closes {s['gap_closed']:.1f}% [{s['gap_closed_ci'][0]:.1f}, {s['gap_closed_ci'][1]:.1f}] of the "
               "baseline-to-teacher WER gap" if "gap_closed" in s else s.get("gap_closed_note", ""))
        sentences.append(f"The teacher (offline, cannot stream) has WER {t['wer']:.2f}% "
                         f"[{t['wer_ci'][0]:.2f}, {t['wer_ci'][1]:.2f}]" + (f"; {gap}." if gap else "."))
    return {"split": split, "recommended": name, "sentences": sentences}


def _add_paired(rep: dict, a: System, b: System, speaker: dict[str, str], seed: int) -> None:
    try:
        rep["paired"].append(paired(a, b, speaker, seed))
    except ValueError as e:
        rep["absent"].append(f"paired comparison: {e}")


def compare_runs(a: Experiment, b: Experiment, speaker: dict[str, str], seed: int) -> dict[str, Any]:
    """Per model and split present in both runs: WER of ``b`` (the other run) minus ``a`` (this one),
    paired on the utterances both scored."""
    rows, disjoint = [], []
    for key in sorted(set(a.systems) & set(b.systems)):
        if not set(a.systems[key].ids) & set(b.systems[key].ids):
            disjoint.append(f"{key[0]} ({key[1]})")
            continue
        p = paired(a.systems[key], b.systems[key], speaker, seed)
        rows.append({"model": key[0], "split": key[1], **{k: p[k] for k in ("utterances", "wer_a", "wer_b", "delta", "ci",
                                                                            "p_improvement", "verdict")}})
    only = sorted({f"{m} ({s})" for m, s in set(a.systems) ^ set(b.systems)})
    out = {"other": str(b.root), "rows": rows, "only_in_one_run": only, "no_common_utterances": disjoint}
    if not rows:
        out["note"] = ("the two runs share no utterance: nothing to compare" if disjoint else
                       "the two runs share no model and split: nothing to compare")
    return out


def best_student(rep: dict[str, Any], split: str) -> str | None:
    cands = [(m["splits"][split]["wer"], m["splits"][split]["cer"], n) for n, m in rep["models"].items()
             if m["kind"] == "torch" and n not in (rep["teacher"], rep["baseline"]) and split in m["splits"]]
    return min(cands)[2] if cands else None


def write_report(exp: str | Path, out: str | Path | None = None, *, teacher: str = "teacher",
                 baseline: str = "baseline", seed: int = 1234, compare: str | Path | None = None,
                 posteriors: dict[str, Any] | None = None, rep: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` to ``out`` (default ``exp/report``)."""
    from speechkd.eval.render import markdown, plots, render_html
    from speechkd.utils import atomic_write_text

    out = Path(out) if out else Path(exp) / "report"
    out.mkdir(parents=True, exist_ok=True)
    if rep is None:
        rep = build(exp, teacher=teacher, baseline=baseline, seed=seed, compare=compare)
    images = plots(rep, posteriors)
    rep["plots"] = sorted(images)
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    atomic_write_text(paths["json"], json.dumps(rep, indent=1, allow_nan=False) + "\n")
    atomic_write_text(paths["md"], markdown(rep) + "\n")
    atomic_write_text(paths["html"], render_html(rep, images))
    return paths
