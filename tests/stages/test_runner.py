import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speechkd.config import ConfigError
from speechkd.data.manifest import read_manifest
from speechkd.stages.runner import load_recipe, run_recipe
from tests.conftest import REPO

RECIPE = """
name: tiny
seed: 7
stages:
  corpus: {hours: 0.01}
  featurize: {shard_size: 8, num_workers: 1}
  tokenizer: {kind: sentencepiece, vocab_size: 40}
"""


@pytest.fixture()
def recipe(tmp_path):
    p = tmp_path / "pipelines" / "tiny" / "recipe.yaml"
    p.parent.mkdir(parents=True)
    p.write_text(RECIPE)
    return p


def _mtimes(d: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.slow
@pytest.mark.tts
def test_runs_skips_and_reruns_on_change(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the corpus spec path is relative to the repo root
    exp = tmp_path / "exp"
    assert run_recipe(recipe, exp_root=exp) == [("corpus", "ran"), ("featurize", "ran"), ("tokenizer", "ran")]
    d = exp / "tiny"
    for st in ("corpus", "featurize", "tokenizer"):
        assert (d / st / ".done").exists() and (d / st / "config.yaml").exists()
    assert (d / "tokenizer" / "spm.model").exists() and (d / "featurize" / "cmvn.json").exists()
    before = _mtimes(d)
    assert run_recipe(recipe, exp_root=exp) == [("corpus", "skipped"), ("featurize", "skipped"), ("tokenizer", "skipped")]
    assert _mtimes(d) == before
    # a changed featurize config reruns featurize and everything after it, not the corpus
    res = run_recipe(recipe, exp_root=exp, overrides=["featurize.shard_size=3"])
    assert res == [("corpus", "skipped"), ("featurize", "ran"), ("tokenizer", "ran")]
    assert len(list((d / "featurize" / "shards" / "train").glob("*.npy"))) > 1


@pytest.mark.slow
@pytest.mark.tts
def test_interrupted_stage_reruns_cleanly(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    exp = tmp_path / "exp"
    run_recipe(recipe, exp_root=exp, to_stage="featurize")
    d = exp / "tiny" / "featurize"
    good = (d / "train.jsonl").read_bytes()
    # simulate a crash mid-stage: no .done, one shard half-written, manifests gone
    (d / ".done").unlink()
    (d / "train.jsonl").unlink()
    shard = sorted((d / "shards" / "train").glob("*.json"))[-1]
    shard.unlink()
    res = run_recipe(recipe, exp_root=exp, to_stage="featurize")
    assert res == [("corpus", "skipped"), ("featurize", "ran")]
    assert (d / "train.jsonl").read_bytes() == good


@pytest.mark.slow
@pytest.mark.tts
def test_from_to_and_force(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    exp = tmp_path / "exp"
    assert run_recipe(recipe, exp_root=exp, to_stage="corpus") == [("corpus", "ran")]
    with pytest.raises(ConfigError, match="reads stage 'featurize', which has not finished"):
        run_recipe(recipe, exp_root=exp, from_stage="tokenizer")
    assert run_recipe(recipe, exp_root=exp, from_stage="featurize", to_stage="featurize") == [("featurize", "ran")]
    assert run_recipe(recipe, exp_root=exp, from_stage="featurize", to_stage="featurize", force=True) == [("featurize", "ran")]
    with pytest.raises(ConfigError, match="--to 'nope'"):
        run_recipe(recipe, exp_root=exp, to_stage="nope")


def test_bad_recipes_fail_before_running(recipe, tmp_path):
    recipe.write_text(RECIPE.replace("shard_size: 8", "shard_sise: 8"))
    with pytest.raises(ConfigError, match=r"recipe.yaml: stages.featurize: unknown key\(s\) 'shard_sise'"):
        load_recipe(recipe)
    recipe.write_text(RECIPE.replace("tokenizer: {", "tok: {type: tokenizr, "))
    with pytest.raises(ConfigError, match="unknown stage type 'tokenizr'"):
        load_recipe(recipe)
    recipe.write_text(RECIPE + "extra: 1\n")
    with pytest.raises(ConfigError, match="unknown top-level key"):
        load_recipe(recipe)
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow
@pytest.mark.tts
def test_cli_quick_recipe_twice(tmp_path):
    cmd = [sys.executable, "-m", "speechkd.cli", "run", "pipelines/quick", "--to", "tokenizer", "--exp-root", str(tmp_path)]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    t0 = time.time()
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    elapsed = time.time() - t0
    assert second.returncode == 0
    assert [l.split()[-1] for l in second.stdout.splitlines()] == ["skipped"] * 3
    print(f"second run (no-op) took {elapsed:.1f}s")
    summary = json.loads((tmp_path / "quick" / "corpus" / "corpus.json").read_text())
    assert set(summary["splits"]) == {"train", "dev", "test", "test_unseen_voice", "untranscribed"}
    assert summary["untranscribed"] == ["untranscribed"]
    assert len(read_manifest(tmp_path / "quick" / "featurize" / "train.jsonl")) == summary["splits"]["train"]["utterances"]


def test_cli_errors_are_one_line_and_name_the_file(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"audio_filepath": "a.wav", "duration": 1, "text": "x"}\n{"duration": 1}\n')
    res = subprocess.run([sys.executable, "-m", "speechkd.cli", "manifest", "validate", str(bad)], capture_output=True,
                         text=True)
    assert res.returncode == 1 and f"{bad}:2: missing required field 'audio_filepath'" in res.stdout
    r2 = tmp_path / "r.yaml"
    r2.write_text("stages:\n  corpus: {hourz: 1}\n")
    res = subprocess.run([sys.executable, "-m", "speechkd.cli", "run", str(r2)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "r.yaml: stages.corpus: unknown key(s) 'hourz'" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
@pytest.mark.tts
def test_editing_the_corpus_spec_reruns_the_corpus(tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data_manifests").mkdir()
    spec = tmp_path / "data_manifests" / "synth-en.yaml"
    shutil.copy(REPO / "data_manifests" / "synth-en.yaml", spec)
    r = tmp_path / "recipe.yaml"
    r.write_text("name: s\nstages:\n  corpus: {hours: 0.005}\n")
    assert run_recipe(r) == [("corpus", "ran")]
    assert run_recipe(r) == [("corpus", "skipped")]
    spec.write_text(spec.read_text().replace("seed: 1234", "seed: 99"))
    assert run_recipe(r) == [("corpus", "ran")]


@pytest.mark.slow
@pytest.mark.tts
def test_stages_keep_the_process_thread_count(recipe, tmp_path, monkeypatch):
    """featurize pins one thread per shard job; run in-process (one worker) it must not leave the
    process at one thread for the training stages after it."""
    import torch

    monkeypatch.chdir(REPO)
    n0 = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert run_recipe(recipe, exp_root=tmp_path / "exp", to_stage="featurize")[-1] == ("featurize", "ran")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n0)


@pytest.mark.slow
@pytest.mark.tts
def test_quick_recipe_ends_with_lm_rows_and_a_decode_change_reruns_only_what_reads_it(tmp_path):
    """Section 3 of the hardening issue: a stage's fingerprint is its own config and the stages it reads.
    Issue 22: every model is decoded greedily and with the word LM, and the report shows both."""
    quick = REPO / "pipelines" / "quick"
    first = run_recipe(quick, exp_root=tmp_path)
    assert {s for _, s in first} == {"ran"}
    # the quick recipe ends with fp32 and int8 models for every student, the QAT student among them
    ex = tmp_path / "quick" / "export"
    summary = json.loads((ex / "summary.json").read_text())["models"]
    assert set(summary) == {"baseline", "student_frame", "student_unt_frame", "student_unt_seq", "selftrain",
                            "student_qat"}
    for m, v in summary.items():
        assert (ex / m / "model.onnx").exists() and (ex / m / "model.int8.onnx").exists()
        assert v["int8"]["quantized"]["DynamicQuantizeLSTM"] == 2 and not v["int8"]["float_weight_nodes"]
        c = v["int8"]["compare"]
        assert c["utterances"] > 0 and {"deletions", "blank_rate"} <= c["int8"].keys() and c["max_posterior_diff"] >= 0
    assert (ex / "student_frame" / "sherpa" / "model.int8.onnx").exists()
    # it ends with a report whose tables hold the wer-summary numbers and whose plots are all drawn
    rep = json.loads((tmp_path / "quick" / "report" / "report.json").read_text())
    for name in MODELS:
        for split in ("dev", "test", "test_unseen_voice"):
            want = json.loads((tmp_path / "quick" / f"decode_{name}" / f"wer-summary-{split}.json").read_text())
            got = rep["models"][name]["splits"][split]
            assert [got[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions")] == \
                [want[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions")], (name, split)
    assert rep["models"]["student_frame [int8 runtime]"]["splits"]["test"]["utterances"] > 0
    md = (tmp_path / "quick" / "report" / "report.md").read_text()
    assert f"| teacher | torch | {rep['models']['teacher']['splits']['test']['wer']:.2f} |" in md
    # with a streaming benchmark saved, the report gains the RTF plot: then every plot is drawn
    r = subprocess.run([sys.executable, "benchmarks/streaming.py", "--exp", str(tmp_path / "quick"), "--utts", "3",
                        "--repeats", "1"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "speechkd.cli", "report", str(tmp_path / "quick")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    page = (tmp_path / "quick" / "report" / "report.html").read_text()
    for key in ("wer_vs_bytes", "wer_vs_rtf", "learning_curves", "posteriors", "wer_per_voice"):
        m = re.search(rf'id="plot-{key}"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
        assert m and len(m.group(1)) > 1000, key
    qat = json.loads((tmp_path / "quick" / "student_qat" / "outputs.json").read_text())
    assert qat["init"] == "student_unt_seq" and qat["kd"]["alpha"] == 0.9 and qat["kd"]["pseudo"] == "nbest"
    assert qat["delay_frames"] == json.loads((tmp_path / "quick" / "student_unt_seq" / "outputs.json").read_text())["delay_frames"]
    _untranscribed_text_reaches_no_file(tmp_path / "quick", rep)
    _a_model_copied_alone_decodes_exports_and_evaluates_the_same(tmp_path / "quick", tmp_path / "alone")
    _lm_rows_weights_and_eval_lm_agree(tmp_path / "quick", rep, tmp_path / "evlm")
    again = run_recipe(quick, exp_root=tmp_path, overrides=["decode_selftrain.splits=[dev]"])
    # the report follows every decode; export ships the LM weights a decode stage tuned, and latency reads export
    assert [n for n, s in again if s == "ran"] == ["decode_selftrain", "export", "latency", "report"]
    assert json.loads((tmp_path / "quick" / "decode_selftrain" / "summary.json").read_text())["splits"].keys() == {"dev"}


MODELS = ("teacher", "baseline", "student_frame", "student_unt_frame", "student_unt_seq", "selftrain", "student_qat")


def _untranscribed_text_reaches_no_file(exp: Path, rep: dict):
    """Issue 23: the untranscribed split is audio only. Its sentences (known here by re-planning the corpus) are in
    no file of the experiment: manifests, shards, caches, the LM text, logs, reports; the students trained on it
    report it, at the baseline's step count; and the report compares what it adds, paired."""
    from speechkd.data.synth import load_spec, plan_corpus
    from speechkd.data.synth.text import load_sentences
    from speechkd.stages.runner import load_recipe

    corpus = {p.name: p for p in load_recipe(REPO / "pipelines" / "quick")[1]}["corpus"].cfg
    spec = load_spec(REPO / corpus.spec, hours=corpus.hours, untranscribed_hours=corpus.untranscribed_hours)
    sents = load_sentences(Path(spec.fortunes_dir), spec.fortune_files, Path(spec.wordnet_dir),
                           min_words=spec.min_words, max_words=spec.max_words)
    hidden = [p.render.text.encode() for p in plan_corpus(spec, sents) if p.split == "untranscribed"]
    assert len(hidden) >= 20 and all(len(t) > 10 for t in hidden)
    files = [f for f in exp.rglob("*") if f.is_file() and f.suffix != ".flac"]
    assert any(f.name == "untranscribed.jsonl" for f in files) and any(f.name == "text.txt" for f in files)
    for f in files:
        data = f.read_bytes()
        assert not any(t in data for t in hidden), f
    base = json.loads((exp / "baseline" / "outputs.json").read_text())["steps"]
    for m in ("student_unt_frame", "student_unt_seq", "selftrain"):
        out = json.loads((exp / m / "outputs.json").read_text())
        assert out["steps"] == base and out["untranscribed"]["utterances"] >= 20, m
    pairs = {(p["a"], p["b"]) for p in rep["paired"]}
    assert {("student_frame", "student_unt_frame"), ("student_unt_frame", "student_unt_seq"),
            ("selftrain", "student_unt_seq"), ("student_unt_frame [lm]", "student_unt_seq [lm]")} <= pairs


def _lm_rows_weights_and_eval_lm_agree(exp: Path, rep: dict, out: Path):
    """Issue 22: LM rows for every model in the report (the decode stage's -lm figures) with paired comparisons
    against greedy; the teacher cache used the teacher's tuned weights; the export ships each model's; and
    ``speechkd eval --lm`` with the same LM and weights gives the decode stage's figures."""
    for name in MODELS:
        summ = json.loads((exp / f"decode_{name}" / "summary.json").read_text())
        assert summ["lm"]["stage"] == "lm" and len(summ["lm"]["grid"]) == 12
        for split in ("dev", "test"):
            want = json.loads((exp / f"decode_{name}" / f"wer-summary-{split}-lm.json").read_text())
            got = rep["models"][f"{name} [lm]"]["splits"][split]
            assert [got[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions")] == \
                [want[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions")], (name, split)
        assert any(p["a"] == name and p["b"] == f"{name} [lm]" for p in rep["paired"])
        if name != "teacher":
            lm_json = json.loads((exp / "export" / name / "lm.json").read_text())
            assert [lm_json[k] for k in ("alpha", "beta", "token_min_logp", "prune", "unk_char", "recombine")] == [
                summ["lm"][k] for k in ("alpha", "beta", "token_min_logp", "prune", "unk_char", "recombine")]
            assert (exp / "export" / name / "lm.arpa").stat().st_size > 1000
    t = json.loads((exp / "decode_teacher" / "summary.json").read_text())["lm"]
    assert json.loads((exp / "teacher_cache" / "meta.json").read_text())["lm"] == \
        {"stage": "lm", "alpha": t["alpha"], "beta": t["beta"]}
    lm = json.loads((exp / "decode_student_qat" / "summary.json").read_text())["lm"]
    r = subprocess.run([sys.executable, "-m", "speechkd.cli", "eval", "--model",
                        str(exp / "student_qat" / "model.safetensors"), "--lm", str(exp / "lm"), "--alpha",
                        str(lm["alpha"]), "--beta", str(lm["beta"]), "--beam", str(lm["beam"]), "--out", str(out),
                        str(exp / "corpus" / "test.jsonl")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads((out / "wer-summary-test.json").read_text())
    want = json.loads((exp / "decode_student_qat" / "wer-summary-test-lm.json").read_text())
    assert [got[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions", "utterances")] == \
        [want[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions", "utterances")]


def _a_model_copied_alone_decodes_exports_and_evaluates_the_same(exp: Path, alone: Path):
    """Issue 21: a model file is a bundle. Copied alone into an empty folder (no tokenizer, features.json or
    outputs.json beside it), it decodes to the decode stage's figures, exports to the export stage's graph and
    metadata, and `eval` gives the same figures as for the file inside its experiment."""
    import onnx

    alone.mkdir()
    src = exp / "student_qat" / "model.safetensors"
    (alone / "model.safetensors").write_bytes(src.read_bytes())
    assert sorted(p.name for p in alone.iterdir()) == ["model.safetensors"]
    cli = [sys.executable, "-m", "speechkd.cli"]
    r = subprocess.run([*cli, "decode", "--model", str(alone / "model.safetensors"), "--out", str(alone / "dec"),
                        str(exp / "featurize" / "test.jsonl")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads((alone / "dec" / "wer-summary-test.json").read_text())
    want = json.loads((exp / "decode_student_qat" / "wer-summary-test.json").read_text())
    assert [got[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions", "utterances")] == \
        [want[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions", "utterances")]
    r = subprocess.run([*cli, "export", "--model", str(alone / "model.safetensors"), "--out", str(alone / "onnx")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    mine, theirs = onnx.load(str(alone / "onnx" / "model.onnx")), onnx.load(str(exp / "export" / "student_qat"
                                                                                  / "model.onnx"))
    assert {p.key: p.value for p in mine.metadata_props} == {p.key: p.value for p in theirs.metadata_props}
    assert mine.graph.SerializeToString() == theirs.graph.SerializeToString()
    assert (alone / "onnx" / "tokens.txt").read_text() == (exp / "export" / "student_qat" / "tokens.txt").read_text()
    for model, out in ((alone / "model.safetensors", alone / "ev"), (src, alone / "ev_src")):
        r = subprocess.run([*cli, "eval", "--model", str(model), "--out", str(out), str(exp / "corpus" / "test.jsonl")],
                           cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = (json.loads((d / "wer-summary-test.json").read_text()) for d in (alone / "ev", alone / "ev_src"))
    assert [a[k] for k in ("wer", "cer", "utterances")] == [b[k] for k in ("wer", "cer", "utterances")]
