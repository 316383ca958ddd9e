"""The KD settings sweep behind the default recipe's students (README.md, "How the KD settings were
chosen").

Each point is a student of ``pipelines/default`` (``--base``, default ``student_frame``) with some ``kd``
keys changed (and ``data.`` keys: the untranscribed audio's ratio; and the schedule: ``epochs``,
``max_steps``, ``max_steps_from``), trained from the default run's teacher
cache and decoded on dev and test. Settings are picked on dev; test is
printed beside it. The recipe is first run up to its ``teacher_cache`` stage (skipped when
``make demo`` has run; otherwise that is the teacher, ~15 minutes); the points are added as extra
stages ``sweep_<point>`` of the same experiment, so a rerun skips the points already trained. About
5 minutes per point on 2 CPU cores (``--threads 1 --jobs 2`` runs two points side by side).
``--quick`` does one point on ``pipelines/quick`` (seconds). The last line printed is one JSON object.

    python benchmarks/kd_sweep.py                       # the default grid
    python benchmarks/kd_sweep.py --point a9_d3=alpha:0.9,extra_delay:2
    python benchmarks/kd_sweep.py --recipe pipelines/untranscribed --base student_unt_seq --point w6=pseudo_weight:0.6
    python benchmarks/kd_sweep.py --base student_unt_frame --point x2=max_steps_from:'',max_steps:2820
    python benchmarks/kd_sweep.py --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> kd overrides on top of the default student_frame (est = the estimated delay). The default
# recipe itself trains a9_est+2 (student_frame); it is printed too. a9_d0 is the no-shift ablation.
GRID = {
    "a9_d0": {"alpha": 0.9, "delay": 0, "extra_delay": 0},
    "a5_est": {"alpha": 0.5, "extra_delay": 0},
    "a9_est": {"alpha": 0.9, "extra_delay": 0},
    "a5_est+1": {"alpha": 0.5, "extra_delay": 1},
    "a9_est+1": {"alpha": 0.9, "extra_delay": 1},
    "a10_est+2": {"alpha": 1.0, "extra_delay": 2},
    "a9_est+1_tau2": {"alpha": 0.9, "extra_delay": 1, "temperature": 2.0},
}
RECIPE_STUDENTS = {"student_frame": "a9_est+2 (student_frame)"}


# keys of the stage itself rather than of its kd block: the schedule
STAGE_KEYS = {"epochs", "max_steps", "max_steps_from"}


def parse_point(text: str) -> tuple[str, dict]:
    """``NAME=key:value,...``: kd keys, ``data.<key>`` for the data block, or a schedule key (``STAGE_KEYS``)."""
    name, _, body = text.partition("=")
    kd = {}
    for item in filter(None, body.split(",")):
        k, _, v = item.partition(":")
        kd[k] = yaml.safe_load(v)
    return name, kd


def point_stage(base: dict, changes: dict, threads: int) -> dict:
    """The base student's stage with a point's kd, data and schedule changes."""
    kd = {k: v for k, v in changes.items() if not k.startswith("data.") and k not in STAGE_KEYS}
    data = {k[5:]: v for k, v in changes.items() if k.startswith("data.")}
    schedule = {k: v for k, v in changes.items() if k in STAGE_KEYS}
    st = dict(base, kd={"delay": None, **base.get("kd", {}), **kd}, threads=threads, **schedule)
    if data or "data" in base:
        st["data"] = {**base.get("data", {}), **data}
    return st


def stage_name(point: str) -> str:
    return "sweep_" + point.replace("+", "p").replace(".", "_")


def result_row(exp: Path, train_stage: str, decode_stage: str) -> dict:
    """What a sweep point (or a recipe student) got: its kd config, delay, dev and test WER/CER."""
    splits = json.loads((exp / decode_stage / "summary.json").read_text())["splits"]
    trained = json.loads((exp / train_stage / "outputs.json").read_text())
    row = {"kd": trained.get("kd"), "delay_frames": trained.get("delay_frames"),
           "untranscribed": trained.get("untranscribed"), "steps": trained.get("steps")}
    for split in ("dev", "test"):
        row.update({f"{split}_wer": splits[split]["wer"], f"{split}_cer": splits[split]["cer"]})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(REPO / "pipelines" / "default" / "recipe.yaml"))
    ap.add_argument("--point", action="append", help="NAME=key:value,... (repeatable; default: the grid); kd keys, "
                                                     "or data.<key>")
    ap.add_argument("--base", default="student_frame", help="the recipe's student the points change")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per point")
    ap.add_argument("--jobs", type=int, default=2, help="points trained side by side")
    ap.add_argument("--exp-root", help="as speechkd run --exp-root")
    ap.add_argument("--quick", action="store_true", help="one point on pipelines/quick")
    a = ap.parse_args()
    if a.quick:
        a.recipe = str(REPO / "pipelines" / "quick" / "recipe.yaml")
        a.point = a.point or ["a9_est+1=alpha:0.9,extra_delay:1"]

    from speechkd.stages.plan import read_recipe, recipe_file

    rf = recipe_file(a.recipe).resolve()
    recipe, _ = read_recipe(rf)  # with its extends chain: the base student may come from the recipe's base
    if a.base not in recipe["stages"]:
        sys.exit(f"--base {a.base!r}: no such stage in {rf} (students: "
                 f"{', '.join(n for n, c in recipe['stages'].items() if (c or {}).get('type') == 'distill')})")
    base = recipe["stages"][a.base]
    points = dict(parse_point(p) for p in a.point) if a.point else GRID
    stages = {}
    for name, kd in points.items():
        stages[stage_name(name)] = point_stage(base, kd, a.threads)
        stages["decode_" + stage_name(name)] = {"type": "decode", "model": stage_name(name), "splits": ["dev", "test"]}
    # the sweep extends the recipe with extra stages: the recipe's stages keep their fingerprints
    recipe.setdefault("name", rf.parent.name)
    exp_root = Path(a.exp_root) if a.exp_root else REPO / "exp"
    out = exp_root / recipe["name"] / "kd_sweep"
    out.mkdir(parents=True, exist_ok=True)
    rf = out / "recipe.yaml"
    rf.write_text(yaml.safe_dump({"extends": str(recipe_file(a.recipe).resolve()), "name": recipe["name"],
                                  "stages": stages}, sort_keys=False))

    cmd = [sys.executable, "-m", "speechkd.cli", "run", str(rf), "--exp-root", str(exp_root)]
    subprocess.run(cmd + ["--to", base.get("cache", "teacher_cache")], cwd=REPO, check=True)
    names = [n for n in stages if not n.startswith("decode_")]
    for i in range(0, len(names), a.jobs):  # train a.jobs points side by side, then decode them
        procs = [subprocess.Popen(cmd + ["--from", n, "--to", n], cwd=REPO) for n in names[i : i + a.jobs]]
        if any(p.wait() for p in procs):
            sys.exit("a sweep point failed; see the log above")
        for n in names[i : i + a.jobs]:
            subprocess.run(cmd + ["--from", f"decode_{n}", "--to", f"decode_{n}"], cwd=REPO, check=True)

    rows = {}
    d = exp_root / recipe["name"]
    recipe_students = RECIPE_STUDENTS if a.base == "student_frame" else {a.base: f"{a.base} (recipe)"}
    for stage, label in recipe_students.items():
        if (not a.point or a.base != "student_frame") and (d / f"decode_{stage}" / ".done").exists():
            rows[label] = result_row(d, stage, f"decode_{stage}")
    for name in points:
        rows[name] = result_row(d, stage_name(name), "decode_" + stage_name(name))
    print(f"{'point':<30} {'delay':>5} {'dev WER':>8} {'dev CER':>8} {'test WER':>9} {'test CER':>9}")
    for name, r in rows.items():
        print(f"{name:<30} {r['delay_frames']:>5} {r['dev_wer']:>8.2f} {r['dev_cer']:>8.2f} {r['test_wer']:>9.2f} "
              f"{r['test_cer']:>9.2f}")
    best = min(rows, key=lambda n: (rows[n]["dev_wer"], rows[n]["dev_cer"]))
    print(json.dumps({"points": rows, "best_on_dev": best}))


if __name__ == "__main__":
    main()
