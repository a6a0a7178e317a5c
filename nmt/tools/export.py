"""``nmt export``: a trained run as ONNX graphs that translate without PyTorch.

An export directory holds everything :class:`~nmt.inference.onnx_translator.OnnxTranslator` needs::

    encoder.onnx        src ids (B, S), lengths (B,) -> the decoder's initial state and the
                        attention memory (encoder states, mask, key projection), as model.start
                        gives them
    decoder_step.onnx   previous ids (N,), state, memory -> log-probabilities (N, V) over the
                        target vocabulary, the next state, attention weights (N, S) [and local-p's
                        predicted positions (N,)]
    decoder_step_shortlist.onnx   the same step with target ids ``columns (L,)`` as one more
                        input, scoring only them: logits (N, L) of the output layer's rows
                        ``columns`` (a lexical shortlist), not normalised
    spm.src.model spm.tgt.model   the run's sentencepiece models
    export.json         the graphs' input and output names, the run's recipe (model and decode
                        settings: the translator's defaults), the vocabulary sizes and the
                        checkpoint's metadata

The graphs are traced from the model's plain per-step entry points (``Seq2Seq.encode``,
``Seq2Seq.start``, ``Seq2Seq.step_logits``) in float32 without autograd, so they compute the same
equations as the PyTorch model whatever the attention kind (Bahdanau, Luong dot / general /
concat, local-p, encoder self-attention layers), with dynamic batch and source-length axes. The
state and memory are passed through the graphs field by field (named ``state.<field>`` and
``memory.<field>``), so the exporter does not depend on which tensors a decoder keeps.

Search (greedy and beam, the same code as :mod:`nmt.inference.search`) runs in numpy outside the
graphs. A run's ``lexicon.safetensors`` (``nmt shortlist``) is copied beside the graphs, and the
export then decodes over the recipe's shortlist as the run does (without one, over the full
vocabulary); a shortlist runs the shortlist step: the output layer's product and its
normalisation cover the shortlist's few hundred rows instead of the vocabulary.

``nmt export --quantize int8`` rewrites both graphs with onnxruntime's dynamic int8 quantization
(:func:`quantize_graphs`; ``export.json`` says ``"quantize": "int8"``): its translations differ a
little from the float32 model's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import tempfile
import warnings
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmt.atomic import atomic_write_bytes, atomic_write_text, process_alive, refuse_link
from nmt.data.tokenizer import SRC_MODEL, TGT_MODEL
from nmt.errors import CheckpointError, NmtError
from nmt.inference.export_meta import FILE_KEYS, file_sha256
from nmt.inference.onnx_translator import (
    DECODER_FILE,
    DECODER_SHORTLIST_FILE,
    ENCODER_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    META_FILE,
)
from nmt.inference.shortlist import shortlist_output

#: ONNX opset of the exported graphs (17: LayerNormalization is one operator)
OPSET = 17

__all__ = ["export_run", "export_cli", "OPSET"]


#: ``nmt export --quantize``: None (float32 graphs) or int8
QUANTIZE = (None, "int8")

def _fields(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor fields of a state or memory dataclass that are set (None fields are not exported)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if isinstance(getattr(obj, f.name), torch.Tensor)}


class _EncoderGraph(nn.Module):
    """``src (B, S)``, ``src_lengths (B,)`` -> the initial decoder state's and the memory's tensors."""

    def __init__(self, model: nn.Module, state_names: list[str], memory_names: list[str]):
        super().__init__()
        self.model = model
        self.state_names, self.memory_names = state_names, memory_names

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor):
        mask = torch.arange(src.size(1), device=src.device).unsqueeze(0) < src_lengths.unsqueeze(1)
        state, memory = self.model.start(self.model.encode(src, src_lengths, mask))
        state_t, memory_t = _fields(state), _fields(memory)
        return tuple(state_t[n] for n in self.state_names) + tuple(memory_t[n] for n in self.memory_names)


class _StepGraph(nn.Module):
    """``prev_tokens (N,)``, state and memory tensors -> log-probs (N, V), next state, attention.

    ``columns``: the shortlist step, whose second input is ``columns (L,)`` target ids and whose
    first output is the logits (N, L) of those rows of the output layer, not normalised (search
    normalises each row over its sentence's own shortlist)."""

    def __init__(self, model: nn.Module, state: Any, memory: Any, with_positions: bool, columns: bool = False):
        super().__init__()
        self.model = model
        # templates: the step rebuilds the state and memory objects around the graph's inputs
        self.state, self.memory = state, memory
        self.state_names, self.memory_names = list(_fields(state)), list(_fields(memory))
        self.with_positions, self.columns = with_positions, columns

    def forward(self, prev_tokens: torch.Tensor, *tensors: torch.Tensor):
        output = None
        if self.columns:
            columns, tensors = tensors[0], tensors[1:]
            output = shortlist_output(self.model, columns)
        n = len(self.state_names)
        state = dataclasses.replace(self.state, **dict(zip(self.state_names, tensors[:n])))
        memory = dataclasses.replace(self.memory, **dict(zip(self.memory_names, tensors[n:])))
        # plain memory: the plain step
        logits, out = self.model.step_logits(prev_tokens, state, memory, output=output)
        scores = logits.float() if self.columns else torch.log_softmax(logits.float(), dim=-1)
        new_state = _fields(out.state)
        outputs = (scores,) + tuple(new_state[name] for name in self.state_names) + (out.attention.float(),)
        if self.with_positions:
            outputs += (out.positions.float(),)
        return outputs


@contextlib.contextmanager
def _native_warnings_filtered(known: tuple[str, ...]):
    """Drop the C++ exporter's lines on stderr that contain one of ``known``; pass the rest on.

    The exporter warns that it cannot infer the shapes of packed sequences; the graphs' shapes
    are dynamic anyway (the tests run them at other batch sizes and lengths), so the warning only
    alarms users.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not any(text in line for text in known)]
            sys.stderr.write("".join(kept))


def _onnx_bytes(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
                dynamic_axes: dict[str, dict[int, str]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), _native_warnings_filtered(("prim::PackPadded", "prim::PadPacked")):
        # the TorchScript-based exporter: it traces nn.GRU over packed sequences into ONNX GRU
        # operators with per-row lengths (the torch.export-based one does not handle them)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=OPSET,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    return buffer.getvalue()


def _example_batch(src_vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sources of different lengths (padding included): the traced shapes are all generic."""
    from nmt.data.vocab import EOS_ID, N_SPECIAL, PAD_ID

    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 7, 3])
    src = torch.randint(N_SPECIAL, max(src_vocab_size, N_SPECIAL + 1), (3, 7), generator=gen)
    src[torch.arange(7).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD_ID
    src[torch.arange(3), lengths - 1] = EOS_ID
    return src, lengths


def export_model(model: nn.Module, out_dir: Path) -> dict[str, Any]:
    """Write ``encoder.onnx`` and ``decoder_step.onnx`` of ``model`` (eval mode, float32, CPU);
    returns the graphs' part of ``export.json``."""
    model = model.float().eval()
    with_positions = model.cfg.attention.kind == "local-p"
    src, lengths = _example_batch(model.src_vocab_size)
    with torch.no_grad():
        mask = torch.arange(src.size(1)).unsqueeze(0) < lengths.unsqueeze(1)
        state, memory = model.start(model.encode(src, lengths, mask))
    state_t, memory_t = _fields(state), _fields(memory)
    for name, tensor in {**state_t, **memory_t}.items():
        if tensor.size(0) != src.size(0):  # the search reorders every one of them by rows
            raise NmtError(f"the decoder's {name} is not per sentence (shape "
                           f"{tuple(tensor.shape)}); this model cannot be exported")
    state_names, memory_names = list(state_t), list(memory_t)
    state_in = [f"state.{n}" for n in state_names]
    memory_in = [f"memory.{n}" for n in memory_names]
    batch, rows = {0: "batch"}, {0: "rows"}

    def src_axes(first):  # memory tensors are (rows, src_len, ...) or (rows,)
        return {f"memory.{n}": ({**first, 1: "src_len"} if t.dim() > 1 else dict(first))
                for n, t in memory_t.items()}

    encoder = _EncoderGraph(model, state_names, memory_names)
    enc_axes = {"src": {0: "batch", 1: "src_len"}, "src_lengths": batch,
                **{n: dict(batch) for n in state_in}, **src_axes(batch)}
    with torch.no_grad():
        encoder_onnx = _onnx_bytes(encoder, (src, lengths), ["src", "src_lengths"], state_in + memory_in,
                                   enc_axes)

    step = _StepGraph(model, state, memory, with_positions)
    prev = torch.full((src.size(0),), 2, dtype=torch.long)  # BOS
    outputs = ["log_probs"] + [f"next.{n}" for n in state_names] + ["attention"] \
        + (["positions"] if with_positions else [])
    step_axes = {"prev_tokens": rows, "log_probs": rows, "attention": {0: "rows", 1: "src_len"},
                 **{n: dict(rows) for n in state_in}, **{f"next.{n}": dict(rows) for n in state_names},
                 **src_axes(rows)}
    if with_positions:
        step_axes["positions"] = dict(rows)
    with torch.no_grad():
        step_onnx = _onnx_bytes(step, (prev, *state_t.values(), *memory_t.values()),
                                ["prev_tokens"] + state_in + memory_in, outputs, step_axes)
    shortlist_step = _StepGraph(model, state, memory, with_positions, columns=True)
    columns = torch.tensor([0, 1, 2, 3, model.tgt_vocab_size - 1])  # any ids: the axis is dynamic
    shortlist_axes = {**step_axes, "columns": {0: "columns"}, "logits": {0: "rows", 1: "columns"}}
    del shortlist_axes["log_probs"]
    with torch.no_grad():
        shortlist_onnx = _onnx_bytes(shortlist_step, (prev, columns, *state_t.values(), *memory_t.values()),
                                     ["prev_tokens", "columns"] + state_in + memory_in, ["logits"] + outputs[1:],
                                     shortlist_axes)
    atomic_write_bytes(out_dir / ENCODER_FILE, encoder_onnx)
    atomic_write_bytes(out_dir / DECODER_FILE, step_onnx)
    atomic_write_bytes(out_dir / DECODER_SHORTLIST_FILE, shortlist_onnx)
    return {"state": state_names, "memory": memory_names, "positions": with_positions, "opset": OPSET,
            "decoder_step_shortlist": DECODER_SHORTLIST_FILE}


def _export_lexicon(run_dir: Path, out: Path) -> dict[str, str]:
    """Copy the run's lexicon (``nmt shortlist``), if it has one, beside the graphs: the ONNX
    translator decodes over the recipe's shortlist with it (``shortlist=K`` in a call changes K);
    and its table of names (:mod:`nmt.inference.names`)."""
    from nmt.inference.names import NAMES_FILE
    from nmt.inference.shortlist import LEXICON_FILE

    if not (run_dir / LEXICON_FILE).is_file():
        return {}
    atomic_write_bytes(out / LEXICON_FILE, (run_dir / LEXICON_FILE).read_bytes())
    if (run_dir / NAMES_FILE).is_file():  # written with the lexicon: the names to carry over
        atomic_write_bytes(out / NAMES_FILE, (run_dir / NAMES_FILE).read_bytes())
        return {"lexicon": LEXICON_FILE, "names": NAMES_FILE}
    return {"lexicon": LEXICON_FILE}


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, checkpoint: str = "best",
               quantize: str | None = None) -> Path:
    """Export a run directory (``checkpoint``: best, last, avg or a weights file) to ``out_dir``,
    replacing a previous export there whole; ``quantize="int8"`` stores the graphs' weight
    matrices as int8 (:func:`quantize_graphs`)."""
    if quantize not in QUANTIZE:
        raise NmtError(f"--quantize {quantize!r}: choose {', '.join(q for q in QUANTIZE if q)}")
    from nmt.inference.checkpoint import checkpoint_path, load_run, load_run_recipe

    run_dir, out = Path(run_dir), Path(out_dir)
    load_run_recipe(run_dir)  # a missing directory or recipe is named first
    try:
        weights = checkpoint_path(run_dir, checkpoint)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} An export needs trained weights: train the run first "
                              "(`nmt train RECIPE`) or name a weights file with --checkpoint PATH") from None
    # the plain equations, not the CPU fast paths: the graphs must be what the model means
    recipe, tokenizers, model, metadata = load_run(run_dir, str(weights), kernels="reference")
    _check_destination(out)
    with _staging(out) as stage:
        _write_export(run_dir, stage, weights, recipe, tokenizers, model, metadata, quantize)
    return out


def quantize_graphs(out: Path) -> dict[str, Any]:
    """Rewrite the graphs in ``out`` with onnxruntime's dynamic int8 quantization: MatMul/Gemm
    weights stored as int8 (per tensor), activations quantized at run time; the export's part of
    ``export.json``. Measured speed and BLEU: docs/performance.md."""
    import logging

    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process the graph first: the graphs are already plain
    try:
        for name in (ENCODER_FILE, DECODER_FILE, DECODER_SHORTLIST_FILE):
            plain = out / f"{name}.float32"
            (out / name).rename(plain)
            quantize_dynamic(plain, out / name, weight_type=QuantType.QInt8)
            plain.unlink()
    finally:
        root.setLevel(level)
    return {"quantize": "int8", "quantized_by": {"onnxruntime": onnxruntime.__version__}}


def _write_export(run_dir: Path, out: Path, weights: Path, recipe, tokenizers, model, metadata,
                  quantize: str | None = None) -> None:
    """The files of an export, written into the (empty, staging) directory ``out``."""
    from nmt import __version__

    graphs = export_model(model, out)
    if quantize == "int8":
        graphs.update(quantize_graphs(out))
    for name in (SRC_MODEL, TGT_MODEL):
        atomic_write_bytes(out / name, (run_dir / name).read_bytes())
    # the export decodes as the run does: over the recipe's shortlist when the run has a lexicon
    # to copy, else over the full vocabulary
    shortlist = recipe.decode.shortlist
    lexicon = _export_lexicon(run_dir, out)
    if not lexicon:
        recipe.decode.shortlist = 0
    meta = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
        "encoder": ENCODER_FILE, "decoder_step": DECODER_FILE,
        "src_tokenizer": SRC_MODEL, "tgt_tokenizer": TGT_MODEL,
        **graphs,
        "src_vocab_size": tokenizers.src_vocab_size, "tgt_vocab_size": tokenizers.tgt_vocab_size,
        "recipe": recipe.to_dict(),
        "recipe_shortlist": shortlist,
        **lexicon,
        "checkpoint": {"file": str(weights), "metadata": metadata},
        "exported_by": {"nmt": __version__, "torch": torch.__version__},
    }
    # what the ONNX engine checks on loading: these files, not another export's
    meta["sha256"] = {meta[key]: file_sha256(out / meta[key]) for key in FILE_KEYS if meta.get(key)}
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2, default=str) + "\n")


def _check_destination(out: Path) -> None:
    """``out`` can be replaced by an export: missing, empty, or an export (never a link)."""
    refuse_link(out)
    if out.exists() and not out.is_dir():
        raise NmtError(f"{out} exists and is not a directory; give a directory name")
    if out.is_dir() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise NmtError(f"{out} is a directory that holds other files than an export (no {META_FILE}); "
                       "an export replaces its directory whole: give a new or empty directory")


@contextlib.contextmanager
def _staging(out: Path):
    """A new directory beside ``out`` to write the export into, swapped in whole when complete: an
    interrupted export (Ctrl-C, ``kill -9``) leaves the previous export as it was (or none), never
    one that mixes new and old files. Leftovers of an export that was killed are removed."""
    import secrets
    import shutil

    out = Path(os.path.abspath(out))  # "." or "exports/" have a name to stage beside
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(out)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    stage = out.with_name(f".{out.name}.{tag}.export")
    old = out.with_name(f".{out.name}.{tag}.old")
    stage.mkdir()
    try:
        yield stage
        if out.exists():
            os.rename(out, old)  # a crash from here to the next rename leaves the old one here
        os.rename(stage, out)
    finally:
        for leftover in (stage, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _remove_stale_stages(out: Path) -> None:
    """Remove the staging directories of exports into ``out`` whose process no longer runs; a
    previous export a kill left aside (between the two renames) is put back first."""
    import shutil

    for path in sorted(out.parent.glob(f".{glob_escape(out.name)}.*-*.*")):
        pid = path.name[len(out.name) + 2:].split("-", 1)[0]
        if not pid.isdigit() or process_alive(int(pid)) or path.suffix not in (".export", ".old"):
            continue
        if path.suffix == ".old" and not out.exists():
            os.rename(path, out)
            print(f"nmt export: put back {out}, the export an interrupted export had moved aside",
                  file=sys.stderr)
            continue
        shutil.rmtree(path, ignore_errors=True)
        print(f"nmt export: removed {path}, left by an interrupted export", file=sys.stderr)


def export_cli(args) -> int:
    """``nmt export RUN_DIR -o EXPORT_DIR [--checkpoint best|last|PATH]``."""
    if not args.output:
        raise NmtError("nmt export: give the export directory with -o EXPORT_DIR")
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise NmtError("nmt export needs the onnx package: pip install 'nmt[onnx]'") from None
    out = export_run(args.run_dir, args.output, args.checkpoint or "best", getattr(args, "quantize", None))
    meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    shortlist = meta.get("recipe_shortlist")
    if shortlist and meta.get("lexicon"):
        note = (f" (it decodes over the recipe's shortlist of {shortlist} with the run's lexicon, copied here, "
                "as the run does; --shortlist 0 scores the full vocabulary)")
    elif shortlist:
        note = (f" (the run has no lexicon, so the export scores the full vocabulary; for the recipe's "
                f"shortlist of {shortlist}: `nmt shortlist {args.run_dir}`, then export again)")
    else:
        note = ""
    int8 = " int8" if getattr(args, "quantize", None) else ""
    print(f"nmt export: wrote {out} ({ENCODER_FILE}, {DECODER_FILE}, {DECODER_SHORTLIST_FILE}{int8}, "
          f"{SRC_MODEL}, {TGT_MODEL}, "
          f"{META_FILE}){note}", file=sys.stderr)
    return 0
