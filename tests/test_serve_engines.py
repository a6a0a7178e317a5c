"""``nmt serve`` with other models: an ``nmt export`` on the ONNX engine in a process where torch
cannot be imported, an ensemble of runs as one model, and sampling with a seed (a sentence's
samples are the same alone, in a request with others, and among concurrent requests).

The runs are random models on small sentencepiece models (no training): the API only needs
their shapes, and the answers are compared with the translators' own.
"""
from __future__ import annotations

import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from nmt.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig  # noqa: E402
from nmt.tools.serve import ServeLimits, create_app  # noqa: E402
from test_onnx import NO_TORCH  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FR = "le la chat chien maison rouge bleu petit grand mange dort voit un une et sur sous".split()
EN = "the cat dog house red blue small big eats sleeps sees a and on under".split()
TEXTS = ["le chat dort", "un grand chien rouge mange", "la maison bleu", "une petit chat voit le chien"]


def corpus(n: int, seed: int, words=FR) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 7))) for _ in range(n)]


def model_config(seed_kind: str = "bahdanau") -> ModelConfig:
    return ModelConfig(embedding_dim=12, dropout=0.0, activation="tanh",
                       attention=AttentionConfig(kind=seed_kind, window=2, score="general"),
                       encoder=EncoderConfig(hidden_size=8, dropout=0.0),
                       decoder=DecoderConfig(hidden_size=16, dropout=0.0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, random_run) -> tuple[Path, Path]:
    """Two random runs on the same tokenizers (an ensemble can be made of them)."""
    import torch

    from nmt.inference.checkpoint import load_run_recipe, save_weights
    from nmt.model.seq2seq import build_model

    root = tmp_path_factory.mktemp("serve-engines")
    first = random_run(root / "run-a", model_config(), corpus(200, 0), corpus(200, 1, EN), src_vocab=34,
                       tgt_vocab=26, eos_bias=0.5)
    second = root / "run-b"
    shutil.copytree(first, second)
    recipe = load_run_recipe(first)
    torch.manual_seed(5)
    model = build_model(recipe.model, 34, 26)
    save_weights(model, second / "checkpoints" / "best.safetensors")
    return first, second


@pytest.fixture(scope="module")
def export(runs, tmp_path_factory) -> Path:
    from nmt.tools.export import export_run

    return export_run(runs[0], tmp_path_factory.mktemp("serve-export") / "export")


def post(client, body):
    return client.post("/api/translate", json=body)


# ---------------------------------------------------------------------------- the ONNX engine

#: (``NO_TORCH``, as a ``sitecustomize`` module, reaches the server's model worker processes through
#: PYTHONPATH too: a worker importing torch fails to load and the server does not start)
#: the server process: torch cannot be imported in it, then ``nmt serve`` runs
NO_TORCH_SERVE = NO_TORCH + """
from nmt.cli import main
code = main(sys.argv[1:])
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
sys.exit(code)
"""


def test_the_onnx_engine_serves_an_export_without_torch(export, tmp_path):
    """translate, a batch, errors, /health and /metrics against ``nmt serve --engine onnx`` in a
    process that cannot import torch; answers equal the ONNX translator's."""
    from conftest import serving
    from nmt.inference.onnx_translator import OnnxTranslator

    want = OnnxTranslator.load(export, threads=1)
    log = tmp_path / "serve.log"
    blocked = tmp_path / "no-torch"
    blocked.mkdir()
    (blocked / "sitecustomize.py").write_text(NO_TORCH)
    with serving([export], log, "--engine", "onnx", "--threads", "1", "--workers", "1", "--max-texts", "4",
                 "--log-level", "warning", code=NO_TORCH_SERVE, pythonpath=(blocked,)) as (base, proc):
        one = httpx.post(base + "/api/translate", json={"text": TEXTS[0], "beam": 3, "n_best": 2,
                                                         "return_attention": True, "return_alignment": True})
        assert one.status_code == 200, one.text
        (tr,) = one.json()["translations"]
        (ref,) = want.translate([TEXTS[0]], beam=3, n_best=2, return_attention=True, return_alignment=True)
        assert [h["text"] for h in tr["hypotheses"]] == [h.text for h in ref.hypotheses]
        assert [h["score"] for h in tr["hypotheses"]] == [float(h.score) for h in ref.hypotheses]
        first = tr["hypotheses"][0]
        assert len(first["attention"]) == len(first["tokens"]) and len(first["attention"][0]) == len(tr["src_tokens"])
        assert first["alignment"] == [list(p) for p in ref.hypotheses[0].alignment]
        batch = httpx.post(base + "/api/translate", json={"texts": TEXTS, "beam": 2})
        assert [t["text"] for t in batch.json()["translations"]] == want.translate(TEXTS, beam=2)
        sampled = httpx.post(base + "/api/translate", json={"text": TEXTS[1], "sample": True, "seed": 3,
                                                             "n_best": 2})
        assert [h["text"] for h in sampled.json()["translations"][0]["hypotheses"]] == [
            h.text for h in want.translate([TEXTS[1]], sample=True, seed=3, n_best=2)[0].hypotheses]
        for body, status, words in (({"texts": TEXTS + ["x"]}, 422, "too many texts"),
                                    ({"text": "a", "shortlist": 5}, 422, "no lexicon"),
                                    ({"text": "a", "model": "nope"}, 404, "unknown model")):
            r = httpx.post(base + "/api/translate", json=body)
            assert r.status_code == status and words in r.json()["error"], r.text
        health = httpx.get(base + "/health").json()
        assert health["status"] == "ok" and health["models"] == ["export"]
        models = httpx.get(base + "/api/models").json()["models"]
        assert models[0]["engine"] == "onnx" and models[0]["parameters"] is None
        metrics = httpx.get(base + "/metrics")
        assert metrics.status_code == 200 and 'nmt_serve_requests_total{status="200"} 3.0' in metrics.text
        assert proc.poll() is None
    assert "Traceback" not in log.read_text()


def test_the_onnx_engine_refuses_what_an_export_cannot_do(export, runs, capsys):
    from nmt.cli import main

    for extra, words in ((["--checkpoint", "last"], "--checkpoint"), (["--precision", "bf16"], "--precision bf16")):
        assert main(["serve", "--engine", "onnx", str(export), "--port", "0", *extra]) == 2
        assert words in capsys.readouterr().err
    assert main(["serve", "--engine", "onnx", "--ensemble", str(export), str(export), "--port", "0"]) == 2
    assert "one export directory per model" in capsys.readouterr().err
    assert main(["serve", "--engine", "onnx", str(runs[0]), "--port", "0"]) == 2
    assert "not an export directory" in capsys.readouterr().err


# -------------------------------------------------------------------------------- ensembles

def test_an_ensemble_is_served_as_one_model(runs):
    from nmt.inference.translator import Translator

    with TestClient(create_app(runs, ensemble=True)) as c:
        models = c.get("/api/models").json()["models"]
        r = post(c, {"texts": TEXTS, "beam": 3, "n_best": 2})
    assert [m["name"] for m in models] == ["run-a+run-b"]
    assert models[0]["ensemble"] == [str(p) for p in runs]
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "run-a+run-b"
    ensemble = Translator.load(list(runs), device="cpu")
    want = ensemble.translate(TEXTS, beam=3, n_best=2)
    assert [[h["text"] for h in t["hypotheses"]] for t in r.json()["translations"]] == [
        [h.text for h in res.hypotheses] for res in want]
    # not what either run says alone (else the test could not tell)
    alone = [Translator.load(run, device="cpu").translate(TEXTS, beam=3) for run in runs]
    assert [res.text for res in want] not in alone


# --------------------------------------------------------------------------------- sampling

SAMPLE = {"sample": True, "n_best": 3, "temperature": 1.5, "seed": 11}


def hyps(answer) -> list[list[str]]:
    return [[h["text"] for h in t["hypotheses"]] for t in answer.json()["translations"]]


def test_a_sampled_sentence_is_the_same_alone_in_a_batch_and_among_concurrent_requests(runs):
    from nmt.inference.translator import Translator

    app = create_app(runs[:1], ServeLimits(batch_window_ms=300, max_texts=8))
    with TestClient(app) as c:
        together = hyps(post(c, {"texts": TEXTS, **SAMPLE}))
        alone = [hyps(post(c, {"text": t, **SAMPLE}))[0] for t in TEXTS]
        with ThreadPoolExecutor(len(TEXTS)) as pool:  # concurrent: they share model calls
            concurrent = list(pool.map(lambda t: hyps(post(c, {"texts": [TEXTS[0], t], **SAMPLE})), TEXTS))
        calls = c.get("/health").json()["model_calls"]
        other_seed = hyps(post(c, {"texts": TEXTS, **SAMPLE, "seed": 12}))
    assert together == alone
    assert all(answer == [together[0], together[k]] for k, answer in enumerate(concurrent))
    assert calls < 2 * len(TEXTS) + 1  # some of the concurrent requests did share a call
    assert other_seed != together
    offline = Translator.load(runs[0], device="cpu").translate(TEXTS, sample=True, n_best=3, temperature=1.5,
                                                               seed=11)
    assert together == [[h.text for h in res.hypotheses] for res in offline]
    assert any(len(set(h)) > 1 for h in together)  # real draws, not one answer three times


def test_sampling_requests_are_checked_and_bounded(runs):
    limits = ServeLimits(max_texts=4, max_beam=4, max_request_work=40)
    with TestClient(create_app(runs[:1], limits)) as c:
        for body, status, words in (
                ({"text": "le chat", "sample": True, "beam": 3}, 422, "send beam 1"),
                ({"text": "le chat", "sample": True, "n_best": 5}, 422, "n_best 5 is out of range"),
                ({"text": "le chat", "sample": True, "temperature": 0}, 422, "temperature"),
                ({"text": "le chat", "sample": True, "top_p": 1.5}, 422, "top_p"),
                ({"text": "le chat", "sample": True, "seed": -1}, 422, "seed"),
                ({"text": "le chat", "sample": True, "seed": 2**64}, 422, "seed"),
                ({"text": "le chat", "sample": "yes"}, 422, "sample: Input should be a valid boolean"),
                ({"texts": TEXTS, "sample": True, "n_best": 4}, 413, "units of work")):
            r = post(c, body)
            assert r.status_code == status and words in r.json()["error"], (body, r.text)
        r = post(c, {"text": "le chat", "sample": True, "n_best": 4, "top_k": 3, "top_p": 0.9})
        assert r.status_code == 200 and len(r.json()["translations"][0]["hypotheses"]) == 4


def test_a_worker_builds_the_served_translator_from_its_options(runs, export):
    """What a model worker process does: build the translator again from a served model's plain
    options (the ONNX engine on an export; an ensemble of runs)."""
    import pickle

    from nmt.inference.onnx_translator import OnnxTranslator
    from nmt.inference.translator import Translator
    from nmt.tools.serve_model import build_translator, load_models

    (served_onnx,) = load_models([export], engine="onnx", threads=1)
    onnx = build_translator(pickle.loads(pickle.dumps(served_onnx.options)))
    assert isinstance(onnx, OnnxTranslator)
    (served_ensemble,) = load_models(runs, ensemble=True)
    ensemble = build_translator(pickle.loads(pickle.dumps(served_ensemble.options)))
    assert isinstance(ensemble, Translator) and ensemble.run_dirs == list(runs)
    assert onnx.translate(TEXTS[:2]) == Translator.load(runs[0], device="cpu").translate(TEXTS[:2])
