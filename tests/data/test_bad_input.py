"""Bad input, kind by kind: featurize rejections (counted and listed), manifests and importers
(one-line errors naming file:line, or counted rejections). Recipes and checkpoints: tests/stages/
test_recipe_checks.py and tests/train/test_trainer.py."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechkd.config import from_dict
from speechkd.data.checks import BadInputError
from speechkd.data.importers import ImportError_, import_commonvoice, import_kaldi, import_librispeech
from speechkd.data.manifest import ManifestError, Utterance, read_manifest, write_manifest
from speechkd.data.featurize import featurize_utterance
from speechkd.stages import featurize
from speechkd.stages.runner import StageContext
from tests.conftest import write_tone


def _ctx(tmp: Path, splits=("train",)) -> StageContext:
    corpus = tmp / "exp" / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / ".done").write_text("{}")
    (corpus / "corpus.json").write_text(json.dumps({"splits": {s: {} for s in splits}}))
    out = tmp / "exp" / "featurize"
    out.mkdir(exist_ok=True)
    return StageContext("t", tmp / "exp", out, 1, tmp)


def _u(uid, path, dur=1.5, text="hello world", offset=None):
    return Utterance(id=uid, audio_filepath=str(path), duration=dur, text=text, speaker="s", offset=offset)


def make_bad_corpus(tmp: Path) -> tuple[list[Utterance], dict[str, str]]:
    a = tmp / "audio"
    good = [_u(f"good{i}", write_tone(a / f"good{i}.wav", 1.5, freq=200 + 50 * i)) for i in range(3)]
    expect: dict[str, str] = {}

    def bad(uid, reason, path, **kw):
        expect[uid] = reason
        return _u(uid, path, **kw)

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
        bad("tiny", "too_short", write_tone(a / "tiny.wav", 0.01), dur=0.01),
        bad("past_end", "no_samples", a / "good0.wav", offset=5.0, dur=1.0),  # a segment past the file's end
        bad("notext", "empty_transcript", a / "good0.wav", text="  ?!  "),
        bad("digits", "bad_characters", a / "good0.wav", text="call 911 now"),
    ]
    rows.append(_u("good1", a / "good1.wav"))  # a repeated id
    expect["good1#dup"] = "duplicate_id"
    return rows, expect


def test_skip_policy_rejects_each_kind_and_keeps_the_rest(tmp_path, monkeypatch):
    import speechkd.data.featurize as F

    monkeypatch.setattr(F, "POOL_MIN_SECONDS", 0.0)  # through the worker pool (2 workers), however short the audio
    rows, expect = make_bad_corpus(tmp_path)
    ctx = _ctx(tmp_path)
    write_manifest(rows, ctx.exp_dir / "corpus" / "train.jsonl")
    cfg = from_dict(featurize.Config, {"max_duration": 5.0, "shard_size": 4, "num_workers": 2})
    summary = featurize.run(cfg, ctx)
    kept = read_manifest(ctx.out_dir / "train.jsonl")
    assert [u.id for u in kept] == ["good0", "good1", "good2"]
    rejected = [json.loads(l) for l in (ctx.out_dir / "rejected" / "train.jsonl").read_text().splitlines()]
    got = {}
    for r in rejected:
        got[r["id"] + ("#dup" if r["reason"] == "duplicate_id" else "")] = r["reason"]
    assert got == expect
    assert len(set(expect.values())) >= 12 and len(expect) >= 13
    assert summary["rejected"] == {k: list(expect.values()).count(k) for k in set(expect.values())}
    from speechkd.features.store import FeatureRef, FeatureStore
    store = FeatureStore(ctx.out_dir)
    for u in kept:
        assert store.get(FeatureRef.from_json(u.extra["feats"])).shape == (148, 80)
    # the rejection list never reads as data: the tokenizer stage (and anyone globbing) sees only splits
    assert featurize.declared_splits(ctx.out_dir) == ["train"]
    assert json.loads((ctx.out_dir / "features.json").read_text())["fbank"]["frame_shift_ms"] == 10.0


def test_long_file_is_rejected_from_its_header_without_decoding(tmp_path, monkeypatch):
    """Defect 9: a long file was decoded in full before the max_duration check."""
    path = tmp_path / "long.wav"
    sr = 44100
    sf.write(str(path), np.zeros((sr * 40, 2), np.int16), sr, subtype="PCM_16")  # 40 s, stereo, 44.1 kHz
    reads = []
    real_read = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, *a, **k: reads.append(1) or real_read(self, *a, **k))
    feats, problem = featurize_utterance(_u("long", path, dur=40.0), path,
                                                   from_dict(featurize.Config, {"max_duration": 30.0}))
    assert feats is None and problem[0] == "too_long" and "not decoded" in problem[1]
    assert reads == []  # nothing was decoded


def test_segment_at_offset_zero_reads_only_its_span(tmp_path):
    """Defect 2: a Kaldi segment starting at 0.0 was read as the whole recording."""
    d = tmp_path / "kaldi"
    write_tone(d / "rec1.wav", seconds=4.38)
    (d / "wav.scp").write_text("rec1 rec1.wav\n")
    (d / "segments").write_text("a rec1 0.0 2.0\nb rec1 2.0 4.38\n")
    (d / "text").write_text("a HELLO THERE\nb GENERAL KENOBI\n")
    utts = import_kaldi(d, tmp_path / "exp" / "corpus" / "train.jsonl")
    assert [u.offset for u in utts] == [0.0, 2.0]
    assert '"offset": 0.0' in (tmp_path / "exp" / "corpus" / "train.jsonl").read_text()  # round-trips
    ctx = _ctx(tmp_path)
    summary = featurize.run(from_dict(featurize.Config, {"num_workers": 1}), ctx)
    assert summary["rejected"] == {}
    frames = {u.id: u.extra["feats"]["frames"] for u in read_manifest(ctx.out_dir / "train.jsonl")}
    assert frames == {"a": 198, "b": 236}  # 2.0 s and 2.38 s of 10 ms frames, not the 4.38 s recording


def test_fail_policy_names_utterance_and_keeps_finished_shards(tmp_path):
    a = tmp_path / "audio"
    rows = [_u(f"g{i}", write_tone(a / f"g{i}.wav", 1.5)) for i in range(3)]
    rows.append(_u("broken", a / "broken.wav"))
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
    write_tone(a / "broken.wav", 1.5)  # the user fixes the file and reruns: the finished shard is reused
    featurize.run(cfg, ctx)
    assert os.stat(shard0).st_mtime_ns == before
    assert [u.id for u in read_manifest(ctx.out_dir / "train.jsonl")] == ["g0", "g1", "g2", "broken"]


def test_fail_policy_on_manifest_level_problem(tmp_path):
    ctx = _ctx(tmp_path)
    write_manifest([_u("x", write_tone(tmp_path / "x.wav"), text="###")], ctx.exp_dir / "corpus" / "train.jsonl")
    with pytest.raises(BadInputError, match="'x'.*empty_transcript"):
        featurize.run(from_dict(featurize.Config, {"bad_input": "fail"}), ctx)


def test_too_short_for_ctc_depends_on_tokenizer_and_stack(tmp_path):
    """The CTC length check knows the tokenizer and the model's stack (it assumed chars and stack 3)."""
    from speechkd.data.dataset import FeatureDataset
    from speechkd.text.tokenizer import CharTokenizer

    rows = [_u("ok", write_tone(tmp_path / "ok.wav", 1.5)),
            _u("short", write_tone(tmp_path / "short.wav", 0.3), dur=0.3, text="a rather long transcript")]
    ctx = _ctx(tmp_path)
    write_manifest(rows, ctx.exp_dir / "corpus" / "train.jsonl")
    featurize.run(from_dict(featurize.Config, {"num_workers": 1}), ctx)
    m = ctx.out_dir / "train.jsonl"
    assert len(read_manifest(m)) == 2  # featurize keeps both: it does not know the model
    tok = CharTokenizer()
    ds1 = FeatureDataset(m, tok, stack=1)  # 28 frames for 24 characters: fits
    ds4 = FeatureDataset(m, tok, stack=4)  # 7 frames: does not
    assert ds1.ids == ["ok", "short"] and ds4.ids == ["ok"]
    assert ds4.too_short[0]["id"] == "short" and ds4.too_short[0]["reason"] == "too_short_for_ctc"
    assert len(FeatureDataset(m, tok)) == 2  # decoding keeps every utterance


# -- manifests: one-line errors naming file:line ---------------------------------------------------
@pytest.mark.parametrize("content,match", [
    (b'{"audio_filepath": "a.wav", "duration": 1, "text": "x"}\n{"duration": 1\n', r":2: invalid JSON"),
    (b'{"audio_filepath": "a.wav", "duration": 1, "text": ["x"]}\n', r":1: field 'text' must be a string"),
    (b'{"audio_filepath": "a.wav", "duration": -1, "text": "x"}\n', r":1: field 'duration' must be a finite"),
    (b'{"audio_filepath": "a.wav", "duration": "NaN", "text": "x"}\n', r":1: field 'duration' must be a finite"),
    (b'{"audio_filepath": "a.wav", "duration": 1, "text": "x", "offset": -2}\n', r":1: field 'offset'"),
    (b'{"audio_filepath": "a.wav", "duration": 1, "text": "x", "id": "has space"}\n', r":1: field 'id'"),
    (b'["not", "an", "object"]\n', r":1: expected a JSON object"),
    ('{"audio_filepath": "a.wav", "duration": 1, "text": "x"}\n'.encode("utf-16"), r":1: the manifest is UTF-16"),
    ('{"audio_filepath": "a.wav", "duration": 1, "text": "caf\u00e9"}\n'.encode("latin-1"), r":1: the manifest is not UTF-8"),
])
def test_manifest_errors_name_file_and_line(tmp_path, content, match):
    p = tmp_path / "m.jsonl"
    p.write_bytes(content)
    with pytest.raises(ManifestError, match=match) as e:
        read_manifest(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


# -- importers -----------------------------------------------------------------------------------
def _kaldi(d: Path, segments: str, text: str = "a HELLO\nb THERE\n") -> Path:
    write_tone(d / "rec1.wav", seconds=3.0)
    (d / "wav.scp").write_text("rec1 rec1.wav\n")
    (d / "segments").write_text(segments)
    (d / "text").write_bytes(text.encode("latin-1"))
    return d


@pytest.mark.parametrize("start,end", [("nan", "1.0"), ("0.5", "inf"), ("-1.0", "1.0"), ("1.0", "1.0")])
def test_kaldi_rejects_non_finite_negative_and_empty_segments(tmp_path, start, end):
    """Defect 7: nan, inf and negative segment times were accepted."""
    d = _kaldi(tmp_path / "k", f"a rec1 {start} {end}\nb rec1 1.0 2.0\n")
    utts = import_kaldi(d, tmp_path / "o" / "m.jsonl")
    assert [u.id for u in utts] == ["b"]
    rej = [json.loads(l) for l in (tmp_path / "o" / "rejected" / "m.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rej] == [("a", "bad_segment")] and "segments:1" in rej[0]["detail"]
    with pytest.raises(Exception, match=r"segments:1"):
        import_kaldi(d, tmp_path / "o2" / "m.jsonl", policy="fail")
    from speechkd.data.manifest import validate_manifest
    assert validate_manifest(tmp_path / "o" / "m.jsonl") == []  # what it writes, the validator accepts


@pytest.mark.parametrize("files,match", [
    ({"segments": "a rec1 zero 1.0\n"}, r"segments:1: segment start 'zero' is not a number"),
    ({"segments": "a rec1 0.0\n"}, r"segments:1: 'a': expected"),
    ({"text": "a caf\u00e9\n"}, r"text:1: the Kaldi file is not UTF-8"),
    ({"wav.scp": "rec1 rec1.wav\nrec1 other.wav\n"}, r"wav.scp:2: duplicate key 'rec1' \(first at line 1\)"),
    ({"wav.scp": "rec1 sox in.wav -t wav - |\n"}, r"wav.scp:1: recording 'rec1': piped commands"),
])
def test_kaldi_format_errors_name_file_and_line(tmp_path, files, match):
    d = tmp_path / "k"
    write_tone(d / "rec1.wav", seconds=3.0)
    base = {"wav.scp": "rec1 rec1.wav\n", "text": "a HELLO\n", "segments": "a rec1 0.0 1.0\n"}
    for name, content in {**base, **files}.items():
        (d / name).write_bytes(content.encode("latin-1"))
    with pytest.raises(ImportError_, match=match):
        import_kaldi(d)


def test_librispeech_bad_encoding_bad_line_and_duplicates(tmp_path):
    ch = tmp_path / "ls" / "19" / "198"
    write_tone(ch / "19-198-0001.flac", seconds=1.0)
    (ch / "19-198.trans.txt").write_bytes("19-198-0001 NA\u00cfVE\n".encode("latin-1"))
    with pytest.raises(ImportError_, match=r"19-198.trans.txt:1: the LibriSpeech transcript is not UTF-8"):
        import_librispeech(tmp_path / "ls")
    (ch / "19-198.trans.txt").write_text("19-198-0001\n")
    with pytest.raises(ImportError_, match=r"19-198.trans.txt:1: expected"):
        import_librispeech(tmp_path / "ls")
    # the same utterance id in two transcript files: the second is a counted rejection, not a duplicate row
    (ch / "19-198.trans.txt").write_text("19-198-0001 HELLO\n")
    other = tmp_path / "ls" / "copy" / "19" / "198"
    write_tone(other / "19-198-0001.flac", seconds=1.0)
    (other / "19-198.trans.txt").write_text("19-198-0001 HELLO AGAIN\n")
    utts = import_librispeech(tmp_path / "ls", tmp_path / "o" / "ls.jsonl")
    assert [u.id for u in utts] == ["19-198-0001"]
    rej = [json.loads(l)["reason"] for l in (tmp_path / "o" / "rejected" / "ls.jsonl").read_text().splitlines()]
    assert rej == ["duplicate_id"]
    read_manifest(tmp_path / "o" / "ls.jsonl")  # unique ids: the strict reader accepts it


def test_commonvoice_duplicates_and_header(tmp_path):
    cv = tmp_path / "cv"
    write_tone(cv / "clips" / "x.wav", seconds=1.0)
    (cv / "t.tsv").write_text("client_id\tpath\tsentence\nc1\tx.wav\thello\nc2\tx.wav\thello again\n")
    utts = import_commonvoice(cv / "t.tsv", tmp_path / "o" / "cv.jsonl")
    assert [u.id for u in utts] == ["x"]
    assert "duplicate_id" in (tmp_path / "o" / "rejected" / "cv.jsonl").read_text()
    (cv / "t.tsv").write_text("client_id\tpath\nc1\tx.wav\n")
    with pytest.raises(ImportError_, match=r"t.tsv:1: header lacks column\(s\) \['sentence'\]"):
        import_commonvoice(cv / "t.tsv")
    (cv / "t.tsv").write_bytes("client_id\tpath\tsentence\nc1\tx.wav\tna\u00efve\n".encode("latin-1"))
    with pytest.raises(ImportError_, match=r"t.tsv:2: the Common Voice TSV is not UTF-8"):
        import_commonvoice(cv / "t.tsv")


def test_unreadable_kaldi_times_give_no_traceback_in_the_cli(tmp_path):
    import subprocess
    import sys

    d = tmp_path / "k"
    write_tone(d / "rec1.wav", seconds=3.0)
    (d / "wav.scp").write_text("rec1 rec1.wav\n")
    (d / "text").write_text("a HELLO\n")
    (d / "segments").write_text("a rec1 0,5 1,0\n")
    r = subprocess.run([sys.executable, "-m", "speechkd.cli", "corpus", "import", "kaldi", str(d), "--out",
                        str(tmp_path / "m.jsonl")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "segments:1: segment start '0,5' is not a number" in r.stderr
