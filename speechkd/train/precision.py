"""Mixed precision for the trainer: which precision a run uses, and the autocast context it runs under.

* ``fp32``: no autocast.
* ``bf16``: ``torch.autocast`` in bfloat16 (CPU: oneDNN's bf16 kernels, native on AVX512-BF16 and AMX CPUs;
  CUDA: bf16 AMP). No loss scaling is needed: bf16 has float32's exponent range.
* ``fp16``: CUDA AMP in float16 with a ``GradScaler`` (loss scaling); refused on the CPU.
* ``auto``: ``bf16`` on a CPU with native bf16 (the ``avx512_bf16`` or ``amx_bf16`` flag; oneDNN's own
  check also passes where bf16 is emulated and slower), else ``fp32``; on CUDA ``bf16`` where the GPU supports it, else ``fp16``.

In every precision the master weights and the optimizer state stay float32 (autocast casts copies for the
matrix products), and the trainer computes the CTC and KD losses in float32 outside the autocast region.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``), or ``None`` where they cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_has_native_bf16() -> bool:
    """True where the CPU runs bf16 matrix products natively (AVX512-BF16 or AMX). oneDNN also reports
    bf16 as supported on plain AVX-512 CPUs, where it is emulated: about 3x *slower* than float32 for
    the LSTM on an Intel Xeon without AVX512-BF16. So the CPU flags decide where they can be read."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
    except (AttributeError, RuntimeError):
        return False
    flags = cpu_flags()
    if flags is None:
        return True  # no /proc/cpuinfo: trust oneDNN
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=None)
def cpu_runs_bf16_lstm() -> bool:
    """Whether the LSTM runs at all under bf16 autocast on this CPU, natively or emulated: oneDNN has no bf16 LSTM
    on a CPU without AVX-512 (an AMD EPYC with AVX2 only: "could not create a primitive descriptor")."""
    with torch.random.fork_rng(devices=[]):  # the probe's random weights leave the run's random stream alone
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = torch.nn.LSTM(8, 8)(torch.zeros(3, 2, 8))[0]
            out.float().sum().backward()
            return True
        except RuntimeError:
            return False


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto | fp32 | bf16 | fp16`` -> the precision a run on ``device`` uses. A choice the device cannot
    run is a ``ValueError`` that says what to use instead."""
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision: must be auto, fp32, bf16 or fp16, got {name!r}")
    cuda = device.type == "cuda"
    if name == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if name == "fp16" and not cuda:
        raise ValueError("precision: fp16 needs a CUDA device (on the CPU, use bf16 or fp32)")
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("precision: this GPU has no bf16; use fp16 or fp32")
    if name == "bf16" and not cuda and not cpu_runs_bf16_lstm():
        raise ValueError("precision: bf16 cannot run the LSTM on this CPU (oneDNN needs AVX-512 for it); "
                         "use auto or fp32")
    return name  # type: ignore[return-value]


def autocast(precision: Precision, device: torch.device):
    """The context a forward pass runs in: ``torch.autocast`` for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (disabled, a pass-through, otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
