"""``train.softmax: batch``: the training softmax over a batch's own target vocabulary
(nmt.training.batch_vocab, Seq2Seq.loss's ``subset``) against its equation, the full softmax it
equals when the subset is the whole vocabulary, and in a real training run."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file

from conftest import make_tiny_model
from nmt.data.vocab import EOS_ID, PAD_ID
from nmt.inference.checkpoint import checkpoint_path
from nmt.training.batch_vocab import WIDTH_MULTIPLE, BatchVocabulary
from nmt.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(vocab: int, seed: int = 0, rows: int = 6, length: int = 7):
    g = torch.Generator().manual_seed(seed)
    tgt_out = torch.randint(4, vocab, (rows, length), generator=g)
    lengths = torch.randint(2, length + 1, (rows,), generator=g)
    mask = torch.arange(length) < lengths[:, None]
    tgt_out[torch.arange(rows), lengths - 1] = EOS_ID
    return tgt_out.masked_fill(~mask, PAD_ID), mask


def test_subset_holds_the_targets_the_frequent_ids_and_a_uniform_sample_of_the_rest():
    vocab = 300
    by_frequency = torch.randperm(vocab, generator=torch.Generator().manual_seed(1))
    tgt_out, mask = _batch(vocab, rows=5, length=6)
    vocabulary = BatchVocabulary(by_frequency, frequent=20, sampled=30, seed=7)
    columns, offsets = vocabulary.subset(tgt_out, mask, (3, 0, 0))
    assert torch.equal(columns, torch.unique(columns)), "sorted, each id once"
    assert columns.numel() % WIDTH_MULTIPLE == 0 and columns.numel() < vocab
    kept = set(tgt_out[mask].tolist()) | set(by_frequency[:20].tolist())
    assert kept <= set(columns.tolist())
    drawn = [c for c in columns.tolist() if c not in kept]
    assert len(drawn) == columns.numel() - len(kept) >= 30, "the sample fills the width up"
    rest = vocab - len(kept)
    for c, o in zip(columns.tolist(), offsets.tolist()):
        assert o == (0.0 if c in kept else pytest.approx(math.log(rest / len(drawn))))
    again, _ = vocabulary.subset(tgt_out, mask, (3, 0, 0))
    other, _ = vocabulary.subset(tgt_out, mask, (4, 0, 0))
    assert torch.equal(again, columns) and not torch.equal(other, columns), "drawn from the position"


def test_the_corrected_subset_estimates_the_full_normaliser_without_bias():
    """E[Σ_{v ∈ subset} exp(z_v + o_v)] = Σ_v exp(z_v): the offsets make the subset's normaliser
    an unbiased estimate of the full one (Horvitz–Thompson)."""
    vocab = 200
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(vocab, generator=g, dtype=torch.float64) * 2
    tgt_out, mask = _batch(vocab, rows=3, length=4)
    vocabulary = BatchVocabulary(torch.arange(vocab), frequent=5, sampled=40)
    estimates = []
    for draw in range(3000):
        columns, offsets = vocabulary.subset(tgt_out, mask, (draw,))
        estimates.append(torch.exp(logits[columns] + offsets.double()).sum())
    mean, full = torch.stack(estimates).mean().item(), torch.exp(logits).sum().item()
    assert mean == pytest.approx(full, rel=0.01)
    assert torch.exp(logits[columns]).sum() < 0.6 * full, "uncorrected, the subset misses much of it"


def test_a_subset_as_wide_as_the_vocabulary_is_the_full_softmax():
    tgt_out, mask = _batch(50)
    assert BatchVocabulary(torch.arange(50), frequent=10, sampled=0).subset(tgt_out, mask) is None
    assert BatchVocabulary(torch.arange(200), frequent=100, sampled=100).subset(*_batch(200)) is None


def test_frequency_order_from_the_training_split():
    ds = Dataset.from_dict({"tgt_ids": [[5, 6, 6, 3], [6, 7, 3], [7, 3]]})
    order = BatchVocabulary.from_dataset(ds, vocab_size=9, frequent=2, sampled=0).by_frequency.tolist()
    assert order[:3] == [3, 6, 7], "3 three times, 6 three times (id order breaks the tie), 7 twice"
    assert order[3] == 5 and sorted(order) == list(range(9))


def _model_batch(kernels: str, vocab: int = 40):
    model = make_tiny_model(tgt_vocab=vocab, kernels=kernels).double().train()
    g = torch.Generator().manual_seed(2)
    src = torch.randint(4, 17, (5, 6), generator=g)
    src_lengths = torch.tensor([6, 5, 4, 3, 2])
    src_mask = torch.arange(6) < src_lengths[:, None]
    src = src.masked_fill(~src_mask, PAD_ID)
    tgt_out, tgt_mask = _batch(vocab, seed=3, rows=5, length=5)
    tgt_in = torch.cat([torch.full((5, 1), 2), tgt_out[:, :-1]], 1).masked_fill(~tgt_mask, PAD_ID)
    return model, (src, src_lengths, src_mask, tgt_in, tgt_out, tgt_mask)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_over_a_subset_is_the_softmax_over_those_rows(kernels, label_smoothing):
    """L = Σ_tokens (1 − ε)(−log p'_y) + ε · mean_{v ∈ C}(−log p'_v),
    p'_v = exp(z_v + o_v) / Σ_{u ∈ C} exp(z_u + o_u)."""
    model, batch = _model_batch(kernels)
    tgt_out, tgt_mask = batch[4], batch[5]
    columns = torch.unique(torch.cat([tgt_out[tgt_mask], torch.tensor([9, 30, 31])]))
    offsets = torch.where(torch.isin(columns, torch.tensor([9, 30, 31])), 1.7, 0.0)
    loss, nll = model(*batch, label_smoothing=label_smoothing, subset=(columns, offsets))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    readout, _ = model.teacher_force(*batch[:4])
    logits = F.linear(readout[tgt_mask], model.output.weight[columns], model.output.bias[columns]) + offsets
    log_p = F.log_softmax(logits, dim=-1)
    place = {int(c): i for i, c in enumerate(columns)}
    y = torch.tensor([place[int(t)] for t in tgt_out[tgt_mask]])
    ref_nll = -log_p[torch.arange(y.numel()), y].sum()
    ref = (1 - label_smoothing) * ref_nll - label_smoothing * log_p.mean(dim=1).sum()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(nll, ref_nll.detach(), rtol=1e-10, atol=1e-10)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-8, atol=1e-10, msg=name)
    outside = torch.ones(model.output.weight.size(0), dtype=torch.bool)
    outside[columns] = False
    assert not grads["output.weight"][outside].any() and not grads["output.bias"][outside].any(), \
        "rows outside the subset get no gradient"


def test_the_whole_vocabulary_without_offsets_is_the_full_softmax(kernels):
    model, batch = _model_batch(kernels)
    full, full_nll = model(*batch, label_smoothing=0.1)
    subset, subset_nll = model(*batch, label_smoothing=0.1, subset=(torch.arange(40), torch.zeros(40)))
    torch.testing.assert_close(subset, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(subset_nll, full_nll, rtol=1e-12, atol=1e-12)


def test_training_with_the_batch_softmax_resumes_exactly_and_validates_over_the_vocabulary(
        tmp_path, tiny_recipe, kernels, monkeypatch):
    """Trained with ``softmax: batch`` (a batch's subset is narrower than the tiny vocabulary of
    80: the subset runs), resumed equal to uninterrupted; validation scores the whole vocabulary."""
    from nmt.model.seq2seq import Seq2Seq
    calls = []
    loss = Seq2Seq.loss

    def spy(self, readout, tgt_out, tgt_mask, label_smoothing=0.0, subset=None):
        calls.append((self.training, None if subset is None else subset[0].numel()))
        return loss(self, readout, tgt_out, tgt_mask, label_smoothing, subset)

    monkeypatch.setattr(Seq2Seq, "loss", spy)
    full, part = tmp_path / "full", tmp_path / "part"
    settings = ["train.softmax=batch", "train.softmax_frequent=8", "train.softmax_sampled=8", "train.valid_every=6",
                "train.max_sentences=4", f"model.kernels={kernels}"]
    train(tiny_recipe("train.max_steps=12", *settings), run_dir=full)
    assert {width for training, width in calls if training} == {WIDTH_MULTIPLE}
    assert {width for training, width in calls if not training} == {None}, "validation: the full softmax"
    train(tiny_recipe("train.max_steps=6", *settings), run_dir=part)
    train(tiny_recipe("train.max_steps=12", *settings), run_dir=part, resume=True)
    a, b = load_file(checkpoint_path(full, "last")), load_file(checkpoint_path(part, "last"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "valid"] == [6, 12]


def test_an_unknown_softmax_is_refused(tiny_recipe):
    from nmt.errors import ConfigError
    with pytest.raises(ConfigError, match="softmax"):
        tiny_recipe("train.softmax=sampled")
