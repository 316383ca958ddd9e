"""Collecting an experiment for the report: what every stage left, read from files.

* every ``decode`` stage's per-utterance results (``results-<split>.jsonl``: id, ref, hyp) and its
  ``summary.json`` (model, parameters); the model file's size;
* the ``export`` stage's per-utterance fp32 and int8 runtime outputs (``<model>/compare/``) and sizes;
* the ``latency`` stage's token emission latency; a streaming benchmark's RTF when one is named; the
  training stages' ``metrics.csv``;
* speakers, engines and voice models from the corpus manifests.

:func:`collect` reads only the stages it is given (the report stage passes the ones it declares); a
missing or unreadable input is listed in ``absent``, never guessed.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechkd.eval.stats import System


SEARCHES = ("lm", "beam")  # decode stages' searches besides greedy (results-<split>-<search>.jsonl)


def read_results(path: Path) -> tuple[list[str], list[str], list[str]]:
    """``(ids, refs, hyps)`` of a ``results-<name>.jsonl`` (one ``{"id", "ref", "hyp"}`` object per line)."""
    ids, refs, hyps = [], [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{n}: not a JSON object") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("id", "ref", "hyp")):
            raise ValueError(f"{path}:{n}: expected an object with string id, ref and hyp")
        ids.append(row["id"])
        refs.append(row["ref"])
        hyps.append(row["hyp"])
    return ids, refs, hyps


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


def utterance_info(exp: Path, ok=lambda name: True) -> dict[str, dict[str, Any]]:
    """id -> speaker, engine, voice_model, duration from the corpus (or featurize) manifests."""
    info: dict[str, dict[str, Any]] = {}
    for stage in [s for s in ("corpus", "featurize") if ok(s)]:
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


def corpus_summary(exp: Path, ok=lambda name: True) -> dict[str, dict[str, float]]:
    """Utterances and hours per split, from the corpus stage's manifests (else the featurize stage's)."""
    for stage in [s for s in ("corpus", "featurize") if ok(s)]:
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


@dataclass
class Experiment:
    root: Path
    systems: dict[tuple[str, str], System]  # (model, split) -> scored
    models: dict[str, dict[str, Any]]  # model -> params, bytes, kind, source, rtf, latency
    info: dict[str, dict[str, Any]]
    curves: dict[str, list[dict[str, Any]]]
    absent: list[str]
    ok: Any = None  # which stage folders may be read


def collect(exp: str | Path, stages: set[str] | None = None, rtf: str | Path | None = None) -> Experiment:
    """Everything the report needs from ``exp`` (``exp/<recipe>``), reading only the stage folders named in
    ``stages`` (``None``: every folder, as ``speechkd report`` does); ``rtf``: a streaming benchmark's JSON
    (``benchmarks/streaming.py``) whose real-time factors are added. What is missing goes to ``absent``."""
    exp = Path(exp)
    if not exp.is_dir():
        raise FileNotFoundError(f"{exp}: experiment folder not found")
    ok = (lambda name: True) if stages is None else (lambda name: name in stages)
    systems: dict[tuple[str, str], System] = {}
    models: dict[str, dict[str, Any]] = {}
    absent: list[str] = []
    for d in sorted(p for p in exp.iterdir() if p.is_dir() and ok(p.name)):
        summ = _read_json(d / "summary.json")
        results = sorted(d.glob("results-*.jsonl"))
        if not results:
            if sorted(d.glob("recogs-*.txt")):
                absent.append(f"{d.name}: decoded by an older speechkd (no results-<split>.jsonl); rerun it")
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
        if not ok(name):
            absent.append(f"{d.name}: decodes {name!r}, a stage the report does not read; left out")
            continue
        models[name] = {"kind": "torch", "decode": d.name, "params": _num(summ.get("parameters")),
                        "bytes": src.stat().st_size if src.exists() else None,
                        "bidirectional": summ.get("bidirectional")}
        for r in results:
            split = r.stem[len("results-"):]
            row, kind = name, "torch"
            for search in SEARCHES:  # results-<split>-lm.jsonl: the same model decoded with a search
                if split.endswith(f"-{search}"):
                    split, kind, row = split[: -len(search) - 1], search, f"{name} [{search}]"
                    models[row] = {**models[name], "kind": search, "source": name}
            try:
                ids, refs, hyps = read_results(r)
                systems[(row, split)] = System(row, split, ids, refs, hyps, kind=kind)
            except ValueError as e:
                absent.append(str(e))
    # the export stage's runtime outputs, fp32 and int8, per model
    ex = _read_dict(exp / "export" / "summary.json", absent) \
        if ok("export") and (exp / "export" / ".done").exists() else None
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
                for r in sorted(cdir.glob(f"results-*-{kind}.jsonl")):
                    split = r.stem[len("results-"):-len(f"-{kind}")]
                    try:
                        ids, refs, hyps = read_results(r)
                        systems[(name, split)] = System(name, split, ids, refs, hyps, kind=kind)
                    except ValueError as e:
                        absent.append(str(e))
            if not cdir.is_dir():
                absent.append(f"export: {m} has no per-utterance fp32/int8 outputs (exported before they were kept)")
    lat = _read_dict(exp / "latency" / "summary.json", absent) if ok("latency") else None
    if lat:
        for m, v in (lat.get("models") if isinstance(lat.get("models"), dict) else {}).items():
            if not isinstance(v, dict):
                continue
            med, p90 = _num(v.get("emission_median_ms")), _num(v.get("emission_p90_ms"))
            for name, info in models.items():
                runtime = info.get("source") == m and info["kind"] in ("fp32", "int8")
                if (name == m or runtime) and med is not None and p90 is not None:
                    info["latency_ms"] = [med, p90]
    else:
        absent.append("latency: no latency stage output (no token emission latency)")
    bench = _read_dict(Path(rtf), absent) if rtf else None
    if bench:
        rtf = {"teacher": bench.get("teacher_rtf"), f"{bench.get('student')} [fp32 runtime]": bench.get("onnx_rtf"),
               f"{bench.get('int8_student')} [int8 runtime]": bench.get("int8_rtf"),
               bench.get("student"): bench.get("student_torch_rtf")}
        for name, v in rtf.items():
            if name in models and _num(v) is not None:
                models[name]["rtf"] = _num(v)
    else:
        absent.append("no streaming benchmark (no RTF): `python benchmarks/streaming.py --exp EXP` writes "
                      "EXP/benchmarks/streaming.json, which `speechkd report` reads and the report stage reads when "
                      "its rtf names it")
    curves = {}
    for name in models:
        f = exp / name / "metrics.csv"
        if ok(name) and f.exists():
            with f.open() as fh:
                curves[name] = list(csv.DictReader(fh))
    return Experiment(exp, systems, models, utterance_info(exp, ok), curves, absent, ok)


