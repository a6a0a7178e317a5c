"""Running ``nmt serve``: the bearer token (``--token-file``), Swagger UI without network access,
and the graceful drain on SIGTERM of a real server process on a loopback port."""
from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from nmt.cli import main  # noqa: E402
from nmt.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig  # noqa: E402
from nmt.tools.serve import create_app, load_models  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FR = "le la chat chien maison rouge bleu petit grand mange dort voit un une et sur sous".split()
EN = "the cat dog house red blue small big eats sleeps sees a and on under".split()
TOKEN = "s3cret-token-of-the-test-0123456789"


def corpus(n: int, seed: int, words=FR) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(n)]


@pytest.fixture(scope="module")
def run(tmp_path_factory, random_run) -> Path:
    cfg = ModelConfig(embedding_dim=12, dropout=0.0, activation="tanh", attention=AttentionConfig(kind="bahdanau"),
                      encoder=EncoderConfig(hidden_size=8, dropout=0.0), decoder=DecoderConfig(hidden_size=16, dropout=0.0))
    return random_run(tmp_path_factory.mktemp("serve-ops") / "run", cfg, corpus(200, 0), corpus(200, 1, EN),
                      src_vocab=34, tgt_vocab=26, eos_bias=0.5)


@pytest.fixture(scope="module")
def model(run):
    (served,) = load_models([run])
    return served


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "token.txt"
    path.write_text(TOKEN + "\n")
    return path


# ------------------------------------------------------------------------------------- token

def test_the_api_needs_the_token_and_health_stays_open(model):
    with TestClient(create_app(models=[model], token=TOKEN)) as c:
        body = {"text": "le chat"}
        missing = c.post("/api/translate", json=body)
        assert missing.status_code == 401 and "Authorization: Bearer TOKEN" in missing.json()["error"]
        assert missing.headers["www-authenticate"] == "Bearer"
        for header in ("Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"):
            r = c.post("/api/translate", json=body, headers={"Authorization": header})
            assert r.status_code == 401, header
            assert TOKEN not in r.text
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert c.post("/api/translate", json=body, headers=right).status_code == 200
        assert c.post("/api/translate", json=body, headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
        assert c.get("/api/models").status_code == 401
        assert c.get("/api/models", headers=right).status_code == 200
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=right).status_code == 200
        for open_path in ("/health", "/", "/docs", "/openapi.json", "/static/serve.js"):
            assert c.get(open_path).status_code == 200, open_path
        schema = c.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert schema["paths"]["/api/translate"]["post"]["security"] == [{"bearer": []}]
    with TestClient(create_app(models=[model])) as c:  # no token: no check
        assert c.post("/api/translate", json={"text": "le chat"}).status_code == 200
        assert "securitySchemes" not in c.get("/openapi.json").json().get("components", {})


def test_the_token_file_is_checked_and_required_beyond_loopback(run, tmp_path, capsys):
    base = ["serve", str(run), "--port", "0"]
    for host in ("0.0.0.0", "::"):
        assert main([*base, "--host", host]) == 2
        assert "--token-file FILE" in capsys.readouterr().err
    for content, words in (("", "is empty"), ("xq7z\n", "at least 16"), ("two words here and more", "spaces"),
                           ("caf\u00e9-token-0123456789", "printable ASCII")):
        path = tmp_path / "bad-token"
        path.write_text(content, encoding="utf-8")
        assert main([*base, "--token-file", str(path)]) == 2
        err = capsys.readouterr().err
        assert words in err and (not content.strip() or content.strip() not in err)
    assert main([*base, "--token-file", str(tmp_path / "missing")]) == 2
    assert "cannot read it" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ /docs

def test_swagger_ui_is_served_by_the_server(model):
    pytest.importorskip("swagger_ui")
    with TestClient(create_app(models=[model])) as c:
        page = c.get("/docs")
        assert page.status_code == 200
        assert "/docs-assets/swagger-ui-bundle.js" in page.text and "/docs-assets/swagger-ui.css" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
        js = c.get("/docs-assets/swagger-ui-bundle.js")
        assert js.status_code == 200 and "SwaggerUIBundle" in js.text
        assert c.get("/docs-assets/swagger-ui.css").status_code == 200
        assert c.get("/docs-assets/..%2Fcore.py").status_code == 404
        assert c.get("/docs-assets/index.css").status_code == 404  # only the files the page needs


# ------------------------------------------------------------------------------------ drain

#: the server process: every model call takes 3 s more, then ``nmt serve`` runs
#: a ``sitecustomize`` module slowing every translation by 3 s, in the server and in its model
#: worker processes (they inherit it through PYTHONPATH)
SLOW_TRANSLATIONS = """
import time
import nmt.tools.serve_model as serve_model

build = serve_model.make_translator

def slow(*args, **kwargs):
    translator = build(*args, **kwargs)
    translate = translator.translate
    def slowly(*a, **k):
        time.sleep(3)
        return translate(*a, **k)
    translator.translate = slowly
    return translator

serve_model.make_translator = slow
"""


def test_sigterm_answers_requests_under_way_refuses_new_ones_and_exits_0(run, tmp_path, token_file):
    from conftest import serving

    log = tmp_path / "serve.log"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_TRANSLATIONS)
    with serving([run], log, "--token-file", str(token_file), "--threads", "1", "--log-level", "info",
                 pythonpath=(slow,)) as (base, proc):
        assert httpx.post(base + "/api/translate", json={"text": "le chat"}).status_code == 401
        under_way = {}
        thread = threading.Thread(target=lambda: under_way.setdefault("answer", httpx.post(
            base + "/api/translate", json={"text": "le chat dort"}, headers=auth, timeout=30)))
        thread.start()
        deadline = time.monotonic() + 10
        while httpx.get(base + "/health").json()["requests"] < 1:  # the request reached the model
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = httpx.post(base + "/api/translate", json={"text": "le chien"}, headers=auth, timeout=10)
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
        assert refused.headers["retry-after"] == "1"
        assert httpx.get(base + "/health", timeout=10).status_code == 503
        thread.join(30)
        answer = under_way["answer"]
        assert answer.status_code == 200 and answer.json()["translations"][0]["source"] == "le chat dort"
        assert proc.wait(30) == 0
    text = log.read_text()
    assert "Traceback" not in text and TOKEN not in text


# ---------------------------------------------------------------------------------- browser

@pytest.mark.slow
def test_docs_offline_and_the_page_with_a_token_in_a_real_browser(run, tmp_path, token_file):
    """Every request to another address aborted: /docs still lists the operations; the page asks
    for the token on its first 401 and then translates."""
    from conftest import serving
    from playwright.sync_api import sync_playwright
    from test_serve import CHROMIUM_ARGS, _chromium

    executable = _chromium()
    log = tmp_path / "serve.log"
    with serving([run], log, "--token-file", str(token_file), "--threads", "1", "--log-level", "warning") \
            as (base, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            elsewhere = []

            def only_the_server(route):
                if route.request.url.startswith(base):
                    route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    route.abort()

            page.route("**/*", only_the_server)
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/docs")
            page.wait_for_selector(".swagger-ui .opblock-summary-path[data-path='/api/translate']", timeout=30_000)
            assert page.locator(".swagger-ui .btn.authorize").count() == 1
            asked = []
            page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept(TOKEN)))
            page.goto(base + "/")
            page.wait_for_selector("#models input[value='run']")
            page.fill("#source", "le chat dort")
            page.click("#translate")
            page.wait_for_selector(".panel[data-model='run'] svg.heatmap.attention", timeout=30_000)
            assert len(asked) == 1 and "token" in asked[0]
            assert not elsewhere and not errors, (elsewhere, errors)
        finally:
            browser.close()
    assert TOKEN not in log.read_text()
