"""pipelines/librispeech end to end on a tiny tree in LibriSpeech's own layout (SPEAKER/CHAPTER/*.flac beside
SPEAKER-CHAPTER.trans.txt, one folder per subset), so a user only points `corpus.root` at their copy."""

import json

import pytest

from speechkd.config import ConfigError
from speechkd.data.manifest import read_manifest
from speechkd.stages.runner import load_recipe, run_recipe
from tests.conftest import REPO, write_tone

RECIPE = REPO / "pipelines" / "librispeech"
SUBSETS = {"train-clean-100": (("19", "198"), ("26", "495")), "dev-clean": (("84", "121"),),
           "test-clean": (("61", "70968"),), "test-other": (("1688", "142285"),)}
WORDS = ["THE CAT SAT", "A DOG RAN HOME", "SHE SAID NO", "WE WENT OUT", "HE'S HERE NOW", "IT IS COLD",  # train
         "THE DOG SAT", "A CAT RAN OUT", "SHE WENT HOME", "WE SAID NO", "IT IS HERE", "HE RAN",  # dev, test
         "THE COLD CAT", "A DOG IS OUT", "SHE SAT NOW"]  # test-other


def librispeech_tree(root):
    """Three utterances per chapter, tones of different pitch and length (a tree, not speech)."""
    n = 0
    for subset, chapters in SUBSETS.items():
        for spk, chap in chapters:
            d = root / subset / spk / chap
            lines = []
            for i in range(3):
                uid = f"{spk}-{chap}-{i:04d}"
                write_tone(d / f"{uid}.flac", seconds=1.2 + 0.3 * i, freq=180.0 + 40 * n, subtype="PCM_16")
                lines.append(f"{uid} {WORDS[n]}")
                n += 1
            (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


SMALL = ["featurize.shard_size=4", "export.adapter_files=4", "export.adapter_steps=20", "student_qat.max_frames=4000"]
for _stage in ("teacher", "baseline"):
    SMALL += [f"{_stage}.model.layers=1", f"{_stage}.model.hidden=16", f"{_stage}.epochs=2", f"{_stage}.max_frames=4000",
              f"{_stage}.optim.warmup_steps=1", f"{_stage}.average_last=1"]
SMALL += ["defaults.distill.model.layers=1", "defaults.distill.model.hidden=16", "defaults.distill.epochs=2",
          "defaults.distill.max_frames=4000", "defaults.distill.optim.warmup_steps=1", "defaults.distill.average_last=1"]


def test_the_recipe_names_a_missing_corpus_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"corpus.splits.dev: 'dev-clean' not found \(in corpus.root "
                                          r"/nowhere/LibriSpeech\)"):
        load_recipe(RECIPE, ["corpus.root=/nowhere/LibriSpeech"])


@pytest.mark.slow
def test_the_librispeech_recipe_runs_end_to_end_on_the_layout(tmp_path):
    root = librispeech_tree(tmp_path / "LibriSpeech")
    results = run_recipe(RECIPE, exp_root=tmp_path / "exp", overrides=[f"corpus.root={root}"] + SMALL)
    assert all(s == "ran" for _, s in results) and results[-1][0] == "report"
    exp = tmp_path / "exp" / "librispeech"
    train = read_manifest(exp / "corpus" / "train.jsonl")
    assert [u.id for u in train] == [f"{s}-{c}-{i:04d}" for s, c in SUBSETS["train-clean-100"] for i in range(3)]
    assert {u.speaker for u in train} == {"19", "26"} and train[0].text == "the cat sat"
    assert json.loads((exp / "corpus" / "corpus.json").read_text())["splits"].keys() == \
        {"train", "dev", "test", "test_other"}
    lm = json.loads((exp / "lm" / "outputs.json").read_text())
    text = (exp / "lm" / "text.txt").read_text()
    assert set(text.splitlines()) == {w.lower() for w in WORDS[:6]}  # no held-out sentence
    assert lm["order"] == 3
    decoded = json.loads((exp / "decode_student_qat" / "summary.json").read_text())["splits"]
    assert {"dev", "test", "test_other"} <= set(decoded)
    for m in ("baseline", "student_frame", "student_qat"):
        assert (exp / "export" / m / "model.onnx").is_file() and (exp / "export" / m / "lm.json").is_file()
    report = json.loads((exp / "report" / "report.json").read_text())
    assert "student_qat [lm]" in json.dumps(report)
