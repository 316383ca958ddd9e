"""Weights on disk: safetensors with the model config in the metadata.

These are the plain weight files of training (checkpoints, epoch weights): :func:`load_model` builds the
architecture from the stored config (:func:`build_model`) and loads the weights strictly, so a file
with extra or missing tensors (a KD head, another architecture) is an error naming it. A trained
model that leaves a stage is a model bundle (:mod:`speechkd.models.bundle`), which adds everything
needed to run it on audio. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from speechkd.config import ConfigError, from_dict
from speechkd.models.lstm_ctc import LSTMCTC, ModelConfig, build_model
from speechkd.utils import default_mode

FORMAT = "speechkd-lstm-ctc"


class CheckpointError(ValueError):
    """A weights file or checkpoint that cannot be read or written; the message names the file."""


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """Atomic safetensors write (temp file + rename); any failure (disk full, ...) is a
    :class:`CheckpointError` naming ``path``, and leaves no temp file behind."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.chmod(tmp, default_mode())  # safetensors creates 0600; give it what open() would under the umask
        os.replace(tmp, path)
    except Exception as e:  # safetensors reports OS errors (ENOSPC, ...) as its own error type
        try:
            tmp.unlink()
        except OSError:
            pass
        raise CheckpointError(f"{path}: cannot write weights: {str(e)[:300]}") from None


def save_weights(model: LSTMCTC, path: str | Path, meta: dict[str, str] | None = None) -> None:
    """Weights as safetensors with the model config (and ``meta``) in the metadata (atomic)."""
    save_tensors(model.state_dict(), path, {"model_config": json.dumps(asdict(model.cfg)), "format": FORMAT,
                                            **(meta or {})})


def read_tensors(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a safetensors file; errors name the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    return meta, tensors


def parse_model_config(meta: dict[str, str], path: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` stored in a weights file's metadata; errors name the file."""
    if "model_config" not in meta:
        raise CheckpointError(f"{path}: not a speechkd model (no model_config in the safetensors metadata)")
    try:
        raw = json.loads(meta["model_config"])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: the model_config metadata is not JSON") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: the model_config metadata is not a JSON object")
    try:
        return from_dict(ModelConfig, raw, where=f"{path}: model_config")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def read_weights(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """``(model config, tensors)`` of a plain weights file (checkpoints, epoch weights)."""
    meta, tensors = read_tensors(path)
    return parse_model_config(meta, path), tensors


def check_shapes(cfg: ModelConfig, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """The file's tensors have exactly the names and shapes the stored config builds; checked on torch's
    ``meta`` device (no memory), before anything is allocated."""
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    if missing or extra:
        parts = ([f"missing {len(missing)} tensor(s) (e.g. {missing[0]})"] if missing else []) + \
                ([f"{len(extra)} unexpected (e.g. {extra[0]})"] if extra else [])
        raise CheckpointError(f"{path}: the tensors do not fit the stored model_config "
                              f"(layers={cfg.layers}, hidden={cfg.hidden}): {'; '.join(parts)}")
    for k in sorted(want):
        if want[k] != got[k]:
            raise CheckpointError(f"{path}: tensor {k} has shape {list(got[k])} but the stored model_config "
                                  f"(layers={cfg.layers}, hidden={cfg.hidden}) needs {list(want[k])}")


def model_from(cfg: ModelConfig, tensors: dict[str, torch.Tensor], path: str | Path, *,
               expect: ModelConfig | None = None) -> LSTMCTC:
    """Build the model of ``cfg`` and load ``tensors`` into it strictly (shapes checked first, on the meta
    device). With ``expect``, another architecture is an error naming ``path`` and the differing fields."""
    if expect is not None and cfg != expect:
        diff = {k: (v, getattr(cfg, k)) for k, v in asdict(expect).items() if getattr(cfg, k) != v}
        raise CheckpointError(f"{path}: checkpoint is another architecture: "
                              + ", ".join(f"{k}: expected {a!r}, file has {b!r}" for k, (a, b) in diff.items()))
    check_shapes(cfg, tensors, path)
    model = build_model(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the stored model config: {str(e)[:300]}") from None
    return model


def load_model(path: str | Path, *, expect: ModelConfig | None = None, device: str | torch.device = "cpu") -> LSTMCTC:
    """Build the model from a plain weights file's stored config and load the weights (see :func:`model_from`)."""
    cfg, tensors = read_weights(path)
    return model_from(cfg, tensors, path, expect=expect).to(device)


def check_vocabulary(model: LSTMCTC, tokenizer, where: str | Path) -> None:
    """A model scores only with the tokenizer it was trained with: same size (the output layer)."""
    from speechkd.text.tokenizer import tokenizer_fingerprint

    if model.cfg.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"{where}: the model outputs {model.cfg.vocab_size} tokens but the tokenizer "
            f"({tokenizer.kind}) has {tokenizer.vocab_size}; use the tokenizer the model was trained with "
            "(the one its model bundle carries)")
    fp = tokenizer_fingerprint(tokenizer)
    if model.cfg.tokenizer and model.cfg.tokenizer != fp:
        raise CheckpointError(
            f"{where}: the model was trained with another tokenizer (fingerprint {model.cfg.tokenizer}) than the "
            f"one given ({tokenizer.kind}, {fp}), though both have {tokenizer.vocab_size} tokens; use the tokenizer "
            "the model bundle carries")
