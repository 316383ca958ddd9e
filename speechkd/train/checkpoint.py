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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from speechkd.config import ConfigError, from_dict
from speechkd.models.lstm_ctc import LSTMCTC, ModelConfig, build_model


class CheckpointError(ValueError):
    pass


def save_weights(model: LSTMCTC, path: str | Path) -> None:
    """Weights as safetensors with the model config in the metadata (atomic)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"model_config": json.dumps(asdict(model.cfg)), "format": "speechkd-lstm-ctc"})
    os.replace(tmp, path)


def read_weights(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint weights not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    if "model_config" not in meta:
        raise CheckpointError(f"{path}: not a speechkd model (no model_config in the safetensors metadata)")
    try:
        cfg = from_dict(ModelConfig, json.loads(meta["model_config"]), where=f"{path}: model_config")
    except (ConfigError, json.JSONDecodeError) as e:
        raise CheckpointError(str(e)) from None
    return cfg, tensors


def load_model(path: str | Path, *, expect: ModelConfig | None = None, device: str | torch.device = "cpu") -> LSTMCTC:
    """Build the model from a weights file's stored config and load the weights.

    With ``expect``, a checkpoint of another architecture is an error naming the file and the
    differing fields."""
    cfg, tensors = read_weights(path)
    if expect is not None and cfg != expect:
        diff = {k: (v, getattr(cfg, k)) for k, v in asdict(expect).items() if getattr(cfg, k) != v}
        raise CheckpointError(f"{path}: checkpoint is another architecture: "
                              + ", ".join(f"{k}: expected {a!r}, file has {b!r}" for k, (a, b) in diff.items()))
    model = build_model(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the stored model config: {str(e)[:300]}") from None
    return model.to(device)


def save_checkpoint(folder: str | Path, model: LSTMCTC, train_state: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write ``folder`` atomically (temp folder + rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_weights(model, tmp / "model.safetensors")
        torch.save(train_state, tmp / "train_state.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
