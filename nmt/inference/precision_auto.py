"""``precision: auto``: which of float32 and bf16 searches faster with this model on this machine.

Whether bf16 pays depends on the CPU (AVX-512 BF16 / AMX), the model's sizes, the search (a
per-sentence shortlist leaves little GEMM work to speed up), the batch size (bf16's GEMMs pay off
on many rows; a few sentences are per-operation overhead) and how loaded the machine is, so it is
measured rather than guessed: a short calibration decodes a batch shaped like the run's
(:func:`calibration_sentences`, :func:`calibration_sources`), in the run's parts side by side
(``decode.inter_threads``), in alternating rounds per mode and keeps each mode's best time
(:func:`calibrate`); :func:`pick` takes bf16 only when it beats float32 by :data:`MARGIN`, so
timing noise never picks the slower mode. The choice is cached per weights file, machine, nmt and
torch versions, search, batch size class and parts (:func:`cache_key`) in the user's cache
directory (:func:`cache_file`): run directories stay read-only to translation.

Whichever mode is picked, the translations are those of that mode given explicitly: the choice
is made once, before the first search, and kept for the translator's lifetime.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

#: a non-float32 mode is picked only when its best time is at most (1 - MARGIN) x float32's
MARGIN = 0.10
#: timed rounds per mode (after one untimed warm-up each), alternating the order of the modes
ROUNDS = 3
#: the calibration stops adding rounds once it has spent this long (a large model on a slow CPU)
BUDGET_SECONDS = 3.0
#: the calibration's sentences: about LENGTH source subwords each (a typical sentence), searched for
#: at most LENGTH steps (made-up ids need not end early), drawn with a fixed seed
LENGTH, SEED = 12, 0
#: sentences in the calibration batch: as many as one batch of the run (bf16 loses on a few rows
#: what it gains on many), at most this many, which keeps a round short
MAX_SENTENCES = 256
#: smaller models stay float32 without a calibration: their steps are per-operation overhead,
#: which bf16 does not reduce, and their calibration runs too short to time apart from noise
MIN_PARAMETERS = 1_000_000
#: entries kept in the cache file (oldest dropped first)
CACHE_ENTRIES = 64


@dataclass(frozen=True)
class PrecisionChoice:
    """The mode ``auto`` resolved to, why, and the figures behind it."""

    mode: str  #: "float32" or "bf16"
    reason: str
    #: best seconds per mode for the calibration batch (empty when nothing was timed)
    timings: dict[str, float] = field(default_factory=dict)
    rounds: int = 0  #: timed rounds per mode behind ``timings``
    cached: bool = False
    sentences: int = 0  #: sentences in the calibration batch
    seconds: float = 0.0  #: the whole calibration's wall time (warm-ups included)

    def describe(self) -> str:
        """One line for logs: ``precision auto -> bf16: ... (float32 41.2 ms, bf16 30.1 ms per
        batch of 256 sentences, best of 3 round(s), calibrated in 1.4 s)``."""
        figures = ", ".join(f"{mode} {seconds * 1e3:.1f} ms" for mode, seconds in self.timings.items())
        if not figures:
            return f"precision auto -> {self.mode}: {self.reason}"
        batch = f" per batch of {self.sentences} sentences" if self.sentences else ""
        took = f", calibrated in {self.seconds:.1f} s" if self.seconds else ""
        where = "; cached" if self.cached else ""
        return (f"precision auto -> {self.mode}: {self.reason} "
                f"({figures}{batch}, best of {self.rounds} round(s){took}{where})")

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def pick(timings: Mapping[str, float], margin: float = MARGIN) -> tuple[str, str]:
    """The mode to use from each mode's best time in seconds (``float32`` among them), and why.

    Another mode wins only when it is at least ``margin`` faster than float32 (time at most
    ``(1 - margin)`` x float32's): within the margin, float32 stays."""
    base = timings["float32"]
    others = [(seconds, mode) for mode, seconds in timings.items() if mode != "float32"]
    if not others:
        return "float32", "no other mode to compare"
    seconds, mode = min(others)
    gain = 1 - seconds / base if base > 0 else 0.0
    if seconds <= base * (1 - margin):
        return mode, f"{mode} {gain:.0%} faster than float32 (needs >= {margin:.0%})"
    if gain > 0:
        return "float32", f"{mode} only {gain:.0%} faster than float32 (needs >= {margin:.0%})"
    return "float32", f"{mode} {-gain:.0%} slower than float32"


def calibrate(runners: Mapping[str, Callable[[], Any]], rounds: int = ROUNDS,
              budget: float = BUDGET_SECONDS, clock: Callable[[], float] = time.perf_counter
              ) -> tuple[dict[str, float], int]:
    """Each mode's best wall time over up to ``rounds`` timed runs of its runner, after one
    untimed warm-up each, and the rounds run. Rounds alternate the order of the modes (a drift in
    the machine's load reaches each mode alike); past ``budget`` seconds no further round starts."""
    started = clock()
    for run in runners.values():
        run()
    best = {mode: math.inf for mode in runners}
    order = list(runners)
    done = 0
    for r in range(rounds):
        if r and clock() - started > budget:
            break
        for mode in (order if r % 2 == 0 else order[::-1]):
            t0 = clock()
            runners[mode]()
            best[mode] = min(best[mode], clock() - t0)
        done += 1
    return best, done


def size_class(sentences: int) -> int:
    """The batch size class of the cache key: 1, 2-3, 4-7, ... sentences are classes 1, 2, 3, ..."""
    return max(1, int(sentences)).bit_length()


def calibration_sentences(batch_tokens: int, beam: int, sentences: int | None = None,
                          length: int = LENGTH) -> int:
    """Sentences in the calibration batch: ``sentences`` when the caller knows its batch size (the
    server's, ``bench translate --batch-sentences``), else what one batch of ``batch_tokens``
    padded source tokens x ``beam`` holds of sentences of ``length`` subwords and EOS (the
    batching of :meth:`~nmt.inference.translator.Translator.batches`); at most
    :data:`MAX_SENTENCES`."""
    if not sentences:
        sentences = max(1, batch_tokens // max(1, beam)) // (length + 1)
    return max(1, min(MAX_SENTENCES, int(sentences)))


def calibration_sources(vocab_size: int, first_id: int, sentences: int,
                        length: int = LENGTH) -> list[list[int]]:
    """A fixed batch of source ids in ``[first_id, vocab_size)`` (the same on every machine): what
    the calibration searches. Lengths vary a little, as a real batch's do. Ids are drawn with
    probability about 1/rank (SentencePiece numbers its pieces roughly by frequency): a
    shortlist's union over the batch then stays near a real batch's, where uniform ids would
    widen it to most of the vocabulary and overstate what bf16 gains."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    span = max(1, vocab_size - first_id)
    rows = []
    for k in range(sentences):
        u = torch.rand(max(1, length - k % 4), generator=generator, dtype=torch.float64)
        rank = torch.exp(u * math.log(span)).long() - 1  # log-uniform in [0, span)
        rows.append((first_id + rank.clamp(0, span - 1)).tolist())
    return rows


# ------------------------------------------------------------------------------- the machine
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _first(text: str, name: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def bf16_instructions(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU has bf16 instructions (AVX-512 BF16 or AMX); None when /proc/cpuinfo does
    not say (another OS)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    flags = _first(text, "flags").split()
    return ("avx512_bf16" in flags or "amx_bf16" in flags) if flags else None


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether bf16 search may pay on this CPU: without bf16 instructions (AVX-512 BF16 or AMX) bf16
    GEMMs are emulated and never faster than float32's, so ``auto`` does not calibrate. Unknown (no
    /proc/cpuinfo): True, and the calibration decides."""
    return bf16_instructions(cpuinfo) is not False


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU as ``lscpu`` names it, with its family and model where the name alone does not tell
    one generation from another (``AMD EPYC (family 25, model 1)``); "" when the system does not say."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    name, family, model = (_first(text, key) for key in ("model name", "cpu family", "model"))
    return f"{name} (family {family}, model {model})" if name and family and model else name


def cpu_key(cpuinfo: str | None = None) -> dict[str, Any]:
    """What makes timings of one machine comparable: CPU model and flags, torch, threads."""
    import platform

    import torch

    text = _cpuinfo() if cpuinfo is None else cpuinfo
    flags = " ".join(sorted(_first(text, "flags").split()))
    return {"cpu": _first(text, "model name") or platform.processor() or platform.machine(),
            "flags": hashlib.sha256(flags.encode()).hexdigest()[:16], "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def weights_key(paths: Sequence[str | os.PathLike]) -> list[list[Any]]:
    """The weights files as ``[path, size, mtime_ns]``: a rewritten checkpoint is a new model."""
    found = []
    for path in paths:
        stat = Path(path).stat()
        found.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return found


def software_key() -> dict[str, str]:
    """The versions of nmt and torch: a new release of either can change which mode is faster."""
    import torch

    from nmt import __version__

    return {"nmt": __version__, "torch": torch.__version__}


def cache_key(weights: Sequence[str | os.PathLike], device: str, kernels: str, beam: int, shortlist: int,
              cpu: Mapping[str, Any] | None = None, sentences: int = MAX_SENTENCES,
              software: Mapping[str, str] | None = None, parts: int = 1) -> str:
    """The cache entry of one model, machine, software, search and batch size (beam, shortlist,
    the batch's :func:`size_class` and the ``parts`` it is searched in side by side, each on fewer
    threads, change which mode wins)."""
    key = {"weights": weights_key(weights), "machine": dict(cpu or cpu_key()), "device": device,
           "kernels": kernels, "beam": beam, "shortlist": shortlist > 0, "batch": size_class(sentences),
           "parts": parts, "length": LENGTH, "software": dict(software or software_key())}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------- the cache
def cache_file() -> Path:
    """``$NMT_CACHE_DIR/precision.json``, else ``$XDG_CACHE_HOME/nmt/...``, else ``~/.cache/nmt/...``."""
    root = os.environ.get("NMT_CACHE_DIR")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nmt")
    return Path(root) / "precision.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_choice(key: str, path: Path | None = None) -> PrecisionChoice | None:
    """The choice stored under ``key``, or None."""
    entry = _read_cache(path or cache_file()).get(key)
    if not isinstance(entry, dict) or entry.get("mode") not in ("float32", "bf16"):
        return None
    return PrecisionChoice(entry["mode"], str(entry.get("reason", "")), dict(entry.get("timings") or {}),
                           int(entry.get("rounds") or 0), cached=True, sentences=int(entry.get("sentences") or 0),
                           seconds=float(entry.get("seconds") or 0.0))


def store_choice(key: str, choice: PrecisionChoice, path: Path | None = None) -> None:
    """Add ``choice`` under ``key`` (atomically; a cache that cannot be written only costs a
    calibration next time)."""
    from nmt.atomic import atomic_write_json

    path = path or cache_file()
    entries = _read_cache(path)
    entries.pop(key, None)
    entries[key] = {"mode": choice.mode, "reason": choice.reason, "timings": choice.timings,
                    "rounds": choice.rounds, "sentences": choice.sentences, "seconds": choice.seconds,
                    "stored": time.time()}
    kept = dict(list(entries.items())[-CACHE_ENTRIES:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, kept)
    except OSError as exc:
        logger.info("precision auto: cache %s not written (%s)", path, exc)


# ---------------------------------------------------------------------------------- choosing
class _Silent:
    """A translator's ``warn`` that drops the calibration's warnings."""

    prefix = ""

    def __call__(self, kind: str, message: str) -> None:
        pass


def _without_timing(translator) -> PrecisionChoice | None:
    """The choice made without a calibration: a GPU, a small model, a CPU without bf16 instructions."""
    import torch

    device = translator.device
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", f"{torch.cuda.get_device_name(device)} supports bf16")
        return PrecisionChoice("float32", f"{torch.cuda.get_device_name(device)} has no bf16")
    if device.type != "cpu":
        return PrecisionChoice("float32", f"no calibration on {device.type}")
    parameters = sum(p.numel() for p in translator.model.parameters())
    if parameters < MIN_PARAMETERS:
        return PrecisionChoice("float32", f"{parameters:,} parameters: too small a model for bf16 to pay")
    if not native_bf16():
        return PrecisionChoice("float32", "the CPU has no bf16 instructions (avx512_bf16, amx_bf16)")
    return None


def choose_precision(translator, options, sentences: int | None = None,
                     twin=None) -> tuple[PrecisionChoice, Any]:
    """``(choice, bf16 twin or None)`` for ``translator`` (a float32
    :class:`~nmt.inference.translator.Translator`) searching with ``options`` in batches of
    ``sentences`` (None: the batches ``options.batch_tokens`` makes, :func:`calibration_sentences`):
    decided without timing where the device settles it, else the cached choice, else a calibration
    (cached when the translator came from weights files) with ``twin``, the bf16 translator of an
    earlier calibration, or a new one."""
    settled = _without_timing(translator)
    if settled is not None:
        return settled, twin
    length = min(LENGTH, options.max_input_len)  # nothing truncated (and warned about)
    sentences = calibration_sentences(options.batch_tokens, options.beam, sentences, length)
    key = None
    if translator.weights_files:
        # the calibration searches in the run's parts (search_ids): a choice made for others is not reused
        key = cache_key(translator.weights_files, translator.device.type, translator.recipe.model.kernels,
                        options.beam, options.shortlist, sentences=sentences, parts=translator.search_parts(options))
        cached = cached_choice(key)
        if cached is not None:
            return cached, twin
    started = time.perf_counter()
    twin = twin or translator.twin("bf16")
    best, rounds = _time_modes(translator, twin, options, sentences, length)
    timings = {mode: round(seconds, 6) for mode, seconds in best.items()}
    mode, reason = pick(timings)
    choice = PrecisionChoice(mode, reason, timings, rounds, sentences=sentences,
                             seconds=round(time.perf_counter() - started, 3))
    if key is not None:
        store_choice(key, choice)
    return choice, twin


def _time_modes(translator, twin, options, sentences: int, length: int) -> tuple[dict[str, float], int]:
    """:func:`calibrate` float32 (``translator``) against bf16 (``twin``) on a batch of
    ``sentences`` made-up sentences of about ``length`` subwords, searched for ``length`` steps."""
    from nmt.data.vocab import N_SPECIAL

    vocab = getattr(translator.tokenizers, "src_vocab_size", None) or translator.recipe.tokenizer.src_vocab_size
    sources = calibration_sources(vocab, N_SPECIAL, sentences, length)
    # one batch, as the run's batching makes it (a larger budget would not change the searches)
    batch_tokens = max(options.batch_tokens, sentences * (length + 1) * max(1, options.beam))
    settings = {**{k: v for k, v in asdict(options).items() if k not in ("beam", "n_best")},
                "max_len_a": 0.0, "max_len_b": length, "min_len": 0, "batch_tokens": batch_tokens}
    runners = {name: (lambda t=t: t.search_ids(sources, options.beam, options.n_best, **settings))
               for name, t in (("float32", translator), ("bf16", twin))}
    warn, translator.warn = translator.warn, _Silent()  # about made-up input: not the user's
    try:
        return calibrate(runners)
    finally:
        translator.warn = warn
