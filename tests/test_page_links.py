"""The ``nmt serve`` page's sampling controls and its links, in a real browser (Playwright driving
Chromium): the sampling fields are sent and a seed reproduces the API's answer; a link restores
every setting that changes the output (glossary and markup included) and is refused when too long;
a malformed value in a link falls back to the default with a note, and never runs as code.
"""
import html.parser
import json
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

# the fixtures and helpers of the page's other browser tests (one server per module)
from test_page import (OTHER, SHORT, api, browser, only, open_page, runs, server,  # noqa: F401
                       wait_for_result, wait_for_words)

REPO = Path(__file__).resolve().parent.parent


def sent_bodies(page):
    """The JSON bodies of the page's ``/api/translate`` requests, as they are sent."""
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.url.endswith("/api/translate") else None)
    return bodies


def hypotheses(page):
    return [t.split(". ", 1)[1] for t in page.locator(".panel .nbest .text").all_inner_texts()]


def wait_idle(page):
    page.wait_for_function("() => document.querySelector('#results').getAttribute('aria-busy') === 'false'")


# ------------------------------------------------------------------------------------ sampling

def test_page_sampling_ranges_are_the_apis():
    """The page's sampling inputs carry the decode schema's ranges."""
    import dataclasses

    from nmt.config import DecodeConfig

    inputs = {}

    class Inputs(html.parser.HTMLParser):
        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "input" and "id" in attrs:
                inputs[attrs["id"]] = attrs

    Inputs().feed((REPO / "nmt/tools/static/index.html").read_text(encoding="utf-8"))
    meta = {f.name: f.metadata for f in dataclasses.fields(DecodeConfig)}
    assert float(inputs["temperature"]["min"]) == meta["temperature"]["min"]
    assert float(inputs["temperature"]["max"]) == meta["temperature"]["max"]
    assert float(inputs["topk"]["min"]) == meta["top_k"]["min"] and "max" not in meta["top_k"]
    assert float(inputs["topp"]["min"]) == meta["top_p"]["above"]  # the API refuses 0 itself
    assert float(inputs["topp"]["max"]) == meta["top_p"]["max"]
    assert meta["seed"]["min"] == 0 and inputs["seed"]["pattern"] == "[0-9]*"


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_sampling_controls_send_the_fields_and_a_seed_reproduces(open_page, server):
    page = open_page()
    only(page)
    bodies = sent_bodies(page)
    assert page.locator("#sampling").is_hidden() and page.locator("#beam").is_enabled()
    page.locator("#sample").focus()
    page.keyboard.press("Space")  # keyboard usable
    assert page.locator("#sampling").is_visible() and page.locator("#beam-cue").is_visible()
    assert page.locator("#beam").is_disabled() and page.locator("#glossary").is_disabled()
    assert page.get_by_label("Temperature").count() == 1 and page.get_by_label("Seed").count() == 1
    settings = {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 1234, "n_best": 2}
    for field, key in [("#temperature", "temperature"), ("#topk", "top_k"), ("#topp", "top_p"),
                       ("#seed", "seed"), ("#nbest", "n_best")]:
        page.fill(field, str(settings[key]))
    page.fill("#source", SHORT)
    page.press("#source", "Enter")
    expected = api(server, SHORT, model="tiny", sample=True, **settings)
    wait_for_words(page, expected["text"])
    assert hypotheses(page) == [h["text"] or "(empty)" for h in expected["hypotheses"]]
    body = bodies[-1]
    assert {k: body.get(k) for k in ("sample", *settings)} == {"sample": True, **settings}
    assert "beam" not in body and "constraints" not in body
    assert "sampling · seed 1234" in page.locator(".panel .search").inner_text()
    page.fill("#nbest", "1")  # the same seed twice: the same sample
    page.press("#source", "Enter")
    one = api(server, SHORT, model="tiny", sample=True, **{**settings, "n_best": 1})
    wait_for_words(page, one["text"])
    page.fill("#nbest", "2")
    page.press("#source", "Enter")
    page.wait_for_function("n => document.querySelectorAll('.panel .nbest li').length === n", arg=2)
    assert hypotheses(page) == [h["text"] or "(empty)" for h in expected["hypotheses"]]

    # an empty seed: the page draws one, sends it, shows it and puts it in the link
    page.fill("#seed", "")
    sent = len(bodies)
    page.press("#source", "Enter")
    page.wait_for_selector("#seed-used:has-text('Random seed used')")
    wait_idle(page)
    assert len(bodies) == sent + 1
    seed = bodies[-1]["seed"]
    assert isinstance(seed, int) and f"Random seed used: {seed}." in page.locator("#seed-used").inner_text()
    drawn = api(server, SHORT, model="tiny", sample=True, **{**settings, "seed": seed})
    wait_for_words(page, drawn["text"])
    assert parse_qs(urlsplit(page.url).query)["seed"] == [str(seed)]
    again = open_page("?" + urlsplit(page.url).query)  # the link: the same samples
    wait_for_words(again, drawn["text"])
    assert again.input_value("#seed") == str(seed) and again.locator("#sample").is_checked()
    page.click(".keep-seed")
    assert page.input_value("#seed") == str(seed)
    for typed, exact in [("9223372036854775807", 2**63 - 1), ("0042", 42)]:  # sent exactly, as a number
        page.fill("#seed", typed)
        page.press("#source", "Enter")
        wait_idle(page)
        wait_for_words(page, api(server, SHORT, model="tiny", sample=True, **{**settings, "seed": exact})["text"])
        assert bodies[-1]["seed"] == exact

    # bad values: the API's refusal in the error area, the old result gone
    page.fill("#seed", "9223372036854775808")  # 2^63: one above the API's largest seed
    page.press("#source", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "seed 9223372036854775808 is out of range" in page.locator("#error").inner_text()
    assert page.locator("#results .panel").count() == 0
    for field, value, message in [("#topp", "0", "top_p: Input should be greater than 0"),
                                  ("#temperature", "0", "Temperature: Value must be greater than or equal to 0.001"),
                                  ("#seed", "12a", "Seed: a whole number")]:
        page.fill("#seed", "1234")
        page.fill("#topp", "0.9")
        page.fill("#temperature", "0.7")
        page.fill(field, value)
        page.press("#source", "Enter")
        page.wait_for_function("m => document.querySelector('#error').innerText.includes(m)", arg=message)


# ------------------------------------------------------------------------------------ links

GLOSSARY = "fatigué → naïve & #1?\nfroid → <cold>"
TAGGED = "Je suis <b>fatigué</b>, il fait froid."


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_link_restores_every_setting_with_glossary_and_markup(open_page, server):
    query = urlencode({"text": TAGGED, "model": "tiny", "beam": 3, "n_best": 2, "length_penalty": 0.5,
                       "markup": "html", "glossary": GLOSSARY})
    page = open_page("?" + query)
    expected = api(server, TAGGED, model="tiny", beam=3, n_best=2, length_penalty=0.5, markup="html",
                   constraints=[["naïve & #1?", "<cold>"]])
    wait_for_words(page, expected["text"])

    def restored(p):
        assert [p.input_value(f) for f in ("#beam", "#nbest", "#lp")] == ["3", "2", "0.5"]
        assert p.input_value("#glossary") == GLOSSARY and p.locator("#markup").is_checked()
        assert not p.locator("#sample").is_checked() and p.locator("#link-note").is_hidden()
        assert not p.locator("#models input[value='tiny-beam2']").is_checked()
        assert p.locator(".panel h2").all_inner_texts() == ["tiny"]  # the run's name
        assert len(hypotheses(p)) == 2
        assert [" ".join(h.split()) for h in hypotheses(p)] == [" ".join(h["text"].split())
                                                                for h in expected["hypotheses"]]

    restored(page)
    page.click("#share")
    page.wait_for_selector("#share-link:not([hidden])")
    link = page.input_value("#share-link")
    assert link.startswith(server + "/?") and len(link) <= 2000
    assert parse_qs(urlsplit(link).query)["glossary"] == [GLOSSARY]
    again = open_page(link.removeprefix(server + "/"))
    wait_for_words(again, expected["text"])
    restored(again)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_an_over_long_glossary_is_not_shared(open_page, server):
    page = open_page()
    only(page)
    page.click("#share")
    assert "Translate first" in page.locator("#share-note").inner_text()
    page.fill("#glossary", "\n".join(f"mot{k} → word{k}" for k in range(200)))
    page.fill("#source", SHORT)
    page.press("#source", "Enter")
    wait_for_result(page, api(server, SHORT, model="tiny", n_best=3)["text"])
    page.click("#share")
    note = page.locator("#share-note").inner_text()
    assert "No link" in note and "over 2,000" in note and "glossary" in note
    assert page.locator("#share-link").is_hidden()
    assert len(page.url) <= 2000 and "glossary" not in page.url  # no cut link in the address bar either
    page.fill("#glossary", "mot1 → word1")
    page.press("#source", "Enter")
    page.wait_for_function("() => location.search.includes('glossary')")
    page.click("#share")
    page.wait_for_selector("#share-link:not([hidden])")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_malformed_link_values_fall_back_with_a_note(open_page, server):
    dialogs = []
    script = "fatigué → <script>alert(1)</script>"
    page_query = urlencode({"text": OTHER, "model": "tiny", "beam": "abc", "n_best": "99",
                            "length_penalty": "1e3", "temperature": "-1", "sample": "maybe",
                            "seed": "12345678901234567890", "top_p": "0", "glossary": script})
    page = open_page("?" + page_query)
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    wait_for_result(page, api(server, OTHER, model="tiny", n_best=3)["text"])
    note = page.locator("#link-note")
    assert note.is_visible()
    for shown in ("beam “abc”", "n_best “99”", "length_penalty “1e3”", "temperature “-1”",
                  "sample “maybe”", "seed “12345678901234567890”", "top_p “0”"):
        assert shown in note.inner_text()
    assert [page.input_value(f) for f in ("#beam", "#nbest", "#lp", "#temperature", "#seed", "#topp")] == \
        ["", "3", "", "", "", ""]
    assert not page.locator("#sample").is_checked()
    assert page.input_value("#glossary") == script  # as text
    assert page.locator("main script").count() == 0 and not dialogs
