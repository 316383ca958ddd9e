"""The model bundle: one file carries everything needed to run the model on audio, read by one function."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from speechkd.features.fbank import FbankOptions
from speechkd.models import ModelBundle, ModelConfig, build_model, load_bundle, save_bundle, save_weights
from speechkd.models.bundle import BundleError, upgrade_legacy
from speechkd.models.io import read_tensors, save_tensors
from speechkd.text.tokenizer import CharTokenizer, SentencePieceTokenizer, tokenizer_fingerprint
from tests.conftest import REPO


def _bundle(tok=None, **kw) -> ModelBundle:
    torch.manual_seed(0)
    tok = tok or CharTokenizer()
    fb = FbankOptions(num_mel_bins=40, frame_shift_ms=12.5, frame_length_ms=25.0, low_freq=40.0)
    m = build_model(ModelConfig(input_dim=40, vocab_size=tok.vocab_size, hidden=16, layers=2, stack=2,
                                bidirectional=False, frame_shift_ms=12.5, tokenizer=tokenizer_fingerprint(tok)))
    m.set_cmvn(np.linspace(-3, 3, 40), np.linspace(1, 2, 40))
    return ModelBundle(m, tok, fb, **{"delay_frames": 3, "kd": {"alpha": 0.9, "delay": 3},
                                      "provenance": {"recipe": "r", "stage": "student", "fingerprint": "abc"},
                                      **kw})


def _same(a: ModelBundle, b: ModelBundle):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.cfg == b.cfg and a.fbank == b.fbank and a.tokenizer.tokens() == b.tokenizer.tokens()
    assert (a.delay_frames, a.kd, a.provenance, a.quantization) == (b.delay_frames, b.kd, b.provenance,
                                                                     b.quantization)


def test_a_char_bundle_round_trips(tmp_path):
    b = _bundle(quantization="int8 weights")
    save_bundle(b, tmp_path / "model.safetensors")
    back = load_bundle(tmp_path / "model.safetensors")
    _same(b, back)
    mean, std = back.cmvn
    assert np.allclose(mean, np.linspace(-3, 3, 40)) and np.allclose(std, np.linspace(1, 2, 40))
    assert back.frame_ms == 25.0 and not back.model.training


def test_a_sentencepiece_bundle_carries_the_model_bytes(tmp_path):
    words = ["the cat sat on the mat", "a dog ran far away", "speech is sound in time"] * 30
    tok = SentencePieceTokenizer.train(words, vocab_size=30)
    b = _bundle(tok)
    save_bundle(b, tmp_path / "m.safetensors")
    meta, tensors = read_tensors(tmp_path / "m.safetensors")
    assert tensors["tokenizer.spm_model"].numpy().tobytes() == tok.model_proto
    back = load_bundle(tmp_path / "m.safetensors")
    _same(b, back)
    assert back.tokenizer.encode("the cat") == tok.encode("the cat")


def test_no_absolute_paths_in_a_bundle(tmp_path):
    save_bundle(_bundle(), tmp_path / "m.safetensors")
    meta, _ = read_tensors(tmp_path / "m.safetensors")
    assert not any(str(tmp_path) in v or v.startswith("/") for v in meta.values())


@pytest.mark.parametrize("key", ["fbank", "tokenizer", "model_config"])
def test_a_bundle_missing_a_part_is_refused_naming_it(tmp_path, key):
    save_bundle(_bundle(), tmp_path / "m.safetensors")
    meta, tensors = read_tensors(tmp_path / "m.safetensors")
    del meta[key]
    save_tensors(tensors, tmp_path / "bad.safetensors", meta)
    with pytest.raises(BundleError, match=rf"bad.safetensors: the model bundle has no {key}"):
        load_bundle(tmp_path / "bad.safetensors")


def test_a_bundle_whose_parts_disagree_is_refused(tmp_path):
    save_bundle(_bundle(), tmp_path / "m.safetensors")
    meta, tensors = read_tensors(tmp_path / "m.safetensors")
    fb = json.loads(meta["fbank"])
    meta["fbank"] = json.dumps({**fb, "frame_shift_ms": 10.0})
    save_tensors(tensors, tmp_path / "bad.safetensors", meta)
    with pytest.raises(BundleError, match="frame_shift_ms=12.5 but the fbank options say 10.0"):
        load_bundle(tmp_path / "bad.safetensors")
    meta["fbank"] = json.dumps({**fb, "frame_shift_ms": 12.5})
    meta["tokenizer"] = json.dumps({"kind": "char", "symbols": ["<blk>", "a", "b"]})
    save_tensors(tensors, tmp_path / "bad2.safetensors", meta)
    with pytest.raises(ValueError, match="bad2.safetensors: the model outputs 29 tokens but the tokenizer"):
        load_bundle(tmp_path / "bad2.safetensors")


def test_an_old_model_file_is_refused_with_the_upgrade_command_and_the_command_upgrades_it(tmp_path):
    """A model file from before bundles (weights + config only; fbank, tokenizer and delay in files beside it)."""
    b = _bundle()
    d = tmp_path / "student"
    d.mkdir()
    save_weights(b.model, d / "model.safetensors")
    with pytest.raises(BundleError, match=r"model.safetensors: a model file without its fbank and tokenizer .*"
                                          r"upgrade it with: speechkd upgrade-model .*model.safetensors"):
        load_bundle(d / "model.safetensors")
    b.tokenizer.save(d)
    (d / "features.json").write_text(json.dumps({"fbank": {"num_mel_bins": 40, "frame_shift_ms": 12.5,
                                                           "low_freq": 40.0}}))
    (d / "outputs.json").write_text(json.dumps({"delay_frames": 3, "kd": {"alpha": 0.9, "delay": 3}}))
    r = subprocess.run([sys.executable, "-m", "speechkd.cli", "upgrade-model", str(d / "model.safetensors")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "delay 3 frames" in r.stdout
    up = load_bundle(d / "model.safetensors")
    assert up.fbank == b.fbank and up.delay_frames == 3 and up.kd == {"alpha": 0.9, "delay": 3}
    sa, sb = up.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(BundleError, match="already a model bundle"):
        upgrade_legacy(d / "model.safetensors")


def test_upgrade_without_the_fbank_options_or_the_delay_says_how_to_give_them(tmp_path):
    save_weights(_bundle().model, tmp_path / "model.safetensors")
    CharTokenizer().save(tmp_path)
    with pytest.raises(BundleError, match="features.json: cannot read the fbank options .* give them with --features"):
        upgrade_legacy(tmp_path / "model.safetensors")
    (tmp_path / "features.json").write_text(json.dumps({"fbank": {"num_mel_bins": 40, "frame_shift_ms": 12.5,
                                                                  "low_freq": 40.0}}))
    # no outputs.json: a KD student's delay is not guessed as 0
    with pytest.raises(BundleError, match="outputs.json: cannot read the stage's outputs .* give it with --delay"):
        upgrade_legacy(tmp_path / "model.safetensors")
    assert upgrade_legacy(tmp_path / "model.safetensors", delay_frames=2).delay_frames == 2


def test_a_bundle_is_self_contained_nothing_beside_it_is_read(tmp_path):
    """Copied alone into an empty folder (no tokenizer.json, features.json or outputs.json beside it), it loads
    with the same description; and junk sidecars beside it are ignored."""
    save_bundle(_bundle(), tmp_path / "a" / "model.safetensors")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors")
    (tmp_path / "b" / "features.json").write_text("{not json")
    (tmp_path / "b" / "tokenizer.json").write_text('{"kind": "char", "symbols": ["<blk>", "x"]}')
    _same(load_bundle(tmp_path / "a" / "model.safetensors"), load_bundle(tmp_path / "b" / "model.safetensors"))
