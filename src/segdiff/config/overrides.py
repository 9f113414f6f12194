"""Dotted-key overrides of a config from the command line (`--set a.b=v`, text), a JSON file or Python
(JSON-like values): parse, coerce to each field's type, and build a new config with `dataclasses.replace`."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from ..errors import UserError
from .errors import ConfigError

# Fields the run itself writes to config.json (and reads back on resume): refused on the command line, where
# a value would only pretend to do what the run decides (key -> what sets it).
SET_BY_THE_RUN = {
    "train.budget_fixed_at": "the run sets it when it turns train.budget_minutes into a fixed train.max_steps",
}

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def field_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config class (RunConfig by default), sections expanded."""
    if cls is None:
        from .schema import RunConfig  # here, not at the top: schema imports this module

        cls = RunConfig
    keys = []
    for name, tp in _hints(cls).items():
        keys += field_keys(tp, f"{prefix}{name}.") if _is_section(tp) else [prefix + name]
    return keys


def _coerce(value: Any, tp: Any, key: str, text: bool) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (text and value.strip().lower() in _NONE):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, text)
    if value is None or (text and value.strip().lower() in _NONE and tp is not str):
        raise ConfigError(key, value, "cannot be none")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(key, value, "expected true or false")
    if tp is int:
        if text:
            try:
                return int(value)
            except ValueError:
                raise ConfigError(key, value, "expected an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "expected an integer")
        return value
    if tp is float:
        if text:
            try:
                return float(value)
            except ValueError:
                raise ConfigError(key, value, "expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "expected a string")
        return value
    if tp is dict:  # data.classes entries: set from classes.json or config files, not from text
        if text or not isinstance(value, dict):
            raise ConfigError(key, value, "set the classes with a classes.json in the data root (docs/data.md)")
        return dict(value)
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        elem = args[0]
        what = f"{'' if variadic else len(args)} {'integers' if elem is int else 'numbers'}".strip()
        if text:
            body = value.strip().strip("()[]")
            items = [v.strip() for v in body.split(",")] if body.strip() else []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigError(key, value, f"expected {what} separated by commas")
        if not variadic and len(items) != len(args):
            raise ConfigError(key, value, f"expected {what} separated by commas")
        try:
            return tuple(_coerce(v, elem, key, text) for v in items)
        except ConfigError:
            raise ConfigError(key, value, f"expected {what} separated by commas") from None
    raise ConfigError(key, value, f"cannot set a field of type {tp}")  # pragma: no cover - no such field


def _unknown(key: str, prefix: str, root: tuple[type, str]) -> ConfigError:
    """The error for an unknown key (`prefix` + `key`), naming the closest key of the config `root` (class,
    prefix) where the override started."""
    from .migration import OLD_KEYS  # here, not at the top: migration imports this module

    full = prefix + key
    if full in OLD_KEYS:
        return ConfigError(full, None, f"this setting is now {OLD_KEYS[full]}", show_value=False)
    known = field_keys(*root)
    leaf = full.rsplit(".", 1)[-1]  # a right field name in the wrong section: data.channel_mult -> model.channel_mult
    close = [k for k in known if k.rsplit(".", 1)[-1] == leaf][:1]
    close = close or difflib.get_close_matches(full, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}?" if close else f"settable keys start with {', '.join(_hints(root[0]))}"
    return ConfigError(full, None, f"unknown setting; {hint}", show_value=False)


def apply_overrides(
    obj: Any, overrides: dict[str, Any], prefix: str = "", text: bool = False, _root: tuple | None = None
) -> Any:
    """A copy of the config dataclass `obj` with dotted `overrides` set (values type-checked).

    text=True parses command-line strings ("64", "1,2,2", "none", "true"); otherwise values are JSON-like
    (lists for tuples). `obj` is not changed. Keys are relative to `obj`; `prefix` only names them in errors.
    """
    root = _root or (type(obj), prefix)
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    hints = _hints(type(obj))
    for key, value in overrides.items():
        name, _, rest = key.partition(".")
        if name not in hints:
            raise _unknown(key, prefix, root)
        tp = hints[name]
        if _is_section(tp):
            if not rest:
                sub = ", ".join(field_keys(tp, f"{prefix}{name}.")[:4])
                raise ConfigError(prefix + key, value, f"is a section; set its fields, e.g. {sub}")
            nested.setdefault(name, {})[rest] = value
        elif rest:
            raise _unknown(key, prefix, root)
        else:
            if text and prefix + key in SET_BY_THE_RUN:
                problem = f"{SET_BY_THE_RUN[prefix + key]}; it cannot be set by hand"
                raise ConfigError(prefix + key, value, problem, show_value=False)
            direct[name] = _coerce(value, tp, prefix + key, text)
    for name, sub in nested.items():
        direct[name] = apply_overrides(getattr(obj, name), sub, f"{prefix}{name}.", text, root)
    return dataclasses.replace(obj, **direct)


def parse_assignments(items: list[str], prefix: str = "") -> dict[str, str]:
    """["data.size=64", "model.channel_mult=1,2,2"] -> {"data.size": "64", ...} (values still text)."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. data.size=64")
        key = key.removeprefix(prefix) if prefix else key
        if key in out and out[key] != value:
            raise UserError(f"--set {key}: given twice ({out[key]} and {value})")
        out[key] = value
    return out


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A config (or a nested dict) -> {dotted key: leaf value}."""
    if dataclasses.is_dataclass(d):
        d = {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) or dataclasses.is_dataclass(v):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
