"""Issue 20, points 5, 8, 9 and 19: gap closed only where there is a gap, CER beside WER, compare mode
without common utterances, and unreadable files listed as absent (one line each, no exception)."""

import json

from speechkd.eval.collect import read_results
from speechkd.eval.report import best_student, build, compare_runs, collect, gap_closed, write_report
from speechkd.eval.scoring import write_reports
from tests.eval.test_report import REFS, _hyps

import numpy as np
import pytest


def _exp(root, hyps: dict, ids=None, summary=None):
    exp = root / "r"
    ids = ids or [f"u{i}" for i in range(len(REFS))]
    (exp / "corpus").mkdir(parents=True)
    (exp / "corpus" / "test.jsonl").write_text("".join(
        json.dumps({"id": u, "audio_filepath": f"{u}.wav", "duration": 1.0, "text": r, "speaker": f"s{i % 4}"})
        + "\n" for i, (u, r) in enumerate(zip(ids, REFS))))
    for name, h in hyps.items():
        d = exp / f"decode_{name}"
        write_reports(d, "test", ids, REFS, h)
        (d / "summary.json").write_text(json.dumps(summary or {"model": f"{name}/model.safetensors",
                                                               "bidirectional": name == "teacher"}))
        (d / ".done").write_text("{}")
    return exp


def test_gap_closed_with_a_clear_gap_gives_a_share_for_wer_and_cer(tmp_path):
    exp = _exp(tmp_path, {"teacher": list(REFS), "baseline": _hyps(0), "student": _hyps(2)})
    st = build(exp)["models"]["student"]["splits"]["test"]
    assert "gap_closed_note" not in st and 0 < st["gap_closed"] <= 100
    assert st["gap_closed_ci"][0] <= st["gap_closed"] <= st["gap_closed_ci"][1]
    assert "cer_gap_closed" in st and st["cer_gap_closed_ci"][0] <= st["cer_gap_closed"] <= st["cer_gap_closed_ci"][1]


def test_gap_closed_is_withheld_when_the_teacher_is_worse(tmp_path):
    # the reported case: teacher 100.79 WER against a baseline at 99.84 showed "-66.7% [-66.70, 123.10]"
    exp = _exp(tmp_path, {"teacher": _hyps(0), "baseline": _hyps(5), "student": _hyps(1)})
    st = build(exp)["models"]["student"]["splits"]["test"]
    assert "gap_closed" not in st and "not better" in st["gap_closed_note"]
    md = (write_report(exp, tmp_path / "rep")["md"]).read_text()
    assert "no gap: the teacher is not better" in md and "-66.7%" not in md


def test_gap_closed_function_states_noise():
    idx = np.random.default_rng(0).integers(0, 4, size=(200, 4))
    assert gap_closed(np.array([3., 0, 0, 0]), np.array([0., 1, 0, 0]), np.zeros(4), idx)["status"] == "gap_within_noise"
    ok = gap_closed(np.array([5., 5, 5, 5]), np.array([1., 1, 1, 1]), np.array([3., 3, 3, 3]), idx)
    assert ok["status"] == "ok" and ok["value"] == 50.0 and ok["ci"] == [50.0, 50.0]


def test_paired_comparisons_carry_cer(tmp_path):
    exp = _exp(tmp_path, {"baseline": _hyps(0), "student": list(REFS)})
    (p,) = build(exp)["paired"]
    assert p["cer_b"] == 0 and p["cer_a"] > 0 and p["cer_delta"] == round(p["cer_b"] - p["cer_a"], 2)
    assert p["cer_ci"][1] <= 0 and p["cer_verdict"] in ("better", "within noise")


def test_compare_of_runs_without_common_utterances_says_so(tmp_path):
    a = _exp(tmp_path / "a", {"baseline": _hyps(1)})
    b = _exp(tmp_path / "b", {"baseline": _hyps(1)}, ids=[f"other{i}" for i in range(len(REFS))])
    c = compare_runs(collect(a), collect(b), {}, 1)
    assert c["rows"] == [] and c["no_common_utterances"] == ["baseline (test)"]
    assert c["note"] == "the two runs share no utterance: nothing to compare"
    md = write_report(a, tmp_path / "rep", compare=b)["md"].read_text()
    assert "share no utterance" in md and "+0.00" not in md


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"parameters": 5}', '{"model": 3}'])
def test_a_model_whose_summary_is_unreadable_is_listed_as_absent(tmp_path, content):
    exp = _exp(tmp_path, {"baseline": _hyps(1), "student": _hyps(2)})
    (exp / "decode_student" / "summary.json").write_text(content)
    rep = build(exp)
    assert "student" not in rep["models"]
    assert any("decode_student" in a and "unreadable" in a for a in rep["absent"])


@pytest.mark.parametrize("content", ["[]", '{"models": [1]}', '{"models": {"m": 5}}', '{"models": {"../x": {}}}'])
def test_malformed_export_summary_is_absent_not_an_exception(tmp_path, content):
    exp = _exp(tmp_path, {"baseline": _hyps(1)})
    (exp / "export").mkdir()
    (exp / "export" / "summary.json").write_text(content)
    (exp / "export" / ".done").write_text("{}")
    rep = build(exp)
    assert any("export" in a for a in rep["absent"])


def test_nan_in_a_benchmark_json_is_ignored(tmp_path):
    exp = _exp(tmp_path, {"baseline": _hyps(1)})
    (exp / "benchmarks").mkdir()
    (exp / "benchmarks" / "streaming.json").write_text('{"student": "baseline", "student_torch_rtf": NaN}')
    rep = build(exp, rtf=exp / "benchmarks" / "streaming.json")
    paths = write_report(exp, tmp_path / "rep", rep=rep)
    rep = json.loads(paths["json"].read_text())  # strict JSON: no NaN
    assert "rtf" not in rep["models"]["baseline"]


@pytest.mark.parametrize("line", ['{"id": "u1", "ref": [1, 2], "hyp": "a"}', '{"id": "u1", "ref": null, "hyp": "a"}',
                                  '["u1", "a", "a"]'])
def test_results_with_non_string_fields_name_the_line(tmp_path, line):
    p = tmp_path / "results-test.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(ValueError, match=r"results-test.jsonl:1: expected an object with string id, ref and hyp"):
        read_results(p)


def test_report_opens_with_a_summary_a_team_decides_from(tmp_path):
    exp = _exp(tmp_path, {"teacher": list(REFS), "baseline": _hyps(0), "student": _hyps(2)})
    (exp / "student").mkdir()
    (exp / "student" / "model.safetensors").write_bytes(b"x" * 2_000_000)
    rep = build(exp)
    assert rep["summary"]["recommended"] == "student" and rep["corpus"]["test"]["utterances"] == len(REFS)
    assert best_student(rep, "test") == "student"
    first, vs_base, vs_teacher = rep["summary"]["sentences"]
    assert first.startswith("Recommended for shipping: student (test WER") and "2.00 MB" in first
    assert vs_base.startswith("Against the baseline (no KD)") and "CER" in vs_base
    assert vs_teacher.startswith("The teacher (offline, cannot stream)") and "of the baseline-to-teacher" in vs_teacher
    paths = write_report(exp, tmp_path / "rep")
    md = paths["md"].read_text()
    assert md.index("## Summary") < md.index("## Models: test") and "Recommended for shipping" in md
    page = paths["html"].read_text()
    assert page.index("Recommended for shipping") < page.index("<h2>Models: test</h2>")
    # a corpus without voice models: the per-voice section is left out, not shown as absent
    assert "WER per voice" not in page


def test_markdown_escapes_model_names(tmp_path):
    exp = _exp(tmp_path, {"baseline": _hyps(1), "x*[click](e)<b>": _hyps(2)})
    md = write_report(exp, tmp_path / "rep")["md"].read_text()
    assert "x*[click](e)<b>" in json.dumps(build(exp)["models"])  # the name is there ...
    assert "[click](e)" not in md and "<b>" not in md and "x\\*[click]\\(e)\\<b\\>" in md  # ... but escaped
