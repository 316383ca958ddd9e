"""The staged pipeline runner.

A recipe is a YAML file (``pipelines/<name>/recipe.yaml``) listing stages in order::

    name: quick
    seed: 1234
    stages:
      corpus: {hours: 0.05}
      featurize: {}
      tokenizer: {kind: char}

A stage's type is its ``type`` key, or else its name (so one stage type can appear under
several names with different configs). Under ``torchrun`` every rank runs the runner: stages marked ``DISTRIBUTED`` (training) run on
all ranks, the others on rank 0 while the rest wait; only rank 0 writes markers.

Each stage writes ``exp/<recipe>/<stage>/``: its
resolved ``config.yaml`` first, then its outputs, then a ``.done`` marker holding the
stage's fingerprint (a hash of its config, the seed and every earlier stage's fingerprint).

A stage module may define ``fingerprint_inputs(cfg)`` to fold the content of files it reads
(e.g. the corpus spec) into its fingerprint. A rerun skips a stage whose ``.done`` fingerprint matches. A stage whose config (or an
earlier stage) changed reruns from an empty folder; an interrupted stage (no ``.done``,
same config) reruns in place so resumable stages continue; ``--force`` reruns from scratch.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechkd.config import ConfigError, apply_overrides, from_dict, load_yaml, save_yaml, to_dict
from speechkd.stages import STAGE_TYPES, get_stage
from speechkd.utils import atomic_write_text, seed_everything, stable_hash

log = logging.getLogger(__name__)

RECIPE_KEYS = {"name", "seed", "exp_dir", "description", "stages"}


@dataclass
class StageContext:
    """What a stage knows besides its config: where to write and where earlier stages wrote."""

    recipe: str
    exp_dir: Path
    out_dir: Path
    seed: int
    repo_root: Path

    def stage_dir(self, name: str) -> Path:
        d = self.exp_dir / name
        if not (d / ".done").exists():
            raise RuntimeError(f"stage {name!r} has not finished ({d / '.done'} is missing); run it first")
        return d


@dataclass
class PlannedStage:
    name: str
    type: str
    cfg: Any
    fingerprint: str


def recipe_file(path: str | Path) -> Path:
    p = Path(path)
    return p / "recipe.yaml" if p.is_dir() else p


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], list[PlannedStage]]:
    """Parse and validate a recipe (every stage config) without running anything."""
    rf = recipe_file(path)
    data = load_yaml(rf)
    stage_names = set((data.get("stages") or {}).keys())
    fixed = []
    for ov in overrides or []:  # allow the short form `corpus.hours=0.1`
        head = ov.split("=", 1)[0].split(".", 1)[0]
        fixed.append(f"stages.{ov}" if head in stage_names else ov)
    data = apply_overrides(data, fixed)
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise ConfigError(f"{rf}: unknown top-level key(s) {sorted(unknown)}; valid: {sorted(RECIPE_KEYS)}")
    stages = data.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ConfigError(f"{rf}: 'stages' must be a non-empty mapping of stage name -> config")
    seed = data.get("seed", 1234)
    if not isinstance(seed, int):
        raise ConfigError(f"{rf}: 'seed' must be an integer")
    planned: list[PlannedStage] = []
    upstream = ""
    for name, raw in stages.items():
        raw = dict(raw or {})
        stype = raw.pop("type", name)
        if stype not in STAGE_TYPES:
            raise ConfigError(f"{rf}: stages.{name}: unknown stage type {stype!r}; known: {sorted(STAGE_TYPES)}")
        mod = get_stage(stype)
        cfg = from_dict(mod.Config, raw, where=f"{rf}: stages.{name}")
        extra = mod.fingerprint_inputs(cfg) if hasattr(mod, "fingerprint_inputs") else None
        fp = stable_hash({"type": stype, "config": to_dict(cfg), "seed": seed, "upstream": upstream, "inputs": extra})
        planned.append(PlannedStage(name, stype, cfg, fp))
        upstream = fp
    data.setdefault("name", rf.parent.name)
    data["seed"] = seed
    return data, planned


def _done_fingerprint(d: Path) -> str | None:
    try:
        return json.loads((d / ".done").read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError):
        return None


def _started_fingerprint(d: Path) -> str | None:
    try:
        return (load_yaml(d / "config.yaml").get("_meta") or {}).get("fingerprint")
    except ConfigError:
        return None


def run_recipe(path: str | Path, *, from_stage: str | None = None, to_stage: str | None = None, force: bool = False,
               overrides: list[str] | None = None, exp_root: str | Path | None = None) -> list[tuple[str, str]]:
    """Run the recipe's stages in order; returns ``(stage, "skipped" | "ran")`` pairs."""
    rf = recipe_file(path)
    meta, planned = load_recipe(rf, overrides)
    names = [p.name for p in planned]
    for opt, val in (("--from", from_stage), ("--to", to_stage)):
        if val is not None and val not in names:
            raise ConfigError(f"{opt} {val!r}: no such stage in {rf}; stages: {', '.join(names)}")
    i0 = names.index(from_stage) if from_stage else 0
    i1 = names.index(to_stage) if to_stage else len(names) - 1
    repo_root = Path.cwd()
    exp_dir = Path(exp_root) / meta["name"] if exp_root else Path(meta.get("exp_dir") or f"exp/{meta['name']}")
    exp_dir.mkdir(parents=True, exist_ok=True)
    rank = _init_distributed()
    import torch

    threads = torch.get_num_threads()  # every stage starts with the process's thread count
    results = []
    for idx, st in enumerate(planned):
        out = exp_dir / st.name
        if idx < i0:
            continue
        if idx > i1:
            break
        done_fp = _done_fingerprint(out)
        if not force and done_fp == st.fingerprint:
            log.info("stage %s: up to date, skipping (%s)", st.name, out)
            results.append((st.name, "skipped"))
            continue
        if rank == 0:
            if force or (done_fp is not None) or (out.exists() and _started_fingerprint(out) not in (None, st.fingerprint)):
                if out.exists():
                    why = "--force" if force else "its config or an earlier stage changed"
                    log.info("stage %s: rerunning from scratch (%s)", st.name, why)
                    shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
            save_yaml({**to_dict(st.cfg), "_meta": {"stage": st.name, "type": st.type, "recipe": str(rf),
                                                     "seed": meta["seed"], "fingerprint": st.fingerprint}},
                      out / "config.yaml")
        _barrier()
        ctx = StageContext(recipe=meta["name"], exp_dir=exp_dir, out_dir=out, seed=meta["seed"], repo_root=repo_root)
        seed_everything(meta["seed"])
        torch.set_num_threads(threads)
        mod = get_stage(st.type)
        t0 = time.time()
        outputs: dict[str, Any] = {}
        if rank == 0 or getattr(mod, "DISTRIBUTED", False):
            log.info("stage %s (%s): running -> %s", st.name, st.type, out)
            outputs = mod.run(st.cfg, ctx) or {}
        elapsed = time.time() - t0
        _barrier()
        if rank == 0:
            atomic_write_text(out / "outputs.json", json.dumps(outputs, indent=1, default=str) + "\n")
            atomic_write_text(out / ".done", json.dumps({"fingerprint": st.fingerprint, "seconds": round(elapsed, 2),
                                                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
            log.info("stage %s: done in %.1f s", st.name, elapsed)
        _barrier()
        results.append((st.name, "ran"))
    return results


def _init_distributed() -> int:
    """Under torchrun (WORLD_SIZE > 1) join the process group: gloo on the CPU, nccl on CUDA."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
        log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_rank()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
