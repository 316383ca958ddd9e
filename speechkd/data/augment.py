"""Train-time waveform transforms for on-the-fly features: speed perturbation and additive noise (torchaudio).

Each utterance's draws come from a NumPy generator seeded by the batch's seed (a pure function of the run's
seed, the epoch and the batch's place in the epoch's global order) and the utterance's place in the batch,
so a resumed run, a run with DataLoader workers and a run on another world size draw the same.
"""

from __future__ import annotations

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
                                "mixed into training audio; needs on-the-fly features")
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
    """Applies a :class:`WaveAugment` (noise recordings loaded once per process, on first use)."""

    def __init__(self, cfg: WaveAugment, sample_rate: int, base: Path | None = None):
        self.cfg, self.sr = cfg, sample_rate
        self.noise_dir = (Path(base) / cfg.noise if base and not Path(cfg.noise).is_absolute() else Path(cfg.noise)
                          ) if cfg.noise else None
        self._noises: list[np.ndarray] | None = None
        if self.noise_dir is not None and not self.noise_dir.is_dir():
            raise FileNotFoundError(f"augment.noise: {self.noise_dir} is not a folder of noise recordings")

    def noises(self) -> list[np.ndarray]:
        if self._noises is None:
            from speechkd.data.audio import AudioError, load_audio
            from speechkd.data.importers import find_files

            out = []
            for p in find_files(self.noise_dir, ""):
                try:
                    w = load_audio(p, target_sr=self.sr)
                except AudioError:
                    continue  # not audio (or unreadable): a noise folder may hold READMEs and lists
                if np.any(w):
                    out.append(w)
            if not out:
                raise FileNotFoundError(f"augment.noise: {self.noise_dir} holds no readable, non-silent recording")
            self._noises = out
        return self._noises

    def speed_factor(self, rng: np.random.Generator) -> float:
        return float(self.cfg.speed[rng.integers(len(self.cfg.speed))]) if self.cfg.speed else 1.0

    def __call__(self, wav: np.ndarray, rng: np.random.Generator, factor: float | None = None) -> np.ndarray:
        """``wav`` (samples,) float32 -> the perturbed waveform. ``factor`` overrides the drawn speed (the caller
        keeps 1.0 where a faster utterance would be too short for CTC); the draws are made either way."""
        import torch
        import torchaudio.functional as AF

        drawn = self.speed_factor(rng)
        factor = drawn if factor is None else factor
        add = bool(self.noise_dir) and rng.random() < self.cfg.noise_prob
        snr = rng.uniform(*self.cfg.snr_db)
        pick, start = rng.random(), rng.random()
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        if factor != 1.0:
            x = AF.speed(x.unsqueeze(0), self.sr, factor)[0][0]
        if add:
            noises = self.noises()
            n = noises[int(pick * len(noises)) % len(noises)]
            reps = -(-x.numel() // n.size) + 1
            tiled = np.tile(n, reps)
            off = int(start * (tiled.size - x.numel()))
            noise = torch.from_numpy(np.ascontiguousarray(tiled[off: off + x.numel()]))
            if float(noise.abs().max()) > 0 and float(x.abs().max()) > 0:
                x = AF.add_noise(x.unsqueeze(0), noise.unsqueeze(0), torch.tensor([snr], dtype=torch.float32))[0]
                x = x.clamp(-1.0, 1.0)
        return x.numpy()
