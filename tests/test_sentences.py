"""Inputs of several sentences translated one sentence at a time (``decode.split_sentences``,
nmt.inference.sentences): where inputs are cut, and that a joined translation is exactly its
sentences' translations put together (text, scores, pieces, attention, alignment, n-best), in
any batch, sharded, with constraints, and through the API.
"""
from __future__ import annotations

import pytest
import torch

from nmt.inference.sentences import joiner, split_sentences
from nmt.inference.translator import Translator
from tests.test_translate import build_run

pytestmark = pytest.mark.usefixtures("one_thread")

FIRST, SECOND, THIRD = "Le chat mange.", "Un chien dort !", "La maison rouge."


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, random_run):
    return build_run(tmp_path_factory.mktemp("sentences") / "run", random_run)


@pytest.fixture(scope="module")
def translator(run_dir) -> Translator:
    return Translator.load(run_dir, device="cpu")


@pytest.mark.parametrize("text,language,expected", [
    ("Il est parti. Elle est restée !", "fr", ["Il est parti.", "Elle est restée !"]),
    ("Un seul, sans point final", "fr", ["Un seul, sans point final"]),
    ("Un certain M. Brown est venu. Il est parti.", "fr", ["Un certain M. Brown est venu.", "Il est parti."]),
    ("J. R. R. Tolkien wrote it. Yes.", "en", ["J. R. R. Tolkien wrote it.", "Yes."]),
    ("Bonjour.Merci. Au revoir !", "fr", ["Bonjour.Merci.", "Au revoir !"]),
    ("你好。我很好。", "zh", ["你好。", "我很好。"]),
    ("  Deux  espaces.   Ici.  ", "fr", ["Deux  espaces.", "Ici."]),
    ("Hello there. How are you?", None, ["Hello there.", "How are you?"]),
])
def test_inputs_are_cut_into_sentences_but_not_after_initials_or_inside_words(text, language, expected):
    got = split_sentences(text, language)
    assert [piece for piece, _ in got] == expected
    assert got[0][1] is True
    if language == "zh":
        assert got[1][1] is False  # no whitespace between them


def test_translations_are_joined_by_a_space_except_in_languages_written_without():
    assert joiner("en") == joiner("fr-CA") == joiner(None) == " "
    assert joiner("zh") == joiner("ja") == joiner("zh-Hant") == joiner("tha") == ""


def test_an_input_of_several_sentences_is_its_sentences_translations_joined(translator):
    whole = f"{FIRST} {SECOND} {THIRD}"
    alone = " ".join(t for t in translator.translate([FIRST, SECOND, THIRD], split_sentences=False) if t)
    assert translator.translate([whole, "le chien"]) == [alone, translator.translate(["le chien"])[0]]
    assert translator.translate([whole], split_sentences=False) == translator.translate_inputs([whole])
    # in a batch of other inputs, and with the sentences themselves as inputs: the same
    assert translator.translate([SECOND, whole, FIRST])[1] == alone


def test_a_joined_hypothesis_carries_its_sentences_scores_pieces_attention_and_alignment(translator):
    parts = translator.translate([FIRST, SECOND], return_scores=True, return_attention=True,
                                 return_alignment=True, n_best=2, split_sentences=False)
    (joined,) = translator.translate([f"{FIRST}  {SECOND}"], return_scores=True, return_attention=True,
                                     return_alignment=True, n_best=2)
    assert joined.source == f"{FIRST}  {SECOND}" and len(joined.hypotheses) == 2
    for k, hyp in enumerate(joined.hypotheses):
        a, b = (p.hypotheses[min(k, len(p.hypotheses) - 1)] for p in parts)
        assert hyp.text == f"{a.text} {b.text}"
        assert hyp.score == pytest.approx(a.score + b.score) and hyp.raw_score == pytest.approx(a.raw_score + b.raw_score)
        assert hyp.tokens == a.tokens + b.tokens and hyp.src_tokens == a.src_tokens + b.src_tokens
        assert hyp.token_log_probs == a.token_log_probs + b.token_log_probs
        assert torch.equal(hyp.attention, torch.block_diag(a.attention, b.attention))
        src_words, tgt_words = len(FIRST.split()), len(a.text.split())
        assert hyp.alignment == sorted(set(a.alignment) | {(s + src_words, t + tgt_words) for s, t in b.alignment})
        assert all(s < len(joined.source.split()) and t < len(hyp.text.split()) for s, t in hyp.alignment)


def test_sharded_translation_gives_each_input_once_and_the_whole_translation(translator):
    inputs = [f"{FIRST} {SECOND}", THIRD, "", f"{SECOND} {THIRD} {FIRST}", "le chat"]
    whole = translator.translate(inputs)
    shares = [translator.translate(inputs, shard=(rank, 2)) for rank in range(2)]
    for i, expected in enumerate(whole):
        got = [share[i] for share in shares if share[i] is not None]
        assert got == [expected], i


def test_an_input_with_constraints_is_translated_whole(translator):
    whole = f"{FIRST} {SECOND}"
    terms = [["cat"], None]
    got = translator.translate([whole, whole], constraints=terms, return_scores=True)
    kept = translator.translate_inputs([whole], constraints=[["cat"]], return_scores=True)
    assert got[0].hypotheses[0].text == kept[0].hypotheses[0].text
    assert got[0].hypotheses[0].tokens.count("</s>") <= 1  # one search over the whole input
    assert got[1].text == " ".join(translator.translate([FIRST, SECOND], split_sentences=False))


def test_markup_follows_the_setting_given_with_it(translator):
    """With inline markup, split_sentences reaches the translation of the plain text."""
    html = f"<b>{FIRST}</b> {SECOND}"
    (kept,) = translator.translate([html], markup="html", split_sentences=False, return_scores=True)
    (cut,) = translator.translate([html], markup="html", return_scores=True)
    assert kept.hypotheses[0].src_tokens.count("</s>") == 1 and cut.hypotheses[0].src_tokens.count("</s>") == 2


def test_the_recipe_setting_and_the_api_field_turn_it_off(translator, run_dir, monkeypatch):
    from fastapi.testclient import TestClient

    from nmt.tools.serve import create_app

    whole = f"{FIRST} {SECOND}"
    cut, kept = translator.translate([whole])[0], translator.translate_inputs([whole])[0]
    assert cut != kept  # else this test could not tell them apart
    monkeypatch.setattr(translator, "decode", translator.decode.updated({"split_sentences": False}))
    assert translator.translate([whole]) == [kept]
    monkeypatch.setattr(translator, "decode", None)
    with TestClient(create_app([run_dir], workers=0)) as client:
        for field, expected in ((None, cut), (True, cut), (False, kept)):
            body = {"text": whole, **({} if field is None else {"split_sentences": field})}
            r = client.post("/api/translate", json=body)
            assert r.status_code == 200 and r.json()["translations"][0]["text"] == expected, (field, r.text)
