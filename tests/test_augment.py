"""nmt.data.augment: word dropout, subword sampling and concatenated pairs (training only)."""
from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch

from nmt.config import Recipe, TokenizerConfig, load_recipe
from nmt.data.augment import (
    Augmentation,
    TrainingExamples,
    concat_plan,
    input_word_dropout,
    join,
    word_dropout,
)
from nmt.data.batching import collate, encode_dataset
from nmt.data.tokenizer import SubwordTokenizers
from nmt.data.vocab import BOS_ID, EOS_ID, N_SPECIAL, PAD_ID, UNK_ID

from conftest import REPO

SPECIALS = (PAD_ID, UNK_ID, BOS_ID, EOS_ID)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny corpus's training pairs, tokenizers for each model type, and each encoded split."""
    lines = (REPO / "data/tiny/train.tsv").read_text(encoding="utf-8").splitlines()
    pairs = [line.split("\t") for line in lines if line.strip()]
    ds = datasets.Dataset.from_dict({"src": [p[1] for p in pairs], "tgt": [p[0] for p in pairs]})
    made = {}
    for model_type in ("unigram", "bpe"):
        cfg = TokenizerConfig(model_type=model_type, src_vocab_size=200, tgt_vocab_size=200, num_threads=1)
        tok = SubwordTokenizers.train(cfg, ds, tmp_path_factory.mktemp(model_type))
        made[model_type] = (tok, encode_dataset(ds, tok, keep_text=True))
    return made


def examples(corpus, model_type="unigram", **settings) -> TrainingExamples:
    tok, ds = corpus[model_type]
    return TrainingExamples(ds, tok, Augmentation(seed=7, **settings))


# ------------------------------------------------------------------------------------ defaults


@pytest.mark.parametrize("path", ["recipes/fr-en.yaml", "recipes/tiny.yaml", None])
def test_every_technique_is_off_by_default(path):
    recipe = Recipe() if path is None else load_recipe(REPO / path)
    assert not Augmentation.from_recipe(recipe).active
    assert Augmentation.from_recipe(load_recipe(REPO / "recipes/tiny.yaml", ["train.concat_ratio=0.5"])).active


def test_subword_alpha_defaults_to_each_papers_setting():
    def alpha(*overrides):
        return Augmentation.from_recipe(load_recipe(REPO / "recipes/tiny.yaml", list(overrides)))

    assert alpha().subword_alpha == 0.2 and alpha("tokenizer.model_type=bpe").subword_alpha == 0.1
    assert alpha("train.subword_alpha=0.5", "tokenizer.model_type=bpe").subword_alpha == 0.5
    assert alpha("train.subword_nbest=8").subword_nbest == 8
    assert alpha("train.subword_nbest=8", "tokenizer.model_type=bpe").subword_nbest == -1


# -------------------------------------------------------------------------------- word dropout


def _sequences(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(N_SPECIAL, 50, size=rng.integers(1, 30)).tolist() + [EOS_ID] for _ in range(n)]


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_word_dropout_replaces_subwords_at_its_rate_and_never_a_special_token(p):
    seqs = _sequences(5000)
    seqs[0] = [PAD_ID, UNK_ID, BOS_ID, EOS_ID] * 50  # specials only: never touched
    out = word_dropout(seqs, p, np.random.default_rng(1))
    assert out[0] == seqs[0]
    assert [len(s) for s in out] == [len(s) for s in seqs]
    hits = sum(a != b for s, o in zip(seqs, out) for a, b in zip(s, o))
    real = sum(1 for s in seqs for x in s if x >= N_SPECIAL)
    assert all(b == UNK_ID for s, o in zip(seqs, out) for a, b in zip(s, o) if a != b)
    assert hits / real == pytest.approx(p, abs=0.01)  # ~70k subwords: the standard error is < 0.002
    assert all(o[-1] == EOS_ID for o in out)
    assert out == word_dropout(seqs, p, np.random.default_rng(1)), "the same stream, the same result"


def test_word_dropout_drop_mode_removes_subwords_and_keeps_eos():
    seqs = _sequences(4000, seed=2)
    out = word_dropout(seqs, 0.25, np.random.default_rng(3), drop=True)
    kept = sum(len(o) - 1 for o in out) / sum(len(s) - 1 for s in seqs)
    assert kept == pytest.approx(0.75, abs=0.01)
    for s, o in zip(seqs, out):
        assert o[-1] == EOS_ID and UNK_ID not in o
        it = iter(s)
        assert all(x in it for x in o), "what is left is a subsequence, in order"
    assert word_dropout([[EOS_ID]], 0.99, np.random.default_rng(0), drop=True) == [[EOS_ID]]


def test_decoder_input_dropout_spares_bos_padding_and_the_targets():
    batch = collate({"src_ids": _sequences(3000), "tgt_ids": _sequences(3000, seed=5)})
    tgt_in = input_word_dropout(batch.tgt_in, 0.2, np.random.default_rng(4))
    assert torch.equal(tgt_in[:, 0], batch.tgt_in[:, 0]) and bool((tgt_in[:, 0] == BOS_ID).all())
    assert torch.equal(tgt_in[~batch.tgt_mask], batch.tgt_in[~batch.tgt_mask])  # padding
    changed = tgt_in != batch.tgt_in
    assert bool((tgt_in[changed] == UNK_ID).all())
    real = batch.tgt_mask & (batch.tgt_in >= N_SPECIAL)
    assert changed.sum().item() / real.sum().item() == pytest.approx(0.2, abs=0.01)


def test_word_dropout_of_a_batch_is_drawn_from_its_place(corpus):
    ex = examples(corpus, src_word_dropout=0.3, tgt_word_dropout=0.3)
    plain = examples(corpus)
    indices = list(range(40))
    a, b = ex.batch(indices, epoch=1, position=3), ex.batch(indices, epoch=1, position=3)
    assert torch.equal(a.src, b.src) and torch.equal(a.tgt_in, b.tgt_in)
    other = ex.batch(indices, epoch=1, position=4)
    assert not torch.equal(a.src, other.src)
    clean = plain.batch(indices, epoch=1, position=3)
    assert torch.equal(a.tgt_out, clean.tgt_out), "the loss targets are never changed"
    assert not torch.equal(a.src, clean.src) and not torch.equal(a.tgt_in, clean.tgt_in)


# ---------------------------------------------------------------------------- subword sampling


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sampled_segmentations_decode_to_the_text_and_vary(corpus, model_type):
    tok, ds = corpus[model_type]
    ex = examples(corpus, model_type, subword_sampling=True)
    indices = list(range(len(ds)))
    src, tgt = ex.examples(indices, epoch=0)
    assert tok.decode_src(src) == ds["src"] and tok.decode_tgt(tgt) == ds["tgt"]
    assert all(s[-1] == EOS_ID and t[-1] == EOS_ID for s, t in zip(src, tgt))
    changed = sum(s != d for s, d in zip(src, ds["src_ids"]))
    assert changed > len(ds) // 4, "sampling changes many segmentations"
    again = examples(corpus, model_type, subword_sampling=True)
    assert again.examples(indices[::-1], epoch=0)[0] == src[::-1], "a pair's draw does not depend on its batch"
    next_epoch = again.examples(indices, epoch=1)[0]
    assert next_epoch != src and tok.decode_src(next_epoch) == ds["src"]
    assert ex.examples(indices, epoch=0)[0] == src, "deterministic for (seed, epoch, pair)"


def test_without_sampling_the_encoded_ids_are_used(corpus):
    tok, ds = corpus["unigram"]
    src, tgt = examples(corpus).examples(list(range(len(ds))), epoch=3)
    assert src == ds["src_ids"] and tgt == ds["tgt_ids"]


# ------------------------------------------------------------------------------- concatenation


@pytest.mark.parametrize("ratio,k,mode", [(0.5, 2, "random"), (1.0, 3, "consecutive"), (0.1, 2, "random")])
def test_concatenated_examples_are_real_pairs_joined(corpus, ratio, k, mode):
    tok, ds = corpus["unigram"]
    ex = examples(corpus, concat_ratio=ratio, concat_pairs=k, concat_mode=mode)
    n = len(ds)
    assert len(ex) - n == round(ratio * n) == len(ex.parts)
    assert ex.parts.shape[1] == k and ex.parts.min() >= 0 and ex.parts.max() < n
    if mode == "consecutive":
        assert (np.diff(ex.parts, axis=1) == 1).all()
    joined = list(range(n, len(ex)))
    src, tgt = ex.examples(joined, epoch=0)
    for i, s, t in zip(joined, src, tgt):
        parts = ex.parts[i - n].tolist()
        assert s == join([ds[j]["src_ids"] for j in parts]) and t == join([ds[j]["tgt_ids"] for j in parts])
        assert s.count(EOS_ID) == 1 and s[-1] == EOS_ID
        assert tok.decode_src([s])[0] == " ".join(ds[j]["src"] for j in parts)
        assert tok.decode_tgt([t])[0] == " ".join(ds[j]["tgt"] for j in parts)
    assert ex.src_lens[n:].tolist() == [len(s) for s in src]
    assert ex.tgt_lens[n:].tolist() == [len(t) for t in tgt]
    assert np.array_equal(concat_plan(n, ratio, k, mode, seed=7), ex.parts), "drawn from the seed alone"
    assert not np.array_equal(concat_plan(n, ratio, k, mode, seed=8), ex.parts)


def test_concatenation_with_sampling_joins_the_sampled_pairs(corpus):
    tok, ds = corpus["unigram"]
    ex = examples(corpus, concat_ratio=0.2, subword_sampling=True)
    i = len(ds)
    (src,), _ = ex.examples([i], epoch=2)
    parts = ex.parts[0].tolist()
    alone, _ = ex.examples(parts, epoch=2)
    assert src == join(alone)
    assert tok.decode_src([src])[0] == " ".join(ds[j]["src"] for j in parts)


def test_a_ratio_too_small_for_one_example_adds_none():
    assert concat_plan(10, 0.01, 2, "random", 0).shape == (0, 2)
    assert concat_plan(1, 1.0, 2, "consecutive", 0).shape == (0, 2)


# --------------------------------------------------------------------------- in a training run


def test_validation_never_sees_the_regularisation(tmp_path, tiny_recipe):
    """A run trained with all of it validates the way a fresh translator scores the valid set."""
    from nmt.data.corpus import load_corpus
    from nmt.inference.translator import Translator
    from nmt.training.trainer import train

    run = tmp_path / "run"
    recipe = tiny_recipe("train.max_steps=8", "train.valid_every=8", "train.src_word_dropout=0.5",
                         "train.tgt_word_dropout=0.5", "train.subword_sampling=true", "train.concat_ratio=0.5")
    train(recipe, run_dir=run)
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "valid"][-1]
    fresh = Translator.load(run, "last", device="cpu")
    valid = load_corpus(recipe.data, splits=("valid",))["valid"]
    scores = fresh.score(list(valid["src"]), list(valid["tgt"]))
    tokens = sum(len(ids) + 1 for ids in fresh.tokenizers.encode_tgt(list(valid["tgt"])))
    assert record["loss"] == pytest.approx(-sum(scores) / tokens, abs=1e-5)


def test_bad_values_are_refused_naming_the_key():
    from nmt.errors import ConfigError

    for override, key in [("train.src_word_dropout=1.0", "train.src_word_dropout"),
                          ("train.concat_pairs=1", "train.concat_pairs"),
                          ("train.word_dropout_mode=mask", "train.word_dropout_mode"),
                          ("train.subword_alpha=0", "train.subword_alpha")]:
        with pytest.raises(ConfigError, match=key):
            load_recipe(REPO / "recipes/tiny.yaml", [override])
    with pytest.raises(ConfigError, match="train.subword_nbest"):
        load_recipe(REPO / "recipes/tiny.yaml", ["train.subword_sampling=true", "train.subword_nbest=1"])
    load_recipe(REPO / "recipes/tiny.yaml", ["train.subword_sampling=true", "train.subword_nbest=1",
                                             "tokenizer.model_type=bpe"])  # ignored by BPE-dropout


def test_resuming_with_another_concat_ratio_is_refused_naming_it(tmp_path, tiny_recipe):
    """Concatenated examples change the set the sampler's position counts in: the data position
    of the checkpoint would not mean the same batches."""
    from nmt.errors import CheckpointError
    from nmt.training.trainer import train

    run = tmp_path / "run"
    train(tiny_recipe("train.max_steps=2", "train.valid_every=2"), run_dir=run)
    with pytest.raises(CheckpointError, match="train.concat_ratio"):
        train(tiny_recipe("train.max_steps=4", "train.valid_every=2", "train.concat_ratio=0.5"), run_dir=run,
              resume=True)
    # word dropout and subword sampling may be switched on for the rest of a run
    summary = train(tiny_recipe("train.max_steps=4", "train.valid_every=2", "train.src_word_dropout=0.1",
                                "train.subword_sampling=true"), run_dir=run, resume=True)
    assert summary["steps"] == 4
