"""lhotse manifests in and out: the data format of icefall and NeMo's lhotse loaders.

In: a cut manifest (``cuts.jsonl.gz``), or a recording manifest with its supervisions beside it
(``*_recordings_*`` -> ``*_supervisions_*``, lhotse's own naming), or a recording manifest alone
(untranscribed). Each mono cut becomes one row: the recording's file, ``offset`` = the cut's start
(when the cut is not the whole file), ``duration`` = the cut's, ``text`` = its supervisions' texts
in time order (normalised like every importer), ``speaker`` = the first supervision's speaker.
A cut with no text is rejected (``no_transcript``) unless the split is declared untranscribed.
What the toolkit cannot read the same way lhotse would is bad input, with a reason: recordings from
URLs, commands or memory (``unsupported_source``), recordings with transforms such as speed
perturbation (``unsupported_transform``; speechkd applies its own), mixed or multi-channel cuts and a
channel picked out of a multi-channel file (``unsupported_cut``). Relative paths resolve as lhotse
resolves them, against the working directory, and failing that against the manifest's folder.

Out: a manifest becomes ``recordings.jsonl.gz`` (one recording per audio file, read from its
header), ``supervisions.jsonl.gz`` (one per row, id = the row's id, with its text and speaker) and
``cuts.jsonl.gz`` (one cut per row, trimmed to its supervision: cut id = row id), so the round trip
through lhotse gives the same rows.

lhotse is imported only here; the Makefile installs it (``requirements.txt``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speechkd.data.checks import BadInputLog
from speechkd.data.manifest import Utterance, derive_id, read_manifest

LHOTSE_FILES = ("recordings.jsonl.gz", "supervisions.jsonl.gz", "cuts.jsonl.gz")


class LhotseError(ValueError):
    """A lhotse manifest that cannot be read (names the file)."""


def _lhotse():
    try:
        import lhotse
    except ModuleNotFoundError:
        raise LhotseError("lhotse is not installed: `make deps` (or pip install lhotse) installs it") from None
    return lhotse


def _load(path: Path) -> Any:
    lhotse = _lhotse()
    if not path.is_file():
        raise LhotseError(f"{path}: no such lhotse manifest")
    try:
        return lhotse.load_manifest(path)
    except Exception as e:  # lhotse raises several types for a file that is not one of its manifests
        raise LhotseError(f"{path}: not a lhotse manifest (recordings, supervisions or cuts): "
                          f"{type(e).__name__}") from None


def _resolve(source: str, base: Path) -> Path:
    p = Path(source)
    if p.is_absolute() or p.exists():
        return p
    return base / p if (base / p).exists() else p


def read_cuts(source: str | Path):
    """The cuts of a lhotse manifest: a cut manifest as is; recordings with their supervisions (the file
    lhotse names ``*_supervisions_*`` beside ``*_recordings_*``) or alone, made into cuts."""
    lhotse = _lhotse()
    path = Path(source)
    m = _load(path)
    if isinstance(m, lhotse.CutSet):
        return m
    if isinstance(m, lhotse.SupervisionSet):
        raise LhotseError(f"{path}: a supervision manifest; give its recording manifest (the supervisions are "
                          "found beside it) or a cut manifest")
    if not isinstance(m, lhotse.RecordingSet):
        raise LhotseError(f"{path}: a {type(m).__name__}; give a cut or recording manifest")
    sup_path = path.with_name(path.name.replace("recordings", "supervisions"))
    sups = _load(sup_path) if sup_path != path and sup_path.is_file() else None
    if sups is None:  # each recording whole, under its own id
        return lhotse.CutSet.from_cuts(r.to_cut() for r in m)
    return lhotse.CutSet.from_manifests(recordings=m, supervisions=sups).trim_to_supervisions(keep_overlapping=False)


def _reason(cut, lhotse) -> tuple[str, str] | None:
    """Why a cut cannot become a row (reason, detail), or None."""
    if not isinstance(cut, lhotse.MonoCut) or not cut.has_recording:
        return "unsupported_cut", f"a {type(cut).__name__} (mixed, padded or multi-channel cuts are not read)"
    rec = cut.recording
    if len(rec.sources) != 1 or rec.sources[0].type != "file":
        return "unsupported_source", (f"recording {rec.id!r} is read from {[s.type for s in rec.sources]}; only "
                                      "one audio file per recording is read")
    if rec.transforms:
        return "unsupported_transform", (f"recording {rec.id!r} has transforms (speed perturbation, resampling); "
                                         "speechkd applies its own: give the cuts without them")
    if rec.num_channels > 1:
        return "unsupported_cut", f"channel {cut.channel} of the {rec.num_channels}-channel recording {rec.id!r}"
    return None


def import_lhotse(source: str | Path, out_manifest: str | Path | None = None, *, policy: str = "skip",
                  bad: BadInputLog | None = None, untranscribed: bool = False) -> list[Utterance]:
    """Import a lhotse cut (or recording + supervision) manifest; see the module docstring."""
    from speechkd.data.importers import _bad, _finish, _make, _out_dir

    lhotse = _lhotse()
    src = Path(source)
    cuts = read_cuts(src)
    bad = _bad(policy, out_manifest, bad)
    utts: list[Utterance] = []
    for cut in cuts:
        why = _reason(cut, lhotse)
        rec = getattr(cut, "recording", None) if isinstance(cut, lhotse.MonoCut) else None
        audio = str(rec.sources[0].source) if rec is not None and rec.sources else ""
        if why:
            bad.reject(cut.id, audio, *why)
            continue
        sups = sorted(cut.supervisions, key=lambda s: s.start)
        texts = [s.text.strip() for s in sups if s.text and s.text.strip()]
        if not texts and not untranscribed:
            bad.reject(cut.id, audio, "no_transcript", "cut has no supervision text; declare the split "
                                                       "untranscribed (corpus.untranscribed) if none of it is")
            continue
        whole = cut.start == 0 and abs(cut.duration - cut.recording.duration) < 1e-3  # rows keep 4 decimals
        speaker = next((s.speaker for s in sups if s.speaker), None) or "unknown"
        u = _make(cut.id, _resolve(audio, src.parent), None if untranscribed else " ".join(texts), speaker, bad,
                  out_dir=_out_dir(out_manifest), offset=None if whole else round(cut.start, 4),
                  duration=round(cut.duration, 4))
        if u:
            utts.append(u)
    return _finish(utts, out_manifest, bad, f"lhotse {src}")


def export_lhotse(manifest: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Write a manifest as lhotse recordings, supervisions and cuts (``LHOTSE_FILES``) into ``out_dir``;
    returns the counts. Every audio file's header is read (sample rate, length, channels)."""
    import soundfile as sf

    lhotse = _lhotse()
    manifest = Path(manifest)
    utts = read_manifest(manifest)
    out = Path(out_dir)
    recordings: dict[str, Any] = {}
    ids: set[str] = set()
    sups = []
    for u in utts:
        path = u.resolve_audio(manifest.parent).resolve()
        key = str(path)
        if key not in recordings:
            try:
                info = sf.info(key)
            except Exception as e:  # libsndfile raises several types
                raise LhotseError(f"{manifest}: utterance {u.id!r}: cannot read {path}: {type(e).__name__}") from None
            rid = derive_id(u.audio_filepath, manifest.parent)  # the file's path without its extension
            rid = rid if rid not in ids else f"{rid}-{len(ids)}"
            ids.add(rid)
            recordings[key] = lhotse.Recording(
                id=rid, sources=[lhotse.AudioSource(type="file", channels=list(range(info.channels)), source=key)],
                sampling_rate=int(info.samplerate), num_samples=int(info.frames),
                duration=info.frames / info.samplerate)
        rec = recordings[key]
        sups.append(lhotse.SupervisionSegment(id=u.id, recording_id=rec.id, start=u.offset or 0.0,
                                              duration=u.duration, channel=0 if rec.num_channels == 1 else
                                              list(range(rec.num_channels)), text=u.text, speaker=u.speaker))
    rset = lhotse.RecordingSet.from_recordings(recordings.values())
    sset = lhotse.SupervisionSet.from_segments(sups)
    cuts = lhotse.CutSet.from_manifests(recordings=rset, supervisions=sset).trim_to_supervisions(
        keep_overlapping=False, keep_all_channels=True).to_eager()
    out.mkdir(parents=True, exist_ok=True)
    for obj, name in zip((rset, sset, cuts), LHOTSE_FILES):
        tmp = out / f".{name}.tmp.jsonl.gz"
        obj.to_file(tmp)
        tmp.replace(out / name)
    return {"recordings": len(rset), "supervisions": len(sset), "cuts": len(cuts)}
