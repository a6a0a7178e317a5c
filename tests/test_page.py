"""The ``nmt serve`` page in a real browser (Playwright driving Chromium) under real use.

Busy state and stale answers, deep links, n-best clamping, errors, the character counter, the
weight tooltip, translate-as-you-type and low-confidence words. Two runs are served: the tiny
recipe trained for a few steps, and a copy whose recipe searches with beam 2. Requests are held,
delayed or answered out of order by intercepting ``/api/translate`` in the browser.
"""
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_CHARS = 60
SHORT, OTHER = "Je suis fatigué.", "Il fait froid."
LONG = "Je suis fatigué et il fait froid ce matin, mais le soleil."  # < MAX_CHARS, many pieces
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import train_served_run
    from nmt.inference.checkpoint import load_run_recipe

    base = tmp_path_factory.mktemp("page")
    tiny = base / "tiny"
    train_served_run(tiny)
    small = base / "tiny-beam2"
    shutil.copytree(tiny, small)
    recipe = load_run_recipe(small)
    recipe.decode.beam = 2
    (small / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    return tiny, small


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    """``nmt serve`` of both runs on a free loopback port with ``--max-chars`` MAX_CHARS."""
    from conftest import serving

    log = tmp_path_factory.mktemp("page-server") / "serve.log"
    with serving(runs, log, "--threads", "1", "--max-chars", str(MAX_CHARS), "--log-level", "warning") as (base, _):
        yield base
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def browser():
    path = shutil.which("chromium") or "/usr/bin/chromium"
    ci = os.environ.get("CI") == "true"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if ci:
            pytest.fail("CI needs Playwright for Python for the browser tests: pip install playwright")
        pytest.skip("Playwright for Python is not installed (pip install playwright)")
    if not Path(path).is_file():
        if ci:
            pytest.fail("CI needs Debian's chromium for the browser tests: apt-get install -y chromium")
        pytest.skip("no chromium (Debian: apt-get install chromium)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(browser, server):
    """``open_page(query="", width=1280, height=800, live=False)``: a fresh page; fails the test on a
    script error. ``live`` leaves translate-as-you-type on (off otherwise, to count requests)."""
    pages, errors = [], []

    def make(query="", width=1280, height=800, live=False):
        context = browser.new_context(viewport={"width": width, "height": height})
        if not live:
            context.add_init_script("localStorage.setItem('nmt-serve-live', 'off')")
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        pages.append(context)
        page.goto(server + "/" + query)
        page.wait_for_selector("#models input[value='tiny-beam2']")
        return page

    yield make
    for context in pages:
        context.close()
    assert not errors, errors


def api(server, text, **options):
    import httpx

    body = {"text": text, "return_attention": True, **options}
    r = httpx.post(server + "/api/translate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["translations"][0]


def only(page, model="tiny"):
    """Leaves one model checked."""
    for name in ("tiny", "tiny-beam2"):
        page.locator(f"#models input[value='{name}']").set_checked(name == model)


def wait_for_result(page, text):
    page.wait_for_function("t => document.querySelector('.panel .best')?.innerText === t", arg=text,
                           timeout=30_000)


def entered(page, server, text):
    """``text`` translated by the tiny model alone, sent with Enter; the API's answer (n-best 3)."""
    only(page)
    page.fill("#source", text)
    page.press("#source", "Enter")
    expected = api(server, text, model="tiny", n_best=3)
    wait_for_result(page, expected["text"])
    return expected


def wait_for_words(page, text):
    """Like :func:`wait_for_result`, but the browser shows runs of spaces as one."""
    page.wait_for_function("t => document.querySelector('.panel .best')?.innerText.split(/\\s+/).join(' ') === t",
                           arg=" ".join(text.split()), timeout=30_000)


class Held:
    """Holds every ``/api/translate`` request of a page until the test answers it."""

    def __init__(self, page):
        self.routes, self.bodies = [], []
        self.page = page
        page.route("**/api/translate", self._hold)

    def _hold(self, route):
        self.routes.append(route)
        self.bodies.append(json.loads(route.request.post_data))

    def wait(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.routes) < n:
            assert time.monotonic() < deadline, f"{len(self.routes)} requests, expected {n}"
            self.page.wait_for_timeout(20)

    def answer(self, k):
        """Answers request ``k`` with the server's real answer (False when the page gave it up)."""
        route = self.routes[k]
        try:
            route.fulfill(response=route.fetch())
            return True
        except Exception:  # the page aborted it
            return False


# ------------------------------------------------------------------------------------ tests

def test_busy_state_drops_duplicates_and_stale_answers(open_page, server):
    page = open_page()
    only(page)
    page.fill("#source", SHORT)
    page.press("#source", "Enter")
    first = api(server, SHORT, model="tiny", n_best=3)["text"]
    wait_for_result(page, first)
    held = Held(page)
    page.fill("#source", OTHER)
    page.press("#source", "Enter")
    page.press("#source", "Enter")  # the same request again while it runs: dropped
    held.wait(1)
    page.wait_for_timeout(300)
    assert len(held.routes) == 1, held.bodies
    results = page.locator("#results")
    assert results.get_attribute("aria-busy") == "true" and "busy" in results.get_attribute("class")
    assert page.locator(".panel .best").inner_text() == first  # the old result, dimmed
    opacity = float(results.evaluate("r => getComputedStyle(r).opacity"))
    assert opacity < 0.8
    # a newer request while the first runs; its answer comes first, the older one last
    page.fill("#source", SHORT + " " + OTHER)
    page.press("#source", "Enter")
    held.wait(2)
    newer = api(server, SHORT + " " + OTHER, model="tiny", n_best=3)
    older = api(server, OTHER, model="tiny", n_best=3)
    assert len(newer["src_tokens"]) != len(older["src_tokens"])  # tells the two answers apart
    assert held.answer(1)
    wait_for_result(page, newer["text"])
    shown = page.locator(".panel svg.heatmap.attention")
    assert shown.get_attribute("data-cols") == str(len(newer["src_tokens"]))
    held.answer(0)
    page.wait_for_timeout(400)
    assert page.locator(".panel .best").inner_text() == newer["text"]
    assert shown.get_attribute("data-cols") == str(len(newer["src_tokens"]))
    assert "Il+fait+froid" in page.url and "Je+suis" in page.url
    assert results.get_attribute("aria-busy") == "false" and opacity < float(
        results.evaluate("r => getComputedStyle(r).opacity"))


def test_an_error_clears_the_old_result(open_page, server):
    page = open_page()
    only(page)
    page.fill("#source", SHORT)
    page.press("#source", "Enter")
    wait_for_result(page, api(server, SHORT, model="tiny", n_best=3)["text"])
    page.route("**/api/translate", lambda route: route.fulfill(
        status=503, content_type="application/json", body=json.dumps({"error": "the server is busy"})))
    page.fill("#source", OTHER)
    page.press("#source", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "the server is busy" in page.locator("#error").inner_text()
    assert page.locator("#results .panel").count() == 0
    page.unroute("**/api/translate")
    page.press("#source", "Enter")
    wait_for_result(page, api(server, OTHER, model="tiny", n_best=3)["text"])
    assert page.locator("#error").is_hidden()
    page.route("**/api/translate", lambda route: route.abort())  # no answer at all
    page.fill("#source", SHORT)
    page.press("#source", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "did not answer" in page.locator("#error").inner_text()
    assert page.locator("#results .panel").count() == 0


def test_deep_links_carry_every_setting(open_page, server):
    from urllib.parse import parse_qs, urlsplit

    page = open_page("?text=Tu%20es%20belle.&model=tiny&beam=4&n_best=2&length_penalty=0.6")
    expected = api(server, "Tu es belle.", model="tiny", beam=4, n_best=2, length_penalty=0.6)
    wait_for_result(page, expected["text"])
    assert [page.input_value(f) for f in ("#beam", "#nbest", "#lp")] == ["4", "2", "0.6"]
    assert not page.locator("#models input[value='tiny-beam2']").is_checked()
    assert page.locator(".panel .nbest li").count() == 2 == len(expected["hypotheses"])
    assert "beam 4 · n-best 2 · length penalty 0.6" in page.locator(".panel .search").inner_text()
    page.fill("#beam", "5")
    page.fill("#lp", "1")
    page.press("#source", "Enter")
    page.wait_for_function("() => location.search.includes('beam=5')")
    query = parse_qs(urlsplit(page.url).query)
    assert query == {"text": ["Tu es belle."], "model": ["tiny"], "beam": ["5"], "n_best": ["2"],
                     "length_penalty": ["1"]}
    again = open_page("?" + urlsplit(page.url).query)  # the link opens the same view
    wait_for_result(again, api(server, "Tu es belle.", model="tiny", beam=5, n_best=2, length_penalty=1.0)["text"])
    assert [again.input_value(f) for f in ("#beam", "#nbest", "#lp")] == ["5", "2", "1"]


def test_n_best_is_clamped_to_the_beam(open_page, server):
    page = open_page()
    held = Held(page)
    page.fill("#source", SHORT)
    assert page.input_value("#nbest") == "3" and page.input_value("#beam") == ""
    assert "tiny-beam2 searches with beam 2" in page.locator("#nbest-note").inner_text()
    page.press("#source", "Enter")
    held.wait(2)
    assert {b["model"]: b["n_best"] for b in held.bodies} == {"tiny": 3, "tiny-beam2": 2}
    held.answer(0), held.answer(1)
    page.wait_for_selector(".panel[data-model='tiny-beam2'] .best")
    assert page.locator(".panel .error").count() == 0 and page.locator("#error").is_hidden()
    assert page.locator(".panel[data-model='tiny-beam2'] .nbest li").count() == 2
    page.fill("#beam", "1")
    assert page.input_value("#nbest") == "1" and "lowered to 1" in page.locator("#nbest-note").inner_text()
    page.press("#source", "Enter")
    held.wait(4)
    assert [(b["beam"], b["n_best"]) for b in held.bodies[2:]] == [(1, 1), (1, 1)]


def test_counter_shows_the_servers_limit_and_refuses_longer_text(open_page):
    page = open_page()
    held = Held(page)
    assert page.locator("#counter").inner_text() == f"0 / {MAX_CHARS} characters"
    page.fill("#source", SHORT)
    assert page.locator("#counter").inner_text() == f"{len(SHORT)} / {MAX_CHARS} characters"
    page.press("#source", "Enter")
    held.wait(2)
    held.answer(0), held.answer(1)
    page.wait_for_selector(".panel .best")
    too_long = "x" * (MAX_CHARS + 7)
    page.fill("#source", too_long)
    assert page.input_value("#source") == too_long  # not cut silently
    assert page.locator("#counter").inner_text() == f"{MAX_CHARS + 7} / {MAX_CHARS} characters: 7 too many"
    assert page.get_attribute("#source", "aria-invalid") == "true"
    page.press("#source", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert f"at most {MAX_CHARS}" in page.locator("#error").inner_text()
    assert page.locator("#results .panel").count() == 0 and len(held.routes) == 2


def test_tooltip_beside_the_pointer_and_keys_scroll_the_map(open_page, server, tmp_path):
    page = open_page()
    expected = entered(page, server, LONG)
    hyp, S = expected["hypotheses"][0], len(expected["src_tokens"])
    T = len(hyp["tokens"])
    i, j = T - 1, S - 1  # the bottom-right cell: the tooltip has to flip to stay on screen
    page.locator("svg.heatmap.attention rect.cell").nth(i * S + j).hover()
    tip = page.locator("#tip")
    assert tip.is_visible() and f"weight {hyp['attention'][i][j]:.3f}" in tip.inner_text()
    box = tip.bounding_box()
    assert 0 <= box["x"] and box["x"] + box["width"] <= 1280 and 0 <= box["y"] and box["y"] + box["height"] <= 800
    page.screenshot(path=str(tmp_path / "page-wide.png"))
    page.locator("svg.heatmap.attention rect.cell").nth((T // 2) * S).hover()
    before = page.evaluate("scrollY")  # the page scrolls under the pointer: the tooltip stays shown
    page.evaluate("window.scrollBy(0, scrollY >= 8 ? -8 : 8)")
    page.wait_for_timeout(200)
    assert page.evaluate("scrollY") != before and tip.is_visible()
    readout = page.locator(".panel .maps > .readout").first  # the same words, always in view under the map
    assert readout.inner_text() == tip.inner_text() and f"weight {hyp['attention'][T // 2][0]:.3f}" in readout.inner_text()
    page.mouse.move(5, 5)
    assert tip.is_hidden() and readout.is_visible() and readout.inner_text() != ""

    narrow = open_page(width=390, height=844)
    only(narrow)
    narrow.fill("#source", LONG)
    narrow.press("#source", "Enter")
    wait_for_result(narrow, expected["text"])
    wrap = narrow.locator(".panel .heatmap-wrap").first
    narrow.wait_for_function("() => document.querySelector('.heatmap-wrap').dataset.overflow === 'true'")
    assert narrow.locator(".scroll-hint").first.is_visible()
    heat = narrow.locator("svg.heatmap.attention")
    heat.focus()
    narrow.keyboard.press("End")  # the last source piece: off to the right until the map scrolls
    assert wrap.evaluate("w => w.scrollLeft") > 0
    cell = narrow.locator("svg.heatmap.attention rect.cell.active").bounding_box()
    shown = wrap.bounding_box()
    assert shown["x"] <= cell["x"] and cell["x"] + cell["width"] <= shown["x"] + shown["width"] + 1
    assert 0 <= cell["y"] and cell["y"] + cell["height"] <= 844
    assert heat.get_attribute("data-j") == str(S - 1)
    tip_box = narrow.locator("#tip").bounding_box()
    assert narrow.locator("#tip").is_visible() and tip_box["x"] >= 0 and tip_box["x"] + tip_box["width"] <= 390
    assert narrow.evaluate("document.documentElement.scrollWidth") <= 390
    cell_y = narrow.locator("svg.heatmap.attention rect.cell.active").bounding_box()["y"]
    narrow.evaluate("window.scrollBy(0, -60)")  # the tooltip stays beside the keyboard's cell
    narrow.wait_for_timeout(200)
    moved = narrow.locator("svg.heatmap.attention rect.cell.active").bounding_box()["y"] - cell_y
    assert moved > 0 and narrow.locator("#tip").is_visible()
    assert abs(narrow.locator("#tip").bounding_box()["y"] - tip_box["y"] - moved) <= 1
    narrow.screenshot(path=str(tmp_path / "page-narrow.png"))


def test_translate_as_you_type(open_page, server):
    page = open_page(live=True)
    only(page)
    assert page.locator("#live").is_checked()
    sent = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)["text"]) if r.url.endswith("/api/translate") else None)
    page.locator("#source").press_sequentially(OTHER, delay=40)  # keys closer than the delay: one request
    wait_for_result(page, api(server, OTHER, model="tiny", n_best=3)["text"])
    assert sent == [OTHER], sent
    # a request in flight is cancelled by the next one
    held = Held(page)
    page.locator("#source").press_sequentially(" Tu", delay=40)
    held.wait(1)
    failed = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.locator("#source").press_sequentially(" es", delay=40)
    held.wait(2)
    assert not held.answer(0) or failed  # the page gave up the first one
    assert held.answer(1)
    final = OTHER + " Tu es"
    wait_for_result(page, api(server, final, model="tiny", n_best=3)["text"])
    # the toggle turns it off (remembered); Enter still translates
    page.uncheck("#live")
    page.locator("#source").press_sequentially(".", delay=40)
    page.wait_for_timeout(700)
    assert len(held.routes) == 2
    page.press("#source", "Enter")
    held.wait(3)
    assert held.bodies[-1]["text"] == final + "."


def test_low_confidence_words_are_marked(open_page, server):
    page = open_page()
    expected = entered(page, server, LONG)
    hyp = expected["hypotheses"][0]
    words, low = [], []
    for piece, lp in zip(hyp["tokens"], hyp["token_log_probs"]):
        if piece == "</s>":
            continue
        if piece.startswith("▁") or not words:
            words.append(["", 1.0])
        words[-1][0] += piece.removeprefix("▁")
        words[-1][1] = min(words[-1][1], math.exp(lp))
    words = [w for w in words if w[0]]
    assert [w for w, _ in words] == hyp["text"].split()
    low = [w for w, p in words if p < 0.5]
    marks = page.locator(".panel .best mark.low")
    assert marks.all_inner_texts() == low
    for k in range(marks.count()):  # not colour alone: underlined, with the probability in its title
        mark = marks.nth(k)
        assert "wavy" in mark.evaluate("m => getComputedStyle(m).textDecorationStyle")
        assert re.search(r"probability [\d.e-]+ \(below 0\.5\)", mark.get_attribute("title"))
    note = page.locator(".panel .lowconf").inner_text()
    assert "below 0.5" in note and all(f"“{w}”" in note for w in low)
    pieces_low = sum(math.exp(lp) < 0.5 for lp in hyp["token_log_probs"])
    assert page.locator(".panel svg.heatmap.attention text.prob.low").count() == pieces_low
    assert "below 0.5" in page.locator(".panel .legend").first.inner_text()


def test_glossary_terms_are_sent_and_highlighted(open_page, server):
    """The glossary box's terms whose source term is in the sentence go as `constraints`; the words
    they made are highlighted with the term in their title; a bad line is named; the markup
    toggle sends `markup` and shows the tags as text."""
    page = open_page()
    only(page)
    page.fill("#glossary", "fatigué → sleepy\nfroid → cold\n")
    page.fill("#source", SHORT)
    page.press("#source", "Enter")
    expected = api(server, SHORT, model="tiny", n_best=3, constraints=[["sleepy"]])
    wait_for_words(page, expected["text"])
    hyp = expected["hypotheses"][0]
    words = expected["text"].split()
    want = [words[w] for span in hyp["constraint_spans"] for w in span["words"]]
    marks = page.locator(".panel .best mark.term")
    assert want and marks.all_inner_texts() == want
    assert "from the glossary term “sleepy”" in marks.first.get_attribute("title")
    assert "“sleepy”" in page.locator(".panel .terms-note").inner_text()
    assert "glossary: sleepy" in page.locator(".panel .meta.search").inner_text()  # not "cold": no "froid"

    page.fill("#glossary", "fatigué sleepy")
    page.press("#source", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "Glossary line 1" in page.locator("#error").inner_text()
    assert page.locator(".panel").count() == 0

    page.fill("#glossary", "")
    page.check("#markup")
    tagged = "Je suis <b>fatigué</b>."
    page.fill("#source", tagged)
    page.press("#source", "Enter")
    expected = api(server, tagged, model="tiny", n_best=3, markup="html")
    assert "<b>" in expected["text"] and "</b>" in expected["text"]
    wait_for_words(page, expected["text"])  # the tags as text, not rendered
    assert page.locator(".panel .best b").count() == 0
