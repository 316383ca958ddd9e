"""Recipes are checked whole before any stage runs; names are plain; the exp folder is locked;
imported corpora are fingerprinted; the runner's fingerprints follow the stage graph."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from speechkd.config import ConfigError
from speechkd.stages.runner import LockedError, exp_lock, load_recipe, run_recipe
from tests.conftest import REPO, write_tone

QUICK = REPO / "pipelines" / "quick" / "recipe.yaml"


def _recipe(tmp: Path, text: str) -> Path:
    p = tmp / "r" / "recipe.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,match", [
    # names become folders: plain only (defect 3)
    ("stages:\n  ../../victim: {type: corpus}\n", r"stages.../../victim: stage name '../../victim' must be plain"),
    ("stages:\n  /abs/dir: {type: corpus}\n", r"stage name '/abs/dir' must be plain"),
    ("name: ../../evil\nstages:\n  corpus: {}\n", r"name: recipe name '../../evil' must be plain"),
    ("stages:\n  .hidden: {type: corpus}\n", r"stage name '.hidden' must be plain"),
    # unvalidated values (defect 10)
    ("stages:\n  corpus: {hours: 0}\n", r"stages.corpus.hours: must be > 0"),
    ("stages:\n  corpus: {hours: -1}\n", r"stages.corpus.hours: must be > 0"),
    ("stages:\n  corpus: {}\n  featurize: {dtype: int8}\n", r"stages.featurize.dtype: 'int8' is not one of"),
    ("stages:\n  corpus: {}\n  featurize: {shard_size: 0}\n", r"stages.featurize.shard_size: must be >= 1"),
    ("stages:\n  corpus: {}\n  featurize: {fbank: {num_mel_bins: 0}}\n", r"featurize.fbank.num_mel_bins: must be >= 1"),
    ("seed: true\nstages:\n  corpus: {}\n", r"'seed' must be a non-negative integer, got True"),
    ("stages:\n  - corpus: {}\n", r"'stages' must be a mapping of stage name -> config \(got a list\)"),
    ("stages:\n  corpus: [1, 2]\n", r"stages.corpus: expected a mapping of config keys, got list"),
    ("stages:\n  corpus: {kind: nemo}\n", r"stages.corpus.splits: give at least one"),
    ("stages:\n  corpus: {kind: mp3}\n", r"stages.corpus.kind: 'mp3' is not one of"),
    ("stages:\n  corpus: {splits: {'../x': a.json}, kind: nemo}\n", r"split name '../x' must be plain"),
    # cross-field rules and references (section 2)
    ("stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {}\n  t: {type: train, model: {layers: 0}}\n",
     r"stages.t.model.layers: must be in \[1, 64\], got 0"),
    ("stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {kind: bpe}\n", r"tokenizer.kind: 'bpe' is not one of"),
    ("stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {}\n  d: {type: decode, model: teachr}\n",
     r"stages.d.model: 'teachr' is not an earlier stage of this recipe"),
    ("stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {}\n  d: {type: decode, model: tokenizer}\n",
     r"stages.d.model: stage 'tokenizer' is a 'tokenizer' stage; expected 'train' or 'distill'"),
    ("stages:\n  corpus: {}\n  d: {type: decode, model: t}\n  featurize: {}\n  t: {type: train}\n",
     r"stages.d.model: 't' is not an earlier stage"),
    ("stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {}\n  t: {type: train}\n"
     "  s: {type: distill, kd: {online: true, seq: nbest, delay: 1}}\n", r"stages.s.kd.seq: 'nbest' needs the teacher"),
    ("stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {}\n  t: {type: train}\n"
     "  s: {type: distill, kd: {online: true, window: 2, delay: 1}}\n", r"stages.s.kd.window: window matching"),
    ("stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {}\n  t: {type: train}\n"
     "  s: {type: distill, kd: {hint_weight: 1.0, delay: 1}}\n", r"stages.s.kd.hint_weight: the hint loss needs"),
    ("stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {}\n  t: {type: train}\n  c: {type: teacher_cache, teachers: [t]}\n"
     "  s: {type: distill, cache: c, kd: {delay: null}}\n", r"stages.s.kd.delay_reference: 'baseline' is not an earlier"),
    ("stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {}\n  t: {type: train}\n"
     "  c: {type: teacher_cache, teachers: [t], nbest: 9, beam: 4}\n", r"stages.c.nbest: must be in \[1, beam=4\]"),
    ("stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {}\n  t: {type: train}\n"
     "  d: {type: decode, model: t, unk_char: 0.5}\n", r"stages.d.unk_char: must be <= 0 \(a cost\), got 0.5"),
    ("stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {}\n  t: {type: train}\n"
     "  c: {type: teacher_cache, teachers: [t], unk_char: 1}\n", r"stages.c.unk_char: must be <= 0"),
])
def test_bad_recipes_fail_at_load(tmp_path, text, match):
    r = _recipe(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        load_recipe(r)
    with pytest.raises(ConfigError, match=match):  # and run_recipe checks before it creates anything
        run_recipe(r, exp_root=tmp_path / "exp")
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow
def test_from_after_to_and_every_bad_value_is_one_line_in_the_cli(tmp_path):
    bad = _recipe(tmp_path, "stages:\n  corpus: {hours: 0}\n")
    for args in (["run", str(bad)], ["run", str(QUICK), "--from", "tokenizer", "--to", "corpus"],
                 ["run", str(QUICK), "featurize.dtype=int8"], ["run", str(QUICK), "seed=true"]):
        r = subprocess.run([sys.executable, "-m", "speechkd.cli", *args, "--exp-root", str(tmp_path / "e")],
                           capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "e").exists()


def test_stage_folders_stay_inside_the_exp_root(tmp_path):
    """Defect 3: `--force` on a stage named ../../victim deleted a folder outside the exp root."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    r = _recipe(tmp_path, "stages:\n  ../../victim: {type: corpus, hours: 0.001}\n")
    with pytest.raises(ConfigError):
        run_recipe(r, exp_root=tmp_path / "exp" / "x", force=True)
    assert (victim / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_a_second_run_into_the_same_exp_dir_is_refused_naming_the_holder(tmp_path):
    """Defect 5: two runs into one exp root raced and marked a partial corpus done."""
    exp = tmp_path / "exp" / "quick"
    with exp_lock(exp):
        r = subprocess.run([sys.executable, "-m", "speechkd.cli", "run", str(QUICK), "--exp-root",
                            str(tmp_path / "exp")], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 2
        assert f"{exp} is in use by another speechkd run (pid " in r.stderr and "--exp-root" in r.stderr
        with pytest.raises(LockedError):
            with exp_lock(exp):
                pass
    with exp_lock(exp):  # released on exit
        pass
    # single stages (--from S --to S) may run side by side, but not beside a run of several stages or themselves
    with exp_lock(exp, stage="a"), exp_lock(exp, stage="b"):
        with pytest.raises(LockedError, match="stage 'a' of"):
            with exp_lock(exp, stage="a"):
                pass
        with pytest.raises(LockedError, match="is in use by"):
            with exp_lock(exp):
                pass
    with exp_lock(exp):
        with pytest.raises(LockedError, match="is in use by another speechkd run \\(pid"):
            with exp_lock(exp, stage="a"):
                pass


def _nemo_recipe(tmp: Path) -> tuple[Path, Path]:
    audio = tmp / "data"
    rows = []
    for i in range(4):
        write_tone(audio / f"u{i}.wav", seconds=1.2, freq=180 + 40 * i)
        rows.append({"audio_filepath": f"u{i}.wav", "duration": 1.2, "text": "hello world", "id": f"u{i}"})
    rows.append({"audio_filepath": "gone.wav", "duration": 1.2, "text": "lost", "id": "gone"})
    m = audio / "train.json"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _recipe(tmp, f"stages:\n  corpus: {{kind: nemo, splits: {{train: {m}}}}}\n  featurize: {{num_workers: 1}}\n"
                        "  tokenizer: {kind: char}\n"), m


def test_imported_corpus_with_a_rejected_row_runs_through(tmp_path):
    """Defect 1: the importer's rejection list was featurized as a split and stopped the pipeline."""
    r, _ = _nemo_recipe(tmp_path)
    res = run_recipe(r, exp_root=tmp_path / "exp")
    assert res == [("corpus", "ran"), ("featurize", "ran"), ("tokenizer", "ran")]
    d = tmp_path / "exp" / "r"
    assert [json.loads(l)["id"] for l in (d / "corpus" / "rejected" / "train.jsonl").read_text().splitlines()] == ["gone"]
    assert json.loads((d / "corpus" / "corpus.json").read_text())["rejected"] == {"train": {"missing": 1}}
    assert sorted(p.name for p in (d / "featurize").glob("*.jsonl")) == ["train.jsonl"]


def test_editing_an_imported_manifest_reruns_the_corpus(tmp_path):
    """Defect 6: imported corpora were not fingerprinted, so an edit gave `corpus: skipped` with stale data."""
    r, m = _nemo_recipe(tmp_path)
    exp = tmp_path / "exp"
    assert run_recipe(r, exp_root=exp, to_stage="corpus") == [("corpus", "ran")]
    assert run_recipe(r, exp_root=exp, to_stage="corpus") == [("corpus", "skipped")]
    m.write_text(m.read_text().replace('"hello world", "id": "u0"', '"hello there", "id": "u0"'))
    assert run_recipe(r, exp_root=exp, to_stage="corpus") == [("corpus", "ran")]
    assert "hello there" in (exp / "r" / "corpus" / "train.jsonl").read_text()


def test_corpus_spec_resolves_against_the_recipe_then_the_toolkit(tmp_path, monkeypatch):
    from speechkd.stages.corpus import resolve_spec

    monkeypatch.chdir(tmp_path)  # not the repo: the working directory must not matter
    assert resolve_spec("data_manifests/synth-en.yaml", tmp_path) == REPO / "data_manifests" / "synth-en.yaml"
    own = tmp_path / "data_manifests" / "synth-en.yaml"
    own.parent.mkdir()
    own.write_text("x: 1\n")
    assert resolve_spec("data_manifests/synth-en.yaml", tmp_path) == own
    with pytest.raises(ConfigError, match="'nope.yaml' not found"):
        resolve_spec("nope.yaml", tmp_path)
    _, planned = load_recipe(QUICK)  # the default spec loads from anywhere
    assert planned[0].name == "corpus"


def reads_of(recipe):
    return {p.name: p.reads for p in load_recipe(recipe)[1]}


def test_fingerprints_follow_the_graph():
    """Section 3: a stage's fingerprint covers only the stages it reads."""
    _, base = load_recipe(QUICK)
    _, changed = load_recipe(QUICK, ["decode_student_qat.splits=[dev]"])
    differ = [a.name for a, b in zip(base, changed) if a.fingerprint != b.fingerprint]
    assert differ == ["decode_student_qat", "export", "latency", "report"]  # export ships its LM weights
    # the teacher cache takes the LM weights the teacher's decode stage tuned: a change there reaches the students
    _, changed = load_recipe(QUICK, ["decode_teacher.alphas=[0.5]"])
    differ = [a.name for a, b in zip(base, changed) if a.fingerprint != b.fingerprint]
    assert differ[:3] == ["decode_teacher", "teacher_cache", "student_frame"]
    _, changed = load_recipe(QUICK, ["baseline.epochs=3"])
    differ = [a.name for a, b in zip(base, changed) if a.fingerprint != b.fingerprint]
    # the baseline, its decode, the students whose delay estimate runs it or whose step count is its (selftrain),
    # the QAT student fine-tuned from one of them, and what exports and measures them; not the teacher or its cache
    assert differ == ["baseline", "decode_baseline", "student_frame", "student_unt_frame", "student_unt_seq",
                      "selftrain", "student_qat", "decode_student_frame", "decode_student_unt_frame",
                      "decode_student_unt_seq", "decode_selftrain", "decode_student_qat", "export", "latency", "report"]
    assert reads_of(QUICK)["student_qat"] == ["student_unt_seq", "featurize", "tokenizer", "teacher_cache"]
    reads = {p.name: p.reads for p in base}
    assert reads["selftrain"] == ["featurize", "tokenizer", "teacher_cache", "baseline"]  # max_steps_from
    assert reads["student_frame"] == ["featurize", "tokenizer", "teacher_cache", "baseline"]
    _, changed = load_recipe(QUICK, ["selftrain.max_steps_from=''", "selftrain.max_steps=5"])
    assert {p.name: p.reads for p in changed}["selftrain"] == ["featurize", "tokenizer", "teacher_cache"]


def test_a_stage_whose_output_format_changes_reruns_with_what_reads_it(monkeypatch):
    """A new int8 grid is the same config with other results: the qat stage's OUTPUT_FORMAT is in its fingerprint,
    so an existing experiment reruns it and everything downstream, and nothing upstream."""
    import speechkd.stages.qat as qat

    _, base = load_recipe(QUICK)
    monkeypatch.setattr(qat, "OUTPUT_FORMAT", qat.OUTPUT_FORMAT + 1)
    _, changed = load_recipe(QUICK)
    differ = [a.name for a, b in zip(base, changed) if a.fingerprint != b.fingerprint]
    assert differ == ["student_qat", "decode_student_qat", "export", "latency", "report"]


# -- issue 21: shared defaults, and what the report may read ------------------------------------------

BASE3 = "stages:\n  corpus: {}\n  featurize: {}\n  tokenizer: {}\n  t: {type: train}\n"


def test_defaults_are_merged_under_every_stage_of_their_type(tmp_path):
    text = ("defaults:\n  distill: {epochs: 3, cache: c, model: {layers: 2, hidden: 48}, kd: {delay: 1}}\n" + BASE3 +
            "  c: {type: teacher_cache, teachers: [t]}\n"
            "  a: {type: distill, kd: {alpha: 0.5}}\n"
            "  b: {type: distill, epochs: 7, model: {hidden: 64}}\n")
    _, planned = load_recipe(_recipe(tmp_path, text))
    st = {p.name: p.cfg for p in planned}
    assert (st["a"].epochs, st["a"].model.layers, st["a"].model.hidden, st["a"].kd.alpha, st["a"].kd.delay) == \
        (3, 2, 48, 0.5, 1)
    assert (st["b"].epochs, st["b"].model.layers, st["b"].model.hidden, st["b"].kd.alpha) == (7, 2, 64, 0.9)
    assert st["t"].epochs == 10  # a train stage is not a distill stage: untouched


@pytest.mark.parametrize("defaults,match", [
    ("defaults: [1]\n", r"'defaults' must map stage types to config mappings"),
    ("defaults:\n  distil: {epochs: 2}\n", r"defaults.distil: unknown stage type"),
    ("defaults:\n  train: {epoch: 2}\n", r"stages.t: unknown key"),
])
def test_bad_defaults_are_refused(tmp_path, defaults, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(_recipe(tmp_path, defaults + BASE3))


@pytest.mark.parametrize("recipe,students", [
    ("default", ("student_frame", "student_unt_frame")),
    ("untranscribed", ("student_frame", "student_unt_frame", "student_unt_seq", "selftrain")),
    ("seqkd", ("student_frame", "student_seq", "student_both")),
])
def test_the_default_recipes_resolve_to_the_same_student_configs_as_written_out(recipe, students):
    """The recipes' students differ only in kd and data: the defaults block gives each the shared schedule."""
    _, planned = load_recipe(REPO / "pipelines" / recipe)
    st = {p.name: p.cfg for p in planned}
    for s in students:
        assert (st[s].epochs, st[s].model, st[s].optim, st[s].specaug, st[s].max_frames, st[s].average_last) == \
            (st["baseline"].epochs, st["baseline"].model, st["baseline"].optim, False, 10000, 1)
        assert bool(st[s].data.untranscribed) == (s != "student_frame" and recipe != "seqkd")


def test_the_report_reads_the_stages_it_follows_and_what_they_read(tmp_path):
    _, planned = load_recipe(QUICK)
    rep = {p.name: p for p in planned}["report"]
    assert {"decode_teacher", "teacher", "featurize", "corpus", "export", "latency", "student_qat",
            "student_unt_seq", "selftrain", "student_frame"} <= set(rep.reads)
    text = BASE3 + "  d: {type: decode, model: t}\n  report: {after: [d]}\n"
    _, planned = load_recipe(_recipe(tmp_path, text))
    assert set({p.name: p for p in planned}["report"].reads) == {"d", "t", "featurize", "tokenizer", "corpus"}


def test_a_report_rtf_file_is_fingerprinted_and_must_exist(tmp_path):
    bench = tmp_path / "streaming.json"
    text = BASE3 + f"  d: {{type: decode, model: t}}\n  report: {{after: [d], rtf: {str(bench)!r}}}\n"
    with pytest.raises(ConfigError, match="report.rtf"):
        load_recipe(_recipe(tmp_path, text))
    bench.write_text('{"student": "t", "student_torch_rtf": 0.01}')
    fp1 = {p.name: p.fingerprint for p in load_recipe(_recipe(tmp_path, text))[1]}["report"]
    bench.write_text('{"student": "t", "student_torch_rtf": 0.02}')
    fp2 = {p.name: p.fingerprint for p in load_recipe(_recipe(tmp_path, text))[1]}["report"]
    assert fp1 != fp2


# -- a recipe that extends another ------------------------------------------------------------------------

def test_the_untranscribed_recipe_reuses_every_stage_of_the_default_run():
    """pipelines/untranscribed shares exp/default: the default's stages keep their fingerprints (so a finished
    `make demo` is reused) and only its own stages are new, after them."""
    meta_d, default = load_recipe(REPO / "pipelines" / "default")
    meta_u, unt = load_recipe(REPO / "pipelines" / "untranscribed")
    assert (meta_u["name"], meta_u["seed"]) == (meta_d["name"], meta_d["seed"])
    assert [(p.name, p.fingerprint) for p in unt[:len(default)]] == [(p.name, p.fingerprint) for p in default]
    assert [p.name for p in unt[len(default):]] == ["student_unt_seq", "selftrain", "decode_student_unt_seq",
                                                    "decode_selftrain", "report_untranscribed"]
    assert unt[0].recipe_dir.resolve() == (REPO / "pipelines" / "default").resolve()


def test_extends_merges_defaults_replaces_named_stages_and_resolves_paths_from_their_file(tmp_path):
    base = tmp_path / "base" / "recipe.yaml"
    base.parent.mkdir()
    base.write_text("name: shared\nseed: 7\ndefaults:\n  train: {epochs: 3, max_frames: 500}\n" + BASE3 +
                    "  d: {type: decode, model: t}\n")
    ext = _recipe(tmp_path, "extends: ../base\ndefaults:\n  train: {epochs: 4}\nstages:\n"
                            "  d: {type: decode, model: t, splits: [dev]}\n  t2: {type: train}\n")
    meta, planned = load_recipe(ext)
    assert (meta["name"], meta["seed"]) == ("shared", 7)
    assert [p.name for p in planned] == ["corpus", "featurize", "tokenizer", "t", "d", "t2"]  # d stays in place
    st = {p.name: p for p in planned}
    assert (st["t"].cfg.epochs, st["t"].cfg.max_frames, st["t2"].cfg.epochs) == (4, 500, 4)
    assert st["d"].cfg.splits == ["dev"]
    assert st["corpus"].recipe_dir.resolve() == base.parent and st["t2"].recipe_dir == ext.parent
    _, plain = load_recipe(base)
    assert st["corpus"].fingerprint == plain[0].fingerprint and st["t"].fingerprint != plain[3].fingerprint
    meta, _ = load_recipe(_recipe(tmp_path, "extends: ../base\nname: mine\nstages: {}\n"))
    assert meta["name"] == "mine"


@pytest.mark.parametrize("text,match", [
    ("extends: ../nowhere\nstages: {}\n", r"extends '../nowhere': no recipe at"),
    ("extends: [a]\nstages: {}\n", r"'extends' must name a recipe file or folder"),
    ("extends: .\nstages: {}\n", r"'extends' goes round in a circle"),
])
def test_bad_extends_are_refused(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(_recipe(tmp_path, text))



def test_keys_that_change_how_a_stage_runs_but_not_what_it_writes_do_not_rerun_it():
    """Worker processes and prefetching leave the fingerprint alone (a rerun with more workers reuses the
    finished stage); anything else that changes the config changes it."""
    _, base = load_recipe(QUICK)
    fp = {p.name: p.fingerprint for p in base}
    _, same = load_recipe(QUICK, ["teacher.workers=4", "teacher.prefetch=8", "featurize.num_workers=1",
                                  "corpus.num_workers=1", "defaults.distill.workers=2"])
    assert {p.name: p.fingerprint for p in same} == fp
    _, other = load_recipe(QUICK, ["teacher.threads=1"])
    assert {p.name: p.fingerprint for p in other}["teacher"] != fp["teacher"]


def test_a_key_added_at_its_default_reruns_no_finished_stage():
    """global_batches came after experiments were run: at its default (0) it stays out of the fingerprint, so
    upgrading reruns nothing; set, it is fingerprinted like any key."""
    _, base = load_recipe(QUICK)
    fp = {p.name: p.fingerprint for p in base}
    _, same = load_recipe(QUICK, ["teacher.global_batches=0"])
    assert {p.name: p.fingerprint for p in same} == fp
    _, other = load_recipe(QUICK, ["teacher.global_batches=2"])
    assert {p.name: p.fingerprint for p in other}["teacher"] != fp["teacher"]


def test_a_training_stage_reruns_when_its_noise_recordings_change(tmp_path):
    """``augment.noise`` names a folder outside the experiment: its recordings are part of the stage's
    fingerprint (a changed, added or renamed recording reruns the stage and what reads it); a folder that is
    missing or holds no recording refuses the recipe in one line."""
    noise = tmp_path / "noise"
    write_tone(noise / "hum.wav", seconds=0.5, freq=50.0)
    write_tone(noise / "sub" / "whine.flac", seconds=0.3, freq=3000.0)
    (noise / "README.txt").write_text("not audio\n")
    over = [f"baseline.augment.noise={noise}"]

    def prints():
        return {p.name: p.fingerprint for p in load_recipe(QUICK, over)[1]}

    plain = {p.name: p.fingerprint for p in load_recipe(QUICK)[1]}
    first = prints()
    assert first["baseline"] != plain["baseline"] and first["teacher"] == plain["teacher"]
    assert prints() == first  # nothing changed, nothing reruns
    (noise / "README.txt").write_text("still not audio, edited\n")  # not a recording: ignored
    assert prints() == first
    write_tone(noise / "hum.wav", seconds=0.5, freq=60.0)  # the same name and size, other samples
    second = prints()
    assert second["baseline"] != first["baseline"] and second["decode_baseline"] != first["decode_baseline"]
    assert second["teacher"] == first["teacher"]
    (noise / "sub" / "whine.flac").rename(noise / "sub" / "whistle.flac")
    assert prints()["baseline"] != second["baseline"]
    for bad, match in ((tmp_path / "none", "is not a folder"), (tmp_path / "empty", "no")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(ConfigError, match=f"stages.baseline: augment.noise: .*{match}") as e:
            load_recipe(QUICK, [f"baseline.augment.noise={bad}"])
        assert "\n" not in str(e.value)
