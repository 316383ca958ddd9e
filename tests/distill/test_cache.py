"""Teacher cache: round trip, mismatch errors, truncated shards, resume of the stage, a KD student."""

import json
import os
import shutil

import numpy as np
import pytest

from speechkd.data.manifest import Utterance, write_manifest
from speechkd.distill.cache import CacheError, TeacherCache, shard_ok, write_shard
from speechkd.stages.runner import run_recipe
from tests.conftest import REPO

RECIPE = """
name: kd
seed: 3
stages:
  corpus: {hours: 0.01, untranscribed_hours: 0.006}
  featurize: {num_workers: 1}
  tokenizer: {kind: char}
  teacher:
    type: train
    model: {bidirectional: true, layers: 1, hidden: 32, stack: 3}
    epochs: 1
    max_frames: 3000
  baseline:
    type: train
    model: {bidirectional: false, layers: 1, hidden: 24, stack: 3}
    epochs: 1
    max_frames: 3000
  teacher_cache: {shard_size: 6, k: 4, nbest: 3, beam: 4, splits: [train, dev, untranscribed]}
  student:
    type: distill
    model: {bidirectional: false, layers: 1, hidden: 24, stack: 3}
    epochs: 1
    max_frames: 3000
    kd: {alpha: 0.5, delay: null, extra_delay: 1, seq: nbest, nbest: 2, window: 1}
  s_online:
    type: distill
    model: {bidirectional: false, layers: 1, hidden: 24, stack: 3}
    epochs: 1
    max_frames: 3000
    kd: {alpha: 0.5, delay: 1, online: true}
  s_hint:
    type: distill
    model: {bidirectional: false, layers: 1, hidden: 24, stack: 3}
    epochs: 1
    max_frames: 3000
    checkpoint_every: 1
    kd: {alpha: 0.5, delay: 1, online: true, hint_weight: 0.5}
  s_occ:
    type: distill
    model: {bidirectional: false, layers: 1, hidden: 24, stack: 3}
    epochs: 1
    max_frames: 3000
    kd: {alpha: 0.3, delay: 0, seq: occupancy}
  s_1best:
    type: distill
    model: {bidirectional: false, layers: 1, hidden: 24, stack: 3}
    epochs: 1
    max_frames: 3000
    kd: {alpha: 0.0, delay: 0, seq: 1best}
  s_unt:
    type: distill
    model: {bidirectional: false, layers: 1, hidden: 24, stack: 3}
    epochs: 2
    max_frames: 3000
    max_steps_from: baseline
    kd: {alpha: 0.5, delay: 1, pseudo: nbest, pseudo_nbest: 2, pseudo_threshold: 0.0}
    data: {untranscribed: [untranscribed], ratio: 0.5}
  d_unt: {type: decode, model: s_unt}
  d_online: {type: decode, model: s_online, splits: [dev]}
  d_hint: {type: decode, model: s_hint, splits: [dev]}
  d_occ: {type: decode, model: s_occ, splits: [dev]}
  d_1best: {type: decode, model: s_1best, splits: [dev]}
"""


def test_shard_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for u in range(3):
        T = 5 + u
        p = rng.dirichlet(np.ones(4) * 0.3, size=T)
        order = np.argsort(-p, axis=1)
        probs = np.take_along_axis(p, order, 1).astype(np.float16)
        entries.append({"id": f"u{u}", "probs": probs, "ids": order.astype(np.uint8),
                        "nbest": [([1, 2, u], -1.5), ([3], -2.0)]})
    d = tmp_path / "c"
    index = write_shard(d / "shards" / "train" / "cache-00000.npz", entries, min_prob=0.05)
    rows = [Utterance(id=u["id"], audio_filepath="x.wav", duration=1.0, text="a",
                      extra={"cache": {"shard": "shards/train/cache-00000.npz", **{k: u[k] for k in
                             ("offset", "frames", "nbest_offset", "nbest")}}}) for u in index["utts"]]
    write_manifest(rows, d / "train.jsonl")
    (d / "meta.json").write_text(json.dumps({"vocab_size": 4, "tokenizer": "x", "stack": 3, "k": 4,
                                             "splits": ["train"]}))
    c = TeacherCache(d)
    for e in entries:
        got = c.get(e["id"])
        keep = e["probs"] >= np.float16(0.05)
        keep[:, 0] = True  # the best token is always stored
        assert (~keep).any()  # the threshold did drop entries
        np.testing.assert_array_equal(got.probs[keep], e["probs"][keep])
        np.testing.assert_array_equal(got.ids[keep], e["ids"][keep])
        assert (got.probs[~keep] == 0).all()
        # the mass not stored is derived on read: what min_prob left out
        np.testing.assert_allclose(got.pruned, np.where(~keep, e["probs"], 0).astype(np.float32).sum(1), atol=3e-3)
        assert got.nbest == [(list(t), s) for t, s in e["nbest"]]
    assert shard_ok(d / "shards" / "train" / "cache-00000.npz")


@pytest.fixture(scope="module")
def kd_exp(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        res = run_recipe(recipe, exp_root=root / "exp")
    finally:
        os.chdir(cwd)
    return recipe, root / "exp" / "kd", res


@pytest.mark.slow
@pytest.mark.tts
def test_pipeline_with_cache_and_student(kd_exp):
    _, d, res = kd_exp
    assert dict(res)["student"] == "ran"
    out = json.loads((d / "teacher_cache" / "outputs.json").read_text())
    assert out["splits"]["train"]["utterances"] > 0 and out["cache_bytes"] > 0
    # the teacher mass beyond the top k, which the kernel measures, is kept: per utterance and per split
    idx = json.loads(sorted((d / "teacher_cache" / "shards" / "train").glob("cache-*.json"))[0].read_text())
    assert all(0.0 <= u["beyond_k"] <= u["frames"] for u in idx["utts"])
    per_frame = out["splits"]["train"]["mass_beyond_k_per_frame"]
    assert per_frame == pytest.approx(sum(u["beyond_k"] for u in idx["utts"]) / idx["frames"], abs=0.05)
    assert 0.0 <= per_frame < 1.0
    st = json.loads((d / "student" / "outputs.json").read_text())
    assert (d / "student" / "model.safetensors").exists()
    from speechkd.models import load_bundle

    b = load_bundle(d / "student" / "model.safetensors")  # the bundle records the delay the student emits with
    assert b.delay_frames == st["delay_frames"] and b.kd["delay"] == st["delay_frames"] and b.kd["extra_delay"] == 0
    assert b.provenance["stage"] == "student" and b.provenance["type"] == "distill" and b.provenance["fingerprint"]
    # the delay used is the estimate plus the look-ahead budget
    assert st["delay_frames"] == st["delay_estimated_frames"] + 1
    assert st["delay_ms"] == 30 * st["delay_frames"]


@pytest.mark.slow
@pytest.mark.tts
def test_untranscribed_audio_through_featurize_cache_and_a_student(kd_exp):
    """Issue 23: untranscribed rows are featurized, cached with a confidence, and a student learns from them at
    the baseline's step count; nothing of them reaches CMVN, the tokenizer or a decode stage."""
    _, d, _ = kd_exp
    corpus = json.loads((d / "corpus" / "corpus.json").read_text())
    assert corpus["untranscribed"] == ["untranscribed"] and corpus["splits"]["untranscribed"]["utterances"] > 0
    feat = json.loads((d / "featurize" / "summary.json").read_text())
    assert feat["untranscribed"] == ["untranscribed"] and feat["splits"]["untranscribed"]["kept"] > 0
    assert feat["cmvn_frames"] == feat["splits"]["train"]["frames"]  # CMVN from the transcribed train split only
    cache = json.loads((d / "teacher_cache" / "outputs.json").read_text())
    assert cache["untranscribed"] == ["untranscribed"]
    rows = [json.loads(x) for x in (d / "teacher_cache" / "untranscribed.jsonl").read_text().splitlines()]
    assert rows and all("text" not in r and 0.0 < r["cache"]["confidence"] <= 1.0 for r in rows)
    st = json.loads((d / "s_unt" / "outputs.json").read_text())
    base = json.loads((d / "baseline" / "outputs.json").read_text())
    assert st["steps"] == base["steps"] == st["max_steps_from"]["steps"]
    assert st["untranscribed"]["utterances"] == len(rows) and st["untranscribed"]["pseudo_label_share"] == 1.0
    # a decode stage's default splits leave the untranscribed one out (it has nothing to score against)
    assert set(json.loads((d / "d_unt" / "summary.json").read_text())["splits"]) == {"dev", "test", "test_unseen_voice"}


@pytest.mark.slow
@pytest.mark.tts
def test_every_kind_of_student_decodes(kd_exp):
    """Section 5: distill -> decode round trip for online, hint, occupancy and 1-best students. Defect 14: the
    hint projection was registered on the student, so its model.safetensors failed the strict load."""
    from speechkd.models.io import load_model, read_tensors

    _, d, res = kd_exp
    for s in ("online", "hint", "occ", "1best"):
        assert dict(res)[f"d_{s}"] == "ran"
        summ = json.loads((d / f"d_{s}" / "summary.json").read_text())
        assert summ["splits"]["dev"]["utterances"] > 0 and 0 <= summ["splits"]["dev"]["cer"]
        load_model(d / f"s_{s}" / "model.safetensors")  # strict: no extra tensors
        assert json.loads((d / f"s_{s}" / "outputs.json").read_text())["skipped_steps"] == 0  # finite losses
    _, weights = read_tensors(d / "s_hint" / "model.safetensors")
    assert not [k for k in weights if "hint" in k]
    # the head is trained and checkpointed beside the student, for resume
    last = sorted((d / "s_hint" / "checkpoints").iterdir())[-1]
    _, heads = read_tensors(last / "heads.safetensors")
    assert set(heads) == {"hint_proj.weight", "hint_proj.bias"} and heads["hint_proj.weight"].shape == (64, 24)


@pytest.mark.slow
@pytest.mark.tts
def test_cache_mismatch_errors(kd_exp):
    from speechkd.text.tokenizer import CharTokenizer, train_tokenizer

    _, d, _ = kd_exp
    cache = TeacherCache(d / "teacher_cache")
    manifest = d / "featurize" / "train.jsonl"
    cache.check(manifest, CharTokenizer(), 3)
    with pytest.raises(CacheError, match="frame rate is stack 3"):
        cache.check(manifest, CharTokenizer(), 4)
    spm = train_tokenizer("sentencepiece", ["hello world there"] * 20, vocab_size=20)
    with pytest.raises(CacheError, match="another vocabulary"):
        cache.check(manifest, spm, 3)
    other = d.parent / "other.jsonl"
    other.write_text(manifest.read_text().splitlines()[0].replace('"id": "', '"id": "zz-') + "\n")
    with pytest.raises(CacheError, match="is not in the cache"):
        cache.check(other, CharTokenizer(), 3)


@pytest.mark.slow
@pytest.mark.tts
def test_cache_stage_resumes_and_rebuilds_truncated_shard(kd_exp, tmp_path):
    recipe, d, _ = kd_exp
    exp = tmp_path / "exp"
    shutil.copytree(d.parent, exp)
    cdir = exp / "kd" / "teacher_cache"
    shards = sorted((cdir / "shards" / "train").glob("cache-*.npz"))
    assert len(shards) >= 2
    before = {p: p.stat().st_mtime_ns for p in shards}
    # crash mid-stage: no .done, one shard truncated, one shard's index gone
    (cdir / ".done").unlink()
    shards[0].write_bytes(shards[0].read_bytes()[:100])
    shards[1].with_suffix(".json").unlink()
    assert not shard_ok(shards[0]) and not shard_ok(shards[1])
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        res = run_recipe(recipe, exp_root=exp, to_stage="teacher_cache")
    finally:
        os.chdir(cwd)
    assert dict(res)["teacher_cache"] == "ran"
    for p in shards:
        assert shard_ok(p)
        if p not in shards[:2]:
            assert p.stat().st_mtime_ns == before[p], f"{p.name} was redone"
    assert (cdir / "train.jsonl").read_text() == (d / "teacher_cache" / "train.jsonl").read_text()


@pytest.mark.slow
@pytest.mark.tts
def test_cache_stage_under_torchrun_each_rank_writes_its_shards(kd_exp, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    recipe, d, _ = kd_exp
    exp = tmp_path / "exp"
    shutil.copytree(d.parent, exp)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "speechkd.cli", "run", str(recipe),
                        "--exp-root", str(exp), "--from", "teacher_cache", "--to", "teacher_cache", "--force"],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cdir = exp / "kd" / "teacher_cache"
    shards = sorted((cdir / "shards" / "train").glob("cache-*.npz"))
    assert len(shards) >= 2 and all(shard_ok(p) for p in shards)
    # same content as the single-process cache, and every utterance present
    assert (cdir / "train.jsonl").read_text() == (d / "teacher_cache" / "train.jsonl").read_text()
    TeacherCache(cdir).check(exp / "kd" / "featurize" / "train.jsonl", __import__("speechkd.text.tokenizer",
                             fromlist=["CharTokenizer"]).CharTokenizer(), 3)


KILL_STUDENT = """
  s_kill:
    type: distill
    model: {bidirectional: false, layers: 1, hidden: 24, stack: 3}
    epochs: 6
    max_frames: 1200
    checkpoint_every: 1
    kd: {alpha: 0.5, delay: 1, seq: nbest, nbest: 2}
  s_kill_hint:
    type: distill
    model: {bidirectional: false, layers: 1, hidden: 24, stack: 3}
    epochs: 3
    max_frames: 1200
    checkpoint_every: 1
    kd: {alpha: 0.5, delay: 1, online: true, hint_weight: 0.5}
  q_kill:
    type: qat
    init: student
    epochs: 6
    max_frames: 1200
    checkpoint_every: 1
  s_kill_unt:
    type: distill
    model: {bidirectional: false, layers: 1, hidden: 24, stack: 3}
    epochs: 4
    max_frames: 1200
    checkpoint_every: 1
    kd: {alpha: 0.5, delay: 1, pseudo: 1best, pseudo_threshold: 0.2}
    data: {untranscribed: [untranscribed], ratio: 0.4}
"""


@pytest.mark.slow
@pytest.mark.tts
def test_distill_stage_killed_with_sigkill_resumes_to_identical_weights(kd_exp, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import torch

    from speechkd.models.io import read_tensors
    from speechkd.train import checkpoint as ck

    recipe, d, _ = kd_exp
    rec = tmp_path / "recipe.yaml"
    rec.write_text(recipe.read_text() + KILL_STUDENT)
    runs = {}
    for name in ("a", "b"):
        shutil.copytree(d, tmp_path / name / "kd")
        runs[name] = [sys.executable, "-m", "speechkd.cli", "run", str(rec), "--exp-root", str(tmp_path / name)]
    r = subprocess.run(runs["a"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage, at in (("s_kill", 6), ("s_kill_hint", 3), ("q_kill", 4), ("s_kill_unt", 5)):
        ckdir = tmp_path / "b" / "kd" / stage / "checkpoints"
        proc = subprocess.Popen(runs["b"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline, killed = time.time() + 300, False
        while time.time() < deadline and proc.poll() is None:
            cks = ck.list_checkpoints(ckdir)
            if cks and int(cks[-1].name.split("-")[1]) >= at:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.01)
        proc.wait()
        assert killed, f"{stage} finished before it could be killed"
        assert not (tmp_path / "b" / "kd" / stage / ".done").exists()
    r = subprocess.run(runs["b"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "resuming from" in r.stderr, r.stderr[-3000:]
    for stage in ("s_kill", "s_kill_hint", "q_kill", "s_kill_unt"):
        ta = read_tensors(tmp_path / "a" / "kd" / stage / "model.safetensors")[1]
        tb = read_tensors(tmp_path / "b" / "kd" / stage / "model.safetensors")[1]
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (stage, k)
    # the QAT student is saved baked: its LSTM and output weights sit on the per-row int8 grid
    from speechkd.quant import fake_quant_int8

    meta, tq = read_tensors(tmp_path / "b" / "kd" / "q_kill" / "model.safetensors")
    assert meta["quantization"].startswith("int8")
    for k in [k for k in tq if k.startswith("fwd.") and ".weight_" in k] + ["out.weight"]:
        assert torch.equal(fake_quant_int8(tq[k]), tq[k]), k
    assert not torch.equal(tq["out.weight"], read_tensors(tmp_path / "b" / "kd" / "student" / "model.safetensors")[1]["out.weight"])
