"""What runs the model for ``nmt serve``: one batch of sentences in, JSON-ready answers out.

:func:`run_groups` is the model call of one batch, already grouped by model and search options.
It runs either on the HTTP process's model thread (``--workers 0``) or in a model worker process
(:func:`worker_main`, started by :mod:`nmt.tools.serve_pool`). Both its input and its output are
plain data (strings, numbers, lists, dicts), so they cross a pipe unchanged and the answer does
not depend on where it was computed.

A group is ``{"model": name, "texts": [...], "options": {...}, "attention": bool, "alignment":
bool, "scores": [bool per text], "constraints": [terms or None per text] or None}``; its outcome is
``{"results": [answer per text]}``, or ``{"status": 422, "error": message}`` for options the
translator refuses, or ``{"status": 500, "error": traceback}`` for a bug.
"""
from __future__ import annotations

import os
import signal
import traceback
from typing import Any, Mapping

from nmt.errors import NmtError

__all__ = ["run_groups", "result_json", "set_threads", "worker_main"]


def run_groups(translators: Mapping[str, Any], groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``translate`` call per group (see the module's docstring); a failing group fails alone."""
    return [_run_group(translators[g["model"]], g) for g in groups]


def _run_group(translator, group: dict[str, Any]) -> dict[str, Any]:
    texts = group["texts"]
    terms = group.get("constraints")
    extra = {"constraints": terms} if terms and any(terms) else {}
    try:
        results = translator.translate(texts, return_scores=True, return_attention=group["attention"],
                                       return_alignment=group["alignment"], **group["options"], **extra)
        self_att = [None] * len(texts)
        if group["attention"] and _has_self_attention(translator):
            self_att = [translator.encoder_self_attention(t) for t in texts]
        return {"results": [result_json(r, sa, scores=s, attention=group["attention"],
                                        alignment=group["alignment"])
                            for r, sa, s in zip(results, self_att, group["scores"])]}
    except NmtError as exc:  # options the translator refuses: the caller's to fix
        return {"status": 422, "error": str(exc)}
    except Exception:  # a bug: the server answers 500 and logs this
        return {"status": 500, "error": traceback.format_exc()}


def _has_self_attention(translator) -> bool:
    return bool(translator.recipe.model.encoder.self_attention_layers)


def _floats(values, digits: int | None = None) -> list:
    if values is None:
        return None
    data = values.tolist() if hasattr(values, "tolist") else list(values)
    if digits is None:
        return data

    def rnd(x):
        return [rnd(v) for v in x] if isinstance(x, list) else round(float(x), digits)

    return rnd(data)


def result_json(result, self_attention, *, scores: bool = True, attention: bool = False,
                alignment: bool = False) -> dict[str, Any]:
    """One text's answer: JSON-ready (tensors become nested lists)."""
    hyps = []
    src_tokens: list[str] = []
    for h in result.hypotheses:
        src_tokens = src_tokens or list(h.src_tokens)
        entry: dict[str, Any] = {"text": h.text, "tokens": list(h.tokens)}
        if scores:
            entry["score"] = float(h.score)
            entry["log_prob"] = float(h.raw_score)
            entry["token_log_probs"] = [float(x) for x in h.token_log_probs]
        if attention:
            entry["attention"] = _floats(h.attention, 5)
            entry["positions"] = _floats(h.positions, 4)
        if alignment:
            entry["alignment"] = [list(pair) for pair in h.alignment]
        if h.constraints_met is not None:
            entry["constraints_met"] = bool(h.constraints_met)
        if getattr(h, "constraint_spans", None) is not None:
            entry["constraint_spans"] = [span.as_json() for span in h.constraint_spans]
        hyps.append(entry)
    out: dict[str, Any] = {"source": result.source, "text": result.text, "hypotheses": hyps}
    if attention:
        out["src_tokens"] = src_tokens
        out["self_attention"] = _floats(self_attention, 5)
    return out


# ------------------------------------------------------------------------------ worker process

def worker_main(conn, models: list[tuple[str, dict[str, Any]]], threads: int | None, parent: int) -> None:
    """A model worker process: load every served run once (``models``: ``(name, options of
    build_translator)``), say ``("ready", pid)`` (or ``("failed", message)``), then answer each
    list of groups received on ``conn`` with its outcomes, until ``None`` or the pipe's end.

    It ends with its parent however that ends (``kill -9`` included): the parent-death check of
    :func:`~nmt.tools.orphans.die_with_parent`, and the pipe's end-of-file.
    """
    from nmt.tools.orphans import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the server stops us
    die_with_parent(parent)
    try:
        translators = _load(models, threads)
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the server must hear it
        conn.send(("failed", str(exc) if isinstance(exc, NmtError) else traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            groups = conn.recv()
        except (EOFError, OSError):
            return  # the server is gone
        if groups is None:
            return
        conn.send(run_groups(translators, groups))


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads of the calling thread (OpenMP settings are per thread); None leaves
    them, and torch unimported: the ONNX engine's threads come in its options."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _load(models: list[tuple[str, dict[str, Any]]], threads: int | None) -> dict[str, Any]:
    from nmt.tools.serve_model import build_translator

    set_threads(threads)
    translators = {}
    for name, options in models:
        translator = build_translator(options)
        warn = getattr(translator, "warn", None)
        if warn is not None and hasattr(warn, "prefix"):
            warn.prefix = f"nmt serve [{name}]"
        translators[name] = translator
    return translators
