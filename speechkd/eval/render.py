"""Rendering a report (the dict :func:`speechkd.eval.report.build` returns) as Markdown, as one
self-contained HTML page (plots embedded as PNG data URIs, no network references), and its plots."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from speechkd.eval.report import best_student


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plots(rep: dict[str, Any], posteriors: dict[str, Any] | None = None) -> dict[str, str]:
    """PNG data URIs: ``wer_vs_bytes``, ``wer_vs_rtf``, ``learning_curves``, ``wer_per_voice``, ``posteriors``
    (each only where its inputs exist)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    split = "test" if "test" in rep["splits"] else (rep["splits"][0] if rep["splits"] else None)
    if split is None:
        return out
    for key, label in (("bytes", "model bytes (MB)"), ("rtf", "real-time factor (1 thread)")):
        pts = [(m["bytes"] / 1e6 if key == "bytes" else m[key], m["splits"][split]["wer"], name)
               for name, m in rep["models"].items() if m.get(key) and split in m["splits"]]
        if pts:
            fig, ax = plt.subplots(figsize=(7.5, 4))
            markers = "osD^v<>pP*Xh"
            for k, (x, y, n) in enumerate(sorted(pts, key=lambda p: p[1])):  # a legend, not labels that overlap
                ax.scatter(x, y, marker=markers[k % len(markers)], s=40, label=f"{n} ({y:.2f})")
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(f"{split} WER (%)")
            ax.grid(alpha=0.3)
            out[f"wer_vs_{key}"] = _png(fig)
    if rep.get("curves"):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name, rows in rep["curves"].items():
            xs = [int(r["epoch"]) for r in rows if r.get("dev_cer")]
            ys = [float(r["dev_cer"]) for r in rows if r.get("dev_cer")]
            if xs:
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("dev CER (%)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        out["learning_curves"] = _png(fig)
    voices = rep["breakdowns"].get(split, {}).get("voice_model")
    best = best_student(rep, split)
    teacher = rep["teacher"]
    if voices and best:
        names = sorted(voices)
        fig, ax = plt.subplots(figsize=(7, 4))
        x = np.arange(len(names))
        for k, m in enumerate((teacher, best)):
            ax.bar(x + (k - 0.5) * 0.4, [voices[v].get(m, np.nan) for v in names], width=0.4, label=m)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"{split} WER (%)")
        ax.legend(fontsize=8)
        out["wer_per_voice"] = _png(fig)
    if posteriors:
        fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
        for ax, (name, lp) in zip(axes, posteriors["log_probs"].items()):
            p = np.exp(np.asarray(lp))
            ax.plot(p[:, 0], color="0.7", lw=0.8, label="blank")
            ax.plot(p[:, 1:].max(1), lw=0.9, label="best non-blank")
            ax.set_ylabel(name, fontsize=8)
            ax.legend(fontsize=6, loc="upper right")
        axes[-1].set_xlabel(f"output frame ({posteriors['frame_ms']:g} ms) of {posteriors['id']}")
        out["posteriors"] = _png(fig)
    return out


def _ci(v) -> str:
    return f"[{v[0]:.2f}, {v[1]:.2f}]" if v else ""


def _fmt_bytes(b) -> str:
    return f"{b / 1e6:.2f} MB" if b else "absent"


def _model_rows(rep, split):
    rows = []
    for name, m in rep["models"].items():
        s = m["splits"].get(split)
        if not s:
            continue
        rows.append([name, m["kind"], f"{s['wer']:.2f}", _ci(s["wer_ci"]), f"{s['cer']:.2f}", _ci(s["cer_ci"]),
                     f"{s['substitutions']} / {s['deletions']} / {s['insertions']}",
                     f"{m['params'] / 1e6:.2f} M" if m.get("params") else "", _fmt_bytes(m.get("bytes")),
                     f"{m['rtf']:.4f}" if m.get("rtf") else "",
                     f"{m['latency_ms'][0]:g} / {m['latency_ms'][1]:g}" if m.get("latency_ms") else "",
                     _gap_cell(s, ""), _gap_cell(s, "cer_")])
    return rows


def _gap_cell(s: dict, unit: str) -> str:
    if f"{unit}gap_closed" in s:
        return f"{s[f'{unit}gap_closed']:.1f}% {_ci(s[f'{unit}gap_closed_ci'])}"
    return s.get(f"{unit}gap_closed_note", "")


MODEL_HEAD = ["model", "kind", "WER", "95% CI", "CER", "95% CI", "S / D / I", "params", "bytes", "RTF",
              "emission latency ms (median / p90)", "gap closed (WER)", "gap closed (CER)"]
PAIRED_HEAD = ["split", "A", "B", "WER A", "WER B", "B - A", "95% CI", "P(B better)", "verdict",
               "CER A", "CER B", "CER B - A", "CER 95% CI", "CER verdict"]


def _paired_rows(rep):
    return [[p["split"], p["a"], p["b"], f"{p['wer_a']:.2f}", f"{p['wer_b']:.2f}", f"{p['delta']:+.2f}", _ci(p["ci"]),
             f"{p['p_improvement']:.3f}", p["verdict"], f"{p['cer_a']:.2f}", f"{p['cer_b']:.2f}",
             f"{p['cer_delta']:+.2f}", _ci(p["cer_ci"]), p["cer_verdict"]] for p in rep["paired"]]


COMPARE_HEAD = ["model", "split", "utterances", "WER here", "WER other", "other - here", "95% CI", "verdict"]


def _compare_rows(c):
    return [[r["model"], r["split"], r["utterances"], r["wer_a"], r["wer_b"], f"{r['delta']:+.2f}", _ci(r["ci"]),
             r["verdict"]] for r in c["rows"]]


def _corpus_rows(rep):
    return [[k, v["utterances"], f"{v['hours']:.3f}"] for k, v in rep["corpus"].items()]


def _breakdowns(rep):
    """``(split, key, head, rows)`` of every breakdown table (WER by voice model, engine, speaker, length)."""
    out = []
    for split, bd in rep["breakdowns"].items():
        for key, tab in bd.items():
            names = sorted({m for v in tab.values() for m in v})
            out.append((split, key, [key] + names, [[g] + [v.get(m, "") for m in names] for g, v in tab.items()]))
    return out


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*<>|"})


def _md(text: str) -> str:
    """Text as literal Markdown: no link, emphasis, HTML or table cell can be injected by a name (brackets
    and underscores stay readable: a link needs ``](``, which is broken up)."""
    return str(text).translate(_MD_SPECIAL).replace("](", "]\\(").replace("\n", " ")


def markdown(rep: dict[str, Any]) -> str:
    def table(head, rows):
        out = ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(_md(str(c)) for c in r) + " |" for r in rows]
        return "\n".join(out)

    lines = [f"# WER report: {_md(rep['exp'])}", ""]
    lines += ["## Summary", ""] + [_md(x) for x in rep.get("summary", {}).get("sentences", [])] + [""]
    if rep.get("corpus"):
        lines += [table(["split", "utterances", "hours"], _corpus_rows(rep)), ""]
    lines += [f"95% intervals from {rep['bootstrap']['resamples']} bootstrap resamples of speakers (seed {rep['seed']}); "
              "paired comparisons resample the same speakers for both systems.", ""]
    for split in rep["splits"]:
        lines += [f"## Models: {_md(split)}", "", table(MODEL_HEAD, _model_rows(rep, split)), ""]
    if rep["paired"]:
        lines += ["## Paired comparisons", "", table(PAIRED_HEAD, _paired_rows(rep)), ""]
    if rep.get("compare"):
        c = rep["compare"]
        lines += [f"## Compared with {_md(c['other'])}", "",
                  table(COMPARE_HEAD, _compare_rows(c)) if c["rows"] else _md(c.get("note", "")), ""]
    for split, key, head, rows in _breakdowns(rep):
        lines += [f"## WER by {_md(key)}: {_md(split)}", "", table(head, rows), ""]
    if rep["absent"]:
        lines += ["## Absent inputs", ""] + [f"- {_md(a)}" for a in rep["absent"]] + [""]
    return "\n".join(lines)


def render_html(rep: dict[str, Any], images: dict[str, str]) -> str:
    esc = html.escape

    def anchor(name, split):
        return "utt-" + "".join(c if c.isalnum() else "-" for c in f"{name}-{split}")

    def table(head, rows, link_col=None, split=None):
        out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
        for r in rows:
            cells = []
            for k, c in enumerate(r):
                c = esc(str(c))
                if k == link_col and split:
                    c = f'<a href="#{anchor(r[0], split)}">{c}</a>'
                cells.append(f"<td>{c}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        return "\n".join(out + ["</table>"])

    parts = [f"<h1>WER report</h1><p>{esc(rep['exp'])}</p>", "<h2>Summary</h2>"]
    parts += [f"<p class=headline>{esc(x)}</p>" for x in rep.get("summary", {}).get("sentences", [])]
    if rep.get("corpus"):
        parts.append(table(["split", "utterances", "hours"], _corpus_rows(rep)))
    parts += [f"<p>95% intervals: {rep['bootstrap']['resamples']} bootstrap "
             f"resamples of speakers (seed {rep['seed']}); paired comparisons resample the same speakers for both "
             "systems (Bisani &amp; Ney 2004). A difference whose interval holds 0 is within noise.</p>"]
    for split in rep["splits"]:
        parts += [f"<h2>Models: {esc(split)}</h2>", table(MODEL_HEAD, _model_rows(rep, split), link_col=0, split=split)]
    if rep["paired"]:
        parts += ["<h2>Paired comparisons</h2>", table(PAIRED_HEAD, _paired_rows(rep))]
    if rep.get("compare"):
        c = rep["compare"]
        parts += [f"<h2>Compared with {esc(c['other'])}</h2>",
                  table(COMPARE_HEAD, _compare_rows(c)) if c["rows"] else f"<p>{esc(c.get('note', ''))}</p>"]
    titles = {"wer_vs_bytes": "WER against model bytes", "wer_vs_rtf": "WER against real-time factor",
              "learning_curves": "Learning curves (dev CER per epoch)", "posteriors": "Posteriors of one utterance",
              "wer_per_voice": "WER per voice: teacher against the best student"}
    parts.append("<h2>Plots</h2>")
    applies = any("voice_model" in bd for bd in rep["breakdowns"].values())
    for key, title in titles.items():
        if key == "wer_per_voice" and not applies:
            continue  # a synthetic-corpus section: left out on other corpora
        if key in images:
            parts.append(f'<h3>{esc(title)}</h3><img id="plot-{key}" alt="{esc(title)}" src="{images[key]}">')
        else:
            parts.append(f"<h3>{esc(title)}</h3><p class=absent>absent: its inputs were not found</p>")
    for split, key, head, rows in _breakdowns(rep):
        parts += [f"<h2>WER by {esc(key)}: {esc(split)}</h2>", table(head, rows)]
    parts.append("<h2>Most frequent errors</h2><details><summary>per model and split</summary>")
    for name, per in rep["top_errors"].items():
        for split, t in per.items():
            subs = ", ".join(f"{esc(a)}&rarr;{esc(b)} ({n})" for a, b, n in t["substitutions"])
            dels = ", ".join(f"{esc(a)} ({n})" for a, n in t["deletions"])
            ins = ", ".join(f"{esc(a)} ({n})" for a, n in t["insertions"])
            parts.append(f"<p><b>{esc(name)}, {esc(split)}</b>: substitutions {subs}; deletions {dels}; "
                         f"insertions {ins}</p>")
    parts.append("</details><h2>Worst utterances (aligned errors)</h2>")
    for name, per in rep["worst_utterances"].items():
        for split, rows in per.items():
            parts.append(f'<details id="{anchor(name, split)}"><summary>{esc(name)}, {esc(split)} '
                         f'({len(rows)} utterances)</summary><ol>')
            parts += [f"<li><code>{esc(r['id'])}</code> {r['errors']} errors / {r['ref_words']} words: "
                      f"{esc(r['aligned'])}</li>" for r in rows]
            parts.append("</ol></details>")
    if rep["absent"]:
        parts += ["<h2>Absent inputs</h2><ul>"] + [f"<li>{esc(a)}</li>" for a in rep["absent"]] + ["</ul>"]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}table{border-collapse:collapse;"
             "font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}"
             "td:first-child,th:first-child{text-align:left}.absent{color:#a00}code{font-size:12px}li{font-size:13px}"
             ".headline{font-size:15px;background:#f4f7fb;padding:6px 10px;border-left:4px solid #37c}"
             "summary{cursor:pointer;margin:4px 0}")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>speechkd WER report</title>"
            f"<style>{style}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
