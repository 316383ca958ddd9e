"""Typed configs: dataclasses loaded from YAML mappings with dotted overrides.

Every field carries help text in ``metadata["help"]``. Loading is strict: an unknown key is
an error that names the source (file) and the dotted key, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be loaded: unknown key, wrong type, bad override."""


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
          fingerprint: bool | str = True):
    """A dataclass field with mandatory help text. ``fingerprint=False`` marks a key that changes how a stage
    runs but not what it writes (worker processes, prefetching): changing it does not rerun the stage.
    ``fingerprint="unless_default"`` marks a key added after experiments were run with its default's behaviour:
    at its default it stays out of the fingerprint, so adding it reruns no finished stage."""
    kw: dict[str, Any] = {"metadata": {"help": help, "fingerprint": fingerprint}}
    if default_factory is not dataclasses.MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return dataclasses.field(**kw)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


_KEY_LIKE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,40}$")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got a {type(data).__name__}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        named = [u for u in unknown if isinstance(u, str) and _KEY_LIKE.match(u)]
        shown = ", ".join(repr(u) for u in named[:10]) + (" ..." if len(named) > 10 else "")
        others = len(unknown) - len(named)  # never echo what does not look like a key: it may be a file's content
        what = shown + (f"{' and ' if shown else ''}{others} entr{'y' if others == 1 else 'ies'} that are not key "
                        "names (is this the right file?)" if others else "")
        raise ConfigError(f"{where}: unknown key(s) {what}; valid keys for {cls.__name__}: {', '.join(sorted(names))}")
    for f in dataclasses.fields(cls):  # a nested block given in part keeps the field's own defaults
        if (f.name in data and isinstance(data[f.name], Mapping) and dataclasses.is_dataclass(hints.get(f.name))
                and f.default_factory is not dataclasses.MISSING):
            base = f.default_factory()
            if dataclasses.is_dataclass(base):
                data[f.name] = {**{g.name: getattr(base, g.name) for g in dataclasses.fields(base) if g.init},
                                **data[f.name]}
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{where}: {e}") from None
    except ConfigError as e:  # a rule checked in __post_init__ (its message starts with the key)
        raise ConfigError(f"{where}.{e}") from None


def require(ok: bool, key: str, message: str) -> None:
    """For ``__post_init__`` rules: raise ``ConfigError("<key>: <message>")`` unless ``ok``.

    :func:`from_dict` prefixes the error with where the config came from (file and dotted path)."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_name(value: str, key: str, what: str = "name") -> str:
    """A name that becomes a file or folder name: letters, digits, ``_ - .``, not starting with a dot,
    so it can never climb out of (``..``) or escape (``/abs``) the folder it is joined to."""
    if not isinstance(value, str) or not _NAME.match(value) or len(value) > 128:
        raise ConfigError(f"{key}: {what} {value!r} must be plain: letters, digits, '_', '-', '.', "
                          "not starting with a dot, at most 128 characters")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config dataclass (for YAML dumps)."""
    out = dataclasses.asdict(cfg)
    return _plain(out)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is parsed as YAML (so ``3``, ``true``, ``[1,2]`` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted KEY")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``KEY=VALUE`` overrides to a nested mapping (returns a new mapping)."""
    import copy

    out = copy.deepcopy(data)
    for ov in overrides:
        parts, value = parse_override(ov)
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {ov!r}: {p!r} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return out


MAX_YAML_BYTES = 4 << 20  # a recipe or spec is a few KB; this bounds what a wrong path can make us read


def read_small_file(path: str | Path, what: str = "file", limit: int = MAX_YAML_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; a one-line :class:`ConfigError` otherwise
    (a folder, FIFO or device such as /dev/zero is refused before anything is read)."""
    import stat

    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: the {what} is not a regular file")
    if st.st_size > limit:
        raise ConfigError(f"{path}: the {what} is {st.st_size} bytes; more than the {limit} allowed")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what}: {e.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{path}: the {what} is larger than the {limit} bytes allowed")
    return data


def load_yaml(path: str | Path, what: str = "YAML file") -> dict[str, Any]:
    """Read a YAML mapping from a regular file of bounded size; errors name the file and a position,
    never the file's content."""
    path = Path(path)
    raw = read_small_file(path, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: the {what} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the {what} must hold a mapping (key: value lines) at the top level")
    return data


def save_yaml(data: Mapping[str, Any], path: str | Path) -> None:
    from speechkd.utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(_plain(dict(data)), sort_keys=False))


def help_text(cls: type, prefix: str = "", defaults: Any = None) -> str:
    """One line per field, nested dataclasses expanded as dotted keys: ``  a.b = default: help``.
    A nested block shows the defaults of its field's own factory (``defaults``), not of its class."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name)
        d = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        if defaults is not None:
            d = getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            lines.append(f"  {prefix}{f.name}.*: {f.metadata.get('help', '')}")
            lines.append(help_text(tp, f"{prefix}{f.name}.", d if dataclasses.is_dataclass(d) else None))
            continue
        choices = f" (one of {', '.join(map(str, typing.get_args(tp)))})" if typing.get_origin(tp) is typing.Literal else ""
        lines.append(f"  {prefix}{f.name} = {d!r}: {f.metadata.get('help', '')}{choices}")
    return "\n".join(lines)


def fingerprinted(cfg: Any) -> dict[str, Any]:
    """``to_dict(cfg)`` without the keys marked ``fingerprint=False`` (at any depth), nor those marked
    ``"unless_default"`` that hold their default: what a stage's fingerprint covers."""
    out = to_dict(cfg)

    def drop(obj: Any, d: dict) -> None:
        for f in dataclasses.fields(obj):
            how = f.metadata.get("fingerprint", True)
            if how == "unless_default":
                default = (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                if default is not dataclasses.MISSING and getattr(obj, f.name) == default:
                    how = False
            if how is False:
                d.pop(f.name, None)
            elif dataclasses.is_dataclass(getattr(obj, f.name)) and isinstance(d.get(f.name), dict):
                drop(getattr(obj, f.name), d[f.name])

    drop(cfg, out)
    return out
