"""TOML recipes for every stage: small dataclasses filled from a file, `--set section.key=value` overrides, and
errors that name the key and the file, raised before anything runs.

A stage's recipe is a dataclass whose fields are plain values, lists, dicts, nested dataclasses (TOML tables) or
lists of dataclasses (TOML arrays of tables); `load_recipe(path, cls, overrides)` fills it.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from pathlib import Path
from typing import Any, get_type_hints


class RecipeError(ValueError):
    pass


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if value is None and type(None) in typing.get_args(hint):
            return None
        return _check_type(value, options[0], where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)  # 2e6 where a count is meant
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise RecipeError(f"{where} must be {'an integer' if hint is int else hint.__name__}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise RecipeError(f"{where} must be a table")
        return fill(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where} must be an array, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)] if item is not Any else value
    if origin is dict and not isinstance(value, dict):
        raise RecipeError(f"{where} must be a table, got {value!r}")
    return value


def _join(where: str, key: str) -> str:
    """'file.toml' + 'train' -> 'file.toml: train'; 'file.toml: train' + 'lr' -> 'file.toml: train.lr'."""
    return f"{where}.{key}" if ": " in where else f"{where}: {key}"


def fill(cls: type, raw: dict, where: str) -> Any:
    """A `cls` from a TOML table: unknown keys and wrong types are errors naming `where.key`."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init and f.name != "source"}
    values = {}
    for key, value in raw.items():
        if key not in names:
            raise RecipeError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(names))})")
        values[key] = _check_type(value, hints[key], _join(where, key))
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"--set {text!r} must look like section.key=value")
    path, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word is a string
    keys = path.strip().split(".")
    if not all(keys):
        raise RecipeError(f"--set {text!r}: empty key in '{path}'")
    return keys, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = raw
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise RecipeError(f"--set {text!r}: no element {key} in '{'.'.join(keys[:i])}' "
                                      f"({len(node)} element(s))")
                if last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                raise RecipeError(f"--set {text!r}: '{'.'.join(keys[:i])}' is a value, not a table")
    return raw


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None


def load_recipe(path: str | Path, cls: type, overrides: list[str] | None = None) -> Any:
    """`cls` filled from the TOML file at `path` with `--set` overrides applied; `cls.validate()` is called when
    it exists. The recipe's `source` field (when it has one) records the path for error messages."""
    raw = apply_overrides(read_toml(path), overrides or [])
    recipe = fill(cls, raw, str(path))
    if any(f.name == "source" for f in dataclasses.fields(cls)):
        recipe = dataclasses.replace(recipe, source=str(path))
    if hasattr(recipe, "validate"):
        recipe.validate()
    return recipe


def to_dict(recipe: Any) -> dict:
    out = dataclasses.asdict(recipe)
    out.pop("source", None)
    return out


class StageRecipe:
    """What every stage's recipe dataclass shares (it declares `name`, `run_dir` and `source` fields): where its
    run writes, and its settings as a plain dict for checkpoints and reports."""

    name: str
    run_dir: str

    @property
    def directory(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    def to_dict(self) -> dict:
        return to_dict(self)
