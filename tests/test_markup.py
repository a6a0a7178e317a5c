"""Inline markup through translation (nmt/inference/markup.py, ``--markup html``, the API's
``markup``): every tag comes back exactly once and nested, entities round-trip, a sentence
without tags is the plain translation, and markup that does not nest is refused."""
from __future__ import annotations

import html
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt.errors import NmtError
from nmt.inference.markup import VOID_ELEMENTS, MarkupError, parse_markup, restore_markup

pytestmark = pytest.mark.usefixtures("one_thread")


class _Checker(HTMLParser):
    """Reads markup back: the tags in order, the text, and whether every end tag closes the last
    open one (void elements never open)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.starts: list[str] = []
        self.text: list[str] = []
        self.nested = True

    def handle_starttag(self, name, attrs):
        self.starts.append(self.get_starttag_text())
        if name not in VOID_ELEMENTS:
            self.stack.append(name)

    def handle_startendtag(self, name, attrs):
        self.starts.append(self.get_starttag_text())

    def handle_endtag(self, name):
        self.nested &= bool(self.stack) and self.stack.pop() == name

    def handle_data(self, data):
        self.text.append(data)


def check(markup: str) -> _Checker:
    c = _Checker()
    c.feed(markup)
    c.close()
    return c


def assert_well_formed(source: str, output: str, translation: str) -> None:
    """Every start tag of ``source`` once in ``output``, properly nested and closed; the text is
    the translation."""
    src, out = check(source), check(output)
    assert out.nested and not out.stack, output
    assert sorted(out.starts) == sorted(src.starts), (source, output)
    assert "".join(out.text) == translation, output


# --------------------------------------------------------------------------- the algorithm

def test_tags_follow_the_aligned_words():
    m = parse_markup('Le <b>chat <i>noir</i></b> dort<br/> et <a href="x?a=1&amp;b=2">mange</a>.')
    assert m.text == "Le chat noir dort et mange."
    #         The black cat sleeps and eats .
    pairs = [(0, 0), (1, 2), (2, 1), (3, 3), (4, 4), (5, 5)]
    out = restore_markup(m, "The black cat sleeps and eats.", pairs)
    assert out == 'The <b><i>black</i> cat</b> sleeps<br/> and <a href="x?a=1&amp;b=2">eats</a>.'


@pytest.mark.parametrize("source,translation,pairs,want", [
    # a tag around an unaligned word stands before the next aligned word's target
    ("le <b>petit</b> chat", "the cat", [(0, 0), (2, 1)], "the <b></b>cat"),
    # a void tag between words, not written against either: before the next word's target
    ("un <br> deux", "one two", [(0, 0), (1, 1)], "one <br>two"),
    # a void tag written against the word before it stays after that word's target
    ("fin<img src='a.png'/> ici", "end here", [(0, 0), (1, 1)], "end<img src='a.png'/> here"),
    # nothing aligned: a tag before every word goes to the start, others to the end
    ("<i>a</i> b <br/>", "x y", [], "<i></i>x y<br/>"),
    # a tag around every source word encloses the whole translation, aligned or not
    ("<b>le chat</b>", "the cat", [], "<b>the cat</b>"),
    # siblings whose targets would overlap: the later one starts where the earlier ends
    ("<b>a</b> <i>b</i>", "x y z", [(0, 0), (0, 2), (1, 1)], "<b>x y z</b><i></i>"),
    # a child is clipped to its parent's range
    ("<b>a <br></b> c", "x y", [(0, 1), (1, 0)], "x <b><br>y</b>"),
    ("<b>a <i>b</i></b> c", "x y z", [(0, 1), (1, 2), (2, 0)], "x <b>y <i>z</i></b>"),
    # a tag that ended before the punctuation of its last word leaves the target's outside
    ("Ferme <b>la fenêtre</b>.", "Close the window.", [(0, 0), (1, 1), (2, 2)], "Close <b>the window</b>."),
    ("Ferme <b>la fenêtre.</b>", "Close the window.", [(0, 0), (1, 1), (2, 2)], "Close <b>the window.</b>"),
    ("<b>Quoi</b>?!", "What?!", [(0, 0)], "<b>What</b>?!"),
    ("<b>Quoi</b> ?!", "What?!", [(0, 0)], "<b>What?!</b>"),
    ("<b>?</b>", "?", [(0, 0)], "<b>?</b>"),
    # the translation's own < and & are escaped
    ("<b>a</b>", "x < y & z", [(0, 0)], "<b>x &lt; y &amp; z</b>"),
    # an empty translation keeps the tags
    ("<b>a</b><br>", "", [], "<b></b><br>"),
])
def test_placement_rules(source, translation, pairs, want):
    out = restore_markup(parse_markup(source), translation, pairs)
    assert out == want
    assert_well_formed(source, out, translation)


def test_entities_round_trip():
    m = parse_markup("AT&amp;T &lt;3 &eacute;t&eacute; &#233; &nbsp;fin")
    assert m.text == "AT&T <3 été é \xa0fin" and m.tags == []
    out = restore_markup(m, m.text, [(i, i) for i in range(5)])
    assert out == "AT&amp;T &lt;3 été é \xa0fin"
    assert html.unescape(out) == m.text


@pytest.mark.parametrize("source,message", [
    ("le <b>chat", "<b> is not closed"),
    ("le <b><i>chat</b></i>", "</b> closes <i>"),
    ("le chat</b>", "</b> closes no open tag"),
    ("le<br></br>", "void element"),
    ("a <!-- note --> b", "comments"),
])
def test_markup_that_does_not_nest_is_refused(source, message):
    with pytest.raises(MarkupError, match=message):
        parse_markup(source)


WORDS = ["le", "chat", "noir", "dort", "sur", "un", "tapis", "rouge"]
PAIRED = ["<b>", "<i>", '<a href="https://example.org/?q=1&amp;r=2">', "<span class=x>", "<B>"]
VOID = ["<br>", "<br/>", '<img src="a.png" alt="a &lt; b"/>']


@st.composite
def marked_up(draw, max_words=8):
    """A sentence of words with random, properly nested tags (and void tags) between them."""
    n = draw(st.integers(0, max_words))
    words = [draw(st.sampled_from(WORDS)) for _ in range(n)]
    parts, stack = [], []
    for k in range(n + 1):
        for _ in range(draw(st.integers(0, 2))):
            action = draw(st.sampled_from(["open", "close", "void"]))
            if action == "open":
                tag = draw(st.sampled_from(PAIRED))
                parts.append(tag)
                stack.append("</" + tag[1:].split(">")[0].split()[0] + ">")
            elif action == "close" and stack:
                parts.append(stack.pop())
            elif action == "void":
                parts.append(draw(st.sampled_from(VOID)))
        if k < n:
            parts.append(words[k] + draw(st.sampled_from([" ", "", " "])))
    parts += reversed(stack)
    return "".join(parts)


@settings(max_examples=300, deadline=None)
@given(source=marked_up(), data=st.data())
def test_every_tag_comes_back_once_and_nested_for_any_alignment(source, data):
    m = parse_markup(source)
    n_src = len(m.text.split())
    translation = " ".join(data.draw(st.lists(st.sampled_from(["the", "cat", "<", "&", "a"]), max_size=9)))
    n_tgt = len(translation.split())
    pairs = data.draw(st.lists(st.tuples(st.integers(0, max(n_src - 1, 0)), st.integers(0, max(n_tgt - 1, 0))),
                               max_size=12)) if n_src and n_tgt else []
    assert_well_formed(source, restore_markup(m, translation, sorted(set(pairs))), translation)


# --------------------------------------------------------------------------- with a model

@pytest.fixture(scope="module")
def run(tmp_path_factory, random_run):
    from test_translate import build_run

    return build_run(tmp_path_factory.mktemp("markup") / "run", random_run)


@pytest.fixture(scope="module")
def translator(run):
    from nmt.inference.translator import Translator

    return Translator.load(run, device="cpu")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sources=st.lists(marked_up(max_words=6), min_size=1, max_size=4))
def test_translations_keep_every_tag_on_a_tiny_model(translator, sources):
    results = translator.translate(sources, beam=2, n_best=2, markup="html")
    plain = translator.translate([parse_markup(s).text for s in sources], beam=2, n_best=2)
    for source, result, want in zip(sources, results, plain):
        assert result.source == source
        assert [h.tokens for h in result.hypotheses] == [h.tokens for h in want.hypotheses]
        for h, w in zip(result.hypotheses, want.hypotheses):
            assert_well_formed(source, h.text, w.text)


def test_a_sentence_without_tags_is_the_plain_translation(translator):
    from test_translate import SOURCES

    plain = translator.translate(SOURCES, beam=3)
    assert not any(c in t for t in plain for c in "<>&")  # so escaping changes nothing
    assert translator.translate(SOURCES, beam=3, markup="html") == plain
    greedy = translator.translate(SOURCES, beam=1, return_scores=True)
    marked = translator.translate(SOURCES, beam=1, return_scores=True, markup="html")
    assert [r.text for r in marked] == [r.text for r in greedy]
    assert [h.score for r in marked for h in r.hypotheses] == [h.score for r in greedy for h in r.hypotheses]
    with pytest.raises(NmtError, match="line 2: markup: </i> closes <b>"):
        translator.translate(["le chat", "le <b>chat</i>"], markup="html")
    with pytest.raises(NmtError, match="markup 'xml' is not known"):
        translator.translate(["le chat"], markup="xml")


def test_markup_on_the_command_line(run, translator, tmp_path, capsys):
    from nmt.cli import main

    lines = ["le <b>chat</b> dort", "une maison rouge<br/> et un <i>chien &amp; chat</i>", "le chien"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["translate", str(run), "-i", str(src), "--markup", "html", "--beam", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == translator.translate(lines, beam=2, markup="html")
    assert out[2] == translator.translate(["le chien"], beam=2)[0]
    assert main(["translate", str(run), "-i", str(src), "--markup", "html", "--beam", "2", "--workers", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == out
    terms = tmp_path / "terms.tsv"  # a glossary is matched on the text without the tags
    terms.write_text("chat dort\tred cat\n", encoding="utf-8")  # "chat</b> dort" in the line as given
    assert main(["translate", str(run), "-i", str(src), "--markup", "html", "--glossary", str(terms)]) == 0
    got = [parse_markup(line).text for line in capsys.readouterr().out.splitlines()]
    assert "red cat" in got[0] and "red cat" not in got[1] + got[2]
    for extra in (["--score-reference", str(src)], ["--engine", "onnx"]):
        assert main(["translate", str(run), "-i", str(src), "--markup", "html", *extra]) == 2
        assert "--markup" in capsys.readouterr().err
    src.write_text("le chat\nle <b>chat\n", encoding="utf-8")
    for extra in ([], ["--workers", "2"]):
        assert main(["translate", str(run), "-i", str(src), "--markup", "html", *extra]) == 2
        assert "line 2: markup: <b> is not closed; add </b>" in capsys.readouterr().err


def test_markup_through_the_api(run, translator):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nmt.tools.serve import create_app

    texts = ["le <b>chat</b> dort", "un <i>chien</i>"]
    with TestClient(create_app([run])) as client:
        r = client.post("/api/translate", json={"texts": texts, "beam": 2, "markup": "html",
                                                "return_alignment": True})
        assert r.status_code == 200, r.text
        want = translator.translate(texts, beam=2, markup="html", return_alignment=True)
        for got, w in zip(r.json()["translations"], want):
            assert got["source"] == w.source and got["text"] == w.text
            assert got["hypotheses"][0]["alignment"] == [list(p) for p in w.hypotheses[0].alignment]
        for body, message in (({"texts": ["ok", "le <b>chat</i>"], "markup": "html"}, "texts[1]: html markup: </i>"),
                              ({"text": "<b>x", "markup": "html"}, "text: html markup: <b> is not closed"),
                              ({"text": "x", "markup": "xml"}, "markup")):
            r = client.post("/api/translate", json=body)
            assert r.status_code == 422 and message in r.json()["error"], r.text
