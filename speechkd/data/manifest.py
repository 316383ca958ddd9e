"""JSONL manifests, NeMo-compatible.

One JSON object per line with ``audio_filepath``, ``duration`` (seconds) and ``text``, plus
``id`` and ``speaker``. A row without ``text`` is *untranscribed* (:attr:`Utterance.text` is ``None``):
audio that only distillation can use (the teacher labels it); a split of such rows is declared
untranscribed by the corpus stage, and scoring or CTC training on it is refused. Optional ``offset``
(seconds) makes the row a *segment*: ``duration``
seconds from ``offset`` of a longer file (Kaldi ``segments``, NeMo offsets), ``offset: 0`` included.
A row without ``offset`` is the whole file. Any other keys are kept in :attr:`Utterance.extra` and written back,
so a manifest round-trips unchanged. Relative ``audio_filepath`` values resolve against the
manifest's folder.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from speechkd.utils import atomic_write_text

CORE_FIELDS = ("id", "audio_filepath", "duration", "text", "speaker", "offset")


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message names ``file:line`` and the field."""


def feature_frames(u) -> int:
    """Feature frames of a featurized row: its ``feats`` reference's, or an on-the-fly row's ``fbank_frames``."""
    return int(u.extra["feats"]["frames"]) if "feats" in u.extra else int(u.extra["fbank_frames"])


@dataclass
class Utterance:
    """One manifest row. ``duration`` and ``offset`` are in seconds; ``offset=None`` is the whole file;
    ``text=None`` is an untranscribed row."""

    id: str
    audio_filepath: str
    duration: float
    text: str | None
    speaker: str = "unknown"
    offset: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "audio_filepath": self.audio_filepath, "duration": self.duration}
        if self.text is not None:
            d["text"] = self.text
        d["speaker"] = self.speaker
        if self.offset is not None:
            d["offset"] = self.offset
        d.update(self.extra)
        return d

    def resolve_audio(self, base: Path | None) -> Path:
        p = Path(self.audio_filepath)
        return p if p.is_absolute() or base is None else base / p


def derive_id(audio_filepath: str, base: Path | None = None) -> str:
    """An id for a row without one: the audio path relative to the manifest's folder, without its
    extension (``a/0001.wav`` and ``b/0001.wav`` give ``a/0001`` and ``b/0001``, so they cannot collide)."""
    p = Path(audio_filepath)
    if p.is_absolute():
        try:
            p = p.relative_to(base.resolve()) if base is not None else Path(*p.parts[1:])
        except ValueError:
            p = Path(*p.parts[1:])
    parts = [x for x in p.parts if x not in ("..", ".", "/")]
    if parts:
        parts[-1] = Path(parts[-1]).stem or parts[-1]
    uid = "/".join(parts) or "root"
    return "_".join(uid.split())  # ids hold no whitespace


def _parse_line(obj: Any, where: str, base: Path | None = None) -> Utterance:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("audio_filepath", "duration"):
        if key not in obj:
            raise ManifestError(f"{where}: missing required field {key!r}")
    path = obj["audio_filepath"]
    if not isinstance(path, str) or not path:
        raise ManifestError(f"{where}: field 'audio_filepath' must be a non-empty string, got {path!r}")
    dur = obj["duration"]
    if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not math.isfinite(dur) or dur < 0:
        raise ManifestError(f"{where}: field 'duration' must be a finite number >= 0 (seconds), got {dur!r}")
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise ManifestError(f"{where}: field 'text' must be a string (or absent: an untranscribed row), got "
                            f"{type(text).__name__}")
    off = obj.get("offset")
    if off is not None and (isinstance(off, bool) or not isinstance(off, (int, float)) or not math.isfinite(off)
                            or off < 0):
        raise ManifestError(f"{where}: field 'offset' must be a finite number >= 0 (seconds), got {off!r}")
    uid = obj.get("id")
    if uid is None:
        uid = derive_id(path, base)
    if not isinstance(uid, str) or not uid or any(c.isspace() for c in uid):
        raise ManifestError(f"{where}: field 'id' must be a non-empty string without spaces, got {uid!r}")
    spk = obj.get("speaker", "unknown")
    if not isinstance(spk, (str, int)):
        raise ManifestError(f"{where}: field 'speaker' must be a string, got {spk!r}")
    extra = {k: v for k, v in obj.items() if k not in CORE_FIELDS}
    return Utterance(id=uid, audio_filepath=path, duration=float(dur), text=text, speaker=str(spk),
                     offset=None if off is None else float(off), extra=extra)


def iter_manifest(path: str | Path) -> Iterator[Utterance]:
    """Yield utterances from a JSONL manifest; malformed lines raise :class:`ManifestError`."""
    path = Path(path)
    for lineno, line in text_lines(path, ManifestError, "manifest"):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        yield _parse_line(obj, where, path.parent)


MAX_LINE_BYTES = 1 << 20  # a manifest row or transcript line is far shorter; /dev/zero has no line end


def text_lines(path: Path, error: type[Exception], what: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file. A file that is not UTF-8 (UTF-16, Latin-1, ...)
    is an ``error`` naming ``file:line`` and what to do, not a bare ``UnicodeDecodeError``; so are a
    binary file (audio given as a manifest), a folder or device, and a line over ``MAX_LINE_BYTES``."""
    import stat

    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{path}: cannot open {what}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: the {what} is not a regular file (a folder, FIFO or device)")
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise error(f"{path}: cannot open {what}: {e.strerror}") from None
    with fh:
        lineno = 0
        while True:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise error(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES} bytes; is this a {what}?")
            if lineno == 1 and (raw[:4] in (b"RIFF", b"fLaC", b"OggS") or raw[:3] == b"ID3"):
                raise error(f"{path}: this is an audio file, not a {what}")
            if (lineno == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff")) or (b"\x00" in raw and _utf16_like(raw)):
                raise error(f"{path}:1: the {what} is UTF-16 encoded; convert it to UTF-8 "
                            f"(e.g. iconv -f UTF-16 -t UTF-8)")
            if b"\x00" in raw:
                raise error(f"{path}:{lineno}: the {what} holds NUL bytes: a binary file, not UTF-8 text")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{path}:{lineno}: the {what} is not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                            f"{e.start + 1}); convert it to UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            yield lineno, line


def _utf16_like(raw: bytes) -> bool:
    """Text whose every other byte is NUL (UTF-16 without a byte-order mark)."""
    head = raw[:64]
    return len(head) >= 4 and (head[1::2].count(0) >= len(head) // 2 - 1 or head[0::2].count(0) >= len(head) // 2 - 1)


def read_manifest(path: str | Path, *, check_unique: bool = True) -> list[Utterance]:
    """Read a whole manifest. With ``check_unique``, a repeated id is an error naming both lines."""
    utts = list(iter_manifest(path))
    if check_unique:
        seen: dict[str, int] = {}
        for i, u in enumerate(utts):
            if u.id in seen:
                raise ManifestError(f"{path}: duplicate id {u.id!r} (entries {seen[u.id] + 1} and {i + 1})")
            seen[u.id] = i
    return utts


def dumps_manifest(utts: Iterable[Utterance]) -> str:
    return "".join(json.dumps(u.to_json(), ensure_ascii=False) + "\n" for u in utts)


def write_manifest(utts: Iterable[Utterance], path: str | Path) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves half a manifest."""
    path = Path(path)
    atomic_write_text(path, dumps_manifest(utts))
    return path


def relative_to_manifest(audio: Path, manifest_dir: Path, max_up: int = 1) -> str:
    """Path of ``audio`` relative to ``manifest_dir`` when the audio lies inside it or at most ``max_up``
    folders above it (a sibling stage folder of one experiment: the experiment moves as a whole), else
    absolute, so a manifest never holds ``../../../../usr/share/...`` chains that break when it moves."""
    a = Path(audio).resolve()
    try:
        rel = os.path.relpath(a, Path(manifest_dir).resolve())
    except ValueError:
        return str(a)
    ups = 0
    for part in Path(rel).parts:
        if part != "..":
            break
        ups += 1
    return rel if ups <= max_up else str(a)


MAX_DURATION = 3600.0  # seconds; a longer row is a mistake (or needs segmenting) for CTC training


def validate_manifest(path: str | Path, *, check_audio: bool = True) -> list[str]:
    """Return a list of problems (empty when the manifest is fine).

    Parsing errors stop at the first bad line (its ``file:line`` is reported); otherwise
    duplicate ids, empty transcripts (after normalisation), durations of 0 or over an hour, and
    audio paths that are missing or not regular files are listed, one problem per entry.
    """
    from speechkd.text.normalize import normalize_text

    path = Path(path)
    problems: list[str] = []
    try:
        utts = list(iter_manifest(path))
    except ManifestError as e:
        return [str(e)]
    if not utts:
        return [f"{path}: the manifest has no rows"]
    seen: dict[str, int] = {}
    for lineno, u in enumerate(utts, 1):
        where = f"{path}: entry {lineno} ({u.id})"
        if u.id in seen:
            problems.append(f"{path}: entry {lineno}: duplicate id {u.id!r} (first at entry {seen[u.id]})")
        else:
            seen[u.id] = lineno
        if u.text is None:
            pass  # an untranscribed row: audio for distillation only
        elif not normalize_text(u.text):
            problems.append(f"{where}: empty transcript (nothing left after normalisation)")
        if u.duration <= 0:
            problems.append(f"{where}: duration {u.duration:g} s; must be > 0")
        elif u.duration > MAX_DURATION:
            problems.append(f"{where}: duration {u.duration:g} s is over {MAX_DURATION:g} s; segment it")
        if check_audio:
            audio = u.resolve_audio(path.parent)
            if not audio.exists():
                problems.append(f"{where}: audio_filepath {u.audio_filepath!r} does not exist")
            elif not audio.is_file():
                problems.append(f"{where}: audio_filepath {u.audio_filepath!r} is not a regular file")
    return problems
