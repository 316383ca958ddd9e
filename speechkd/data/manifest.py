"""JSONL manifests, NeMo-compatible.

One JSON object per line with ``audio_filepath``, ``duration`` (seconds) and ``text``, plus
``id`` and ``speaker``. Optional ``offset`` (seconds) makes the row a *segment*: ``duration``
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


@dataclass
class Utterance:
    """One manifest row. ``duration`` and ``offset`` are in seconds; ``offset=None`` is the whole file."""

    id: str
    audio_filepath: str
    duration: float
    text: str
    speaker: str = "unknown"
    offset: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "audio_filepath": self.audio_filepath,
                             "duration": self.duration, "text": self.text, "speaker": self.speaker}
        if self.offset is not None:
            d["offset"] = self.offset
        d.update(self.extra)
        return d

    def resolve_audio(self, base: Path | None) -> Path:
        p = Path(self.audio_filepath)
        return p if p.is_absolute() or base is None else base / p


def _parse_line(obj: Any, where: str) -> Utterance:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("audio_filepath", "duration", "text"):
        if key not in obj:
            raise ManifestError(f"{where}: missing required field {key!r}")
    path = obj["audio_filepath"]
    if not isinstance(path, str) or not path:
        raise ManifestError(f"{where}: field 'audio_filepath' must be a non-empty string, got {path!r}")
    dur = obj["duration"]
    if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not math.isfinite(dur) or dur < 0:
        raise ManifestError(f"{where}: field 'duration' must be a finite number >= 0 (seconds), got {dur!r}")
    text = obj["text"]
    if not isinstance(text, str):
        raise ManifestError(f"{where}: field 'text' must be a string, got {text!r}")
    off = obj.get("offset")
    if off is not None and (isinstance(off, bool) or not isinstance(off, (int, float)) or not math.isfinite(off)
                            or off < 0):
        raise ManifestError(f"{where}: field 'offset' must be a finite number >= 0 (seconds), got {off!r}")
    uid = obj.get("id")
    if uid is None:
        uid = Path(path).stem
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
        yield _parse_line(obj, where)


def text_lines(path: Path, error: type[Exception], what: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file. A file that is not UTF-8 (UTF-16, Latin-1, ...)
    is an ``error`` naming ``file:line`` and what to do, not a bare ``UnicodeDecodeError``."""
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise error(f"{path}: cannot open {what}: {e.strerror}") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if (lineno == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw:
                raise error(f"{path}:1: the {what} is UTF-16 encoded; convert it to UTF-8 "
                            f"(e.g. iconv -f UTF-16 -t UTF-8)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{path}:{lineno}: the {what} is not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                            f"{e.start + 1}); convert it to UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            yield lineno, line


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


def relative_to_manifest(audio: Path, manifest_dir: Path) -> str:
    """Path of ``audio`` relative to ``manifest_dir`` where possible, else absolute."""
    try:
        return os.path.relpath(Path(audio).resolve(), Path(manifest_dir).resolve())
    except ValueError:
        return str(Path(audio).resolve())


def validate_manifest(path: str | Path, *, check_audio: bool = True) -> list[str]:
    """Return a list of problems (empty when the manifest is fine).

    Parsing errors stop at the first bad line (its ``file:line`` is reported); otherwise
    duplicate ids and missing audio files are listed, one problem per entry.
    """
    path = Path(path)
    problems: list[str] = []
    try:
        utts = list(iter_manifest(path))
    except ManifestError as e:
        return [str(e)]
    seen: dict[str, int] = {}
    for lineno, u in enumerate(utts, 1):
        if u.id in seen:
            problems.append(f"{path}: entry {lineno}: duplicate id {u.id!r} (first at entry {seen[u.id]})")
        else:
            seen[u.id] = lineno
        if check_audio and not u.resolve_audio(path.parent).exists():
            problems.append(f"{path}: entry {lineno}: audio_filepath {u.audio_filepath!r} does not exist")
    return problems
