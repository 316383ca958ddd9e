"""synth-en: plan properties (no audio), determinism and resume (real TTS engines)."""

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from speechkd.data.manifest import read_manifest
from speechkd.data.synth import build_corpus, load_spec, plan_corpus
from speechkd.data.synth.build import SPLITS
from speechkd.data.synth.text import load_sentences


@pytest.fixture(scope="module")
def plan():
    spec = load_spec(hours=2.0)
    sents = load_sentences(Path(spec.fortunes_dir), spec.fortune_files, Path(spec.wordnet_dir),
                           min_words=spec.min_words, max_words=spec.max_words)
    return spec, plan_corpus(spec, sents)


def test_plan_splits_hold_out_speakers_sentences_and_voices(plan):
    spec, p = plan
    by = defaultdict(list)
    for u in p:
        by[u.split].append(u)
    assert set(by) == set(SPLITS)
    train_spk = {u.speaker for u in by["train"]}
    train_txt = {u.render.text for u in by["train"]}
    for s in ("dev", "test"):
        assert not train_spk & {u.speaker for u in by[s]}, f"{s} shares a speaker with train"
        assert not train_txt & {u.render.text for u in by[s]}, f"{s} shares a sentence with train"
    assert not {u.render.text for u in by["dev"]} & {u.render.text for u in by["test"]}
    unseen = {v.name for v in spec.voices if v.role == "unseen"}
    assert {u.voice_model for u in by["test_unseen_voice"]} == unseen
    assert not unseen & {u.voice_model for s in ("train", "dev", "test") for u in by[s]}
    seen = {v.name for v in spec.voices if v.role == "seen"}
    for s in ("train", "dev", "test"):
        assert {u.voice_model for u in by[s]} == seen
    assert len({u.render.uid for u in p}) == len(p)


def test_plan_engine_shares_and_size(plan):
    spec, p = plan
    est = defaultdict(float)
    for u in p:
        est[u.render.engine] += len(u.render.text) * spec.seconds_per_char[u.render.engine] / u.render.rate
    total = sum(est.values())
    assert est["espeak"] / total <= 0.35
    assert abs(total / 3600 - spec.hours) / spec.hours < 0.05


def test_plan_is_a_function_of_the_seed(plan):
    spec, p = plan
    sents = load_sentences(Path(spec.fortunes_dir), spec.fortune_files, Path(spec.wordnet_dir),
                           min_words=spec.min_words, max_words=spec.max_words)
    assert plan_corpus(spec, sents) == p
    spec.seed += 1
    assert plan_corpus(spec, sents) != p


@pytest.mark.tts
def test_same_seed_gives_byte_identical_manifests(tmp_path, tiny_corpus):
    from tests.conftest import TINY_HOURS

    build_corpus(load_spec(hours=TINY_HOURS), tmp_path / "again", num_workers=2, progress=False)
    for s in SPLITS:
        a, b = tiny_corpus / f"{s}.jsonl", tmp_path / "again" / f"{s}.jsonl"
        assert a.read_bytes() == b.read_bytes(), s
    assert (tiny_corpus / "corpus.json").read_bytes() == (tmp_path / "again" / "corpus.json").read_bytes()


@pytest.mark.tts
def test_manifests_are_valid_and_cover_every_engine(tiny_corpus):
    engines = set()
    for s in SPLITS:
        for u in read_manifest(tiny_corpus / f"{s}.jsonl"):
            assert (tiny_corpus / u.audio_filepath).exists() and u.duration > 0.3
            engines.add(u.extra["engine"])
    assert engines == {"espeak", "flite", "festival"}


@pytest.mark.slow
@pytest.mark.tts
def test_killed_build_resumes_without_redoing_files(tmp_path):
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "speechkd.cli", "corpus", "synth", "--out", str(out), "--hours", "0.04",
           "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    finished = lambda: list(out.glob("audio/**/*.flac"))  # not the in-flight temp files under .tmp/
    while time.time() < deadline and len(finished()) < 15:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "train.jsonl").exists(), "the build finished before it could be killed"
    done = {p: p.stat().st_mtime_ns for p in finished()}
    assert len(done) >= 15
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for p, mtime in done.items():
        assert p.stat().st_mtime_ns == mtime, f"{p} was redone"
    n = sum(len(read_manifest(out / f"{s}.jsonl")) for s in SPLITS)
    assert n == len(finished()) and n > len(done)
    assert not (out / ".tmp").exists()


@pytest.mark.slow
@pytest.mark.tts
def test_empty_or_unreadable_audio_is_rendered_again_and_a_full_disk_never_lands(tmp_path, monkeypatch):
    """Defect 4: a disk full during synthesis left 0-byte audio that later runs counted as rendered."""
    from speechkd.data.synth import build as B

    out = tmp_path / "c"
    spec = load_spec(hours=0.004)
    real = B.engines.postprocess
    calls = {"n": 0}

    def disk_full_once(r, raw, dst, sr):  # the first sox call "runs out of space": 0 bytes written
        calls["n"] += 1
        if calls["n"] == 1:
            Path(dst).write_bytes(b"")
            return
        real(r, raw, dst, sr)

    monkeypatch.setattr(B.engines, "postprocess", disk_full_once)
    summary = build_corpus(spec, out, num_workers=1, progress=False)
    assert summary["failures"] == 1
    assert not [p for p in out.glob("audio/**/*.flac") if p.stat().st_size == 0]  # never moved into place
    assert "wrote no readable audio" in (out / "rejected" / "synth_failures.jsonl").read_text()
    # a 0-byte and a truncated file (left by an older run, say) are not "done"
    files = sorted(out.glob("audio/**/*.flac"))
    files[0].write_bytes(b"")
    files[1].write_bytes(files[1].read_bytes()[:20])
    kept = {p: p.stat().st_mtime_ns for p in files[2:]}
    summary = build_corpus(spec, out, num_workers=1, progress=False)
    assert summary["failures"] == 0 and not (out / "rejected" / "synth_failures.jsonl").exists()
    assert B.audio_ok(files[0]) and B.audio_ok(files[1])
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    n = sum(len(read_manifest(out / f"{s}.jsonl")) for s in summary["splits"])
    assert n == summary["planned_utterances"]


@pytest.mark.slow
@pytest.mark.tts
def test_corpus_stage_with_failures_is_retried_on_the_next_run(tmp_path, monkeypatch):
    """Defect 5: a stage with failures said so only in a count; its failures must be retried on rerun."""
    from speechkd.data.synth import engines
    from speechkd.stages.runner import run_recipe

    recipe = tmp_path / "r" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text("name: s\nstages:\n  corpus: {hours: 0.004, num_workers: 1}\n")
    real = engines.render_espeak
    monkeypatch.setattr(engines, "render_espeak", lambda r, out: (_ for _ in ()).throw(engines.SynthError("boom")))
    assert run_recipe(recipe, exp_root=tmp_path / "exp") == [("corpus", "ran")]
    d = tmp_path / "exp" / "s" / "corpus"
    import json

    failed = json.loads((d / ".done").read_text())["failures"]
    assert failed > 0 and json.loads((d / "outputs.json").read_text())["failures"] == failed
    kept = {p: p.stat().st_mtime_ns for p in d.glob("audio/**/*.flac")}
    monkeypatch.setattr(engines, "render_espeak", real)
    assert run_recipe(recipe, exp_root=tmp_path / "exp") == [("corpus", "ran")]  # retried, in place
    assert json.loads((d / ".done").read_text())["failures"] == 0
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished audio was not redone
    assert run_recipe(recipe, exp_root=tmp_path / "exp") == [("corpus", "skipped")]
