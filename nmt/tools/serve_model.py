"""The models ``nmt serve`` answers with: :func:`make_translator` builds one translator from the
command's options (the PyTorch engine on a run directory or an ensemble of runs, or the ONNX engine
on an ``nmt export`` directory), and :func:`load_models` turns the command's directories into the
named :class:`ServedModel` entries the server lists. A served model's options are plain data
(:func:`model_options`), so a model worker process (:mod:`nmt.tools.serve_worker`) builds the same
translator from them with :func:`build_translator`.

Nothing here imports torch at module level: with ``engine="onnx"`` the server runs on onnxruntime
and numpy only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from nmt.errors import NmtError
from nmt.tools.serve_requests import finite_or_null

__all__ = ["ENGINES", "ServedModel", "make_translator", "model_options",
           "build_translator", "calibration_sizes", "check_dirs", "load_models", "run_summary"]

ENGINES = ("torch", "onnx")


@dataclass
class ServedModel:
    name: str
    translator: Any  #: nmt.inference.translator.Translator or nmt.inference.onnx_translator.OnnxTranslator
    summary: dict[str, Any]
    has_lexicon: bool
    self_attention: bool  #: the answer can carry the encoder's self-attention (torch engine only)
    #: how to build the translator again (:func:`build_translator`): what a model worker process
    #: loads; None for a translator built otherwise (served on the thread only)
    options: dict[str, Any] | None = None


def make_translator(paths: Sequence[str | Path], *, engine: str = "torch", checkpoint: str = "best",
                    precision: str | None = None, threads: int | None = None):
    """One translator over ``paths``: one run directory, several (their ensemble: the mean of the
    runs' log-probabilities, as ``nmt translate RUN_A RUN_B`` decodes), or with ``engine="onnx"``
    one export directory. ``threads``: the ONNX engine's intra-op threads (the torch engine's are
    set on the thread that runs the model). ``precision`` None: the recipe's ``decode.precision``."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise NmtError("nmt serve needs at least one run directory")
    if engine == "onnx":
        if len(paths) > 1:
            raise NmtError(f"--engine onnx serves one export directory per model, got {len(paths)} for "
                           "one ensemble; ensembles run on the run directories with --engine torch")
        refused = [flag for flag, used in (("--checkpoint", checkpoint != "best"),
                                           ("--precision bf16", precision == "bf16")) if used]
        if refused:
            raise NmtError(f"{', '.join(refused)}: not available with --engine onnx (an export holds one "
                           "float32 model); serve the run directory with --engine torch instead")
        from nmt.inference.onnx_translator import OnnxTranslator

        return OnnxTranslator.load(paths[0], threads=threads)
    if engine != "torch":
        raise NmtError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    from nmt.inference.translator import Translator

    return Translator.load(paths if len(paths) > 1 else paths[0], checkpoint, device="cpu",
                           precision=precision)


def model_options(paths, checkpoint: str = "best", precision: str | None = None, *, engine: str = "torch",
                  threads: int | None = None) -> dict[str, Any]:
    """The arguments of :func:`make_translator` as a plain dict (picklable, JSON-able): ``paths``
    one directory or several (an ensemble)."""
    many = [str(p) for p in paths] if isinstance(paths, (list, tuple)) else [str(paths)]
    return {"paths": many, "engine": engine, "checkpoint": checkpoint, "precision": precision,
            "threads": threads}


def build_translator(options: Mapping[str, Any]):
    """The translator :func:`model_options` describes."""
    return make_translator(options["paths"], engine=options.get("engine", "torch"),
                           checkpoint=options.get("checkpoint", "best"),
                           precision=options.get("precision"), threads=options.get("threads"))


# ------------------------------------------------------------------------------------ summaries

def _test_bleu(run_dir: Path) -> dict[str, Any] | None:
    """The most recent ``nmt evaluate`` result on the test split, or None."""
    best = None
    for path in sorted((run_dir / "eval").glob("test.*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            score = float(record["scores"]["bleu"]["score"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an unreadable or foreign file: the summary simply has no BLEU from it
        # NaN or inf (a diverged run's evaluation) cannot go into JSON: null instead
        entry = finite_or_null({"bleu": round(score, 2), "beam": record.get("beam"),
                                "checkpoint": record.get("checkpoint"), "shortlist": record.get("shortlist"),
                                "file": f"eval/{path.name}", "timestamp": str(record.get("timestamp", ""))})
        if best is None or entry["timestamp"] >= best["timestamp"]:
            best = entry
    return best


def _parameters(translator) -> int | None:
    """The model's parameter count (None for an export: its graphs do not say it cheaply)."""
    model = translator.model
    return sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None


def run_summary(name: str, translator) -> dict[str, Any]:
    """What the page and ``GET /api/models`` say about a served run (or ensemble, or export)."""
    recipe = translator.recipe
    m = recipe.model
    att = m.attention
    local = att.kind == "local-p"
    export_dir = getattr(translator, "export_dir", None)
    run_dir = Path(translator.run_dir) if getattr(translator, "run_dir", None) is not None else None
    members = [str(p) for p in getattr(translator, "run_dirs", [])]
    return {
        "name": name,
        "run_dir": str(run_dir or export_dir) if (run_dir or export_dir) else None,
        "engine": "onnx" if export_dir is not None else "torch",
        "ensemble": members if len(members) > 1 else None,
        "src_lang": recipe.data.src_lang,
        "tgt_lang": recipe.data.tgt_lang,
        "attention": att.kind,
        "attention_score": att.score if local else None,
        "window": att.window if local else None,
        "activation": m.activation,
        "embedding_dim": m.embedding_dim,
        "encoder": {"layers": m.encoder.layers, "hidden_size": m.encoder.hidden_size,
                    "bidirectional": m.encoder.bidirectional,
                    "self_attention_layers": m.encoder.self_attention_layers,
                    "self_attention_heads": m.encoder.self_attention_heads
                    if m.encoder.self_attention_layers else 0},
        "decoder": {"layers": m.decoder.layers, "hidden_size": m.decoder.hidden_size},
        "vocab": {"src": translator.tokenizers.src_vocab_size,
                  "tgt": translator.tokenizers.tgt_vocab_size},
        "parameters": _parameters(translator),
        "decode": {"beam": recipe.decode.beam, "length_penalty": recipe.decode.length_penalty,
                   "shortlist": recipe.decode.shortlist},
        "test_bleu": _test_bleu(run_dir) if run_dir and len(members) <= 1 else None,
    }


# --------------------------------------------------------------------------------------- models

def _model_names(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's directory name; runs that share a name are told apart by their parent."""
    names = [p.resolve().name or str(p) for p in run_dirs]
    return [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(run_dirs, names)]


def _has_lexicon(translator, paths: Sequence[Path]) -> bool:
    if getattr(translator, "export_dir", None) is not None:
        return translator.lexicon is not None
    from nmt.inference.shortlist import LEXICON_FILE

    return all((p / LEXICON_FILE).is_file() for p in paths)


def check_dirs(run_dirs: Sequence[str | Path], engine: str = "torch") -> list[Path]:
    """The directories as paths; a missing one is named with how to write it."""
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise NmtError("nmt serve needs at least one run directory")
    for path in paths:
        if not path.is_dir():
            what = "export directory" if engine == "onnx" else "run directory"
            how = "nmt export RUN_DIR -o EXPORT_DIR" if engine == "onnx" else "nmt train RECIPE"
            raise NmtError(f"{what} {path} not found (write one with: {how})")
    return paths


def calibration_sizes(batch_sentences: int | None) -> list[int | None]:
    """The call sizes ``auto`` is calibrated at for a server whose largest call holds
    ``batch_sentences`` sentences: an eighth of it and all of it. bf16 is taken only if it is
    faster at both: a server's calls range from one sentence to the largest, and bf16 can win on
    the largest and lose on the small ones (docs/performance.md, serving)."""
    if not batch_sentences or batch_sentences < 2:
        return [batch_sentences]
    return [max(1, batch_sentences // 8), batch_sentences]


def load_models(run_dirs: Sequence[str | Path], checkpoint: str = "best", precision: str | None = None, *,
                engine: str = "torch", ensemble: bool = False, threads: int | None = None,
                model_threads: int | None = None, batch_sentences: int | None = None) -> list[ServedModel]:
    """The served models: one per directory, side by side, or with ``ensemble`` one model, the
    ensemble of all the runs (named ``A+B``). ``threads``: see :func:`make_translator`.

    ``precision`` None: each recipe's ``decode.precision``; ``auto`` is resolved here, before the
    first request, at ``model_threads`` torch threads (those the model will run with) on the call
    sizes of :func:`calibration_sizes` (``batch_sentences``: the server's largest call), and the
    mode chosen goes into the model's options, so every worker process loads that mode."""
    paths = check_dirs(run_dirs, engine)
    if ensemble and engine == "onnx":
        raise NmtError("--ensemble: an export is one model, and --engine onnx serves one export directory "
                       "per model; ensembles run on the run directories with --engine torch")
    names = _model_names(paths)
    if len(set(names)) != len(names):
        raise NmtError(f"run directories {', '.join(map(str, paths))} do not have distinct names; "
                       "serve each run once")
    groups = [("+".join(names), paths)] if ensemble and len(paths) > 1 else \
        [(name, [path]) for name, path in zip(names, paths)]
    models = []
    for name, members in groups:
        options = model_options(members, checkpoint, precision, engine=engine, threads=threads)
        translator = build_translator(options)
        if hasattr(translator, "resolve_precision"):  # the torch engine
            from nmt.tools.decoding import settle_precision

            settle_precision(translator, translator.decode, threads=model_threads,
                             batch_sentences=calibration_sizes(batch_sentences))
            options["precision"] = translator.precision
        warn = getattr(translator, "warn", None)
        if warn is not None and hasattr(warn, "prefix"):
            warn.prefix = f"nmt serve [{name}]"
        models.append(ServedModel(
            name=name, translator=translator, summary=run_summary(name, translator),
            has_lexicon=_has_lexicon(translator, members),
            self_attention=bool(translator.recipe.model.encoder.self_attention_layers)
            and hasattr(translator, "encoder_self_attention"), options=options))
    return models
