"""nmt sweep: a 2 x 2 grid of the tiny recipe, its report, resumption, refusal to mix sweeps."""
import csv
import time
from pathlib import Path

import pytest
import torch

from nmt.errors import NmtError
from nmt.tools.sweep import aggregate, parse_grid, run_sweep

GRID = ["model.activation=relu,arelu", "model.attention.kind=bahdanau,luong-general"]


@pytest.fixture
def sweep_overrides(fast):
    """The fast tiny recipe, validated every 4 steps with beam 2."""
    return fast + ["train.valid_every=4", "decode.beam=2"]


@pytest.mark.slow
def test_two_by_two_grid_reports_and_resumes(repo, tmp_path, sweep_overrides):
    out = tmp_path / "sweep"
    result = run_sweep(str(repo / "recipes/tiny.yaml"), GRID, sweep_overrides, seeds=[1], steps=4, out_dir=out)
    assert len(result["runs"]) == 4
    with open(out / "results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert {(r["model.activation"], r["model.attention.kind"]) for r in rows} == {
        ("relu", "bahdanau"), ("relu", "luong-general"), ("arelu", "bahdanau"), ("arelu", "luong-general")}
    for r in rows:
        assert 0.0 <= float(r["test_bleu"]) <= 100.0 and float(r["train_tokens_per_s"]) > 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.count("| relu |") + report.count("| arelu |") == 4
    for plot in ["bleu.png", "valid-loss.png", "activations.png", "attention-bahdanau.png",
                 "attention-luong-general.png"]:
        assert (out / "plots" / plot).is_file(), plot
    checkpoints = sorted(out.rglob("checkpoints/*.safetensors"))
    assert len(checkpoints) == 8  # best and last of each run
    stamps = {p: p.stat().st_mtime_ns for p in checkpoints}
    again = run_sweep(str(repo / "recipes/tiny.yaml"), GRID, sweep_overrides, seeds=[1], steps=4, out_dir=out)
    assert [r["test_bleu"] for r in again["runs"]] == [r["test_bleu"] for r in result["runs"]]
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == stamps, "finished runs were not retrained"
    with pytest.raises(NmtError, match="different"):
        run_sweep(str(repo / "recipes/tiny.yaml"), GRID, sweep_overrides, seeds=[1], steps=6, out_dir=out)
    moved = tmp_path / "moved"
    out.rename(moved)  # a finished sweep directory still reports after a move
    again = run_sweep(str(repo / "recipes/tiny.yaml"), GRID, sweep_overrides, seeds=[1], steps=4, out_dir=moved)
    assert all(Path(r["run_dir"]).parent == moved / "runs" for r in again["runs"])


def test_invalid_grid_point_fails_before_training(repo, tmp_path, sweep_overrides):
    with pytest.raises(NmtError, match="not a valid recipe"):
        run_sweep(str(repo / "recipes/tiny.yaml"), ["model.activation=relu,notanactivation"], sweep_overrides,
                  steps=2, out_dir=tmp_path / "s")
    assert not (tmp_path / "s" / "runs").exists()


def test_parse_grid_errors():
    assert parse_grid(["a.b=1,2"]) == [("a.b", ["1", "2"])]
    for bad in [["a.b"], ["a.b="], ["a.b=1", "a.b=2"]]:
        with pytest.raises(NmtError):
            parse_grid(bad)
    with pytest.raises(NmtError):
        parse_grid([])


def test_aggregate_mean_and_std():
    rows = [{"k": "x", "parameters": 10, "train_tokens_per_s": 100.0, "best_valid_loss": 2.0,
             "test_bleu": 10.0, "test_chrf": 30.0},
            {"k": "x", "parameters": 10, "train_tokens_per_s": 300.0, "best_valid_loss": 4.0,
             "test_bleu": 20.0, "test_chrf": 40.0}]
    (entry,) = aggregate(rows, ["k"])
    assert entry["test_bleu_mean"] == 15.0
    assert entry["test_bleu_std"] == pytest.approx(7.0710678, rel=1e-6)  # sample std
    assert entry["seeds"] == 2


@pytest.mark.slow
def test_parallel_jobs_match_serial_runs(repo, tmp_path, sweep_overrides):
    grid = ["model.activation=relu,arelu"]
    serial = run_sweep(str(repo / "recipes/tiny.yaml"), grid, sweep_overrides, seeds=[1], steps=4, out_dir=tmp_path / "a")
    parallel = run_sweep(str(repo / "recipes/tiny.yaml"), grid, sweep_overrides, seeds=[1], steps=4,
                         out_dir=tmp_path / "b", jobs=2)
    assert [r["name"] for r in parallel["runs"]] == [r["name"] for r in serial["runs"]], "plan order kept"
    assert "trained 2 at a time" in (tmp_path / "b" / "report.md").read_text(encoding="utf-8")
    assert "at a time" not in (tmp_path / "a" / "report.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in (tmp_path / "b" / "logs").iterdir()) == [
        "activation=arelu-seed1.log", "activation=relu-seed1.log"]
    for s, p in zip(serial["runs"], parallel["runs"]):
        # one thread per job instead of torch's default: same data, seeds and updates
        assert p["steps"] == s["steps"] == 4
        assert p["best_valid_loss"] == pytest.approx(s["best_valid_loss"], rel=1e-4)
    with pytest.raises(NmtError, match="--jobs"):
        run_sweep(str(repo / "recipes/tiny.yaml"), grid, sweep_overrides, steps=4, out_dir=tmp_path / "c", jobs=0)


def test_a_failed_run_stops_a_parallel_sweep(repo, tmp_path, monkeypatch, sweep_overrides):
    import nmt.tools.sweep as sweep

    started = []

    def fake_train(recipe_path, run, run_dir, log_path, threads=None, children=None):
        started.append(run["name"])
        time.sleep(0.2)
        raise NmtError(f"training {run['name']} failed")

    monkeypatch.setattr(sweep, "_train_run", fake_train)
    grid = ["model.activation=relu,gelu,swish,selu,prelu,arelu"]
    with pytest.raises(NmtError, match="failed"):
        run_sweep(str(repo / "recipes/tiny.yaml"), grid, sweep_overrides, steps=2, out_dir=tmp_path / "s", jobs=2)
    assert len(started) < 6, "runs queued after the failure were cancelled"


@pytest.mark.parametrize("recipe_threads, expected", [
    ("auto", "share"),    # the default: jobs would count each other as load
    ("null", "share"),    # torch's default in every job would oversubscribe the cores
    ("1", None),          # a number in the recipe is kept (the run reads it from its recipe)
])
def test_parallel_jobs_get_their_share_of_the_cores(repo, tmp_path, monkeypatch, sweep_overrides,
                                                     recipe_threads, expected):
    import os

    import nmt.tools.sweep as sweep

    given = []

    def fake_train(recipe_path, run, run_dir, log_path, threads=None, children=None):
        given.append(threads)
        raise NmtError("stop here")

    monkeypatch.setattr(sweep, "_train_run", fake_train)
    overrides = sweep_overrides + [f"train.num_threads={recipe_threads}"]  # tiny.yaml fixes 1
    threads = torch.get_num_threads()  # a parallel sweep sets this process's threads to a job's share
    try:
        with pytest.raises(NmtError, match="stop here"):
            run_sweep(str(repo / "recipes/tiny.yaml"), ["model.activation=relu,gelu"], overrides, steps=2,
                      out_dir=tmp_path / "s", jobs=2)
    finally:
        torch.set_num_threads(threads)
    share = max(1, (os.cpu_count() or 2) // 2)
    assert given and all(t == (share if expected == "share" else None) for t in given)


def test_a_corrupt_sweep_json_or_an_out_dir_that_is_a_file_is_named(repo, tmp_path, sweep_overrides):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text('{"recipe": ')
    with pytest.raises(NmtError, match="sweep.json cannot be read"):
        run_sweep(str(repo / "recipes/tiny.yaml"), ["model.activation=relu"], sweep_overrides, steps=2, out_dir=out)
    (out / "sweep.json").write_text("[1, 2]")
    with pytest.raises(NmtError, match="not the sweep's settings"):
        run_sweep(str(repo / "recipes/tiny.yaml"), ["model.activation=relu"], sweep_overrides, steps=2, out_dir=out)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NmtError, match="is a file, not a directory"):
        run_sweep(str(repo / "recipes/tiny.yaml"), ["model.activation=relu"], sweep_overrides, steps=2,
                  out_dir=a_file)


def test_the_sweep_says_how_long_it_may_take():
    from nmt.tools.sweep import time_estimate

    runs = [{"budget_minutes": 10.0, "max_steps": None}] * 6
    text = time_estimate(runs, jobs=2, points=3)
    assert "6 run(s) (3 grid point(s) x 2 seed(s)), 2 at a time" in text
    assert "at most about 30 minutes (3 wave(s) of up to 10 minutes" in text
    steps = time_estimate([{"budget_minutes": None, "max_steps": 500}] * 2, jobs=1, points=2)
    assert "500 updates each" in steps and "no time bound" in steps
