"""Issue 20: hostile audio, manifests, imports, corpus specs and transcripts. Each case names the point
of the issue it covers; each fails without its fix."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechkd.config import ConfigError, from_dict, load_yaml
from speechkd.data.audio import AudioError, load_audio
from speechkd.data.importers import import_nemo
from speechkd.data.manifest import ManifestError, iter_manifest, relative_to_manifest, validate_manifest, write_manifest
from speechkd.features.cmvn import CMVNStats, compute_cmvn
from speechkd.features.store import FeatureRef, FeatureStore, FeatureStoreError
from speechkd.stages import featurize
from speechkd.text.normalize import normalize_text, unspellable
from tests.conftest import REPO, write_tone
from tests.data.test_bad_input import _ctx, _u


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "speechkd.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, **kw)


def _huge(path: Path) -> Path:
    t = np.arange(32000) / 16000
    sf.write(str(path), (1e30 * 0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="FLOAT")
    return path


# -- 1. huge finite samples ----------------------------------------------------------------------------

def test_huge_float_samples_are_rejected_not_featurized(tmp_path):
    with pytest.raises(AudioError, match="samples reach 3e\\+29; audio must lie in \\[-1, 1\\]") as e:
        load_audio(_huge(tmp_path / "huge.wav"))
    assert e.value.reason == "out_of_range"


def test_featurize_rejects_the_huge_file_and_cmvn_stays_finite(tmp_path):
    a = tmp_path / "audio"
    rows = [_u(f"g{i}", write_tone(a / f"g{i}.wav", 1.5, freq=200 + 40 * i)) for i in range(3)]
    rows.append(_u("huge", _huge(a / "huge.wav"), dur=2.0))
    ctx = _ctx(tmp_path)
    write_manifest(rows, ctx.exp_dir / "corpus" / "train.jsonl")
    summary = featurize.run(from_dict(featurize.Config, {"num_workers": 1}), ctx)
    assert summary["rejected"] == {"out_of_range": 1} and summary["splits"]["train"]["kept"] == 3
    stats = CMVNStats.load(ctx.out_dir / "cmvn.json")
    assert np.isfinite(stats.mean).all() and np.isfinite(stats.std).all()


def test_non_finite_features_are_rejected_by_featurize(tmp_path, monkeypatch):
    """Even if audio passes its checks, features that are not finite never reach a shard."""
    import torch

    from speechkd.data import featurize as featlib

    real = featlib.compute_fbank
    monkeypatch.setattr(featlib, "compute_fbank", lambda w, o: real(w, o) * torch.tensor(float("nan")))
    u = _u("g", write_tone(tmp_path / "g.wav", 1.5))
    feats, problem = featlib.featurize_utterance(u, tmp_path / "g.wav", featurize.Config())
    assert feats is None and problem[0] == "non_finite_features"


def test_cmvn_can_never_become_non_finite(tmp_path):
    with pytest.raises(ValueError, match="CMVN statistics over 2 frames are not finite"):
        compute_cmvn([np.array([[1.0, np.nan], [2.0, 3.0]])])
    (tmp_path / "cmvn.json").write_text(json.dumps({"mean": [float("nan")], "std": [1.0], "count": 3}))
    with pytest.raises(ValueError, match="cmvn.json: CMVN statistics hold NaN"):
        CMVNStats.load(tmp_path / "cmvn.json")


# -- 6. NeMo ids that collide ---------------------------------------------------------------------------

def test_nemo_rows_without_id_get_ids_that_cannot_collide(tmp_path):
    src = tmp_path / "src"
    for d in ("a", "b"):
        write_tone(src / d / "0001.wav", 1.0)
    m = src / "m.jsonl"
    m.write_text("".join(json.dumps({"audio_filepath": f"{d}/0001.wav", "duration": 1.0, "text": "hi"}) + "\n"
                         for d in ("a", "b")))
    utts = import_nemo(m, tmp_path / "out.jsonl")
    assert sorted(u.id for u in utts) == ["a/0001", "b/0001"]


def test_an_import_that_rejects_rows_says_so_on_its_last_line(tmp_path):
    src = tmp_path / "src"
    write_tone(src / "a.wav", 1.0)
    m = src / "m.jsonl"
    m.write_text(json.dumps({"audio_filepath": "a.wav", "duration": 1.0, "text": "hi", "id": "x"}) + "\n"
                 + json.dumps({"audio_filepath": "gone.wav", "duration": 1.0, "text": "hi", "id": "y"}) + "\n")
    r = _cli("corpus", "import", "nemo", m, "--out", tmp_path / "o.jsonl")
    assert r.returncode == 0
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("wrote 1 utterances") and "rejected 1 (missing: 1)" in last


# -- 15. the corpus spec path -----------------------------------------------------------------------------

def test_a_spec_that_is_not_yaml_is_never_quoted_in_the_error(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$SECRETHASH:19000:0:99999:7:::\nuser: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(secret)
    assert "SECRETHASH" not in str(e.value) and "unclosed" not in str(e.value) and "line" in str(e.value)


@pytest.mark.parametrize("path", ["/dev/zero", "/tmp"])
def test_a_spec_that_is_a_device_or_folder_is_refused_before_reading(path):
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_yaml(path)


def test_a_huge_spec_is_refused_by_size(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(5 << 20)
    with pytest.raises(ConfigError, match="more than the .* allowed"):
        load_yaml(big)


# -- 18. odd files and their messages ---------------------------------------------------------------------

def test_a_fifo_or_device_as_audio_is_not_called_empty(tmp_path):
    import os

    fifo = tmp_path / "f.wav"
    os.mkfifo(fifo)
    for p in (fifo, Path("/dev/urandom"), tmp_path):
        with pytest.raises(AudioError, match="not a regular file") as e:
            load_audio(p)
        assert e.value.reason == "not_a_file"


def test_validate_names_an_audio_file_given_as_a_manifest(tmp_path):
    wav = write_tone(tmp_path / "x.wav")
    assert validate_manifest(wav) == [f"{wav}: this is an audio file, not a manifest"]


def test_validate_does_not_read_dev_zero_forever():
    (p,) = validate_manifest("/dev/zero")
    assert "not a regular file" in p


def test_a_manifest_line_without_end_is_bounded(tmp_path):
    p = tmp_path / "long.jsonl"
    p.write_bytes(b"{" + b" " * (2 << 20))
    with pytest.raises(ManifestError, match="line longer than"):
        list(iter_manifest(p))


def test_utf16_is_still_named_as_such(tmp_path):
    p = tmp_path / "u.jsonl"
    p.write_bytes('{"a": 1}\n'.encode("utf-16-le"))
    with pytest.raises(ManifestError, match="UTF-16 encoded"):
        list(iter_manifest(p))


def test_validate_flags_empty_text_folders_and_absurd_durations(tmp_path):
    write_tone(tmp_path / "a.wav")
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "e", "audio_filepath": "a.wav", "duration": 1.0, "text": " ?! "},
        {"id": "d", "audio_filepath": str(tmp_path), "duration": 1.0, "text": "hi"},
        {"id": "z", "audio_filepath": "a.wav", "duration": 0, "text": "hi"},
        {"id": "h", "audio_filepath": "a.wav", "duration": 1e9, "text": "hi"}]))
    problems = "\n".join(validate_manifest(m))
    assert "(e): empty transcript" in problems and "(d): audio_filepath" in problems and "not a regular file" in problems
    assert "(z): duration 0 s" in problems and "(h): duration 1e+09 s is over 3600 s" in problems


def test_a_feature_reference_with_negative_frames_is_refused(tmp_path):
    with pytest.raises(FeatureStoreError, match="offset 0 and frames -5"):
        FeatureRef.from_json({"shard": "s.npy", "offset": 0, "frames": -5}, "m.jsonl:3")


@pytest.mark.parametrize("arr,match", [(np.zeros(10, np.float32), "2-D float array"),
                                       (np.zeros((10, 40), np.float32), "40-dimensional; the model takes 80"),
                                       (np.full((10, 80), np.nan, np.float32), "hold NaN/Inf")])
def test_odd_feature_shards_are_one_line_naming_the_file(tmp_path, arr, match):
    np.save(tmp_path / "s.npy", arr)
    with pytest.raises(FeatureStoreError, match=match) as e:
        FeatureStore(tmp_path).get(FeatureRef("s.npy", 0, 5), 80)
    assert "s.npy" in str(e.value)


# -- manifests that can move -------------------------------------------------------------------------------

def test_manifests_store_absolute_paths_for_audio_outside_the_experiment(tmp_path):
    exp_stage = tmp_path / "exp" / "r" / "featurize"
    exp_stage.mkdir(parents=True)
    inside = tmp_path / "exp" / "r" / "corpus" / "a.wav"
    outside = tmp_path / "data" / "deep" / "b.wav"
    assert relative_to_manifest(inside, exp_stage) == "../corpus/a.wav"
    assert relative_to_manifest(outside, exp_stage) == str(outside.resolve())


# -- 20. text normalisation --------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,want", [
    ("co\u00adoperate", "cooperate"), ("wo\u200drd and\u200bmore", "word and more"), ("Straße", "strasse"),
    ("½ cup", "one half cup"), ("3.5%", "three point five percent"), ("in 1999", "in one thousand nine hundred ninety nine"),
    ("Æsop", "aesop"), ("H.", "h"), ("don't 'quote'", "don't quote"), ("ﬁne", "fine"), ("1,000 men", "one thousand men")])
def test_normalisation_drops_invisibles_folds_and_reads_numbers(raw, want):
    assert normalize_text(raw) == want


def test_text_that_cannot_be_spelled_is_rejected_with_its_reason(tmp_path):
    assert unspellable("Привет world") == "привет" and unspellable("naïve café") == ""
    write_tone(tmp_path / "a.wav")
    write_tone(tmp_path / "b.wav")
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"audio_filepath": "a.wav", "duration": 1.0, "text": "Привет мир", "id": "ru"}) + "\n"
                 + json.dumps({"audio_filepath": "b.wav", "duration": 1.0, "text": "hello", "id": "en"}) + "\n")
    utts = import_nemo(m, tmp_path / "out" / "o.jsonl")
    assert [u.id for u in utts] == ["en"]
    rej = [json.loads(x) for x in (tmp_path / "out" / "rejected" / "o.jsonl").read_text().splitlines()]
    assert rej[0]["id"] == "ru" and rej[0]["reason"] == "unspellable_text" and "Привет" not in rej[0]["detail"]
