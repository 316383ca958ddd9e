"""Each importer on a tiny fixture in its corpus's exact layout."""

import json

import pytest

from speechkd.data.importers import ImportError_, import_commonvoice, import_kaldi, import_librispeech, import_nemo
from speechkd.data.manifest import read_manifest
from tests.conftest import write_tone


def test_librispeech(tmp_path):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    for spk, ch, n in [("84", "121123", 2), ("174", "50561", 1)]:
        d = root / spk / ch
        lines = []
        for i in range(n):
            uid = f"{spk}-{ch}-{i:04d}"
            write_tone(d / f"{uid}.flac", seconds=1.0 + i)
            lines.append(f"{uid} GO DO YOU HEAR {i}")
        (d / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "m" / "dev.jsonl"
    utts = import_librispeech(tmp_path / "LibriSpeech", out)
    assert [u.id for u in utts] == ["174-50561-0000", "84-121123-0000", "84-121123-0001"]
    assert utts[2].text == "go do you hear one" and utts[2].speaker == "84"
    assert utts[2].duration == pytest.approx(2.0, abs=1e-3)
    back = read_manifest(out)
    assert back == utts and (out.parent / back[0].audio_filepath).exists()


def test_kaldi_plain_and_segments(tmp_path):
    d = tmp_path / "data" / "train"
    d.mkdir(parents=True)
    write_tone(tmp_path / "wav" / "rec1.wav", seconds=3.0)
    write_tone(tmp_path / "wav" / "rec2.wav", seconds=1.0)
    (d / "wav.scp").write_text(f"rec1 {tmp_path}/wav/rec1.wav\nrec2 ../../wav/rec2.wav\n")
    (d / "text").write_text("rec1 HELLO THERE\nrec2 GOOD BYE\n")
    (d / "utt2spk").write_text("rec1 spkA\nrec2 spkB\n")
    utts = import_kaldi(d)
    assert [(u.id, u.speaker, u.text) for u in utts] == [("rec1", "spkA", "hello there"), ("rec2", "spkB", "good bye")]
    assert utts[1].duration == pytest.approx(1.0)

    (d / "segments").write_text("rec1-a rec1 0.00 1.25\nrec1-b rec1 1.25 3.00\n")
    (d / "text").write_text("rec1-a HELLO\nrec1-b THERE\n")
    (d / "utt2spk").write_text("rec1-a spkA\nrec1-b spkA\n")
    out = tmp_path / "seg.jsonl"
    segs = import_kaldi(d, out)
    assert [(u.id, u.offset, u.duration) for u in segs] == [("rec1-a", 0.0, 1.25), ("rec1-b", 1.25, 1.75)]
    assert read_manifest(out) == segs


def test_kaldi_rejects_pipes_with_file_name(tmp_path):
    (tmp_path / "wav.scp").write_text("r1 sox in.flac -t wav - |\n")
    (tmp_path / "text").write_text("r1 HI\n")
    with pytest.raises(ImportError_, match=r"wav.scp.*piped commands"):
        import_kaldi(tmp_path)


def test_nemo(tmp_path):
    write_tone(tmp_path / "audio" / "a.wav", seconds=1.0)
    src = tmp_path / "nemo.json"
    src.write_text(json.dumps({"audio_filepath": "audio/a.wav", "duration": 1.0, "text": "Hello, world.",
                               "lang": "en"}) + "\n" +
                   json.dumps({"audio_filepath": "audio/missing.wav", "duration": 1.0, "text": "x"}) + "\n")
    out = tmp_path / "out" / "m.jsonl"
    utts = import_nemo(src, out)
    assert len(utts) == 1 and utts[0].text == "hello world" and utts[0].extra["lang"] == "en"
    assert utts[0].extra["raw_text"] == "Hello, world."
    rejected = [json.loads(l) for l in (tmp_path / "out" / "rejected" / "m.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejected] == ["missing"]


def test_commonvoice(tmp_path):
    cv = tmp_path / "cv-corpus" / "en"
    write_tone(cv / "clips" / "common_voice_en_1.mp3", seconds=1.5)
    write_tone(cv / "clips" / "common_voice_en_2.mp3", seconds=1.0)
    (cv / "train.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
        "abc\tcommon_voice_en_1.mp3\tIt's a \"test\".\t2\t0\t\t\t\ten\t\n"
        "def\tcommon_voice_en_2.mp3\tSecond one!\t2\t0\t\t\t\ten\t\n")
    utts = import_commonvoice(cv / "train.tsv")
    assert [(u.id, u.speaker, u.text) for u in utts] == [("common_voice_en_1", "abc", "it's a test"),
                                                         ("common_voice_en_2", "def", "second one")]
    assert utts[0].duration == pytest.approx(1.5, abs=0.1)


def test_commonvoice_missing_column(tmp_path):
    (tmp_path / "t.tsv").write_text("client_id\tpath\n")
    with pytest.raises(ImportError_, match=r"t.tsv:1: header lacks column\(s\) \['sentence'\]"):
        import_commonvoice(tmp_path / "t.tsv")
