"""Safe YAML for recipes: :class:`RecipeLoader` (no aliases, no key given twice, bounded nesting,
each refusal naming the file and line) and ``${NAME}`` / ``${NAME:-default}`` expansion in values.

Environment variables are expanded after the YAML is parsed, in values only (never in keys or
comments), so a value may hold any text. ``${NAME}`` needs NAME to be set (an empty value is a
value); ``${NAME:-default}`` takes the default when NAME is unset or empty, as the shell does.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from nmt.errors import ConfigError

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class EnvValue(str):
    """A string value that environment variables were expanded into (:func:`expand_env_values`).

    Validation reads it as a number or ``true``/``false`` where the schema wants one
    (``train.lr: ${LR:-1e-3}``), as YAML would have read the same text; elsewhere it is a string.
    """

    def scalar(self) -> Any:
        try:
            value = yaml.load(self, Loader=RecipeLoader)
        except yaml.YAMLError:
            return str(self)
        return value if isinstance(value, (int, float, bool)) else str(self)


def expand_env(text: str, key: str | None = None, source: str | None = None) -> str:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in ``text`` by the environment variable's value.

    ``${NAME}`` needs NAME to be set (an empty value is a value); ``${NAME:-default}`` takes the
    default when NAME is not set or empty, as the shell does. An unset variable raises
    :class:`ConfigError` naming ``key`` and the recipe ``source``.
    """

    def repl(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}environment variable {name} is not set (referenced as "
                              f"{match.group(0)}); set it, or give a default: ${{{name}:-value}}", source)
        return value

    return _ENV_PATTERN.sub(repl, text)


def expand_env_values(node: Any, source: str | None = None, prefix: str = "") -> Any:
    """``node`` (parsed YAML) with environment variables expanded in its string values only: keys,
    comments and the YAML syntax around a value are never touched, so a value may hold any text
    (``#``, ``: ``). Expanded strings become :class:`EnvValue`."""
    if isinstance(node, dict):
        return {k: expand_env_values(v, source, f"{prefix}.{k}" if prefix else str(k))
                for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env_values(v, source, f"{prefix}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        expanded = expand_env(node, prefix or None, source)
        return EnvValue(expanded) if expanded != node else node
    return node


#: deepest nesting of mappings and lists a recipe may have (the schema needs four levels)
MAX_YAML_DEPTH = 32


class RecipeYAMLError(yaml.MarkedYAMLError):
    """YAML that parses but that a recipe refuses: an alias, a duplicate key, nesting too deep."""


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags), stricter where recipes need it: aliases (``*name``)
    are refused before anything is built, so a few hundred bytes of nested aliases cannot expand
    into gigabytes; a key given twice in one mapping is refused (YAML would keep the last silently);
    nesting is bounded (the parser recurses once per level)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise RecipeYAMLError(
                problem=f"YAML alias *{event.anchor}: aliases are not accepted in recipes; write the "
                        "value out (or share settings between recipes with base:)",
                problem_mark=event.start_mark)
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_YAML_DEPTH:
            raise RecipeYAMLError(problem=f"nested deeper than {MAX_YAML_DEPTH} levels",
                                  problem_mark=self.peek_event().start_mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the base class names it
                    break
                if first is not None:
                    raise RecipeYAMLError(
                        problem=f"key {key!r} given twice in one mapping (first at line "
                                f"{first.line + 1}); keep one",
                        problem_mark=key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str | None = None) -> Any:
    """``text`` parsed with :class:`RecipeLoader`; problems raise :class:`ConfigError` naming
    ``source`` and the line."""
    try:
        return yaml.load(text, Loader=RecipeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or str(exc)
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            problem += " (recipes hold plain values only: mappings, lists, strings, numbers, booleans)"
        syntax = isinstance(exc, (yaml.scanner.ScannerError, yaml.parser.ParserError))
        kind = "YAML syntax error: " if syntax else ""
        raise ConfigError(f"{where}{kind}{problem}", source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", source) from None


def read_yaml_file(path: str | os.PathLike) -> Any:
    """A YAML file's contents (:func:`parse_yaml`); a file that is not UTF-8 or cannot be read
    raises :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"line {line}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the "
                          "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)", str(path)) from None
    return parse_yaml(text, str(path))


SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def fix_floats(node: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-3`` as a string; read such scientific literals as numbers."""
    if isinstance(node, dict):
        return {k: fix_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [fix_floats(v) for v in node]
    if isinstance(node, str) and SCIENTIFIC.fullmatch(node):
        return float(node)
    return node
