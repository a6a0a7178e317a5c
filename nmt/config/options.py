"""The ``decode`` section on the command line: one option per :class:`~nmt.config.schema.DecodeConfig`
field, generated from its metadata (name, type, help, metavar), and the values given read back
and checked against the same schema."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Mapping

from nmt.config.schema import DecodeConfig
from nmt.errors import ConfigError


def decode_flag(name: str) -> str:
    """The command-line option of a ``decode`` field: ``n_best`` -> ``--n-best``."""
    return "--" + name.replace("_", "-")


def decode_flag_label(name: str) -> str:
    """How errors name a decode setting given on the command line: ``--n-best/decode.n_best``."""
    return f"{decode_flag(name)}/decode.{name}"


def add_decode_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = (),
                         defaults: Mapping[str, Any] | None = None,
                         notes: Mapping[str, str] | None = None) -> None:
    """One option per :class:`DecodeConfig` field (name, type, help from the schema) and
    ``--greedy``. An option left out keeps the run's recipe value (or ``defaults[name]``);
    ``notes[name]`` replaces the help's default statement where a command gives the option a
    meaning of its own."""
    defaults, notes = dict(defaults or {}), dict(notes or {})
    hints = typing.get_type_hints(DecodeConfig)
    group = parser.add_argument_group("decoding (default: the run's recipe, section decode)")
    for f in dataclasses.fields(DecodeConfig):
        if f.name in exclude:
            continue
        default = defaults.get(f.name)
        where = notes.get(f.name) or (f"default {default}" if default is not None
                                      else f"default: the recipe's decode.{f.name}")
        text = f"{f.metadata['help']} ({where})"
        if hints[f.name] is bool:  # --sample / --no-sample; left out: the recipe's value
            group.add_argument(decode_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=default, help=text)
        elif typing.get_origin(hints[f.name]) is typing.Literal:  # --precision
            group.add_argument(decode_flag(f.name), dest=f.name, choices=typing.get_args(hints[f.name]),
                               default=default, metavar=f.metadata.get("metavar"), help=text)
        elif typing.get_origin(hints[f.name]) is typing.Union:  # --inter-threads N|auto: checked by the schema
            group.add_argument(decode_flag(f.name), dest=f.name, type=_integer_or_word, default=default,
                               metavar=f.metadata.get("metavar"), help=text)
        else:
            group.add_argument(decode_flag(f.name), dest=f.name, type=hints[f.name], default=default,
                               metavar=f.metadata.get("metavar"), help=text)
    group.add_argument("--greedy", action="store_true", help="greedy search (the same as --beam 1)")


def _integer_or_word(text: str) -> int | str:
    """A command-line value of an ``int | word`` setting as the recipe's YAML would read it."""
    try:
        return int(text)
    except ValueError:
        return text


def decode_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The decode settings given on the command line (options left out are not included), checked
    on their own: an out-of-range value fails here, naming its option, before a run is loaded."""
    given = vars(args)
    values = {f.name: given[f.name] for f in dataclasses.fields(DecodeConfig)
              if given.get(f.name) is not None}
    if args.greedy:
        if values.get("beam", 1) != 1:
            raise ConfigError(f"--greedy means beam 1, but --beam {values['beam']} was also given; "
                              "give one of them", what="decode settings")
        values["beam"] = 1
    DecodeConfig().updated(values, label=decode_flag_label)
    return values
