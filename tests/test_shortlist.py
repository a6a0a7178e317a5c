"""Lexical shortlists: IBM Model 1 against a loop-by-loop EM, the selection of a batch's columns,
and search with a shortlist against full search of the same model with every other output logit
set to -inf (the definition of "normalised over the shortlist")."""
from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch

from nmt.config import DecodeConfig, Recipe
from nmt.data.vocab import EOS_ID
from nmt.errors import NmtError
from nmt.inference.search import pad_sources, search
from nmt.inference.shortlist import (
    LEXICON_FILE,
    Lexicon,
    ibm_model1,
    id_list_chunks,
    top_translations,
)
from nmt.inference.translator import Translator

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_ibm1(src, tgt, tgt_vocab, iterations):
    """IBM Model 1 EM written as the textbook loops (NULL = id 0), as a dict (s, t) -> p(t|s)."""
    prob = {}
    for _ in range(iterations):
        counts, totals = {}, {}
        for s_ids, t_ids in zip(src, tgt):
            sources = [0] + list(s_ids)
            for t in t_ids:
                z = sum(prob.get((s, t), 1.0 / tgt_vocab) if prob else 1.0 / tgt_vocab for s in sources)
                for s in sources:
                    p = prob.get((s, t), 1.0 / tgt_vocab) if prob else 1.0 / tgt_vocab
                    counts[s, t] = counts.get((s, t), 0.0) + p / z
                    totals[s] = totals.get(s, 0.0) + p / z
        prob = {key: c / totals[key[0]] for key, c in counts.items()}
    return prob


def random_corpus(n, src_vocab, tgt_vocab, seed=0):
    rng = random.Random(seed)
    src = [[rng.randrange(4, src_vocab) for _ in range(rng.randint(1, 5))] + [EOS_ID] for _ in range(n)]
    tgt = [[rng.randrange(4, tgt_vocab) for _ in range(rng.randint(1, 5))] + [EOS_ID] for _ in range(n)]
    return src, tgt


@pytest.mark.parametrize("iterations", [1, 3])
def test_ibm_model1_equals_the_textbook_loops(iterations):
    src, tgt = random_corpus(40, 9, 11)
    links, prob = ibm_model1(id_list_chunks(src, tgt), 9, 11, iterations)
    expected = naive_ibm1(src, tgt, 11, iterations)
    got = {(int(k) // 11, int(k) % 11): float(p) for k, p in zip(links, prob)}
    assert got.keys() == expected.keys()
    for key, p in expected.items():
        assert got[key] == pytest.approx(p, rel=1e-9)
    # every source word's distribution sums to one
    for s in {k[0] for k in got}:
        assert sum(p for (a, _), p in got.items() if a == s) == pytest.approx(1.0)


def test_ibm_model1_chunks_give_the_same_table_as_one_chunk():
    src, tgt = random_corpus(60, 9, 11, seed=3)
    one = ibm_model1(id_list_chunks(src, tgt), 9, 11, 4)
    chunks = id_list_chunks(src[:25], tgt[:25]) + id_list_chunks(src[25:], tgt[25:])
    two = ibm_model1(chunks, 9, 11, 4)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_allclose(one[1], two[1], rtol=1e-12)


def test_ibm_model1_recovers_a_word_for_word_dictionary():
    """Shuffled word-for-word translations: EM finds every word's translation, frequent or not."""
    rng = random.Random(1)
    words = list(range(4, 34))
    translation = dict(zip(words, rng.sample(range(4, 34), len(words))))
    src, tgt = [], []
    for _ in range(400):
        sentence = rng.sample(words, rng.randint(2, 6))
        src.append(sentence + [EOS_ID])
        tgt.append(rng.sample([translation[w] for w in sentence], len(sentence)) + [EOS_ID])
    lexicon = Lexicon.build(id_list_chunks(src, tgt), 34, 34, iterations=5, keep=3)
    for w in words:
        assert int(lexicon.top_ids[w, 0]) == translation[w]
    assert int(lexicon.top_ids[EOS_ID, 0]) == EOS_ID
    # never-seen source ids have no entries; probabilities fall along a row
    assert lexicon.top_ids[1].tolist() == [-1, -1, -1]
    assert bool((lexicon.top_probs[4, :-1] >= lexicon.top_probs[4, 1:]).all())


def test_top_translations_ranks_and_pads():
    tgt_vocab = 10
    links = np.array([1 * tgt_vocab + 5, 1 * tgt_vocab + 7, 1 * tgt_vocab + 8, 3 * tgt_vocab + 4])
    prob = np.array([0.2, 0.5, 0.3, 1.0])
    ids, probs = top_translations(links, prob, 5, tgt_vocab, keep=2)
    assert ids.tolist() == [[-1, -1], [7, 8], [-1, -1], [4, -1], [-1, -1]]
    assert probs[1].tolist() == pytest.approx([0.5, 0.3])


def make_lexicon(src_vocab, tgt_vocab, keep=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    top_ids = torch.stack([torch.randperm(tgt_vocab - 4, generator=g)[:keep] + 4 for _ in range(src_vocab)])
    probs = torch.linspace(0.5, 0.1, keep).expand(src_vocab, keep).clone()
    by_frequency = torch.randperm(tgt_vocab, generator=g)
    return Lexicon(top_ids, probs, by_frequency)


def test_columns_are_the_union_and_ignore_padding():
    lexicon = make_lexicon(10, 30, keep=3)
    src, lengths, mask = pad_sources([[5, 6, EOS_ID], [7, EOS_ID]])
    cols = lexicon.columns(src, mask, per_source=2, frequent=4)
    expected = set(range(4)) | set(lexicon.by_frequency[:4].tolist())
    for s in (5, 6, EOS_ID, 7):
        expected |= set(lexicon.top_ids[s, :2].tolist())
    assert cols.tolist() == sorted(expected)  # padding (id 0) added nothing
    with pytest.raises(NmtError, match="keeps 3"):
        lexicon.columns(src, mask, per_source=4, frequent=4)


def test_lexicon_round_trip_and_clear_errors(tmp_path):
    lexicon = make_lexicon(10, 30)
    lexicon.save(tmp_path / LEXICON_FILE)
    back = Lexicon.load(tmp_path / LEXICON_FILE)
    assert torch.equal(back.top_ids, lexicon.top_ids) and torch.equal(back.by_frequency, lexicon.by_frequency)
    with pytest.raises(NmtError, match="nmt shortlist"):
        Lexicon.load(tmp_path / "missing" / LEXICON_FILE)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / LEXICON_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(NmtError, match="corrupt"):
        Lexicon.load(tmp_path / "bad" / LEXICON_FILE)


def masked_model(model, columns):
    """The same model with every output logit outside ``columns`` at -inf."""
    masked = copy.deepcopy(model)
    outside = torch.ones(model.output.out_features, dtype=torch.bool)
    outside[columns] = False
    with torch.no_grad():
        masked.output.bias[outside] = -math.inf
    return masked


SOURCES = [[5, 6, 7], [8], [4, 9, 5, 6], [7, 7]]


@pytest.mark.parametrize("kind", ["bahdanau", "luong-general"])
@pytest.mark.parametrize("beam,n_best,no_repeat,sample", [
    (1, 1, 0, False), (1, 1, 2, False), (3, 2, 0, False), (4, 1, 2, False), (1, 4, 2, True)])
def test_shortlist_search_equals_full_search_with_other_logits_masked(kind, beam, n_best, no_repeat, sample,
                                                                     tiny_model):
    """Sampling too: the same random numbers pick the same tokens, as the tokens outside the
    shortlist have probability 0 in the masked model."""
    model = tiny_model(kind, tgt_vocab=40, src_vocab=10, weight_scale=3.0, eos_bias=0.5)
    lexicon = make_lexicon(10, 40, keep=3, seed=2)
    options = DecodeConfig(beam=beam, n_best=n_best, no_repeat_ngram=no_repeat, max_len_b=6,
                           shortlist=2, shortlist_frequent=3, sample=sample, top_k=5 * sample)
    src, lengths, mask = pad_sources([s + [EOS_ID] for s in SOURCES])
    columns = lexicon.columns(src, mask, 2, 3)
    assert 8 < columns.numel() < 40  # a real restriction
    got = search(model, src, lengths, mask, options, lexicon)
    full = DecodeConfig(beam=beam, n_best=n_best, no_repeat_ngram=no_repeat, max_len_b=6, sample=sample,
                        top_k=5 * sample)
    for b, g_hyps in enumerate(got):  # each sentence over its own shortlist, not the batch's
        own = lexicon.columns(src[b:b + 1], mask[b:b + 1], 2, 3)
        assert own.numel() < columns.numel()
        (w_hyps,) = search(masked_model(model, own), src[b:b + 1], lengths[b:b + 1], mask[b:b + 1], full,
                           keys=[b])
        assert [h.tokens for h in g_hyps] == [h.tokens for h in w_hyps]
        allowed = set(own.tolist())
        for g, w in zip(g_hyps, w_hyps):
            assert set(g.tokens) <= allowed  # alone: float rounding of other shapes
            assert g.score == pytest.approx(w.score, abs=1e-4)
            assert g.log_probs == pytest.approx(w.log_probs, abs=1e-4)


@pytest.mark.parametrize("beam,n_best", [(1, 1), (4, 3)])
def test_a_sentence_decodes_the_same_alone_and_in_any_batch(beam, n_best, tiny_model):
    """The shortlist of a batch is the union of its sentences', but each sentence is normalised over
    its own: its translation and scores do not depend on the other sentences."""
    model = tiny_model("bahdanau", tgt_vocab=40, src_vocab=10, weight_scale=3.0, eos_bias=0.5)
    lexicon = make_lexicon(10, 40, keep=3, seed=2)
    translator = Translator(Recipe(), None, model, device="cpu", lexicon=lexicon)
    settings = dict(beam=beam, n_best=n_best, max_len_b=6, shortlist=2, shortlist_frequent=3)
    alone = [translator.search_ids([s], **settings)[0] for s in SOURCES]
    for batch in (SOURCES, SOURCES[::-1], SOURCES[1:] + [[9, 9, 4], [8, 7, 6, 5, 4]]):
        together = translator.search_ids(batch, **settings)
        for s, hyps in zip(batch, together):
            if s not in SOURCES:
                continue
            want = alone[SOURCES.index(s)]
            assert [h.tokens for h in hyps] == [h.tokens for h in want]
            assert [h.score for h in hyps] == pytest.approx([h.score for h in want], abs=1e-5)
            for h, w in zip(hyps, want):
                assert h.log_probs == pytest.approx(w.log_probs, abs=1e-5)


def test_shortlist_of_the_whole_vocabulary_changes_nothing(tiny_model):
    model = tiny_model("bahdanau", tgt_vocab=20, src_vocab=10, weight_scale=3.0, eos_bias=1.0)
    lexicon = make_lexicon(10, 20, keep=16)  # every non-special id of every source
    translator = Translator(Recipe(), None, model, device="cpu", lexicon=lexicon)
    full = translator.search_ids(SOURCES, beam=3, max_len_b=5)
    short = translator.search_ids(SOURCES, beam=3, max_len_b=5, shortlist=16, shortlist_frequent=0)
    for f, s in zip(full, short):
        assert f[0].tokens == s[0].tokens
        assert f[0].score == pytest.approx(s[0].score, abs=1e-5)


def test_shortlist_needs_a_matching_lexicon(tiny_model):
    model = tiny_model("bahdanau", tgt_vocab=20, src_vocab=10, weight_scale=3.0, eos_bias=1.0)
    src, lengths, mask = pad_sources([[5, EOS_ID]])
    with pytest.raises(NmtError, match="nmt shortlist"):
        search(model, src, lengths, mask, DecodeConfig(beam=2, shortlist=2))
    with pytest.raises(NmtError, match="target vocabulary of 30"):
        search(model, src, lengths, mask, DecodeConfig(beam=2, shortlist=2), make_lexicon(10, 30))


def test_training_writes_the_lexicon_and_translate_uses_it(tiny_recipe, tmp_path, capsys):
    from nmt.cli import main
    from nmt.inference.translator import Translator
    from nmt.training.loop import train

    run = tmp_path / "run"
    recipe = tiny_recipe("train.max_steps=4", "train.valid_every=4", "decode.shortlist=3", "train.plot_sentences=1")
    train(recipe, run_dir=run)
    # validation's attention plots decode with the recipe's shortlist too
    assert list((run / "plots").glob("step*/valid0.png"))
    lexicon = Lexicon.load(run / LEXICON_FILE)
    assert lexicon.top_ids.shape == (80, 100) and lexicon.metadata["method"] == "ibm-model-1"
    # `nmt shortlist` rebuilds the same table from the run directory alone
    (run / LEXICON_FILE).unlink()
    assert main(["shortlist", str(run), "--keep", "50"]) == 0
    rebuilt = Lexicon.load(run / LEXICON_FILE)
    assert torch.equal(rebuilt.top_ids, lexicon.top_ids[:, :50])
    assert torch.equal(rebuilt.by_frequency, lexicon.by_frequency)

    translator = Translator.load(run)
    sources = ["Je suis fatigué.", "Il fait beau.", "Où est la gare ?"]
    full = translator.translate(sources, beam=3, shortlist=0)
    everything = translator.translate(sources, beam=3, shortlist=50, shortlist_frequent=80)
    assert everything == full  # a shortlist holding the whole vocabulary changes nothing
    # bf16 takes the same path
    assert len(Translator.load(run, precision="bf16").translate(sources, beam=3, shortlist=3)) == 3
    src = tmp_path / "in.txt"
    src.write_text("\n".join(sources) + "\n", encoding="utf-8")
    assert main(["translate", str(run), "-i", str(src), "-o", str(tmp_path / "out.txt"), "--shortlist", "3"]) == 0
    assert len((tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()) == 3

    (run / LEXICON_FILE).unlink()
    assert main(["translate", str(run), "-i", str(src), "-o", str(tmp_path / "out2.txt"), "--shortlist", "3"]) == 2
    assert f"nmt shortlist {run}" in capsys.readouterr().err
    assert not (tmp_path / "out2.txt").exists()
    assert main(["shortlist", str(run), "--keep", "0"]) == 2


@pytest.mark.parametrize("src_vocab,tgt_vocab", [(40, 40), (120, 120), (80, 60)])
def test_a_lexicon_of_another_vocabulary_is_refused(tiny_run, tmp_path, capsys, src_vocab, tgt_vocab):
    """A lexicon.safetensors built for other vocabularies (copied from another run): exit 2 naming it
    and how to rebuild it, instead of an IndexError (smaller) or wrong columns (larger)."""
    import shutil

    from nmt.cli import main
    from nmt.inference.shortlist import Lexicon

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    generator = torch.Generator().manual_seed(0)
    Lexicon(torch.randint(0, tgt_vocab, (src_vocab, 8), generator=generator), torch.rand(src_vocab, 8),
            torch.randperm(tgt_vocab, generator=generator)).save(run / "lexicon.safetensors")
    source = tmp_path / "in.fr"
    source.write_text("Je suis fatigué.\n" * 3, encoding="utf-8")
    assert main(["translate", str(run), "-i", str(source), "--shortlist", "5", "--checkpoint", "last"]) == 2
    err = capsys.readouterr().err
    assert "lexicon.safetensors" in err and f"nmt shortlist {run}" in err and "Traceback" not in err


def test_the_lexicon_is_built_over_data_lexicon_sample_pairs(tiny_recipe, tmp_path):
    """``data.lexicon_sample`` bounds the pairs IBM Model 1 reads, in training and in `nmt shortlist`
    (which takes it from the run's recipe unless --max-pairs says otherwise)."""
    from nmt.cli import main
    from nmt.training.loop import train

    run = tmp_path / "run"
    train(tiny_recipe("train.max_steps=1", "train.valid_every=1", "decode.shortlist=3", "data.lexicon_sample=50"),
          run_dir=run)
    assert Lexicon.load(run / LEXICON_FILE).metadata["pairs"] == "50"
    assert main(["shortlist", str(run)]) == 0
    assert Lexicon.load(run / LEXICON_FILE).metadata["pairs"] == "50"
    assert main(["shortlist", str(run), "--max-pairs", "70"]) == 0
    assert Lexicon.load(run / LEXICON_FILE).metadata["pairs"] == "70"
    default = tiny_recipe().data.lexicon_sample
    assert default >= 163_000, "the fr-en corpus (about 163k pairs) keeps being read whole"
