"""The lm stage: no held-out sentence reaches the LM text, the ARPA it writes loads and scores, and a text file
the recipe names is fingerprinted (editing it reruns the stage)."""

import json

from speechkd.lm import read_arpa
from speechkd.stages.runner import load_recipe, run_recipe
from tests.conftest import write_tone

TRAIN = ["the cat sat on the mat", "a dog ran to the park", "we go home now", "the cat ran home",
         "a cat sat on a dog", "the dog sat on the cat"]
DEV = ["the cat sat on the park", "we go to the mat"]
TEST = ["a dog sat on the mat now"]


def _corpus(tmp_path):
    data = tmp_path / "data"
    for split, texts in (("train", TRAIN), ("dev", DEV), ("test", TEST)):
        rows = []
        for i, t in enumerate(texts):
            write_tone(data / split / f"{i}.wav", 1.0, freq=200 + 20 * i)
            rows.append(json.dumps({"audio_filepath": f"{split}/{i}.wav", "duration": 1.0, "text": t.upper(),
                                    "id": f"{split}{i}"}))
        (data / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return data


def _recipe(tmp_path, lm_cfg: str):
    r = tmp_path / "recipe.yaml"
    r.write_text("name: r\nseed: 1\nstages:\n"
                 "  corpus: {kind: nemo, splits: {train: data/train.jsonl, dev: data/dev.jsonl, test: data/test.jsonl}}\n"
                 f"  lm: {lm_cfg}\n")
    return r


def test_no_held_out_sentence_reaches_the_lm_text(tmp_path):
    _corpus(tmp_path)
    text = tmp_path / "lm.txt"
    # the user's text holds a dev and a test sentence (in other case and punctuation): both are removed
    text.write_text("\n".join(TRAIN + ["The cat sat on the park.", "A dog sat on the mat, now!", "the end"]) + "\n")
    run_recipe(_recipe(tmp_path, "{text: lm.txt, order: 3}"), exp_root=tmp_path / "exp")
    out = tmp_path / "exp" / "r" / "lm"
    used = (out / "text.txt").read_text().splitlines()
    assert not set(used) & set(DEV + TEST) and "the end" in used and len(used) == len(TRAIN) + 1
    summ = json.loads((out / "outputs.json").read_text())
    assert summ["heldout_sentences_removed"] == 2 and summ["order"] == 3 and summ["sentences"] == len(used)
    assert set(summ["eval"]) == {"dev", "test"} and summ["eval"]["dev"]["perplexity"] > 1
    assert summ["eval"]["test"]["oov_rate"] == 0.0
    lm = read_arpa(out / "lm.arpa")
    assert lm.counts() == summ["ngrams"] and lm.logprob(["the"], "cat") > lm.logprob(["the"], "now")


def test_without_a_text_file_an_imported_corpus_uses_its_train_transcripts(tmp_path):
    _corpus(tmp_path)
    run_recipe(_recipe(tmp_path, "{order: 2}"), exp_root=tmp_path / "exp")
    assert (tmp_path / "exp" / "r" / "lm" / "text.txt").read_text().splitlines() == TRAIN


def test_the_text_file_is_fingerprinted_and_must_exist(tmp_path):
    import pytest

    from speechkd.config import ConfigError

    _corpus(tmp_path)
    r = _recipe(tmp_path, "{text: lm.txt}")
    with pytest.raises(ConfigError, match="lm.txt: cannot read the lm text"):
        load_recipe(r)
    (tmp_path / "lm.txt").write_text("a b c\n")
    fp = {p.name: p.fingerprint for p in load_recipe(r)[1]}["lm"]
    (tmp_path / "lm.txt").write_text("a b d\n")
    assert {p.name: p.fingerprint for p in load_recipe(r)[1]}["lm"] != fp


def test_the_embedded_corpus_pool_minus_every_held_out_sentence(tiny_corpus, tmp_path):
    """The synth corpus: the LM text is the spec's whole sentence pool, dev, test and unseen-voice sentences
    removed."""
    import shutil

    from speechkd.config import from_dict
    from speechkd.data.manifest import read_manifest
    from speechkd.stages import lm as stage
    from speechkd.stages.runner import StageContext
    from tests.conftest import REPO

    exp = tmp_path / "exp"
    (exp / "corpus").mkdir(parents=True)
    for f in list(tiny_corpus.glob("*.jsonl")) + [tiny_corpus / "corpus.json"]:
        shutil.copy(f, exp / "corpus" / f.name)
    (exp / "corpus" / ".done").write_text("{}")
    (exp / "lm").mkdir()
    out = stage.run(from_dict(stage.Config, {}), StageContext("t", exp, exp / "lm", 1, REPO, reads={"corpus"}))
    used = set((exp / "lm" / "text.txt").read_text().splitlines())
    held = {u.text for s in ("dev", "test", "test_unseen_voice") for u in read_manifest(exp / "corpus" / f"{s}.jsonl")}
    train = {u.text for u in read_manifest(exp / "corpus" / "train.jsonl")}
    assert held and not used & held and train <= used and len(used) > 10 * len(train)
    assert out["heldout_sentences_removed"] == len(held) and out["eval"]["test"]["perplexity"] > 1
