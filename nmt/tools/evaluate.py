"""Scoring translations with sacrebleu (BLEU, chrF, TER), and ``nmt evaluate``.

All numbers come from sacrebleu's metric objects, so they equal what the ``sacrebleu`` command line
prints for the same files and settings. Input is *detokenized* text, one segment per line.

Files are read the way the sacrebleu CLI reads them: UTF-8, split on ``"\\n"`` only, a final empty
line (the trailing newline) dropped, and trailing whitespace stripped from every line.

Two ways to use ``nmt evaluate``:

- ``nmt evaluate --hyp OUT --ref REF [--ref REF2 ...] [--metrics bleu,chrf,ter] [--json]``
  scores an existing hypothesis file;
- ``nmt evaluate RUN_DIR --split test [--beam 5 | --greedy] [--checkpoint best] [--json]``
  translates a split of the run's own corpus, scores it, and keeps the hypotheses and the scores in
  ``RUN_DIR/eval/{split}.{checkpoint}.beam{N}.hyp`` / ``.json``. Several run directories evaluate
  their ensemble (:mod:`nmt.inference.ensemble`); the files go to the first run's ``eval/`` with
  ``ensemble{M}`` in their names and the record lists every run.
- ``nmt evaluate RUN_DIR --src SRC --ref REF [--ref REF2 ...]`` does the same for a test set of
  your own (one source sentence per line, references line by line), stored as
  ``eval/file-SRC.{checkpoint}.beam{N}.hyp`` / ``.json``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import gzip
import json
import os
import re
import shlex
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from nmt.atomic import atomic_write_text, safe_dir
from nmt.config import DecodeConfig, decode_arguments, decode_flag, decode_flag_label
from nmt.errors import CheckpointError, DataError, NmtError
from nmt.metrics import METRICS, format_scores, parse_metrics, score_corpus
from nmt.tools.decoding import apply_settings, call_options

__all__ = ["METRICS", "score_corpus", "evaluate_files", "read_lines", "parse_metrics",
           "format_scores", "evaluate_run", "evaluate_cli"]


# ------------------------------------------------------------------------------------------ files

def read_lines(path: str | os.PathLike, role: str = "file") -> list[str]:
    """Lines of a UTF-8 text file exactly as the sacrebleu CLI reads them.

    Split on ``"\\n"``; a last empty line (the final newline) is dropped; trailing whitespace is
    stripped from each line. ``.gz`` files are decompressed. Missing files and bytes that are not
    UTF-8 raise :class:`DataError` naming the file, the line and the byte.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{role} {str(p)!r} not found")
    if p.is_dir():
        raise DataError(f"{role} {str(p)!r} is a directory; give a text file with one segment per line")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {role} {str(p)!r}: {exc.strerror or exc}") from None
    if p.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, corrupt
            raise DataError(f"{role} {str(p)!r} is not a complete gzip file ({exc}); decompress it "
                            "again, or give the plain text file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = exc.start - line_start + 1
        raise DataError(f"{role} {str(p)!r} is not UTF-8: line {line_no}, byte {column} of the line "
                        f"(0x{data[exc.start]:02x}, {exc.reason}); convert it, e.g. "
                        f"iconv -f latin1 -t utf-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip() for line in lines]


def evaluate_files(hyp_path: str | os.PathLike, ref_paths: Sequence[str | os.PathLike] | str,
                   metrics: Iterable[str] | str | None = METRICS,
                   bleu_tokenize: str = "13a") -> dict[str, dict[str, Any]]:
    """Score a hypothesis file against one or more reference files (see :func:`score_corpus`)."""
    names = parse_metrics(metrics)
    if isinstance(ref_paths, (str, os.PathLike)):
        ref_paths = [ref_paths]
    if not ref_paths:
        raise NmtError("no reference file given (--ref FILE, repeatable for several references)")
    hyps = read_lines(hyp_path, "hypothesis file")
    if not hyps:
        raise DataError(f"hypothesis file {str(hyp_path)!r} is empty")
    refs = read_references(ref_paths, f"hypothesis file {str(hyp_path)!r}", len(hyps))
    return score_corpus(hyps, refs, names, bleu_tokenize)


def read_references(ref_paths: Sequence[str | os.PathLike], against: str, count: int) -> list[list[str]]:
    """Each reference file's lines; every file must have the ``count`` lines of ``against``."""
    refs = []
    for ref_path in ref_paths:
        lines = read_lines(ref_path, "reference file")
        if not lines:
            raise DataError(f"reference file {str(ref_path)!r} is empty")
        if len(lines) != count:
            raise DataError(f"line counts differ: {against} has {count} lines, reference file "
                            f"{str(ref_path)!r} has {len(lines)} lines")
        refs.append(lines)
    return refs


# ------------------------------------------------------------------------------------ run dirs

def _checkpoint_tag(checkpoint: str) -> str:
    """``best`` -> ``best``; ``runs/x/checkpoints/step1000.pt`` -> ``step1000`` (file-name safe)."""
    name = Path(str(checkpoint)).name
    for suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "checkpoint"


def evaluate_run(run_dir: str | os.PathLike | Sequence[str | os.PathLike], split: str = "test",
                 checkpoint: str = "best",
                 metrics: Iterable[str] | str | None = None, command: str | None = None,
                 precision: str | None = None, decode: Mapping[str, Any] | None = None,
                 label: Callable[[str], str] | None = None,
                 report: Callable[[dict[str, Any]], None] | None = None,
                 external: ExternalSet | None = None) -> dict[str, Any]:
    """Translate ``split`` of the run's corpus (or the ``external`` test set), score it, and write
    the results into the run.

    ``report(record)`` is called with the scores before anything is written, so that a run
    directory that cannot be written to (read-only, ``eval`` a file, a full disk) still shows the
    scores; the write then fails with :class:`CheckpointError` naming the file.
    ``decode``: settings laid over the run's recipe ``decode`` section (``{"beam": 1}``; problems
    are named ``label(key)``); ``metrics=None`` uses the recipe's ``eval.metrics``.
    Writes ``RUN_DIR/eval/{split}.{checkpoint}.beam{N}.hyp`` (one hypothesis per line) and
    ``... .json`` (scores, signatures, settings, timestamp), both atomically, and returns the JSON
    record (with ``"json_path"``).
    """
    runs = [Path(run_dir)] if isinstance(run_dir, (str, os.PathLike)) else [Path(r) for r in run_dir]
    for run in runs:
        if not run.is_dir():
            raise CheckpointError(f"run directory {str(run)!r} not found (train one with nmt train RECIPE)")
    run = runs[0]
    from nmt.data.corpus import SPLITS
    from nmt.inference.translator import Translator

    if external is None and split not in SPLITS:
        raise NmtError(f"--split {split!r}: unknown split; the run's corpus has {', '.join(SPLITS)}")
    translator = Translator.load(runs, checkpoint=checkpoint, precision=precision)
    recipe = translator.recipe
    options = apply_settings(translator, decode, label)
    beam, shortlist = options.beam, options.shortlist
    choice = translator.resolve_precision(options)
    precision = translator.precision  # what searched: auto's choice
    names = parse_metrics(metrics if metrics is not None else recipe.eval.metrics)
    if external is None:
        sources, reference_sets = _split_pairs(recipe, split)
    else:
        sources, reference_sets, split = external.sources, external.references, external.name
    started = _dt.datetime.now(_dt.timezone.utc)
    hypotheses = _translate_lines(translator, sources, options)
    seconds = (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds()
    scores = score_corpus(hypotheses, reference_sets, names, recipe.eval.bleu_tokenize)

    stem = _stem(split, checkpoint, len(runs), beam, precision, shortlist, options.split_sentences,
                 options.names or translator.name_table() is None)
    eval_dir = run / "eval"
    hyp_path = eval_dir / f"{stem}.hyp"
    json_path = eval_dir / f"{stem}.json"
    import sacrebleu

    from nmt import __version__

    record = {
        "run_dir": str(run),
        **({"ensemble": [str(r) for r in runs]} if len(runs) > 1 else {}),
        "split": split,
        **({"src": external.src, "refs": external.refs} if external is not None else {}),
        "checkpoint": str(checkpoint),
        "beam": beam,
        "precision": precision,
        **({"precision_auto": choice.as_record()} if choice is not None else {}),
        "shortlist": shortlist,
        "decode": dataclasses.asdict(options),
        "metrics": names,
        "bleu_tokenize": recipe.eval.bleu_tokenize,
        "sentences": len(sources),
        "translate_seconds": round(seconds, 3),
        "scores": scores,
        "hypotheses": str(hyp_path),
        "command": command,
        "timestamp": started.isoformat(timespec="seconds"),
        "nmt_version": __version__,
        "sacrebleu_version": sacrebleu.__version__,
    }
    if report is not None:
        report({**record, "json_path": str(json_path)})
    _save_evaluation(eval_dir, hyp_path, json_path, hypotheses, record)
    record["json_path"] = str(json_path)
    return record


def _stem(split: str, checkpoint: str, runs: int, beam: int, precision: str, shortlist: int,
          split_sentences: bool = True, names: bool = True) -> str:
    """The name, without suffix, of an evaluation's files in ``RUN_DIR/eval/`` (``names``: False
    when a table of names was there and not used)."""
    return (f"{split}.{_checkpoint_tag(checkpoint)}" + (f".ensemble{runs}" if runs > 1 else "")
            + f".beam{beam}" + (".bf16" if precision == "bf16" else "")
            + (f".shortlist{shortlist}" if shortlist else "") + ("" if split_sentences else ".whole")
            + ("" if names else ".nonames"))


def _split_pairs(recipe, split: str) -> tuple[list[str], list[list[str]]]:
    """The sources and (one set of) references of ``split`` of the run's corpus (not empty)."""
    from nmt.data.corpus import load_corpus

    corpus = load_corpus(recipe.data, splits=(split,))
    if split not in corpus:
        raise DataError(f"the run's corpus has no split {split!r} (available: "
                        f"{', '.join(map(str, corpus)) or 'none'})")
    dataset = corpus[split]
    sources = [str(s) for s in dataset["src"]]
    references = [str(t) for t in dataset["tgt"]]
    if not sources:
        raise DataError(f"split {split!r} of the run's corpus is empty; nothing to evaluate")
    return sources, [references]


@dataclasses.dataclass(frozen=True)
class ExternalSet:
    """A test set from files (``--src FILE --ref FILE [--ref FILE ...]``), not the run's corpus."""

    src: str
    refs: list[str]
    sources: list[str]
    references: list[list[str]]

    @property
    def name(self) -> str:
        """The file-name-safe label its results are stored under in ``RUN_DIR/eval/``."""
        return "file-" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.src).name) or "src")

    @classmethod
    def read(cls, src: str, refs: Sequence[str]) -> "ExternalSet":
        """Read the files as the sacrebleu CLI does; every file must have the source's line count."""
        if not refs:
            raise NmtError(f"--src {src} needs at least one --ref (the reference translations, one "
                           "line per source line)")
        sources = read_lines(src, "source file")
        if not sources:
            raise DataError(f"source file {src!r} is empty; nothing to evaluate")
        references = read_references(refs, f"source file {str(src)!r}", len(sources))
        return cls(str(src), [str(r) for r in refs], sources, references)


def _translate_lines(translator, sources: list[str], options: DecodeConfig) -> list[str]:
    """The best translation of each source, one line each."""
    hypotheses = list(translator.translate(sources, **call_options(options, n_best=1)))
    if len(hypotheses) != len(sources):
        raise NmtError(f"the translator returned {len(hypotheses)} hypotheses for {len(sources)} "
                       "sources (a bug in nmt.inference.translator)")
    # One segment per line on disk: a newline inside a hypothesis would shift every later line.
    return [" ".join(str(h).splitlines()) for h in hypotheses]


def _save_evaluation(eval_dir: Path, hyp_path: Path, json_path: Path, hypotheses: list[str],
                     record: dict[str, Any]) -> None:
    """Write the hypotheses and the record atomically; a failure names the file and says the
    scores (already shown) are complete."""
    try:
        safe_dir(eval_dir)  # a link planted as RUN/eval is refused, never written through
        atomic_write_text(hyp_path, "".join(h + "\n" for h in hypotheses))
        atomic_write_text(json_path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        where = exc.filename or eval_dir
        if eval_dir.exists() and not eval_dir.is_dir():
            reason = f"{eval_dir} is a file, not a directory"
        else:
            reason = f"{where}: {exc.strerror or exc}"
        raise CheckpointError(f"the evaluation could not be saved in the run directory ({reason}); "
                              "the scores are complete. Move the file away or make the run directory "
                              "writable to keep them") from None


# -------------------------------------------------------------------------------------------- CLI

_MODES = ("nmt evaluate needs one of these argument sets:\n"
          "  nmt evaluate --hyp OUT --ref REF [--ref REF2 ...] [--metrics bleu,chrf,ter] [--json]\n"
          "      score an existing (detokenized) hypothesis file against reference files\n"
          "  nmt evaluate RUN_DIR [--split test] [--beam 5 | --greedy] [--checkpoint best] [--json]\n"
          "      translate a split of the run's corpus, then score it\n"
          "  nmt evaluate RUN_DIR --src SRC --ref REF [--ref REF2 ...] [--beam 5] [--json]\n"
          "      translate a test set of your own, then score it")


def _command_line(run_dirs: Sequence[str | os.PathLike], split, checkpoint, metrics, precision=None,
                  decode: Mapping[str, Any] | None = None, external: ExternalSet | None = None) -> str:
    """The equivalent command line (for the record written into the run)."""
    data = ["--split", split] if external is None else \
        ["--src", external.src, *[arg for ref in external.refs for arg in ("--ref", ref)]]
    parts = ["nmt", "evaluate", *map(str, run_dirs), *data, "--checkpoint", checkpoint]
    for name, value in (decode or {}).items():
        if name == "precision":  # below
            continue
        if isinstance(value, bool):  # a yes/no option takes no value: --sample / --no-sample
            parts.append(decode_flag(name) if value else "--no-" + decode_flag(name)[2:])
        else:
            parts += [decode_flag(name), str(value)]
    parts += ["--precision", precision] if precision else []
    parts += ["--metrics", ",".join(metrics)] if metrics else []
    return shlex.join(parts)


def evaluate_cli(args) -> int:
    """``nmt evaluate``: see the module docstring for the two modes. Returns the exit code."""
    from nmt.inference.checkpoint import as_run_dirs

    run_dir, hyp, refs = as_run_dirs(args.run_dir), args.hyp, list(args.ref)
    split, checkpoint, as_json, metrics_arg = args.split, args.checkpoint, args.json, args.metrics

    if getattr(args, "src", None):
        if not run_dir or hyp:
            raise NmtError("--src translates with a run: give RUN_DIR and --ref, not --hyp.\n" + _MODES)
        return _evaluate_run_cli(args, run_dir, ExternalSet.read(args.src, refs))
    if run_dir and (hyp or refs):
        raise NmtError("give either a run directory (with --src and --ref for a test set of your own) "
                       "or --hyp/--ref files.\n" + _MODES)
    if hyp or refs:
        if not hyp:
            raise NmtError("--ref needs --hyp (the hypothesis file to score).\n" + _MODES)
        if not refs:
            raise NmtError("--hyp needs at least one --ref (reference file).\n" + _MODES)
        decode_given = [decode_flag(f.name) for f in dataclasses.fields(DecodeConfig)
                        if vars(args).get(f.name) is not None]
        unused = decode_given + [flag for flag, used in (("--greedy", args.greedy),
                                                         ("--split", split != "test"),
                                                         ("--checkpoint", checkpoint != "best")) if used]
        if unused:
            raise NmtError(f"{', '.join(unused)} only apply when evaluating a run directory; "
                           "with --hyp/--ref the translations already exist.\n" + _MODES)
        names = parse_metrics(metrics_arg)
        scores = evaluate_files(hyp, refs, names)
        if as_json:
            print(json.dumps({"hyp": str(hyp), "refs": [str(r) for r in refs], "scores": scores},
                             indent=2, ensure_ascii=False))
        else:
            print(format_scores(scores))
        return 0
    if run_dir:
        return _evaluate_run_cli(args, run_dir, None)
    raise NmtError("nothing to evaluate.\n" + _MODES)


def _evaluate_run_cli(args, run_dir: list[Path], external: ExternalSet | None) -> int:
    """``nmt evaluate RUN_DIR ...``: translate the split (or the ``--src`` file), score, report."""
    decode = decode_arguments(args)
    names = parse_metrics(args.metrics) if args.metrics is not None else None

    def report(record: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(record, indent=2, ensure_ascii=False), flush=True)
        else:
            print(format_scores(record["scores"]), flush=True)

    command = _command_line(run_dir, args.split, args.checkpoint, names, args.precision, decode, external)
    record = evaluate_run(run_dir, split=args.split, checkpoint=args.checkpoint, metrics=names,
                          command=command, precision=args.precision, decode=decode,
                          label=decode_flag_label, report=report, external=external)
    if not args.json:
        print(f"wrote {record['hypotheses']} and {record['json_path']}")
    return 0
