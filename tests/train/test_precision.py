"""Mixed precision in the trainer: the choice per device, bf16 autocast around the model only (losses in
float32, float32 master weights and optimizer state), the precision recorded in the checkpoint, a resume in
another precision refused, and the same numbers for the same config."""

import json

import pytest
import torch

from speechkd.config import ConfigError, from_dict
from speechkd.data.dataset import FeatureDataset
from speechkd.data.manifest import Utterance, write_manifest
from speechkd.models.lstm_ctc import ModelConfig, build_model
from speechkd.stages import featurize
from speechkd.stages.runner import StageContext
from speechkd.text.tokenizer import CharTokenizer
from speechkd.train import checkpoint as ck
from speechkd.train.precision import cpu_has_native_bf16, cpu_runs_bf16_lstm, resolve_precision
from speechkd.features.fbank import FbankOptions
from speechkd.models.bundle import ModelBundle
from speechkd.stages.train import dev_scorer
from speechkd.train.objective import Objective
from speechkd.train.trainer import TrainConfig, Trainer
from tests.conftest import write_tone

BF16 = pytest.mark.skipif(not cpu_runs_bf16_lstm(), reason="oneDNN runs no bf16 LSTM on this CPU (no AVX-512)")

TEXTS = ["a cat", "the dog", "a bee sat", "go on", "ten hens", "no", "one tea", "a hat", "it is on", "we ate"]


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    """Featurized tones with short transcripts: train (8) and dev (2) splits, no TTS needed."""
    tmp = tmp_path_factory.mktemp("prec")
    corpus = tmp / "exp" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / ".done").write_text("{}")
    (corpus / "corpus.json").write_text(json.dumps({"splits": {"train": {}, "dev": {}}}))
    rows = [Utterance(id=f"u{i}", audio_filepath=str(write_tone(tmp / "a" / f"u{i}.wav", 1.0 + 0.1 * i,
                                                                   freq=150 + 40 * i)),
                      duration=1.0 + 0.1 * i, text=t, speaker=f"s{i % 3}") for i, t in enumerate(TEXTS)]
    write_manifest(rows[:8], corpus / "train.jsonl")
    write_manifest(rows[8:], corpus / "dev.jsonl")
    out = tmp / "exp" / "featurize"
    out.mkdir()
    featurize.run(from_dict(featurize.Config, {"num_workers": 1}), StageContext("t", tmp / "exp", out, 1, tmp))
    tok = CharTokenizer()
    return FeatureDataset(out / "train.jsonl", tok, stack=3), FeatureDataset(out / "dev.jsonl", tok), tok


def _trainer(feats, out, precision, objective=None, epochs=2, device="cpu", **extra):
    tr, dev, tok = feats
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, hidden=16, layers=2, bidirectional=True))
    cfg = from_dict(TrainConfig, {"epochs": epochs, "max_frames": 600, "precision": precision, "device": device,
                                  "average_last": 1, "optim": {"warmup_steps": 2}, **extra})
    return Trainer(cfg, ModelBundle(model, tok, FbankOptions()), tr, out, seed=3, objective=objective,
                   validate=dev_scorer(dev, tok, cfg.max_frames, cfg.dev_limit))


def test_precision_choice_per_device():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    if cpu_runs_bf16_lstm():
        assert resolve_precision("bf16", cpu) == "bf16"
    else:  # an AVX2-only CPU: one line saying what to use, not oneDNN's error at the first step
        with pytest.raises(ValueError, match="bf16 cannot run the LSTM on this CPU.*use auto or fp32"):
            resolve_precision("bf16", cpu)
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="must be auto, fp32, bf16 or fp16"):
        resolve_precision("int4", cpu)
    with pytest.raises(ConfigError, match="precision"):
        from_dict(TrainConfig, {"precision": "fp8"})
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):  # at load time, before any stage runs
        from_dict(TrainConfig, {"precision": "fp16", "device": "cpu"})


def test_fp16_on_a_cpu_machine_fails_when_the_recipe_is_checked(tmp_path):
    from speechkd.stages.runner import run_recipe
    from tests.conftest import REPO

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=r"teacher.*precision: fp16 needs a CUDA device"):
        run_recipe(REPO / "pipelines" / "quick", exp_root=tmp_path, overrides=["teacher.precision=fp16"])
    assert not (tmp_path / "quick" / "corpus").exists()  # nothing ran


class Recording(Objective):
    """Plain CTC that records the dtypes it was handed and returned."""

    def __init__(self):
        super().__init__(0)
        self.seen = []

    def __call__(self, batch, fwd):
        loss = super().__call__(batch, fwd)
        self.seen.append((fwd.log_probs.dtype, loss.dtype, torch.is_autocast_enabled("cpu")))
        return loss


@BF16
def test_bf16_runs_the_lstm_in_bf16_and_the_loss_in_float32(feats, tmp_path):
    obj = Recording()
    t = _trainer(feats, tmp_path, "bf16", objective=obj, epochs=1)
    lstm_out = []
    t.model.fwd[0].register_forward_hook(lambda m, i, o: lstm_out.append(o[0].dtype))
    t.step([(0, t.train_ds.batch(t.sampler.batches(0)[0]))])
    assert lstm_out == [torch.bfloat16]  # autocast reached the LSTM
    assert obj.seen == [(torch.float32, torch.float32, False)]  # the loss: float32, outside autocast
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # master weights
    states = [s for st in t.opt.state.values() for s in st.values() if torch.is_tensor(s) and s.dim()]
    assert states and all(s.dtype == torch.float32 for s in states)  # optimizer state
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        _trainer(feats, tmp_path / "x", "fp16")  # device cpu: refused when the config is built


@BF16
def test_precision_is_recorded_and_a_resume_in_another_one_is_refused(feats, tmp_path):
    a = _trainer(feats, tmp_path / "a", "bf16")
    summary = a.fit()
    assert summary["precision"] == "bf16"
    last = ck.list_checkpoints(tmp_path / "a" / "checkpoints")[-1]
    assert ck.load_train_state(last)["precision"] == "bf16"
    assert json.loads((last / "config.json").read_text())["precision"] == "bf16"
    assert json.loads((last / "config.json").read_text())["train"]["precision"] == "bf16"
    with pytest.raises(ck.CheckpointError, match=r"trained in bf16.*resolves to fp32.*precision: bf16") as e:
        _trainer(feats, tmp_path / "a", "fp32").resume()
    assert str(last) in str(e.value)
    assert _trainer(feats, tmp_path / "a", "bf16").resume()  # the same precision resumes

    # the same config gives the same weights; fp32 gives other ones (the switch is not a no-op)
    b = _trainer(feats, tmp_path / "b", "bf16")
    b.fit()
    c = _trainer(feats, tmp_path / "c", "fp32")
    assert c.fit()["precision"] == "fp32"
    wa, wb, wc = (ck.read_weights(tmp_path / d / "model.safetensors")[1] for d in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].is_floating_point())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_scales_the_loss_and_saves_the_scaler(feats, tmp_path):
    obj = Recording()
    t = _trainer(feats, tmp_path, "fp16", objective=obj, epochs=1, device="cuda")
    t.fit()
    assert t.scaler.is_enabled() and obj.seen[0][:2] == (torch.float32, torch.float32)
    last = ck.list_checkpoints(tmp_path / "checkpoints")[-1]
    assert "scaler" in ck.load_train_state(last)


def test_auto_precision_needs_the_bf16_cpu_flag(tmp_path, monkeypatch):
    """oneDNN says bf16 is supported on any AVX-512 CPU, where it is emulated (about 3x slower than fp32 on an
    Intel Xeon without AVX512-BF16): auto picks bf16 only with the avx512_bf16 or amx_bf16 flag."""
    from speechkd.train import precision as P

    read_flags = P.cpu_flags
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    cpu = torch.device("cpu")
    for flags, want in (("fpu avx512f avx512bw avx512_vnni", "fp32"), ("fpu avx512f avx512_bf16", "bf16"),
                        ("fpu amx_tile amx_bf16", "bf16")):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(P, "cpu_flags", lambda flags=flags: set(flags.split()))
        assert P.resolve_precision("auto", cpu) == want, flags
    assert read_flags(str(tmp_path / "cpuinfo")) == {"fpu", "amx_tile", "amx_bf16"}


def test_bf16_on_a_cpu_without_a_bf16_lstm_is_one_clear_line(monkeypatch):
    """Where oneDNN has no bf16 LSTM (AVX2 only), an explicit bf16 is refused before training with what to use."""
    from speechkd.train import precision as P

    monkeypatch.setattr(P, "cpu_runs_bf16_lstm", lambda: False)
    with pytest.raises(ValueError, match=r"^precision: bf16 cannot run the LSTM on this CPU .*use auto or fp32$"):
        P.resolve_precision("bf16", torch.device("cpu"))
    assert P.resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_the_bf16_probe_leaves_the_random_stream_alone():
    """The probe builds a small LSTM (random weights): it must not move the run's seeded random stream."""
    from speechkd.train import precision as P

    torch.manual_seed(0)
    want = torch.randn(4)
    P.cpu_runs_bf16_lstm.cache_clear()
    torch.manual_seed(0)
    P.cpu_runs_bf16_lstm()
    assert torch.equal(torch.randn(4), want)
