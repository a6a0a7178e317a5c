"""Copies of a trained model for faster inference: bfloat16 weights.

:func:`for_inference` is what :class:`~nmt.inference.translator.Translator` applies; the model
given is left as it is (bf16 copies it). int8 runs on the ONNX engine (``nmt export --quantize
int8``): the PyTorch engine's int8 dynamic quantization was slower than float32 here
(docs/performance.md), and ``torch.ao.quantization`` is deprecated.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from nmt.config import PRECISIONS as _SCHEMA_PRECISIONS
from nmt.errors import NmtError

#: the ``precision`` values a Translator accepts (``decode.precision``): ``auto`` measures which of
#: the others is faster (:mod:`nmt.inference.precision_auto`)
PRECISIONS = _SCHEMA_PRECISIONS

#: what ``quantize=True`` (int8 on the PyTorch engine, removed) now answers
QUANTIZE_REMOVED = ("quantize=True (int8 on the PyTorch engine) was removed: it was not faster than float32. "
                    "int8 runs on the ONNX engine (nmt export RUN_DIR -o EXPORT_DIR --quantize int8, then "
                    "OnnxTranslator.load(EXPORT_DIR)); precision='auto' picks bf16 where it is faster")


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


def check_precision(precision: str, quantize: bool = False) -> None:
    """Refuse what cannot run, naming the options."""
    if quantize:
        raise NmtError(QUANTIZE_REMOVED)
    if precision not in PRECISIONS:
        raise NmtError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}")


def for_inference(model: nn.Module, precision: str = "float32") -> nn.Module:
    """``model`` in eval mode as inference runs it: as it is (float32, or ``auto`` before it has
    chosen), or with bf16 weights."""
    model = model.eval()
    if precision == "bf16":
        return linear_weights_to_bf16(model)
    return model
