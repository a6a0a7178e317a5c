"""Lexically constrained beam search (nmt/inference/constraints.py, ConstrainedBeamSearch) on tiny
random models: every complete output contains each constraint exactly once, a beam that sees every
continuation equals exhaustive search over the outputs that contain the constraints, no constraint
means the unconstrained search, and both engines agree. Also the glossary of ``nmt translate``."""
from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt.config import DecodeConfig
from nmt.data.vocab import EOS_ID
from nmt.errors import NmtError
from nmt.inference.beam import BeamSearch, ConstrainedBeamSearch
from nmt.inference.constraints import Constraints, allocate, check_constraints, occurrences
from nmt.inference.ops_numpy import numpy_ops
from nmt.inference.search import beam_search, pad_sources, search
from nmt.inference.search import _engine as torch_engine
from test_search import enumerate_outputs, exhaustive_scores, sources

pytestmark = pytest.mark.usefixtures("one_thread")

GENERABLE = [1] + list(range(4, 12))  # a 12-word target vocabulary: UNK and 4..11


@pytest.fixture
def tiny_model(tiny_model):
    return functools.partial(tiny_model, src_vocab=10, tgt_vocab=12, weight_scale=3.0, eos_bias=1.0)


def run(model, srcs, constraints, **opts):
    src, lengths, mask = pad_sources(srcs)
    return beam_search(model, src, lengths, mask, DecodeConfig(**opts), constraints=constraints)


# --------------------------------------------------------------------------- the bookkeeping

@pytest.mark.parametrize("constraint,tokens", [
    ([5, 6], [5, 5, 6, 7, 5, 6]), ([5, 5], [5, 5, 5]), ([5, 6, 5], [5, 6, 5, 6, 5]),
    ([4, 4, 5], [4, 4, 4, 5, 4, 4, 5]), ([7], [7, 1, 7, 7]), ([5, 6], [6, 5, 1, 6])])
def test_automaton_counts_occurrences_as_a_scan_does(constraint, tokens):
    """The constraint states follow every prefix: broken-off, restarted and overlapping matches."""
    cons = Constraints(numpy_ops, [[constraint, [9, 9, 9]]])
    sent = numpy_ops.as_array([0], numpy_ops.long)
    state, count = cons.start(sent)
    for i, t in enumerate(tokens):
        state, count = cons.advance(sent, state, count, numpy_ops.as_array([t], numpy_ops.long))
        assert int(count[0, 0]) == occurrences(tokens[: i + 1], constraint)
        assert int(count[0, 1]) == occurrences(tokens[: i + 1], [9, 9, 9])


def test_allocation_gives_every_bank_a_share_best_first():
    val = numpy_ops.as_array([[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, float("-inf")]], numpy_ops.float32)
    bank = numpy_ops.as_array([[0, 0, 0, 1, 1, 2, 2]], numpy_ops.long)
    # the best of bank 2, 1, 0, then the second best of 1 and 0 (bank 2's other one is -inf)
    assert allocate(numpy_ops, val, bank, 3, 2).tolist() == [[0, 3, 5]]
    assert allocate(numpy_ops, val, bank, 5, 2).tolist() == [[0, 1, 3, 4, 5]]


def test_bad_constraints_are_refused_and_repeats_kept_once():
    assert check_constraints([[5, 6], [], [5, 6], [7]]) == [[5, 6], [7]]
    for bad in ([[EOS_ID]], [[0, 5]], [[2]], [[-1]]):
        with pytest.raises(NmtError):
            check_constraints(bad)


# --------------------------------------------------------------------------- the search

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 50), beam=st.integers(1, 4), data=st.data())
def test_complete_outputs_contain_each_constraint_exactly_once(seed, beam, data, tiny_model):
    model = tiny_model(seed=seed, eos_bias=data.draw(st.floats(-1.0, 2.0)))
    srcs = sources(3, seed=seed)
    terms = st.lists(st.sampled_from(GENERABLE), min_size=1, max_size=3)
    constraints = [data.draw(st.lists(terms, max_size=2)) for _ in srcs]
    n_best = data.draw(st.integers(1, beam))
    results = run(model, srcs, constraints, beam=beam, n_best=n_best, max_len_b=data.draw(st.integers(2, 8)),
                  length_penalty=data.draw(st.sampled_from([0.0, 1.0])))
    for cs, hyps in zip(constraints, results):
        assert 1 <= len(hyps) <= n_best
        cs = check_constraints(cs)
        for h in hyps:
            counts = [occurrences(h.tokens, c) for c in cs]
            assert all(n <= 1 for n in counts), (cs, h.tokens)  # never twice
            # None: no sentence of the batch had constraints (the unconstrained search ran)
            assert (h.constraints_met is not False) == all(n == 1 for n in counts)
            if h.finished:  # EOS only once every constraint occurred
                assert h.constraints_met is not False
        met = [h.constraints_met is not False for h in hyps]
        assert met == sorted(met, reverse=True)  # those that meet them rank first


def _compare(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [h.tokens for h in g] == [h.tokens for h in w]
        assert [h.score for h in g] == [h.score for h in w]  # exactly
        assert [h.raw_score for h in g] == [h.raw_score for h in w]
        assert [h.log_probs for h in g] == [h.log_probs for h in w]
        assert [h.finished for h in g] == [h.finished for h in w]


@pytest.mark.parametrize("opts", [dict(beam=1), dict(beam=4, n_best=3), dict(beam=5, n_best=2, length_penalty=1.0,
                                  coverage_penalty=0.3, no_repeat_ngram=2, min_len=1)])
def test_no_constraints_is_the_unconstrained_search(opts, tiny_model, kernels):
    """No constraint anywhere: the unconstrained search runs (byte for byte); the constrained
    search itself, given sentences without constraints, finds the same hypotheses and scores."""
    model = tiny_model(seed=4, kernels=kernels)
    srcs = sources(8, seed=5)
    src, lengths, mask = pad_sources(srcs)
    options = DecodeConfig(**opts)
    plain = search(model, src, lengths, mask, options)
    _compare(search(model, src, lengths, mask, options, constraints=[[] for _ in srcs]), plain)
    _compare(search(model, src, lengths, mask, options, constraints=None), plain)
    with torch.inference_mode():
        engine = torch_engine(model, src, None, None)
        unconstrained = BeamSearch(engine, src, lengths, mask, options).run()
        empty = ConstrainedBeamSearch(engine, src, lengths, mask, options, constraints=[[] for _ in srcs]).run()
    if opts["beam"] > 1:
        _compare(unconstrained, plain)
    _compare(empty, unconstrained)
    assert all(h.constraints_met for hyps in empty for h in hyps)


def test_unconstrained_sentences_of_a_constrained_batch_are_searched_as_alone(tiny_model):
    model = tiny_model(seed=6)
    srcs = sources(6, seed=2)
    constraints = [[[5, 6]], [], [[7]], [], [[4], [9, 1]], []]
    mixed = run(model, srcs, constraints, beam=4, n_best=2)
    plain = run(model, srcs, None, beam=4, n_best=2)
    for cs, m, p in zip(constraints, mixed, plain):
        if not cs:
            assert [h.tokens for h in m] == [h.tokens for h in p]
            # float rounding: this tiny model's products are below the sizes where a row is rounded
            # the same in any batch (tests/test_batch_invariant.py holds that on real sizes)
            assert [h.score for h in m] == pytest.approx([h.score for h in p], abs=1e-5)


@pytest.mark.parametrize("constraints,alpha,beta,max_len,n_best", [
    ([[5]], 0.0, 0.0, 3, 4), ([[4, 5]], 0.0, 0.0, 4, 5), ([[5], [4]], 1.0, 0.0, 4, 4),
    ([[1, 1]], 0.0, 0.4, 3, 3), ([[5, 4, 5]], 2.0, 0.3, 4, 2)])
def test_large_beam_equals_exhaustive_search_over_outputs_with_the_constraints(
        constraints, alpha, beta, max_len, n_best, tiny_model, kernels):
    vocab = 6  # generable: UNK, EOS, 4, 5
    model = tiny_model("bahdanau", tgt_vocab=vocab, eos_bias=0.5, out_scale=3.0, seed=3, kernels=kernels)
    src = [4, 7, 5, 9, EOS_ID]
    candidates = [c for c in enumerate_outputs(max_len, vocab)
                  if all(occurrences(c, k) == 1 for k in constraints)]
    ranked = sorted(zip(exhaustive_scores(model, src, candidates, alpha, beta), map(tuple, candidates)),
                    reverse=True)
    assert len(ranked) >= n_best
    n = vocab - 3
    (hyps,) = run(model, [src], [constraints], beam=n ** (max_len - 1) * (n + 1), n_best=n_best,
                  max_len_a=0.0, max_len_b=max_len, length_penalty=alpha, coverage_penalty=beta)
    assert [tuple(h.tokens) for h in hyps] == [c for _, c in ranked[:n_best]]
    assert [h.score for h in hyps] == pytest.approx([s for s, _ in ranked[:n_best]], rel=1e-5, abs=1e-4)
    assert all(h.constraints_met for h in hyps)
    # the unconstrained optimum does not contain them (the constraints change the answer)
    (free,) = run(model, [src], None, beam=n ** (max_len - 1) * (n + 1), max_len_a=0.0, max_len_b=max_len,
                  length_penalty=alpha, coverage_penalty=beta)
    assert tuple(free[0].tokens) != ranked[0][1]


def test_large_beam_over_an_ensemble_equals_exhaustive_search(tiny_model):
    from nmt.inference.ensemble import Ensemble

    vocab, max_len, constraints = 6, 3, [[4, 4]]
    models = [tiny_model(kind, tgt_vocab=vocab, eos_bias=0.5, out_scale=3.0, seed=3 + i)
              for i, kind in enumerate(("bahdanau", "luong-general"))]
    src = [4, 7, 5, 9, EOS_ID]
    candidates = [c for c in enumerate_outputs(max_len, vocab) if occurrences(c, [4, 4]) == 1]
    ranked = sorted(zip(exhaustive_scores(models, src, candidates, 1.0), map(tuple, candidates)), reverse=True)
    (hyps,) = run(Ensemble(models), [src], [constraints], beam=36, n_best=3, max_len_a=0.0, max_len_b=max_len,
                  length_penalty=1.0)
    assert [tuple(h.tokens) for h in hyps] == [c for _, c in ranked[:3]]


def test_max_length_grows_to_fit_the_constraints_and_an_unmeetable_one_says_so(tiny_model):
    model = tiny_model(seed=2)
    long_term = [5, 6, 7, 8, 9, 10]
    (hyps,) = run(model, [[4, 5, EOS_ID]], [[long_term]], beam=3, max_len_a=0.0, max_len_b=2)
    assert occurrences(hyps[0].tokens, long_term) == 1 and hyps[0].constraints_met
    # a term the n-gram blocking forbids cannot be met: the output is closed and says so
    (blocked,) = run(model, [[4, 5, EOS_ID]], [[[5, 5]]], beam=3, max_len_a=0.0, max_len_b=4, no_repeat_ngram=1)
    assert blocked[0].constraints_met is False and not blocked[0].finished


def test_sampling_with_constraints_is_refused(tiny_model):
    src, lengths, mask = pad_sources(sources(2))
    with pytest.raises(NmtError, match="beam search"):
        search(tiny_model(), src, lengths, mask, DecodeConfig(beam=1, sample=True), constraints=[[[5]], []])


# --------------------------------------------------------------------------- API, CLI and engines

@pytest.fixture(scope="module")
def text_run(tmp_path_factory, random_run):
    """A run with sentencepiece models and a lexicon, and its export (None without onnxruntime)."""
    import random

    from test_translate import build_run

    from nmt.inference.shortlist import LEXICON_FILE, Lexicon, id_list_chunks

    run = build_run(tmp_path_factory.mktemp("constraints") / "run", random_run)
    rng = random.Random(3)
    src = [[rng.randrange(4, 30) for _ in range(rng.randint(1, 6))] for _ in range(300)]
    tgt = [[rng.randrange(4, 22) for _ in range(rng.randint(1, 6))] for _ in range(300)]
    Lexicon.build(id_list_chunks(src, tgt), 30, 22, iterations=2, keep=4).save(run / LEXICON_FILE)
    return run


TEXTS = ["le chat mange", "une maison rouge et un chien bleu", "le chien dort", "", "la maison"]
TERMS = [["red cat"], [("maison", "house"), "small"], [], ["dog"], [("maison", "blue house")]]


def test_translate_puts_every_term_into_the_translation(text_run):
    from nmt.inference.translator import Translator

    t = Translator.load(text_run, device="cpu")
    for settings_ in (dict(beam=3, n_best=2), dict(beam=1), dict(beam=4, shortlist=1, shortlist_frequent=0)):
        results = t.translate(TEXTS, constraints=TERMS, return_scores=True, **settings_)
        for text, terms, result in zip(TEXTS, TERMS, results):
            if not text:
                assert result.hypotheses[0].text == ""
                continue
            wanted = t.encode_targets([x[1] if isinstance(x, tuple) else x for x in terms])
            for k, h in enumerate(result.hypotheses):
                ids = [t.tokenizers.tgt.piece_to_id(p) for p in h.tokens]
                met = all(occurrences(ids, w) == 1 for w in wanted)
                assert h.constraints_met is met and (met or k > 0), (settings_, h.text)  # the best meets them
            for x in terms:  # the terms' words, as words of the text
                assert (x[1] if isinstance(x, tuple) else x) in result.hypotheses[0].text
            best = result.hypotheses[0]
            if terms:  # where each term is: its pieces, and the words of the text they make
                words = best.text.split()
                assert [s.term for s in best.constraint_spans] == [x[1] if isinstance(x, tuple) else x for x in terms]
                for span, w in zip(best.constraint_spans, wanted):
                    ids = [t.tokenizers.tgt.piece_to_id(p) for p in best.tokens[span.tokens[0]: span.tokens[1]]]
                    # (the term's last piece may be continued by the next: its word is longer)
                    assert ids == w and span.term in " ".join(words[k] for k in span.words)
            else:
                assert best.constraint_spans is None
    plain = t.translate(TEXTS, beam=3)
    assert t.translate(TEXTS, beam=3, constraints=[[] for _ in TEXTS]) == plain
    assert t.translate(TEXTS, beam=3, constraints=TERMS) != plain
    with pytest.raises(NmtError, match="one list of terms per sentence"):
        t.translate(TEXTS, constraints=TERMS[:2])
    with pytest.raises(NmtError, match="not a non-empty target term"):
        t.translate(TEXTS, constraints=[[" "]] + [[]] * 4)


def test_onnx_engine_gives_the_constrained_output_of_the_torch_engine(text_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from nmt.inference.onnx_translator import OnnxTranslator
    from nmt.inference.translator import Translator
    from nmt.tools.export import export_run

    export = export_run(text_run, tmp_path / "export")
    torch_t, onnx_t = Translator.load(text_run, device="cpu"), OnnxTranslator.load(export, threads=1)
    for settings_ in (dict(beam=3, n_best=3, length_penalty=0.6), dict(beam=4, coverage_penalty=0.3, min_len=1),
                      dict(beam=3, n_best=2, shortlist=1, shortlist_frequent=0)):
        want = torch_t.translate(TEXTS, constraints=TERMS, return_scores=True, **settings_)
        have = onnx_t.translate(TEXTS, constraints=TERMS, return_scores=True, **settings_)
        for w, h in zip(want, have):
            assert [x.tokens for x in h.hypotheses] == [x.tokens for x in w.hypotheses], settings_
            assert [x.constraints_met for x in h.hypotheses] == [x.constraints_met for x in w.hypotheses]
            assert [x.score for x in h.hypotheses] == pytest.approx([x.score for x in w.hypotheses], rel=1e-6, abs=5e-5)


def test_glossary_terms_of_a_line(tmp_path):
    from nmt.tools.glossary import read_glossary

    path = tmp_path / "terms.tsv"
    path.write_text("chat\tcat\nchat noir\tblack cat\n\nmaison\thouse\nÉté\tsummer\nmaison\thouse\n",
                    encoding="utf-8")
    g = read_glossary(path)
    assert g.matches("Le chat noir  dort.") == [("chat noir", "black cat")]  # the longest match
    assert g.matches("chat, maison et chat") == [("chat", "cat"), ("maison", "house")]  # once each
    assert g.matches("chaton Maison maisons") == []  # whole words, case-sensitive
    assert g.matches("E\u0301te\u0301 chaud") == [("Été", "summer")]  # the input's normalisation
    assert g.constraints(["maison", "rien"]) == [[("maison", "house")], []]


@pytest.mark.parametrize("content,message", [
    (b"chat\tcat\nchien dog\n", ":2: expected SOURCE TERM<TAB>TARGET TERM, found 0 tabs"),
    (b"chat\tcat\tfeline\n", ":1: expected SOURCE TERM<TAB>TARGET TERM, found 2 tabs"),
    (b"chat\t \n", ":1: the target term is empty"),
    (b"\n\tcat\n", ":2: the source term is empty"),
    (b"chat\tcat\nchat\tfeline\n", ":2: source term 'chat' has two target terms"),
    (b"chat\tcat\n\xff\tx\n", ":2: not UTF-8"),
    (b"\n\n", "no terms"),
])
def test_bad_glossary_lines_exit_2_naming_file_and_line(content, message, text_run, tmp_path, capsys):
    from nmt.cli import main

    path = tmp_path / "terms.tsv"
    path.write_bytes(content)
    src = tmp_path / "in.txt"
    src.write_text("le chat\n", encoding="utf-8")
    for extra in ([], ["--workers", "2"]):
        assert main(["translate", str(text_run), "-i", str(src), "--glossary", str(path), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and (str(path) in err)


def test_glossary_on_the_command_line(text_run, tmp_path, capsys):
    from nmt.cli import main

    path = tmp_path / "terms.tsv"
    path.write_text("chat\tred cat\nchien\tsmall dog\n", encoding="utf-8")
    src = tmp_path / "in.txt"
    src.write_text("le chat mange\nla maison\nun chien et un chat\n", encoding="utf-8")
    assert main(["translate", str(text_run), "-i", str(src), "--glossary", str(path), "--beam", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "red cat" in lines[0] and "red cat" in lines[2] and "small dog" in lines[2]
    assert main(["translate", str(text_run), "-i", str(src), "--glossary", str(path), "--beam", "3",
                 "--workers", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == lines
    assert main(["translate", str(text_run), "-i", str(src), "--glossary", str(path), "--sample"]) == 2
    assert "--glossary" in capsys.readouterr().err
