"""Train-time waveform transforms for on-the-fly features: speed perturbation and additive noise (torchaudio).

Each utterance's draws come from a NumPy generator seeded by the batch's seed (a pure function of the run's
seed, the epoch and the batch's place in the epoch's global order) and the utterance's place in the batch,
so a resumed run, a run with DataLoader workers and a run on another world size draw the same.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkd.config import field, require


@dataclass
class WaveAugment:
    speed: list[float] = field(default_factory=list, help="speed perturbation: one factor drawn per utterance from "
                                                          "this list (e.g. [0.9, 1.0, 1.1], Kaldi-style: pitch and "
                                                          "tempo change); needs on-the-fly features")
    noise: str = field("", help="folder of noise recordings (any format libsndfile reads, searched recursively) "
                                "mixed into training audio; needs on-the-fly features. A changed, added or "
                                "removed recording reruns the stage")
    noise_prob: float = field(0.5, help="share of utterances that get noise")
    snr_db: list[float] = field(default_factory=lambda: [10.0, 20.0], help="[low, high]: the signal-to-noise ratio "
                                                                           "(dB) is drawn uniformly from it")

    def __post_init__(self):
        require(all(0.5 <= f <= 2.0 for f in self.speed), "speed", f"factors must lie in [0.5, 2], got {self.speed}")
        require(0.0 <= self.noise_prob <= 1.0, "noise_prob", f"must be in [0, 1], got {self.noise_prob}")
        require(len(self.snr_db) == 2 and self.snr_db[0] <= self.snr_db[1], "snr_db",
                f"must be [low, high] with low <= high, got {self.snr_db}")

    @property
    def active(self) -> bool:
        return any(f != 1.0 for f in self.speed) or bool(self.noise)

    @property
    def changes_frames(self) -> bool:
        return any(f != 1.0 for f in self.speed)


class Augmenter:
    """Applies a :class:`WaveAugment`. The noise folder's recordings are listed (headers checked) when it is
    built, and each is decoded on first use in the process that uses it (the last 64 kept). A relative noise
    folder is taken from the working directory."""

    def __init__(self, cfg: WaveAugment, sample_rate: int):
        self.cfg, self.sr = cfg, sample_rate
        self.noise_files: list[Path] = _noise_files(Path(cfg.noise)) if cfg.noise else []
        self._loaded: dict[int, np.ndarray] = {}  # noise recordings decoded so far

    def noise(self, k: int) -> np.ndarray:
        """Noise recording ``k`` at the sample rate, decoded on first use (the last 64 are kept)."""
        from speechkd.data.audio import AudioError, load_audio

        if k not in self._loaded:
            if len(self._loaded) >= 64:
                self._loaded.pop(next(iter(self._loaded)))
            path = self.noise_files[k]
            try:
                self._loaded[k] = load_audio(path, target_sr=self.sr)
            except AudioError as e:
                raise FileNotFoundError(f"augment.noise: {path}: {e.detail}") from None
        return self._loaded[k]

    def speed_factor(self, rng: np.random.Generator) -> float:
        return float(self.cfg.speed[rng.integers(len(self.cfg.speed))]) if self.cfg.speed else 1.0

    def __call__(self, wav: np.ndarray, rng: np.random.Generator, factor: float | None = None) -> np.ndarray:
        """``wav`` (samples,) float32 -> the perturbed waveform. ``factor`` overrides the drawn speed (the caller
        keeps 1.0 where a faster utterance would be too short for CTC); the draws are made either way."""
        import torch
        import torchaudio.functional as AF

        drawn = self.speed_factor(rng)
        factor = drawn if factor is None else factor
        add = bool(self.noise_files) and rng.random() < self.cfg.noise_prob
        snr = rng.uniform(*self.cfg.snr_db)
        pick, start = rng.random(), rng.random()
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        if factor != 1.0:
            with one_thread():  # the resampler's result depends on the thread count on some CPUs (AVX2)
                x = AF.speed(x.unsqueeze(0), self.sr, factor)[0][0]
        if add:
            n = self.noise(int(pick * len(self.noise_files)) % len(self.noise_files))
            reps = -(-x.numel() // n.size) + 1
            tiled = np.tile(n, reps)
            off = int(start * (tiled.size - x.numel()))
            noise = torch.from_numpy(np.ascontiguousarray(tiled[off: off + x.numel()]))
            if float(noise.abs().max()) > 0 and float(x.abs().max()) > 0:
                x = AF.add_noise(x.unsqueeze(0), noise.unsqueeze(0), torch.tensor([snr], dtype=torch.float32))[0]
                x = x.clamp(-1.0, 1.0)
        return x.numpy()


@contextlib.contextmanager
def one_thread():
    """torch on one intra-op thread inside the block: a DataLoader worker builds batches on one thread, so the
    training process does the same where a result depends on the thread count (speed perturbation's resampler,
    by up to 4e-5 on a 2-core AMD EPYC with AVX2 only); batches are then the same with or without workers."""
    import torch

    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def noise_fingerprint(folder: str) -> str | None:
    """What a training stage's fingerprint takes of its noise folder: each recording's path under it, size, and
    the first and last 64 KiB of its bytes, so that adding, removing, renaming or rewriting a recording reruns the
    stage (without reading a large noise corpus whole on every run). None without a folder."""
    if not folder:
        return None
    root = Path(folder)
    h = hashlib.sha256()
    for p in _noise_files(root):
        size = p.stat().st_size
        h.update(f"{p.relative_to(root).as_posix()}\0{size}\0".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 16))
            if size > 1 << 17:
                f.seek(size - (1 << 16))
                h.update(f.read())
    return h.hexdigest()


def _noise_files(folder: Path) -> list[Path]:
    """The recordings under ``folder`` whose header libsndfile reads (others, such as READMEs, are skipped),
    sorted; an error if there is none. Nothing is decoded here."""
    import soundfile as sf

    from speechkd.data.importers import find_files

    if not folder.is_dir():
        raise FileNotFoundError(f"augment.noise: {folder} is not a folder of noise recordings")
    out = []
    for p in find_files(folder, ""):
        try:
            if sf.info(str(p)).frames > 0:
                out.append(p)
        except (sf.LibsndfileError, RuntimeError, ValueError):
            continue
    if not out:
        raise FileNotFoundError(f"augment.noise: {folder} holds no recording libsndfile can read")
    return out
