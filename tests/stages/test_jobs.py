"""``speechkd run --jobs N``: independent stages side by side in child processes."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from speechkd.config import ConfigError
from speechkd.stages.plan import PlannedStage
from speechkd.stages.runner import next_stages, run_recipe
from tests.conftest import REPO

RECIPE = """
name: tiny
seed: 7
defaults:
  train: {model: {bidirectional: false, layers: 1, hidden: 16, stack: 3}, epochs: 1, max_steps: 3,
          max_frames: 3000, average_last: 1, specaug: false}
stages:
  corpus: {hours: 0.01}
  featurize: {shard_size: 8, num_workers: 1}
  tokenizer: {kind: char}
  a: {type: train}
  b: {type: train}
  decode_a: {type: decode, model: a}
"""


def _st(name, type_, reads=()):
    return PlannedStage(name=name, type=type_, cfg=None, fingerprint=name, reads=list(reads))


def test_next_stages_waits_for_inputs_caps_jobs_and_keeps_alone_stages_alone():
    c, f = _st("corpus", "corpus"), _st("featurize", "featurize", ["corpus"])
    a, b = _st("a", "train", ["featurize"]), _st("b", "train", ["featurize"])
    d, lat = _st("decode_a", "decode", ["a"]), _st("latency", "latency", ["a"])
    run = {s.name for s in (c, f, a, b, d, lat)}

    def nxt(pending, finished, running, jobs=2):
        return [s.name for s in next_stages(pending, set(finished), running, jobs, run)]

    assert nxt([c, f, a, b, d, lat], [], []) == ["corpus"]
    assert nxt([f, a, b, d, lat], [], [c]) == []                      # nothing beside an ALONE stage
    assert nxt([f, a, b, d, lat], ["corpus"], []) == ["featurize"]
    assert nxt([a, b, d, lat], ["corpus", "featurize"], []) == ["a", "b"]
    assert nxt([a, b, d, lat], ["corpus", "featurize"], [], jobs=1) == ["a"]
    assert nxt([b, d, lat], ["corpus", "featurize"], [a]) == ["b"]
    assert nxt([d, lat], ["corpus", "featurize", "a"], [b]) == ["decode_a"]  # latency waits to run alone
    assert nxt([lat, d], ["corpus", "featurize", "a"], [b]) == []     # ...and holds back what comes after it
    assert nxt([lat, d], ["corpus", "featurize", "a", "b"], []) == ["latency"]
    assert nxt([d], ["corpus", "featurize"], [b]) == []               # its input has not finished
    # a stage read from an earlier run (not in this one) counts as finished
    assert [s.name for s in next_stages([d], set(), [], 2, {"decode_a"})] == ["decode_a"]


@pytest.mark.slow
@pytest.mark.tts
def test_jobs_runs_independent_stages_side_by_side_and_the_same_as_in_order_on_that_thread_share(
        tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(REPO)  # the corpus spec path is relative to the repo root
    rf = tmp_path / "tiny" / "recipe.yaml"
    rf.parent.mkdir()
    rf.write_text(RECIPE)
    n0 = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with caplog.at_level(logging.INFO, logger="speechkd.stages.runner"):
            res = run_recipe(rf, exp_root=tmp_path / "exp", jobs=2)
        assert res == [(s, "ran") for s in ("corpus", "featurize", "tokenizer", "a", "b", "decode_a")]
        started = [r.getMessage() for r in caplog.records if ": started on" in r.getMessage()]
        assert "stage corpus (corpus): started on 2 thread(s)" in started       # alone, every thread
        assert "stage b (train): started on 1 thread(s) beside a" in started    # side by side, half each
        d = tmp_path / "exp" / "tiny"
        assert all((d / s / ".done").exists() and (d / ".logs" / f"{s}.log").exists() for s, _ in res)
        # a finished run skips everything, side by side or in order
        assert run_recipe(rf, exp_root=tmp_path / "exp", jobs=2) == [(s, "skipped") for s, _ in res]
        assert all(st == "skipped" for _, st in run_recipe(rf, exp_root=tmp_path / "exp"))
        with pytest.raises(ConfigError, match="must be >= 1"):
            run_recipe(rf, exp_root=tmp_path / "exp", jobs=0)
    finally:
        torch.set_num_threads(n0)
    a, b = load_file(d / "a" / "model.safetensors"), load_file(d / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same stage config trained beside another: the same weights
    # and the same weights as a run in order on that stage's thread share
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "speechkd.cli", "run", str(rf), "--to", "a", "--exp-root",
                        str(tmp_path / "seq")], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    s = load_file(tmp_path / "seq" / "tiny" / "a" / "model.safetensors")
    assert all(torch.equal(a[k], s[k]) for k in a)


@pytest.mark.slow
@pytest.mark.tts
def test_a_failing_stage_stops_the_run_names_its_log_and_keeps_what_finished(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    rf = tmp_path / "tiny" / "recipe.yaml"
    rf.parent.mkdir()
    # b's split exists in no manifest: planning cannot know, the stage fails when it runs
    rf.write_text(RECIPE.replace("  b: {type: train}", "  b: {type: train, dev_split: nosuch}"))
    with pytest.raises(RuntimeError, match=r"stage\(s\) b failed: .*nosuch.* \(logs in .*\.logs\); the stages that finished"):
        run_recipe(rf, exp_root=tmp_path / "exp", jobs=2)
    d = tmp_path / "exp" / "tiny"
    assert (d / "a" / ".done").exists() and not (d / "b" / ".done").exists()
    # the run waited for what was running: a stage that started beside the failure (decode_a, if a finished
    # first) has finished too
    assert not (d / "decode_a").exists() or (d / "decode_a" / ".done").exists()
    assert "nosuch" in (d / ".logs" / "b.log").read_text()
