"""Planning a recipe: parse and check the whole YAML before anything runs, and fingerprint every stage.

A recipe is a YAML file (``pipelines/<name>/recipe.yaml``) listing stages in order::

    name: quick
    seed: 1234
    defaults:                 # optional: config shared by every stage of a type
      distill: {epochs: 2, model: {layers: 2, hidden: 48}}
    stages:
      corpus: {hours: 0.05}
      featurize: {}
      tokenizer: {kind: char}
      student_a: {type: distill, kd: {alpha: 0.9}}
      student_b: {type: distill, kd: {alpha: 0.5}}

A stage's type is its ``type`` key, or else its name (so one stage type can appear under several
names with different configs). A stage's config is ``defaults[<type>]`` with its own keys merged
over it (nested mappings merge key by key), so a variant is a few lines. The whole recipe is
checked: every stage config (unknown keys, types, allowed values, cross-field rules), stage and
recipe names (plain names only: they become folders), and every reference from one stage to
another (a stage's ``upstream(cfg)``: it must name an *earlier* stage of a fitting type).

A stage's fingerprint covers its type, config and the seed, the content of files it reads outside
the experiment (``fingerprint_inputs``), the fingerprints of the stages it reads, and the stage
type's ``OUTPUT_FORMAT`` where it has one (raised when a new speechkd writes other results for the
same config, e.g. another int8 grid, so that an existing experiment reruns that stage and what
reads it).

A recipe may build on another (``extends: ../default``, a recipe file or folder, relative to its own
folder): it gets the base's stages, in their order, with its own after them; a stage it names that the
base has replaces the base's config whole, in place; its ``defaults`` merge over the base's; ``name``,
``seed`` and ``exp_dir`` are the base's unless it sets them. Sharing the base's name means sharing its
experiment folder, so the base's finished stages are reused (their fingerprints are unchanged) and only
the new stages run. Relative paths in a stage's config are resolved from the folder of the file that
wrote the stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechkd.config import ConfigError, apply_overrides, check_name, fingerprinted, from_dict, load_yaml
from speechkd.stages import STAGE_TYPES, get_stage
from speechkd.utils import stable_hash

RECIPE_KEYS = {"name", "seed", "exp_dir", "description", "defaults", "stages", "extends"}


@dataclass
class PlannedStage:
    name: str
    type: str
    cfg: Any
    fingerprint: str
    reads: list[str] = field(default_factory=list)
    recipe_dir: Path | None = None  # the folder of the recipe file that wrote this stage


def recipe_file(path: str | Path) -> Path:
    p = Path(path)
    return p / "recipe.yaml" if p.is_dir() else p


def _upstream(mod, cfg, where: str) -> list[tuple[str, str, tuple[str, ...]]]:
    if not hasattr(mod, "upstream"):
        return []
    try:
        return list(mod.upstream(cfg))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; nested mappings merge key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _ancestors(names: list[str], by_name: dict[str, "PlannedStage"]) -> list[str]:
    """``names`` and every stage they read, transitively (in recipe order of discovery)."""
    out: list[str] = []
    todo = list(names)
    while todo:
        n = todo.pop(0)
        if n not in out:
            out.append(n)
            todo.extend(by_name[n].reads)
    return out


def _stages_of(rf: Path, data: dict) -> dict:
    raw_stages = data.get("stages")
    if raw_stages is not None and not isinstance(raw_stages, dict):
        raise ConfigError(f"{rf}: 'stages' must be a mapping of stage name -> config (got a "
                          f"{type(raw_stages).__name__}); write 'corpus: {{...}}', not '- corpus: {{...}}'")
    return raw_stages or {}


def read_recipe(rf: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """The recipe's YAML with its ``extends`` chain resolved, and the folder that wrote each stage."""
    if rf.resolve() in chain:
        raise ConfigError(f"{chain[0]}: 'extends' goes round in a circle through {rf}")
    data = load_yaml(rf)
    own = _stages_of(rf, data)
    where = {str(n): rf.parent for n in own}
    base_ref = data.pop("extends", None)
    if base_ref is None:
        return data, where
    if not isinstance(base_ref, str) or not base_ref:
        raise ConfigError(f"{rf}: 'extends' must name a recipe file or folder, got {base_ref!r}")
    base_path = recipe_file(base_ref if Path(base_ref).is_absolute() else rf.parent / base_ref)
    if not base_path.is_file():
        raise ConfigError(f"{rf}: extends {base_ref!r}: no recipe at {base_path}")
    base, base_where = read_recipe(base_path, chain + (rf.resolve(),))
    base.setdefault("name", base_path.resolve().parent.name)
    merged = {k: v for k, v in base.items() if k not in ("stages", "defaults", "description")}
    merged.update({k: v for k, v in data.items() if k not in ("stages", "defaults")})
    b, o = base.get("defaults") or {}, data.get("defaults") or {}
    merged["defaults"] = _merge(b, o) if isinstance(b, dict) and isinstance(o, dict) else o or b  # checked later
    merged["stages"] = {**_stages_of(base_path, base), **own}
    return merged, {**base_where, **where}


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], list[PlannedStage]]:
    """Parse and check a whole recipe (every stage config and every stage reference) without running anything."""
    rf = recipe_file(path)
    data, stage_dirs = read_recipe(rf)
    raw_stages = _stages_of(rf, data)
    stage_names = set((raw_stages or {}).keys())
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
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"{rf}: 'seed' must be a non-negative integer, got {seed!r}")
    name = data.setdefault("name", rf.resolve().parent.name)
    check_name(name, f"{rf}: name", "recipe name")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or not all(isinstance(v, dict) for v in defaults.values()):
        raise ConfigError(f"{rf}: 'defaults' must map stage types to config mappings, e.g. "
                          "'defaults: {distill: {epochs: 2}}'")
    for t in defaults:
        if t not in STAGE_TYPES:
            raise ConfigError(f"{rf}: defaults.{t}: unknown stage type; known: {sorted(STAGE_TYPES)}")
    planned: list[PlannedStage] = []
    by_name: dict[str, PlannedStage] = {}
    for sname, raw in stages.items():
        where = f"{rf}: stages.{sname}"
        check_name(str(sname), where, "stage name")
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping of config keys, got {type(raw).__name__} {raw!r}")
        raw = dict(raw or {})
        stype = raw.pop("type", sname)
        if stype not in STAGE_TYPES:
            raise ConfigError(f"{where}: unknown stage type {stype!r}; known: {sorted(STAGE_TYPES)}")
        raw = _merge(defaults.get(stype, {}), raw)
        mod = get_stage(stype)
        cfg = from_dict(mod.Config, raw, where=where)
        reads: list[str] = []
        for key, ref, types in _upstream(mod, cfg, where):
            up = by_name.get(ref)
            if up is None:
                earlier = ", ".join(by_name) or "none"
                raise ConfigError(f"{where}.{key}: {ref!r} is not an earlier stage of this recipe "
                                  f"(earlier stages: {earlier})")
            if up.type not in types:
                raise ConfigError(f"{where}.{key}: stage {ref!r} is a {up.type!r} stage; expected "
                                  f"{' or '.join(repr(t) for t in types)}")
            if ref not in reads:
                reads.append(ref)
        if getattr(mod, "READS_ANCESTORS", False):  # it may read every stage those stages read, too
            reads = _ancestors(reads, by_name)
        if hasattr(mod, "check"):  # what this stage needs of the stages it reads, known from the recipe alone
            try:
                mod.check(cfg, by_name.__getitem__)
            except (ValueError, KeyError) as e:
                raise ConfigError(f"{where}: {e}") from None
        try:
            extra = (mod.fingerprint_inputs(cfg, stage_dirs.get(sname, rf.parent))
                     if hasattr(mod, "fingerprint_inputs") else None)
        except (ConfigError, ValueError) as e:  # a missing or unusable input is refused here, before any
            raise ConfigError(f"{rf}: stages.{sname}: {e}") from None  # stage folder is touched
        what = {"type": stype, "config": fingerprinted(cfg), "seed": seed, "inputs": extra,
                "upstream": {r: by_name[r].fingerprint for r in reads}}
        if hasattr(mod, "OUTPUT_FORMAT"):  # absent: the fingerprint is what it always was
            what["format"] = mod.OUTPUT_FORMAT
        fp = stable_hash(what)
        st = PlannedStage(sname, stype, cfg, fp, reads, stage_dirs.get(sname, rf.parent))
        planned.append(st)
        by_name[sname] = st
    data["seed"] = seed
    return data, planned


