"""Plan and render the ``synth-en`` corpus.

The plan is a pure function of the spec and the seed: sentence order, split, voice model,
speaker (voice, variant, pitch bin, rate bin) and per-utterance pitch/rate jitter. Rendering
skips every utterance whose audio file already exists and writes each file atomically, so a
killed build resumes where it stopped. Manifests are written last, from the plan and the
audio headers, so the same seed gives byte-identical manifests.

Splits:

* ``train``, ``dev``, ``test`` use the *seen* voice models; dev and test speakers are
  (variant, pitch bin, rate bin) combinations never used in train, on sentences never used in train;
* ``test_unseen_voice`` uses only the voice models reserved as *unseen* (out-of-domain);
* ``untranscribed`` (``untranscribed_hours``, planned after the others, so adding it changes no other
  split) uses the train speakers of the seen voice models, on sentences no other split uses. Its
  manifest has no ``text``: the sentences are kept only as SHA-256 digests of their normalised text
  (``untranscribed.text-sha256``), which the lm stage uses to leave them out of its text.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speechkd.config import ConfigError, check_name, field, from_dict, load_yaml
from speechkd.data.audio import audio_info
from speechkd.data.manifest import Utterance, write_manifest
from speechkd.data.synth import engines
from speechkd.data.synth.engines import SynthError, UttRender
from speechkd.data.synth.text import load_sentences
from speechkd.utils import atomic_write_text, chunked
from speechkd.utils import progress as progress_bar

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test", "test_unseen_voice")
UNTRANSCRIBED = "untranscribed"  # the split without transcripts (untranscribed_hours of audio)
# the source tree (data_manifests/ sits beside the package there); the embedded corpus's spec is versioned in it,
# not installed with the package, so an installed speechkd names its spec explicitly
TOOLKIT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_SPEC = TOOLKIT_ROOT / "data_manifests" / "synth-en.yaml"


@dataclass
class VoiceSpec:
    name: str = field(help="voice model id, e.g. 'flite-slt'")
    engine: str = field(help="espeak | flite | festival")
    voice: str = field(help="the engine's own voice name")
    variants: list[str] = field(default_factory=lambda: ["default"], help="espeak voice variants (+m1, +f3, ...)")
    role: str = field("seen", help="'seen' (train/dev/test) or 'unseen' (test_unseen_voice only)")
    native_rate: bool = field(True, help="engine sets speaking rate (else sox tempo)")
    native_pitch: bool = field(False, help="engine sets pitch (else sox pitch)")


@dataclass
class CorpusSpec:
    name: str = field("synth-en", help="corpus name")
    version: int = field(1, help="spec version; bump when the plan changes")
    seed: int = field(1234, help="seed for every random choice in the plan")
    hours: float = field(4.0, help="planned hours of audio (estimated from text length)")
    untranscribed_hours: float = field(0.0, help="planned hours of the untranscribed split (on top of hours)")
    sample_rate: int = field(16000, help="output sample rate (Hz)")
    fortunes_dir: str = field("/usr/share/games/fortunes", help="Debian 'fortunes' folder")
    fortune_files: list[str] = field(default_factory=list, help="fortune files used as text")
    wordnet_dir: str = field("/usr/share/wordnet", help="Debian 'wordnet-base' folder")
    min_words: int = field(3, help="shortest sentence in words")
    max_words: int = field(20, help="longest sentence in words")
    split_fractions: dict[str, float] = field(default_factory=dict, help="share of the planned hours per split")
    engine_shares: dict[str, float] = field(default_factory=dict, help="share of audio per engine")
    seconds_per_char: dict[str, float] = field(default_factory=dict, help="planning estimate per engine at rate 1")
    pitch_bins: list[float] = field(default_factory=lambda: [-2.0, 0.0, 2.0], help="pitch bin centres (semitones)")
    rate_bins: list[float] = field(default_factory=lambda: [0.85, 1.0, 1.15], help="rate bin centres (speed factor)")
    pitch_jitter: float = field(0.5, help="uniform jitter within a pitch bin (semitones)")
    rate_jitter: float = field(0.04, help="relative uniform jitter within a rate bin")
    heldout_speakers: int = field(1, help="speakers per seen voice model held out for dev, and again for test")
    festival_chunk: int = field(24, help="utterances per festival process")
    voices: list[VoiceSpec] = field(default_factory=list, help="voice models")


@dataclass(frozen=True)
class PlannedUtt:
    split: str
    voice_model: str
    speaker: str
    path: str  # relative to the corpus folder
    render: UttRender


def load_spec(path: str | Path = DEFAULT_SPEC, **overrides: Any) -> CorpusSpec:
    data = load_yaml(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    spec = from_dict(CorpusSpec, data, where=str(path))
    if spec.hours <= 0:
        raise ConfigError(f"{path}: hours (from the spec or --hours) must be > 0, got {spec.hours}")
    if spec.untranscribed_hours < 0:
        raise ConfigError(f"{path}: untranscribed_hours must be >= 0, got {spec.untranscribed_hours}")
    unknown = set(spec.split_fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"{path}: unknown split(s) {sorted(unknown)}; expected {SPLITS}")
    for i, v in enumerate(spec.voices):
        check_name(v.name, f"{path}: voices[{i}].name", "voice name")  # becomes a folder name
        for var in v.variants:
            if "/" in var or "\\" in var or var.startswith("."):
                raise ConfigError(f"{path}: voice {v.name!r}: variant {var!r} cannot be part of a file name")
        if v.engine not in engines.ENGINE_BINARIES:
            raise ValueError(f"{path}: voice {v.name!r}: unknown engine {v.engine!r}")
        if v.role not in ("seen", "unseen"):
            raise ValueError(f"{path}: voice {v.name!r}: role must be 'seen' or 'unseen'")
    return spec


def _speakers(v: VoiceSpec, spec: CorpusSpec) -> list[tuple[str, int, int]]:
    return list(itertools.product(v.variants, range(len(spec.pitch_bins)), range(len(spec.rate_bins))))


def _budgets(voices: list[VoiceSpec], seconds: float, shares: dict[str, float]) -> dict[str, float]:
    by_engine: dict[str, list[VoiceSpec]] = defaultdict(list)
    for v in voices:
        by_engine[v.engine].append(v)
    total_share = sum(shares.get(e, 0.0) for e in by_engine) or 1.0
    out = {}
    for e, vs in by_engine.items():
        for v in vs:
            out[v.name] = seconds * shares.get(e, 0.0) / total_share / len(vs)
    return out


def plan_corpus(spec: CorpusSpec, sentences: list[str]) -> list[PlannedUtt]:
    """Deterministic plan: every utterance with its split, speaker and rendering parameters."""
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(sentences))
    seen = [v for v in spec.voices if v.role == "seen"]
    unseen = [v for v in spec.voices if v.role == "unseen"]

    # speaker-level hold-out: each seen voice model gives `heldout_speakers` to dev and to test
    speakers: dict[tuple[str, str], list[tuple[str, int, int]]] = {}
    for v in seen:
        combos = _speakers(v, spec)
        idx = rng.permutation(len(combos))
        k = spec.heldout_speakers
        if len(combos) < 2 * k + 1:
            raise ValueError(f"voice {v.name!r} has {len(combos)} speakers; need at least {2 * k + 1}")
        speakers[(v.name, "dev")] = [combos[i] for i in idx[:k]]
        speakers[(v.name, "test")] = [combos[i] for i in idx[k : 2 * k]]
        speakers[(v.name, "train")] = [combos[i] for i in idx[2 * k :]]
    for v in unseen:
        speakers[(v.name, "test_unseen_voice")] = _speakers(v, spec)

    for v in seen:
        speakers[(v.name, UNTRANSCRIBED)] = speakers[(v.name, "train")]

    total = spec.hours * 3600.0
    cursor = 0
    plan: list[PlannedUtt] = []
    budgets = [(split, spec.split_fractions.get(split, 0.0) * total) for split in SPLITS]
    budgets.append((UNTRANSCRIBED, spec.untranscribed_hours * 3600.0))
    for split, seconds in budgets:
        pool = unseen if split == "test_unseen_voice" else seen
        if seconds <= 0 or not pool:
            continue
        for v in pool:
            budget = _budgets(pool, seconds, spec.engine_shares)[v.name]
            spk = speakers[(v.name, split)]
            spk_order = [spk[i] for i in rng.permutation(len(spk))]
            spc = spec.seconds_per_char.get(v.engine, 0.07)
            used, n = 0.0, 0
            while used < budget:
                if cursor >= len(order):
                    raise ValueError(f"not enough text for {spec.hours} h: {len(sentences)} sentences used up "
                                     f"at split {split!r}, voice {v.name!r}")
                sid = int(order[cursor])
                cursor += 1
                text = sentences[sid]
                variant, pb, rb = spk_order[n % len(spk_order)]
                n += 1
                pitch = spec.pitch_bins[pb] + rng.uniform(-spec.pitch_jitter, spec.pitch_jitter)
                rate = spec.rate_bins[rb] * (1.0 + rng.uniform(-spec.rate_jitter, spec.rate_jitter))
                spk_id = f"{v.name}-{variant}-p{pb}r{rb}"
                uid = f"{spk_id}-{sid:05d}"
                r = UttRender(uid=uid, text=text, engine=v.engine, voice=v.voice, variant=variant,
                              pitch=round(float(pitch), 3), rate=round(float(rate), 4),
                              native_rate=v.native_rate, native_pitch=v.native_pitch)
                plan.append(PlannedUtt(split, v.name, spk_id, f"audio/{split}/{v.name}/{uid}.flac", r))
                used += len(text) * spc / rate
    return plan


def text_digest(text: str) -> str:
    """SHA-256 of a normalised sentence: how an untranscribed split's sentences are known without their text."""
    import hashlib

    from speechkd.text.normalize import normalize_text

    return hashlib.sha256(normalize_text(text).encode()).hexdigest()


def audio_ok(path: Path) -> bool:
    """A finished audio file: non-empty, with a header libsndfile reads and at least one sample.
    A 0-byte or truncated file (a full disk, a killed sox) is not done and is rendered again."""
    try:
        if path.stat().st_size == 0:
            return False
        sr, frames = audio_info(path)
        return sr > 0 and frames > 0
    except Exception:  # missing, or libsndfile cannot read it
        return False


def _render_one(items: list[PlannedUtt], out_dir: Path, tmp_root: Path, sample_rate: int) -> list[tuple[str, str]]:
    """Render a job (one utterance, or a festival chunk). Returns ``(uid, error)`` failures."""
    failures: list[tuple[str, str]] = []
    work = Path(tempfile.mkdtemp(dir=tmp_root))
    try:
        raws = [(p, work / f"{p.render.uid}.wav") for p in items]
        if items[0].render.engine == "festival":
            try:
                engines.render_festival_batch([(p.render, raw) for p, raw in raws])
            except SynthError as e:
                if len(items) == 1:
                    return [(items[0].render.uid, str(e))]
                # retry one by one, to isolate the utterance festival choked on
                for p in items:
                    failures += _render_one([p], out_dir, tmp_root, sample_rate)
                return failures
        for p, raw in raws:
            try:
                if p.render.engine == "espeak":
                    engines.render_espeak(p.render, raw)
                elif p.render.engine == "flite":
                    engines.render_flite(p.render, raw)
                final = out_dir / p.path
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = work / f"{p.render.uid}.out.flac"
                engines.postprocess(p.render, raw, tmp, sample_rate)
                if not audio_ok(tmp):  # e.g. the disk filled up under sox: never move a bad file into place
                    raise SynthError(f"sox {p.render.uid}: wrote no readable audio ({tmp.stat().st_size if tmp.exists() else 0} "
                                     "bytes; is the disk full?)")
                os.replace(tmp, final)
            except SynthError as e:
                failures.append((p.render.uid, str(e)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return failures


def build_corpus(spec: CorpusSpec, out_dir: str | Path, *, num_workers: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Render the corpus into ``out_dir`` and write one manifest per split.

    Returns the summary that is also written to ``out_dir/corpus.json`` (hours, utterances
    and speakers per split, voices, failures). Resumable: existing audio is never redone.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engines.check_tools({v.engine for v in spec.voices})
    sentences = load_sentences(Path(spec.fortunes_dir), spec.fortune_files, Path(spec.wordnet_dir),
                               min_words=spec.min_words, max_words=spec.max_words)
    plan = plan_corpus(spec, sentences)
    todo = [p for p in plan if not audio_ok(out_dir / p.path)]
    log.info("corpus plan: %d utterances, %d to render (%d already on disk)", len(plan), len(todo),
             len(plan) - len(todo))

    jobs: list[list[PlannedUtt]] = []
    fest: dict[str, list[PlannedUtt]] = defaultdict(list)
    for p in todo:
        (fest[p.voice_model].append(p) if p.render.engine == "festival" else jobs.append([p]))
    for items in fest.values():
        jobs.extend(chunked(items, spec.festival_chunk))

    tmp_root = out_dir / ".tmp"
    shutil.rmtree(tmp_root, ignore_errors=True)  # leftovers of a killed run
    tmp_root.mkdir()
    failures: list[tuple[str, str]] = []
    workers = num_workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as ex, \
            progress_bar(total=len(todo), desc="synthesizing", unit="utt", disable=not progress) as bar:
        futs = {ex.submit(_render_one, j, out_dir, tmp_root, spec.sample_rate): len(j) for j in jobs}
        for fut in as_completed(futs):
            failures += fut.result()
            bar.update(futs[fut])
    shutil.rmtree(tmp_root, ignore_errors=True)

    failed = {uid for uid, _ in failures}
    fail_file = out_dir / "rejected" / "synth_failures.jsonl"
    if failures:
        atomic_write_text(fail_file, "".join(json.dumps({"id": u, "error": e}) + "\n" for u, e in sorted(failures)))
        log.warning("%d utterance(s) failed to synthesize (listed in %s); they are left out of the manifests and "
                    "retried on the next run", len(failures), fail_file)
    elif fail_file.exists():
        fail_file.unlink()

    by_split: dict[str, list[Utterance]] = defaultdict(list)
    for p in plan:
        path = out_dir / p.path
        if p.render.uid in failed or not audio_ok(path):
            continue
        sr, frames = audio_info(path)
        by_split[p.split].append(Utterance(
            id=p.render.uid, audio_filepath=p.path, duration=round(frames / sr, 4),
            text=None if p.split == UNTRANSCRIBED else p.render.text,
            speaker=p.speaker, extra={"engine": p.render.engine, "voice_model": p.voice_model}))
    summary: dict[str, Any] = {"name": spec.name, "version": spec.version, "seed": spec.seed,
                               "planned_hours": spec.hours, "splits": {}, "failures": len(failures),
                               "planned_utterances": len(plan),
                               "untranscribed": [UNTRANSCRIBED] if by_split.get(UNTRANSCRIBED) else []}
    digests = sorted({text_digest(p.render.text) for p in plan if p.split == UNTRANSCRIBED})
    hashes = out_dir / f"{UNTRANSCRIBED}.text-sha256"
    if digests:
        atomic_write_text(hashes, "".join(d + "\n" for d in digests))
    elif hashes.exists():
        hashes.unlink()
    for split in SPLITS + (UNTRANSCRIBED,):
        utts = sorted(by_split.get(split, []), key=lambda u: u.id)
        if not utts:
            continue
        write_manifest(utts, out_dir / f"{split}.jsonl")
        summary["splits"][split] = {
            "utterances": len(utts),
            "hours": round(sum(u.duration for u in utts) / 3600, 4),
            "speakers": len({u.speaker for u in utts}),
            "voice_models": sorted({u.extra["voice_model"] for u in utts}),
        }
    summary["hours"] = round(sum(s["hours"] for s in summary["splits"].values()), 4)
    atomic_write_text(out_dir / "corpus.json", json.dumps(summary, indent=1) + "\n")
    return summary
