"""``train.precision: auto``: bf16 autocast where the device computes bf16 natively, float32 elsewhere;
``train.softmax: auto``: the softmax over part of the vocabulary where training runs in float32 on a CPU.

bf16 autocast pays on a GPU with bf16 and on a CPU with bf16 instructions (AVX-512 BF16 or AMX).
On a CPU without them its products run emulated: a training step of the fr-en recipe ran 2.2×
slower than float32 with AVX-512 but no BF16, and 27× slower with AVX2 only (docs/performance.md,
"Training on a CPU without bf16 instructions"). ``auto`` decides from the hardware, not from
timings, so a machine always trains a recipe the same way; and a resumed run keeps the mode its
recipe.yaml recorded (:func:`resolve_precision`), so resuming equals training without a stop.
``train.softmax: auto`` follows the precision chosen (:func:`resolve_softmax`), and is kept on
resume the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nmt.inference.precision_auto import bf16_instructions

__all__ = ["Decision", "resolve_precision", "resolve_softmax", "softmax_hint", "EMULATED_NOTE"]

#: why bf16 is not taken (or is slow) on a CPU without bf16 instructions
EMULATED_NOTE = ("the CPU has no bf16 instructions (avx512_bf16, amx_bf16): bf16 products run emulated, "
                 "2-27x slower than float32 (docs/performance.md)")


@dataclass(frozen=True)
class Decision:
    mode: str  #: the setting's value: no | bf16 | fp16 for the precision, full | batch for the softmax
    note: str = ""  #: said in the log: why ``auto`` chose ``mode``
    warning: str = ""  #: said as a warning: a mode asked for that runs slowly here


def resolve_precision(requested: str, device: str, saved: str | None = None,
                      cpuinfo: str | None = None) -> Decision:
    """The training precision for ``requested`` (``train.precision``) on ``device`` (``cpu``,
    ``cuda``, ...). ``saved``: the precision of the run being resumed (its recipe.yaml), which
    ``auto`` keeps. ``cpuinfo``: /proc/cpuinfo's text (tests)."""
    if requested != "auto":
        if requested == "bf16" and device == "cpu" and bf16_instructions(cpuinfo) is False:
            return Decision(requested, warning=f"train.precision is bf16, but {EMULATED_NOTE}; "
                                               "set train.precision: auto (or no)")
        return Decision(requested)
    if saved not in (None, "auto"):
        return Decision(saved, note=f"train.precision auto: {saved}, as the run was started")
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return Decision("bf16", note="train.precision auto: bf16 (the GPU computes bf16)")
        return Decision("no", note="train.precision auto: no (the GPU has no bf16)")
    if device == "cpu":
        native = bf16_instructions(cpuinfo)
        if native:
            return Decision("bf16", note="train.precision auto: bf16 (the CPU has bf16 instructions)")
        why = EMULATED_NOTE if native is False else "this system does not say whether the CPU has bf16 instructions"
        return Decision("no", note=f"train.precision auto: no ({why})")
    return Decision("no", note=f"train.precision auto: no (bf16 is not chosen on {device})")


def _subset_pays(mode: str, device: str) -> bool:
    """Whether the softmax over part of the vocabulary is worth its cost: in float32 (``mode``
    ``no``) on a CPU, where the output layer's three products are about half of each step."""
    return device == "cpu" and mode == "no"


def resolve_softmax(requested: str, mode: str, device: str, saved: str | None = None) -> Decision:
    """The training softmax for ``requested`` (``train.softmax``) when training runs in precision
    ``mode`` (:func:`resolve_precision`'s) on ``device``. ``auto``: ``batch`` where
    :func:`_subset_pays`; ``full`` elsewhere (bf16 products or a GPU make the output layer cheap,
    and the full softmax keeps the probabilities calibrated). ``saved``: the softmax of the run being resumed, which ``auto`` keeps."""
    if requested != "auto":
        return Decision(requested)
    if saved in ("full", "batch"):
        return Decision(saved, note=f"train.softmax auto: {saved}, as the run was started")
    if _subset_pays(mode, device):
        return Decision("batch", note="train.softmax auto: batch (float32 on a CPU, where the output layer is "
                                      "about half of each step; docs/training.md)")
    return Decision("full", note=f"train.softmax auto: full ({'float32' if mode == 'no' else mode} on {device})")


def softmax_hint(mode: str, softmax: str, device: str) -> str:
    """A note for training with the full softmax where :func:`_subset_pays`: ``train.softmax: batch``
    trains faster there (docs/training.md); empty elsewhere. Only said: the recipe decides what is
    trained."""
    if softmax != "full" or not _subset_pays(mode, device):
        return ""
    return ("training in float32 on a CPU with train.softmax: full, where the output layer is about half "
            "of each step: train.softmax: batch (a softmax over part of the vocabulary; auto takes it here) "
            "trained the fr-en recipe 1.4-1.5x faster in float32 on a CPU without bf16 instructions, and to "
            "a higher BLEU in the same 30 minutes (docs/training.md)")
