"""The decode settings of one command: the run's ``decode`` section with the command-line flags
over it (:func:`apply_settings`), handed to the translator explicitly on every call
(:func:`call_options`); the recipe the translator loaded is never changed."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from nmt.config import DecodeConfig, decode_flag_label
from nmt.errors import ConfigError

#: the decode settings that only sampling reads
SAMPLING_ONLY = ("temperature", "top_k", "top_p", "seed")


def apply_settings(translator, given: Mapping[str, Any] | None,
                   label: Callable[[str], str] | None = decode_flag_label) -> DecodeConfig:
    """The translator's default settings (its recipe's ``decode`` section) with ``given`` over
    them, checked, and made the translator's defaults, so that what reads them outside a search
    call (the input-length limit when encoding) follows the command line too; the translator's
    recipe stays as loaded. Problems name each setting as ``label(field)`` (by default its
    command-line option; ``None``: the field). A sampling setting given while the result does not
    sample is refused: it would be silently ignored."""
    options = translator.decode.updated(given, label=label)
    unused = [name for name in SAMPLING_ONLY if (given or {}).get(name) is not None]
    if unused and not options.sample:
        named = ", ".join((label or str)(name) for name in unused)
        raise ConfigError(f"{named} only apply to sampling, which is off: add --sample (decode.sample: "
                          "true) to sample, or leave them out", what="decode settings")
    translator.decode = options
    return options


def call_options(options: DecodeConfig, **changes: Any) -> dict[str, Any]:
    """``options`` (with ``changes``) as keyword arguments of ``translate`` / ``decode_options``:
    every setting given, so the translator's own defaults play no part."""
    return {**dataclasses.asdict(options), **changes}



def settle_precision(translator, options: DecodeConfig, verbose: bool = False, world: int = 1,
                     main: bool = True, threads: int | None = None,
                     batch_sentences: int | list[int | None] | None = None) -> None:
    """Resolve ``precision: auto`` before the first search (the main process's choice holds in
    every process of a distributed job: their outputs are one translation); ``verbose``: say which
    mode and why on stderr. ``threads``: the torch threads the searches will run with, when they
    differ from this thread's (model worker processes): the calibration is timed at that count.
    ``batch_sentences``: the sentences per batch the searches will run (the server's call sizes:
    bf16 only if it wins at each), when ``options.batch_tokens`` does not make the batches."""
    import sys

    if getattr(translator, "precision", None) != "auto":
        return
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if world > 1:
            from accelerate.utils import broadcast_object_list

            made = [translator.resolve_precision(options, batch_sentences=batch_sentences) if main else None]
            broadcast_object_list(made, from_process=0)
            translator.resolve_precision(options, choice=made[0])
        choice = translator.resolve_precision(options, batch_sentences=batch_sentences)
    finally:
        torch.set_num_threads(before)
    if verbose and main and choice is not None:
        print(f"nmt translate: {choice.describe()}", file=sys.stderr, flush=True)
