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
