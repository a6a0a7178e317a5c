"""The decode settings of one command: the run's ``decode`` section with the command-line flags
over it (:func:`settings_for`), handed to the translator explicitly on every call
(:func:`call_options`); the recipe the translator loaded is never changed."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from nmt.config import DecodeConfig, decode_flag_label


def settings_for(translator, given: Mapping[str, Any] | None,
                 label: Callable[[str], str] | None = decode_flag_label) -> DecodeConfig:
    """The translator's recipe ``decode`` section with ``given`` over it, checked; problems name
    each setting as ``label(field)`` (by default its command-line option; ``None``: the field)."""
    return translator.recipe.decode.updated(given, label=label)


def call_options(options: DecodeConfig, **changes: Any) -> dict[str, Any]:
    """``options`` (with ``changes``) as keyword arguments of ``translate`` / ``decode_options``:
    every setting given, so the translator's own defaults play no part."""
    return {**dataclasses.asdict(options), **changes}


def truncate_inputs_at(translator, options: DecodeConfig) -> None:
    """Make the translator truncate inputs at ``options.max_input_len``.

    The translators' ``encode`` reads the limit from their recipe and takes none of its own, so a
    limit other than the run's is given through a new recipe object (the loaded one is unchanged).
    """
    recipe = translator.recipe
    if options.max_input_len != recipe.decode.max_input_len:
        decode = dataclasses.replace(recipe.decode, max_input_len=options.max_input_len)
        translator.recipe = dataclasses.replace(recipe, decode=decode)
