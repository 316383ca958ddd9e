"""Corpus importers: each returns a list of :class:`Utterance` and writes a manifest only if asked.

Supported layouts:

* LibriSpeech: ``<root>/**/<spk>/<chapter>/<spk>-<chapter>.trans.txt`` next to ``<id>.flac``;
* Kaldi data dir: ``wav.scp`` (plain paths only), ``text``, ``utt2spk``, optional ``segments``;
* NeMo JSONL manifest (``audio_filepath``, ``duration``, ``text``);
* Common Voice TSV (``client_id``, ``path``, ``sentence``; audio under ``clips/``);
* a folder tree of audio files (``audio``: every format libsndfile reads), untranscribed;
* lhotse cuts, or recordings + supervisions (:mod:`speechkd.data.lhotse_io`).

A split whose rows carry no transcript is *untranscribed* (audio that only distillation uses): the
``audio`` importer writes such rows, and the NeMo and lhotse importers with ``untranscribed=True`` drop any text.

Transcripts are normalised with :func:`speechkd.text.normalize_text`; the original is kept as
``raw_text`` when it differs. Durations come from the audio header (seconds). Text inputs must be
UTF-8; errors name ``file:line``. Entries that cannot be used (missing audio, a repeated id, a bad
segment) are handled by the bad-input policy and listed in ``rejected/<manifest stem>.jsonl``
beside the written manifest, where no reader of manifests mistakes them for data.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Callable

from speechkd.data.audio import audio_info
from speechkd.data.checks import BadInputLog
from speechkd.data.manifest import (ManifestError, Utterance, derive_id, iter_manifest, relative_to_manifest,
                                    text_lines, write_manifest)
from speechkd.text.normalize import normalize_text, unspellable
from speechkd.utils import progress

log = logging.getLogger(__name__)


class ImportError_(ValueError):
    """A corpus folder or file that does not have the expected layout (names the file:line)."""


def _make(uid: str, audio: Path, raw_text: str | None, speaker: str, bad: BadInputLog, *, out_dir: Path | None,
          offset: float | None = None, duration: float | None = None) -> Utterance | None:
    """One row; ``raw_text=None`` makes an untranscribed row."""
    if not audio.exists():
        bad.reject(uid, str(audio), "missing", "audio file does not exist")
        return None
    if duration is None:
        try:
            sr, frames = audio_info(audio)
        except Exception as e:  # libsndfile raises several types
            bad.reject(uid, str(audio), "unreadable", f"cannot read audio header: {e}")
            return None
        duration = frames / sr if sr else 0.0
    path = relative_to_manifest(audio, out_dir) if out_dir else str(audio.resolve())
    if raw_text is None:
        return Utterance(id=uid, audio_filepath=path, duration=round(duration, 4), text=None, speaker=speaker,
                         offset=offset)
    foreign = unspellable(raw_text)
    if foreign:
        bad.reject(uid, str(audio), "unspellable_text", f"transcript has {len(foreign)} letter(s) with no spelling in "
                                                        "[a-z'] (another script); transcribe or transliterate it")
        return None
    text = normalize_text(raw_text)
    extra = {"raw_text": raw_text} if raw_text != text else {}
    return Utterance(id=uid, audio_filepath=path, duration=round(duration, 4), text=text, speaker=speaker,
                     offset=offset, extra=extra)


def _finish(utts: list[Utterance], out_manifest: str | Path | None, bad: BadInputLog, name: str) -> list[Utterance]:
    """Drop repeated ids (the first entry wins; later ones are rejected), sort, write."""
    seen: set[str] = set()
    unique = []
    for u in utts:
        if u.id in seen:
            bad.reject(u.id, u.audio_filepath, "duplicate_id", "id already used by an earlier entry")
            continue
        seen.add(u.id)
        unique.append(u)
    utts = sorted(unique, key=lambda u: u.id)
    log.info("%s: imported %d utterances (%.2f h); %s", name, len(utts), sum(u.duration for u in utts) / 3600,
             bad.summary())
    if out_manifest is not None:
        write_manifest(utts, out_manifest)
    return utts


def rejected_path(out_manifest: str | Path) -> Path:
    """Where the entries rejected while writing ``out_manifest`` are listed."""
    out = Path(out_manifest)
    return out.parent / "rejected" / f"{out.stem}.jsonl"


def _bad(policy: str, out_manifest: str | Path | None, bad: BadInputLog | None) -> BadInputLog:
    if bad is None:
        bad = BadInputLog(policy, rejected_path(out_manifest) if out_manifest else None)  # type: ignore[arg-type]
    if bad.out_file is not None and bad.out_file.exists():
        bad.out_file.unlink()  # a rerun lists each rejection once
    return bad


def _out_dir(out_manifest: str | Path | None) -> Path | None:
    return Path(out_manifest).parent if out_manifest else None


def find_files(root: str | Path, suffix: str) -> list[Path]:
    """Files under ``root`` whose names end in ``suffix``, sorted, following links to folders (a folder of
    links to several LibriSpeech subsets is one training set); each real folder is visited once."""
    out, seen = [], set()
    for d, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        out.extend(Path(d) / f for f in files if f.endswith(suffix))
    return sorted(out)


def import_librispeech(root: str | Path, out_manifest: str | Path | None = None, *, policy: str = "skip",
        bad: BadInputLog | None = None) -> list[Utterance]:
    """Import a LibriSpeech tree (any subset folder, or a folder holding several subsets or links to them)."""
    root = Path(root)
    trans = find_files(root, ".trans.txt")
    if not trans:
        raise ImportError_(f"{root}: no '*.trans.txt' files found; is this a LibriSpeech folder?")
    bad = _bad(policy, out_manifest, bad)
    utts: list[Utterance] = []
    for tf in trans:
        for lineno, line in text_lines(tf, ImportError_, "LibriSpeech transcript"):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ImportError_(f"{tf}:{lineno}: expected '<utterance-id> <TRANSCRIPT>'")
            uid, text = parts
            speaker = uid.split("-")[0]
            u = _make(uid, tf.parent / f"{uid}.flac", text, speaker, bad, out_dir=_out_dir(out_manifest))
            if u:
                utts.append(u)
    return _finish(utts, out_manifest, bad, f"librispeech {root}")


def _read_kv(path: Path, *, required: bool = True) -> dict[str, tuple[str, int]]:
    """``key -> (rest of the line, line number)`` of a Kaldi table file."""
    if not path.exists():
        if required:
            raise ImportError_(f"{path}: required Kaldi file is missing")
        return {}
    out: dict[str, tuple[str, int]] = {}
    for lineno, line in text_lines(path, ImportError_, "Kaldi file"):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        key = parts[0]
        if key in out:
            raise ImportError_(f"{path}:{lineno}: duplicate key {key!r} (first at line {out[key][1]})")
        out[key] = (parts[1] if len(parts) > 1 else "", lineno)
    return out


def _seconds(text: str, what: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ImportError_(f"{where}: segment {what} {text!r} is not a number (seconds)") from None


def import_kaldi(data_dir: str | Path, out_manifest: str | Path | None = None, *, policy: str = "skip",
        bad: BadInputLog | None = None) -> list[Utterance]:
    """Import a Kaldi data dir. ``wav.scp`` entries must be plain file paths (no pipes)."""
    d = Path(data_dir)
    wav_kv = _read_kv(d / "wav.scp")
    text_kv = _read_kv(d / "text")
    spk_kv = _read_kv(d / "utt2spk", required=False)
    segments = _read_kv(d / "segments", required=False)
    for rec, (p, lineno) in wav_kv.items():
        if p.rstrip().endswith("|") or p.lstrip().startswith("|"):
            raise ImportError_(f"{d / 'wav.scp'}:{lineno}: recording {rec!r}: piped commands are not supported; "
                               "give plain file paths (e.g. run the command once and write the audio)")
    wav = {k: v for k, (v, _) in wav_kv.items()}
    text = {k: v for k, (v, _) in text_kv.items()}
    utt2spk = {k: v for k, (v, _) in spk_kv.items()}
    bad = _bad(policy, out_manifest, bad)
    utts: list[Utterance] = []

    def resolve(p: str) -> Path:
        pp = Path(p)
        return pp if pp.is_absolute() else (d / pp)

    if segments:
        for uid, (seg, lineno) in segments.items():
            where = f"{d / 'segments'}:{lineno}"
            parts = seg.split()
            if len(parts) != 3:
                raise ImportError_(f"{where}: {uid!r}: expected '<utt> <recording> <start> <end>'")
            rec = parts[0]
            start, end = _seconds(parts[1], "start", where), _seconds(parts[2], "end", where)
            if rec not in wav:
                raise ImportError_(f"{where}: {uid!r}: recording {rec!r} is not in wav.scp")
            if uid not in text:
                bad.reject(uid, wav[rec], "no_transcript", "utterance has no line in 'text'")
                continue
            if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
                bad.reject(uid, wav[rec], "bad_segment", f"{where}: start {parts[1]} and end {parts[2]} must be "
                                                         "finite seconds with start >= 0")
                continue
            if end <= start:
                bad.reject(uid, wav[rec], "bad_segment", f"{where}: segment end {end} <= start {start}")
                continue
            u = _make(uid, resolve(wav[rec]), text[uid], utt2spk.get(uid, "unknown"), bad,
                      out_dir=_out_dir(out_manifest), offset=start, duration=round(end - start, 4))
            if u:
                utts.append(u)
    else:
        for uid, p in wav.items():
            if uid not in text:
                bad.reject(uid, p, "no_transcript", "utterance has no line in 'text'")
                continue
            u = _make(uid, resolve(p), text[uid], utt2spk.get(uid, "unknown"), bad, out_dir=_out_dir(out_manifest))
            if u:
                utts.append(u)
    return _finish(utts, out_manifest, bad, f"kaldi {d}")


def import_nemo(manifest: str | Path, out_manifest: str | Path | None = None, *, policy: str = "skip",
        bad: BadInputLog | None = None, untranscribed: bool = False) -> list[Utterance]:
    """Import a NeMo JSONL manifest (paths resolved against its folder; text normalised). With
    ``untranscribed`` every row is written without text (any text it had is dropped: the split is
    declared untranscribed); otherwise a row without text is rejected (``no_transcript``)."""
    src = Path(manifest)
    bad = _bad(policy, out_manifest, bad)
    utts: list[Utterance] = []
    for u in iter_manifest(src):
        audio = u.resolve_audio(src.parent)
        if u.text is None and not untranscribed:
            bad.reject(u.id, str(audio), "no_transcript", "row has no 'text'; declare the split untranscribed "
                                                          "(corpus.untranscribed) if none of it is transcribed")
            continue
        nu = _make(u.id, audio, None if untranscribed else u.text, u.speaker, bad, out_dir=_out_dir(out_manifest),
                   offset=u.offset, duration=u.duration)
        if nu:
            nu.extra.update({k: v for k, v in u.extra.items() if not (untranscribed and k == "raw_text")})
            utts.append(nu)
    return _finish(utts, out_manifest, bad, f"nemo {src}")


def import_commonvoice(tsv: str | Path, out_manifest: str | Path | None = None, *, clips_dir: str | Path | None = None,
                       policy: str = "skip", bad: BadInputLog | None = None) -> list[Utterance]:
    """Import a Common Voice TSV (e.g. ``train.tsv``); audio is looked up in ``clips/`` beside it."""
    tsv = Path(tsv)
    clips = Path(clips_dir) if clips_dir else tsv.parent / "clips"
    bad = _bad(policy, out_manifest, bad)
    utts: list[Utterance] = []
    if not tsv.is_file():
        raise ImportError_(f"{tsv}: Common Voice TSV not found")
    lines = [line for _, line in text_lines(tsv, ImportError_, "Common Voice TSV")]
    reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    missing = {"client_id", "path", "sentence"} - set(reader.fieldnames or [])
    if missing:
        raise ImportError_(f"{tsv}:1: header lacks column(s) {sorted(missing)}")
    for lineno, row in enumerate(reader, 2):
        name = row["path"]
        if not name:
            raise ImportError_(f"{tsv}:{lineno}: empty 'path'")
        uid = Path(name).stem
        u = _make(uid, clips / name, row["sentence"] or "", row["client_id"] or "unknown", bad,
                  out_dir=_out_dir(out_manifest))
        if u:
            utts.append(u)
    return _finish(utts, out_manifest, bad, f"commonvoice {tsv}")


def audio_extensions() -> set[str]:
    """File extensions of the formats this libsndfile reads (``.wav``, ``.flac``, ``.ogg``, ...)."""
    import soundfile as sf

    names = {f.lower() for f in sf.available_formats()} - {"raw"}  # headerless: nothing to read it by
    aliases = {"aiff": ["aif", "aiff", "aifc"], "ogg": ["ogg", "oga", "opus"], "nist": ["sph", "nist"],
               "mpeg": ["mp3"], "wavex": ["wav"], "rf64": ["wav", "rf64"],
               "mat4": ["mat"], "mat5": ["mat"]}
    out: set[str] = set()
    for n in names:
        out.update(f".{e}" for e in aliases.get(n, [n]))
    return out


def import_audio(root: str | Path, out_manifest: str | Path | None = None, *, policy: str = "skip",
                 bad: BadInputLog | None = None) -> list[Utterance]:
    """Import a folder tree of audio files as untranscribed rows: every file with an extension libsndfile
    reads (:func:`audio_extensions`); the id is the path under ``root`` without its extension, the speaker
    the folder holding the file (``unknown`` at the top). Unreadable files are bad input."""
    root = Path(root)
    if not root.is_dir():
        raise ImportError_(f"{root}: not a folder (the audio importer takes a folder tree of audio files)")
    exts = audio_extensions()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise ImportError_(f"{root}: no audio files ({', '.join(sorted(exts))}) under this folder")
    bad = _bad(policy, out_manifest, bad)
    utts: list[Utterance] = []
    for f in progress(files, desc=f"audio {root.name}", unit="file"):
        rel = f.relative_to(root)
        uid = derive_id(str(rel))
        speaker = rel.parent.name if len(rel.parts) > 1 else "unknown"
        u = _make(uid, f, None, speaker, bad, out_dir=_out_dir(out_manifest))
        if u:
            utts.append(u)
    return _finish(utts, out_manifest, bad, f"audio {root}")


def import_lhotse(source: str | Path, out_manifest: str | Path | None = None, *, policy: str = "skip",
                  bad: BadInputLog | None = None, untranscribed: bool = False) -> list[Utterance]:
    """Import lhotse cuts, or recordings with their supervisions (:mod:`speechkd.data.lhotse_io`)."""
    from speechkd.data.lhotse_io import import_lhotse as _import

    return _import(source, out_manifest, policy=policy, bad=bad, untranscribed=untranscribed)


def import_to_manifest(kind: str, source: str | Path, out: str | Path, *, policy: str = "skip",
                       untranscribed: bool = False) -> str:
    """Run one importer into the manifest ``out`` (rejections listed beside it); returns a one-line summary.
    ``untranscribed`` (nemo and lhotse) writes every row without text."""
    if untranscribed and kind not in DECLARED_UNTRANSCRIBED:
        raise ValueError("--untranscribed is for nemo and lhotse manifests (" + (
            "audio is always untranscribed)" if kind == "audio" else "declare the split untranscribed in the "
                                                                     "corpus stage)"))
    bad = BadInputLog(policy, rejected_path(out))
    utts = IMPORTERS[kind](source, out, policy=policy, bad=bad, **({"untranscribed": True} if untranscribed else {}))
    line = f"wrote {len(utts)} utterances ({sum(u.duration for u in utts) / 3600:.3f} h) to {out}"
    if bad.rejected:
        reasons = ", ".join(f"{k}: {v}" for k, v in bad.counts().items())
        line += f"; rejected {len(bad.rejected)} ({reasons}), listed in {bad.out_file}"
    return line


IMPORTERS: dict[str, Callable[..., list[Utterance]]] = {
    "librispeech": import_librispeech,
    "kaldi": import_kaldi,
    "nemo": import_nemo,
    "commonvoice": import_commonvoice,
    "audio": import_audio,
    "lhotse": import_lhotse,
}
# importers whose splits are untranscribed whatever the recipe says
UNTRANSCRIBED_KINDS = ("audio",)
# importers that drop the text of a split declared untranscribed (and otherwise reject rows without text)
DECLARED_UNTRANSCRIBED = ("nemo", "lhotse")

__all__ = ["IMPORTERS", "UNTRANSCRIBED_KINDS", "DECLARED_UNTRANSCRIBED", "rejected_path", "import_librispeech",
           "import_kaldi", "import_nemo", "import_commonvoice", "import_audio", "import_lhotse", "ManifestError"]
