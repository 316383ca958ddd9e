"""Checkpoints: safetensors weights + a tensors-and-plain-data training state.

A checkpoint is a folder ``ckpt-<step>/`` holding ``model.safetensors`` (weights and the
model config as metadata), ``train_state.pt`` (optimizer, scheduler, sampler position, RNG
states, step, epoch, metrics; loaded with ``torch.load(weights_only=True)``, never plain
pickle) and ``config.json``. It is written into a temp folder and renamed, so a folder that
exists is complete. Errors name the file: another architecture, a corrupt or truncated file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from speechkd.models.io import CheckpointError, load_model, read_tensors, read_weights, save_tensors, save_weights
from speechkd.models.lstm_ctc import LSTMCTC, ModelConfig
from speechkd.utils import default_mode

__all__ = ["CheckpointError", "save_checkpoint", "load_train_state", "list_checkpoints", "prune", "average_weights",
           "save_weights", "read_weights", "load_model", "save_tensors", "read_tensors"]


def save_checkpoint(folder: str | Path, model: LSTMCTC, train_state: dict[str, Any], config: dict[str, Any],
                    heads: torch.nn.Module | None = None) -> Path:
    """Write ``folder`` atomically (temp folder + rename). ``heads``: modules trained beside the model
    (KD projection heads), saved apart in ``heads.safetensors`` so they never enter the model's weights.
    A failure (disk full, ...) is a :class:`CheckpointError` naming the folder; the last complete
    checkpoint stays."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        os.chmod(tmp, default_mode(directory=True))
        save_weights(model, tmp / "model.safetensors")
        if heads is not None:
            save_tensors(heads.state_dict(), tmp / "heads.safetensors", {"format": "speechkd-kd-heads"})
        torch.save(train_state, tmp / "train_state.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, CheckpointError):
            raise CheckpointError(f"{folder}: cannot write checkpoint: {e}") from None
        if isinstance(e, (OSError, RuntimeError)):  # torch.save reports a full disk as RuntimeError
            raise CheckpointError(f"{folder}: cannot write checkpoint: {str(e)[:300]}") from None
        raise
    return folder


def load_train_state(folder: str | Path) -> dict[str, Any]:
    p = Path(folder) / "train_state.pt"
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{p}: missing") from None
    except Exception as e:
        raise CheckpointError(f"{p}: corrupt or truncated training state ({str(e)[:200]})") from None


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("ckpt-"))


def prune(folder: str | Path, keep: int) -> None:
    for p in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


def average_weights(paths: list[Path]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Element-wise mean of several weight files of one architecture (float tensors only)."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    cfg0, acc = read_weights(paths[0])
    acc = {k: v.double() if v.is_floating_point() else v for k, v in acc.items()}
    for p in paths[1:]:
        cfg, t = read_weights(p)
        if cfg != cfg0:
            raise CheckpointError(f"{p}: cannot average checkpoints of different architectures")
        for k, v in t.items():
            if v.is_floating_point():
                acc[k] += v.double()
    return cfg0, {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in acc.items()}
