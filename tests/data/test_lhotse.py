"""lhotse in and out: cuts built with lhotse itself import as rows; a manifest exported and imported again
gives the same rows; what the toolkit cannot read the way lhotse would is rejected with a reason."""

import json
import subprocess
import sys

import pytest

from speechkd.data.checks import BadInputLog
from speechkd.data.importers import import_to_manifest, rejected_path
from speechkd.data.lhotse_io import LhotseError, export_lhotse, import_lhotse
from speechkd.data.manifest import Utterance, read_manifest, write_manifest
from tests.conftest import REPO, write_tone

lhotse = pytest.importorskip("lhotse")


def _recording(path, rid=None):
    return lhotse.Recording.from_file(str(path), recording_id=rid)


def test_cuts_built_with_lhotse_import_with_offsets_text_and_speaker(tmp_path):
    long = write_tone(tmp_path / "audio" / "long.wav", seconds=3.0)
    short = write_tone(tmp_path / "audio" / "short.flac", seconds=1.0, freq=330.0)
    recs = lhotse.RecordingSet.from_recordings([_recording(long, "long"), _recording(short, "short")])
    sups = lhotse.SupervisionSet.from_segments([
        lhotse.SupervisionSegment("long-a", "long", start=0.5, duration=1.0, text="Hello, World!", speaker="spk1"),
        lhotse.SupervisionSegment("long-b", "long", start=2.0, duration=0.75, text="second one", speaker="spk2"),
        lhotse.SupervisionSegment("short-0", "short", start=0.0, duration=1.0, text="a whole file", speaker="s3"),
    ])
    cuts = lhotse.CutSet.from_manifests(recordings=recs, supervisions=sups).trim_to_supervisions()
    cuts.to_file(tmp_path / "cuts.jsonl.gz")

    utts = {u.id: u for u in import_lhotse(tmp_path / "cuts.jsonl.gz", tmp_path / "out" / "m.jsonl")}
    assert set(utts) == {"long-a", "long-b", "short-0"}
    a, b, w = utts["long-a"], utts["long-b"], utts["short-0"]
    assert (a.offset, a.duration, a.text, a.speaker) == (0.5, 1.0, "hello world", "spk1")
    assert a.extra["raw_text"] == "Hello, World!"
    assert (b.offset, b.duration, b.speaker) == (2.0, 0.75, "spk2")
    assert (w.offset, w.duration, w.text) == (None, 1.0, "a whole file")  # the whole file: no offset
    assert [u.id for u in read_manifest(tmp_path / "out" / "m.jsonl")] == ["long-a", "long-b", "short-0"]

    # recordings + supervisions (lhotse's file names): found beside each other, made into cuts
    recs.to_file(tmp_path / "libri_recordings_dev.jsonl.gz")
    sups.to_file(tmp_path / "libri_supervisions_dev.jsonl.gz")
    again = {u.id: u for u in import_lhotse(tmp_path / "libri_recordings_dev.jsonl.gz")}
    assert {k: (u.offset, u.duration, u.text) for k, u in again.items()} == \
        {k: (u.offset, u.duration, u.text) for k, u in utts.items()}
    # recordings alone are untranscribed audio: rejected unless the split is declared untranscribed
    recs.to_file(tmp_path / "only_recordings.jsonl.gz")
    bad = BadInputLog("skip")
    assert import_lhotse(tmp_path / "only_recordings.jsonl.gz", bad=bad) == []
    assert {r.reason for r in bad.rejected} == {"no_transcript"}
    unt = import_lhotse(tmp_path / "only_recordings.jsonl.gz", untranscribed=True)
    assert [(u.id, u.text, u.offset) for u in unt] == [("long", None, None), ("short", None, None)]


def test_export_then_import_gives_the_same_rows_and_lhotse_reads_the_export(tmp_path):
    rec = write_tone(tmp_path / "a" / "rec.wav", seconds=4.0)
    one = write_tone(tmp_path / "b" / "one.wav", seconds=1.5, freq=440.0)
    rows = [Utterance("seg-1", "a/rec.wav", 1.25, "first segment", "spk1", offset=0.5),
            Utterance("seg-2", "a/rec.wav", 1.0, "second segment", "spk2", offset=2.5),
            Utterance("whole", "b/one.wav", 1.5, "the whole file", "spk3"),
            Utterance("unlabelled", "b/one.wav", 1.5, None, "spk3")]
    write_manifest(rows, tmp_path / "m.jsonl")
    counts = export_lhotse(tmp_path / "m.jsonl", tmp_path / "lh")
    assert counts == {"recordings": 2, "supervisions": 4, "cuts": 4}

    cuts = lhotse.load_manifest(tmp_path / "lh" / "cuts.jsonl.gz")  # lhotse itself reads what we wrote
    by_id = {c.id: c for c in cuts}
    assert set(by_id) == {"seg-1", "seg-2", "whole", "unlabelled"}
    assert (by_id["seg-2"].start, by_id["seg-2"].duration, by_id["seg-2"].supervisions[0].text) == \
        (2.5, 1.0, "second segment")
    assert by_id["seg-1"].load_audio().shape == (1, 20000)  # 1.25 s at 16 kHz, from the right file
    assert lhotse.load_manifest(tmp_path / "lh" / "recordings.jsonl.gz")[0].num_samples in (64000, 24000)

    back = import_lhotse(tmp_path / "lh" / "cuts.jsonl.gz", untranscribed=False, bad=BadInputLog("skip"))
    want = {u.id: u for u in rows if u.text is not None}
    assert {u.id: (u.offset, u.duration, u.text, u.speaker) for u in back} == \
        {k: (u.offset, u.duration, u.text, u.speaker) for k, u in want.items()}
    assert {u.id: u.resolve_audio(None).resolve() for u in back} == \
        {"seg-1": rec.resolve(), "seg-2": rec.resolve(), "whole": one.resolve()}


def test_what_lhotse_would_read_differently_is_rejected_with_a_reason(tmp_path):
    wav = write_tone(tmp_path / "x.wav", seconds=2.0)
    stereo = write_tone(tmp_path / "st.wav", seconds=1.0, channels=2)
    r = _recording(wav, "x")
    cuts = [
        lhotse.MonoCut("plain", start=0.0, duration=2.0, channel=0, recording=r,
                       supervisions=[lhotse.SupervisionSegment("plain", "x", 0.0, 2.0, text="fine")]),
        lhotse.MonoCut("fast", start=0.0, duration=2.0, channel=0, recording=r,
                       supervisions=[lhotse.SupervisionSegment("fast", "x", 0.0, 2.0, text="sped")]
                       ).perturb_speed(1.1),
        lhotse.MonoCut("url", start=0.0, duration=2.0, channel=0,
                       recording=lhotse.Recording("u", [lhotse.AudioSource("url", [0], "http://h/a.wav")], 16000,
                                                  32000, 2.0),
                       supervisions=[lhotse.SupervisionSegment("url", "u", 0.0, 2.0, text="remote")]),
        lhotse.MonoCut("left", start=0.0, duration=1.0, channel=0, recording=_recording(stereo, "st"),
                       supervisions=[lhotse.SupervisionSegment("left", "st", 0.0, 1.0, text="one side")]),
    ]
    cuts.append(cuts[0].pad(duration=3.0).with_id("padded"))
    lhotse.CutSet.from_cuts(cuts).to_file(tmp_path / "cuts.jsonl.gz")
    bad = BadInputLog("skip", rejected_path(tmp_path / "m.jsonl"))
    got = import_lhotse(tmp_path / "cuts.jsonl.gz", tmp_path / "m.jsonl", bad=bad)
    assert [u.id for u in got] == ["plain"]
    assert {r.id: r.reason for r in bad.rejected} == {
        "fast_sp1.1": "unsupported_transform", "url": "unsupported_source", "left": "unsupported_cut",
        "padded": "unsupported_cut"}
    rejected = [json.loads(x) for x in (tmp_path / "rejected" / "m.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rejected} == {"fast_sp1.1", "url", "left", "padded"}


def test_bad_lhotse_input_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "junk.jsonl").write_text('{"neither": 1}\n')
    with pytest.raises(LhotseError, match=r"junk.jsonl: not a lhotse manifest"):
        import_lhotse(tmp_path / "junk.jsonl")
    with pytest.raises(LhotseError, match=r"nope.jsonl.gz: no such lhotse manifest"):
        import_lhotse(tmp_path / "nope.jsonl.gz")
    write_tone(tmp_path / "x.wav")
    sups = lhotse.SupervisionSet.from_segments([lhotse.SupervisionSegment("s", "x", 0.0, 1.0, text="t")])
    sups.to_file(tmp_path / "sups.jsonl.gz")
    with pytest.raises(LhotseError, match="a supervision manifest; give its recording manifest"):
        import_lhotse(tmp_path / "sups.jsonl.gz")
    write_manifest([Utterance("gone", str(tmp_path / "gone.wav"), 1.0, "t")], tmp_path / "m.jsonl")
    with pytest.raises(LhotseError, match=r"m.jsonl: utterance 'gone': cannot read"):
        export_lhotse(tmp_path / "m.jsonl", tmp_path / "out")
    assert not (tmp_path / "out" / "cuts.jsonl.gz").exists()


def test_the_cli_imports_and_exports_lhotse(tmp_path):
    write_tone(tmp_path / "w" / "a.wav", seconds=1.0)
    write_manifest([Utterance("a", "w/a.wav", 1.0, "some words", "s")], tmp_path / "m.jsonl")
    cli = [sys.executable, "-m", "speechkd.cli"]
    r = subprocess.run(cli + ["corpus", "export", "lhotse", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "lh")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "wrote 1 recordings, 1 supervisions and 1 cuts" in r.stdout, r.stderr
    r = subprocess.run(cli + ["corpus", "import", "lhotse", str(tmp_path / "lh" / "cuts.jsonl.gz"), "--out",
                              str(tmp_path / "back.jsonl")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "wrote 1 utterances" in r.stdout, r.stderr
    assert [(u.id, u.text) for u in read_manifest(tmp_path / "back.jsonl")] == [("a", "some words")]
    assert "--untranscribed is for nemo and lhotse" in str(pytest.raises(
        ValueError, import_to_manifest, "kaldi", tmp_path, tmp_path / "x.jsonl", untranscribed=True).value)


def test_a_recipe_imports_lhotse_splits_including_an_untranscribed_one(tmp_path):
    from speechkd.stages.runner import run_recipe

    for i in range(3):
        write_tone(tmp_path / "audio" / f"u{i}.wav", seconds=1.0 + i / 4)
    recs = [_recording(tmp_path / "audio" / f"u{i}.wav", f"u{i}") for i in range(3)]
    sups = [lhotse.SupervisionSegment(f"u{i}", f"u{i}", 0.0, r.duration, text=f"words {'abc'[i]}", speaker="s")
            for i, r in enumerate(recs)]
    lhotse.RecordingSet.from_recordings(recs).to_file(tmp_path / "c_recordings_train.jsonl.gz")
    lhotse.SupervisionSet.from_segments(sups).to_file(tmp_path / "c_supervisions_train.jsonl.gz")
    lhotse.CutSet.from_manifests(recordings=lhotse.RecordingSet.from_recordings(recs),
                                 supervisions=lhotse.SupervisionSet.from_segments(sups)).to_file(tmp_path / "x.jsonl.gz")
    recipe = tmp_path / "r" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text("name: lh\nstages:\n  corpus:\n    kind: lhotse\n    splits: {train: ../c_recordings_train.jsonl.gz,"
                      " extra: ../x.jsonl.gz}\n    untranscribed: [extra]\n")
    run_recipe(recipe, exp_root=tmp_path / "exp")
    corpus = tmp_path / "exp" / "lh" / "corpus"
    assert [(u.id, u.text) for u in read_manifest(corpus / "train.jsonl")] == [(f"u{i}", f"words {'abc'[i]}") for i in range(3)]
    assert all(u.text is None for u in read_manifest(corpus / "extra.jsonl"))  # declared untranscribed: text dropped
    assert json.loads((corpus / "corpus.json").read_text())["untranscribed"] == ["extra"]
    assert "words" not in (corpus / "extra.jsonl").read_text()
