"""Recipe validation: a nested mapping checked against the schema (:mod:`nmt.config.schema`) into a
:class:`~nmt.config.schema.Recipe`, collecting *all* problems, each with its full key path:

- unknown keys (``model.atention``) with a "did you mean" suggestion,
- wrong types (``train.lr: "fast"``) with the value and the expected type,
- values outside the range or the choices their field declares (``setting(min=..., choices=...)``),
  read from the field metadata, so a range is written once, beside the field,
- combinations that no single field can express (:func:`cross_field_problems`).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Union

from nmt.config.schema import DecodeConfig, Recipe
from nmt.config.yamlfile import EnvValue, fix_floats
from nmt.errors import ConfigError

Label = Callable[[str], str]


# ---------------------------------------------------------------------------------------- types

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "anything"
    plain = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return plain.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; return the value (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if isinstance(value, EnvValue):
        if tp in (int, float, bool):
            value = value.scalar()
        elif origin not in (Union, types.UnionType):
            value = str(value)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping (section), got {value!r}")
            return tp()
        return build(tp, value, path, problems)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = coerce(value, arg, path, trial)
            if not trial:
                return out
        problems.append(f"{path}: got {value!r}, expected {_type_name(tp)}")
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool):
            # YAML 1.1 reads an unquoted no/yes as a boolean: `precision: no` means "no"
            word = "yes" if value else "no"
            if word in allowed:
                return word
        if value not in allowed:
            hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(
                f"{path}: got {value!r}, expected one of {', '.join(map(repr, allowed))}{extra}"
            )
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str) and item_tp is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            problems.append(f"{path}: got {value!r}, expected a list of {_type_name(item_tp)}")
            return value
        return [coerce(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(f"{path}: got {value!r}, expected a mapping")
            return value
        for k in value:
            if key_tp is str and not isinstance(k, str):
                problems.append(f"{path}: key {k!r} is {_type_name(type(k))}, keys here are strings "
                                f"(quote it: '{k}')")
        return {k: coerce(v, item_tp, f"{path}.{k}", problems) for k, v in value.items()}
    return _coerce_scalar(value, tp, path, problems)


def _coerce_scalar(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """:func:`coerce` for ``bool``, ``int``, ``float`` and ``str``."""
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: got {value!r}, expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: got {value!r}, expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: got {value!r}, expected a number")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: got {value!r}, expected a string")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {path}")  # a bug in the schema, not input


def build(cls: type, values: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            hint = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            suggestion = f"did you mean '{(prefix + '.') if prefix else ''}{hint[0]}'?" if hint else (
                f"known keys here: {', '.join(names)}"
            )
            problems.append(f"{path}: unknown key; {suggestion}")
            continue
        kwargs[key] = coerce(value, hints[key], path, problems)
    return cls(**kwargs)


# --------------------------------------------------------------------------------- ranges, choices

def _bound_text(meta: Mapping[str, Any]) -> str:
    """The allowed range a field declares, as a message ends: ``>= 1``, ``> 0``, ``in [0, 1)``."""
    low = ("[", meta["min"]) if "min" in meta else ("(", meta["above"]) if "above" in meta else None
    high = (meta["max"], "]") if "max" in meta else (meta["below"], ")") if "below" in meta else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    return f"{'<=' if high[1] == ']' else '<'} {high[0]}"


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    return not (("min" in meta and value < meta["min"]) or ("above" in meta and value <= meta["above"])
                or ("max" in meta and value > meta["max"]) or ("below" in meta and value >= meta["below"]))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_problem(value: Any, meta: Mapping[str, Any], name: str) -> str | None:
    if not _is_number(value):
        return None  # a wrong type is reported by the type check
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: got {value!r}, must be a finite number"
    if not _in_range(value, meta):
        note = f" ({meta['note']})" if "note" in meta else ""
        return f"{name}: got {value!r}, must be {_bound_text(meta)}{note}"
    return None


def _choice_problem(value: Any, meta: Mapping[str, Any], name: str) -> str | None:
    choices = meta.get("choices")
    if choices is None or not isinstance(value, str) or value in choices:
        return None
    hint = difflib.get_close_matches(value, list(choices), n=1)
    extra = f"did you mean {hint[0]!r}? " if hint else ""
    return f"{name}: unknown {meta.get('noun', 'value')} {value!r}; {extra}available: {', '.join(choices)}"


def _list_problem(value: list, meta: Mapping[str, Any], name: str) -> list[str]:
    """A list field's declared length and per-item range and choices."""
    found = [p for p in (_choice_problem(v, meta, name) for v in value) if p]
    bounded = any(k in meta for k in ("min", "max", "above", "below"))
    numbers = all(_is_number(v) for v in value)
    length_ok = "length" not in meta or len(value) == meta["length"]
    if bounded and numbers and (not length_ok or not all(
            math.isfinite(v) and _in_range(v, meta) for v in value)):
        count = f"{meta['length']} " if "length" in meta else ""
        found.append(f"{name}: got {value!r}, expected {count}numbers {_bound_text(meta)}")
    elif not length_ok:
        found.append(f"{name}: got {value!r}, expected {meta['length']} values")
    return found


def field_problems(section: Any, label: Label) -> list[str]:
    """Values of ``section``'s fields outside the range or choices their :func:`setting` declares,
    and non-finite numbers anywhere."""
    found: list[str] = []
    for f in dataclasses.fields(section):
        value, name = getattr(section, f.name), label(f.name)
        if isinstance(value, list):
            found += _list_problem(value, f.metadata, name)
            continue
        problem = _number_problem(value, f.metadata, name) or _choice_problem(value, f.metadata, name)
        if problem:
            found.append(problem)
    return found


def section_problems(node: Any, prefix: str = "") -> list[str]:
    """Declared ranges and choices (field metadata) of ``node`` and every section below it, each
    value named by its key path; a ``decode`` section also gets its combinations checked."""
    found: list[str] = []
    for f in dataclasses.fields(node):
        child = getattr(node, f.name)
        if dataclasses.is_dataclass(child):
            found += section_problems(child, f"{prefix}{f.name}.")
    label = lambda name: f"{prefix}{name}"  # noqa: E731
    found += decode_problems(node, label) if isinstance(node, DecodeConfig) else field_problems(node, label)
    return found


# ------------------------------------------------------------------------------- decode settings

def decode_problems(decode: DecodeConfig, label: Label) -> list[str]:
    """Out-of-range decode settings and combinations, each named by ``label(field)``."""
    found = field_problems(decode, label)
    n_best, beam = decode.n_best, decode.beam
    numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (n_best, beam))
    if not found and numbers and decode.sample is True and beam > 1:
        found.append(f"{label('sample')}: sampling draws one token at a time and excludes beam "
                     f"search ({label('beam')} {beam}); give one of them")
    elif not found and numbers and not decode.sample and n_best > beam:
        found.append(f"{label('n_best')}: got {n_best}, must be <= {label('beam')} ({beam})")
    return found


def updated_decode(decode: DecodeConfig, changes: Mapping[str, Any], label: Label) -> DecodeConfig:
    """``decode`` with ``changes`` checked and applied (see :meth:`DecodeConfig.updated`)."""
    hints = typing.get_type_hints(DecodeConfig)
    problems: list[str] = []
    values = {}
    for name, value in changes.items():
        if name not in hints:
            hint = difflib.get_close_matches(str(name), list(hints), n=1)
            problems.append(f"{label(name)}: unknown decode setting; "
                            + (f"did you mean {hint[0]!r}?" if hint else f"known: {', '.join(hints)}"))
        elif value is not None:
            values[name] = coerce(value, hints[name], label(name), problems)
    if problems:
        raise ConfigError(problems, what="decode settings")
    if values.get("beam") is None and values.get("sample", decode.sample) is True:
        values["beam"] = 1
    elif values.get("beam") is None and isinstance(values.get("n_best"), int):
        values["beam"] = max(decode.beam, values["n_best"])
    new = dataclasses.replace(decode, **values)
    problems = decode_problems(new, label)
    if problems:
        raise ConfigError(problems, what="decode settings")
    return new


# ---------------------------------------------------------------------------- cross-field rules

def cross_field_problems(r: Recipe) -> list[str]:
    """Combinations of values that no single field's range can express."""
    problems: list[str] = []

    def need(cond: bool, message: str) -> None:
        if not cond:
            problems.append(message)

    att, enc = r.model.attention, r.model.encoder
    if att.kind == "local-p":
        need(att.window is not None,
             "model.attention.window: local-p attention needs a window half-width D "
             "(e.g. model.attention.window: 10)")
    if enc.self_attention_layers and isinstance(enc.hidden_size, int):
        width = enc.hidden_size * (2 if enc.bidirectional else 1)
        need(isinstance(enc.self_attention_heads, int) and enc.self_attention_heads > 0
             and width % enc.self_attention_heads == 0,
             f"model.encoder.self_attention_heads: {enc.self_attention_heads} must divide the "
             f"encoder output width {width}")
    if r.model.shared_embeddings:
        need(r.tokenizer.joint, "model.shared_embeddings: needs tokenizer.joint: true "
             "(source and target must share one vocabulary)")
    t = r.train
    if t.subword_sampling and r.tokenizer.model_type == "unigram":
        need(t.subword_nbest not in (0, 1), f"train.subword_nbest: {t.subword_nbest} samples nothing; "
             "use -1 (all segmentations) or at least 2")
    problems += _data_problems(r)
    return problems


def _data_problems(r: Recipe) -> list[str]:
    """What the ``data`` section's ``format`` needs from its other keys."""
    data, problems = r.data, []
    if data.format in ("tsv", "text", "jsonl") and not data.path:
        problems.append(f"data.path: format {data.format!r} reads local files; set data.path "
                        "(a directory, or a file for a single unsplit corpus)")
    if data.format == "hub" and not data.hub_id:
        problems.append("data.hub_id: format 'hub' needs a dataset id (e.g. 'wmt14')")
    if data.format == "url" and not data.url:
        problems.append("data.url: format 'url' needs the corpus URL")
    for role in ("src", "tgt"):
        if role not in data.columns:
            problems.append(f"data.columns.{role}: missing (which column holds the {role} side?)")
    if not set(data.columns) <= {"src", "tgt"}:
        problems.append(f"data.columns: only 'src' and 'tgt' are allowed, got {sorted(data.columns)}")
    if "train" not in data.splits and data.format != "url":
        problems.append("data.splits.train: missing (the file of the training split)")
    return problems


#: ``train`` keys that end a training run by themselves
STOP_KEYS = ("max_steps", "max_epochs", "budget_minutes", "patience")


def check_stops(recipe: Recipe, source: str | None = None) -> None:
    """Raise :class:`ConfigError` unless the recipe's training ends by itself (one of
    :data:`STOP_KEYS` is set): a run without one would train until it is interrupted."""
    if any(getattr(recipe.train, key) is not None for key in STOP_KEYS):
        return
    raise ConfigError(
        "train: no stop criterion, so training would never end; set at least one of "
        + ", ".join(f"train.{key}" for key in STOP_KEYS)
        + " (e.g. train.max_steps: 20000 or train.budget_minutes: 30, or --set train.max_steps=20000)",
        source)


# ------------------------------------------------------------------------------------ the recipe

def recipe_from_dict(raw: dict[str, Any], source: str | None = None,
                     base_dir: Path | None = None) -> Recipe:
    """Validate a nested mapping into a :class:`Recipe`, raising :class:`ConfigError` with all problems.

    A relative ``data.path`` is resolved against ``base_dir`` (the recipe file's directory)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping of sections, got {type(raw).__name__}", source)
    problems: list[str] = []
    recipe = build(Recipe, fix_floats(raw), "", problems)
    if not problems:  # ranges and rules only make sense over values of the right types
        problems = section_problems(recipe) + cross_field_problems(recipe)
    if problems:
        raise ConfigError(problems, source)
    if recipe.data.path and base_dir is not None:
        path = Path(recipe.data.path).expanduser()
        if not path.is_absolute():
            recipe.data.path = str((base_dir / path).resolve())
    return recipe
