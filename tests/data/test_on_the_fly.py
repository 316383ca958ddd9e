"""On-the-fly features (featurize.on_the_fly: no feature store) and the train-time audio transforms they allow
(speed perturbation, additive noise): the features equal stored float32 ones (max |difference| 0, CMVN within
1e-9), transforms are drawn from the batch's seed, and a training run with them resumes exactly."""

import json

import numpy as np
import pytest
import torch

from speechkd.config import ConfigError, from_dict
from speechkd.data.dataset import DataError, FeatureDataset
from speechkd.data.augment import WaveAugment
from speechkd.features.cmvn import CMVNStats
from speechkd.stages.runner import run_recipe
from speechkd.text.tokenizer import CharTokenizer
from tests.conftest import write_tone
from tests.stages.test_librispeech import RECIPE, SMALL, librispeech_tree

STORED = ["featurize.on_the_fly=false", "featurize.dtype=float32"]


@pytest.fixture(scope="module")
def featurized(tmp_path_factory):
    """The LibriSpeech-layout tree featurized twice: stored float32 features, and on the fly."""
    tmp = tmp_path_factory.mktemp("otf")
    root = librispeech_tree(tmp / "LibriSpeech")
    out = {}
    for name, extra in (("stored", STORED), ("otf", ["featurize.on_the_fly=true"])):
        run_recipe(RECIPE, exp_root=tmp / name, to_stage="featurize",
                   overrides=[f"corpus.root={root}", *SMALL, *extra])
        out[name] = tmp / name / "librispeech" / "featurize"
    noise = tmp / "noise"
    write_tone(noise / "hum.wav", seconds=0.7, freq=50.0)
    write_tone(noise / "sub" / "whine.flac", seconds=0.4, freq=3000.0)
    (noise / "README.txt").write_text("not audio\n")
    return out, noise


def test_on_the_fly_features_equal_stored_ones(featurized):
    (d, _) = featurized
    assert not list((d["otf"] / "shards").rglob("*.npy")) and list((d["stored"] / "shards").rglob("*.npy"))
    assert json.loads((d["otf"] / "features.json").read_text())["on_the_fly"] is True
    tok = CharTokenizer()
    for split in ("train", "dev", "test"):
        a, b = FeatureDataset(d["stored"] / f"{split}.jsonl", tok), FeatureDataset(d["otf"] / f"{split}.jsonl", tok)
        assert b.on_the_fly and not a.on_the_fly and a.ids == b.ids and a.lengths == b.lengths
        for i in range(len(a)):
            assert np.abs(a[i][1] - b[i][1]).max() == 0.0, (split, a.ids[i])
        ba, bb = a.batch(list(range(len(a)))), b.batch(list(range(len(b))), seed=7)  # no augment set: clean
        assert torch.equal(ba.feats, bb.feats)
    ca, cb = CMVNStats.load(d["stored"] / "cmvn.json"), CMVNStats.load(d["otf"] / "cmvn.json")
    assert ca.count == cb.count and np.allclose(ca.mean, cb.mean, rtol=1e-9) and np.allclose(ca.std, cb.std, rtol=1e-9)
    sa = json.loads((d["stored"] / "summary.json").read_text())["splits"]
    assert sa == json.loads((d["otf"] / "summary.json").read_text())["splits"]


def test_speed_and_noise_are_drawn_from_the_batch_seed(featurized):
    (d, noise) = featurized
    tok = CharTokenizer()
    ds = FeatureDataset(d["otf"] / "train.jsonl", tok)
    clean = ds.batch([0, 1, 2])
    ds.set_augment(WaveAugment(speed=[1.1], noise=str(noise), noise_prob=1.0, snr_db=[5.0, 5.0]))
    one, again, other = ds.batch([0, 1, 2], seed=11), ds.batch([0, 1, 2], seed=11), ds.batch([0, 1, 2], seed=12)
    assert torch.equal(one.feats, again.feats) and not torch.equal(one.feats, other.feats)
    assert (one.feat_lens < clean.feat_lens).all()  # 1.1x faster: fewer frames
    assert torch.equal(ds.batch([0, 1, 2]).feats, clean.feats)  # no seed (scoring, caching): the clean audio
    assert len(ds._augment.noise_files) == 2  # the README is skipped, the sub-folder searched
    ds.set_augment(WaveAugment(speed=[0.9]))
    assert (ds.batch([0], seed=3).feat_lens > clean.feat_lens[:1]).all()


def test_slowed_down_batches_stay_within_max_frames(featurized):
    """Speed perturbation below 1 lengthens the audio: the sampler budgets every utterance at the longest it
    can become, so no padded batch exceeds max_frames (it did by up to 1/0.9 before)."""
    from speechkd.data.sampler import BucketingSampler

    (d, _) = featurized
    ds = FeatureDataset(d["otf"] / "train.jsonl", CharTokenizer())
    clean = list(ds.lengths)
    ds.set_augment(WaveAugment(speed=[0.9]))
    assert all(n >= c / 0.9 for n, c in zip(ds.lengths, clean))
    max_frames = 2 * max(ds.lengths)  # tight: two of the longest utterances
    sampler = BucketingSampler(ds.lengths, max_frames, seed=0)
    for k, idx in enumerate(sampler.global_batches(0)):
        b = ds.batch(idx, seed=k)
        assert b.feats.shape[0] * b.feats.shape[1] <= max_frames, (idx, tuple(b.feats.shape))


def test_waveform_batches_give_the_same_features_where_they_are_computed(featurized):
    """fbank_on: device: the batch carries waveforms (the same perturbations) and the trainer computes fbank
    on its device; on the CPU the features equal those built in the loader, bit for bit."""
    from speechkd.data.dataset import wave_features

    (d, noise) = featurized
    ds = FeatureDataset(d["otf"] / "train.jsonl", CharTokenizer())
    ds.set_augment(WaveAugment(speed=[0.9, 1.1], noise=str(noise)))
    ref = ds.batch([0, 3, 5], seed=21)
    ds.set_wave_batches(True)
    wb = ds.batch([0, 3, 5], seed=21)
    assert wb.wave and wb.feats.ndim == 2
    got = wave_features(wb, ds.fbank(), 80)
    assert not got.wave and torch.equal(got.feats, ref.feats) and torch.equal(got.feat_lens, ref.feat_lens)
    assert torch.equal(got.targets, ref.targets) and got.seconds == ref.seconds
    with pytest.raises(DataError, match="60-dimensional|takes 60"):
        wave_features(wb, ds.fbank(), 60)
    stored = FeatureDataset(d["stored"] / "train.jsonl", CharTokenizer())
    with pytest.raises(DataError, match="on_the_fly: true"):
        stored.set_wave_batches(True)


def test_augment_needs_audio_and_a_frame_aligned_teacher(featurized, tmp_path):
    (d, _) = featurized
    ds = FeatureDataset(d["stored"] / "train.jsonl", CharTokenizer())
    with pytest.raises(DataError, match="on_the_fly: true"):
        ds.set_augment(WaveAugment(speed=[0.9, 1.0, 1.1]))
    ds.set_augment(WaveAugment())  # nothing to do: fine on stored features
    from speechkd.stages.distill import Config

    with pytest.raises(ConfigError, match="kd.online"):
        from_dict(Config, {"augment": {"speed": [0.9, 1.1]}})
    from_dict(Config, {"augment": {"noise": str(tmp_path)}})  # noise keeps the frames: fine with a cache
    for bad, match in (({"speed": [3.0]}, "speed"), ({"snr_db": [20, 10]}, "snr_db"), ({"noise_prob": 2}, "noise_prob")):
        with pytest.raises(ConfigError, match=match):
            from_dict(Config, {"augment": bad})
    ds2 = FeatureDataset(d["otf"] / "train.jsonl", CharTokenizer())
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ds2.set_augment(WaveAugment(noise=str(tmp_path / "none")))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("no audio here\n")
    with pytest.raises(FileNotFoundError, match="holds no recording"):  # at set-up, not in a worker mid-epoch
        ds2.set_augment(WaveAugment(noise=str(tmp_path / "notes")))


def test_a_worker_that_cannot_build_a_batch_fails_the_run_in_one_line(featurized, tmp_path):
    """An on-the-fly row whose audio vanished after featurize: the DataLoader worker's error reaches the
    training process as itself (type and message naming the manifest and utterance), not a worker traceback."""
    import shutil

    from speechkd.train.loader import batches
    from speechkd.data.sampler import BucketingSampler

    (d, _) = featurized
    copy = tmp_path / "featurize"
    shutil.copytree(d["otf"], copy)
    rows = [json.loads(line) for line in (copy / "train.jsonl").read_text().splitlines()]
    audio = tmp_path / "gone.flac"
    shutil.copy((copy / rows[0]["audio_filepath"]).resolve(), audio)
    rows[0]["audio_filepath"] = str(audio)
    (copy / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = FeatureDataset(copy / "train.jsonl", CharTokenizer())
    audio.unlink()
    sampler = BucketingSampler(ds.lengths, 100000, seed=0, shuffle=False)
    with pytest.raises(DataError) as err:
        list(batches(sampler, ds, workers=2))
    msg = str(err.value)
    assert rows[0]["id"] in msg and "train.jsonl" in msg and "Traceback" not in msg and "\n" not in msg, msg


def test_a_run_with_speed_and_noise_resumes_exactly_with_or_without_workers(featurized, tmp_path):
    """Uninterrupted (no workers) against: DataLoader workers, cut back to a mid-epoch checkpoint, resumed
    without workers; and fbank computed in the training process (fbank_on: device): the same weights bit for
    bit."""
    import shutil

    from speechkd.models import ModelBundle, ModelConfig, build_model
    from speechkd.train import checkpoint as ck
    from speechkd.train.trainer import TrainConfig, train
    from speechkd.utils import seed_everything

    (d, noise) = featurized
    tok = CharTokenizer()

    def run(out, workers, fbank_on="workers"):
        seed_everything(3)
        ds = FeatureDataset(d["otf"] / "train.jsonl", tok, stack=1)
        model = build_model(ModelConfig(input_dim=80, vocab_size=tok.vocab_size, hidden=16, layers=1, stack=1,
                                        bidirectional=False, dropout=0.1))
        cfg = from_dict(TrainConfig, {"epochs": 2, "max_frames": 400, "checkpoint_every": 1, "keep_last": 50,
                                      "average_last": 1, "workers": workers, "precision": "fp32", "fbank_on": fbank_on,
                                      "augment": {"speed": [0.9, 1.0, 1.1], "noise": str(noise)}})
        train(cfg, ModelBundle(model, tok, ds.fbank()), ds, out, seed=3, validate=lambda m, dev: {"cer": 1.0, "wer": 1.0})
        return ck.read_weights(out / "model.safetensors")[1]

    a = run(tmp_path / "a", 0)
    b = run(tmp_path / "b", 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    cks = ck.list_checkpoints(tmp_path / "b" / "checkpoints")
    for c in cks[len(cks) // 2 - 1:]:  # back to mid-way through the first epoch
        shutil.rmtree(c)
    c = run(tmp_path / "b", 0)
    assert all(torch.equal(a[k], c[k]) for k in a)
    e = run(tmp_path / "e", 2, fbank_on="device")  # waveforms from the workers, fbank in the training process
    assert all(torch.equal(a[k], e[k]) for k in a)


def test_a_perturbed_batch_does_not_depend_on_the_thread_count(featurized):
    """A DataLoader worker builds batches on one thread, the training process on all of them: speed
    perturbation runs on one thread either way (its resampler's output moved by up to 4e-5 between 1 and 2
    threads on a 2-core AMD EPYC with AVX2 only, so workers changed the weights there)."""
    (d, noise) = featurized
    ds = FeatureDataset(d["otf"] / "train.jsonl", CharTokenizer(), stack=1)
    ds.set_augment(WaveAugment(speed=[0.9, 1.0, 1.1], noise=str(noise)))
    n = torch.get_num_threads()
    try:
        feats = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            feats.append(ds.batch(list(range(min(6, len(ds)))), seed=5).feats)
            assert torch.get_num_threads() == threads  # restored after the perturbation
    finally:
        torch.set_num_threads(n)
    assert torch.equal(feats[0], feats[1])
