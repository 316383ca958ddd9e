"""The word LM in the torch-free runtime and the CLI: an exported folder with ``lm.arpa`` and ``lm.json`` beside
``model.onnx`` decodes with the fused beam carried across chunks, whose final text is what the offline search
gives on the same posteriors; ``--no-lm`` and ``--lm`` choose; bad LM files are refused naming them."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from speechkd.export import export_streaming
from speechkd.lm import estimate, write_arpa
from speechkd.lm.decoder import LMDecoder
from speechkd.runtime.recognizer import StreamingRecognizer, detokenize
from tests.conftest import REPO
from tests.export.test_export import _speech, make_model

WORDS = ["a", "an", "and", "the", "then", "then", "ten", "net", "eat", "tea", "at", "ant", "hat", "that"]


@pytest.fixture(scope="module")
def shipped_lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("shiplm")
    export_streaming(make_model(d / "m"), d / "onnx")
    rng = np.random.default_rng(0)
    sents = [[WORDS[int(i)] for i in rng.integers(0, len(WORDS), int(rng.integers(1, 6)))] for _ in range(300)]
    write_arpa(estimate(sents, 3), d / "onnx" / "lm.arpa")
    (d / "onnx" / "lm.json").write_text(json.dumps({"alpha": 0.8, "beta": 1.5, "beam": 6, "recombine": False}))
    wav = d / "speech.wav"
    sf.write(str(wav), _speech(3.0), 16000)
    return d / "onnx" / "model.onnx", wav


def _stream(model, wav, chunk, **kw):
    x, sr = sf.read(str(wav), dtype="float32")
    rec = StreamingRecognizer(model, keep_log_probs=True, **kw)
    partials = []
    for i in range(0, len(x), chunk):
        rec.accept_waveform(x[i:i + chunk], sr)
        partials.append(rec.result().text)
    return rec, rec.input_finished(), partials


@pytest.mark.parametrize("chunk", [800, 2560, 16000])
def test_the_streaming_lm_beam_ends_where_the_offline_search_ends(shipped_lm, chunk):
    model, wav = shipped_lm
    rec, res, partials = _stream(model, wav, chunk, lm=True)
    d = rec.lm_decoder
    assert d is not None and (d.alpha, d.beta, d.beam, d.recombine) == (0.8, 1.5, 6, False)  # lm.json's settings
    assert d.unk_char == -0.5  # (a key lm.json leaves out: the default)
    offline = rec.lm_decoder.decode(np.concatenate(rec.log_probs))[0]
    assert res.tokens == offline.tokens and res.is_final
    assert res.text == detokenize([rec.symbols[k] for k in offline.tokens])
    assert any(partials)  # partial results come from the best prefix while the audio streams
    greedy = _stream(model, wav, chunk)[1]
    assert res.text != greedy.text  # the LM changes what this random model says


def test_the_cli_uses_the_shipped_lm_unless_told(shipped_lm, tmp_path):
    model, wav = shipped_lm
    cli = [sys.executable, "-m", "speechkd.cli", "transcribe", "--model", str(model)]
    with_lm = subprocess.run([*cli, str(wav)], capture_output=True, text=True, cwd=REPO)
    without = subprocess.run([*cli, "--no-lm", str(wav)], capture_output=True, text=True, cwd=REPO)
    assert with_lm.returncode == 0 and without.returncode == 0, with_lm.stderr[-1000:] + without.stderr[-1000:]
    rec_lm, rec_greedy = (_stream(model, wav, 2560, lm=lm)[1].text for lm in (True, None))
    assert with_lm.stdout.split("\t", 1)[1].strip() == rec_lm
    assert without.stdout.split("\t", 1)[1].strip() == rec_greedy
    # --lm names another LM; a missing one is one line naming it; --alpha overrides lm.json
    r = subprocess.run([*cli, "--lm", str(tmp_path / "nowhere"), str(wav)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0 and str(tmp_path / "nowhere") in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*cli, "--alpha", "0", "--beta", "0", str(wav)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.split("\t", 1)[1].strip() == _stream(
        model, wav, 2560, lm=True, lm_weights={"alpha": 0.0, "beta": 0.0})[1].text


@pytest.mark.parametrize("content,match", [
    ('{"alpha": "x"}', "alpha must be a number"),
    ('{"beam": 2.5}', "beam must be a number"),
    ('{"recombine": 1}', "recombine must be true or false"),
    ('{"unk_char": 0.5}', "unk_char must be a number in"),  # a cost: a bonus per character would spell garbage
    ('[1, 2]', "not a JSON object"),
    ('{not json', "not a JSON object"),
])
def test_bad_fusion_settings_are_refused_naming_the_file(shipped_lm, tmp_path, content, match):
    model, _ = shipped_lm
    d = tmp_path / "f"
    d.mkdir()
    for name in ("model.onnx", "tokens.txt", "lm.arpa"):
        (d / name).write_bytes((model.parent / name).read_bytes())
    (d / "lm.json").write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        StreamingRecognizer(d / "model.onnx", lm=True)
    assert str(d / "lm.json") in str(e.value)


def test_an_arpa_file_that_is_not_one_is_refused_naming_file_and_line(shipped_lm, tmp_path):
    model, _ = shipped_lm
    bad = tmp_path / "lm.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0 a\nsecret-content-here\n\\end\\\n")
    with pytest.raises(ValueError) as e:
        StreamingRecognizer(model, lm=bad)
    assert f"{bad}:6" in str(e.value) and "secret" not in str(e.value)
    assert LMDecoder  # the decoder class the runtime builds on is importable without torch (tested elsewhere)


def test_export_refuses_a_missing_or_sherpa_lm_before_writing_anything(tmp_path):
    src = make_model(tmp_path / "m")
    cli = [sys.executable, "-m", "speechkd.cli", "export", "--model", str(src)]
    r = subprocess.run([*cli, "--out", str(tmp_path / "a"), "--lm", str(tmp_path / "nowhere")], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 2 and str(tmp_path / "nowhere") in r.stderr and not (tmp_path / "a").exists()
    (tmp_path / "lm").mkdir()
    write_arpa(estimate([["a", "b"]], 2), tmp_path / "lm" / "lm.arpa")
    r = subprocess.run([*cli, "--out", str(tmp_path / "b"), "--lm", str(tmp_path / "lm"), "--format", "sherpa"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "sherpa-onnx has no n-gram fusion" in r.stderr and not (tmp_path / "b").exists()
    r = subprocess.run([*cli, "--out", str(tmp_path / "c"), "--lm", str(tmp_path / "lm"), "--alpha", "0.3"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-1000:]
    assert json.loads((tmp_path / "c" / "lm.json").read_text())["alpha"] == 0.3 and (tmp_path / "c" / "lm.arpa").exists()
