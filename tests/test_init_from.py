"""Continued training: nmt train RECIPE --init-from RUN_DIR starts from a trained run's weights and
tokenizer models, with the new recipe's data and schedule, and never touches the trained run."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nmt.cli import main
from nmt.inference.checkpoint import checkpoint_path
from nmt.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent


def _corpus(directory: Path, lines: list[str], valid: list[str]) -> Path:
    directory.mkdir(parents=True)
    (directory / "train.tsv").write_text("".join(lines), encoding="utf-8")
    (directory / "valid.tsv").write_text("".join(valid), encoding="utf-8")
    (directory / "test.tsv").write_text("".join(valid), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The shipped tiny corpus cut in two: a general set (its first 200 pairs) and an in-domain set
    (the other 104, which the general run never sees)."""
    root = tmp_path_factory.mktemp("corpora")
    lines = (REPO / "data/tiny/train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    valid = (REPO / "data/tiny/valid.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    return {"general": _corpus(root / "general", lines[:200], valid),
            "domain": _corpus(root / "domain", lines[200:], lines[200:210])}


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_recipe, corpora):
    run = tmp_path_factory.mktemp("source") / "general"
    train(tiny_recipe(f"data.path={corpora['general']}", "train.max_steps=20", "train.valid_every=10"),
          run_dir=run)
    return run


def _snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


def _fine_tune(tiny_recipe, corpora, source, run, *overrides, resume=False, checkpoint=None):
    recipe = tiny_recipe(f"data.path={corpora['domain']}", f"train.init_from={source}", *overrides)
    if checkpoint:
        recipe.train.init_checkpoint = checkpoint
    return train(recipe, run_dir=run, resume=resume)


def test_the_new_run_starts_from_the_runs_weights_and_tokenizers(tiny_recipe, corpora, source, tmp_path):
    run = tmp_path / "domain"
    summary = _fine_tune(tiny_recipe, corpora, source, run, "train.max_steps=1", "train.valid_every=1",
                         "train.lr=1e-9", "train.warmup_steps=0", "train.schedule=constant")
    start, after = load_file(checkpoint_path(source, "best")), load_file(checkpoint_path(run, "last"))
    assert start.keys() == after.keys()
    for key in start:  # one Adam step of size ~lr away from the trained run's weights
        assert torch.allclose(start[key], after[key], atol=1e-6, rtol=0), key
    for name in ("spm.src.model", "spm.tgt.model"):
        assert (run / name).read_bytes() == (source / name).read_bytes()
    # recorded: the recipe says where it started, the summary and spm.json which weights exactly
    assert f"init_from: {source.resolve()}" in (run / "recipe.yaml").read_text()
    record = summary["init_from"]
    assert record["run_dir"] == str(source.resolve()) and record["checkpoint"] == "best"
    assert record["step"] == json.loads((source / "checkpoints/best.json").read_text())["step"]
    import hashlib
    assert record["sha256"] == hashlib.sha256((source / "checkpoints/best.safetensors").read_bytes()).hexdigest()
    assert json.loads((run / "spm.json").read_text())["init_from"] == record
    assert json.loads((run / "train_summary.json").read_text())["init_from"] == record


def _domain_log_prob(run, checkpoint, corpora):
    from nmt.inference.translator import Translator

    pairs = [line.rstrip("\n").split("\t") for line in
             (corpora["domain"] / "train.tsv").read_text(encoding="utf-8").splitlines()]
    return sum(Translator.load(run, checkpoint).score([fr for _, fr in pairs], [en for en, _ in pairs]))


def test_fine_tuning_lowers_the_in_domain_loss_and_leaves_the_source_untouched(fast, corpora, source, tmp_path):
    before = _snapshot(source)
    run = tmp_path / "domain"
    assert main(["train", str(REPO / "recipes/tiny.yaml"), "--run-dir", str(run), "--init-from", str(source),
                 *sum((["--set", o] for o in [*fast, f"data.path={corpora['domain']}",
                                              "train.max_steps=20", "train.valid_every=20"]), [])]) == 0
    start, tuned = _domain_log_prob(source, "best", corpora), _domain_log_prob(run, "last", corpora)
    assert tuned > start + 10, (start, tuned)  # log-probability of the in-domain pairs, summed
    assert _snapshot(source) == before, "the trained run's files (bytes and mtimes) are unchanged"


def test_resuming_a_continued_training_resumes_it(tiny_recipe, fast, corpora, source, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    _fine_tune(tiny_recipe, corpora, source, full, "train.max_steps=8", "train.valid_every=4")
    _fine_tune(tiny_recipe, corpora, source, part, "train.max_steps=4", "train.valid_every=4")
    # resumed from its own checkpoint without --init-from: the recipe keeps saying where it started
    recipe = tiny_recipe(f"data.path={corpora['domain']}", "train.max_steps=8", "train.valid_every=4")
    summary = train(recipe, run_dir=part, resume=True)
    assert summary["steps"] == 8 and summary["init_from"]["run_dir"] == str(source.resolve())
    assert f"init_from: {source.resolve()}" in (part / "recipe.yaml").read_text()
    a, b = load_file(checkpoint_path(full, "last")), load_file(checkpoint_path(part, "last"))
    assert all(torch.equal(a[k], b[k]) for k in a), "resume continued, it did not start again"
    # --resume naming another run is refused
    other = tmp_path / "other"
    shutil.copytree(source, other)
    assert main(["train", str(REPO / "recipes/tiny.yaml"), "--run-dir", str(part), "--resume",
                 "--init-from", str(other), *sum((["--set", o] for o in [
                     *fast, f"data.path={corpora['domain']}", "train.max_steps=12"]), [])]) == 2
    assert "was started from" in capsys.readouterr().err


def _refused(capsys, fast, run, source, *sets, expected=(), checkpoint=None):
    argv = ["train", str(REPO / "recipes/tiny.yaml"), "--run-dir", str(run), "--init-from", str(source),
            *(["--init-checkpoint", checkpoint] if checkpoint else []),
            *sum((["--set", o] for o in [*fast, *sets]), [])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    assert not run.exists(), "nothing is written"
    return err


def test_bad_sources_exit_2_naming_the_problem_and_write_nothing(fast, corpora, source, tmp_path, capsys):
    data = f"data.path={corpora['domain']}"
    run = tmp_path / "new"
    _refused(capsys, fast, run, tmp_path / "missing", data, expected=["--init-from", "not found"])
    err = _refused(capsys, fast, run, source, data, "model.embedding_dim=24", "model.decoder.hidden_size=32",
                   expected=["model.embedding_dim: 16 in", "24 in this recipe",
                             "model.decoder.hidden_size: 16 in", "32 in this recipe"])
    assert "model.dropout" not in err
    _refused(capsys, fast, run, source, data, "tokenizer.src_vocab_size=90",
             expected=["tokenizer.src_vocab_size: 80 in", "90 in this recipe"])
    _refused(capsys, fast, run, source, data, checkpoint="avg", expected=["nmt average"])
    before = _snapshot(source)
    empty = tmp_path / "untrained"
    shutil.copytree(source, empty)
    shutil.rmtree(empty / "checkpoints")
    _refused(capsys, fast, run, empty, data, expected=["no best checkpoint"])
    edited = tmp_path / "edited"  # a recipe.yaml that no longer matches the run's models
    shutil.copytree(source, edited)
    text = (edited / "recipe.yaml").read_text()
    (edited / "recipe.yaml").write_text(text.replace("src_vocab_size: 80", "src_vocab_size: 90"))
    _refused(capsys, fast, run, edited, data, "tokenizer.src_vocab_size=90",
             expected=["80 pieces", "90 in this recipe"])
    assert main(["train", str(REPO / "recipes/tiny.yaml"), "--run-dir", str(source), "--init-from", str(source),
                 *sum((["--set", o] for o in [*fast, data]), [])]) == 2
    assert "own directory" in capsys.readouterr().err
    assert _snapshot(source) == before


def test_dropout_may_differ(tiny_recipe, corpora, source, tmp_path):
    summary = _fine_tune(tiny_recipe, corpora, source, tmp_path / "run", "train.max_steps=1",
                         "train.valid_every=1", "model.dropout=0.3", "model.kernels=reference")
    assert summary["steps"] == 1


def test_merged_lexicon_keeps_the_new_translations_first_then_the_runs():
    from nmt.inference.shortlist import Lexicon

    new = Lexicon(torch.tensor([[5, 6, -1], [7, -1, -1]]), torch.tensor([[.6, .4, 0], [1., 0, 0]]),
                  torch.tensor([6, 5, 4, 7, 0, 1, 2, 3]))
    old = Lexicon(torch.tensor([[6, 4], [-1, -1]]), torch.tensor([[.9, .1], [0, 0]]),
                  torch.tensor([4, 7, 5, 6, 0, 1, 2, 3]))
    merged = new.merged(old)
    assert merged.top_ids.tolist() == [[5, 6, 4], [7, -1, -1]]
    assert merged.top_probs.reshape(-1).tolist() == pytest.approx([.6, .4, .1, 1., 0, 0])
    assert merged.by_frequency.tolist() == [6, 4, 5, 7, 0, 1, 2, 3]


def test_a_shortlist_recipe_merges_the_runs_lexicon(tiny_recipe, corpora, source, tmp_path):
    from nmt.inference.shortlist import LEXICON_FILE, Lexicon, build_for_run

    with_lexicon = tmp_path / "general"
    shutil.copytree(source, with_lexicon)
    build_for_run(with_lexicon)
    run = tmp_path / "domain"
    _fine_tune(tiny_recipe, corpora, with_lexicon, run, "train.max_steps=1", "train.valid_every=1",
               "decode.shortlist=3")
    general, merged = Lexicon.load(with_lexicon / LEXICON_FILE), Lexicon.load(run / LEXICON_FILE)
    build_for_run(run)  # the domain data's own lexicon, for comparison
    own = Lexicon.load(run / LEXICON_FILE)
    for row in range(general.top_ids.shape[0]):
        ids = set(merged.top_ids[row].tolist()) - {-1}
        assert set(general.top_ids[row].tolist()) - {-1} <= ids
        assert set(own.top_ids[row].tolist()) - {-1} <= ids
    assert merged.top_ids.ne(-1).sum() > own.top_ids.ne(-1).sum()


@pytest.mark.parametrize("shortlist", [0, 3])
def test_a_continued_runs_table_of_names_knows_both_runs_words(tiny_recipe, corpora, source, tmp_path, shortlist):
    from nmt.inference.names import NAMES_FILE, NameTable

    run = tmp_path / "domain"
    _fine_tune(tiny_recipe, corpora, source, run, "train.max_steps=1", "train.valid_every=1",
               f"decode.shortlist={shortlist}")
    general, merged = NameTable.load(source / NAMES_FILE), NameTable.load(run / NAMES_FILE)
    assert general.known <= merged.known and merged.known - general.known  # the domain's words too
