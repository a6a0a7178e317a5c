"""``nmt translate``: the command-line job around :class:`~nmt.inference.translator.Translator`.

``nmt translate`` reads ``-i FILE`` or stdin and writes ``-o FILE`` or stdout, exactly one line per
input line (``--n-best K``: exactly K lines per input line) in input order:

- Input is read as bytes and split on ``\\n`` only (a final line without newline counts; a
  trailing ``\\r`` is removed). Bytes that are not UTF-8 are replaced by U+FFFD with a warning on
  stderr naming the line (the line is still translated).
- Large inputs are streamed: :data:`CHUNK_LINES` lines are read, translated and written before
  the next chunk is read, so memory does not grow with the input.
- Each input line is read up to :func:`line_limit` bytes (64 per subword of
  ``decode.max_input_len``, at least 64 KiB); the rest of a longer line is skipped with a warning
  naming the line, so memory stays bounded whatever the input. ``-i`` and ``--score-reference``
  accept pipes (``-i /dev/stdin``, ``<(command)``).
- ``-o FILE`` is written to a temporary file in the same directory and renamed to FILE only when
  everything was translated, so an interrupted run (Ctrl-C, SIGTERM, an error) never leaves a
  complete-looking FILE (it leaves no FILE at all, or the previous one untouched). A symlink's
  target is replaced that way and the link kept; an existing file that is not a regular file (a
  device such as /dev/null, a FIFO) is opened and written directly. A write error (a full disk,
  /dev/full) is exit 2 naming the output.
- ``--n-best K`` writes K lines per input line: ``INDEX<TAB>SCORE<TAB>TEXT`` where INDEX is the
  0-based input line number, SCORE the penalised search score (best first); without ``--beam``
  the beam is at least K. When fewer than K
  distinct hypotheses exist (an empty input has exactly one: the empty text with score 0), the
  remaining lines have SCORE ``-inf`` and an empty TEXT.
- The decode options (``--beam``, ``--length-penalty``, ``--shortlist``, ``--max-input-len``...:
  one per field of the recipe's ``decode`` section) are laid over the run's recipe ``decode``
  section and passed to every search; a setting not given keeps the recipe's value.
- ``--alignments`` appends a tab and the hypothesis's word alignment in the Pharaoh format
  (``0-0 1-2 2-1``: source word - target word, 0-based, from the attention;
  :mod:`nmt.inference.alignment`) to every line: ``TEXT<TAB>ALIGNMENT``, or with ``--n-best``
  ``INDEX<TAB>SCORE<TAB>TEXT<TAB>ALIGNMENT``. An empty input line gives a line with a tab only.
- ``--score-reference REF`` prints, instead of translations, one log-probability per line: the
  sum of the token log-probabilities (EOS included) of REF's line given the input line. The two
  files must have the same number of lines. The model computes in float32 and the value is
  printed with 6 decimals, more than float32 holds for sums above 10: the last digits depend on
  the order of the additions inside matrix products, which the number of threads (and so of
  processes, each with fewer threads), the batch and the device change. Values from different
  set-ups agree to about 1e-6 relative; compare them with a tolerance, not for equality.
- Distributed: under ``torchrun --nproc_per_node N -m nmt translate ...`` (or ``accelerate
  launch``) the main process reads each chunk and shares it, every process translates an
  interleaved share of its sentences, the results are gathered and the main process writes them
  in input order; the translations are the same as a single process's (scores up to the
  rounding above).
- Several run directories (``nmt translate RUN_A RUN_B ...``) decode with their ensemble
  (:mod:`nmt.inference.ensemble`): the mean of the runs' log-probabilities, in search and in
  ``--score-reference``; runs that do not share their tokenizers exit with status 2, naming them.
- ``--workers N`` translates with N worker processes of one thread each, for large files where
  throughput matters more than latency. The main process reads the input chunk by chunk; every
  worker gets the chunk and translates its share of the chunk's length-sorted batches (the
  ``shard`` of a distributed run), so the output is the one of a single process, byte for byte.
  Up to :data:`CHUNKS_AHEAD` chunks are in flight while the oldest is written, which keeps
  every worker busy and memory bounded. N is capped at the CPUs the process may use (a note on
  stderr says so), and a chunk of fewer lines than N goes to as many workers as it has lines: the
  pool starts a process only when it gets a task. A worker that fails stops the run: the error is printed,
  the exit status is not 0 and ``-o FILE`` is not written. Ctrl-C stops the workers too.
- ``--glossary FILE`` (lines ``SOURCE TERM<TAB>TARGET TERM``, :mod:`nmt.tools.glossary`): the
  terms whose source term occurs in an input line are that line's constraints, which lexically
  constrained beam search puts into its translation exactly once (docs/decoding.md).
- ``--markup html``: input lines are HTML text with inline tags; the plain text is translated and
  the tags are put back around the aligned target words (:mod:`nmt.inference.markup`). A line
  whose tags do not nest stops the run (exit 2, naming the line). A glossary is matched on the
  plain text.
- ``--engine onnx EXPORT_DIR`` translates with an export of ``nmt export`` on onnxruntime
  (:class:`~nmt.inference.onnx_translator.OnnxTranslator`), in one process that never imports
  torch, with the same formats (shortlist, alignments and reference scores included); options
  that need the PyTorch model (``--precision bf16``, ``--checkpoint``, ``--markup``) are refused.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nmt.config import decode_arguments
from nmt.errors import NmtError
from nmt.inference.alignment import format_alignment
from nmt.inference.checkpoint import as_run_dirs
from nmt.inference.sources import WarningCounter
from nmt.tools.decoding import apply_settings, call_options, settle_precision
from nmt.tools.line_io import (
    CHUNK_LINES,
    Output,
    abandon,
    close_inputs,
    format_score,
    iter_lines,
    line_limit,
    one_line,
    open_inputs,
    raise_on_sigterm,
    read_chunk,
)
from nmt.tools.orphans import die_with_parent

if TYPE_CHECKING:
    from nmt.config import DecodeConfig
    from nmt.inference.translator import Translator

#: chunks being translated at once with ``--workers``, the oldest being awaited
CHUNKS_AHEAD = 3

__all__ = ["translate_cli", "CHUNK_LINES"]


def translate_cli(args) -> int:
    """``nmt translate RUN_DIR [-i IN] [-o OUT] ...`` (see the module docstring for the formats)."""
    onnx = getattr(args, "engine", "torch") == "onnx"
    workers = getattr(args, "workers", 1)
    if workers < 1:
        raise NmtError(f"--workers must be >= 1, got {workers}")
    if workers > 1:
        return _translate_with_workers(args, workers)
    if onnx:  # one process, and torch is never imported
        state, world, rank, main = None, 1, 0, True
    else:
        from nmt.inference.devices import distributed_state

        state = distributed_state()
        world, rank, main = state.num_processes, state.process_index, state.is_main_process
    decode, reference = _decode_and_reference(args)
    translator = _onnx_translator(args) if onnx else _torch_translator(args)
    options = apply_settings(translator, decode)
    settle_precision(translator, options, getattr(args, "verbose", False), world, main)
    if not main:
        translator.warn.prefix = f"nmt translate [rank {rank}]"
    nbest_format = args.n_best is not None
    share = _Share(options, options.n_best if nbest_format else 1, nbest_format, args.alignments, rank, world,
                   glossary=_glossary(getattr(args, "glossary", None), translator, options, reference),
                   markup=getattr(args, "markup", None))
    # a shortlist's lexicon is loaded before reading input
    translator.decode_options(**call_options(options, n_best=share.n_best))
    output = src_stream = ref_stream = None
    previous_handler = raise_on_sigterm()
    try:
        src_stream, ref_stream, output, problem = _open_on_main(args.input, reference, args.output, main)
        problem = _from_main(problem, world)
        if problem is not None:
            raise NmtError(problem)
        lines = None
        if main:
            limit = line_limit(options.max_input_len)
            lines = (iter_lines(src_stream, args.input or "stdin", translator.warn, limit),
                     iter_lines(ref_stream, reference, translator.warn, limit) if reference else None)
        _translate_chunks(translator, share, lines, output, args.input or "stdin", reference)
        if main:
            translator.warn.summary()
            output.commit()
        if world > 1:
            state.wait_for_everyone()  # leave together: a rank exiting early breaks the others' gloo
    except BaseException as exc:
        abandon(output, exc, args.output)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        close_inputs(src_stream, ref_stream)
        if world > 1:
            from nmt.inference.devices import close_process_group  # torch: not for the ONNX engine

            close_process_group()
    return 0


@dataclass(frozen=True)
class _Share:
    """What one process translates of each chunk, and how: its ``rank`` of ``world`` shares,
    searched with ``options``; ``n_best`` hypotheses per line when ``nbest_format``."""

    options: DecodeConfig
    n_best: int
    nbest_format: bool
    alignments: bool
    rank: int = 0
    world: int = 1
    glossary: Any = None  #: nmt.tools.glossary.Glossary: each line's terms become its constraints
    markup: str | None = None  #: "html": lines carry inline tags (nmt.inference.markup)


def _workers_precision(args, decode: dict[str, Any]) -> str | None:
    """The precision every worker loads with: ``auto`` is resolved once, here, at one thread as
    each worker runs (workers choosing for themselves could choose differently)."""
    from nmt.inference.checkpoint import load_run_recipe

    asked = args.precision or load_run_recipe(as_run_dirs(args.run_dir)[0]).decode.precision
    if asked != "auto":
        return asked
    translator = _torch_translator(args)
    settle_precision(translator, apply_settings(translator, decode), getattr(args, "verbose", False), threads=1)
    return translator.precision


def _torch_translator(args):
    from nmt.inference.translator import Translator

    return Translator.load(as_run_dirs(args.run_dir), args.checkpoint, precision=args.precision,
                           kernels=args.kernels)


def _open_on_main(input_path: str | None, reference: str | None, output_path: str | None, main: bool):
    """The main process alone reads the input: ``(source, reference, output, problem)``, the
    streams it opened and, when one could not be opened, the message (for every process)."""
    src_stream = ref_stream = output = problem = None
    if main:
        try:
            src_stream, ref_stream = open_inputs(input_path, reference)
            output = Output(output_path)
        except NmtError as exc:
            problem = str(exc)
    return src_stream, ref_stream, output, problem


def _from_main(value: Any, world: int) -> Any:
    """The main process's ``value``, in every process."""
    if world == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _translate_chunks(translator, share: _Share, lines: tuple | None, output: "Output | None",
                      input_name: str, reference: str | None) -> None:
    """Chunk by chunk: the main process reads ``lines`` (source and reference iterators), every
    process translates its share, the main process writes the chunk in input order."""
    main = lines is not None
    first = 0  # 0-based index of the chunk's first line
    while True:
        payload: Any = None
        if main:
            try:
                payload = read_chunk(lines[0], lines[1], first, input_name, reference)
            except NmtError as exc:
                payload = ("error", str(exc))
        payload = _from_main(payload, share.world)
        if isinstance(payload, tuple):
            raise NmtError(payload[1])
        if payload is None:
            break
        done = _share_of_chunk(translator, share, payload, first)
        if share.world > 1:
            from accelerate.utils import gather_object

            done = gather_object(done)
        if main:
            done.sort(key=lambda pair: pair[0])
            output.write_lines([text for _, texts in done for text in texts])
        first += len(payload["src"])


def _share_of_chunk(translator, share: _Share, payload: dict[str, list[str]], first: int
                    ) -> list[tuple[int, list[str]]]:
    """This process's output lines of one chunk: ``(chunk index, lines)`` pairs."""
    srcs, refs = payload["src"], payload.get("ref")
    if refs is not None:
        return _score_share(translator, share.options, srcs, refs, first, share.rank, share.world)
    return _translate_share(translator, share.options, srcs, first, share.rank, share.world, share.n_best,
                            share.nbest_format, share.alignments, share.glossary, share.markup)


def _decode_and_reference(args) -> tuple[dict[str, Any], str | None]:
    """The decode flags and ``--score-reference``, checked before any run is loaded."""
    decode = decode_arguments(args)
    reference = args.score_reference
    if reference and args.n_best:
        raise NmtError("--score-reference and --n-best exclude each other")
    if reference and args.alignments:
        raise NmtError("--score-reference and --alignments exclude each other")
    if reference and getattr(args, "markup", None):
        raise NmtError("--score-reference and --markup exclude each other")
    return decode, reference


def _glossary(path: str | None, translator, options: DecodeConfig, reference: str | None):
    """``--glossary``: the terms, read with the translator's text normalisation (None without it)."""
    if not path:
        return None
    if reference:
        raise NmtError("--glossary and --score-reference exclude each other")
    if options.sample:
        raise NmtError("--glossary needs beam search: it cannot be used with --sample")
    from nmt.tools.glossary import read_glossary

    return read_glossary(path, translator.recipe.data.filter.normalize)


def _onnx_translator(args, threads: int | None = None):
    """The onnxruntime translator of an export directory; options only the PyTorch model has are refused."""
    refuse_torch_only_options(args)
    from nmt.inference.onnx_translator import OnnxTranslator

    return OnnxTranslator.load(as_run_dirs(args.run_dir)[0], threads=threads)


def refuse_torch_only_options(args) -> None:
    """Exit-2 errors for options an export cannot honour (``nmt translate`` and ``nmt bench
    translate`` with ``--engine onnx``)."""
    torch_only = [flag for flag, used in (
        ("--precision bf16", args.precision == "bf16"),
        ("--checkpoint", args.checkpoint != "best"), ("--markup", getattr(args, "markup", None)),
        ("--kernels", getattr(args, "kernels", None) is not None),
        ("--batch-sentences", getattr(args, "batch_sentences", None) is not None))
        if used]
    if torch_only:
        raise NmtError(f"{', '.join(torch_only)}: not available with --engine onnx (an export holds one model, "
                       "searched as exported); translate the run directory with --engine torch instead")
    exports = as_run_dirs(args.run_dir)
    if len(exports) > 1:
        raise NmtError(f"--engine onnx translates with one export directory, got {len(exports)}; ensembles "
                       "run on the run directories with --engine torch")


def _score_share(translator: Translator, options: DecodeConfig, srcs: list[str], refs: list[str],
                 first: int, rank: int, world: int) -> list[tuple[int, list[str]]]:
    lines = [first + i + 1 for i in range(len(srcs))]
    found = translator.score(srcs, refs, lines=lines, shard=(rank, world), batch_tokens=options.batch_tokens)
    return [(i, [f"{value:.6f}"]) for i, value in enumerate(found) if value is not None]


def _translate_share(translator: Translator, options: DecodeConfig, srcs: list[str], first: int, rank: int,
                     world: int, n_best: int, nbest_format: bool, alignments: bool = False, glossary=None,
                     markup: str | None = None) -> list[tuple[int, list[str]]]:
    """This process's output lines: ``(chunk index, lines)`` pairs, searched with ``options``
    (and the terms of ``glossary`` as constraints; ``markup``: the lines' kind of markup)."""
    lines = [first + i + 1 for i in range(len(srcs))]
    shard = (rank, world)
    constraints = _line_terms(glossary, srcs, markup, lines)
    extra = {"markup": markup} if markup else {}
    if not (nbest_format or alignments):
        found = translator.translate(srcs, lines=lines, shard=shard, constraints=constraints,
                                     **call_options(options, n_best=1), **extra)
        return [(i, [one_line(text)]) for i, text in enumerate(found) if text is not None]
    results = translator.translate(srcs, return_scores=True, return_alignment=alignments, lines=lines,
                                   shard=shard, constraints=constraints, **call_options(options, n_best=n_best),
                                   **extra)
    out = []
    for i, result in enumerate(results):
        if result is None:
            continue
        rows = []
        for h in result.hypotheses:
            row = f"{first + i}\t{format_score(h.score)}\t" if nbest_format else ""
            row += one_line(h.text)
            rows.append(row + (f"\t{format_alignment(h.alignment)}" if alignments else ""))
            if not nbest_format:
                break
        if nbest_format:
            rows += [f"{first + i}\t-inf\t" + ("\t" if alignments else "")] * (n_best - len(rows))
        out.append((i, rows))
    return out


def _line_terms(glossary, srcs: list[str], markup: str | None, lines: list[int]) -> list | None:
    """The glossary's constraints of each line, matched on its text without the markup."""
    if glossary is None:
        return None
    if markup:
        from nmt.inference.markup import parse_all

        srcs = [m.text for m in parse_all(srcs, markup, lines)]
    return glossary.constraints(srcs)


# ------------------------------------------------------------------------------------- workers

class _WorkerFailed(NmtError):
    """A worker process failed on something other than bad input (a bug, or it was killed)."""

    exit_code = 1


class _Collected:
    """Warnings kept (not printed) by a worker, or while reading a chunk: the main process prints
    them through its own :class:`WarningCounter` when it writes the chunk, in input order."""

    prefix = "nmt translate"

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def __call__(self, kind: str, message: str) -> None:
        self.records.append((kind, message))

    def summary(self) -> None:
        pass


#: a worker process's translator, loaded by its first task
_WORKER: dict[str, Any] = {}


def _worker_init(parent: int) -> None:
    """Ctrl-C signals the whole process group: the main process alone handles it and stops the
    workers. A worker ends with its ``parent`` however that ends (``kill -9`` included), instead of
    holding its model's memory for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def _worker_translator(spec: dict[str, Any]):
    translator = _WORKER.get("translator")
    if translator is None:
        if spec["engine"] == "onnx":
            from nmt.inference.onnx_translator import OnnxTranslator

            translator = OnnxTranslator.load(spec["run_dirs"][0], threads=1)
        else:
            import torch

            torch.set_num_threads(1)
            from nmt.inference.translator import Translator

            translator = Translator.load(spec["run_dirs"], spec["checkpoint"], device="cpu",
                                         precision=spec["precision"],
                                         kernels=spec["kernels"])
        options = apply_settings(translator, spec["decode"])
        translator.decode_options(**call_options(options, n_best=spec["n_best"]))
        _WORKER["translator"], _WORKER["options"] = translator, options
        _WORKER["glossary"] = _glossary(spec.get("glossary"), translator, options, None)
    return translator


def _checked_glossary(args, decode: dict[str, Any], reference: str | None) -> str | None:
    """``--glossary`` of ``--workers``: checked here, before any worker starts; read by each worker."""
    path = getattr(args, "glossary", None)
    if path:
        from nmt.tools.glossary import read_glossary

        read_glossary(path)
        if reference or decode.get("sample"):
            raise NmtError("--glossary needs beam search and excludes --score-reference and --sample")
    return path


def _worker_line_limit(spec: dict[str, Any]) -> int:
    """In a worker: load the run; the bytes of an input line to read (:func:`line_limit`)."""
    _worker_translator(spec)
    return line_limit(_WORKER["options"].max_input_len)


def _work(spec: dict[str, Any], payload: dict[str, list[str]], first: int, rank: int, world: int
          ) -> tuple[list[tuple[int, list[str]]], list[tuple[str, str]]]:
    """In a worker: share ``rank`` of ``world`` of one chunk, as ``(chunk index, lines)`` pairs,
    and the warnings it gave."""
    translator = _worker_translator(spec)
    translator.warn = _Collected()
    share = _Share(_WORKER["options"], spec["n_best"], spec["nbest_format"], spec["alignments"], rank, world,
                   glossary=_WORKER.get("glossary"), markup=spec.get("markup"))
    done = _share_of_chunk(translator, share, payload, first)
    return done, translator.warn.records


def _translate_with_workers(args, workers: int) -> int:
    """``nmt translate --workers N``: the main process reads, the workers translate, the main
    process writes in input order (see the module docstring)."""
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise NmtError("--workers starts its own processes: run it as one command, without torchrun "
                       "or accelerate launch")
    workers = _cap_workers(workers)
    onnx = args.engine == "onnx"
    decode, reference = _decode_and_reference(args)
    if onnx:
        refuse_torch_only_options(args)
    nbest_format = args.n_best is not None
    spec = {"engine": args.engine, "run_dirs": [str(d) for d in as_run_dirs(args.run_dir)], "checkpoint": args.checkpoint,
            "precision": None if onnx else _workers_precision(args, decode),
            "kernels": args.kernels,
            "decode": decode, "n_best": args.n_best if nbest_format else 1, "nbest_format": nbest_format,
            "alignments": args.alignments, "glossary": _checked_glossary(args, decode, reference),
            "markup": getattr(args, "markup", None)}
    warn = WarningCounter()
    input_name = args.input or "stdin"
    src_stream, ref_stream = open_inputs(args.input, reference)
    output = pool = None
    finished = False
    previous_handler = raise_on_sigterm()
    try:
        output = Output(args.output)
        # spawn: a worker starts from a fresh interpreter (no copy of this process's threads or locks)
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(os.getpid(),))
        # one worker loads the run first: its recipe's max_input_len bounds the line length read,
        # and a run that cannot be loaded fails before any input is read
        limit = _result(pool.submit(_worker_line_limit, spec), "loading the run", 0)
        reading = _Collected()
        src_lines = iter_lines(src_stream, input_name, reading, limit)
        ref_lines = iter_lines(ref_stream, reference, reading, limit) if reference else None
        in_flight: deque = deque()
        first = used = 0
        while True:
            payload = read_chunk(src_lines, ref_lines, first, input_name, reference)
            if payload is None:
                break
            # no more workers than lines: a pool starts its processes only when they get a task
            world = min(workers, len(payload["src"]))
            used = max(used, world)
            futures = [pool.submit(_work, spec, payload, first, rank, world) for rank in range(world)]
            in_flight.append((first, len(payload["src"]), reading.records, futures))
            reading.records = []
            first += len(payload["src"])
            if len(in_flight) >= CHUNKS_AHEAD:
                _write_chunk(in_flight.popleft(), output, warn, first)
        while in_flight:
            _write_chunk(in_flight.popleft(), output, warn, first)
        warn.summary()
        output.commit()
        finished = True
        if used < workers:
            print(f"nmt translate: started {max(used, 1)} of {workers} workers: the input has "
                  f"{first} line{'s' if first != 1 else ''}", file=sys.stderr)
    except BaseException as exc:
        abandon(output, exc, args.output)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if pool is not None:
            _stop_workers(pool, finished)
        close_inputs(src_stream, ref_stream)
    return 0


def _cap_workers(workers: int) -> int:
    """``--workers`` capped at the CPUs this process may use (each worker runs one thread: more
    only share the CPUs and each holds its own model in memory), with a note when capped."""
    from nmt.training.threads import usable_cpus

    cpus = usable_cpus()
    if workers > cpus:
        print(f"nmt translate: --workers {workers} capped to {cpus}: the CPUs this process may use",
              file=sys.stderr)
        return cpus
    return workers


def _result(future, doing: str, first: int, submitted: int = 0) -> Any:
    """A worker's result; its failure as an error message: an :class:`NmtError` as it is (bad
    input), anything else with exit status 1."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return future.result()
    except NmtError:
        raise
    except BrokenProcessPool:
        # which task the dead worker was running is unknown: name every line in flight
        where = f"translating lines {first + 1}-{submitted}" if submitted else doing
        raise _WorkerFailed(f"a worker process ended abruptly while {where} (killed, or out of "
                            "memory?); nothing was written as complete") from None
    except Exception as exc:  # a bug: show where it happened, as one process would
        if exc.__cause__ is not None:
            print(str(exc.__cause__).strip().strip('"').strip(), file=sys.stderr)
        raise _WorkerFailed(f"a worker process failed while {doing}: {type(exc).__name__}: {exc}") from None


def _write_chunk(chunk: tuple, output: Output, warn: WarningCounter, submitted: int) -> None:
    """Wait for every share of the oldest chunk in flight, then print its warnings and write it.
    ``submitted``: the lines sent to the workers so far."""

    first, n_lines, notes, futures = chunk
    done: list[tuple[int, list[str]]] = []
    shares_notes: list[tuple[str, str]] = []
    for future in futures:
        share, records = _result(future, f"translating lines {first + 1}-{first + n_lines}",
                                 first, submitted)
        done += share
        shares_notes += records
    # one process warns about a chunk's lines in line order; the workers' warnings are merged so
    shares_notes.sort(key=lambda note: _line_of(note[1]))
    for kind, message in list(notes) + shares_notes:
        warn(kind, message)
    done.sort(key=lambda pair: pair[0])
    output.write_lines([text for _, texts in done for text in texts])


def _stop_workers(pool, finished: bool) -> None:
    """Let the workers exit after a complete run; otherwise stop them now, mid-task."""
    if finished:
        pool.shutdown(wait=True)
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


def _line_of(message: str) -> int:
    """The line number a warning starts with (``line 12: ...``), else 0."""
    head = message.split(":", 1)[0]
    return int(head[5:]) if head.startswith("line ") and head[5:].isdigit() else 0
