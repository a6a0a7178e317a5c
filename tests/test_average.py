"""Checkpoint averaging: train.keep_last keeps the last checkpoints' weights, nmt average writes
their element-wise mean to checkpoints/avg.safetensors, --checkpoint avg loads it."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nmt.cli import main
from nmt.inference.checkpoint import (
    checkpoint_path,
    kept_weights,
    read_tensors,
    read_weights_metadata,
    write_tensors,
)
from nmt.tools.average import average_run
from nmt.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory, tiny_recipe):
    """8 steps validated every 2, keeping the last 3 checkpoints' weights."""
    run = tmp_path_factory.mktemp("average") / "run"
    train(tiny_recipe("train.max_steps=8", "train.valid_every=2", "train.keep_last=3"), run_dir=run)
    return run


@pytest.fixture
def run_copy(kept_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(kept_run, run)
    return run


def names(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_keep_last_keeps_the_last_n_weights_and_one_resumable_pair(kept_run):
    assert names(kept_run) == ["best.json", "best.safetensors", "last.json", "step00000004.safetensors",
                               "step00000006.safetensors", "step00000008.safetensors",
                               "step00000008.state.pt"]
    assert json.loads((kept_run / "checkpoints/last.json").read_text())["weights"] == "step00000008.safetensors"
    assert checkpoint_path(kept_run, "last").name == "step00000008.safetensors"
    for step, path in kept_weights(kept_run):  # each is the validated model of its step
        meta = read_weights_metadata(path)
        assert meta["step"] == step and set(meta["valid"]) == {"loss", "ppl", "bleu", "chrf"}


def test_keep_last_survives_resume_and_prunes_oldest_first(run_copy, tiny_recipe):
    before = {p.name: p.read_bytes() for _, p in kept_weights(run_copy)}
    summary = train(tiny_recipe("train.max_steps=12", "train.valid_every=2", "train.keep_last=3"),
                    run_dir=run_copy, resume=True)
    assert summary["steps"] == 12
    assert names(run_copy) == ["best.json", "best.safetensors", "last.json", "step00000008.safetensors",
                               "step00000010.safetensors", "step00000012.safetensors",
                               "step00000012.state.pt"]
    assert (run_copy / "checkpoints/step00000008.safetensors").read_bytes() == before["step00000008.safetensors"]
    records = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "valid"] == [2, 4, 6, 8, 10, 12], \
        "resumed from step 8, the last pair, not from a kept weights file"
    # a smaller keep_last on a later resume prunes to it
    train(tiny_recipe("train.max_steps=14", "train.valid_every=2", "train.keep_last=1"),
          run_dir=run_copy, resume=True)
    assert names(run_copy) == ["best.json", "best.safetensors", "last.json", "step00000014.safetensors",
                               "step00000014.state.pt"]


def test_the_average_is_the_elementwise_mean(run_copy, capsys):
    assert main(["average", str(run_copy), "--last", "3"]) == 0
    assert "steps 4, 6, 8" in capsys.readouterr().out
    avg, meta = read_tensors(run_copy / "checkpoints/avg.safetensors")
    sources = [load_file(run_copy / f"checkpoints/step0000000{s}.safetensors") for s in (4, 6, 8)]
    assert avg.keys() == sources[0].keys()
    for key in avg:
        mean = sum(s[key].double() for s in sources) / 3
        assert avg[key].dtype == sources[0][key].dtype
        assert torch.allclose(avg[key].double(), mean, atol=1e-6, rtol=0), key
    moved = [k for k in avg if not torch.equal(sources[0][k], sources[2][k])]
    assert moved, "the checkpoints differ, so the mean is not any of them"
    assert all(not torch.equal(avg[k], sources[2][k]) for k in moved[:5])
    assert meta["averaged"]["steps"] == [4, 6, 8]
    assert meta["averaged"]["files"] == ["step00000004.safetensors", "step00000006.safetensors",
                                         "step00000008.safetensors"]
    assert meta["tokenizers"] == read_weights_metadata(run_copy / "checkpoints/step00000008.safetensors")["tokenizers"]
    assert not list(run_copy.rglob("*.tmp"))


def test_a_second_average_says_what_it_replaces(run_copy, capsys):
    assert main(["average", str(run_copy), "--last", "3"]) == 0
    assert "replaced" not in capsys.readouterr().out
    assert main(["average", str(run_copy), "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert "replaced the earlier avg.safetensors (steps 4, 6, 8)" in out
    assert "steps 6, 8" in out


def test_averaging_one_checkpoint_gives_it_back(run_copy):
    average_run(run_copy, last=1)
    avg = load_file(run_copy / "checkpoints/avg.safetensors")
    last = load_file(run_copy / "checkpoints/step00000008.safetensors")
    assert avg.keys() == last.keys() and all(torch.equal(avg[k], last[k]) for k in avg)


def _set_valid(run, step, **valid):
    path = run / f"checkpoints/step{step:08d}.safetensors"
    tensors, meta = read_tensors(path)
    write_tensors(path, tensors, {**meta, "valid": valid})


def test_best_picks_the_checkpoints_with_the_best_validation(run_copy):
    _set_valid(run_copy, 4, bleu=12.0, loss=3.0)
    _set_valid(run_copy, 6, bleu=10.0, loss=2.0)
    _set_valid(run_copy, 8, bleu=12.0, loss=2.5)  # equal BLEU: the lower loss is better
    best_step = json.loads((run_copy / "checkpoints/best.json").read_text())["step"]
    assert best_step == 8
    average_run(run_copy, best=2)
    assert read_weights_metadata(run_copy / "checkpoints/avg.safetensors")["averaged"]["steps"] == [4, 8]
    average_run(run_copy, best=1)
    avg = load_file(run_copy / "checkpoints/avg.safetensors")
    step8 = load_file(run_copy / "checkpoints/step00000008.safetensors")
    assert all(torch.equal(avg[k], step8[k]) for k in avg)
    # ranked by valid loss when the run's early_stopping_metric is loss
    recipe_file = run_copy / "recipe.yaml"
    recipe_file.write_text(recipe_file.read_text().replace("early_stopping_metric: bleu",
                                                           "early_stopping_metric: loss"))
    average_run(run_copy, best=2)
    assert read_weights_metadata(run_copy / "checkpoints/avg.safetensors")["averaged"]["steps"] == [6, 8]


def test_best_reads_metrics_jsonl_for_checkpoints_without_a_recorded_validation(run_copy):
    for step in (4, 6, 8):
        path = run_copy / f"checkpoints/step{step:08d}.safetensors"
        tensors, meta = read_tensors(path)
        write_tensors(path, tensors, {k: v for k, v in meta.items() if k != "valid"})
    lines = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    for record in lines:
        if record["kind"] == "valid":
            record["bleu"], record["loss"] = {2: 0.0, 4: 1.0, 6: 9.0, 8: 5.0}[record["step"]], 1.0
    (run_copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    average_run(run_copy, best=2)
    assert read_weights_metadata(run_copy / "checkpoints/avg.safetensors")["averaged"]["steps"] == [6, 8]


def _assert_refused(argv, capsys, *expected, run=None):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    if run is not None:
        assert not (run / "checkpoints/avg.safetensors").exists()
        assert not list(run.rglob("*.tmp"))
    return err


def test_fewer_checkpoints_than_asked_exits_2_saying_how_many_and_how_to_keep_more(run_copy, capsys):
    _assert_refused(["average", str(run_copy), "--last", "4"], capsys, "3 checkpoints", "4, 6, 8",
                    "train.keep_last=4", run=run_copy)
    _assert_refused(["average", str(run_copy), "--last", "0"], capsys, "--last must be >= 1", run=run_copy)


def test_checkpoints_of_different_architectures_exit_2_naming_files_and_key(run_copy, capsys):
    path = run_copy / "checkpoints/step00000006.safetensors"
    tensors, meta = read_tensors(path)
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(*tensors[key].shape[:-1], tensors[key].shape[-1] + 1)
    write_tensors(path, tensors, meta)
    _assert_refused(["average", str(run_copy), "--last", "3"], capsys, "step00000004.safetensors",
                    "step00000006.safetensors", repr(key), "different architectures", run=run_copy)
    del tensors[key]
    write_tensors(path, tensors, meta)
    _assert_refused(["average", str(run_copy), "--last", "3"], capsys, repr(key), "but not in", run=run_copy)


def test_a_missing_run_exits_2(tmp_path, capsys):
    _assert_refused(["average", str(tmp_path / "nope"), "--best", "2"], capsys, "not found")
    assert not (tmp_path / "nope").exists()


def test_checkpoint_avg_in_translate_evaluate_serve_and_the_api(run_copy, capsys, tmp_path, monkeypatch):
    from nmt.inference.translator import Translator
    from nmt.tools.serve import load_models

    _assert_refused(["translate", str(run_copy), "--checkpoint", "avg"], capsys, "nmt average")
    average_run(run_copy, last=3)
    avg_file = run_copy / "checkpoints/avg.safetensors"
    assert checkpoint_path(run_copy, "avg") == avg_file
    translator = Translator.load(run_copy, "avg")
    expected = Translator.load(run_copy, str(avg_file)).translate(["Je suis fatigué.", "Il pleut."])
    assert translator.translate(["Je suis fatigué.", "Il pleut."]) == expected
    assert translator.metadata["averaged"]["steps"] == [4, 6, 8]
    source = tmp_path / "in.fr"
    source.write_text("Je suis fatigué.\nIl pleut.\n")
    assert main(["translate", str(run_copy), "--checkpoint", "avg", "-i", str(source),
                 "-o", str(tmp_path / "out.en")]) == 0
    assert (tmp_path / "out.en").read_text().splitlines() == expected
    assert main(["evaluate", str(run_copy), "--split", "valid", "--checkpoint", "avg", "--greedy",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == "avg"
    assert load_models([run_copy], checkpoint="avg")[0].translator.metadata["averaged"]["steps"] == [4, 6, 8]


def test_weights_left_past_the_resumed_step_are_pruned(run_copy, tiny_recipe):
    """A crash after a checkpoint's weights but before last.json names them, or a resume from an
    older pair, leaves weights of steps the run trains again: they are not kept as checkpoints."""
    shutil.copy(run_copy / "checkpoints/step00000008.safetensors", run_copy / "checkpoints/step00000020.safetensors")
    train(tiny_recipe("train.max_steps=10", "train.valid_every=2", "train.keep_last=3"), run_dir=run_copy,
          resume=True)
    assert [step for step, _ in kept_weights(run_copy)] == [6, 8, 10]


def _rotating(monkeypatch, every_read: bool):
    """``read_tensors`` that deletes the file it is asked for first, as a training rotating its kept
    checkpoints away would (once, or on every read)."""
    import nmt.inference.checkpoint as checkpoint_module

    real = checkpoint_module.read_tensors
    deleted = []

    def read(path):
        if every_read or not deleted:
            Path(path).unlink()
            deleted.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(checkpoint_module, "read_tensors", read)
    return deleted


def test_a_checkpoint_rotated_away_while_averaging_is_not_called_corrupt(run_copy, monkeypatch, capsys):
    from nmt.cli import main

    deleted = _rotating(monkeypatch, every_read=False)
    assert main(["average", str(run_copy), "--last", "2"]) == 0
    err = capsys.readouterr().err
    assert deleted and f"{deleted[0]} vanished while being read" in err and "corrupt" not in err
    assert (run_copy / "checkpoints" / "avg.safetensors").is_file()


def test_averaging_a_run_whose_checkpoints_keep_rotating_names_the_training(run_copy, monkeypatch, capsys):
    import os

    from nmt.cli import main
    from nmt.training.lock import RunLock

    _rotating(monkeypatch, every_read=True)
    lock = RunLock(run_copy)
    lock.acquire()
    try:
        assert main(["average", str(run_copy), "--last", "1"]) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert f"train.lock held by pid {os.getpid()}" in err and "corrupt" not in err and "Traceback" not in err
