"""Streaming export and the runtime: parity gates (ONNX = torch, streaming = offline, incremental fbank =
whole-file fbank, transcribe = eval), the metadata contract, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkd.export import ExportError, export_streaming
from speechkd.export.onnx import StreamingGraph
from speechkd.features.fbank import FbankOptions
from speechkd.models import ModelBundle, ModelConfig, build_model, save_bundle
from speechkd.text.tokenizer import CharTokenizer, tokenizer_fingerprint
from tests.conftest import REPO, write_tone


def _speech(seconds=2.3, sr=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 1.3 * t)
    x = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.2 * x + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def make_model(d: Path, *, bidirectional=False, stack=3, delay=2, seed=0) -> Path:
    torch.manual_seed(seed)
    tok = CharTokenizer()
    m = build_model(ModelConfig(input_dim=80, vocab_size=tok.vocab_size, hidden=32, layers=2, stack=stack,
                                bidirectional=bidirectional, dropout=0.0, tokenizer=tokenizer_fingerprint(tok)))
    m.set_cmvn(np.full(80, -8.0), np.full(80, 3.0))
    with torch.no_grad():  # a peaky output layer, so greedy decoding emits tokens
        m.out.weight.mul_(8.0)
    save_bundle(ModelBundle(m, tok, FbankOptions(), delay_frames=delay), d / "model.safetensors")
    return d / "model.safetensors"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    src = make_model(d / "m")
    meta = export_streaming(src, d / "onnx")
    wav = d / "speech.wav"
    sf.write(str(wav), _speech(), 16000)
    return src, d / "onnx" / "model.onnx", meta, wav


def test_metadata_contract_and_tokens(exported):
    import onnxruntime as ort

    _, onnx_path, meta, _ = exported
    got = ort.InferenceSession(str(onnx_path)).get_modelmeta().custom_metadata_map
    for k in ("sample_rate", "fbank", "frame_shift_ms", "stack", "vocab_size", "blank_id", "chunk_frames",
              "state_shape", "delay_frames", "delay_ms", "num_layers", "hidden_size"):
        assert k in got, k
    assert json.loads(got["fbank"])["num_mel_bins"] == 80 and got["delay_frames"] == "2" and got["stack"] == "3"
    assert got["chunk_frames"] == "15" and float(got["delay_ms"]) == 60.0 and "multiple of stack=3" in got["chunk_rule"]
    lines = (onnx_path.parent / "tokens.txt").read_text().splitlines()
    assert lines[0] == "<blk> 0" and lines[1] == "| 1" and len(lines) == 29


def test_onnx_runtime_equals_torch(exported):
    import onnxruntime as ort

    from speechkd.models.io import load_model

    src, onnx_path, _, _ = exported
    graph = StreamingGraph(load_model(src))
    sess = ort.InferenceSession(str(onnx_path))
    g = torch.Generator().manual_seed(1)
    h = torch.zeros(2, 2, 32)
    c = torch.zeros(2, 2, 32)
    for T in (3, 15, 42):  # any length, batch 2, state carried
        x = -8 + 3 * torch.randn(2, T, 80, generator=g)
        with torch.no_grad():
            want = graph(x, h, c)
        got = sess.run(None, {"x": x.numpy(), "h": h.numpy(), "c": c.numpy()})
        for w, o in zip(want, got):
            np.testing.assert_allclose(o, w.numpy(), atol=1e-4, rtol=0)
        h, c = want[1], want[2]


def test_bidirectional_and_projected_models_are_refused(tmp_path):
    with pytest.raises(ExportError, match="bidirectional model needs the whole utterance"):
        export_streaming(make_model(tmp_path / "bi", bidirectional=True), tmp_path / "o")
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_incremental_fbank_equals_whole_file_fbank(exported):
    """The runtime's online fbank (kaldi-native-fbank, fed in pieces) against the training features
    (torchaudio's kaldi.fbank on the whole file): at most 2e-3 apart (measured 6e-4 on speech)."""
    from speechkd.features.fbank import compute_fbank
    from speechkd.runtime.recognizer import StreamingRecognizer

    _, onnx_path, _, wav = exported
    x, _ = sf.read(str(wav), dtype="float32")
    whole = compute_fbank(x).numpy()
    for piece in (160, 1601, 16000):
        fb = StreamingRecognizer(onnx_path)._new_fbank()
        for i in range(0, len(x), piece):
            fb.accept_waveform(16000.0, x[i : i + piece].tolist())
        fb.input_finished()
        inc = np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])
        assert inc.shape == whole.shape
        assert np.abs(inc - whole).max() < 2e-3 and np.median(np.abs(inc - whole)) < 1e-4


@pytest.mark.parametrize("chunk_ms", [10, 30, 160, 470, 1000])
def test_streaming_equals_offline(exported, chunk_ms):
    """Chunks of 10 ms to 1 s through the runtime give the offline model's tokens and log-probs (1e-4): the
    offline model runs once on the whole utterance's features (the same fbank, plus the flushed silence)."""
    from speechkd.models.io import load_model
    from speechkd.runtime.recognizer import StreamingRecognizer

    src, onnx_path, _, wav = exported
    x, sr = sf.read(str(wav), dtype="float32")
    rec = StreamingRecognizer(onnx_path, keep_log_probs=True, chunk_frames=max(3, chunk_ms // 10))
    step = int(sr * chunk_ms / 1000)
    for i in range(0, len(x), step):
        rec.accept_waveform(x[i : i + step], sr)
    res = rec.input_finished()
    stream_lp = np.concatenate(rec.log_probs)
    fb = StreamingRecognizer(onnx_path)._new_fbank()
    fb.accept_waveform(16000.0, np.concatenate([x, np.zeros(rec.flush_frames * 160, np.float32)]).tolist())
    fb.input_finished()
    feats = torch.from_numpy(np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)]))[None]
    with torch.no_grad():
        off, ol = load_model(src).eval()(feats, torch.tensor([feats.shape[1]]))
    off = off[0].numpy()
    assert stream_lp.shape == off.shape
    np.testing.assert_allclose(stream_lp, off, atol=1e-4, rtol=0)
    best = off.argmax(-1)
    want = [int(k) for t, k in enumerate(best) if k != 0 and (t == 0 or k != best[t - 1])]
    assert res.tokens == want and len(want) > 0 and res.is_final
    assert res.times_ms == sorted(res.times_ms)
    # frames already run are discarded from the online fbank, so a long stream's memory stays bounded
    with pytest.raises(Exception, match="already removed"):
        rec._fb.get_frame(0)


def test_runtime_imports_no_torch(exported):
    _, onnx_path, _, wav = exported
    code = (f"import sys\nfrom speechkd.runtime import StreamingRecognizer\nfrom speechkd.runtime.recognizer import "
            f"transcribe_file\nr = transcribe_file(StreamingRecognizer({str(onnx_path)!r}), {str(wav)!r})\n"
            "assert r.is_final\nprint(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "speechkd.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, **kw)


def test_transcribe_equals_eval_and_bad_input_is_one_line(exported, tmp_path):
    _, onnx_path, _, wav = exported
    data = tmp_path / "data"
    data.mkdir()
    x, _ = sf.read(str(wav), dtype="float32")
    sf.write(str(data / "a.wav"), x, 16000)
    sf.write(str(data / "stereo.wav"), np.stack([x, x], 1), 16000)  # downmixed: same text as a.wav
    import soxr

    sf.write(str(data / "r44.wav"), soxr.resample(x, 16000, 44100), 44100)  # resampled, and said so
    (data / "empty.wav").write_bytes(b"")
    (data / "corrupt.wav").write_bytes(b"RIFF not really a wave file" * 10)
    t = _cli("transcribe", "--model", onnx_path, data / "a.wav", data / "stereo.wav", data / "r44.wav",
             data / "empty.wav", data / "corrupt.wav")
    assert t.returncode == 1  # some files failed; the others were transcribed
    texts = dict(line.split("\t") for line in t.stdout.splitlines())
    assert set(texts) == {str(data / n) for n in ("a.wav", "stereo.wav", "r44.wav")}
    assert texts[str(data / "a.wav")] == texts[str(data / "stereo.wav")] and texts[str(data / "a.wav")]
    assert "resampled from 44100 Hz to 16000 Hz" in t.stderr
    assert f"error: {data / 'empty.wav'}: audio file is empty" in t.stderr
    assert f"error: {data / 'corrupt.wav'}: cannot decode audio" in t.stderr and "Traceback" not in t.stderr
    # eval of the same file gives the same text; a row whose audio is missing is reported, the rest scored
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"audio_filepath": str(data / "a.wav"), "duration": 2.3, "text": "hello", "id": "a"})
                 + "\n" + json.dumps({"audio_filepath": "gone.wav", "duration": 1, "text": "x", "id": "gone"}) + "\n")
    e = _cli("eval", "--model", onnx_path, "--out", tmp_path / "o", m)
    assert e.returncode == 1 and "utterance 'gone'" in e.stderr and "does not exist" in e.stderr
    recog = (tmp_path / "o" / "recogs-m.txt").read_text()
    assert f"a:\thyp={texts[str(data / 'a.wav')].split()}" in recog
    assert json.loads((tmp_path / "o" / "wer-summary-m.json").read_text())["failed"] == 1
    # stdin: raw 16-bit PCM gives the same text
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    s = subprocess.run(
        [sys.executable, "-m", "speechkd.cli", "transcribe", "--model", str(onnx_path), "-"], input=pcm,
        capture_output=True, cwd=REPO)
    assert s.returncode == 0 and s.stdout.decode().split("\t")[1].strip() == texts[str(data / "a.wav")]


def test_a_model_that_is_not_ours_is_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(tmp_path / "other.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx at all")
    write_tone(tmp_path / "a.wav")
    for model, match in ((tmp_path / "other.onnx", "not a speechkd streaming model (metadata lacks"),
                         (tmp_path / "junk.onnx", "not an ONNX model"), (tmp_path / "nope.onnx", "model file not found")):
        r = _cli("transcribe", "--model", model, tmp_path / "a.wav")
        assert r.returncode == 2 and match in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_sherpa_onnx_loads_and_decodes_our_model(exported, tmp_path):
    """sherpa-onnx's online NeMo CTC recognizer loads the sherpa flavour and decodes a file; a probe graph (its
    token per frame is the argmax mel bin of its input) shows sherpa-onnx feeds exactly the features of
    `sherpa_fbank_options()`, which the feature adapter is fitted on."""
    import onnx
    import sherpa_onnx

    from speechkd.export.sherpa import _knf_frames, export_sherpa, sherpa_fbank_options

    src, _, _, wav = exported
    meta = export_sherpa(src, tmp_path / "sherpa", adapt_audio=[wav], adapter_steps=50)
    assert meta["vocab_size"] == 28 and meta["cache_last_channel_dim1"] == 2 and meta["window_size"] == 15
    rec = sherpa_onnx.OnlineRecognizer.from_nemo_ctc(tokens=str(tmp_path / "sherpa" / "tokens.txt"),
                                                     model=str(tmp_path / "sherpa" / "model.onnx"), num_threads=1)
    x, sr = sf.read(str(wav), dtype="float32")
    s = rec.create_stream()
    s.accept_waveform(sr, x)
    s.accept_waveform(sr, np.zeros(int(meta["tail_padding_ms"] * sr / 1000), np.float32))
    s.input_finished()
    n = 0
    while rec.is_ready(s):
        rec.decode_stream(s)
        n += 1
    assert n >= len(x) / sr * 100 // 15 - 1 and isinstance(rec.get_result(s), str) and rec.get_result_all(s).tokens
    # `speechkd eval` recognises the flavour and scores it through sherpa-onnx, with the same text
    from speechkd.eval.raw import is_sherpa_model, sherpa_transcriber

    assert is_sherpa_model(tmp_path / "sherpa" / "model.onnx") and not is_sherpa_model(exported[1])
    assert sherpa_transcriber(tmp_path / "sherpa" / "model.onnx")(wav) == " ".join(rec.get_result(s).split())

    class Probe(torch.nn.Module):
        def forward(self, a, b, c, d, e):
            lp = torch.nn.functional.one_hot(a.transpose(1, 2).argmax(-1) + 1, 81).float() * 20 - 10
            return lp.log_softmax(-1), b, c, d, e + b

    probe = tmp_path / "probe"
    probe.mkdir()
    args = (torch.zeros(1, 80, 15), torch.tensor([15]), torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4),
            torch.zeros(1, dtype=torch.int64))
    torch.onnx.export(Probe(), args, str(probe / "model.onnx"), dynamo=False, opset_version=17)
    m = onnx.load(str(probe / "model.onnx"))
    for k, v in dict(window_size=15, chunk_shift=15, subsampling_factor=1, vocab_size=80, cache_last_channel_dim1=1,
                     cache_last_channel_dim2=1, cache_last_channel_dim3=4, cache_last_time_dim1=1,
                     cache_last_time_dim2=1, cache_last_time_dim3=4).items():
        p = m.metadata_props.add()
        p.key, p.value = k, str(v)
    onnx.save(m, str(probe / "model.onnx"))
    (probe / "tokens.txt").write_text("<blk> 0\n" + "".join(f"b{i} {i + 1}\n" for i in range(80)))
    rec = sherpa_onnx.OnlineRecognizer.from_nemo_ctc(tokens=str(probe / "tokens.txt"), model=str(probe / "model.onnx"),
                                                     num_threads=1)
    s = rec.create_stream()
    s.accept_waveform(sr, x)
    s.input_finished()
    while rec.is_ready(s):
        rec.decode_stream(s)
    got = [int(t[1:]) for t in rec.get_result_all(s).tokens]
    F = _knf_frames(sherpa_fbank_options(), x)
    a = np.concatenate([F[i : i + 15] for i in range(0, F.shape[0] - 15, 15)]).argmax(-1)
    want = [int(a[0])] + [int(v) for p, v in zip(a, a[1:]) if v != p]
    assert got == want[: len(got)] and len(got) >= len(want) - 3
