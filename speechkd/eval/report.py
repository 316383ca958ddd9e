"""WER reports a team decides from: one experiment folder -> ``report.json``, ``report.md`` and a
self-contained ``report.html`` (plots embedded as PNG data URIs, no network references).

What goes in, all read from files the stages wrote (a missing one is reported as absent):

* every ``decode`` stage's ``recogs-<split>.txt`` (per-utterance reference and hypothesis) and its
  ``summary.json`` (model, parameters); the model's ``model.safetensors`` size;
* the ``export`` stage's per-utterance fp32 and int8 runtime outputs (``<model>/compare/``) and sizes;
* the ``latency`` stage's token emission latency; ``benchmarks/streaming.json`` (RTF) if a streaming
  benchmark saved one; the training stages' ``metrics.csv``;
* speakers, engines and voice models from the corpus manifests.

Statistics: WER and CER with 95% intervals from a bootstrap that resamples *speakers* (an utterance
of one speaker is not independent of the others), and paired bootstrap comparisons (Bisani & Ney
2004: the same resampled speakers for both systems; the probability of improvement is the share of
resamples in which the second system has fewer errors). Seeded: the same inputs give the same report.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RESAMPLES = 1000
LENGTH_BINS = ((1, 3), (4, 7), (8, 12), (13, 10**6))


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


def read_recogs(path: Path) -> tuple[list[str], list[str], list[str]]:
    """``(ids, refs, hyps)`` of a ``recogs-<name>.txt`` (``id:\\tref=[...]`` / ``id:\\thyp=[...]`` lines)."""
    ids, refs, hyps = [], [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        uid, _, rest = line.partition(":\t")
        key, _, value = rest.partition("=")
        try:
            words = ast.literal_eval(value)  # a list of strings, never evaluated as code
        except (ValueError, SyntaxError):
            raise ValueError(f"{path}:{n}: expected 'id:\\tref=[...]' or 'id:\\thyp=[...]'") from None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{path}:{n}: {key or 'the value'} must be a list of words (strings)")
        if key == "ref":
            ids.append(uid)
            refs.append(" ".join(words))
        elif key == "hyp":
            if not ids or ids[-1] != uid:
                raise ValueError(f"{path}:{n}: hyp of {uid!r} without its ref line")
            hyps.append(" ".join(words))
        else:
            raise ValueError(f"{path}:{n}: unknown field {key!r}")
    if len(hyps) != len(refs):
        raise ValueError(f"{path}: {len(refs)} references but {len(hyps)} hypotheses")
    return ids, refs, hyps


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


# -- collecting an experiment -------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_dict(path: Path, absent: list[str] | None = None) -> dict | None:
    """A JSON object from ``path``; ``None`` (and a line in ``absent`` when the file exists) otherwise."""
    d = _read_json(path)
    if isinstance(d, dict):
        return d
    if absent is not None and path.exists():
        absent.append(f"{path}: unreadable (not a JSON object); its figures are left out")
    return None


def _safe_name(m: Any) -> bool:
    return isinstance(m, str) and bool(m) and "/" not in m and "\\" not in m and m not in (".", "..")


def _num(v: Any) -> float | None:
    """A finite number, else ``None`` (NaN, Inf, strings and the like in a JSON file are ignored)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def utterance_info(exp: Path) -> dict[str, dict[str, Any]]:
    """id -> speaker, engine, voice_model, duration from the corpus (or featurize) manifests."""
    info: dict[str, dict[str, Any]] = {}
    for stage in ("corpus", "featurize"):
        for f in sorted((exp / stage).glob("*.jsonl")) if (exp / stage).is_dir() else []:
            for line in f.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and "id" in row:
                    cur = info.setdefault(str(row["id"]), {})
                    for k in ("speaker", "engine", "voice_model", "duration"):
                        if k in row and k not in cur:
                            cur[k] = row[k]
    return info


@dataclass
class Experiment:
    root: Path
    systems: dict[tuple[str, str], System]  # (model, split) -> scored
    models: dict[str, dict[str, Any]]  # model -> params, bytes, kind, source, rtf, latency
    info: dict[str, dict[str, Any]]
    curves: dict[str, list[dict[str, Any]]]
    absent: list[str]


def collect(exp: str | Path) -> Experiment:
    """Everything the report needs from ``exp`` (``exp/<recipe>``); what is missing goes to ``absent``."""
    exp = Path(exp)
    if not exp.is_dir():
        raise FileNotFoundError(f"{exp}: experiment folder not found")
    systems: dict[tuple[str, str], System] = {}
    models: dict[str, dict[str, Any]] = {}
    absent: list[str] = []
    for d in sorted(p for p in exp.iterdir() if p.is_dir()):
        summ = _read_json(d / "summary.json")
        recogs = sorted(d.glob("recogs-*.txt"))
        if not recogs:
            continue
        if not isinstance(summ, dict) or not isinstance(summ.get("model"), str) or not summ["model"].strip():
            absent.append(f"{d.name}: {d / 'summary.json'} is missing or unreadable (no model named); its "
                          "recognitions are left out")
            continue
        if not (d / ".done").exists():
            absent.append(f"{d.name}: the decode stage did not finish; its model is left out")
            continue
        name = Path(summ["model"]).parts[0]
        src = exp / name / "model.safetensors"
        models[name] = {"kind": "torch", "decode": d.name, "params": _num(summ.get("parameters")),
                        "bytes": src.stat().st_size if src.exists() else None,
                        "bidirectional": summ.get("bidirectional")}
        for r in recogs:
            split = r.stem[len("recogs-"):]
            try:
                ids, refs, hyps = read_recogs(r)
                systems[(name, split)] = System(name, split, ids, refs, hyps)
            except ValueError as e:
                absent.append(str(e))
    # the export stage's runtime outputs, fp32 and int8, per model
    ex = _read_dict(exp / "export" / "summary.json", absent) if (exp / "export" / ".done").exists() else None
    ex_models = ex.get("models") if ex is not None else None
    if ex is None:
        absent.append("export: no finished export stage (no runtime or int8 figures)")
    elif not isinstance(ex_models, dict):
        absent.append(f"{exp / 'export' / 'summary.json'}: 'models' is not a mapping; runtime figures left out")
    else:
        for m, v in ex_models.items():
            if not isinstance(v, dict) or not _safe_name(m):
                absent.append(f"{exp / 'export' / 'summary.json'}: entry {m!r} is malformed; left out")
                continue
            cdir = exp / "export" / m / "compare"
            int8 = v.get("int8") if isinstance(v.get("int8"), dict) else None
            if not int8:
                absent.append(f"export: {m} has no int8 variant (the stage ran without int8: true)")
                continue
            for kind, b in (("fp32", _num(v.get("bytes"))), ("int8", _num(int8.get("bytes")))):
                name = f"{m} [{kind} runtime]"
                models[name] = {"kind": kind, "source": m, "params": models.get(m, {}).get("params"), "bytes": b}
                for r in sorted(cdir.glob(f"recogs-*-{kind}.txt")):
                    split = r.stem[len("recogs-"):-len(f"-{kind}")]
                    try:
                        ids, refs, hyps = read_recogs(r)
                        systems[(name, split)] = System(name, split, ids, refs, hyps, kind=kind)
                    except ValueError as e:
                        absent.append(str(e))
            if not cdir.is_dir():
                absent.append(f"export: {m} has no per-utterance fp32/int8 outputs (exported before they were kept)")
    lat = _read_dict(exp / "latency" / "summary.json", absent)
    if lat:
        for m, v in (lat.get("models") if isinstance(lat.get("models"), dict) else {}).items():
            if not isinstance(v, dict):
                continue
            med, p90 = _num(v.get("emission_median_ms")), _num(v.get("emission_p90_ms"))
            for name, info in models.items():
                if (name == m or info.get("source") == m) and med is not None and p90 is not None:
                    info["latency_ms"] = [med, p90]
    else:
        absent.append("latency: no latency stage output (no token emission latency)")
    bench = _read_dict(exp / "benchmarks" / "streaming.json", absent)
    if bench:
        rtf = {"teacher": bench.get("teacher_rtf"), f"{bench.get('student')} [fp32 runtime]": bench.get("onnx_rtf"),
               f"{bench.get('int8_student')} [int8 runtime]": bench.get("int8_rtf"),
               bench.get("student"): bench.get("student_torch_rtf")}
        for name, v in rtf.items():
            if name in models and _num(v) is not None:
                models[name]["rtf"] = _num(v)
    else:
        absent.append("benchmarks/streaming.json: no streaming benchmark saved (no RTF; run "
                      "`python benchmarks/streaming.py --exp EXP`)")
    curves = {}
    for name in models:
        f = exp / name / "metrics.csv"
        if f.exists():
            with f.open() as fh:
                curves[name] = list(csv.DictReader(fh))
    return Experiment(exp, systems, models, utterance_info(exp), curves, absent)


# -- the report ------------------------------------------------------------------------------------

def build(exp: str | Path, *, teacher: str = "teacher", baseline: str = "baseline", seed: int = 1234,
          compare: str | Path | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict (what ``report.json`` holds)."""
    from speechkd.eval.scoring import _aligned_line

    e = collect(exp)
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
        t, b = e.systems.get((teacher, split)), e.systems.get((baseline, split))
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
    # paired comparisons: every student against the baseline; every int8 model against its fp32 source
    for (name, split), s in sorted(e.systems.items()):
        info = e.models[name]
        if info["kind"] == "torch" and name not in (teacher, baseline) and (baseline, split) in e.systems \
                and not info.get("bidirectional"):
            _add_paired(rep, e.systems[(baseline, split)], s, speaker, seed)
        if info["kind"] == "int8":
            src = f"{info['source']} [fp32 runtime]"
            if (src, split) in e.systems:
                _add_paired(rep, e.systems[(src, split)], s, speaker, seed)
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
    rep["corpus"] = corpus_summary(e.root)
    rep["summary"] = headline(rep)
    rep["curves"] = {m: [{k: r.get(k) for k in ("epoch", "dev_cer", "dev_wer", "train_loss")} for r in rows]
                     for m, rows in e.curves.items()}
    return rep


def corpus_summary(exp: Path) -> dict[str, dict[str, float]]:
    """Utterances and hours per split, from the corpus stage's manifests (else the featurize stage's)."""
    for stage in ("corpus", "featurize"):
        out: dict[str, dict[str, float]] = {}
        for m in sorted((exp / stage).glob("*.jsonl")):
            n, sec = 0, 0.0
            try:
                with m.open(encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            d = json.loads(line)
                            n += 1
                            sec += float(_num(d.get("duration")) or 0.0) if isinstance(d, dict) else 0.0
            except (OSError, ValueError):
                continue
            out[m.stem] = {"utterances": n, "hours": round(sec / 3600, 3)}
        if out:
            return out
    return {}


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


def posteriors_of_one_utterance(exp: str | Path, models: list[str], split: str = "test",
                                featurize: str = "featurize") -> dict[str, Any] | None:
    """Log-posteriors of the first utterance of ``split`` under each of ``models`` (offline, torch), for the
    teacher-against-student plot; ``None`` when the inputs are missing."""
    import torch

    from speechkd.data.dataset import FeatureDataset
    from speechkd.models.io import load_model
    from speechkd.text.tokenizer import load_tokenizer

    exp = Path(exp)
    paths = [exp / m / "model.safetensors" for m in models]
    manifest = exp / featurize / f"{split}.jsonl"
    if not manifest.exists() or not all(p.exists() for p in paths):
        return None
    tok = load_tokenizer(exp / models[0])
    ds = FeatureDataset(manifest, tok)
    uid, feats, _, _ = ds[0]
    feats = torch.from_numpy(np.array(feats, dtype=np.float32))[None]  # a copy: the store's arrays are read-only
    out: dict[str, Any] = {"id": uid, "log_probs": {}}
    with torch.no_grad():
        for m, p in zip(models, paths):
            model = load_model(p).eval()
            lp, _ = model(feats, torch.tensor([feats.shape[1]]))
            out["log_probs"][m] = lp[0].numpy()
            out["frame_ms"] = model.cfg.frame_ms
    return out
