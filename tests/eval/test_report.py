"""The WER report: its numbers are the decode stages' numbers (and sclite's), its intervals resample
speakers and are seeded, paired comparisons, absent inputs, compare mode, and one offline HTML file."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from speechkd.eval.collect import read_results
from speechkd.eval.report import System, build, paired, write_report
from speechkd.eval.scoring import score, write_reports
from tests.conftest import REPO

REFS = ["the cat sat on the mat", "a dog ran far away", "hello world", "one two three four five six",
        "speech is hard", "good morning to you", "time flies like an arrow", "fruit flies like a banana"]


def _hyps(k):
    """Systems of decreasing quality: system k corrupts fewer words."""
    rng = np.random.default_rng(k)
    out = []
    for r in REFS:
        w = r.split()
        for i in range(len(w)):
            if rng.random() < 0.6 / (k + 1):
                w[i] = w[i][::-1] + "x"
        if rng.random() < 0.3 / (k + 1):
            w = w[1:]
        out.append(" ".join(w))
    return out


@pytest.fixture()
def fake_exp(tmp_path):
    """An experiment folder as the stages leave it: corpus manifest with speakers, three decode stages."""
    exp = tmp_path / "exp" / "r"
    ids = [f"u{i}" for i in range(len(REFS))]
    (exp / "corpus").mkdir(parents=True)
    (exp / "corpus" / "test.jsonl").write_text("".join(
        json.dumps({"id": u, "audio_filepath": f"{u}.wav", "duration": 1.0, "text": r, "speaker": f"s{i % 4}",
                    "engine": "e" + str(i % 2), "voice_model": f"v{i % 3}"}) + "\n" for i, (u, r) in enumerate(zip(ids, REFS))))
    for k, name in enumerate(["baseline", "student", "teacher"]):
        d = exp / f"decode_{name}"
        write_reports(d, "test", ids, REFS, _hyps(k + 1))
        (d / "summary.json").write_text(json.dumps({"model": f"{name}/model.safetensors", "parameters": 1000 * (k + 1),
                                                    "bidirectional": name == "teacher"}))
        (d / ".done").write_text("{}")
        (exp / name).mkdir()
        (exp / name / "model.safetensors").write_bytes(b"x" * 100 * (k + 1))
        (exp / name / "metrics.csv").write_text("epoch,dev_cer,dev_wer,train_loss\n1,50,90,3\n2,40,80,2\n")
    return exp


def test_report_numbers_are_the_decode_numbers_with_speaker_intervals(fake_exp):
    rep = build(fake_exp)
    for name in ("baseline", "student", "teacher"):
        want = json.loads((fake_exp / f"decode_{name}" / "wer-summary-test.json").read_text())
        got = rep["models"][name]["splits"]["test"]
        for k in ("wer", "cer", "substitutions", "deletions", "insertions", "ref_words", "utterances"):
            assert got[k] == want[k], (name, k)
        assert got["speakers"] == 4 and got["wer_ci"][0] <= got["wer"] <= got["wer_ci"][1]
        assert got["wer_ci"][1] > got["wer_ci"][0]  # 4 speakers: a real interval
    assert list(rep["models"])[:2] == ["teacher", "baseline"]
    st = rep["models"]["student"]["splits"]["test"]
    # 8 utterances: the teacher-baseline gap is within noise here, so no share is given (tests/eval/
    # test_report_gap.py has a clear gap)
    assert "gap_closed" not in st and "within noise" in st["gap_closed_note"]
    assert build(fake_exp) == rep  # seeded: the same report twice
    assert build(fake_exp, seed=7)["models"]["student"]["splits"]["test"]["wer_ci"] != \
        rep["models"]["student"]["splits"]["test"]["wer_ci"]
    # the paired comparison of the student against the baseline; the teacher (bidirectional) is no student
    (p,) = [p for p in rep["paired"] if p["b"] == "student"]
    assert p["a"] == "baseline" and p["delta"] == round(p["wer_b"] - p["wer_a"], 2)
    assert not [p for p in rep["paired"] if p["b"] == "teacher"]
    bd = rep["breakdowns"]["test"]
    assert set(bd["speaker"]) == {"s0", "s1", "s2", "s3"} and set(bd["voice_model"]) == {"v0", "v1", "v2"}
    assert rep["worst_utterances"]["baseline"]["test"][0]["errors"] >= rep["worst_utterances"]["baseline"]["test"][-1]["errors"]


def test_paired_bootstrap_sees_a_clear_difference_and_no_difference():
    ids = [f"u{i}" for i in range(len(REFS))]
    spk = {u: f"s{i % 4}" for i, u in enumerate(ids)}
    bad, good = System("bad", "t", ids, REFS, ["zz " + r for r in _hyps(0)]), System("good", "t", ids, REFS, REFS)
    p = paired(bad, good, spk, seed=1)
    assert p["wer_b"] == 0 and p["ci"][1] < 0 and p["p_improvement"] == 1.0 and not p["within_noise"]
    same = paired(bad, bad, spk, seed=1)
    assert same["delta"] == 0 and same["ci"] == [0, 0] and same["within_noise"]
    assert "within noise" in same["verdict"]


def test_read_results_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "results-x.jsonl"
    f.write_text('{"id": "u1", "ref": "a", "hyp": "a"}\n__import__("os")\n')
    with pytest.raises(ValueError, match=r"results-x.jsonl:2: not a JSON object"):
        read_results(f)
    f.write_text('{"id": "u1", "ref": "a", "hyp": "a"}\n{"id": "u2", "ref": ["a"], "hyp": "a"}\n')
    with pytest.raises(ValueError, match=r":2: expected an object with string id, ref and hyp"):
        read_results(f)
    f.write_text('{"id": "u1", "ref": "a b", "hyp": "a"}\n')
    assert read_results(f) == (["u1"], ["a b"], ["a"])


def test_html_is_one_offline_file_and_absent_inputs_are_listed(fake_exp, tmp_path):
    shutil.rmtree(fake_exp / "student")  # its model file is gone
    (fake_exp / "decode_student" / ".done").unlink()  # and its decode did not finish
    paths = write_report(fake_exp, tmp_path / "rep")
    page = paths["html"].read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no network references
    assert "<script" not in page
    rep = json.loads(paths["json"].read_text())
    assert "student" not in rep["models"]
    assert any("decode_student: the decode stage did not finish" in a for a in rep["absent"])
    assert any("export" in a for a in rep["absent"]) and "absent" in page
    for key in ("wer_vs_bytes", "learning_curves"):
        assert _plot(page, key), key
    # no student left: the per-voice plot (teacher against the best student) is reported absent, not drawn
    assert not _plot(page, "wer_per_voice") and re.search(r"WER per voice[^<]*</h3><p class=absent>", page)
    assert paths["md"].read_text().count("| baseline |") >= 1


def _plot(page, key):
    m = re.search(rf'id="plot-{key}"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return m is not None and len(m.group(1)) > 1000


def test_compare_mode_against_itself_shows_zero_deltas(fake_exp, tmp_path):
    r = subprocess.run([sys.executable, "-m", "speechkd.cli", "report", str(fake_exp), "--compare", str(fake_exp),
                        "--out", str(tmp_path / "rep"), "--no-posteriors"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    c = json.loads((tmp_path / "rep" / "report.json").read_text())["compare"]
    assert {row["model"] for row in c["rows"]} == {"baseline", "student", "teacher"}
    assert all(row["delta"] == 0 and row["ci"] == [0, 0] for row in c["rows"]) and c["only_in_one_run"] == []
    page = (tmp_path / "rep" / "report.html").read_text()
    assert all(_plot(page, k) for k in ("wer_vs_bytes", "learning_curves", "wer_per_voice"))


def _sclite(refs, hyps, ids, tmp_path):
    exe = shutil.which("sclite") or shutil.which("sctk")
    if exe is None:
        pytest.fail("NIST sclite is not installed (Debian package sctk; `make test` installs it)")
    (tmp_path / "ref.trn").write_text("".join(f"{r} ({u})\n" for u, r in zip(ids, refs)))
    (tmp_path / "hyp.trn").write_text("".join(f"{h} ({u})\n" for u, h in zip(ids, hyps)))
    cmd = ([exe] if exe.endswith("sclite") else [exe, "sclite"]) + [
        "-r", str(tmp_path / "ref.trn"), "trn", "-h", str(tmp_path / "hyp.trn"), "trn", "-i", "spu_id", "-o", "rsum",
        "stdout"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"\|\s*Sum\s*\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out)
    assert m, out[-2000:]
    snt, wrd, corr, sub, dele, ins, err = map(int, m.groups())
    return {"utterances": snt, "ref_words": wrd, "substitutions": sub, "deletions": dele, "insertions": ins,
            "errors": err}


def test_error_totals_agree_with_nist_sclite(tmp_path):
    """sclite and jiwer must count the same errors; the S/D/I split may differ where alignments tie (sclite
    weighs a substitution 4, an insertion or deletion 3; jiwer 1 each): bounded here and said in the README."""
    ids = [f"spk{i % 3}_{i}" for i in range(len(REFS))]
    hyps = ["zz " + h for h in _hyps(0)]
    ours, theirs = score(REFS, hyps), _sclite(REFS, hyps, ids, tmp_path)
    total = ours["substitutions"] + ours["deletions"] + ours["insertions"]
    assert theirs["utterances"] == len(REFS) and theirs["ref_words"] == ours["ref_words"]
    assert theirs["errors"] == total
    assert abs(theirs["substitutions"] - ours["substitutions"]) <= 0.1 * total


def test_no_teacher_baseline_gap_gives_no_gap_closed_and_valid_json(fake_exp, tmp_path):
    """A tiny run where teacher and baseline make the same errors has no gap to close: the report says nothing
    of it rather than writing NaN (which is not JSON)."""
    shutil.copy(fake_exp / "decode_baseline" / "results-test.jsonl", fake_exp / "decode_teacher" / "results-test.jsonl")
    paths = write_report(fake_exp, tmp_path / "rep")
    rep = json.loads(paths["json"].read_text())
    st = rep["models"]["student"]["splits"]["test"]
    assert "gap_closed" not in st and "not better" in st["gap_closed_note"]
