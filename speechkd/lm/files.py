"""The files of a word LM beside a model, and the LM options of the commands that decode (no numba here: the
CLI imports this to build its parser).

A folder that decodes with an LM holds ``lm.arpa`` (the model), optionally ``lm.tables.npz`` (its arrays,
:mod:`speechkd.lm.tables`) and ``lm.json`` (the fusion settings: alpha, beta, beam, token_min_logp, prune,
unk_offset, unk_char, recombine).
"""

from __future__ import annotations

import math
from pathlib import Path

LM_FILE = "lm.arpa"
# the search's defaults: tokens under TOKEN_MIN_LOGP in a frame are not extended (the frame's best always is),
# hypotheses more than -BEAM_PRUNE below the best are dropped, an out-of-vocabulary word costs UNK_OFFSET (log10)
# on top of P(<unk>), and UNK_CHAR per character of it (a run of words spelled as one unknown string then pays
# for its length; docs/design.md). pyctcdecode's are -5 / -10 / -10 and no cost per character: on the default
# teacher's test posteriors -8 / -20 take 2.9x the time (15 instead of 5 microseconds a frame) and give 23.47 WER
# instead of 25.18 (docs/lm.md)
TOKEN_MIN_LOGP = -8.0
BEAM_PRUNE = -20.0
UNK_OFFSET = -10.0
UNK_CHAR = -0.5
FUSION_FILE = "lm.json"  # the fusion settings shipped beside an LM
FUSION_KEYS = {"alpha": (-100.0, 100.0), "beta": (-100.0, 100.0), "beam": (1, 4096), "token_min_logp": (-1e9, 0.0),
               "prune": (-1e9, 0.0), "unk_offset": (-1e3, 0.0), "unk_char": (-1e3, 0.0),
               "recombine": (False, True)}


def read_fusion(path: str | Path) -> dict:
    """The fusion settings of ``lm.json`` (``{}`` when there is no such file); a bad value is refused naming
    the file and the key."""
    import json

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise ValueError(f"{path}: not a JSON object of LM fusion settings") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a JSON object of LM fusion settings")
    out = {}
    for k, (lo, hi) in FUSION_KEYS.items():
        if k not in d:
            continue
        v = d[k]
        if k == "recombine":
            if not isinstance(v, bool):
                raise ValueError(f"{path}: recombine must be true or false")
            out[k] = v
            continue
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (
            (math.isfinite(v) and lo <= v <= hi) or (k in ("token_min_logp", "prune") and v == -math.inf))
        if not ok or (k == "beam" and v != int(v)):
            raise ValueError(f"{path}: {k} must be a number in [{lo}, {hi}]" + (" (an integer)" if k == "beam" else ""))
        out[k] = int(v) if k == "beam" else float(v)
    return out


def write_fusion(path: str | Path, settings: dict) -> None:
    import json

    from speechkd.utils import atomic_write_text

    atomic_write_text(Path(path), json.dumps({k: settings[k] for k in FUSION_KEYS if k in settings}, indent=1) + "\n")


def find_arpa(path: str | Path) -> Path:
    """``path`` itself, or the ``lm.arpa`` in the folder ``path`` (an lm stage's or an export's)."""
    p = Path(path)
    if p.is_dir():
        p = p / LM_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no ARPA language model here (an lm stage's folder holds {LM_FILE})")
    return p


def ship_lm(lm: str | Path, out_dir: Path, settings: dict) -> dict:
    """Put the LM ``lm`` (an ARPA file or a folder holding one) into ``out_dir`` with its arrays when they exist
    (hard links where the file system allows, else copies) and ``settings`` as ``lm.json``."""
    import os
    import shutil

    def link(a: Path, b: Path) -> None:
        b.unlink(missing_ok=True)
        try:
            os.link(a, b)
        except OSError:
            shutil.copyfile(a, b)

    src = find_arpa(lm)
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / LM_FILE
    if src.resolve() != dst.resolve():
        link(src, dst)
        tables = src.with_name(src.stem + ".tables.npz")
        if tables.is_file():  # checked against the ARPA file when loaded
            link(tables, dst.with_name(dst.stem + ".tables.npz"))
    write_fusion(out_dir / FUSION_FILE, settings)
    return {"path": LM_FILE, "bytes": dst.stat().st_size, **{k: settings[k] for k in FUSION_KEYS if k in settings}}


# -- the LM options of the commands that decode (transcribe, eval, decode) ---------------------------------
def add_cli_args(p) -> None:
    def beam(v: str) -> int:
        import argparse

        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {v!r}") from None
        if not 1 <= n <= 4096:
            raise argparse.ArgumentTypeError(f"must be in [1, 4096], got {n}")
        return n

    p.add_argument("--lm", help="word LM to fuse into a beam search: an ARPA file or a folder holding lm.arpa "
                               "(default: the lm.arpa beside the model, as `speechkd export` ships it)")
    p.add_argument("--no-lm", action="store_true", help="greedy decoding even when an lm.arpa lies beside the model")
    p.add_argument("--alpha", type=float, help="LM weight (default: lm.json beside the LM, else 0.5)")
    p.add_argument("--beta", type=float, help="word bonus (default: lm.json beside the LM, else 1.0)")
    p.add_argument("--beam", type=beam, help="beam width with an LM (default: lm.json beside the LM, else 32)")


def cli_choice(a, model) -> tuple:
    """``(lm, weights)`` from the options: ``--lm PATH``, ``--no-lm``, or (neither) the ``lm.arpa`` shipped beside
    the model if there is one; weights from ``--alpha/--beta/--beam``."""
    weights = {k: v for k, v in (("alpha", a.alpha), ("beta", a.beta), ("beam", a.beam)) if v is not None}
    if a.no_lm:
        return False, weights
    if a.lm:
        return a.lm, weights
    return (True if (Path(model).parent / LM_FILE).is_file() else None), weights

