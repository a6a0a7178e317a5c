"""What runs the model for ``nmt serve``: one batch of sentences in, JSON-ready answers out.

:func:`run_groups` is the model call of one batch, already grouped by model and search options.
It runs either on the HTTP process's model thread (``--workers 0``) or in a model worker process
(:func:`worker_main`, started by :mod:`nmt.tools.serve_pool`). Both its input and its output are
plain data (strings, numbers, lists, dicts), so they cross a pipe unchanged and the answer does
not depend on where it was computed.

A model worker process (:func:`worker_main`) answers each call ``(call_id, groups)`` with
``(call_id, outcomes)``. By default it runs each call whole, one at a time. With continuous
batching (``nmt serve --continuous``) it runs several calls at once: the sentences of a call
whose search can join others (:func:`~nmt.inference.continuous.joinable`: beam search without
attention, alignments, constraints, markup or sampling) join the beam search under way for their
model and options (:class:`~nmt.inference.continuous.ContinuousTranslation`) at its next step;
other groups run whole when they arrive. Each call is answered, by its id, the moment its last
sentence is done, so a short call overtakes a long one, and each of its sentences done before
the last is answered at once, as ``("sentences", [(call_id, group, index, answer), ...])``
(None in place of its answer in the call's outcomes) (:class:`WorkerLoop`).

A group is ``{"model": name, "texts": [...], "options": {...}, "attention": bool, "alignment":
bool, "scores": [bool per text], "constraints": [terms or None per text] or None}``; its outcome is
``{"results": [answer per text]}``, or ``{"status": 422, "error": message}`` for options the
translator refuses, or ``{"status": 500, "error": traceback}`` for a bug.
"""
from __future__ import annotations

import os
import signal
import traceback
from dataclasses import dataclass, field
from typing import Any, Mapping

from nmt.errors import NmtError

__all__ = ["run_groups", "result_json", "set_threads", "worker_main", "WorkerLoop", "JOIN_WAIT_STEPS"]

#: a sentence waits at most this many steps of the search under way before it joins; sooner when
#: as many sentences wait as are under way (each join encodes its sentences in one call)
JOIN_WAIT_STEPS = 6
#: ... and at least this many wait
JOIN_AT = 16
#: searches kept for options that have nothing under way
KEEP_IDLE = 8


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

def worker_main(conn, models: list[tuple[str, dict[str, Any]]], threads: int | None, parent: int,
                joins: bool = False) -> None:
    """A model worker process: load every served run once (``models``: ``(name, options of
    build_translator)``), say ``("ready", pid, {"joins": joins})`` (or ``("failed", message)``),
    then answer each call ``(call_id, groups)`` received on ``conn`` with ``(call_id, outcomes)``
    (:class:`WorkerLoop`; ``joins``: its sentences join the searches under way, else each call
    runs whole, one at a time), until ``None`` or the pipe's end.

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
    conn.send(("ready", os.getpid(), {"joins": joins}))
    WorkerLoop(translators, conn, joins).run()


@dataclass
class _Call:
    ident: Any
    groups: list[dict[str, Any]]
    outcomes: list[Any]  #: per group, None until known
    left: int = 0  #: sentences of joined groups not answered yet


@dataclass
class _Joining:
    """The search under way for one model and one set of options, and the sentences waiting to join it."""

    translation: Any  #: ContinuousTranslation
    waiting: list[tuple[Any, str]] = field(default_factory=list)  #: (ticket, text)
    waited: int = 0  #: steps the first waiting sentence has waited


class WorkerLoop:
    """Calls in, answers out, on ``conn`` (see the module's docstring). Between two steps of the
    searches under way it reads the calls that arrived; a group that cannot join runs whole then.
    Waiting sentences join at once when nothing is under way, else when as many wait as are under
    way (at least :data:`JOIN_AT`) or after :data:`JOIN_WAIT_STEPS` steps."""

    def __init__(self, translators: Mapping[str, Any], conn, joins: bool = True):
        self.translators, self.conn, self.joins = translators, conn, joins
        self.joining: dict[tuple, _Joining] = {}
        self.calls: dict[Any, _Call] = {}

    def run(self) -> None:
        while True:
            busy = any(j.translation.running or j.waiting for j in self.joining.values())
            try:
                if not busy or self.conn.poll(0):
                    message = self.conn.recv()
                    if message is None:
                        return
                    self.accept(*message)
                    continue
            except (EOFError, OSError):
                return  # the server is gone
            self.step()

    def accept(self, ident, groups: list[dict[str, Any]]) -> None:
        """A call: its joinable groups' sentences wait to join, the others run now."""
        call = _Call(ident, groups, [None] * len(groups))
        self.calls[ident] = call
        for g, group in enumerate(groups):
            joining = self._joining(group)
            if joining is None:
                call.outcomes[g] = _run_group(self.translators[group["model"]], group)
                continue
            call.outcomes[g] = {"results": [None] * len(group["texts"])}
            call.left += len(group["texts"])
            joining.waiting += [((ident, g, k), text) for k, text in enumerate(group["texts"])]
        self._answer_if_done(call)

    def step(self) -> None:
        """Joins the sentences whose time has come, then one step of every search under way."""
        for key, joining in list(self.joining.items()):
            under_way = joining.translation.sentences
            if joining.waiting and (not under_way or len(joining.waiting) >= max(JOIN_AT, under_way)
                                    or joining.waited >= JOIN_WAIT_STEPS):
                waiting, joining.waiting, joining.waited = joining.waiting, [], 0
                tickets = [w for w, _ in waiting]
                if not self._run(key, lambda t: t.add([text for _, text in waiting], tickets), tickets):
                    continue
            elif joining.waiting:
                joining.waited += 1
            if joining.translation.running:
                self._run(key, lambda t: t.step())
        if len(self.joining) > KEEP_IDLE:  # searches of options no longer asked for
            for key in [k for k, j in self.joining.items() if not (j.translation.running or j.waiting)]:
                del self.joining[key]

    def _run(self, key, work, tickets=()) -> bool:
        """``work(translation)``'s finished texts answered. A failure (a bug) fails every call
        with a sentence in this search (500) and drops the search; False then."""
        joining = self.joining[key]
        try:
            finished = work(joining.translation)
        except Exception:  # noqa: BLE001 - the worker goes on
            error = {"status": 500, "error": traceback.format_exc()}
            for ident in {t[0] for t in (*tickets, *joining.translation.texts, *(t for t, _ in joining.waiting))}:
                call = self.calls.get(ident)
                if call is not None:  # its groups still under way fail with it
                    call.outcomes = [error if "results" in o and None in o["results"] else o for o in call.outcomes]
                    call.left = 0
                    self._answer_if_done(call)
            del self.joining[key]
            return False
        answers, ended = [], []
        for (ident, g, k), result in finished:
            call = self.calls.get(ident)
            if call is None:  # failed in another search
                continue
            answer = result_json(result, None, scores=call.groups[g]["scores"][k])
            call.left -= 1
            if call.left == 0:  # the call's answer carries it
                call.outcomes[g]["results"][k] = answer
                ended.append(call)
            else:  # answered now; None in the call's answer
                answers.append((ident, g, k, answer))
        if answers:  # before any call's end: the server forgets a call once it has ended
            self.conn.send(("sentences", answers))
        for call in ended:
            self._answer_if_done(call)
        return True

    def _joining(self, group: dict[str, Any]) -> _Joining | None:
        """The search this group's sentences join; None when they cannot join one."""
        if not self.joins:
            return None
        translator = self.translators[group["model"]]
        options = dict(group["options"])
        key = (group["model"], group["attention"], group["alignment"], bool(group.get("constraints")),
               tuple(sorted(options.items())))
        if key in self.joining:
            return self.joining[key]
        # a torch model (the ONNX engine's worker has no torch to import)
        if group.get("constraints") or not hasattr(getattr(translator, "model", None), "step_readout"):
            return None
        from nmt.inference.continuous import ContinuousTranslation, joinable

        markup = options.pop("markup", None) is not None
        try:
            decode = translator.decode_options(options.pop("beam", None), options.pop("n_best", 1), **options)
        except (NmtError, TypeError):
            return None  # run whole: its error is the translator's to give
        if not joinable(decode, attention=group["attention"], alignment=group["alignment"], markup=markup):
            return None
        try:
            translation = ContinuousTranslation(translator, decode)
        except Exception:  # noqa: BLE001 - run whole, where the error is reported
            return None
        self.joining[key] = _Joining(translation)
        return self.joining[key]

    def _answer_if_done(self, call: _Call) -> None:
        if call.left == 0 and all(o is not None for o in call.outcomes):
            del self.calls[call.ident]
            self.conn.send((call.ident, call.outcomes))


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
