"""`nmt bench`: measured speed, never guessed.

- ``bench train RECIPE``: trains ``--warmup + --steps`` updates in a scratch run directory and
  reports target tokens/s (real target tokens incl. EOS, no padding, validation excluded — counted
  as JoeyNMT counts them) over the steps after the warm-up, plus peak resident memory. With
  ``--flops`` it also counts the matrix-multiply FLOPs of a training step per target token
  (``torch.utils.flop_counter`` over forward + backward of real batches of the recipe) and measures
  the machine's GEMM peak in the recipe's precision, so the achieved FLOP/s is reported as a
  fraction of what this CPU can do at all.
- ``bench translate RUN_DIR``: decodes a split of the run's corpus, timing search and
  detokenization only (as the JoeyNMT reference does), and reports sentences/s, target tokens/s
  and the BLEU/chrF of what was decoded, so no speed is quoted without its quality.
- ``--beside-busy K`` (both): K busy processes run on the machine during the measurement, each
  one CPU-bound thread (:data:`BUSY_CODE`), started before and stopped after it in all cases;
  the JSON records them and the CPU share each got. Speed under load is measured against a
  known load instead of whatever else the machine is doing.
- Under ``torchrun --nproc_per_node N -m nmt bench train`` the processes train one run together
  (data parallel); the main process reports, and only local rank 0 starts busy processes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from nmt.config import DecodeConfig, decode_arguments, decode_flag_label
from nmt.errors import NmtError
from nmt.tools.decoding import apply_settings, call_options


#: the busy processes of ``--beside-busy``: one thread, a tight CPU-bound loop, and nothing else.
#: ``spin`` is pure-Python integer arithmetic: it needs a core and nothing else, like a compiler or
#: a scripted job. ``matmul`` multiplies 256 x 256 float32 matrices with one torch thread: it
#: also competes for the caches, memory bandwidth and vector units, like another model training.
#: Each loop prints ``ready`` once running, its CPU seconds when stopped (SIGTERM), ignores Ctrl-C
#: (the benchmark stops it) and exits by itself when the benchmark's process is gone.
BUSY_CODE = {
    "spin": """
x = 1
def work():
    global x
    for _ in range(200_000):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
""",
    "matmul": """
import torch
torch.set_num_threads(1)
a, b = torch.randn(256, 256), torch.randn(256, 256)
out = torch.empty(256, 256)
def work():
    for _ in range(50):
        torch.mm(a, b, out=out)
""",
}

_BUSY_LOOP = """
import os, signal, sys, time
parent = int(sys.argv[1])
def stop(signum, frame):
    print(f"{time.process_time():.3f}", flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", flush=True)
while os.getppid() == parent:
    work()
"""


class BusyProcesses:
    """``count`` busy processes (:data:`BUSY_CODE` ``kind``) while the ``with`` block runs."""

    def __init__(self, count: int, kind: str = "spin"):
        if count < 0:
            raise NmtError(f"--beside-busy must be >= 0, got {count}")
        if kind not in BUSY_CODE:
            raise NmtError(f"--busy-kind {kind!r}: expected one of {', '.join(BUSY_CODE)}")
        self.count, self.kind = count, kind
        self.procs: list = []
        self.started = self.wall = 0.0
        self.cpu_seconds: list[float | None] = []

    def __enter__(self) -> "BusyProcesses":
        import subprocess
        import sys

        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            for _ in range(self.count):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", BUSY_CODE[self.kind] + _BUSY_LOOP, str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, text=True))
            for proc in self.procs:  # each is in its loop before the measurement starts
                if proc.stdout.readline().strip() != "ready":
                    raise NmtError(f"a --beside-busy process ({self.kind}) did not start "
                                   f"(exit status {proc.wait()})")
        except BaseException:
            self.stop()
            raise
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        import subprocess

        wall = time.perf_counter() - self.started
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        self.cpu_seconds = []
        for proc in self.procs:
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            try:
                self.cpu_seconds.append(float(out.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                self.cpu_seconds.append(None)
        self.wall = wall
        self.procs = []

    def report(self) -> dict[str, Any]:
        """What ran beside the measurement: kind, count and each process's CPU share."""
        if not self.count:
            return {}
        return {"busy_kind": self.kind, "busy_cpu_share": [
            None if c is None or not self.wall else round(c / self.wall, 3) for c in self.cpu_seconds]}


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _machine() -> dict[str, Any]:
    import torch

    from nmt.inference.precision_auto import cpu_description

    return {"cpu": cpu_description(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "processes": int(os.environ.get("WORLD_SIZE", "1") or 1)}


def gemm_peak_gflops(dtype_name: str = "float32", seconds: float = 2.0) -> dict[str, Any]:
    """Measured GEMM throughput of this machine (best of a few shapes typical of the model), GFLOP/s.

    Shapes: (tokens x 256) @ (256 x 768), a GRU's gate projection, and (1024 x 256) @ (256 x 8000),
    an output layer; float32, or bfloat16 inputs as autocast runs them.
    """
    import torch

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    best: dict[str, Any] = {"gflops": 0.0}
    for m, k, n in [(4096, 256, 768), (1024, 256, 8000)]:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            torch.mm(a, b)
            reps += 1
        gflops = 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9
        if gflops > best["gflops"]:
            best = {"gflops": round(gflops, 1), "shape": f"({m}x{k}) @ ({k}x{n})", "dtype": str(dtype)}
    best["threads"] = torch.get_num_threads()
    return best


def train_flops_per_token(recipe, run_dir: Path, batches: int = 16, backward: bool = True) -> float:
    """Matrix-multiply FLOPs of one training step (forward + backward) per real target token.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` on ``batches`` batches drawn by the
    recipe's own sampler from the first 20k training pairs, with the tokenizers of ``run_dir``.
    Elementwise work (activations, softmax, the optimizer) is not counted: this is the work a
    GEMM peak can be compared with.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from nmt.data.batching import TokenBatchSampler, collate, encode_dataset, lengths_of
    from nmt.data.corpus import load_corpus
    from nmt.data.tokenizer import SubwordTokenizers
    from nmt.model.seq2seq import build_model
    from nmt.training.batch_vocab import BatchVocabulary

    t = recipe.train
    train_split = load_corpus(recipe.data, splits=("train",))["train"]
    # the run's own tokenizers (trained on the whole split), not new ones from the sample
    tokenizers = SubwordTokenizers.load_or_train(recipe.tokenizer, train_split, run_dir)
    train_split = train_split.select(range(min(20000, len(train_split))))
    f = recipe.data.filter
    ds = encode_dataset(train_split, tokenizers, max_len=f.max_len, max_ratio=f.max_ratio, min_len=f.min_len)
    src_lens, tgt_lens = lengths_of(ds)
    sampler = TokenBatchSampler(src_lens, tgt_lens, batch_tokens=t.batch_tokens, max_sentences=t.max_sentences,
                                bucket_width=t.bucket_width, seed=t.seed)
    model = build_model(recipe.model, tokenizers.src_vocab_size, tokenizers.tgt_vocab_size).train()
    batch_vocab = BatchVocabulary.for_training(t, ds, tokenizers.tgt_vocab_size)
    flops, tokens = 0, 0
    for i, indices in enumerate(sampler):
        if i == batches:
            break
        rows = ds[list(indices)]
        batch = collate([{"src_ids": s, "tgt_ids": tg} for s, tg in zip(rows["src_ids"], rows["tgt_ids"])])
        with FlopCounterMode(display=False) as counter:
            subset = None if batch_vocab is None else batch_vocab.subset(batch.tgt_out, batch.tgt_mask, (i,))
            loss, _ = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in, batch.tgt_out,
                            batch.tgt_mask, label_smoothing=t.label_smoothing, subset=subset)
            if backward:
                loss.backward()
        model.zero_grad(set_to_none=True)
        flops += counter.get_total_flops()
        tokens += batch.n_tgt_tokens
    return flops / max(1, tokens)


def bench_train(recipe_path: str, overrides: list[str], steps: int, warmup: int,
                flops: bool = False, kernels: str | None = None, beside_busy: int = 0,
                busy_kind: str = "spin") -> dict[str, Any] | None:
    """Training throughput of a recipe (see the module docstring); None in the processes of a
    torchrun launch other than the main one."""

    from nmt.config import load_recipe
    from nmt.training.threads import prepare

    if steps <= 0 or warmup < 0:
        raise NmtError("--steps must be > 0 and --warmup >= 0")
    total = steps + warmup
    if kernels is not None:
        overrides = list(overrides) + [f"model.kernels={kernels}"]
    run_overrides = list(overrides) + [
        f"train.max_steps={total}", "train.log_every=1", f"train.valid_every={10 * total + 1}",
        "train.valid_max_sentences=16", "train.plot_sentences=0", "train.budget_minutes=null",
        "train.max_epochs=null", "train.patience=null"]
    recipe = load_recipe(recipe_path, run_overrides)  # a bad recipe fails here
    main = int(os.environ.get("RANK", "0") or 0) == 0
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    with BusyProcesses(beside_busy if int(os.environ.get("LOCAL_RANK", "0") or 0) == 0 else 0,
                       busy_kind) as busy:
        # after the busy processes started, before torch is loaded: num_threads auto sees them
        # and may still choose OpenMP's wait policy
        threads = prepare(recipe.train.num_threads)
        from nmt.training.loop import train  # train() checks the model section and the stop criteria

        with _scratch_dir() as tmp:
            start = time.perf_counter()
            summary = train(recipe, run_dir=tmp / "run", recipe_path=recipe_path)
            wall = time.perf_counter() - start
            if not main:
                return None
            records = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
            per_token = train_flops_per_token(recipe, tmp / "run") if flops else None
    timed = [r for r in records if r.get("kind") == "train" and r["step"] > warmup]
    tokens = sum(r["tokens"] for r in timed)
    seconds = sum(r["seconds"] for r in timed)
    extra: dict[str, Any] = {}
    if per_token is not None and seconds:
        peak = gemm_peak_gflops("bf16" if recipe.train.precision == "bf16" else "float32")
        achieved = per_token * tokens / seconds / 1e9
        extra = {"gemm_flops_per_target_token": round(per_token), "achieved_gflops": round(achieved, 1),
                 "gemm_peak": peak, "fraction_of_peak": round(achieved / peak["gflops"], 3)}
    return {
        "what": "train", "recipe": recipe_path, "overrides": overrides, "precision": recipe.train.precision,
        "softmax": recipe.train.softmax, "kernels": recipe.model.kernels,
        "steps_timed": len(timed), "warmup_steps": warmup, "target_tokens": tokens,
        "seconds": round(seconds, 3), "target_tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "steps_per_s": round(len(timed) / seconds, 3) if seconds else None,
        "peak_rss_mib": round(peak_rss_mib(), 1), "command_wall_seconds": round(wall, 1),
        "beside_busy": beside_busy, **busy.report(), "load_average_before": load_before,
        "num_threads": threads.as_dict(),
        "machine": _machine(), "train_summary": summary, **extra,
    }


@contextlib.contextmanager
def _scratch_dir() -> Iterator[Path]:
    """A temporary directory; under torchrun one shared by the processes of the launch (named by
    its run id), removed by the main process."""
    import shutil

    if not _launched():
        with tempfile.TemporaryDirectory(prefix="nmt-bench-") as tmp:
            yield Path(tmp)
        return
    run_id = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}-{os.environ.get('MASTER_PORT', '')}"
    path = Path(tempfile.gettempdir()) / f"nmt-bench-{run_id}"
    path.mkdir(exist_ok=True)
    try:
        yield path
    finally:
        if int(os.environ.get("RANK", "0") or 0) == 0:
            shutil.rmtree(path, ignore_errors=True)


def decode_split_timed(translator, sources: Sequence[str], beam: int | None = None,
                       batch_tokens: int | None = None, batch_sentences: int | None = None,
                       shortlist: int | None = None, settings: DecodeConfig | None = None
                       ) -> tuple[list[str], float, int]:
    """Translate ``sources`` timing only the search and detokenization (not loading/encoding).

    ``settings``: the search settings (default: the translator's recipe ``decode`` section);
    ``beam``, ``batch_tokens``, ``shortlist``: ``None`` keeps the value of ``settings``.
    ``batch_sentences`` makes fixed batches of that many sentences (longest first) instead of
    token batches. Returns ``(translations, seconds, n_target_tokens)``, the last counting the
    generated target subwords including EOS.
    """
    given = call_options(settings, n_best=1) if settings is not None else {}
    given.update({k: v for k, v in (("beam", beam), ("batch_tokens", batch_tokens), ("shortlist", shortlist))
                  if v is not None})
    # the options load a shortlist's lexicon, before the clock starts as the model is
    options = translator.decode_options(**given)
    items = translator.encode(sources)
    fixed = {"batch_sentences": batch_sentences} if batch_sentences else {}  # the torch engine's option
    batches = translator.batches(items, beam=options.beam, batch_tokens=options.batch_tokens, **fixed)
    start = time.perf_counter()
    found = translator.search_batches(batches, options)
    best = [found[it.index][0] if found.get(it.index) else None for it in items]
    texts = iter(translator.detokenize([h for h in best if h is not None]))
    out = [next(texts) if h is not None else "" for h in best]
    seconds = time.perf_counter() - start
    n_tokens = sum(len(h.tokens) for h in best if h is not None)
    return out, seconds, n_tokens


def bench_translate(run_dir: str | Sequence[str], split: str = "test", batch_sentences: int | None = None,
                    checkpoint: str = "best", quantize: bool = False, precision: str | None = None,
                    decode: Mapping[str, Any] | None = None,
                    label: Callable[[str], str] | None = None, kernels: str | None = None,
                    beside_busy: int = 0, busy_kind: str = "spin", engine: str = "torch") -> dict[str, Any]:
    """Decoding speed and quality on ``split`` of the run's corpus; ``decode`` settings are laid
    over the run's recipe ``decode`` section (problems named ``label(key)``); ``kernels`` replaces
    the run's ``model.kernels``; several run directories measure their ensemble; ``beside_busy``
    busy processes run during the decoding. ``quantize=True`` is refused (int8 runs on the ONNX
    engine: ``nmt export --quantize int8``). ``engine="onnx"``: ``run_dir`` is an export directory
    (``nmt export``), searched on onnxruntime; its precision is the export's (float32 or int8)."""
    from nmt.data.corpus import load_corpus
    from nmt.metrics import score_corpus

    load_start = time.perf_counter()
    onnx = engine == "onnx"
    if onnx:
        from nmt.inference.onnx_translator import OnnxTranslator

        translator = OnnxTranslator.load(_one_export(run_dir))
    else:
        from nmt.inference.translator import Translator

        translator = Translator.load(run_dir, checkpoint=checkpoint, quantize=quantize, precision=precision,
                                     kernels=kernels)
    settings = apply_settings(translator, decode, label)
    # auto's calibration counts as loading; an export's precision is the one it was exported in
    choice = None if onnx else translator.resolve_precision(settings, batch_sentences=batch_sentences)
    mode = (translator.meta.get("quantize") or "float32") if onnx else translator.precision
    kernels_used = None if onnx else translator.recipe.model.kernels
    load_seconds = time.perf_counter() - load_start
    corpus = load_corpus(translator.recipe.data, splits=(split,))[split]
    sources, references = list(corpus["src"]), list(corpus["tgt"])

    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    with BusyProcesses(beside_busy, busy_kind) as busy:
        # warm-up
        decode_split_timed(translator, sources[:32], batch_sentences=batch_sentences, settings=settings)
        hyps, seconds, n_tokens = decode_split_timed(translator, sources, batch_sentences=batch_sentences,
                                                     settings=settings)
    scores = score_corpus(hyps, [references], metrics=("bleu", "chrf"),
                          bleu_tokenize=translator.recipe.eval.bleu_tokenize)
    return {
        "what": "translate", "run_dir": _runs_label(run_dir), "checkpoint": checkpoint, "split": split,
        "beam": settings.beam, "batch_tokens": settings.batch_tokens, "batch_sentences": batch_sentences,
        "engine": engine, "precision": mode,
        **({"precision_auto": choice.as_record()} if choice is not None else {}),
        "kernels": kernels_used,
        "shortlist": settings.shortlist,
        "decode": dataclasses.asdict(settings), "sentences": len(sources), "seconds": round(seconds, 3),
        "sentences_per_s": round(len(sources) / seconds, 1),
        "target_tokens_per_s": round(n_tokens / seconds, 1), "target_tokens_incl_eos": n_tokens,
        "bleu": round(scores["bleu"]["score"], 2), "chrf": round(scores["chrf"]["score"], 2),
        "bleu_signature": scores["bleu"]["signature"], "load_seconds": round(load_seconds, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1), "beside_busy": beside_busy, **busy.report(),
        "load_average_before": load_before, "machine": _machine(),
    }


def _one_export(run_dir: str | Sequence[str]) -> str:
    from nmt.inference.checkpoint import as_run_dirs

    exports = as_run_dirs(run_dir)
    if len(exports) != 1:
        raise NmtError(f"--engine onnx measures one export directory, got {len(exports)}")
    return exports[0]


def _runs_label(run_dir) -> str:
    """A run directory, or an ensemble's run directories joined by ``+``."""
    from nmt.inference.checkpoint import as_run_dirs

    return "+".join(map(str, as_run_dirs(run_dir)))


def bench_cli(args) -> int:
    if args.what == "train":
        result = bench_train(args.recipe, args.overrides, args.steps, args.warmup, flops=args.flops,
                             kernels=args.kernels, beside_busy=args.beside_busy, busy_kind=args.busy_kind)
        if result is None:  # a torchrun process other than the main one
            return 0
        line = (f"train {args.recipe}: {result['target_tokens_per_s']:,} target tokens/s "
                f"({result['steps_per_s']} steps/s over {result['steps_timed']} steps after "
                f"{result['warmup_steps']} warm-up; precision {result['precision']}, "
                f"kernels {result['kernels']}, {result['machine']['threads']} thread(s)"
                f"{_busy_words(result)}), peak RSS {result['peak_rss_mib']:.0f} MiB")
        if "fraction_of_peak" in result:
            line += (f"; {result['gemm_flops_per_target_token'] / 1e6:.1f} MFLOP (GEMM) per target token = "
                     f"{result['achieved_gflops']} GFLOP/s, {100 * result['fraction_of_peak']:.0f}% of the "
                     f"measured {result['gemm_peak']['dtype']} GEMM peak {result['gemm_peak']['gflops']} GFLOP/s")
    else:
        if args.engine == "onnx":
            from nmt.tools.translate import refuse_torch_only_options

            refuse_torch_only_options(args)
        result = bench_translate(args.run_dir, args.split, args.batch_sentences, args.checkpoint,
                                 False, args.precision, decode=decode_arguments(args),
                                 label=decode_flag_label, kernels=args.kernels,
                                 beside_busy=args.beside_busy, busy_kind=args.busy_kind, engine=args.engine)
        mode = (result["precision"] + (" (auto)" if "precision_auto" in result else "")
                + (f", kernels {result['kernels']}" if result["engine"] == "torch" else ", onnx")
                + (f", shortlist {result['shortlist']}" if result["shortlist"] else "") + _busy_words(result))
        line = (f"translate {_runs_label(args.run_dir)} [{args.split}, beam {result['beam']}, {mode}]: "
                f"{result['sentences_per_s']:,} sentences/s, {result['target_tokens_per_s']:,} target tokens/s "
                f"({result['sentences']} sentences in {result['seconds']} s); BLEU {result['bleu']} "
                f"chrF {result['chrf']}; peak RSS {result['peak_rss_mib']:.0f} MiB")
    print(json.dumps(result, indent=2) if args.json else line)
    return 0


def _busy_words(result: Mapping[str, Any]) -> str:
    if not result.get("beside_busy"):
        return ""
    shares = ", ".join("?" if x is None else f"{100 * x:.0f}%" for x in result["busy_cpu_share"])
    return f"; beside {result['beside_busy']} busy process(es), {result['busy_kind']}, CPU share {shares}"
