"""Reading recipe files into a validated :class:`~nmt.config.schema.Recipe`.

A recipe file is read with :func:`~nmt.config.yamlfile.read_yaml_file` (safe YAML without aliases,
without a key given twice in one mapping, with bounded nesting; each refusal names the file and
line), and ``${NAME}`` / ``${NAME:-default}`` are expanded in its values; this is how
``recipes/fr-en.yaml`` lets ``NMT_TATOEBA_DIR`` replace its corpus. Relative data paths are
resolved against the directory of the recipe file that sets them.

A recipe may start from another: ``base: fr-en.yaml`` (relative to the recipe's directory; the base
may have a base in turn) and then give only the keys that differ, merged section by section over the
base's (:func:`read_recipe`). ``--set section.key=value`` overrides come last
(:func:`apply_overrides`), then the whole is validated (:func:`~nmt.config.validation.recipe_from_dict`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from nmt.config.schema import Recipe
from nmt.config.validation import recipe_from_dict
from nmt.config.yamlfile import (
    SCIENTIFIC,
    RecipeLoader,
    RecipeYAMLError,
    expand_env_values,
    read_yaml_file,
)
from nmt.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> ``(["train", "lr"], 0.0003)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value (e.g. --set train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: bad key {key!r}; expected section.key=value")
    try:
        value = yaml.load(raw, Loader=RecipeLoader) if raw.strip() else ""
    except RecipeYAMLError as exc:
        raise ConfigError(f"--set {text!r}: {exc.problem}") from None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and SCIENTIFIC.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 3e-4 as a string
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for part in keys[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return raw


def _read_yaml(path: Path, named_by: str | None = None) -> dict[str, Any]:
    """One recipe file: parsed (:func:`read_yaml_file`), environment variables expanded in its
    values; ``named_by`` is the recipe whose ``base:`` points here (for the message when the file
    is missing)."""
    if path.is_dir():
        raise ConfigError(f"recipe {str(path)!r} is a directory, not a file; give the path of a .yaml "
                          "recipe (e.g. recipes/fr-en.yaml)", named_by)
    if not path.exists():
        if named_by is not None:
            raise ConfigError(f"base: {str(path)!r} not found (relative paths in base: are relative to "
                              "the directory of the recipe that names them)", named_by)
        raise ConfigError(f"recipe file {str(path)!r} not found (give the path to a .yaml recipe, "
                          "e.g. recipes/fr-en.yaml)")
    raw = read_yaml_file(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping of sections, got {type(raw).__name__}", str(path))
    return expand_env_values(raw, str(path))


def merge_recipes(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` laid over ``base``: mappings merge key by key, any other value (a list, a scalar,
    ``null``) replaces the base's."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_recipes(out[key], value)
        else:
            out[key] = value
    return out


def read_recipe(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file as a mapping with its ``base:`` chain applied (not yet validated).

    ``base: other.yaml`` (relative to the recipe's directory) starts from that recipe, itself
    possibly based on another; the recipe's own keys are merged over it (:func:`merge_recipes`).
    A relative ``data.path`` is made absolute against the directory of the file that sets it.
    """
    path = Path(path)
    named_by = str(_chain[-1]) if _chain else None
    raw = _read_yaml(path, named_by)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data_path = Path(data["path"]).expanduser()
        if not data_path.is_absolute():
            raw["data"] = {**data, "path": str((path.resolve().parent / data_path).resolve())}
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"base: got {base!r}, expected the path of another recipe file "
                          "(e.g. base: fr-en.yaml)", str(path))
    base_path = (path.parent / Path(base).expanduser())
    chain = _chain + (path,)
    if base_path.resolve() in {p.resolve() for p in chain}:
        names = " -> ".join(str(p) for p in chain + (base_path,))
        raise ConfigError(f"base: the recipes name each other in a cycle: {names}; "
                          "remove one of these base: keys", str(path))
    return merge_recipes(read_recipe(base_path, chain), raw)


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read (with its ``base:`` chain), expand, override and validate a recipe file."""
    path = Path(path)
    raw = apply_overrides(read_recipe(path), overrides or [])
    recipe = recipe_from_dict(raw, source=str(path), base_dir=path.resolve().parent)
    if recipe.output.name is None:
        recipe.output.name = path.stem
    return recipe
