"""The staged pipeline runner.

The whole recipe is planned and checked before anything runs (:mod:`speechkd.stages.plan`: configs,
``defaults``, references, fingerprints); the experiment folder is locked (:mod:`speechkd.stages.lock`).

Each stage writes ``exp/<recipe>/<stage>/``: its resolved ``config.yaml`` first, then its
outputs, then ``outputs.json`` and a ``.done`` marker. The stages form a graph, not a chain: a
stage's fingerprint covers its type, config and the seed, the content of files it reads outside
the experiment (``fingerprint_inputs``, e.g. the corpus spec or an imported manifest), and the
fingerprints of the stages it reads, and nothing else. A rerun skips a stage whose fingerprint
matches and whose inputs have not been rebuilt since (each ``.done`` holds a stamp of that run,
and a stage records the stamps it read). A stage whose config or inputs changed reruns from an
empty folder; an interrupted stage (no ``.done``, same config) reruns in place so resumable stages
continue; a stage that finished with failures (e.g. utterances that failed to synthesize) is
rerun in place next time, retrying just those; ``--force`` reruns from scratch.

One run at a time per experiment folder: the runner holds an exclusive lock on
``exp/<recipe>/.lock`` (naming its holder) for as long as it runs. Under ``torchrun`` every rank
runs the runner: stages marked ``DISTRIBUTED`` (training) run on all ranks, the others on rank 0
while the rest wait; only rank 0 takes the lock and writes markers.

With ``jobs`` > 1 (``speechkd run --jobs N``) the runner starts each stage as its own single-stage run
(``--from S --to S``, a child process) as soon as the stages it reads have finished, up to N at a time, each
on its share of the CPU threads (``threads // N``, the same share whatever else is running, so the same
``--jobs`` gives the same numbers); stages marked ``ALONE`` (the corpus and featurize, which keep every core
busy with their own workers, and latency, which measures time) run with nothing beside them and every
thread. The parent holds the folder's lock shared, each child its stage's lock (:func:`exp_lock`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechkd.config import ConfigError, load_yaml, save_yaml, to_dict
from speechkd.stages import get_stage
from speechkd.stages.lock import LockedError, exp_lock  # noqa: F401  (re-exported)
from speechkd.stages.plan import RECIPE_KEYS, PlannedStage, load_recipe, recipe_file  # noqa: F401
from speechkd.utils import atomic_write_text, seed_everything, set_threads, stable_hash

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """What a stage knows besides its config: where to write, and the earlier stages it may read."""

    recipe: str
    exp_dir: Path
    out_dir: Path
    seed: int
    recipe_dir: Path | None = None
    reads: set[str] | None = None  # the stages this one declared (None: no restriction)
    stage_type: str = ""
    fingerprint: str = ""

    def provenance(self) -> dict[str, str]:
        """Where a model this stage writes comes from (recipe, stage, type, fingerprint; no paths)."""
        return {"recipe": self.recipe, "stage": self.out_dir.name, "type": self.stage_type,
                "fingerprint": self.fingerprint}

    def stage_dir(self, name: str) -> Path:
        if self.reads is not None and name not in self.reads:
            raise RuntimeError(f"stage {self.out_dir.name!r} read stage {name!r}, which its config does not name "
                               f"(it names {sorted(self.reads)})")
        d = self.exp_dir / name
        if not (d / ".done").exists():
            raise RuntimeError(f"stage {name!r} has not finished ({d / '.done'} is missing); run it first")
        return d


def _marker(d: Path) -> dict[str, Any]:
    try:
        m = json.loads((d / ".done").read_text())
        return m if isinstance(m, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _started(d: Path) -> tuple[str | None, dict | None]:
    """Fingerprint and input stamps recorded when a stage started (its ``config.yaml``)."""
    try:
        m = load_yaml(d / "config.yaml").get("_meta") or {}
        return m.get("fingerprint"), m.get("inputs")
    except ConfigError:
        return None, None


MARKERS = ("config.yaml", "outputs.json", ".done")


def _foreign(d: Path) -> list[str]:
    """Entries of a stage folder that speechkd did not write: those present before the stage first ran
    (recorded in its ``config.yaml``); every entry when the folder has no speechkd marker."""
    if not d.is_dir():
        return []
    try:
        meta = load_yaml(d / "config.yaml").get("_meta") if (d / "config.yaml").exists() else None
    except ConfigError:
        meta = None
    if not isinstance(meta, dict):
        return sorted(p.name for p in d.iterdir() if p.name not in MARKERS)
    return [str(x) for x in meta.get("foreign") or []]


def _wipe(d: Path) -> list[str]:
    """Remove what the stage wrote into ``d`` and keep everything else; returns the kept names. A finished
    stage lists what it wrote in its ``.done``; an unfinished one removes all but the entries that were
    there before it first ran."""
    if not d.is_dir():
        return []
    written = _marker(d).get("written")
    if isinstance(written, list):
        mine = {str(x) for x in written} | set(MARKERS)
        keep = {p.name for p in d.iterdir() if p.name not in mine}
    else:
        keep = set(_foreign(d))
    for p in d.iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return sorted(keep)


def _check_upstream(planned: list[PlannedStage], exp_dir: Path, i0: int, i1: int) -> None:
    """Every stage to run reads only stages that have finished or that this run makes first."""
    to_run = {p.name for p in planned[i0:i1 + 1]}
    for st in planned[i0:i1 + 1]:
        for r in st.reads:
            if r not in to_run and not (exp_dir / r / ".done").exists():
                raise ConfigError(f"stage {st.name!r} reads stage {r!r}, which has not finished "
                                  f"({exp_dir / r / '.done'} is missing) and is not part of this run; "
                                  f"run from {r!r} (--from {r}) first; nothing was changed")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def run_recipe(path: str | Path, *, from_stage: str | None = None, to_stage: str | None = None, force: bool = False,
               overrides: list[str] | None = None, exp_root: str | Path | None = None,
               jobs: int = 1) -> list[tuple[str, str]]:
    """Run the recipe's stages in order (``jobs`` > 1: independent ones side by side, in child processes);
    returns ``(stage, "skipped" | "ran")`` pairs."""
    rf = recipe_file(path)
    meta, planned = load_recipe(rf, overrides)
    names = [p.name for p in planned]
    for opt, val in (("--from", from_stage), ("--to", to_stage)):
        if val is not None and val not in names:
            raise ConfigError(f"{opt} {val!r}: no such stage in {rf}; stages: {', '.join(names)}")
    i0 = names.index(from_stage) if from_stage else 0
    i1 = names.index(to_stage) if to_stage else len(names) - 1
    if i0 > i1:
        raise ConfigError(f"--from {from_stage!r} comes after --to {to_stage!r} in {rf}; nothing to run "
                          f"(stage order: {', '.join(names)})")
    exp_dir = Path(exp_root) / meta["name"] if exp_root else Path(meta.get("exp_dir") or f"exp/{meta['name']}")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    if jobs > 1 and i0 < i1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("--jobs runs stages side by side as processes of one machine; under torchrun every "
                              "rank runs the stages in order: drop --jobs")
        with exp_lock(exp_dir, shared=True):
            return _run_side_by_side(rf, meta, planned, exp_dir, i0, i1, force, jobs, overrides or [], exp_root)
    rank, joined = _init_distributed()
    try:
        if rank == 0:
            with exp_lock(exp_dir, stage=names[i0] if i0 == i1 else None):
                return _run(rf, meta, planned, exp_dir, i0, i1, force, rank)
        return _run(rf, meta, planned, exp_dir, i0, i1, force, rank)
    finally:
        if joined:  # leave the group while Python is whole: gloo's threads outliving it abort the process at exit
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(rf: Path, meta: dict, planned: list[PlannedStage], exp_dir: Path, i0: int, i1: int, force: bool,
         rank: int) -> list[tuple[str, str]]:
    import torch

    _check_upstream(planned, exp_dir, i0, i1)
    threads = torch.get_num_threads()  # every stage starts with the process's thread count
    results = []
    for idx, st in enumerate(planned):
        if idx < i0:
            continue
        if idx > i1:
            break
        out = exp_dir / st.name
        if not _inside(out, exp_dir) or out.resolve() == exp_dir.resolve():
            raise ConfigError(f"stage {st.name!r}: its folder {out} is not inside {exp_dir}")
        done = _marker(out)
        inputs_now = _inputs(st, exp_dir)
        same_config = done.get("fingerprint") == st.fingerprint
        same_inputs = done.get("inputs", {}) == inputs_now
        failures = int(done.get("failures", 0) or 0)
        if not force and _current(done, st, inputs_now):
            if rank == 0:
                log.info("stage %s: up to date, skipping (%s)", st.name, out)
            results.append((st.name, "skipped"))
            continue
        if rank == 0:
            started_fp, started_inputs = _started(out)
            if force or (done and not (same_config and same_inputs)) or (
                    out.exists() and started_fp is not None and (started_fp, started_inputs) != (st.fingerprint,
                                                                                                 inputs_now)):
                if out.exists():
                    config_changed = not same_config if done else started_fp != st.fingerprint
                    why = ("--force" if force else "its config changed" if config_changed else
                           "a stage it reads was rebuilt")
                    log.info("stage %s: rerunning from scratch (%s)", st.name, why)
                    kept = _wipe(out)
                    if kept:
                        log.warning("stage %s: kept %d file(s) speechkd did not write: %s", st.name, len(kept),
                                    ", ".join(kept[:5]) + (" ..." if len(kept) > 5 else ""))
            elif failures:
                log.info("stage %s: rerunning in place to retry its %d failure(s)", st.name, failures)
            if (out / ".done").exists():
                (out / ".done").unlink()
            foreign = _foreign(out)
            out.mkdir(parents=True, exist_ok=True)
            save_yaml({**to_dict(st.cfg), "_meta": {"stage": st.name, "type": st.type, "recipe": str(rf),
                                                     "seed": meta["seed"], "fingerprint": st.fingerprint,
                                                     "reads": st.reads, "inputs": inputs_now,
                                                     "foreign": foreign}},
                      out / "config.yaml")
        _barrier()
        ctx = StageContext(recipe=meta["name"], exp_dir=exp_dir, out_dir=out, seed=meta["seed"],
                           recipe_dir=st.recipe_dir or rf.parent, reads=set(st.reads), stage_type=st.type, fingerprint=st.fingerprint)
        seed_everything(meta["seed"])
        set_threads(threads)
        mod = get_stage(st.type)
        t0 = time.time()
        outputs: dict[str, Any] = {}
        if rank == 0 or getattr(mod, "DISTRIBUTED", False):
            if rank == 0:
                log.info("stage %s (%s): running -> %s", st.name, st.type, out)
            outputs = mod.run(st.cfg, ctx) or {}
        elapsed = time.time() - t0
        _barrier()
        if rank == 0:
            failed = int(outputs.get("failures", 0) or 0) if isinstance(outputs, dict) else 0
            text = json.dumps(outputs, indent=1, default=str) + "\n"
            atomic_write_text(out / "outputs.json", text)
            finished = time.strftime("%Y-%m-%dT%H:%M:%S")
            stamp = stable_hash({"fingerprint": st.fingerprint, "finished": finished, "t": time.time(),
                                 "outputs": text})[:16]
            foreign = set(_foreign(out))
            written = sorted(p.name for p in out.iterdir() if p.name not in foreign and p.name not in MARKERS)
            atomic_write_text(out / ".done", json.dumps({"fingerprint": st.fingerprint, "stamp": stamp,
                                                        "inputs": inputs_now, "failures": failed,
                                                        "seconds": round(elapsed, 2), "finished": finished,
                                                        "written": written}) + "\n")
            if failed:
                log.warning("stage %s: done in %.1f s with %d failure(s) (see its outputs.json); the next run "
                            "retries them", st.name, elapsed, failed)
            else:
                log.info("stage %s: done in %.1f s", st.name, elapsed)
        _barrier()
        results.append((st.name, "ran"))
    return results


def _inputs(st: PlannedStage, exp_dir: Path) -> dict[str, Any]:
    """The stamps of the finished stages ``st`` reads, as they are now."""
    return {r: _marker(exp_dir / r).get("stamp") for r in st.reads}


def _current(done: dict[str, Any], st: PlannedStage, inputs_now: dict[str, Any]) -> bool:
    """A stage's ``.done`` marker says it finished with this fingerprint, on the inputs there are now, without
    failures to retry."""
    return (done.get("fingerprint") == st.fingerprint and done.get("inputs", {}) == inputs_now
            and not int(done.get("failures", 0) or 0))


def _up_to_date(st: PlannedStage, exp_dir: Path) -> bool:
    """:func:`_current`, read from the experiment folder."""
    return _current(_marker(exp_dir / st.name), st, _inputs(st, exp_dir))


def _alone(st: PlannedStage) -> bool:
    return bool(getattr(get_stage(st.type), "ALONE", False))


def next_stages(pending: list[PlannedStage], finished: set[str], running: list[PlannedStage], jobs: int,
                in_run: set[str]) -> list[PlannedStage]:
    """The stages to start now, in recipe order: those whose stages in this run (``in_run``) have all
    finished, while fewer than ``jobs`` run; an ``ALONE`` stage only when nothing runs, and nothing beside
    it. The first pending ``ALONE`` stage that cannot start yet holds back the stages after it."""
    start: list[PlannedStage] = []
    if any(_alone(r) for r in running):
        return start
    for st in pending:
        if len(running) + len(start) >= jobs:
            break
        ready = all(r in finished or r not in in_run for r in st.reads)
        if _alone(st):
            if ready and not running and not start:
                start.append(st)
            break
        if ready:
            start.append(st)
    return start


def _run_side_by_side(rf: Path, meta: dict, planned: list[PlannedStage], exp_dir: Path, i0: int, i1: int,
                      force: bool, jobs: int, overrides: list[str], exp_root: str | Path | None
                      ) -> list[tuple[str, str]]:
    import subprocess
    import sys

    import torch

    _check_upstream(planned, exp_dir, i0, i1)
    threads = torch.get_num_threads()
    share = max(1, threads // jobs)
    todo = planned[i0:i1 + 1]
    in_run = {st.name for st in todo}
    logs = exp_dir / ".logs"
    logs.mkdir(parents=True, exist_ok=True)
    log.info("running up to %d stages side by side, %d thread(s) each (corpus, featurize and latency alone, "
             "%d threads); each stage's log: %s/<stage>.log", jobs, share, threads, logs)
    pending, finished, status = list(todo), set(), {}
    running: dict[str, tuple[PlannedStage, subprocess.Popen, float]] = {}
    failed: list[str] = []
    try:
        while pending or running:
            if not failed:
                for st in next_stages(pending, finished, [r[0] for r in running.values()], jobs, in_run):
                    pending.remove(st)
                    if not force and _up_to_date(st, exp_dir):
                        log.info("stage %s: up to date, skipping (%s)", st.name, exp_dir / st.name)
                        finished.add(st.name)
                        status[st.name] = "skipped"
                        continue
                    n = threads if _alone(st) else share
                    cmd = [sys.executable, "-m", "speechkd.cli", "run", str(rf), "--from", st.name, "--to", st.name,
                           *(["--force"] if force else []), *(["--exp-root", str(exp_root)] if exp_root else []),
                           *overrides]
                    env = {**os.environ, "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n),
                           "NUMBA_NUM_THREADS": str(n)}
                    with open(logs / f"{st.name}.log", "ab") as f:
                        f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
                        f.flush()
                        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
                    running[st.name] = (st, proc, time.time())
                    log.info("stage %s (%s): started on %d thread(s)%s", st.name, st.type, n,
                             f" beside {', '.join(r for r in running if r != st.name)}" if len(running) > 1 else "")
                if not running and pending and not failed:
                    continue  # skipped stages freed the ones after them
            if not running:
                break
            time.sleep(0.2)
            for name, (st, proc, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[name]
                if rc == 0:
                    finished.add(name)
                    status[name] = "ran"
                    log.info("stage %s: done in %.1f s", name, time.time() - t0)
                else:
                    failed.append(name)
                    log.error("stage %s failed (exit %d)%s; its log: %s", name, rc, _child_error(logs / f"{name}.log"),
                              logs / f"{name}.log")
    finally:
        for _, proc, _ in running.values():  # interrupted: stop the children (stages resume on the next run)
            proc.terminate()
        for _, proc, _ in running.values():
            proc.wait()
    if failed:
        raise RuntimeError(f"stage(s) {', '.join(failed)} failed{_child_error(logs / f'{failed[0]}.log')} (logs in "
                           f"{logs}); the stages that finished are kept and the next run continues from there")
    return [(st.name, status[st.name]) for st in todo]


def _child_error(path: Path) -> str:
    """The one-line ``error: ...`` a failed single-stage run printed last (the CLI's own message), if any."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errs = [x for x in lines if x.startswith("error: ")]
    return f": {errs[-1][len('error: '):][:300]}" if errs else ""


def _init_distributed() -> tuple[int, bool]:
    """Under torchrun (WORLD_SIZE > 1) join the process group: gloo on the CPU, nccl on CUDA. Returns the rank and
    whether this call joined it (and so must leave it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
    log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_rank(), True


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
