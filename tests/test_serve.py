"""``nmt serve``: the JSON API in-process, the page in a real browser, and a bounded load test.

Two runs are served: the shipped tiny recipe trained for a few steps (Bahdanau attention), and a
local-p model with an encoder self-attention layer on the same tokenizers (random weights: the
page and the API only need its shapes). The browser and load tests start ``nmt serve`` as a
subprocess on a free loopback port.
"""
import asyncio
import json
import math
import os
import shutil
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from nmt.cli import main
from nmt.inference.translator import Translator
from nmt.tools.serve import STATIC_DIR, ServeLimits, create_app, load_models

REPO = Path(__file__).resolve().parent.parent
SENTENCES = ["Je suis fatigué.", "Tu es belle.", "Il fait froid.", "Nous sommes en retard.",
             "Elle lit un livre.", "Je suis malade."]
LIMITS = dict(max_texts=4, max_chars=200, max_beam=6)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import train_served_run
    from nmt.inference.checkpoint import load_run_recipe, save_weights
    from nmt.model.seq2seq import build_model

    base = tmp_path_factory.mktemp("serve")
    tiny = base / "tiny"
    train_served_run(tiny)

    local = base / "tiny-localp"
    local.mkdir()
    for name in ("spm.src.model", "spm.tgt.model"):
        shutil.copy(tiny / name, local / name)
    recipe = load_run_recipe(tiny)
    recipe.model.attention.kind = "local-p"
    recipe.model.attention.window = 2
    recipe.model.encoder.self_attention_layers = 1
    recipe.model.encoder.self_attention_heads = 2
    recipe.model.encoder.self_attention_ff_size = 32
    (local / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    torch.manual_seed(0)
    model = build_model(recipe.model, recipe.tokenizer.src_vocab_size, recipe.tokenizer.tgt_vocab_size)
    save_weights(model, local / "checkpoints" / "best.safetensors")
    return tiny, local


@pytest.fixture(scope="module")
def client(runs):
    app = create_app(runs, ServeLimits(**LIMITS))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def translator(runs):
    return Translator.load(runs[0], device="cpu")


def post(client, body):
    return client.post("/api/translate", json=body)


# ------------------------------------------------------------------------------------- the API

def test_translate_shapes_and_attention(client):
    r = post(client, {"text": SENTENCES[0], "beam": 3, "n_best": 3, "return_attention": True})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"] == "tiny" and data["attention"] == "bahdanau" and data["window"] is None
    (tr,) = data["translations"]
    assert tr["source"] == SENTENCES[0] and tr["text"] == tr["hypotheses"][0]["text"]
    assert tr["src_tokens"][-1] == "</s>" and tr["self_attention"] is None
    assert len(tr["hypotheses"]) == 3
    for h in tr["hypotheses"]:
        T, S = len(h["tokens"]), len(tr["src_tokens"])
        assert len(h["token_log_probs"]) == T and len(h["attention"]) == T
        assert all(len(row) == S and abs(sum(row) - 1) < 1e-3 for row in h["attention"])
        assert math.isclose(sum(h["token_log_probs"]), h["log_prob"], abs_tol=1e-4)
        assert h["positions"] is None
    assert [h["score"] for h in tr["hypotheses"]] == sorted((h["score"] for h in tr["hypotheses"]), reverse=True)


def test_local_p_positions_and_self_attention(client):
    r = post(client, {"texts": SENTENCES[:2], "model": "tiny-localp", "beam": 2, "return_attention": True})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["attention"] == "local-p" and data["window"] == 2
    for tr in data["translations"]:
        S = len(tr["src_tokens"])
        h = tr["hypotheses"][0]
        T = len(h["tokens"])
        assert len(h["positions"]) == T and all(0 <= p <= S - 1 for p in h["positions"])
        for row, p in zip(h["attention"], h["positions"]):  # no weight outside the window |s - p| <= D
            assert all(w == 0 for s, w in enumerate(row) if abs(s - p) > 2 + 1e-3)
        att = tr["self_attention"]
        assert len(att) == 1 and len(att[0]) == 2  # layers × heads
        assert all(len(m) == S and all(len(row) == S and abs(sum(row) - 1) < 1e-3 for row in m) for m in att[0])


def test_scores_equal_the_translator(client, translator):
    body = {"texts": SENTENCES[:4], "beam": 3, "n_best": 2, "length_penalty": 0.6, "return_attention": True}
    served = post(client, body).json()["translations"]
    direct = translator.translate(SENTENCES[:4], beam=3, n_best=2, length_penalty=0.6,
                                  return_scores=True, return_attention=True)
    for tr, res in zip(served, direct):
        assert tr["text"] == res.text
        for h, ref in zip(tr["hypotheses"], res.hypotheses, strict=True):
            assert (h["text"], h["tokens"]) == (ref.text, ref.tokens)
            assert h["score"] == ref.score and h["log_prob"] == ref.raw_score
            assert h["token_log_probs"] == ref.token_log_probs
            assert torch.allclose(torch.tensor(h["attention"]), ref.attention, atol=1e-5)
    # nothing left after cleaning (a control character): an empty translation, as from the translator
    (empty,) = post(client, {"text": "\u0007", "return_attention": True}).json()["translations"]
    assert empty["text"] == "" and empty["hypotheses"][0]["attention"] is None
    plain = post(client, {"text": SENTENCES[0], "return_scores": False}).json()["translations"][0]
    assert plain["text"] == translator.translate([SENTENCES[0]])[0]
    assert "score" not in plain["hypotheses"][0] and "src_tokens" not in plain


BAD = [  # (raw body, status, fragment of the message)
    ('{"text": "a"', 400, "malformed JSON"),
    ("not json", 400, "malformed JSON"),
    ('["a"]', 422, "must be a JSON object"),
    ('{"text": 5}', 422, "text: Input should be a valid string"),
    ('{"texts": "a"}', 422, "texts: Input should be a valid list"),
    ('{"text": "a", "beam": "3"}', 422, "beam: Input should be a valid integer"),
    ('{"text": "a", "beam": 2.5}', 422, "beam: Input should be a valid integer"),
    ('{"text": "a", "return_attention": "yes"}', 422, "return_attention: Input should be a valid boolean"),
    ('{"text": "a", "beams": 3}', 422, "unknown field 'beams'"),
    ('{}', 422, 'exactly one of "text"'),
    ('{"text": "a", "texts": ["b"]}', 422, 'exactly one of "text"'),
    ('{"text": "   "}', 422, "text is empty"),
    ('{"texts": []}', 422, "texts is empty"),
    ('{"texts": ["a", ""]}', 422, "texts[1] is empty"),
    ('{"texts": ["a", "b", "c", "d", "e"]}', 422, "too many texts: 5 (at most 4"),
    ('{"text": "' + "a" * 201 + '"}', 422, "201 characters; at most 200"),
    ('{"text": "a", "beam": 0}', 422, "beam: Input should be greater than or equal to 1"),
    ('{"text": "a", "beam": 7}', 422, "beam 7 is out of range: 1 to 6"),
    ('{"text": "a", "n_best": 0}', 422, "n_best: Input should be greater than or equal to 1"),
    ('{"text": "a", "n_best": 7}', 422, "n_best 7 is out of range: 1 to 6"),
    ('{"text": "a", "n_best": 3, "beam": 2}', 422, "n_best (3) must not exceed beam (2)"),
    ('{"text": "a", "length_penalty": -1}', 422, "length_penalty: Input should be greater than or equal to 0"),
    ('{"text": "a", "length_penalty": 1e9}', 422, "length_penalty 1000000000.0 is out of range"),
    ('{"text": "a", "shortlist": 5}', 422, "has no lexicon for a shortlist"),
    ('{"text": "a", "model": "nope"}', 404, "unknown model 'nope'; served models: tiny, tiny-localp"),
    ('{"text": "\\ud800"}', 422, "text holds a lone surrogate"),
    ('{"texts": ["a", "b\\udc00"]}', 422, "texts[1] holds a lone surrogate"),
    ('{"\\ud800": 1}', 422, "unable to parse raw data as a unicode string"),
    ("[" * 10_000 + "]" * 10_000, 400, "nested too deeply"),
    ('{"text": "a", "beam": ' + "9" * 5_000 + "}", 400, "a number in the body is too long"),
]


@pytest.mark.parametrize("body,status,message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_requests_get_a_clear_4xx(client, body, status, message):
    r = client.post("/api/translate", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_invalid_utf8_is_named(client):
    r = client.post("/api/translate", content=b'{"text": "caf\xe9"}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid UTF-8 (byte 0xe9" in r.json()["error"], r.text


def test_the_body_limit_counts_the_bytes_read(runs):
    """A chunked body has no Content-Length: it is cut off at the limit, not read whole."""
    (model,) = load_models(runs[:1])
    read = []

    def chunks():
        for _ in range(64):
            read.append(1)
            yield b"x" * 65_536

    with TestClient(create_app(models=[model], limits=ServeLimits(max_body_bytes=100_000))) as c:
        r = c.post("/api/translate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "at most 100,000" in r.json()["error"], r.text
        assert post(c, {"text": SENTENCES[0]}).status_code == 200


def test_host_header_check(runs):
    """DNS rebinding: a page elsewhere whose name resolves to this machine gets 400."""
    from nmt.tools.serve_guard import default_allowed_hosts, is_loopback

    (model,) = load_models(runs[:1])
    app = create_app(models=[model], allowed_hosts=default_allowed_hosts("127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").status_code == 200
        for host in ("localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1"):
            assert c.get("/health", headers={"host": host}).status_code == 200, host
        r = c.get("/health", headers={"host": "attacker.example:8000"})
        assert r.status_code == 400 and "--allowed-hosts" in r.json()["error"]
    with TestClient(create_app(models=[model], allowed_hosts=["*"]), base_url="http://anything.example") as c:
        assert c.get("/health").status_code == 200
    assert {"myhost", "127.0.0.1"} <= default_allowed_hosts("MyHost")
    assert "*address*" in default_allowed_hosts("0.0.0.0")
    for host in ("LOCALHOST", "localhost", "127.1", "127.0.0.1", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "8.8.8.8", "192.168.1.4"):
        assert not is_loopback(host), host


def test_a_nan_bleu_does_not_break_the_models_list(runs, tmp_path):
    tiny = tmp_path / "tiny"
    shutil.copytree(runs[0], tiny)
    (tiny / "eval").mkdir()
    (tiny / "eval" / "test.best.beam5.json").write_text(
        '{"beam": NaN, "timestamp": "2026-01-01", "scores": {"bleu": {"score": NaN}}}')
    with TestClient(create_app([tiny])) as c:
        r = c.get("/api/models")
    assert r.status_code == 200, r.text
    assert r.json()["models"][0]["test_bleu"]["bleu"] is None


def test_other_refusals_are_json(client):
    r = client.post("/api/translate", content=b'{"text": "a"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"]
    r = client.post("/api/translate", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "at most" in r.json()["error"]
    assert client.get("/api/translate").status_code == 405
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "no such page" in r.json()["error"]


def test_models_health_page_and_schema(client, runs):
    tiny, local = runs
    models = client.get("/api/models").json()["models"]
    assert [m["name"] for m in models] == ["tiny", "tiny-localp"]
    t, lp = models
    assert (t["attention"], t["activation"], t["embedding_dim"]) == ("bahdanau", "tanh", 64)  # recipes/tiny.yaml
    assert t["parameters"] == sum(p.numel() for p in Translator.load(tiny, device="cpu").model.parameters())
    assert (lp["attention"], lp["window"], lp["encoder"]["self_attention_heads"]) == ("local-p", 2, 2)
    assert t["test_bleu"] is None
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/serve.js"' in page.text
    for name in ("serve.js", "serve.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert "/api/translate" in client.get("/openapi.json").json()["paths"]


def test_metrics_in_prometheus_text_format(runs):
    from prometheus_client.parser import text_string_to_metric_families

    (model,) = load_models(runs[:1])
    with TestClient(create_app(models=[model], limits=ServeLimits(**LIMITS))) as c:
        assert post(c, {"texts": SENTENCES[:3]}).status_code == 200
        assert post(c, {"text": "a", "beam": 7}).status_code == 422
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(r.text) for s in family.samples}
    assert samples[("nmt_serve_requests_total", (("status", "200"),))] == 1
    assert samples[("nmt_serve_requests_total", (("status", "422"),))] == 1
    assert samples[("nmt_serve_request_seconds_count", ())] == 2
    assert samples[("nmt_serve_batch_sentences_sum", ())] == 3
    assert samples[("nmt_serve_queue_requests", ())] == 0


def test_test_bleu_comes_from_the_latest_evaluation(runs, tmp_path):
    tiny = tmp_path / "tiny"
    shutil.copytree(runs[0], tiny)
    (tiny / "eval").mkdir()
    for stamp, bleu in (("2026-01-02T00:00:00", 12.345), ("2026-01-01T00:00:00", 99.0)):
        (tiny / "eval" / f"test.best.beam{int(bleu)}.json").write_text(json.dumps(
            {"beam": 5, "checkpoint": "best", "timestamp": stamp, "scores": {"bleu": {"score": bleu}}}))
    (tiny / "eval" / "test.broken.json").write_text("{")
    (model,) = load_models([tiny])
    assert model.summary["test_bleu"]["bleu"] == 12.35 and model.summary["test_bleu"]["beam"] == 5


def test_concurrent_requests_share_a_model_call(runs, translator):
    app = create_app(runs[:1], ServeLimits(batch_window_ms=300, **LIMITS))
    with TestClient(app) as c, ThreadPoolExecutor(len(SENTENCES)) as pool:
        answers = list(pool.map(lambda s: post(c, {"text": s}), SENTENCES))
        stats = c.get("/health").json()
    assert [a.status_code for a in answers] == [200] * len(SENTENCES)
    assert [a.json()["translations"][0]["text"] for a in answers] == translator.translate(SENTENCES)
    assert stats["requests"] == len(SENTENCES) and stats["model_calls"] < len(SENTENCES)


@pytest.fixture(scope="module")
def shortlist_run(runs, tmp_path_factory):
    """The tiny run with a lexicon (``nmt shortlist``)."""
    from nmt.inference.shortlist import build_for_run

    run = tmp_path_factory.mktemp("shortlist") / "tiny"
    shutil.copytree(runs[0], run)
    build_for_run(run, keep=8)
    return run


@pytest.mark.parametrize("beam", [1, 4])
def test_a_sentence_gets_the_same_answer_alone_and_among_concurrent_requests(shortlist_run, beam):
    """With a shortlist, each sentence is normalised over its own: the text and the scores do not
    depend on what other clients send at the same moment."""
    translator = Translator.load(shortlist_run, device="cpu")
    settings = dict(beam=beam, n_best=min(beam, 2), shortlist=2)
    alone = [translator.translate([s], return_scores=True, **settings)[0] for s in SENTENCES]
    assert translator.translate(SENTENCES, shortlist=2, beam=beam) == [a.text for a in alone]
    app = create_app([shortlist_run], ServeLimits(batch_window_ms=300, **LIMITS))
    bodies = [{"texts": [s, SENTENCES[(k + 3) % len(SENTENCES)]], **settings} for k, s in enumerate(SENTENCES)]
    with TestClient(app) as c, ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: post(c, body), bodies))
    assert c.app.state.batcher.stats["model_calls"] < len(bodies)  # they did share model calls
    for a, body in zip(answers, bodies):
        assert a.status_code == 200, a.text
        for tr, text in zip(a.json()["translations"], body["texts"]):
            want = alone[SENTENCES.index(text)]
            assert [h["text"] for h in tr["hypotheses"]] == [h.text for h in want.hypotheses]
            assert [h["score"] for h in tr["hypotheses"]] == pytest.approx(
                [h.score for h in want.hypotheses], abs=1e-4)


def test_full_queue_answers_503_then_recovers(runs):
    (model,) = load_models(runs[:1])
    gate = threading.Event()
    real = model.translator.translate

    def held(*args, **kwargs):  # the model call waits until the test opens the gate
        gate.wait(30)
        return real(*args, **kwargs)

    model.translator.translate = held
    app = create_app(models=[model], limits=ServeLimits(queue_limit=2, batch_window_ms=0, max_batch_texts=1))
    with TestClient(app) as c, ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, c, {"text": SENTENCES[0]})
        _wait_for(lambda: c.get("/health").json()["model_calls"] == 0 and not c.get("/health").json()["waiting"]
                  and c.get("/health").json()["requests"] == 1)
        queued = [pool.submit(post, c, {"text": s}) for s in SENTENCES[1:3]]
        _wait_for(lambda: c.get("/health").json()["waiting"] == 2)
        busy = post(c, {"text": SENTENCES[3]})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "queue limit 2" in busy.json()["error"]
        gate.set()
        assert [f.result(30).status_code for f in [first] + queued] == [200, 200, 200]
        assert post(c, {"text": SENTENCES[3]}).status_code == 200


# --------------------------------------------------------------------------- bounded requests

def slow_model(runs, seconds: float):
    """The tiny run with a model call that takes at least ``seconds``; ``calls`` lists the texts of
    each call."""
    (model,) = load_models(runs[:1])
    real, calls = model.translator.translate, []

    def slow(texts, *args, **kwargs):
        calls.append(list(texts))
        time.sleep(seconds)
        return real(texts, *args, **kwargs)

    model.translator.translate = slow
    return model, calls


def test_work_and_answer_size_are_bounded(runs):
    (model,) = load_models(runs[:1])
    limits = ServeLimits(max_request_work=400, max_attention_cells=1_000, **LIMITS)
    with TestClient(create_app(models=[model], limits=limits)) as c:
        assert post(c, {"text": SENTENCES[0], "beam": 2}).status_code == 200
        r = post(c, {"texts": SENTENCES[:4], "beam": 6, "n_best": 6})
        assert r.status_code == 413 and "--max-request-work" in r.json()["error"], r.text
        assert "smaller beam or n_best" in r.json()["error"]
        r = post(c, {"texts": SENTENCES[:4], "beam": 3, "n_best": 3, "return_attention": True})
        assert r.status_code == 413 and "--max-attention-cells" in r.json()["error"], r.text
        assert post(c, {"texts": SENTENCES[:4], "beam": 3, "n_best": 3}).status_code == 200
        assert c.get("/api/models").json()["limits"]["max_request_work"] == 400


def test_a_small_request_waits_for_at_most_one_model_call(runs):
    """A request is split into sentences taken in turn with the other requests': a one-word request
    sent while an 8-sentence request runs (one sentence per model call of >= 0.4 s) is answered
    after at most the call under way and its own, not after the whole large request."""
    model, calls = slow_model(runs, 0.4)
    limits = ServeLimits(max_texts=8, max_chars=200, max_beam=6, max_batch_texts=1, batch_window_ms=0)
    big = SENTENCES + SENTENCES[:2]
    with TestClient(create_app(models=[model], limits=limits)) as c, ThreadPoolExecutor(2) as pool:
        start = time.perf_counter()
        large = pool.submit(post, c, {"texts": big})
        _wait_for(lambda: len(calls) >= 1)
        sent = time.perf_counter()
        small = post(c, {"text": "chat"})
        waited = time.perf_counter() - sent
        assert small.status_code == 200 and large.result(60).status_code == 200
        total = time.perf_counter() - start
    assert ["chat"] in calls[:3], calls  # right after the call under way
    # bound: the call under way and its own (2 x 0.4 s and two tiny translations), with a generous
    # margin for a busy machine; the large request took 8 calls
    assert total >= 8 * 0.4 and waited < max(2.0, total / 2), (waited, total)


def test_a_request_past_its_time_limit_gets_504_and_its_work_is_dropped(runs):
    model, calls = slow_model(runs, 1.0)
    limits = ServeLimits(max_texts=4, max_chars=200, max_beam=6, max_batch_texts=1, batch_window_ms=0,
                         request_timeout_s=0.3)
    with TestClient(create_app(models=[model], limits=limits)) as c:
        r = post(c, {"texts": SENTENCES[:3]})
        assert r.status_code == 504 and "--request-timeout-s" in r.json()["error"], r.text
        time.sleep(1.5)  # the call under way ends; the other two sentences never start
        stats = c.get("/health").json()
    assert len(calls) <= 1 and stats["timed_out"] == 1 and stats["dropped_texts"] == 3 - len(calls), (calls, stats)


def test_a_request_whose_client_went_away_is_dropped(runs):
    """A real server (uvicorn in a thread): the client gives up after 0.5 s; the sentences of its
    request that have not started are never computed."""
    import httpx
    import uvicorn

    model, calls = slow_model(runs, 1.0)
    limits = ServeLimits(max_texts=4, max_chars=200, max_beam=6, max_batch_texts=1, batch_window_ms=0)
    app = create_app(models=[model], limits=limits)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started)
        base = f"http://127.0.0.1:{server.config.port}"
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + "/api/translate", json={"texts": SENTENCES[:4]}, timeout=0.5)
        _wait_for(lambda: httpx.get(base + "/health").json()["abandoned"] == 1)
        time.sleep(1.5)  # the call under way ends; nothing else starts
        stats = httpx.get(base + "/health").json()
        assert len(calls) <= 1 and stats["dropped_texts"] == 4 - len(calls), (calls, stats)
    finally:
        server.should_exit = True
        thread.join(30)


def _wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_cli_errors_exit_2(tmp_path, runs, capsys):
    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "run directory" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(runs[0]), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", str(runs[0]), "--port", "0", "--workers", "0", "--continuous"]) == 2
    assert "--continuous needs model worker processes" in capsys.readouterr().err
    for option, value, message in (("--queue-limit", "0", "0 is out of range: at least 1"),
                                   ("--batch-window-ms", "1e300", "1e300 is out of range"),
                                   ("--batch-window-ms", "nan", "nan is out of range"),
                                   ("--threads", "100000", "100000 is out of range: at least 1 and at most 1024"),
                                   ("--request-timeout-s", "0", "0 is out of range: above 0"),
                                   ("--port", "70000", "70000 is out of range: at least 0 and at most 65535"),
                                   ("--max-texts", "x", "'x' is not an integer")):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", str(runs[0]), option, value])
        assert exit_.value.code == 2
        assert f"argument {option}: {message}" in capsys.readouterr().err


def test_static_files_are_package_data():
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p.name for p in STATIC_DIR.iterdir()}
    assert {"index.html", "serve.js", "serve.css"} <= shipped
    assert "static/*" in data["nmt.tools"]


# ----------------------------------------------------------------------- a real server process

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    """``nmt serve`` on a free loopback port; yields (base URL, log path, process)."""
    from conftest import serving

    log = tmp_path_factory.mktemp("server") / "serve.log"
    with serving(runs, log, "--queue-limit", "24", "--threads", "1", "--log-level", "warning") as (base, proc):
        yield base, log, proc
    assert "Traceback" not in log.read_text(), log.read_text()


def _chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    ci = os.environ.get("CI") == "true"
    if not Path(path).is_file():
        if ci:
            pytest.fail("CI needs Debian's chromium for the browser test: apt-get install -y chromium")
        pytest.skip("no chromium (Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if ci:
            pytest.fail("CI needs Playwright for Python for the browser test: pip install playwright")
        pytest.skip("Playwright for Python is not installed (pip install playwright)")
    return path


CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
def test_page_in_a_real_browser(server, tmp_path):
    import httpx
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    base, log, _ = server
    sentence = "Je suis fatigué."
    expected = {m: httpx.post(base + "/api/translate", json={
        "text": sentence, "model": m, "n_best": 3, "return_attention": True}).json()["translations"][0]
        for m in ("tiny", "tiny-localp")}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/")
            page.wait_for_selector("#models input[value='tiny-localp']")
            page.fill("#source", sentence)
            page.click("#translate")
            page.wait_for_selector(".panel[data-model='tiny-localp'] svg.heatmap.attention", timeout=30_000)
            for name, tr in expected.items():
                panel = page.locator(f".panel[data-model='{name}']")
                hyp = tr["hypotheses"][0]
                T, S = len(hyp["tokens"]), len(tr["src_tokens"])
                cells = panel.locator("svg.heatmap.attention rect.cell")
                assert cells.count() == T * S and T > 1 and S > 1
                assert panel.locator(".best").inner_text() == (tr["text"] or "(empty)")
                assert panel.locator(".nbest li").count() == len(tr["hypotheses"])
                i, j = T - 1, S // 2
                cells.nth(i * S + j).hover()
                readout = panel.locator(".readout").first.inner_text()
                assert f"weight {hyp['attention'][i][j]:.3f}" in readout, readout
                assert f"probability {math.exp(hyp['token_log_probs'][i]):.3f}" in readout, readout
            local = page.locator(".panel[data-model='tiny-localp']")
            T = len(expected["tiny-localp"]["hypotheses"][0]["tokens"])
            S = len(expected["tiny-localp"]["src_tokens"])
            assert local.locator("svg.heatmap.attention circle.centre").count() == T
            assert local.locator("svg.heatmap.selfattention rect.cell").count() == S * S
            local.locator(".selfatt-controls button").nth(1).click()
            assert local.locator(".selfatt-controls button").nth(1).get_attribute("aria-pressed") == "true"
            # keyboard: focus the heatmap; the arrow keys move from the cell last shown
            heat = page.locator(".panel[data-model='tiny'] svg.heatmap.attention")
            heat.focus()
            page.keyboard.press("Escape")
            page.keyboard.press("ArrowDown")
            page.keyboard.press("ArrowRight")
            att = expected["tiny"]["hypotheses"][0]["attention"]
            w = att[min(1, len(att) - 1)][min(1, len(att[0]) - 1)]
            assert f"weight {w:.3f}" in page.locator(".panel[data-model='tiny'] .readout").first.inner_text()
            assert "text=Je+suis" in page.url or "text=Je%20suis" in page.url
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)

            # a shared link opens with the sentence translated by the model it names; phone width
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.on("pageerror", lambda exc: errors.append(str(exc)))
            phone.goto(base + "/?text=Tu%20es%20belle.&model=tiny")
            phone.wait_for_selector(".panel svg.heatmap.attention", timeout=30_000)
            assert phone.locator(".panel").count() == 1
            assert phone.locator("#source").input_value() == "Tu es belle."
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the page is {width}px wide at phone width"
            phone.screenshot(path=str(tmp_path / "serve-phone.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()


@pytest.mark.slow
def test_load_then_burst_beyond_the_queue(server):
    import httpx

    base, log, proc = server
    clients, per_client = 16, 50
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one_client(c, k):
        for n in range(per_client):
            start = time.perf_counter()
            r = await c.post("/api/translate", json={"text": SENTENCES[(k + n) % len(SENTENCES)]})
            latencies.append(time.perf_counter() - start)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    async def load():
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as c:
            start = time.perf_counter()
            await asyncio.gather(*(one_client(c, k) for k in range(clients)))
            return time.perf_counter() - start

    seconds = asyncio.run(load())
    assert statuses == {200: clients * per_client}, statuses
    q = statistics.quantiles(latencies, n=100)
    stats = httpx.get(base + "/health").json()
    print(f"\nnmt serve load: {clients} clients x {per_client} requests: {len(latencies) / seconds:.0f} "
          f"requests/s, p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, "
          f"{stats['texts'] / stats['model_calls']:.1f} sentences per model call")

    async def burst(n):
        async with httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_connections=n), timeout=60) as c:
            good = [c.post("/api/translate", json={"texts": SENTENCES[:4]}) for _ in range(n)]
            bad = [c.post("/api/translate", content=body.encode(), headers={"content-type": "application/json"})
                   for body, _, _ in BAD[:12]]
            return await asyncio.gather(*good, *bad)

    answers = asyncio.run(burst(150))
    good, bad = answers[:150], answers[150:]
    codes = [r.status_code for r in good]
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 24, codes
    assert all(r.headers["retry-after"] == "1" for r in good if r.status_code == 503)
    assert all(400 <= r.status_code < 500 for r in bad), [r.status_code for r in bad]
    print(f"burst of 150: {codes.count(200)} answered, {codes.count(503)} refused with 503")
    assert proc.poll() is None
    assert httpx.get(base + "/health").json()["status"] == "ok"
    assert httpx.post(base + "/api/translate", json={"text": SENTENCES[0]}).status_code == 200


def test_request_decode_fields_come_from_the_decode_schema():
    """The request's search options are the recipe's decode fields: same help, same lower bounds."""
    import dataclasses

    from nmt.config import DecodeConfig
    from nmt.tools.serve_requests import REQUEST_DECODE, request_model

    schema = {f.name: f for f in dataclasses.fields(DecodeConfig)}
    fields = request_model().model_fields
    assert set(REQUEST_DECODE) == {"beam", "n_best", "length_penalty", "shortlist", "sample", "temperature",
                                   "top_k", "top_p", "seed", "split_sentences", "names"}
    bounds = {"min": "ge", "above": "gt", "max": "le"}
    for name in REQUEST_DECODE:
        assert fields[name].description.startswith(schema[name].metadata["help"]), name
        want = {bound: schema[name].metadata[key] for key, bound in bounds.items() if key in schema[name].metadata}
        have = {bound: getattr(m, bound) for m in fields[name].metadata for bound in bounds.values()
                if getattr(m, bound, None) is not None}
        assert have == want, name


def test_runs_sharing_a_name_are_told_apart_by_their_parent_folder(tmp_path, monkeypatch):
    """`nmt serve fr-en other/fr-en` from the runs' folder: 'runs/fr-en' and 'other/fr-en', never '/fr-en'."""
    from nmt.tools.serve_model import _model_names

    (tmp_path / "runs" / "fr-en").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "fr-en").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "runs")
    assert _model_names([Path("fr-en"), Path("other/fr-en")]) == ["runs/fr-en", "other/fr-en"]
    assert _model_names([Path("fr-en"), Path("other")]) == ["fr-en", "other"]
    assert _model_names([Path(".")]) == ["runs"]


def test_constraints_and_alignments_through_the_api(client, translator):
    """`constraints` (target terms per text) and `return_alignment` give what Translator.translate
    gives for the same sentence; a text without terms in the same request searches unconstrained."""
    texts = SENTENCES[:2]
    r = post(client, {"texts": texts, "beam": 3, "constraints": [["cold"], []], "return_alignment": True})
    assert r.status_code == 200, r.text
    constrained, free = r.json()["translations"]
    want = translator.translate([texts[0]], beam=3, constraints=[["cold"]], return_alignment=True)[0]
    assert constrained["text"] == want.text and "cold" in constrained["text"]
    assert constrained["hypotheses"][0]["constraints_met"] is True
    span, = constrained["hypotheses"][0]["constraint_spans"]  # where the term is: pieces and words
    start, end = span["tokens"]
    assert span["term"] == "cold" and "".join(constrained["hypotheses"][0]["tokens"][start:end]).strip("▁") == "cold"
    assert [constrained["text"].split()[w].strip(".") for w in span["words"]] == ["cold"]
    assert "constraint_spans" not in free["hypotheses"][0]
    assert constrained["hypotheses"][0]["alignment"] == [list(p) for p in want.hypotheses[0].alignment]
    assert free["text"] == translator.translate([texts[1]], beam=3)[0]
    assert free["hypotheses"][0].get("constraints_met", True) is True  # no terms: nothing unmet
    for body, words in (({"texts": texts, "constraints": [["cold"]]}, "2 texts"),
                        ({"text": texts[0], "constraints": [[""]]}, "constraints[0][0]"),
                        ({"text": texts[0], "constraints": [["x"] * 9]}, "at most 8")):
        r = post(client, body)
        assert r.status_code == 422 and words in r.text, r.text


def test_a_request_is_measured_one_text_at_a_time():
    """sentencepiece encodes a list on threads it starts for the call: the server encodes each text
    alone (the same ids)."""
    from types import SimpleNamespace

    from nmt.tools.serve_requests import source_ids

    seen = []

    class Processor:
        def encode(self, text, out_type):
            seen.append(text)
            assert isinstance(text, str) and out_type is int, text
            return [len(w) for w in text.split()]

    assert source_ids(SimpleNamespace(src=Processor()), ["ab c", "d"]) == [[2, 1], [1]]
    assert seen == ["ab c", "d"]
