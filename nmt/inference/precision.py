"""Copies of a trained model for faster inference: bfloat16 weights, or int8 dynamic quantization.

Both return a model in eval mode; the model given is left as it is (bf16 copies it, int8 is
``torch.ao.quantization.quantize_dynamic``, which copies too). :func:`for_inference` is what
:class:`~nmt.inference.translator.Translator` applies.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from nmt.errors import NmtError

#: the ``precision`` values a Translator accepts
PRECISIONS = ("float32", "bf16")


def linear_weights_to_bf16(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Linear layers hold bfloat16 weights, for search under bf16 autocast.

    Autocast caches the bf16 copies of weights only while autograd records (leaf tensors that
    require grad); under ``torch.inference_mode`` it casts every Linear weight again at every call.
    In search that is the output layer (vocabulary × hidden) once per step, a large
    share of beam search's CPU time (docs/performance.md). Autocast would cast these weights to bfloat16 for
    the GEMM anyway, so the search computes the same numbers.
    """
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.dtype == torch.float32:
            module.to(torch.bfloat16)
    # the decoder's GRU weights too: search runs them through F.linear (nmt.model.decoder.gru_cell), and
    # nn.GRU under CPU autocast accepts bf16 weights for teacher forcing (it computes in float32)
    model.decoder.rnn.to(torch.bfloat16)
    return model.eval()


def quantize_int8(model: nn.Module) -> nn.Module:
    """Linear layers as int8 with dynamic activation quantization (CPU only).

    The GRU weights (used by the decoder's own cell) stay float. ``torch.ao.quantization`` is
    deprecated in favour of torchao, but still works and needs nothing else installed.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8).eval()


def check_precision(precision: str, quantize: bool, device: torch.device) -> None:
    """Refuse the combinations that cannot run, naming the options."""
    if precision not in PRECISIONS:
        raise NmtError(f"precision {precision!r}: choose {' or '.join(PRECISIONS)}")
    if precision == "bf16" and quantize:
        raise NmtError("--precision bf16 and --quantize do not combine; choose one")
    if quantize and device.type != "cpu":
        raise NmtError(f"--quantize (int8 dynamic quantization) runs on the CPU only, not on {device}")


def for_inference(model: nn.Module, precision: str = "float32", quantize: bool = False) -> nn.Module:
    """``model`` in eval mode as inference runs it: as it is (float32), int8, or with bf16 weights."""
    model = model.eval()
    if quantize:
        return quantize_int8(model)
    if precision == "bf16":
        return linear_weights_to_bf16(model)
    return model
