"""`nmt sweep`: train a grid of recipe variants on the same data, budget and seeds, then report.

Which activation and which attention suit a translation task is an empirical question; a sweep
answers it under controlled conditions. Every grid point x seed is one ordinary run directory
(``SWEEP_DIR/runs/<point>-seed<k>/``), trained by ``nmt train`` in its own process and evaluated on
the test split. The sweep directory then holds:

    sweep.json           what was swept (base recipe, grid, seeds, budget): a sweep never mixes
                         results of different recipes; a second call with other settings is refused
    results.json/.csv    one row per run, and per grid point the mean ± std over seeds
    report.md            the table and the plots below
    plots/bleu.png       test BLEU per grid point with error bars (std over seeds)
    plots/valid-loss.png valid loss curves of every run, overlaid
    plots/grad-norms.png per-part gradient norms (vanishing / exploding gradients show here)
    plots/activations.png the swept activation functions and their derivatives
    plots/attention-<kind>.png  one heatmap of the same test sentence per attention kind

An interrupted sweep resumes: finished runs are not retrained, an interrupted run continues from
its last checkpoint (``--resume``). SIGINT or SIGTERM to the sweep is passed on to the ``nmt train``
processes it runs (each in its own process group, so a terminal's Ctrl-C reaches them once, through
the sweep); they write a checkpoint and stop, no further run starts, and the sweep exits with
128 + the signal's number once they have ended: no training outlives the sweep.

``jobs`` > 1 trains that many runs at once, each with ``cpu_count // jobs`` torch threads (unless the
recipe sets ``train.num_threads`` to a number; ``auto`` would see the other jobs as load): the small
models of a sweep use one core better than two, so two one-thread runs on a 2-core CPU finish a grid
sooner than one two-thread run at a time (docs/results.md).
The thread count changes no result (same data order, same seeds), only the wall time; use a step
budget (``--steps``) rather than a time budget when running jobs side by side, so that every run
sees the same number of updates whatever the machine's load.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from nmt.atomic import atomic_write_json, atomic_write_text
from nmt.config import parse_override
from nmt.errors import NmtError
from nmt.inference.checkpoint import has_checkpoint
from nmt.training.loop import load_training_recipe


class SweepInterrupted(NmtError):
    """The sweep was stopped by a signal; its runs stopped at a checkpoint (re-running resumes)."""

    def __init__(self, signum: int):
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}: the running trainings wrote a "
                         "checkpoint and stopped; re-running the same nmt sweep command resumes")


class _Children:
    """The sweep's ``nmt train`` processes; a SIGINT/SIGTERM to the sweep is passed on to them."""

    def __init__(self):
        self.lock = threading.RLock()  # the handler runs in the main thread, which may hold it
        self.procs: set[subprocess.Popen] = set()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Children":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        with self.lock:
            self.signum = signum
            running = [p for p in self.procs if p.poll() is None]
            for proc in running:
                try:
                    proc.send_signal(signum)  # a second signal makes them stop at once, as nmt train does
                except OSError:
                    pass
        if not running:
            raise SweepInterrupted(signum)

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        with self.lock:
            if self.signum is not None:
                raise SweepInterrupted(self.signum)
            # own process group: a terminal's Ctrl-C reaches the training once, through _handle
            proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
            self.procs.add(proc)
        return proc

    def wait(self, proc: subprocess.Popen) -> int:
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.procs.discard(proc)

    def check(self) -> None:
        if self.signum is not None:
            raise SweepInterrupted(self.signum)



def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["model.activation=relu,gelu", ...]`` -> ``[("model.activation", ["relu", "gelu"]), ...]``."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        if "=" not in item:
            raise NmtError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. --grid model.activation=relu,gelu)")
        key, raw = item.split("=", 1)
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not key.strip() or not values:
            raise NmtError(f"--grid {item!r}: expected KEY=V1,V2,... with at least one value")
        if any(k == key.strip() for k, _ in grid):
            raise NmtError(f"--grid: key {key.strip()!r} given twice; list all its values in one --grid")
        grid.append((key.strip(), values))
    if not grid:
        raise NmtError("nmt sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def _slug(point: dict[str, str]) -> str:
    parts = []
    for key, value in point.items():
        short = key.split(".")[-1]
        parts.append(f"{short}={value}")
    text = "_".join(parts)
    return "".join(c if c.isalnum() or c in "=-_." else "-" for c in text)


def _budget_overrides(budget_minutes: float | None, steps: int | None) -> list[str]:
    if budget_minutes is not None and steps is not None:
        raise NmtError("give either --budget-minutes or --steps, not both")
    if budget_minutes is not None:
        if budget_minutes <= 0:
            raise NmtError("--budget-minutes must be > 0")
        return [f"train.budget_minutes={budget_minutes}", "train.max_steps=null"]
    if steps is not None:
        if steps <= 0:
            raise NmtError("--steps must be > 0")
        return [f"train.max_steps={steps}", "train.budget_minutes=null"]
    return []


def plan(recipe_path: str, overrides: list[str], grid: list[tuple[str, list[str]]], seeds: list[int],
         budget_minutes: float | None, steps: int | None) -> list[dict[str, Any]]:
    """Every run of the sweep, each validated as a recipe before anything is trained."""
    budget = _budget_overrides(budget_minutes, steps)
    runs = []
    keys = [k for k, _ in grid]
    for values in itertools.product(*[v for _, v in grid]):
        point = dict(zip(keys, values))
        for seed in seeds:
            run_overrides = list(overrides) + [f"{k}={v}" for k, v in point.items()] + budget + \
                [f"train.seed={seed}"]
            try:
                train = load_training_recipe(recipe_path, run_overrides).train
            except NmtError as exc:
                raise NmtError(f"grid point {point} (seed {seed}) is not a valid recipe:\n{exc}") from None
            runs.append({"point": point, "seed": seed, "overrides": run_overrides,
                         "name": f"{_slug(point)}-seed{seed}", "budget_minutes": train.budget_minutes,
                         "max_steps": train.max_steps})
    return runs


def time_estimate(runs: list[dict[str, Any]], jobs: int, points: int) -> str:
    """What the sweep is about to do and how long its training may take, said before it starts."""
    head = (f"sweep: {len(runs)} run(s) ({points} grid point(s) x {len(runs) // max(1, points)} seed(s)), "
            f"{jobs} at a time")
    budgets = [r.get("budget_minutes") for r in runs]
    if all(b is not None for b in budgets):
        waves = -(-len(runs) // jobs)  # ceil: runs start as earlier ones end
        longest = max(budgets)
        return (f"{head}; training takes at most about {waves * longest:.0f} minutes "
                f"({waves} wave(s) of up to {longest:g} minutes, each run's train.budget_minutes), "
                "plus a test evaluation per run")
    steps = sorted({r.get("max_steps") for r in runs if r.get("max_steps")})
    bound = f"{steps[-1]} updates each" if steps else "their recipe's stop criteria"
    return f"{head}; runs stop after {bound}, with no time bound (--budget-minutes N bounds each run)"


def _manifest(recipe_path: str, overrides, grid, seeds, budget_minutes, steps) -> dict[str, Any]:
    base = load_training_recipe(recipe_path, overrides, require_stop=False)  # the runs add the budget
    return {"recipe": base.to_dict(), "recipe_path": str(recipe_path), "overrides": list(overrides),
            "grid": [[k, v] for k, v in grid], "seeds": seeds, "budget_minutes": budget_minutes,
            "steps": steps}


def _check_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    path = out_dir / "sweep.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise NmtError(f"--out-dir {out_dir} is a file, not a directory; give a directory for the sweep")
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise NmtError(f"{path} cannot be read ({exc}); it records what the sweep in {out_dir} "
                           "trains. Restore it, or use another --out-dir") from None
        if not isinstance(old, dict):
            raise NmtError(f"{path} holds {type(old).__name__}, not the sweep's settings; restore it, "
                           "or use another --out-dir")
        for key in ("recipe", "grid", "seeds", "budget_minutes", "steps", "overrides"):
            if old.get(key) != manifest.get(key):
                raise NmtError(f"{out_dir} holds a sweep with a different {key}; results of different "
                               "sweeps are never mixed. Use another --out-dir, or restore the settings "
                               "to resume that sweep")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, manifest)


def _train_run(recipe_path: str, run: dict[str, Any], run_dir: Path, log_path: Path,
               threads: int | None = None, children: _Children | None = None) -> None:
    children = children or _Children()
    resume = has_checkpoint(run_dir)
    cmd = [sys.executable, "-m", "nmt", "train", str(recipe_path), "--run-dir", str(run_dir)]
    for override in run["overrides"]:
        cmd += ["--set", override]
    if threads is not None:
        cmd += ["--set", f"train.num_threads={threads}"]
    if resume:
        cmd.append("--resume")
    env = {**os.environ, "NMT_NO_PROGRESS": "1"}
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = children.start(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        returncode = children.wait(proc)
    children.check()
    if returncode != 0:
        raise NmtError(f"training {run['name']} failed (exit {returncode}); see {log_path}. "
                       "Re-running the same nmt sweep command resumes it")


def _summarise_run(run: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from nmt.tools.evaluate import evaluate_run

    from nmt.figures import read_metrics

    summary = json.loads((run_dir / "train_summary.json").read_text(encoding="utf-8"))
    # a corrupt record is a DataError naming the file and line; an incomplete last line is skipped
    valid = [r for r in read_metrics(run_dir) if r.get("kind") == "valid"]
    test = evaluate_run(run_dir, split="test", metrics=["bleu", "chrf"], command="nmt sweep")
    return {
        "name": run["name"], **{k: v for k, v in run["point"].items()}, "seed": run["seed"],
        "parameters": summary.get("parameters"), "steps": summary["steps"],
        "train_tokens_per_s": summary["train_tokens_per_s"],
        "best_valid_loss": min((r["loss"] for r in valid), default=None),
        "best_valid_bleu": max((r["bleu"] for r in valid), default=None),
        "test_bleu": test["scores"]["bleu"]["score"], "test_chrf": test["scores"]["chrf"]["score"],
        "nan_skips": summary.get("nan_skips", 0), "run_dir": str(run_dir),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def aggregate(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for point, members in groups.items():
        entry = dict(zip(keys, point))
        entry["seeds"] = len(members)
        entry["parameters"] = members[0]["parameters"]
        for metric in ("train_tokens_per_s", "best_valid_loss", "test_bleu", "test_chrf"):
            mean, std = _mean_std([m[metric] for m in members])
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean, std
        out.append(entry)
    return out


def _write_tables(out_dir: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
    atomic_write_json(out_dir / "results.json", {"runs": rows, "grid_points": summary})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "results.csv", buffer.getvalue())


def _fmt(mean: float, std: float, digits: int = 2, seeds: int = 2) -> str:
    if mean != mean:  # NaN
        return "n/a"
    if seeds < 2:  # one seed: no spread to report
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _write_report(out_dir: Path, manifest: dict[str, Any], keys: list[str],
                  summary: list[dict[str, Any]], plots: list[str], command: str,
                  jobs: int = 1, threads: int | None = None) -> None:
    axes = "; ".join(f"{k} in {{{', '.join(v)}}}" for k, v in manifest["grid"])
    lines = [f"# Sweep report: {Path(manifest['recipe_path']).name}", "",
             f"Command: `{command}`", "",
             f"Grid: {axes}; "
             f"seeds {manifest['seeds']}; budget "
             + (f"{manifest['budget_minutes']} minutes" if manifest["budget_minutes"] else
                f"{manifest['steps']} steps" if manifest["steps"] else "as in the recipe")
             + " per run. Mean ± std over seeds (when more than one); test scores with the "
               "best-validation checkpoint and the recipe's beam."
             + (f" Runs were trained {jobs} at a time ({threads or 'recipe'} thread(s) each): tokens/s "
                "compares the runs of this sweep with each other, not with a benchmark on an idle "
                "machine." if jobs > 1 else ""), ""]
    header = keys + ["params", "tokens/s", "best valid loss", "test BLEU", "test chrF"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for entry in sorted(summary, key=lambda e: -e["test_bleu_mean"] if e["test_bleu_mean"] == e["test_bleu_mean"] else 0):
        cells = [str(entry[k]) for k in keys] + [
            f"{entry['parameters']:,}" if entry["parameters"] else "n/a",
            _fmt(entry["train_tokens_per_s_mean"], entry["train_tokens_per_s_std"], 0, entry["seeds"]),
            _fmt(entry["best_valid_loss_mean"], entry["best_valid_loss_std"], 3, entry["seeds"]),
            _fmt(entry["test_bleu_mean"], entry["test_bleu_std"], 2, entry["seeds"]),
            _fmt(entry["test_chrf_mean"], entry["test_chrf_std"], 2, entry["seeds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    atomic_write_text(out_dir / "report.md", "\n".join(lines))


def _make_plots(out_dir: Path, keys: list[str], rows: list[dict[str, Any]], summary: list[dict[str, Any]],
                grid: list[tuple[str, list[str]]]) -> list[str]:
    from nmt.figures import plot_attention, plot_bars, plot_curves, plot_grad_norms
    from nmt.tools.plots import plot_activations

    plots_dir = out_dir / "plots"
    made: list[str] = []
    labels = [" / ".join(str(e[k]) for k in keys) for e in summary]
    plot_bars(labels, [e["test_bleu_mean"] for e in summary], [e["test_bleu_std"] for e in summary],
              plots_dir / "bleu.png", ylabel="test BLEU", title="Test BLEU (mean ± std over seeds)")
    made.append("plots/bleu.png")
    run_dirs = [r["run_dir"] for r in rows]
    plot_curves(run_dirs, plots_dir / "valid-loss.png")
    made.append("plots/valid-loss.png")
    try:
        plot_grad_norms(run_dirs, plots_dir / "grad-norms.png")
        made.append("plots/grad-norms.png")
    except NmtError:
        pass  # runs too short to have logged gradient norms
    activations = dict(grid).get("model.activation")
    if activations:
        plot_activations(activations, plots_dir / "activations.png")
        made.append("plots/activations.png")
    kinds = dict(grid).get("model.attention.kind")
    if kinds:
        from nmt.data.corpus import load_corpus
        from nmt.inference.translator import Translator

        for kind in kinds:
            row = next(r for r in rows if r.get("model.attention.kind") == kind)
            translator = Translator.load(row["run_dir"])
            source = next(s for s in load_corpus(translator.recipe.data, splits=("test",))["test"]["src"] if s.strip())
            result = translator.translate([source], beam=1, return_attention=True)[0]
            hyp = result.hypotheses[0]
            plot_attention(hyp.attention.float().numpy(), hyp.src_tokens, hyp.tokens,
                           plots_dir / f"attention-{kind}.png", title=f"{kind} attention ({row['name']})",
                           positions=None if hyp.positions is None else hyp.positions.float().numpy())
            made.append(f"plots/attention-{kind}.png")
    return made


def run_sweep(recipe_path: str, grid_items: list[str], overrides: list[str] | None = None,
              seeds: list[int] | None = None, budget_minutes: float | None = None, steps: int | None = None,
              out_dir: str | os.PathLike | None = None, command: str | None = None,
              jobs: int = 1) -> dict[str, Any]:
    """Train (or resume) every run of the grid, ``jobs`` at a time, then write the report."""
    if jobs < 1:
        raise NmtError(f"--jobs {jobs}: must be at least 1")
    overrides = list(overrides or [])
    grid = parse_grid(grid_items)
    base = load_training_recipe(recipe_path, overrides, require_stop=False)  # plan() checks each run
    for key, _ in grid:
        parse_override(f"{key}=x")  # the key's form; its values are validated in plan()
    seeds = seeds or [base.train.seed]
    out = Path(out_dir) if out_dir else Path("runs") / f"sweep-{Path(recipe_path).stem}"
    runs = plan(recipe_path, overrides, grid, seeds, budget_minutes, steps)
    manifest = _manifest(recipe_path, overrides, grid, seeds, budget_minutes, steps)
    _check_manifest(out, manifest)
    keys = [k for k, _ in grid]
    threads = None
    if jobs > 1 and not isinstance(base.train.num_threads, int):  # jobs would see each other as load
        threads = max(1, (os.cpu_count() or jobs) // jobs)
    if jobs > 1:
        import torch  # evaluation of finished runs shares this process: keep it to its share of cores

        fixed = base.train.num_threads if isinstance(base.train.num_threads, int) else None
        if threads or fixed:  # with num_threads auto each run chooses its own
            torch.set_num_threads(threads or fixed)
    print_lock = threading.Lock()

    def say(message: str) -> None:
        with print_lock:
            print(message, file=sys.stderr, flush=True)

    say(time_estimate(runs, jobs, len(runs) // len(seeds)))

    def one(i: int, run: dict[str, Any]) -> dict[str, Any]:
        run_dir = out / "runs" / run["name"]
        result_path = run_dir / "sweep_result.json"
        if result_path.is_file():
            say(f"[{i}/{len(runs)}] {run['name']}: done earlier")
            # where the run is now: a sweep directory may have been moved or copied since
            return {**json.loads(result_path.read_text(encoding="utf-8")), "run_dir": str(run_dir)}
        start = time.perf_counter()
        say(f"[{i}/{len(runs)}] {run['name']}: training")
        if not _finished(run_dir):  # fresh, or interrupted: _train_run resumes from its checkpoint
            log = out / "sweep.log" if jobs == 1 else out / "logs" / f"{run['name']}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            _train_run(recipe_path, run, run_dir, log, threads, children)
            if not _finished(run_dir):  # stopped by a signal: never report a half-trained run
                raise NmtError(f"training {run['name']} was interrupted; re-running the same nmt sweep "
                               "command resumes it")
        row = _summarise_run(run, run_dir)
        atomic_write_json(result_path, row)
        say(f"[{i}/{len(runs)}] {run['name']}: test BLEU {row['test_bleu']:.2f} "
            f"({time.perf_counter() - start:.0f}s)")
        return row

    with _Children() as children:
        if jobs == 1:
            rows = [one(i, run) for i, run in enumerate(runs, 1)]
        else:
            pool = ThreadPoolExecutor(max_workers=jobs)  # each job waits on its own subprocess
            futures = [pool.submit(one, i, run) for i, run in enumerate(runs, 1)]
            try:
                for future in as_completed(futures):
                    future.result()  # the first failure stops the sweep: no run is started after it
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # running jobs end; re-running resumes
                raise
            pool.shutdown()
            rows = [f.result() for f in futures]  # plan order
    summary = aggregate(rows, keys)
    _write_tables(out, rows, summary)
    plots = _make_plots(out, keys, rows, summary, grid)
    _write_report(out, manifest, keys, summary, plots, command or "nmt sweep", jobs, threads)
    return {"out_dir": str(out), "runs": rows, "grid_points": summary}


def _finished(run_dir: Path) -> bool:
    """Trained to its end (a run stopped by a signal wrote a summary too, but must resume)."""
    summary = run_dir / "train_summary.json"
    if not summary.is_file():
        return False
    return not json.loads(summary.read_text(encoding="utf-8"))["stopped"].startswith("signal")


def sweep_cli(args) -> int:
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise NmtError(f"--seeds {args.seeds!r}: expected a comma list of integers, e.g. 1,2,3") from None
    command = "nmt sweep " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "nmt sweep"
    result = run_sweep(args.recipe, args.grid, args.overrides, seeds, args.budget_minutes, args.steps,
                       args.out_dir, command=command, jobs=args.jobs)
    print(f"sweep report: {Path(result['out_dir']) / 'report.md'}")
    return 0
