"""Issue 20, points 2, 3 and 16: nothing is deleted before every input is read and checked; --force removes
only what speechkd wrote and checks upstream stages first; recipe values are checked against what the
stages they name will produce. Runs on a tiny imported corpus (no TTS)."""

import json
import subprocess
import sys

import pytest

from speechkd.config import ConfigError
from speechkd.stages.runner import load_recipe, run_recipe
from tests.conftest import REPO, write_tone

RECIPE = """
name: r
seed: 3
stages:
  corpus: {kind: nemo, splits: {train: data/m.jsonl, dev: data/m.jsonl}}
  featurize: {num_workers: 1}
  tokenizer: {kind: char}
  report: {after: [tokenizer]}
"""


@pytest.fixture()
def recipe(tmp_path):
    data = tmp_path / "data"
    rows = []
    for i in range(4):
        write_tone(data / f"a{i}.wav", 1.0, freq=200 + 30 * i)
        rows.append(json.dumps({"audio_filepath": f"a{i}.wav", "duration": 1.0, "text": "hello there", "id": f"u{i}"}))
    (data / "m.jsonl").write_text("\n".join(rows) + "\n")
    p = tmp_path / "recipe.yaml"
    p.write_text(RECIPE)
    return p


def _files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_a_missing_corpus_input_deletes_nothing(recipe, tmp_path):
    exp = tmp_path / "exp"
    run_recipe(recipe, exp_root=exp, to_stage="corpus")
    before = _files(exp / "r" / "corpus")
    (tmp_path / "data" / "m.jsonl").rename(tmp_path / "data" / "moved.jsonl")
    with pytest.raises(ConfigError, match=r"stages.corpus: corpus.splits.(dev|train): 'data/m.jsonl' not found"):
        run_recipe(recipe, exp_root=exp, to_stage="corpus")
    assert _files(exp / "r" / "corpus") == before


@pytest.mark.parametrize("spec,match", [
    (None, "corpus.spec: 'nowhere/spec.yaml' not found"),
    ("root:$6$SECRET:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n", "2 entries that are not key names"),
    ("hours: 1\nvoices: 3\n", "voices: expected a list"),
])
def test_a_missing_or_unusable_synth_spec_deletes_nothing(tmp_path, spec, match):
    r = tmp_path / "s.yaml"
    if spec is not None:
        (tmp_path / "nowhere").mkdir()
        (tmp_path / "nowhere" / "spec.yaml").write_text(spec)
    r.write_text("name: s\nstages:\n  corpus: {spec: nowhere/spec.yaml}\n")
    done = tmp_path / "exp" / "s" / "corpus"
    done.mkdir(parents=True)
    (done / "train.jsonl").write_text("{}\n")
    (done / ".done").write_text(json.dumps({"fingerprint": "x"}))
    with pytest.raises(ConfigError, match=match) as e:
        run_recipe(r, exp_root=tmp_path / "exp")
    assert "SECRET" not in str(e.value)
    assert (done / "train.jsonl").exists() and (done / ".done").exists()


def test_force_keeps_files_speechkd_did_not_write(recipe, tmp_path):
    exp = tmp_path / "exp"
    run_recipe(recipe, exp_root=exp)
    rep = exp / "r" / "report"
    (rep / "q3.md").write_text("my notes")
    ours = set(_files(rep)) - {"q3.md"}
    assert run_recipe(recipe, exp_root=exp, from_stage="report", to_stage="report", force=True) == [("report", "ran")]
    assert (rep / "q3.md").read_text() == "my notes"
    assert ours <= set(_files(rep))
    # a user's file that was there before the stage first ran is kept too
    fresh = exp / "r2"
    (fresh / "r" / "report").mkdir(parents=True)
    (fresh / "r" / "report" / "mine.txt").write_text("keep")
    run_recipe(recipe, exp_root=fresh)
    run_recipe(recipe, exp_root=fresh, from_stage="report", to_stage="report", force=True)
    assert (fresh / "r" / "report" / "mine.txt").read_text() == "keep"


def test_force_checks_upstream_before_touching_anything(recipe, tmp_path):
    exp = tmp_path / "exp"
    run_recipe(recipe, exp_root=exp, to_stage="tokenizer")
    (exp / "r" / "featurize" / ".done").unlink()  # featurize unfinished
    before = _files(exp / "r" / "tokenizer")
    with pytest.raises(ConfigError, match="reads stage 'featurize', which has not finished"):
        run_recipe(recipe, exp_root=exp, from_stage="tokenizer", force=True)
    assert _files(exp / "r" / "tokenizer") == before


@pytest.mark.parametrize("override,match", [
    ("teacher_cache.k=1000000", "k: 1000000 posteriors per frame, but teacher 'teacher' has a vocabulary of 29"),
    ("teacher_cache.beam=1000000", "beam: must be <= 1024"),
    ("decode_teacher.splits=[dve]", r"splits\[0\]: 'dve' is not a split of stage 'featurize'"),
    ("export.models=[baseline,student_frame,teacher]", "models\\[2\\]: 'teacher' is a bidirectional model"),
    ("export.compare_split=tset", "compare_split\\[0\\]: 'tset' is not a split"),
])
def test_recipe_values_are_checked_against_the_stages_they_name(override, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(REPO / "pipelines" / "quick", [override])


def test_decode_defaults_to_every_split_but_train(recipe, tmp_path):
    from speechkd.stages.decode import Config

    assert Config().splits == [] and Config().train_split == "train"


def test_stage_type_defaults_are_the_recommended_settings():
    from speechkd.stages.distill import Config

    c = Config()
    assert not c.model.bidirectional and c.kd.alpha == 0.9 and c.kd.extra_delay == 2


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "speechkd.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO)


def test_config_takes_a_recipe_stage_and_run_without_recipe_is_clear():
    r = _cli("config", "pipelines/default", "teacher")
    assert r.returncode == 0 and r.stdout.startswith("teacher (train):") and "model.bidirectional = True" in r.stdout
    r = _cli("run")
    assert r.returncode == 2 and "give a recipe folder" in r.stderr and "overrides" in r.stderr
    assert "required: recipe, overrides" not in r.stderr


def test_one_corpus_stage_imports_each_split_with_its_own_kind(tmp_path):
    from speechkd.stages.runner import run_recipe as run

    data = tmp_path / "data"
    ls = data / "ls" / "19" / "198"
    write_tone(ls / "19-198-0001.flac", 1.0)
    (ls / "19-198.trans.txt").write_text("19-198-0001 HELLO THERE\n")
    write_tone(data / "a.wav", 1.0)
    (data / "dev.jsonl").write_text(json.dumps({"audio_filepath": "a.wav", "duration": 1.0, "text": "Hi!", "id": "d"})
                                    + "\n")
    r = tmp_path / "recipe.yaml"
    r.write_text("name: k\nstages:\n  corpus: {kind: librispeech, splits: {train: data/ls, dev: data/dev.jsonl}, "
                 "kinds: {dev: nemo}}\n")
    run(r, exp_root=tmp_path / "exp")
    summ = json.loads((tmp_path / "exp" / "k" / "corpus" / "corpus.json").read_text())
    assert summ["splits"]["train"]["kind"] == "librispeech" and summ["splits"]["dev"]["kind"] == "nemo"
    assert summ["splits"]["train"]["utterances"] == 1 and summ["splits"]["dev"]["utterances"] == 1
    r.write_text(r.read_text().replace("kinds: {dev: nemo}", "kinds: {tst: nemo}"))
    with pytest.raises(ConfigError, match="kinds: names split 'tst'"):
        load_recipe(r)


def test_an_unfinished_stage_whose_input_was_rebuilt_says_so_not_that_its_config_changed(recipe, tmp_path, caplog):
    """Issue 21: an input-only change to a stage that had started but not finished was logged as 'its config
    changed'."""
    import logging

    exp = tmp_path / "exp"
    run_recipe(recipe, exp_root=exp, to_stage="featurize")
    (exp / "r" / "featurize" / ".done").unlink()  # killed before it finished
    done = json.loads((exp / "r" / "corpus" / ".done").read_text())
    (exp / "r" / "corpus" / ".done").write_text(json.dumps({**done, "stamp": "rebuilt0000000000"}))  # corpus rebuilt
    with caplog.at_level(logging.INFO, logger="speechkd.stages.runner"):
        run_recipe(recipe, exp_root=exp, from_stage="featurize", to_stage="featurize")
    msgs = [r.getMessage() for r in caplog.records if "rerunning from scratch" in r.getMessage()]
    assert msgs == ["stage featurize: rerunning from scratch (a stage it reads was rebuilt)"], msgs
