"""nmt bench helpers: the FLOP count behind 'fraction of peak', and the GEMM peak itself."""
import pytest

from nmt.config import load_recipe
from nmt.tools.bench import gemm_peak_gflops, train_flops_per_token

SMALL = ["model.embedding_dim=16", "model.encoder.hidden_size=16", "model.decoder.hidden_size=24",
         "tokenizer.src_vocab_size=80", "tokenizer.tgt_vocab_size=90"]


def test_training_flops_count_forward_and_backward(repo, tmp_path):
    recipe = load_recipe(str(repo / "recipes/tiny.yaml"), SMALL)
    both = train_flops_per_token(recipe, tmp_path, batches=3)
    forward = train_flops_per_token(recipe, tmp_path, batches=3, backward=False)
    # every GEMM of the model has a trainable weight and a differentiable input (the embeddings are
    # trained), so backward costs two GEMMs of the forward's size: 3x in all
    assert both == pytest.approx(3 * forward, rel=0.03)
    # the output layer alone: readout (24) x vocabulary (90), 2 FLOPs per multiply-add, per token
    readout, vocab = 24, 90
    assert forward > 2 * readout * vocab
    # the decoder GRU's recurrent GEMM is counted too (its weight_hh: 3H x H per target token)
    assert forward > 2 * readout * vocab + 2 * 3 * 24 * 24


def test_gemm_peak_is_measured():
    peak = gemm_peak_gflops("float32", seconds=0.2)
    assert peak["gflops"] > 0 and "x" in peak["shape"] and peak["dtype"] == "torch.float32"


def test_training_flops_use_the_runs_tokenizers_on_a_large_corpus(repo, tmp_path, caplog):
    """The count draws batches from the first 20k pairs, but with the tokenizers the run trained on
    the whole split: new ones from the sample could not be built at the run's vocabulary size."""
    from nmt.data.corpus import load_corpus
    from nmt.data.tokenizer import SubwordTokenizers

    data = tmp_path / "data"
    data.mkdir()
    words = "chat chien maison rouge bleu petit grand mange dort voit".split()
    lines = [f"{words[i % 10]} {words[i // 10 % 10]} {i}\t{words[i // 100 % 10]} {i}" for i in range(20_050)]
    for split, rows in (("train", lines), ("valid", lines[:20]), ("test", lines[:20])):
        (data / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = load_recipe(str(repo / "recipes/tiny.yaml"), SMALL + [f"data.path={data}"])
    run = tmp_path / "run"
    SubwordTokenizers.load_or_train(recipe.tokenizer, load_corpus(recipe.data, splits=("train",))["train"], run)
    model_bytes = {p.name: p.read_bytes() for p in run.glob("spm.*.model")}
    assert model_bytes
    assert train_flops_per_token(recipe, run, batches=2) > 0
    assert {p.name: p.read_bytes() for p in run.glob("spm.*.model")} == model_bytes, "tokenizers retrained"
    assert "training new ones" not in caplog.text
