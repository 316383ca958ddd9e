"""Untranscribed audio (issue 23): manifest rows without text, the audio importer, refusals, the mixed
sampler's ratio and resume, and the pseudo-label filter of the KD loss."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkd.data.dataset import Batch, DataError, FeatureDataset
from speechkd.data.importers import ImportError_, import_audio, import_nemo
from speechkd.data.manifest import Utterance, read_manifest, write_manifest
from speechkd.data.sampler import MixedSampler
from speechkd.distill.cache import confidence
from speechkd.distill.compose import KDConfig, KDObjective
from speechkd.text.tokenizer import CharTokenizer
from speechkd.train.objective import Forward


def _wav(path, seconds=0.5, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32), sr)


def test_a_row_without_text_is_untranscribed_and_round_trips(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio_filepath": "a.wav", "duration": 1.5, "id": "a"}\n'
                 '{"audio_filepath": "b.wav", "duration": 2, "text": "hi", "id": "b"}\n')
    a, b = read_manifest(m)
    assert a.text is None and b.text == "hi"
    write_manifest([a, b], tmp_path / "out.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert "text" not in rows[0] and rows[1]["text"] == "hi"
    m.write_text('{"audio_filepath": "a.wav", "duration": 1.5, "text": 3}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:1: field 'text' must be a string \(or absent"):
        read_manifest(m)


def test_audio_importer_writes_untranscribed_rows(tmp_path):
    src = tmp_path / "audio"
    _wav(src / "spk1" / "x.wav")
    _wav(src / "spk2" / "sub" / "y.flac", 0.7)
    _wav(src / "z.wav", 0.3)
    (src / "notes.txt").write_text("not audio")
    (src / "spk1" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    out = tmp_path / "m" / "unt.jsonl"
    utts = import_audio(src, out)
    assert [u.id for u in utts] == ["spk1/x", "spk2/sub/y", "z"]
    assert all(u.text is None for u in utts)
    assert [u.speaker for u in utts] == ["spk1", "sub", "unknown"]
    assert utts[1].duration == pytest.approx(0.7, abs=1e-3)
    assert all("text" not in json.loads(x) for x in out.read_text().splitlines())
    rejected = [json.loads(x) for x in (tmp_path / "m" / "rejected" / "unt.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejected] == [("spk1/broken", "unreadable")]
    with pytest.raises(ImportError_, match="no audio files"):
        import_audio(tmp_path / "m" / "rejected", None)


def test_nemo_rows_without_text_need_an_untranscribed_split(tmp_path):
    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "b.wav")
    src = tmp_path / "nemo.jsonl"
    src.write_text('{"audio_filepath": "a.wav", "duration": 0.5, "text": "Secret words"}\n'
                   '{"audio_filepath": "b.wav", "duration": 0.5}\n')
    got = import_nemo(src, tmp_path / "o1.jsonl")
    assert [u.id for u in got] == ["a"]  # b has no text and the split is not declared untranscribed
    rej = json.loads((tmp_path / "rejected" / "o1.jsonl").read_text().splitlines()[0])
    assert rej["id"] == "b" and rej["reason"] == "no_transcript"
    got = import_nemo(src, tmp_path / "o2.jsonl", untranscribed=True)
    assert [u.text for u in got] == [None, None]
    assert "ecret" not in (tmp_path / "o2.jsonl").read_text()


def test_a_dataset_refuses_untranscribed_rows_unless_opened_as_such(tmp_path):
    shard = tmp_path / "shards" / "s.npy"
    shard.parent.mkdir()
    np.save(shard, np.zeros((40, 4), np.float32))
    rows = [Utterance(id=f"u{i}", audio_filepath="x.wav", duration=0.2, text=None,
                      extra={"feats": {"shard": "shards/s.npy", "offset": 20 * i, "frames": 20}}) for i in range(2)]
    m = tmp_path / "unt.jsonl"
    write_manifest(rows, m)
    with pytest.raises(DataError, match=r"unt.jsonl:1: utterance 'u0' has no transcript .*untranscribed"):
        FeatureDataset(m, CharTokenizer())
    ds = FeatureDataset(m, CharTokenizer(), untranscribed=True, stack=3)
    b = ds.batch([0, 1])
    assert not b.transcribed and b.targets.numel() == 0 and b.feats.shape == (2, 20, 4)


def _stream(s, epochs):
    return [b for e in range(epochs) for b in s.batches(e)]


def test_mixed_sampler_ratio_homogeneous_batches_and_coverage():
    rng = np.random.default_rng(0)
    lt, lu = rng.integers(50, 300, 400).tolist(), rng.integers(50, 300, 300).tolist()
    s = MixedSampler(lt + lu, len(lt), 0.4, 1200, seed=3)
    for epoch in range(3):
        bs = s.batches(epoch)
        unl = [b for b in bs if b[0] >= len(lt)]
        assert all(all(i >= len(lt) for i in b) or all(i < len(lt) for i in b) for b in bs)  # one kind per batch
        assert len(unl) / len(bs) == pytest.approx(0.4, abs=0.01)
        # every transcribed utterance exactly once per epoch
        assert sorted(i for b in bs if b[0] < len(lt) for i in b) == list(range(len(lt)))
        assert bs == s.batches(epoch)  # a pure function of (seed, epoch)
    # the untranscribed stream runs on across epochs: every utterance is seen before any is seen twice
    seen = [i for b in _stream(s, 6) if b[0] >= len(lt) for i in b]
    first = seen[: len(lu)]
    assert len(set(seen)) == len(lu) and len(seen) > len(lu)
    counts = np.bincount(np.asarray(seen) - len(lt))
    assert counts.max() - counts.min() <= 1
    assert sorted(first) == list(range(len(lt), len(lt) + len(lu)))  # the first pass is each utterance once
    assert MixedSampler(lt + lu, len(lt), 0.0, 1200, seed=3).batches(0) == \
        MixedSampler(lt, len(lt), 0.5, 1200, seed=3).batches(0)  # ratio 0, or no untranscribed: plain batches
    with pytest.raises(DataError, match=r"ratio must be in \[0, 1\)"):
        MixedSampler(lt + lu, len(lt), 1.0, 1200, seed=3)


def test_mixed_sampler_resumes_where_it_stopped():
    lengths = list(range(40, 240, 2))
    a = MixedSampler(lengths, 60, 0.5, 800, seed=1)
    a.set_epoch(1)
    it = iter(a)
    done = [next(it) for _ in range(7)]
    b = MixedSampler(lengths, 60, 0.5, 800, seed=1)
    b.load_state_dict(a.state_dict())
    assert done + list(b) == a.batches(1)


class _FakeCache:
    """A teacher cache of 2 utterances: top-2 posteriors, an N-best and a confidence each."""

    def __init__(self, nbest, conf):
        self.nbest, self.conf = nbest, conf

    def batch(self, ids, frames, device=None):
        probs = torch.zeros(len(ids), frames, 2)
        probs[..., 0] = 0.7
        probs[..., 1] = 0.3
        tok = torch.zeros(len(ids), frames, 2, dtype=torch.long)
        tok[..., 1] = 2
        return probs, tok, [self.nbest[u] for u in ids]

    def confidence(self, uid):
        return self.conf[uid]


def test_pseudo_labels_below_the_threshold_are_not_learned_from():
    torch.manual_seed(0)
    lp = torch.randn(2, 12, 5).log_softmax(-1).requires_grad_()
    fwd = Forward(lp, torch.tensor([12, 12]))
    batch = Batch(["a", "b"], torch.zeros(2, 36, 4), torch.tensor([36, 36]), torch.zeros(0, dtype=torch.long),
                  torch.tensor([0, 0]), ["", ""], transcribed=False)
    conf = {"a": 0.9, "b": 0.2}
    kd = KDConfig(alpha=0.5, delay=0, pseudo="1best", pseudo_weight=1.0, pseudo_threshold=0.5)

    def loss(nb, k=kd):
        return float(KDObjective(k, 0, 0, cache=_FakeCache(nb, conf))(batch, fwd).detach())

    base = {"a": [([1, 2], -1.0)], "b": [([3, 4], -1.0)]}
    ref = loss(base)
    assert loss({**base, "b": [([4, 4, 1, 3], -1.0)]}) == ref  # b is under the threshold: its label is ignored
    assert loss({**base, "a": [([4, 4, 1, 3], -1.0)]}) != ref  # a's label is used
    assert loss(base, KDConfig(alpha=0.5, delay=0, pseudo="1best", pseudo_weight=1.0, pseudo_threshold=0.1)) != ref
    frame_only = loss(base, KDConfig(alpha=0.5, delay=0))
    assert frame_only < ref and loss({"a": [], "b": []}) == pytest.approx(frame_only, abs=1e-6)


def test_confidence_is_the_one_best_posterior_among_the_n_best():
    assert confidence([([1], -1.0), ([2], -1.0)]) == pytest.approx(0.5)
    assert confidence([([1], 0.0), ([2], -np.log(3))]) == pytest.approx(0.75)
    assert confidence([([1], -3.0)]) == 1.0 and confidence([]) == 0.0


def test_distill_config_refuses_untranscribed_data_it_cannot_learn_from():
    from speechkd.config import ConfigError, from_dict
    from speechkd.stages.distill import Config

    with pytest.raises(ConfigError, match="nothing to learn from untranscribed audio"):
        from_dict(Config, {"kd": {"alpha": 0.0}, "data": {"untranscribed": ["u"]}})
    with pytest.raises(ConfigError, match="pseudo-labels are for untranscribed audio"):
        from_dict(Config, {"kd": {"pseudo": "1best"}})
    with pytest.raises(ConfigError, match="lists the transcribed train_split"):
        from_dict(Config, {"data": {"untranscribed": ["train"]}})
    cfg = from_dict(Config, {"kd": {"alpha": 0.0, "pseudo": "1best"}, "data": {"untranscribed": ["u"], "ratio": 0.3}})
    assert cfg.data.ratio == 0.3


def test_eval_refuses_an_untranscribed_manifest_before_transcribing_anything(tmp_path):
    from speechkd.eval.raw import evaluate_manifest

    _wav(tmp_path / "a.wav")
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio_filepath": "a.wav", "duration": 0.5, "text": "hi", "id": "a"}\n'
                 '{"audio_filepath": "a.wav", "duration": 0.5, "id": "b"}\n')
    calls = []
    with pytest.raises(ValueError, match=r"m.jsonl: entry 2 \(b\) has no transcript"):
        evaluate_manifest(lambda p, *a: calls.append(p) or "x", m)
    assert not calls


def test_the_corpus_stage_declares_untranscribed_splits_and_drops_their_text(tmp_path):
    from types import SimpleNamespace

    from speechkd.config import ConfigError, from_dict
    from speechkd.stages.corpus import Config, run

    for n in ("a", "b", "c"):
        _wav(tmp_path / "src" / f"{n}.wav")
    (tmp_path / "train.jsonl").write_text('{"audio_filepath": "src/a.wav", "duration": 0.5, "text": "one"}\n')
    (tmp_path / "extra.jsonl").write_text('{"audio_filepath": "src/b.wav", "duration": 0.5, "text": "Kept Secret"}\n'
                                          '{"audio_filepath": "src/c.wav", "duration": 0.5}\n')
    cfg = from_dict(Config, {"kind": "nemo", "splits": {"train": str(tmp_path / "train.jsonl"),
                                                        "extra": str(tmp_path / "extra.jsonl"),
                                                        "calls": str(tmp_path / "src")},
                             "kinds": {"calls": "audio"}, "untranscribed": ["extra"]})
    out = tmp_path / "corpus"
    out.mkdir()
    summary = run(cfg, SimpleNamespace(out_dir=out, recipe_dir=None))
    assert summary["untranscribed"] == ["extra", "calls"]
    assert json.loads((out / "corpus.json").read_text())["untranscribed"] == ["extra", "calls"]
    assert summary["splits"]["extra"]["utterances"] == 2 and summary["splits"]["calls"]["utterances"] == 3
    assert "ecret" not in (out / "extra.jsonl").read_text() and '"text"' not in (out / "calls.jsonl").read_text()
    assert [u.text for u in read_manifest(out / "train.jsonl")] == ["one"]
    with pytest.raises(ConfigError, match=r"untranscribed\[0\]: names split 'nope'"):
        from_dict(Config, {"kind": "nemo", "splits": {"train": "x"}, "untranscribed": ["nope"]})


def test_featurize_keeps_untranscribed_rows_only_in_a_split_declared_untranscribed(tmp_path):
    from speechkd.data.checks import BadInputLog
    from speechkd.data.featurize import FeaturizeOptions, featurize_split

    for n in ("a", "b"):
        _wav(tmp_path / f"{n}.wav")
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio_filepath": "a.wav", "duration": 0.5, "id": "a"}\n'
                 '{"audio_filepath": "b.wav", "duration": 0.5, "text": "hello", "id": "b"}\n')
    got = {}
    for unt in (False, True):
        bad = BadInputLog("skip")
        _, rows, _ = featurize_split(m, f"s{int(unt)}", tmp_path / "out", FeaturizeOptions(), bad, 1, untranscribed=unt)
        got[unt] = ([r.id for r in rows], [(r.id, r.reason) for r in bad.rejected])
    assert got[False] == (["b"], [("a", "no_transcript")])
    assert got[True] == (["a"], [("b", "has_transcript")])
