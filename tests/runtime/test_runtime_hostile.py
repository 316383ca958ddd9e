"""Issue 20 on exported models and the runtime: model metadata and tokens.txt checked on load, the
streaming resampler, stdin WAV and --rate, segments for every model kind, the same refusal of NaN audio on
every path, CLI values, export faults, checkpoints whose config lies, and reference normalisation."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from speechkd.export import ExportError, export_streaming
from speechkd.runtime.recognizer import ModelError, StreamingRecognizer, parse_wav_header
from tests.conftest import REPO
from tests.export.test_export import _speech, make_model


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    d = tmp_path_factory.mktemp("ship")
    src = make_model(d / "m")
    export_streaming(src, d / "onnx")
    wav = d / "speech.wav"
    sf.write(str(wav), _speech(), 16000)
    return src, d / "onnx" / "model.onnx", wav


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "speechkd.cli", *map(str, args)], capture_output=True, cwd=REPO, **kw)


def _tampered(onnx_path, dst, **changes):
    import onnx

    dst.mkdir(parents=True, exist_ok=True)
    proto = onnx.load(str(onnx_path))
    for p in proto.metadata_props:
        if p.key in changes:
            p.value = str(changes[p.key])
    onnx.save(proto, str(dst / "model.onnx"))
    shutil.copy(onnx_path.parent / "tokens.txt", dst / "tokens.txt")
    return dst / "model.onnx"


def _fbank(**kw):
    f = {"sample_rate": 16000, "num_mel_bins": 80, "frame_length_ms": 25.0, "frame_shift_ms": 10.0,
         "low_freq": 20.0, "high_freq": 0.0, "preemphasis": 0.97, "window": "povey", "dither": 0.0}
    return json.dumps({**f, **kw})


# -- 13. metadata is checked when a model is loaded ------------------------------------------------------

@pytest.mark.parametrize("changes,match", [
    ({"fbank": _fbank(frame_shift_ms=0)}, "fbank.frame_shift_ms=0 is out of range"),
    ({"fbank": _fbank(frame_shift_ms=1e-6)}, "fbank.frame_shift_ms=1e-06 is out of range"),
    ({"fbank": _fbank(frame_length_ms=1e7)}, "fbank.frame_length_ms=1e\\+07 is out of range"),
    ({"fbank": "{not json"}, "metadata fbank is not JSON"),
    ({"fbank": _fbank(num_mel_bins=40)}, "fbank.num_mel_bins differs from feat_dim=80"),
    ({"flush_frames": 10**9}, "flush_frames=1000000000 is out of range"),
    ({"stack": 0}, "stack=0 is out of range"),
    ({"stack": "x"}, "stack='x' is not an integer"),
    ({"hidden_size": 33}, "hidden_size=33 does not match the graph's input 'h'"),
    ({"num_layers": 3}, "num_layers=3 does not match the graph's input 'h'"),
    ({"feat_dim": 40, "fbank": _fbank(num_mel_bins=40)}, "feat_dim=40 does not match the graph's input 'x'"),
    ({"blank_id": 99}, "blank_id='99' is not an id"),
    ({"waveform_scale": 32768}, "waveform_scale=32768"),
    ({"frame_ms": "nan"}, "frame_ms=nan is out of range"),
])
def test_bad_metadata_is_one_line_naming_model_and_key(shipped, tmp_path, changes, match):
    m = _tampered(shipped[1], tmp_path / "t", **changes)
    with pytest.raises(ModelError, match=match) as e:
        StreamingRecognizer(m)
    assert str(m) in str(e.value)


def test_metadata_states_the_waveform_scale_and_source_without_absolute_paths(shipped):
    import onnxruntime as ort

    meta = ort.InferenceSession(str(shipped[1])).get_modelmeta().custom_metadata_map
    assert meta["waveform_scale"] == "1.0" and "[-1, 1]" in meta["waveform"]
    assert meta["source"] == "m/model.safetensors"


def test_export_refuses_an_absurd_delay(shipped, tmp_path):
    with pytest.raises(ExportError, match=r"delay_frames must be in \[0, 1000\]"):
        export_streaming(shipped[0], tmp_path / "o", delay_frames=10**9)
    r = _cli("export", "--model", shipped[0], "--out", tmp_path / "o2", "--delay", "1000000000", text=True)
    assert r.returncode == 2 and "delay (output frames) must be in [0, 1000]" in r.stderr


# -- 18. tokens.txt -----------------------------------------------------------------------------------

@pytest.mark.parametrize("edit,match", [
    (lambda t: t + t.splitlines()[3].split()[0] + " 99\n", "appears twice|ids must be"),
    (lambda t: t.replace("a 2\n", "a 2\na 3\n", 1), "id 3 appears twice|appears twice"),
    (lambda t: t.replace("<blk> 0", "<x> 0"), "blank_id\\) is not <blk>"),
    (lambda t: t.replace("b 3", "a 3"), "symbol on this line appears twice"),
])
def test_bad_tokens_are_refused(shipped, tmp_path, edit, match):
    m = _tampered(shipped[1], tmp_path / "t")
    tok = m.parent / "tokens.txt"
    tok.write_text(edit(tok.read_text()))
    with pytest.raises(ModelError, match=match):
        StreamingRecognizer(m)


# -- 10. streaming resampler ------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_output_does_not_depend_on_how_a_stream_is_cut(shipped, rate):
    import soxr

    x = soxr.resample(_speech(1.5), 16000, rate).astype(np.float32)
    outs = []
    for chunk in (1, 37, int(rate * 0.01), int(rate * 0.16), rate):
        if chunk == 1 and rate > 8000:
            x1 = x[: rate // 4]  # one sample at a time is slow in Python: a quarter second of it
        else:
            x1 = x
        rec = StreamingRecognizer(shipped[1], keep_log_probs=True)
        for i in range(0, len(x1), chunk):
            rec.accept_waveform(x1[i:i + chunk], rate)
        rec.input_finished()
        outs.append((len(x1), np.concatenate(rec.log_probs) if rec.log_probs else np.zeros((0, 28))))
    full = [lp for n, lp in outs if n == len(x)]
    for lp in full[1:]:
        assert lp.shape == full[0].shape
        np.testing.assert_allclose(lp, full[0], atol=1e-4)
    # a stream fed one sample at a time produces output too
    assert all(lp.shape[0] > 0 for _, lp in outs)


def test_a_stream_that_changes_rate_is_refused(shipped):
    rec = StreamingRecognizer(shipped[1])
    rec.accept_waveform(np.zeros(800, np.float32), 16000)
    with pytest.raises(ValueError, match="sample rate changed from 16000 to 8000"):
        rec.accept_waveform(np.zeros(800, np.float32), 8000)


# -- 12. stdin -----------------------------------------------------------------------------------------

def _wav_bytes(x, sr, subtype="PCM_16"):
    import io

    b = io.BytesIO()
    sf.write(b, x, sr, format="WAV", subtype=subtype)
    return b.getvalue()


def test_stdin_wav_header_is_detected_and_equals_the_file(shipped, tmp_path):
    _, onnx_path, wav = shipped
    x, _ = sf.read(str(wav), dtype="float32")
    want = _cli("transcribe", "--model", onnx_path, wav, text=True).stdout.split("\t")[1].strip()
    data = bytearray(_wav_bytes(x, 16000))
    data[40:44] = (0x7FFFFFFF).to_bytes(4, "little")  # arecord's placeholder data size
    r = _cli("transcribe", "--model", onnx_path, "-", input=bytes(data))
    assert r.returncode == 0 and r.stdout.decode().split("\t")[1].strip() == want
    assert b"note: stdin" not in r.stderr
    # an 8 kHz WAV on stdin is resampled from its header's rate
    import soxr

    r8 = _cli("transcribe", "--model", onnx_path, "-", input=_wav_bytes(soxr.resample(x, 16000, 8000), 8000))
    assert r8.returncode == 0 and b"resampled" not in r8.stdout


def test_stdin_raw_pcm_takes_rate_and_says_what_it_assumed(shipped):
    _, onnx_path, wav = shipped
    x, _ = sf.read(str(wav), dtype="float32")
    import soxr

    pcm8 = (soxr.resample(x, 16000, 8000) * 32767).astype("<i2").tobytes()
    with_rate = _cli("transcribe", "--model", onnx_path, "--rate", "8000", "-", input=pcm8)
    assert with_rate.returncode == 0 and b"note: stdin" not in with_rate.stderr
    pcm16 = (x * 32767).astype("<i2").tobytes()
    plain = _cli("transcribe", "--model", onnx_path, "-", input=pcm16)
    assert plain.returncode == 0 and b"raw 16-bit mono PCM at the model's 16000 Hz" in plain.stderr


def test_parse_wav_header_refuses_compressed_wav():
    import struct

    fmt = struct.pack("<HHIIHH", 2, 1, 16000, 8000, 2, 4)  # ADPCM
    head = b"RIFF" + struct.pack("<I", 100) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + b"\0" * 4
    with pytest.raises(ValueError, match="not plain PCM or float"):
        parse_wav_header(head)
    assert parse_wav_header(b"\x01\x02" * 10) is None


# -- 16. CLI values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,match", [
    (["--chunk-ms", "0"], "chunk (ms) must be in [1, 60000], got 0"),
    (["--chunk-ms", "0.01"], "chunk (ms) must be in [1, 60000]"),
    (["--chunk-ms", "1e9"], "chunk (ms) must be in [1, 60000]"),
    (["--chunk-ms", "inf"], "chunk (ms) must be in [1, 60000]"),
    (["--chunk-ms", "nan"], "chunk (ms) must be in [1, 60000]"),
    (["--threads", "100000"], "threads must be in [1, 256]"),
    (["--rate", "5"], "sample rate (Hz) must be in [1000, 384000]"),
])
def test_cli_values_are_checked_before_anything_runs(shipped, args, match):
    r = _cli("transcribe", "--model", shipped[1], *args, shipped[2], text=True)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr


# -- 7, 11, 19: segments, NaN audio on every path, messages that name the file --------------------------

def test_an_onnx_model_scores_kaldi_segments(shipped, tmp_path):
    _, onnx_path, wav = shipped
    x, _ = sf.read(str(wav), dtype="float32")
    long = tmp_path / "long.wav"
    sf.write(str(long), np.concatenate([np.zeros(8000, np.float32), x, np.zeros(8000, np.float32)]), 16000)
    want = _cli("transcribe", "--model", onnx_path, wav, text=True).stdout.split("\t")[1].strip()
    m = tmp_path / "seg.jsonl"
    m.write_text(json.dumps({"id": "s1", "audio_filepath": str(long), "offset": 0.5, "duration": len(x) / 16000,
                             "text": want or "x"}) + "\n")
    r = _cli("eval", "--model", onnx_path, "--out", tmp_path / "o", m, text=True)
    assert r.returncode == 0, r.stderr
    assert f"s1:\thyp={want.split()}" in (tmp_path / "o" / "recogs-seg.txt").read_text()


def test_nan_audio_gets_the_same_refusal_on_every_path(shipped, tmp_path):
    from speechkd.eval.raw import evaluate_manifest, onnx_transcriber, torch_transcriber

    src, onnx_path, _ = shipped
    nan = np.full(16000, 0.1, np.float32)
    nan[5] = np.nan
    sf.write(str(tmp_path / "nan.wav"), nan, 16000, subtype="FLOAT")
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": "n", "audio_filepath": "nan.wav", "duration": 1.0, "text": "x"}) + "\n")
    for run in (onnx_transcriber(onnx_path), torch_transcriber(src)):
        ev = evaluate_manifest(run, m)
        assert ev["ids"] == [] and "NaN/Inf" in ev["failed"][0][2] and "nan.wav" in ev["failed"][0][2]
    t = _cli("transcribe", "--model", onnx_path, tmp_path / "nan.wav", text=True)
    assert t.returncode == 1 and f"{tmp_path / 'nan.wav'}: audio has 1 NaN/Inf samples" in t.stderr


def test_sherpa_path_refuses_nan_and_needs_tokens(shipped, tmp_path):
    from speechkd.eval.raw import sherpa_decoder
    from speechkd.export.sherpa import export_sherpa

    export_sherpa(shipped[0], tmp_path / "sh")
    decode = sherpa_decoder(tmp_path / "sh" / "model.onnx")
    with pytest.raises(ValueError, match="NaN/Inf"):
        decode(np.array([0.1, np.nan, 0.2] * 1000, np.float32), 16000)
    (tmp_path / "sh" / "tokens.txt").unlink()
    with pytest.raises(ValueError, match="tokens.txt: tokens file not found"):
        sherpa_decoder(tmp_path / "sh" / "model.onnx")


# -- 4. references are normalised wherever a score is computed ------------------------------------------

def test_eval_normalises_references(shipped, tmp_path):
    from speechkd.eval.scoring import score

    assert score(["H."], ["h"])["wer"] == 0.0 and score(["Co\u00adoperate, NOW!"], ["cooperate now"])["wer"] == 0.0
    _, onnx_path, wav = shipped
    hyp = _cli("transcribe", "--model", onnx_path, wav, text=True).stdout.split("\t")[1].strip()
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": "a", "audio_filepath": str(wav), "duration": 2.3,
                             "text": hyp.upper().replace(" ", ", ") + "."}) + "\n")
    r = _cli("eval", "--model", onnx_path, "--out", tmp_path / "o", m, text=True)
    assert r.returncode == 0 and "WER 0.00%" in r.stdout


# -- 17. export faults -------------------------------------------------------------------------------

def test_disk_full_during_export_leaves_nothing_and_says_so(shipped, tmp_path, monkeypatch):
    import errno

    import onnx

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    with pytest.raises(ExportError, match="model.onnx: the disk is full"):
        export_streaming(shipped[0], tmp_path / "o")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == []


def test_int8_failure_leaves_no_stray_files(shipped, tmp_path, monkeypatch):
    import errno

    import onnxruntime.quantization as q

    from speechkd.quant.ort import QuantizationError, quantize_int8

    export_streaming(shipped[0], tmp_path / "o")

    def broken(src, dst, **kw):
        (tmp_path / "o" / "model-inferred.onnx").write_bytes(b"x")
        open(dst, "wb").write(b"\x08\x01partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(q, "quantize_dynamic", broken)
    with pytest.raises(QuantizationError, match="model.int8.onnx: the disk is full"):
        quantize_int8(tmp_path / "o" / "model.onnx", tmp_path / "o" / "model.int8.onnx")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["model.onnx", "tokens.txt"]


def test_a_folder_never_holds_files_of_two_models(shipped, tmp_path):
    from speechkd.quant.ort import quantize_int8

    out = tmp_path / "ship"
    export_streaming(shipped[0], out)
    quantize_int8(out / "model.onnx", out / "model.int8.onnx")
    other = make_model(tmp_path / "other", seed=1)
    export_streaming(other, out)
    assert not (out / "model.int8.onnx").exists()


# -- 14. checkpoints whose config lies ----------------------------------------------------------------

@pytest.mark.parametrize("patch,match", [({"layers": 100000}, "layers: must be in \\[1, 64\\]"),
                                         ({"hidden": 1000000}, "hidden: must be in \\[1, 16384\\]"),
                                         ({"hidden": 64}, "has shape .* but the stored model_config"),
                                         ({"layers": 3}, "missing 4 tensor")])
def test_checkpoint_config_is_checked_against_its_tensors(shipped, tmp_path, patch, match):
    from speechkd.models.io import CheckpointError, load_model, read_tensors, save_tensors

    meta, t = read_tensors(shipped[0])
    cfg = {**json.loads(meta["model_config"]), **patch}
    bad = tmp_path / "bad.safetensors"
    save_tensors(t, bad, {**meta, "model_config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match=match) as e:
        load_model(bad)
    assert str(bad) in str(e.value)


def test_non_json_model_config_names_the_file(shipped, tmp_path):
    from speechkd.models.io import CheckpointError, load_model, read_tensors, save_tensors

    meta, t = read_tensors(shipped[0])
    bad = tmp_path / "bad.safetensors"
    save_tensors(t, bad, {**meta, "model_config": "{oops"})
    with pytest.raises(CheckpointError, match="bad.safetensors: the model_config metadata is not JSON"):
        load_model(bad)
