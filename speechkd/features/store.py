"""A sharded, memory-mappable feature store.

Each shard is one ``.npy`` array ``(total_frames, dim)`` holding the concatenated features
of its utterances, written atomically. A manifest row points into it with
``feats = {"shard": <path relative to the manifest>, "offset": <first frame>, "frames": <count>}``.
Reading maps shards with ``np.load(mmap_mode="r")`` and returns views, so a dataset opens
gigabytes of features without loading them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkd.utils import atomic_write_bytes


class FeatureStoreError(ValueError):
    pass


@dataclass(frozen=True)
class FeatureRef:
    shard: str
    offset: int
    frames: int

    def to_json(self) -> dict:
        return {"shard": self.shard, "offset": self.offset, "frames": self.frames}

    @classmethod
    def from_json(cls, d: dict, where: str = "") -> "FeatureRef":
        try:
            ref = cls(str(d["shard"]), int(d["offset"]), int(d["frames"]))
        except (KeyError, TypeError, ValueError):
            raise FeatureStoreError(f"{where}: malformed 'feats' reference (needs shard, offset, frames)") from None
        if ref.offset < 0 or ref.frames < 1:
            raise FeatureStoreError(f"{where}: 'feats' reference has offset {ref.offset} and frames {ref.frames}; "
                                    "need offset >= 0 and frames >= 1")
        return ref


def write_shard(path: str | Path, feats: list[np.ndarray], dtype: str = "float32") -> list[tuple[int, int]]:
    """Concatenate ``feats`` (each ``(frames, dim)``) into one ``.npy`` shard; returns ``(offset, frames)``."""
    dims = {f.shape[1] for f in feats if f.ndim == 2}
    if len(dims) > 1:
        raise FeatureStoreError(f"{path}: features have different dims {sorted(dims)}")
    dim = dims.pop() if dims else 0
    arr = np.concatenate([f.astype(dtype, copy=False) for f in feats], 0) if feats else np.zeros((0, dim), dtype)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(Path(path), buf.getvalue())
    out, off = [], 0
    for f in feats:
        out.append((off, int(f.shape[0])))
        off += int(f.shape[0])
    return out


class FeatureStore:
    """Resolves :class:`FeatureRef` against a base folder, memory-mapping shards on first use."""

    def __init__(self, base: str | Path):
        self.base = Path(base)
        self._maps: dict[str, np.ndarray] = {}

    def _shard(self, name: str) -> np.ndarray:
        arr = self._maps.get(name)
        if arr is None:
            path = self.base / name
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise FeatureStoreError(f"{path}: cannot map feature shard: {str(e)[:200]}") from None
            if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
                raise FeatureStoreError(f"{path}: a feature shard is a 2-D float array (frames, dim); this one has "
                                        f"shape {list(arr.shape)} and dtype {arr.dtype}")
            self._maps[name] = arr
        return arr

    def get(self, ref: FeatureRef, dim: int | None = None) -> np.ndarray:
        """The ``(frames, dim)`` view for ``ref`` (read-only). With ``dim``, a shard of another feature
        dimension is an error naming it; features that are not finite are an error too."""
        arr = self._shard(ref.shard)
        if ref.offset < 0 or ref.frames < 0 or ref.offset + ref.frames > arr.shape[0]:
            raise FeatureStoreError(f"{self.base / ref.shard}: reference [{ref.offset}, {ref.offset + ref.frames}) "
                                    f"is outside the shard's {arr.shape[0]} frames (truncated shard?)")
        if dim is not None and arr.shape[1] != dim:
            raise FeatureStoreError(f"{self.base / ref.shard}: features are {arr.shape[1]}-dimensional; the model "
                                    f"takes {dim}")
        x = arr[ref.offset : ref.offset + ref.frames]
        if not np.isfinite(x).all():
            raise FeatureStoreError(f"{self.base / ref.shard}: frames [{ref.offset}, {ref.offset + ref.frames}) "
                                    "hold NaN/Inf; rerun featurize")
        return x
