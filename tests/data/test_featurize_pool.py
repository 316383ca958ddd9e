"""featurize starts a pool of worker processes only where it pays back its start."""

import json

from tests.data.test_untranscribed import _wav


def test_a_small_split_is_featurized_without_starting_a_worker_pool_and_a_pool_writes_the_same(tmp_path,
                                                                                                  monkeypatch):
    """Spawning workers costs seconds (each imports torch): featurize of the librispeech test layout took 20.8 s
    with two workers against 5.3 s with one. Under POOL_MIN_SECONDS of audio to do, no pool is started; above it
    the pool's shards equal the stage process's, byte for byte."""
    import speechkd.data.featurize as F
    from speechkd.data.checks import BadInputLog

    started = []

    class Recording(F.ProcessPoolExecutor):
        def __init__(self, *a, **k):
            started.append(k.get("max_workers"))
            super().__init__(*a, **k)

    monkeypatch.setattr(F, "ProcessPoolExecutor", Recording)
    rows = []
    for i in range(4):
        _wav(tmp_path / f"{i}.wav")
        rows.append(json.dumps({"audio_filepath": f"{i}.wav", "duration": 0.5, "text": "hello", "id": f"u{i}"}))
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(rows) + "\n")
    opts = F.FeaturizeOptions(shard_size=1)
    F.featurize_split(m, "small", tmp_path / "a", opts, BadInputLog("fail"), 2)
    assert started == []
    monkeypatch.setattr(F, "POOL_MIN_SECONDS", 1.0)
    F.featurize_split(m, "small", tmp_path / "b", opts, BadInputLog("fail"), 2)
    assert started == [2]
    a, b = tmp_path / "a" / "shards" / "small", tmp_path / "b" / "shards" / "small"
    names = sorted(p.name for p in a.iterdir())
    assert len(names) == 8 and names == sorted(p.name for p in b.iterdir())
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
