import numpy as np
import pytest
import torch

from speechkd.features import (FbankOptions, FeatureRef, FeatureStore, GlobalCMVN, SpecAugment, compute_cmvn,
                               compute_fbank, spec_augment, write_shard)
from speechkd.features.store import FeatureStoreError


def _speechlike(seconds=2.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    x = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 20))
    return (0.1 * x * (1 + np.sin(2 * np.pi * 3 * t)) + 0.003 * rng.standard_normal(t.shape)).astype(np.float32)


def librosa_reference(wav: np.ndarray, n_mels=80) -> np.ndarray:
    """Kaldi-style log-mel with librosa: 25 ms symmetric Hann frames every 10 ms, DC removed,
    512-point power spectrum, HTK mel filters from 20 Hz to Nyquist, natural log."""
    import librosa

    frames = librosa.util.frame(wav.astype(np.float64), frame_length=400, hop_length=160, axis=0)
    frames = frames - frames.mean(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(frames * np.hanning(400), n=512)) ** 2
    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=n_mels, fmin=20, fmax=8000, htk=True, norm=None)
    return np.log(np.maximum(power @ mel.T, np.finfo(np.float32).eps))


def test_fbank_matches_librosa_reference():
    """Stated tolerance: |kaldi - librosa| <= 0.05 nats everywhere, median <= 0.005 nats.

    The residual comes from kaldi's triangles being linear in mel, librosa's linear in Hz."""
    wav = _speechlike()
    ours = compute_fbank(wav, FbankOptions(window="hanning", preemphasis=0.0)).numpy()
    ref = librosa_reference(wav)
    assert ours.shape == ref.shape == (198, 80)
    diff = np.abs(ours - ref)
    assert diff.max() <= 0.05 and np.median(diff) <= 0.005


def test_default_fbank_shape_and_frames():
    o = FbankOptions()
    for n in (0, 399, 400, 560, 16000):
        f = compute_fbank(np.full(n, 0.1, np.float32) + _speechlike(1.0)[:n], o)
        assert f.shape == (o.num_frames(n), 80)
    assert o.num_frames(16000) == 98


def test_cmvn_matches_numpy():
    rng = np.random.default_rng(1)
    chunks = [rng.normal(3, 2, size=(n, 5)) for n in (10, 0, 37, 5)]
    stats = compute_cmvn(chunks)
    allx = np.concatenate(chunks)
    assert stats.count == 52
    np.testing.assert_allclose(stats.mean, allx.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.std, allx.std(0), rtol=1e-8)
    y = GlobalCMVN(stats)(torch.tensor(allx, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-4)
    with pytest.raises(ValueError):
        compute_cmvn([])


def test_specaugment_masks_inside_lengths_only():
    x = torch.randn(3, 100, 80)
    lengths = torch.tensor([100, 60, 30])
    g = torch.Generator().manual_seed(0)
    y = spec_augment(x, lengths, generator=g, max_time_frac=0.2)
    assert torch.equal(y[1, 60:], x[1, 60:]) and torch.equal(y[2, 30:], x[2, 30:])
    assert (y == 0).sum() > 0
    y2 = spec_augment(x, lengths, generator=torch.Generator().manual_seed(0), max_time_frac=0.2)
    assert torch.equal(y, y2)
    m = SpecAugment().eval()
    assert m(x, lengths) is x


def test_store_round_trip_and_truncation(tmp_path):
    feats = [np.random.default_rng(i).standard_normal((n, 80)).astype(np.float32) for i, n in enumerate((5, 0, 17))]
    offs = write_shard(tmp_path / "s" / "feats-00000.npy", feats)
    assert offs == [(0, 5), (5, 0), (5, 17)]
    store = FeatureStore(tmp_path)
    for f, (o, n) in zip(feats, offs):
        got = store.get(FeatureRef("s/feats-00000.npy", o, n))
        np.testing.assert_array_equal(got, f)
        assert not got.flags.writeable
    with pytest.raises(FeatureStoreError, match="outside the shard"):
        store.get(FeatureRef("s/feats-00000.npy", 10, 50))
    p = tmp_path / "s" / "feats-00001.npy"
    write_shard(p, feats, dtype="float16")
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(FeatureStoreError, match="feats-00001.npy"):
        FeatureStore(tmp_path).get(FeatureRef("s/feats-00001.npy", 0, 5))
