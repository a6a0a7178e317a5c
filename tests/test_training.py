"""Training end to end on the shipped tiny corpus: run directory, exact resume, errors, 2 processes."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from nmt.errors import NmtError
from nmt.inference.checkpoint import checkpoint_path
from nmt.training.progress import Progress, eta_seconds, progress_text, run_fraction
from nmt.training.schedule import lr_factor
from nmt.training.state import TrainerState
from nmt.training.trainer import train
from nmt.training.validator import is_improvement


def test_train_writes_a_complete_run_directory(tmp_path, tiny_recipe):
    run = tmp_path / "run"
    summary = train(tiny_recipe("train.max_steps=6", "train.valid_every=3", "train.plot_sentences=1"), run_dir=run)
    assert summary["steps"] == 6
    for name in ["recipe.yaml", "spm.src.model", "spm.tgt.model", "spm.json", "metrics.jsonl",
                 "train_summary.json", "checkpoints/best.safetensors", "checkpoints/last.json",
                 "checkpoints/step00000006.safetensors", "checkpoints/step00000006.state.pt"]:
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.json", "best.safetensors", "last.json", "step00000006.safetensors", "step00000006.state.pt"], \
        "the previous pair is deleted once the new one is complete"
    assert not (run / "train.lock").exists(), "the run directory's lock is released"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    valid_records = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in valid_records] == [3, 6]
    assert set(train_records[0]["grad_norm"]) >= {"embeddings", "encoder", "attention", "decoder", "output"}
    assert all(v > 0 for k, v in train_records[0]["grad_norm"].items() if k != "total")
    assert list((run / "plots").rglob("*.png")), "validation attention plots"
    assert not list(run.rglob("*.tmp")), "no temporary files left behind"


def test_resume_equals_uninterrupted(tmp_path, tiny_recipe, kernels):
    full, part = tmp_path / "full", tmp_path / "part"
    k = f"model.kernels={kernels}"
    train(tiny_recipe("train.max_steps=12", "train.valid_every=6", "model.dropout=0.3", k), run_dir=full)
    train(tiny_recipe("train.max_steps=6", "train.valid_every=6", "model.dropout=0.3", k), run_dir=part)
    summary = train(tiny_recipe("train.max_steps=12", "train.valid_every=6", "model.dropout=0.3", k),
                    run_dir=part, resume=True)
    assert summary["steps"] == 12
    a = load_file(checkpoint_path(full, "last"))
    b = load_file(checkpoint_path(part, "last"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_equals_uninterrupted_with_regularisation(tmp_path, tiny_recipe):
    """Subword sampling, word dropout and concatenated pairs are drawn from (seed, epoch, pair or
    batch position): a run resumed mid-epoch, in a later epoch than it started, builds the batches
    the uninterrupted run builds. The tiny corpus makes 40 batches an epoch here: the checkpoint at
    step 50 falls in the second epoch."""
    full, part = tmp_path / "full", tmp_path / "part"
    regular = ["train.subword_sampling=true", "train.src_word_dropout=0.2", "train.tgt_word_dropout=0.1",
               "train.word_dropout_mode=drop", "train.concat_ratio=0.3", "train.valid_every=50"]
    train(tiny_recipe("train.max_steps=60", *regular), run_dir=full)
    train(tiny_recipe("train.max_steps=50", *regular), run_dir=part)
    summary = train(tiny_recipe("train.max_steps=60", *regular), run_dir=part, resume=True)
    assert summary["steps"] == 60
    a = load_file(checkpoint_path(full, "last"))
    b = load_file(checkpoint_path(part, "last"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tied_and_shared_embeddings_resume_and_load_tied(tmp_path, tiny_recipe):
    """One weight for the source and target embeddings and the output layer (a joint vocabulary):
    stored once, tied again when a checkpoint is loaded, and resumed exactly."""
    from nmt.inference.translator import Translator

    full, part = tmp_path / "full", tmp_path / "part"
    tied = ["model.tied_embeddings=true", "model.shared_embeddings=true", "tokenizer.joint=true",
            "train.valid_every=4"]
    train(tiny_recipe("train.max_steps=8", *tied), run_dir=full)
    train(tiny_recipe("train.max_steps=4", *tied), run_dir=part)
    train(tiny_recipe("train.max_steps=8", *tied), run_dir=part, resume=True)
    a, b = load_file(checkpoint_path(full, "last")), load_file(checkpoint_path(part, "last"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    model = Translator.load(full, "last", device="cpu").model
    assert model.output.weight is model.tgt_embed.weight is model.src_embed.weight
    assert torch.equal(model.output.weight, a["output.weight"])


def test_validation_late_in_a_run_equals_validating_the_weights_afresh(tmp_path, tiny_recipe, kernels):
    """The last validation of a run (not its first) scores the weights it checkpoints: a new
    translator on those weights gives the same valid loss, hypotheses and BLEU. (Fused Adam
    updates parameters in place without bumping their version counters, so nothing derived from
    the weights may be kept across updates.)"""
    from nmt.data.corpus import load_corpus
    from nmt.inference.translator import Translator
    from nmt.metrics import score_corpus

    run = tmp_path / "run"
    recipe = tiny_recipe("train.max_steps=30", "train.valid_every=10", "train.valid_max_sentences=16",
                         f"model.kernels={kernels}")
    train(recipe, run_dir=run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "valid"][-1]
    assert last["step"] == 30
    fresh = Translator.load(run, "last", device="cpu")
    valid = load_corpus(recipe.data, splits=("valid",))["valid"]
    sources, references = list(valid["src"]), list(valid["tgt"])
    scores = fresh.score(sources, references)
    tokens = sum(len(ids) + 1 for ids in fresh.tokenizers.encode_tgt(references))
    assert last["loss"] == pytest.approx(-sum(scores) / tokens, abs=1e-5)
    hyps = fresh.translate(sources[:16], beam=recipe.train.valid_beam)
    assert [s["hyp"] for s in last["samples"]] == hyps[:3]
    bleu = score_corpus(hyps, [references[:16]], metrics=("bleu",), bleu_tokenize=recipe.eval.bleu_tokenize)
    assert last["bleu"] == pytest.approx(bleu["bleu"]["score"], abs=1e-9)


def test_resume_refuses_a_changed_model(tmp_path, tiny_recipe):
    run = tmp_path / "run"
    train(tiny_recipe("train.max_steps=2", "train.valid_every=2"), run_dir=run)
    with pytest.raises(NmtError, match="model.embedding_dim"):
        train(tiny_recipe("train.max_steps=4", "model.embedding_dim=24"), run_dir=run, resume=True)


def test_existing_run_is_not_overwritten(tmp_path, tiny_recipe):
    run = tmp_path / "run"
    train(tiny_recipe("train.max_steps=2", "train.valid_every=2"), run_dir=run)
    before = checkpoint_path(run, "last").read_bytes()
    with pytest.raises(NmtError, match="--resume"):
        train(tiny_recipe("train.max_steps=2"), run_dir=run)
    assert checkpoint_path(run, "last").read_bytes() == before


def test_resume_without_checkpoint_is_an_error(tmp_path, tiny_recipe):
    with pytest.raises(NmtError, match="no checkpoint to resume"):
        train(tiny_recipe("train.max_steps=2"), run_dir=tmp_path / "empty", resume=True)


def test_missing_corpus_directory_is_a_clear_error(tmp_path, tiny_recipe):
    recipe = tiny_recipe(f"data.path={tmp_path / 'nowhere'}")
    with pytest.raises(NmtError, match="nowhere"):
        train(recipe, run_dir=tmp_path / "run")


def test_unwritable_run_dir_fails_before_training(tmp_path, tiny_recipe):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NmtError, match="not writable"):
        train(tiny_recipe(), run_dir=blocker / "run")


def test_lr_schedules(tiny_recipe):
    r = tiny_recipe("train.warmup_steps=10", "train.schedule=inverse_sqrt")
    assert lr_factor(5, r) == pytest.approx(0.5)
    assert lr_factor(10, r) == pytest.approx(1.0)
    assert lr_factor(40, r) == pytest.approx(0.5)
    c = tiny_recipe("train.warmup_steps=0", "train.schedule=cosine", "train.max_steps=100", "train.min_lr=0")
    assert lr_factor(50, c) == pytest.approx(0.5)
    assert lr_factor(100, c) == pytest.approx(0.0, abs=1e-9)


def test_nan_loss_stops_with_clear_message(tmp_path, monkeypatch, tiny_recipe):
    from nmt.model import seq2seq as model_module

    original = model_module.Seq2Seq.forward

    def poisoned(self, *args, **kwargs):
        loss, nll = original(self, *args, **kwargs)
        return loss * float("nan"), nll

    monkeypatch.setattr(model_module.Seq2Seq, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NmtError, match="non-finite"):
        train(tiny_recipe("train.max_steps=10", "train.max_nan_skips=3"), run_dir=run)
    assert not list((run / "checkpoints").glob("*.safetensors")), "no corrupt checkpoint written"


def test_best_is_the_higher_metric_and_equal_bleu_goes_to_the_lower_loss():
    assert is_improvement("bleu", 0.0, 9.0, None, None)            # the first validation
    assert is_improvement("bleu", 0.0, 3.0, 0.0, 4.0)              # BLEU tie (e.g. 0): lower loss wins
    assert not is_improvement("bleu", 0.0, 5.0, 0.0, 4.0)
    assert not is_improvement("bleu", 0.0, 4.0, 0.0, 4.0)          # a full tie is no improvement
    assert is_improvement("bleu", 1.5, 9.0, 1.0, 4.0)              # a higher BLEU wins whatever the loss
    assert not is_improvement("bleu", 0.5, 1.0, 1.0, 4.0)
    assert is_improvement("loss", 3.0, 3.0, 4.0, 4.0)
    assert not is_improvement("loss", 4.0, 4.0, 4.0, 4.0)


def test_while_bleu_stays_zero_best_follows_the_valid_loss(tmp_path, caplog, tiny_recipe):
    """Early validations all score BLEU 0: the best checkpoint is the one with the lowest loss (the
    most trained), not the first one. The plain progress lines name the step, ETA and last BLEU."""
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="nmt.train"):
        summary = train(tiny_recipe("train.max_steps=8", "train.valid_every=4", "train.warmup_steps=0",
                             "train.lr=0.01", "train.log_every=2"), run_dir=run)
    valid = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [4, 8]
    assert [r["bleu"] for r in valid] == [0.0, 0.0], "the premise: BLEU ties at 0"
    assert valid[1]["loss"] < valid[0]["loss"]
    assert summary["best_step"] == 8 and valid[1]["best"]
    assert json.loads((run / "checkpoints/best.json").read_text())["step"] == 8
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split(" |")[0] for line in lines] == ["step 2/8", "step 4/8", "step 6/8", "step 8/8"]
    assert all("ETA " in line and " tok/s" in line and "loss " in line for line in lines)
    assert lines[0].endswith("valid BLEU -")
    assert lines[2].endswith("valid BLEU 0.00 @4")


def test_progress_eta_and_fraction(tiny_recipe):
    steps = tiny_recipe("train.max_steps=100", "train.budget_minutes=null")
    assert run_fraction(steps, 25, 50.0, 0.1) == pytest.approx(0.25)
    assert eta_seconds(steps, 25, 50.0, 0.1) == pytest.approx(150.0)   # 75 steps at 2 s each
    budget = tiny_recipe("train.max_steps=null", "train.budget_minutes=10")
    assert run_fraction(budget, 25, 150.0, 0.1) == pytest.approx(0.25)
    assert eta_seconds(budget, 25, 150.0, 0.1) == pytest.approx(450.0)
    both = tiny_recipe("train.max_steps=100", "train.budget_minutes=10")  # the first to end counts
    assert eta_seconds(both, 90, 300.0, 0.1) == pytest.approx(100 / 3)
    assert run_fraction(both, 10, 300.0, 0.1) == pytest.approx(0.5)
    epochs = tiny_recipe("train.max_steps=null", "train.max_epochs=4")
    assert eta_seconds(epochs, 10, 60.0, 1.0) == pytest.approx(180.0)
    patience = tiny_recipe("train.max_steps=null", "train.patience=3")
    assert run_fraction(patience, 10, 60.0, 1.0) is None and eta_seconds(patience, 10, 60.0, 1.0) is None
    state = TrainerState(step=500, wall_seconds=125.0,
                         history=[{"step": 400, "bleu": 12.345, "loss": 2.0}])
    text = progress_text(tiny_recipe("train.max_steps=null", "train.budget_minutes=10"), state, 2.0, 3.21, 4567.0)
    assert text == "step 500 | 2:05 of 10:00 | ETA 7:55 | loss 3.210 | 4,567 tok/s | valid BLEU 12.35 @400"


def test_progress_on_a_terminal_is_one_refreshed_line(tiny_recipe):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    recipe = tiny_recipe("train.max_steps=10")
    out = Terminal()
    progress = Progress(recipe, TrainerState(), stream=out, interactive=True)
    state = TrainerState(step=5, wall_seconds=5.0, history=[{"step": 4, "bleu": 1.5, "loss": 3.0}])
    progress.step(state, 0.5, 3.0, 1000.0, log_now=True)
    progress.close()
    text = out.getvalue()
    assert "\r" in text and " 50%|" in text
    assert "step 5/10 | 0:05 | ETA 0:05 | loss 3.000 | 1,000 tok/s | valid BLEU 1.50 @4" in text


@pytest.mark.slow
def test_tiny_recipe_demo_translates_into_words(repo, tmp_path):
    """The recipe's own demo, from a working directory of its own: train with the recipe as shipped,
    then translate with the default (best) checkpoint."""
    env = {**os.environ, "NMT_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-m", "nmt", "train", str(repo / "recipes/tiny.yaml")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "nmt", "translate", "runs/tiny"], cwd=tmp_path, env=env,
                          input="Je suis fatigué.\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].strip(), proc.stdout
    assert any(word in lines[0].split() for word in ("I", "am")), lines[0]


@pytest.mark.slow
def test_two_processes_hold_identical_weights_and_match_single_process(repo, fast, tmp_path, kernels):
    """torchrun, 2 CPU processes (gloo): replicas agree, and the loss tracks a 1-process run with the
    same global batch (2 × batch_tokens) within tolerance."""
    common = fast + ["train.max_steps=8", "train.valid_every=8", "train.log_every=1", "model.dropout=0",
                     "model.encoder.dropout=0", "model.decoder.dropout=0", f"model.kernels={kernels}"]
    sets = sum((["--set", o] for o in common), [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NMT_NO_PROGRESS": "1"}
    two = tmp_path / "two"
    # --standalone: a free port of the machine's choosing (suites may run side by side)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nmt", "train", str(repo / "recipes/tiny.yaml"), "--run-dir", str(two),
           "--set", "train.batch_tokens=300", *sets]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checksums = json.loads((two / "train_summary.json").read_text())["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1], checksums
    one = tmp_path / "one"
    proc = subprocess.run([sys.executable, "-m", "nmt", "train", str(repo / "recipes/tiny.yaml"), "--run-dir",
                           str(one), "--set", "train.batch_tokens=600", *sets], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(run):
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"]
    l2, l1 = losses(two), losses(one)
    assert len(l2) == len(l1) == 8
    assert abs(sum(l2) / 8 - sum(l1) / 8) < 0.1 * (sum(l1) / 8)


def test_validation_decodes_as_nmt_translate(tmp_path, monkeypatch, capsysbinary, tiny_recipe):
    """Validation's hypotheses (beam 3, several batches, inputs longer than decode.max_input_len)
    are the lines `nmt translate` writes for the valid sources with the same checkpoint."""
    import nmt.metrics
    from nmt.cli import main
    from nmt.data.corpus import load_corpus

    decoded = []
    score_corpus = nmt.metrics.score_corpus

    def spy(hypotheses, references, *args, **kwargs):
        decoded.append(list(hypotheses))
        return score_corpus(hypotheses, references, *args, **kwargs)

    monkeypatch.setattr(nmt.metrics, "score_corpus", spy)
    recipe = tiny_recipe("train.max_steps=2", "train.valid_every=2", "train.valid_beam=3",
                  "train.valid_max_sentences=null", "decode.max_input_len=4", "decode.batch_tokens=60",
                  "decode.min_len=3")
    run = tmp_path / "run"
    train(recipe, run_dir=run)
    (hypotheses,) = decoded
    sources = list(load_corpus(recipe.data, splits=("valid",))["valid"]["src"])
    assert len(hypotheses) == len(sources) > 10
    src = tmp_path / "valid.src"
    src.write_text("\n".join(sources) + "\n", encoding="utf-8")
    capsysbinary.readouterr()
    assert main(["translate", str(run), "-i", str(src), "--beam", "3", "--checkpoint", "last"]) == 0
    assert capsysbinary.readouterr().out.decode().splitlines() == hypotheses
    assert len(set(hypotheses)) > 3  # the model does not say the same thing to everything


def test_loop_module_keeps_offering_its_names():
    """``nmt.training.loop`` still offers what the CLI, tools and user code import from it."""
    import nmt.training.loop as loop
    from nmt.training import progress, rundir, schedule, trainer, validator

    assert loop.train is trainer.train
    assert loop.load_training_recipe is trainer.load_training_recipe
    assert loop.lr_factor is schedule.lr_factor and loop.build_optimizer is schedule.build_optimizer
    assert loop.progress_text is progress.progress_text and loop.init_source is rundir.init_source
    assert loop.is_improvement is validator.is_improvement
    assert all(hasattr(loop, name) for name in loop.__all__)
