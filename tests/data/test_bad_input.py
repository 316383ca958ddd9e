"""Twelve kinds of bad input through the featurize stage, under both policies."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechkd.config import from_dict
from speechkd.data.checks import BadInputError
from speechkd.data.manifest import read_manifest, write_manifest, Utterance
from speechkd.stages import featurize
from speechkd.stages.runner import StageContext
from tests.conftest import write_tone


def _ctx(tmp: Path) -> StageContext:
    (tmp / "exp" / "corpus").mkdir(parents=True, exist_ok=True)
    (tmp / "exp" / "corpus" / ".done").write_text("{}")
    out = tmp / "exp" / "featurize"
    out.mkdir(exist_ok=True)
    return StageContext("t", tmp / "exp", out, 1, tmp)


def _u(uid, path, dur=1.5, text="hello world"):
    return Utterance(id=uid, audio_filepath=path, duration=dur, text=text, speaker="s")


def make_bad_corpus(tmp: Path) -> tuple[list[Utterance], dict[str, str]]:
    a = tmp / "audio"
    good = [_u(f"good{i}", str(write_tone(a / f"good{i}.wav", 1.5, freq=200 + 50 * i))) for i in range(3)]
    expect: dict[str, str] = {}

    def bad(uid, reason, path, **kw):
        expect[uid] = reason
        return _u(uid, str(path), **kw)

    (a / "empty.wav").write_bytes(b"")
    (a / "garbage.wav").write_bytes(b"this is not audio at all" * 20)
    sf.write(str(a / "nosamples.wav"), np.zeros(0, np.float32), 16000)
    nan = np.full(24000, 0.1, np.float32)
    nan[100] = np.nan
    sf.write(str(a / "nan.wav"), nan, 16000, subtype="FLOAT")
    sf.write(str(a / "silent.wav"), np.zeros(24000, np.float32), 16000)
    rows = good + [
        bad("missing", "missing", a / "nope.wav"),
        bad("empty", "empty_file", a / "empty.wav"),
        bad("garbage", "unreadable", a / "garbage.wav"),
        bad("nosamples", "no_samples", a / "nosamples.wav", dur=0.0),
        bad("nan", "non_finite", a / "nan.wav"),
        bad("silent", "silent", a / "silent.wav"),
        bad("mismatch", "duration_mismatch", write_tone(a / "mm.wav", 1.5), dur=3.0),
        bad("long", "too_long", write_tone(a / "long.wav", 6.0), dur=6.0),
        bad("short", "too_short_for_ctc", write_tone(a / "short.wav", 0.3), dur=0.3,
            text="a rather long transcript for so little audio"),
        bad("notext", "empty_transcript", a / "good0.wav", text="  ?!  "),
        bad("digits", "bad_characters", a / "good0.wav", text="call 911 now"),
    ]
    rows.append(_u("good1", str(a / "good1.wav")))  # a repeated id
    expect["good1#dup"] = "duplicate_id"
    return rows, expect


def test_skip_policy_rejects_each_kind_and_keeps_the_rest(tmp_path):
    rows, expect = make_bad_corpus(tmp_path)
    ctx = _ctx(tmp_path)
    write_manifest(rows, ctx.exp_dir / "corpus" / "train.jsonl")
    cfg = from_dict(featurize.Config, {"max_duration": 5.0, "shard_size": 4, "num_workers": 2})
    summary = featurize.run(cfg, ctx)
    kept = read_manifest(ctx.out_dir / "train.jsonl")
    assert [u.id for u in kept] == ["good0", "good1", "good2"]
    rejected = [json.loads(l) for l in (ctx.out_dir / "rejected.jsonl").read_text().splitlines()]
    got = {}
    for r in rejected:
        key = r["id"] + ("#dup" if r["reason"] == "duplicate_id" else "")
        got[key] = r["reason"]
    assert got == expect
    assert len(set(expect.values())) >= 12
    assert summary["rejected"] == {k: list(expect.values()).count(k) for k in set(expect.values())}
    # every kept row points at real features of the right length
    from speechkd.features.store import FeatureRef, FeatureStore
    store = FeatureStore(ctx.out_dir)
    for u in kept:
        assert store.get(FeatureRef.from_json(u.extra["feats"])).shape == (148, 80)


def test_fail_policy_names_utterance_and_keeps_finished_shards(tmp_path):
    a = tmp_path / "audio"
    rows = [_u(f"g{i}", str(write_tone(a / f"g{i}.wav", 1.5))) for i in range(3)]
    rows.append(_u("broken", str(a / "broken.wav")))
    ctx = _ctx(tmp_path)
    write_manifest(rows, ctx.exp_dir / "corpus" / "train.jsonl")
    cfg = from_dict(featurize.Config, {"bad_input": "fail", "shard_size": 2, "num_workers": 1})
    with pytest.raises(BadInputError) as e:
        featurize.run(cfg, ctx)
    msg = str(e.value)
    assert "'broken'" in msg and "broken.wav" in msg and "missing" in msg
    shard0 = ctx.out_dir / "shards" / "train" / "feats-00000.npy"
    assert shard0.exists() and not (ctx.out_dir / "shards" / "train" / "feats-00001.npy").exists()
    before = os.stat(shard0).st_mtime_ns
    # the user fixes the file and reruns: the finished shard is reused, the rest completes
    write_tone(a / "broken.wav", 1.5)
    featurize.run(cfg, ctx)
    assert os.stat(shard0).st_mtime_ns == before
    assert [u.id for u in read_manifest(ctx.out_dir / "train.jsonl")] == ["g0", "g1", "g2", "broken"]


def test_fail_policy_on_manifest_level_problem(tmp_path):
    ctx = _ctx(tmp_path)
    write_manifest([_u("x", str(write_tone(tmp_path / "x.wav")), text="###")], ctx.exp_dir / "corpus" / "train.jsonl")
    with pytest.raises(BadInputError, match="'x'.*empty_transcript"):
        featurize.run(from_dict(featurize.Config, {"bad_input": "fail"}), ctx)
