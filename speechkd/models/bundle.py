"""A model bundle: one safetensors file that holds everything needed to run a model on audio.

A trained model is one file (``model.safetensors``, ``best.safetensors``). Its tensors are the
weights, the global CMVN statistics (``cmvn_mean``/``cmvn_std``, applied inside the model) and, for a
sentencepiece tokenizer, the serialized sentencepiece model (``tokenizer.spm_model``, uint8). Its
metadata (string values) holds:

========================  ===================================================================
``format``                ``speechkd-model-bundle-v1``
``model_config``          JSON of :class:`~speechkd.models.lstm_ctc.ModelConfig` (stack, frame shift, ...)
``fbank``                 JSON of every :class:`~speechkd.features.fbank.FbankOptions` field
``tokenizer``             JSON: ``{"kind": "char", "symbols": [...]}`` or ``{"kind": "sentencepiece"}``
``delay_frames``          output frames the model emits late (its distillation delay; 0 for CTC)
``kd``                    JSON of the distillation loss it was trained with (``null``: plain CTC)
``provenance``            JSON: recipe, stage, stage type, fingerprint (no absolute paths)
``quantization``          how its weights were quantized (QAT), or empty
========================  ===================================================================

It is written by :func:`save_bundle` and read by :func:`load_bundle`, the one function train,
distill, qat, decode, ``eval``, export, latency and the report use to learn how to run a model, so a
model file copied alone to another machine decodes, exports and evaluates the same. A file without
this metadata (from a speechkd before bundles) is refused with a message naming the command that
upgrades it (:func:`upgrade_legacy`, ``speechkd upgrade-model``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechkd.config import ConfigError, from_dict
from speechkd.features.fbank import FbankOptions
from speechkd.models.io import CheckpointError, check_vocabulary, model_from, parse_model_config, read_tensors, \
    save_tensors
from speechkd.models.lstm_ctc import LSTMCTC, ModelConfig
from speechkd.text.tokenizer import Tokenizer, TokenizerError, describe_tokenizer, tokenizer_from

BUNDLE_FORMAT = "speechkd-model-bundle-v1"
SPM_TENSOR = "tokenizer.spm_model"
# what a bundle must carry besides the weights (named in the refusal when one is missing)
REQUIRED = ("model_config", "fbank", "tokenizer")
UNSAVED = "model bundle"  # how check() names a bundle not read from a file


class BundleError(CheckpointError):
    """A model file that is not a usable bundle; the message names the file and what is missing."""


@dataclass
class ModelBundle:
    """A model and everything needed to run it on audio (see the module docstring)."""

    model: LSTMCTC
    tokenizer: Tokenizer
    fbank: FbankOptions
    delay_frames: int = 0
    kd: dict[str, Any] | None = None
    provenance: dict[str, str] = field(default_factory=dict)
    quantization: str = ""

    def __post_init__(self):
        self.check(UNSAVED)

    def check(self, where: str | Path) -> None:
        """The parts fit each other: vocabulary, feature dimension and frame shift."""
        check_vocabulary(self.model, self.tokenizer, where)
        cfg = self.model.cfg
        if cfg.input_dim != self.fbank.num_mel_bins:
            raise BundleError(f"{where}: the model reads {cfg.input_dim}-dim features but the fbank options give "
                              f"{self.fbank.num_mel_bins} mel bins")
        if abs(cfg.frame_shift_ms - self.fbank.frame_shift_ms) > 1e-9:
            raise BundleError(f"{where}: the model config says frame_shift_ms={cfg.frame_shift_ms} but the fbank "
                              f"options say {self.fbank.frame_shift_ms}")
        if not isinstance(self.delay_frames, int) or not 0 <= self.delay_frames <= 1000:
            raise BundleError(f"{where}: delay_frames must be an integer in [0, 1000], got {self.delay_frames!r}")

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    @property
    def frame_ms(self) -> float:
        """Duration of one output frame (ms)."""
        return self.model.cfg.frame_ms

    @property
    def cmvn(self) -> tuple[np.ndarray, np.ndarray]:
        """The global CMVN ``(mean, std)`` the model applies, ``(feat_dim,)`` each."""
        return self.model.cmvn_mean.detach().cpu().numpy(), self.model.cmvn_std.detach().cpu().numpy()

    def with_model(self, model: LSTMCTC, **changes) -> "ModelBundle":
        """The same description around other weights (an averaged, baked or moved model)."""
        return replace(self, model=model, **changes)

    def metadata(self) -> dict[str, str]:
        tok, _ = describe_tokenizer(self.tokenizer)
        return {"format": BUNDLE_FORMAT, "model_config": json.dumps(asdict(self.model.cfg)),
                "fbank": json.dumps(asdict(self.fbank)), "tokenizer": json.dumps(tok),
                "delay_frames": str(self.delay_frames), "kd": json.dumps(self.kd),
                "provenance": json.dumps(self.provenance), "quantization": self.quantization}


def save_bundle(bundle: ModelBundle, path: str | Path) -> None:
    """Write ``bundle`` to ``path`` (atomic: temp file, then rename)."""
    tensors = dict(bundle.model.state_dict())
    _, spm_model = describe_tokenizer(bundle.tokenizer)
    if spm_model is not None:
        tensors[SPM_TENSOR] = torch.frombuffer(bytearray(spm_model), dtype=torch.uint8)
    save_tensors(tensors, path, bundle.metadata())


def _json(meta: dict[str, str], key: str, path: Path):
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, TypeError):
        raise BundleError(f"{path}: the {key} metadata is not JSON") from None


def load_bundle(path: str | Path, *, device: str | torch.device = "cpu",
                expect: ModelConfig | None = None) -> ModelBundle:
    """Read a model bundle: the model (built from the stored config, weights loaded strictly, on
    ``device``, in eval mode), its tokenizer, fbank options, delay, KD config and provenance.
    ``expect``: refuse a file of another architecture. Every error names the file."""
    path = Path(path)
    meta, tensors = read_tensors(path)
    missing = [k for k in REQUIRED if k not in meta]
    if meta.get("format") != BUNDLE_FORMAT:
        if "model_config" not in meta:
            raise BundleError(f"{path}: not a speechkd model (no model_config in the safetensors metadata)")
        raise BundleError(f"{path}: a model file without its {' and '.join(missing) or 'bundle metadata'} (written "
                          f"before model bundles); upgrade it with: speechkd upgrade-model {path}")
    if missing:
        raise BundleError(f"{path}: the model bundle has no {' and no '.join(missing)}; it cannot be run on audio "
                          "(rewrite it with the stage that trained it)")
    cfg = parse_model_config(meta, path)
    fb_raw = _json(meta, "fbank", path)
    if not isinstance(fb_raw, dict):
        raise BundleError(f"{path}: the fbank metadata is not a JSON object")
    try:
        fbank = from_dict(FbankOptions, fb_raw, where=f"{path}: fbank")
    except ConfigError as e:
        raise BundleError(str(e)) from None
    spm = tensors.pop(SPM_TENSOR, None)
    try:
        tok = tokenizer_from(_json(meta, "tokenizer", path), None if spm is None else spm.numpy().tobytes(),
                             f"{path}: tokenizer")
    except TokenizerError as e:
        raise BundleError(str(e)) from None
    try:
        delay = int(meta.get("delay_frames", "0"))
    except ValueError:
        raise BundleError(f"{path}: delay_frames metadata is not an integer") from None
    kd = _json(meta, "kd", path) if meta.get("kd") else None
    prov = _json(meta, "provenance", path) if meta.get("provenance") else {}
    model = model_from(cfg, tensors, path, expect=expect)
    try:  # the constructor checks that the parts fit; its messages then name this file
        return ModelBundle(model.to(device).eval(), tok, fbank, delay_frames=delay,
                           kd=kd if isinstance(kd, dict) else None, provenance=prov if isinstance(prov, dict) else {},
                           quantization=str(meta.get("quantization", "")))
    except CheckpointError as e:
        raise BundleError(str(e).replace(f"{UNSAVED}:", f"{path}:", 1)) from None


def upgrade_legacy(path: str | Path, out: str | Path | None = None, *, features: str | Path | None = None,
                   tokenizer_dir: str | Path | None = None, delay_frames: int | None = None) -> ModelBundle:
    """Turn a model file written before bundles into one, from the files its stage kept beside it:
    ``features.json`` (fbank options), the tokenizer (``tokenizer.json``, ``spm.model``) and the stage's
    ``outputs.json`` (delay and KD config); each can be given explicitly. Writes ``out`` (default: in
    place) and returns the bundle."""
    from speechkd.models.io import read_weights
    from speechkd.text.tokenizer import load_tokenizer

    path = Path(path)
    meta, _ = read_tensors(path)
    if meta.get("format") == BUNDLE_FORMAT:
        raise BundleError(f"{path}: already a model bundle; nothing to upgrade")
    cfg, tensors = read_weights(path)
    feats = Path(features) if features else path.parent / "features.json"
    try:
        raw = json.loads(feats.read_text())["fbank"]
        fbank = from_dict(FbankOptions, raw, where=f"{feats}: fbank")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{feats}: cannot read the fbank options the model was trained on "
                          f"({type(e).__name__}); give them with --features") from None
    tok = load_tokenizer(tokenizer_dir or path.parent)
    try:
        outputs = json.loads((path.parent / "outputs.json").read_text())
    except (OSError, ValueError):
        outputs = None
    if not isinstance(outputs, dict):
        if delay_frames is None:  # a KD student's delay is not guessed
            raise BundleError(f"{path.parent / 'outputs.json'}: cannot read the stage's outputs (the KD delay the "
                              "model emits with); give it with --delay (0 for a model trained without KD)")
        outputs = {}
    if delay_frames is None:
        d = outputs.get("delay_frames")
        delay_frames = d if isinstance(d, int) else 0
    kd = outputs.get("kd") if isinstance(outputs.get("kd"), dict) else None
    model = model_from(replace(cfg, frame_shift_ms=fbank.frame_shift_ms), tensors, path)
    bundle = ModelBundle(model.eval(), tok, fbank, delay_frames=int(delay_frames), kd=kd,
                         provenance={"stage": path.parent.name, "upgraded": "from a pre-bundle model file"},
                         quantization=str(meta.get("quantization", "")))
    save_bundle(bundle, out or path)
    return bundle
