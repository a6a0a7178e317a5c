"""Unseen names carried over through surrogates (nmt/inference/names.py): the table, the
replacement and its undoing, and the translators that apply them."""
from __future__ import annotations

import json
import shutil

import pytest

from nmt.inference.names import NAMES_FILE, NameTable, Surrogates

PAIRS = [("Tom est là.", "Tom is here."), ("Je vois Tom et Mary.", "I see Tom and Mary."),
         ("Marie est là.", "Mary is here."), ("Il habite à Boston.", "He lives in Boston."),
         ("Demande à Tom.", "Ask Tom."), ("Oui, Tom.", "Yes, Tom."), ("Bonjour Zoé.", "Hello Zoé!"),
         ("Paris est grand.", "Paris is big.")]


def test_the_table_holds_the_source_words_and_the_names_both_sides_share_most_often_first():
    table = NameTable.build(PAIRS, single_piece=lambda w: w != "Zoé")
    assert "tom" in table.known and "marie" in table.known and "habite" in table.known
    assert "is" not in table.known  # target words are not source words
    # Tom (4 pairs) before Mary and Boston (1 each); Paris only starts its sentence; Marie is not
    # in its target; Zoé is refused by single_piece (several subwords on a side)
    assert table.surrogates[0] == "Tom" and set(table.surrogates) == {"Tom", "Mary", "Boston"}
    assert NameTable.build(PAIRS, single_piece=lambda w: True, most=1).surrogates == ("Tom",)


def test_unseen_capitalised_words_get_free_surrogates_and_get_them_back():
    table = NameTable(frozenset({"il", "m", "appela", "tom", "et", "sont", "là", "des", "figues"}),
                      ("Tom", "Mary", "Boston"))
    text, given = table.protect("Il m'appela Ichiro.")
    assert text == "Il m'appela Tom." and given.pairs == (("Tom", "Ichiro"),)
    # a surrogate already in the sentence is not used; one word, one surrogate; known or
    # lower-case words stay
    text, given = table.protect("Tom et Ichiro sont là, Ichiro et Anne-Sophie. Des kakis, des figues.")
    assert text == "Tom et Mary sont là, Mary et Boston-Sophie. Des kakis, des figues."
    assert given.pairs == (("Mary", "Ichiro"), ("Boston", "Anne"))  # Sophie: no surrogate left
    assert given.restore("Tom and Mary are here, Mary's and Boston-Sophie.") == \
        "Tom and Ichiro are here, Ichiro's and Anne-Sophie."
    assert given.restore("Marya and MaryMary") == "Marya and MaryMary"  # whole words only
    assert given.restore_pieces(["▁Tom", "▁and", "▁Mary", "s", "Mary"]) == ["▁Tom", "▁and", "▁Ichiro", "s", "Mary"]
    assert table.protect("Des figues.") == ("Des figues.", Surrogates())
    assert not Surrogates() and Surrogates().restore("Mary") == "Mary"


def test_the_table_is_saved_and_merged_with_a_parent_runs(tmp_path):
    table = NameTable(frozenset({"chat", "été"}), ("Tom",))
    table.save(tmp_path / NAMES_FILE)
    assert NameTable.load(tmp_path / NAMES_FILE) == table
    assert json.loads((tmp_path / NAMES_FILE).read_text(encoding="utf-8"))["known"] == ["chat", "été"]
    parent = NameTable(frozenset({"chien"}), ("Mary",))
    assert table.merged(parent) == NameTable(frozenset({"chat", "été", "chien"}), ("Tom",))
    assert NameTable(frozenset(), ()).merged(parent).surrogates == ("Mary",)


@pytest.fixture(scope="module")
def named_run(tiny_run, tmp_path_factory):
    """The tiny run with a lexicon and names.json (nmt shortlist), then a table whose surrogate is
    a word of the tiny corpus that is one source subword (the 80-piece vocabularies hold no name)."""
    from nmt.data.tokenizer import SubwordTokenizers
    from nmt.inference.shortlist import build_for_run

    run = tmp_path_factory.mktemp("named") / "run"
    shutil.copytree(tiny_run, run)
    build_for_run(run, iterations=2, keep=8)
    assert NameTable.load(run / NAMES_FILE).known  # written with the lexicon
    tok = SubwordTokenizers.load(run)
    known = NameTable.load(run / NAMES_FILE).known
    single = [w for w in sorted(known) if w.isalpha() and len(tok.encode_src([w.capitalize()])[0]) == 1]
    assert single, "the tiny vocabularies hold no single-piece word"
    NameTable(known, (single[0].capitalize(),)).save(run / NAMES_FILE)
    return run, single[0].capitalize()


def test_a_translator_searches_the_surrogate_and_shows_the_name(named_run):
    from nmt.inference.translator import Translator

    run, surrogate = named_run
    tr = Translator.load(run, precision="float32")
    name, sentence = "Zorglub", "Je suis {} ."
    named = tr.translate([sentence.format(name)], return_scores=True, return_alignment=True)[0].hypotheses[0]
    plain = tr.translate([sentence.format(surrogate)], return_scores=True, return_alignment=True,
                         names=False)[0].hypotheses[0]
    given = Surrogates(((surrogate, name),))
    assert named.text == given.restore(plain.text)
    assert named.score == plain.score and named.token_log_probs == plain.token_log_probs
    assert named.tokens == given.restore_pieces(plain.tokens) and named.alignment == plain.alignment
    assert "\u2581" + name in named.src_tokens and "\u2581" + surrogate not in named.src_tokens
    assert tr.translate([sentence.format(name)]) == [named.text]  # the plain string path too
    # off, or a sentence with constraints (a term may name the word): the sentence as it is
    alone = tr.translate([sentence.format(name)], return_scores=True, names=False)[0].hypotheses[0]
    assert "\u2581" + surrogate not in alone.src_tokens
    constrained = tr.translate([sentence.format(name)], return_scores=True, constraints=[["am"]])[0].hypotheses[0]
    assert "\u2581" + surrogate not in constrained.src_tokens and name[:2] in "".join(constrained.src_tokens)


def test_every_result_path_gives_the_name_back_in_the_text(named_run, monkeypatch):
    from nmt.inference.translator import Translator

    run, surrogate = named_run
    tr = Translator.load(run, precision="float32")
    # a 4-step model does not copy the surrogate: its detokenizer is made to
    monkeypatch.setattr(tr, "detokenize", lambda hyps: [f"{surrogate}'s {surrogate}." for _ in hyps])
    sentences = ["Je suis Zorglub .", "Tu es là ."]
    assert tr.translate(sentences) == ["Zorglub's Zorglub.", f"{surrogate}'s {surrogate}."]
    results = tr.translate(sentences, n_best=2, beam=2)
    assert [h.text for h in results[0].hypotheses] == ["Zorglub's Zorglub."] * 2
    assert results[1].text == f"{surrogate}'s {surrogate}."  # nothing replaced in it
    assert tr.translate(sentences[:1], names=False) == [f"{surrogate}'s {surrogate}."]


def test_training_writes_the_table_and_without_one_nothing_is_replaced(tiny_run, tmp_path):
    from nmt.inference.translator import Translator

    # recipes/tiny.yaml has no shortlist: the table is written without a lexicon
    assert not (tiny_run / "lexicon.safetensors").exists()
    table = NameTable.load(tiny_run / NAMES_FILE)
    assert {"je", "suis", "fatigué"} <= table.known and table.surrogates == ()  # no name in the tiny corpus
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / NAMES_FILE).unlink()
    tr = Translator.load(run, precision="float32")
    assert tr.name_table() is None
    assert tr.protect_names(["Je suis Zorglub ."], tr.decode_options()) == (["Je suis Zorglub ."], [Surrogates()])


def test_a_sentence_joining_a_search_under_way_gets_its_name_back_too(named_run):
    from nmt.inference.continuous import ContinuousTranslation
    from nmt.inference.translator import Translator

    run, surrogate = named_run
    tr = Translator.load(run, precision="float32")
    options = tr.decode_options(beam=2)
    texts = ["Je suis Zorglub .", "Tu es là ."]
    expected = tr.translate(texts, beam=2, return_scores=True)
    joining = ContinuousTranslation(tr, options)
    joining.add(texts[:1], ["a"])
    results = dict(joining.step())
    joining.add(texts[1:], ["b"])
    while joining.running:
        results.update(joining.step())
    for ticket, want in zip("ab", expected):
        got = results[ticket].hypotheses[0]
        assert (got.text, got.score, got.src_tokens) == (want.hypotheses[0].text, want.hypotheses[0].score, want.hypotheses[0].src_tokens)
    assert "\u2581Zorglub" in results["a"].hypotheses[0].src_tokens


def test_an_export_carries_the_table(named_run, tmp_path):
    from nmt.tools.export import _export_lexicon

    run, _ = named_run
    meta = _export_lexicon(run, tmp_path)
    assert meta == {"lexicon": "lexicon.safetensors", "names": NAMES_FILE}
    assert (tmp_path / NAMES_FILE).read_bytes() == (run / NAMES_FILE).read_bytes()


def test_a_served_translation_shows_the_name_and_a_request_may_turn_it_off(named_run):
    from fastapi.testclient import TestClient

    from nmt.tools.serve import ServeLimits, create_app

    run, surrogate = named_run
    with TestClient(create_app([run], ServeLimits())) as client:
        def src_tokens(**extra):
            answer = client.post("/api/translate", json={"text": "Je suis Zorglub .", "return_attention": True,
                                                         **extra})
            assert answer.status_code == 200, answer.text
            return answer.json()["translations"][0]["src_tokens"]

        assert "\u2581Zorglub" in src_tokens() and "\u2581" + surrogate not in src_tokens()
        assert "\u2581Zorglub" not in src_tokens(names=False)  # several subwords of the tiny vocabulary
        assert client.post("/api/translate", json={"text": "x", "names": "maybe"}).status_code == 422
