"""Wrappers around the Debian TTS engines and sox. External programs are always called with
argument lists (never a shell string), and text reaching festival's Scheme reader is restricted
to the normalised alphabet ``[a-z' ]``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SAFE_TEXT = re.compile(r"^[a-z' ]+$")

ENGINE_BINARIES = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival"}


class SynthError(RuntimeError):
    pass


@dataclass(frozen=True)
class UttRender:
    """Everything needed to render one utterance. ``pitch`` in semitones, ``rate`` as a speed factor."""

    uid: str
    text: str
    engine: str
    voice: str
    variant: str
    pitch: float
    rate: float
    native_rate: bool
    native_pitch: bool


def check_tools(engines: set[str]) -> None:
    missing = [ENGINE_BINARIES[e] for e in sorted(engines) if shutil.which(ENGINE_BINARIES[e]) is None]
    if shutil.which("sox") is None:
        missing.append("sox")
    if missing:
        raise SynthError(f"missing programs: {', '.join(missing)}; run 'make deps' (apt-get install "
                         "espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox)")


def _run(args: list[str], what: str, *, stdin: str | None = None, timeout: float = 600) -> None:
    try:
        res = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SynthError(f"{what}: timed out after {timeout}s") from None
    if res.returncode != 0:
        raise SynthError(f"{what}: {args[0]} exited with {res.returncode}: {res.stderr.strip()[-500:]}")


def _check_text(r: UttRender) -> None:
    if not _SAFE_TEXT.match(r.text):
        raise SynthError(f"{r.uid}: text has characters outside [a-z' ]")


def render_espeak(r: UttRender, out_wav: Path) -> None:
    _check_text(r)
    voice = f"{r.voice}+{r.variant}" if r.variant and r.variant != "default" else r.voice
    args = ["espeak-ng", "-v", voice, "-s", str(int(round(175 * r.rate))), "-w", str(out_wav)]
    if r.native_pitch:
        args += ["-p", str(int(round(min(99, max(0, 50 + 6 * r.pitch)))))]
    _run(args + [r.text], f"espeak-ng {r.uid}")


def render_flite(r: UttRender, out_wav: Path) -> None:
    _check_text(r)
    args = ["flite", "-voice", r.voice, "-t", r.text, "-o", str(out_wav)]
    if r.native_rate:
        args += ["--setf", f"duration_stretch={1.0 / r.rate:.4f}"]
    _run(args, f"flite {r.uid}")


def render_festival_batch(items: list[tuple[UttRender, Path]]) -> None:
    """Render many utterances of festival voices in one process (each start costs ~0.5 s)."""
    lines = []
    for r, out in items:
        _check_text(r)
        if not re.match(r"^[A-Za-z0-9_]+$", r.voice):
            raise SynthError(f"{r.uid}: bad festival voice name {r.voice!r}")
        lines.append(f"(voice_{r.voice})")
        stretch = 1.0 / r.rate if r.native_rate else 1.0
        lines.append(f"(Parameter.set 'Duration_Stretch {stretch:.4f})")
        path = str(out).replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{r.text}")) "{path}" \'riff)')
    script = "\n".join(lines) + "\n"
    # festival reads the script from stdin; one process per chunk
    _run(["festival", "--pipe"], f"festival batch of {len(items)} ({items[0][0].uid}...)", stdin=script)
    for r, out in items:
        if not out.exists() or out.stat().st_size == 0:
            raise SynthError(f"festival {r.uid}: no audio was written")


def postprocess(r: UttRender, raw_wav: Path, out_path: Path, sample_rate: int) -> None:
    """Resample to ``sample_rate`` mono 16-bit with sox, applying pitch/tempo the engine can't."""
    effects: list[str] = []
    if not r.native_pitch and abs(r.pitch) > 1e-6:
        effects += ["pitch", f"{100 * r.pitch:.1f}"]
    if not r.native_rate and abs(r.rate - 1.0) > 1e-6:
        effects += ["tempo", "-s", f"{r.rate:.4f}"]
    effects += ["rate", "-h", str(sample_rate)]
    args = ["sox", "-D", "-V1", str(raw_wav), "-c", "1", "-b", "16", str(out_path), *effects]
    _run(args, f"sox {r.uid}")
