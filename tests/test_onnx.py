"""ONNX export (``nmt export``) and the onnxruntime translator (``nmt translate --engine onnx``).

Random models of every attention kind are exported; the onnxruntime graphs must give the PyTorch
model's step outputs, and the numpy search the PyTorch search's hypotheses (tokens equal, scores
to float rounding) for greedy and beam search with penalties, n-best, min length and n-gram
blocking. Importing the translator must not import torch. Broken export directories exit 2.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nmt.config import (  # noqa: E402
    AttentionConfig,
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
)
from nmt.data.vocab import EOS_ID  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FR = "le la chat chien maison rouge bleu petit grand mange dort voit un une et sur sous".split()
EN = "the cat dog house red blue small big eats sleeps sees a and on under".split()

#: model variants: every attention kind, input feeding on and off, stacked layers, self-attention
VARIANTS = {
    "bahdanau": dict(attention=AttentionConfig(kind="bahdanau"),
                     encoder=EncoderConfig(hidden_size=8, dropout=0.0, self_attention_layers=1,
                                           self_attention_heads=2, self_attention_ff_size=16)),
    "luong-general": dict(attention=AttentionConfig(kind="luong-general"),
                          encoder=EncoderConfig(hidden_size=8, layers=2, dropout=0.0),
                          decoder=DecoderConfig(hidden_size=16, layers=2, dropout=0.0)),
    "luong-dot": dict(attention=AttentionConfig(kind="luong-dot"),
                      decoder=DecoderConfig(hidden_size=16, dropout=0.0, input_feeding=False)),
    "luong-concat": dict(attention=AttentionConfig(kind="luong-concat"), tied_embeddings=True),
    # tied: the fast search step's embedding tables and the output layer read one weight
    "bahdanau-tied": dict(attention=AttentionConfig(kind="bahdanau"), tied_embeddings=True),
    "local-p": dict(attention=AttentionConfig(kind="local-p", window=2, score="general")),
    "local-p-concat": dict(attention=AttentionConfig(kind="local-p", window=3, score="concat"),
                           encoder=EncoderConfig(hidden_size=8, bidirectional=False, dropout=0.0),
                           decoder=DecoderConfig(hidden_size=8, dropout=0.0, bridge=False)),
}


def corpus(n: int, seed: int, words=FR, max_words: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


def build_run(run: Path, variant: str, make_random_run, seed: int = 0) -> Path:
    """A run directory with sentencepiece models and a random model of ``variant``."""
    parts = {"encoder": EncoderConfig(hidden_size=8, dropout=0.0),
             "decoder": DecoderConfig(hidden_size=16, dropout=0.0), **VARIANTS[variant]}
    model_cfg = ModelConfig(embedding_dim=12, dropout=0.0, activation="tanh", **parts)
    return make_random_run(run, model_cfg, corpus(200, 0), corpus(200, 1, EN), src_vocab=34,
                           tgt_vocab=26, eos_bias=0.5, seed=seed)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, random_run):
    """variant -> (run directory, export directory), built on first use."""
    from nmt.tools.export import export_run

    root = tmp_path_factory.mktemp("onnx")
    made: dict[str, tuple[Path, Path]] = {}

    def get(variant: str) -> tuple[Path, Path]:
        if variant not in made:
            run = build_run(root / f"run-{variant}", variant, random_run)
            made[variant] = (run, export_run(run, root / f"export-{variant}"))
        return made[variant]

    return get


def _sources(tokenizers, n: int = 30, seed: int = 7) -> list[list[int]]:
    """Source ids with EOS, of varied lengths (so batches are padded)."""
    return [ids[:12] + [EOS_ID] for ids in tokenizers.encode_src(corpus(n, seed))]


SEARCHES = [
    dict(beam=1),
    dict(beam=3),
    dict(beam=3, n_best=3, length_penalty=0.6),
    dict(beam=4, n_best=2, coverage_penalty=0.3, no_repeat_ngram=2, min_len=1),
    dict(beam=1, coverage_penalty=0.2, no_repeat_ngram=1, length_penalty=1.0),
]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_onnx_search_equals_torch_search(exports, variant):
    """Same hypotheses (tokens, order, finished) and the same scores as nmt's own float32 search."""
    from nmt.inference.checkpoint import load_run
    from nmt.inference.onnx_translator import OnnxModel, read_export
    from nmt.inference.onnx_translator import pad_sources as onnx_pad
    from nmt.inference.onnx_translator import search as onnx_search
    from nmt.inference.search import pad_sources, search

    run, export = exports(variant)
    recipe, tokenizers, model, _ = load_run(run)
    onnx_model = OnnxModel(export, read_export(export), threads=1)
    sources = _sources(tokenizers)
    src, lengths, mask = pad_sources(sources)
    closed = 0
    for settings in SEARCHES:
        opts = recipe.decode.updated(settings)
        expected = search(model, src, lengths, mask, opts)
        got = onnx_search(onnx_model, *onnx_pad(sources), opts)
        for want, have in zip(expected, got):
            assert [h.tokens for h in have] == [h.tokens for h in want], settings
            assert [h.finished for h in have] == [h.finished for h in want]
            for w, h in zip(want, have):
                assert h.score == pytest.approx(w.score, rel=1e-5, abs=2e-5), settings
                assert h.raw_score == pytest.approx(w.raw_score, rel=1e-5, abs=2e-5)
                np.testing.assert_allclose(h.log_probs, w.log_probs, rtol=1e-5, atol=2e-5)
                closed += not w.finished
    assert closed > 0  # hypotheses closed at the max length are compared too
    assert len({tuple(hyps[0].tokens) for hyps in expected}) > 5  # the model says different things


def test_graphs_equal_the_model_step_by_step(exports):
    """The encoder graph gives model.start's state and memory at every real position whatever the
    padding; the step graph the log-probabilities of model.step_logits, state, attention and local-p positions."""
    from nmt.inference.checkpoint import load_run
    from nmt.inference.onnx_translator import OnnxModel, read_export
    from nmt.inference.search import pad_sources

    run, export = exports("local-p")
    _, tokenizers, model, _ = load_run(run)
    onnx_model = OnnxModel(export, read_export(export), threads=1)
    sources = _sources(tokenizers, 12, seed=3)
    src, lengths, mask = pad_sources(sources)
    with torch.no_grad():
        state, memory = model.start(model.encode(src, lengths, mask))
        o_state, o_memory = onnx_model.encode(src.numpy(), lengths.numpy())
        np.testing.assert_allclose(o_state["hidden"], state.hidden.numpy(), atol=1e-5)
        real = mask.numpy()
        np.testing.assert_allclose(o_memory["keys"][real], memory.keys.numpy()[real], atol=1e-5)
        np.testing.assert_array_equal(o_memory["mask"], real)
        # one sentence alone: no padding at all
        _, alone = onnx_model.encode(src[:1, : lengths[0]].numpy(), lengths[:1].numpy())
        np.testing.assert_allclose(alone["keys"][0], o_memory["keys"][0, : lengths[0]], atol=1e-5)
        prev = torch.full((len(sources),), 2)
        for _ in range(4):
            logits, out = model.step_logits(prev, state, memory)
            log_probs = torch.log_softmax(logits, dim=-1)
            o_lp, o_next, o_att, o_pos = onnx_model.step(
                prev.numpy(), {k: getattr(state, k).numpy() for k in o_state},
                {k: getattr(memory, k).numpy() for k in o_memory})
            np.testing.assert_allclose(o_lp, log_probs.numpy(), atol=2e-5)
            np.testing.assert_allclose(o_next["hidden"], out.state.hidden.numpy(), atol=1e-5)
            np.testing.assert_allclose(o_att, out.attention.numpy(), atol=1e-5)
            np.testing.assert_allclose(o_pos, out.positions.numpy(), atol=1e-4)
            prev, state = log_probs.argmax(1), out.state


def test_translator_equals_torch_translator_on_text(exports):
    """Text in, text out: cleaning, truncation, empty lines, order, n-best scores as nmt's Translator."""
    from nmt.inference.onnx_translator import OnnxTranslator
    from nmt.inference.translator import Translator

    run, export = exports("bahdanau")
    torch_t = Translator.load(run, device="cpu")
    onnx_t = OnnxTranslator.load(export, threads=1)
    texts = corpus(20, 11) + ["", "  \t ", "le chat\x00 noir", " ".join(FR * 2)]  # empty, junk, too long
    assert onnx_t.translate(texts) == torch_t.translate(texts)
    assert onnx_t.translate(texts, beam=1) == torch_t.translate(texts, beam=1)
    want = torch_t.translate(texts, n_best=2, length_penalty=0.8)
    have = onnx_t.translate(texts, n_best=2, length_penalty=0.8)
    for w, h in zip(want, have):
        assert [x.text for x in h.hypotheses] == [x.text for x in w.hypotheses]
        assert [x.tokens for x in h.hypotheses] == [x.tokens for x in w.hypotheses]
        assert [x.src_tokens for x in h.hypotheses] == [x.src_tokens for x in w.hypotheses]
        assert [x.score for x in h.hypotheses] == pytest.approx([x.score for x in w.hypotheses], abs=2e-5)
    assert have[20].text == "" and have[21].text == ""


def test_translator_rejects_options_it_cannot_honour(exports):
    from nmt.errors import NmtError
    from nmt.inference.onnx_translator import OnnxTranslator

    translator = OnnxTranslator.load(exports("bahdanau")[1], threads=1)
    with pytest.raises(NmtError, match="shortlist"):
        translator.translate(["le chat"], shortlist=10)
    with pytest.raises(NmtError, match="n_best"):
        translator.translate(["le chat"], beam=2, n_best=3)
    with pytest.raises(NmtError, match="unknown decode setting"):
        translator.translate(["le chat"], beem=2)
    with pytest.raises(NmtError, match="sample"):
        translator.translate(["le chat"], sample=True, beam=2)

@pytest.mark.parametrize("variant", ["bahdanau", "local-p"])
def test_attention_and_alignments_equal_torch_translator(exports, variant):
    """Attention weights, local-p positions and word alignments of every hypothesis, greedy and beam,
    as the torch engine gives them."""
    from nmt.inference.onnx_translator import OnnxTranslator
    from nmt.inference.translator import Translator

    run, export = exports(variant)
    torch_t = Translator.load(run, device="cpu")
    onnx_t = OnnxTranslator.load(export, threads=1)
    texts = corpus(12, 5) + [""]
    for settings in (dict(beam=1), dict(beam=3, n_best=2, coverage_penalty=0.2)):
        want = torch_t.translate(texts, return_attention=True, return_alignment=True, **settings)
        have = onnx_t.translate(texts, return_attention=True, return_alignment=True, **settings)
        for w, h in zip(want, have):
            assert [x.tokens for x in h.hypotheses] == [x.tokens for x in w.hypotheses]
            assert [x.alignment for x in h.hypotheses] == [x.alignment for x in w.hypotheses]
            for wx, hx in zip(w.hypotheses, h.hypotheses):
                if wx.attention is None:
                    assert hx.attention is None
                    continue
                # two libraries' float32 exp and sigmoid: local-p's Gaussian window turns their last-bit
                # differences in the predicted position into relative differences of ~1e-4 (AMD EPYC)
                np.testing.assert_allclose(hx.attention, wx.attention.numpy(), rtol=1e-4, atol=1e-5)
                if variant == "local-p":
                    np.testing.assert_allclose(hx.positions, wx.positions.numpy(), atol=1e-4)
                else:
                    assert hx.positions is None and wx.positions is None
    assert any(x.alignment for r in have for x in r.hypotheses)


def test_score_equals_torch_translator_score(exports):
    """Reference scores (forced decoding through the step graph) equal the torch engine's
    teacher-forced ones, per token too; empty sources and targets included."""
    from nmt.inference.onnx_translator import OnnxTranslator
    from nmt.inference.translator import Translator

    run, export = exports("luong-general")
    torch_t = Translator.load(run, device="cpu")
    onnx_t = OnnxTranslator.load(export, threads=1)
    sources = corpus(15, 21) + ["", "le chat"]
    targets = corpus(15, 22, EN) + ["the cat", ""]
    want, want_tokens = torch_t.score(sources, targets, return_token_log_probs=True)
    have, have_tokens = onnx_t.score(sources, targets, return_token_log_probs=True)
    assert have == pytest.approx(want, rel=1e-5, abs=5e-5)
    for w, h in zip(want_tokens, have_tokens):
        assert len(h) == len(w)
        np.testing.assert_allclose(h, w, rtol=1e-5, atol=2e-5)
    assert len({round(x, 3) for x in have}) > 10  # the scores differ between sentences


#: run in a subprocess: any import of torch fails
NO_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"importing {name} is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())
"""


def _run_without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code, *args], capture_output=True, text=True,
                          timeout=120)


def test_blocker_blocks_torch():
    """The blocker itself works (else the test below could not fail)."""
    out = _run_without_torch("import nmt.inference.translator")
    assert out.returncode != 0 and "importing torch is blocked" in out.stderr


def test_onnx_translator_runs_without_torch(exports):
    from nmt.inference.translator import Translator

    run, export = exports("luong-general")
    texts = corpus(8, 5)
    out = _run_without_torch(
        "import json\n"
        "from nmt.inference.onnx_translator import OnnxTranslator\n"
        "t = OnnxTranslator.load(sys.argv[1], threads=1)\n"
        "print(json.dumps(t.translate(json.loads(sys.argv[2]))))\n"
        "t.translate(['le chat'], beam=2, return_alignment=True)\n"
        "t.score(['le chat'], ['the cat'])\n"
        "import nmt.inference.greedy, nmt.inference.beam, nmt.inference.rules, nmt.inference.pool\n"
        "import nmt.inference.forced, nmt.inference.engine, nmt.inference.ops_numpy\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n",
        str(export), json.dumps(texts))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == Translator.load(run, device="cpu").translate(texts)


# ----------------------------------------------------------------------------------- bad input

def _broken_copy(export: Path, tmp_path: Path, name: str) -> Path:
    broken = tmp_path / name
    shutil.copytree(export, broken)
    return broken


def _foreign_onnx() -> bytes:
    """A valid ONNX model that is not an nmt graph (y = x)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


BROKEN = {
    "truncated encoder": (lambda d: (d / "encoder.onnx").write_bytes((d / "encoder.onnx").read_bytes()[:3000]),
                          ["encoder.onnx", "truncated or corrupt", "nmt export"]),
    "foreign decoder": (lambda d: (d / "decoder_step.onnx").write_bytes(_foreign_onnx()),
                        ["decoder_step.onnx", "not the graph export.json describes", "nmt export"]),
    "no target tokenizer": (lambda d: (d / "spm.tgt.model").unlink(),
                            ["spm.tgt.model", "tokenizer model", "nmt export"]),
    "garbage source tokenizer": (lambda d: (d / "spm.src.model").write_bytes(b"not a model"),
                                 ["spm.src.model", "not a valid sentencepiece model", "nmt export"]),
    "no export.json": (lambda d: (d / "export.json").unlink(), ["export.json", "not an export directory"]),
    "other json": (lambda d: (d / "export.json").write_text('{"format": "x"}'),
                   ["export.json", "not an nmt export description"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_export_directory_exits_2_naming_the_file(exports, tmp_path, capsys, case):
    from nmt.cli import main

    damage, words = BROKEN[case]
    broken = _broken_copy(exports("bahdanau")[1], tmp_path, "broken")
    damage(broken)
    source = tmp_path / "in.fr"
    source.write_text("le chat\n", encoding="utf-8")
    assert main(["translate", "--engine", "onnx", str(broken), "-i", str(source)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_export_of_a_run_without_weights_exits_2(exports, tmp_path, capsys):
    from nmt.cli import main

    run = tmp_path / "run"
    shutil.copytree(exports("bahdanau")[0], run)
    shutil.rmtree(run / "checkpoints")
    assert main(["export", str(run), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "checkpoints" in err and "--checkpoint" in err and "nmt train" in err
    assert not (tmp_path / "out" / "export.json").exists()


def test_torch_only_options_are_refused_with_the_onnx_engine(exports, capsys):
    from nmt.cli import main

    run, export = exports("bahdanau")
    for extra, word in ((["--precision", "bf16"], "--precision bf16"),
                        (["--shortlist", "5"], "--shortlist"), (["--kernels", "reference"], "--kernels")):
        assert main(["translate", "--engine", "onnx", str(export), *extra]) == 2
        assert word in capsys.readouterr().err
    assert main(["translate", "--engine", "onnx", str(run)]) == 2  # a run directory, not an export
    assert "export.json" in capsys.readouterr().err


def test_cli_without_torch_writes_what_the_torch_engine_writes(exports, tmp_path):
    """`nmt export` then `nmt translate --engine onnx` in a process where torch cannot be imported:
    one line per input line, in order (empty and junk lines included), equal to the torch engine's."""
    from nmt.cli import main

    run, _ = exports("local-p")
    export = tmp_path / "export"
    assert main(["export", str(run), "-o", str(export)]) == 0
    source = tmp_path / "in.fr"
    lines = corpus(25, 13) + ["", "le chat\x1b[0m", " ".join(FR * 2)]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    reference = tmp_path / "ref.en"
    reference.write_text("".join(f"the cat {i}\n" for i in range(len(lines))), encoding="utf-8")
    for extra in ([], ["--greedy"], ["--n-best", "2", "--length-penalty", "0.5"], ["--alignments"],
                  ["--score-reference", str(reference)]):
        want, have = tmp_path / "torch.en", tmp_path / "onnx.en"
        assert main(["translate", str(run), "-i", str(source), "-o", str(want), *extra]) == 0
        out = _run_without_torch(
            "from nmt.cli import main\n"
            "code = main(sys.argv[1:])\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n"
            "sys.exit(code)\n",
            "translate", "--engine", "onnx", str(export), "-i", str(source), "-o", str(have), *extra)
        assert out.returncode == 0, out.stderr[-3000:]
        if extra[:1] == ["--score-reference"]:  # float32 sums: equal up to their last digits
            assert [float(x) for x in have.read_text(encoding="utf-8").splitlines()] == pytest.approx(
                [float(x) for x in want.read_text(encoding="utf-8").splitlines()], rel=1e-6)
        else:
            assert have.read_text(encoding="utf-8") == want.read_text(encoding="utf-8")
        assert len(have.read_text(encoding="utf-8").splitlines()) == len(lines) * (2 if extra[:1] == ["--n-best"] else 1)


@pytest.mark.slow
def test_cli_workers_write_what_one_process_writes(exports, tmp_path):
    """--engine onnx --workers 2: each worker translates its share of every chunk (shard), the
    output is one process's, n-best included."""
    from nmt.cli import main

    _, export = exports("bahdanau")
    source = tmp_path / "in.fr"
    lines = corpus(25, 17) + ["", "le chat", " ".join(FR * 2), ""]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for extra in ([], ["--n-best", "2"]):
        one, two = tmp_path / "one.en", tmp_path / "two.en"
        common = ["translate", "--engine", "onnx", str(export), "-i", str(source), "--batch-tokens", "60", *extra]
        assert main([*common, "-o", str(one)]) == 0
        assert main([*common, "-o", str(two), "--workers", "2"]) == 0
        assert two.read_bytes() == one.read_bytes()
        assert len(one.read_text(encoding="utf-8").splitlines()) == len(lines) * (2 if extra else 1)


@pytest.mark.parametrize("search", [dict(beam=1), dict(beam=3, n_best=2), dict(sample=True, n_best=2, seed=4)],
                         ids=["greedy", "beam-nbest", "sampling"])
def test_parts_on_threads_translate_as_one_search_at_a_time(exports, monkeypatch, search):
    """decode.inter_threads on onnxruntime: each batch's parts, searched side by side on sessions of
    one thread each, give each sentence what the same parts give searched one at a time."""
    import threading

    import nmt.inference.onnx_translator as onnx_translator
    from nmt.inference.inter_threads import split_batches
    from nmt.inference.onnx_translator import OnnxTranslator

    _, export = exports("bahdanau")
    translator = OnnxTranslator.load(export, threads=2)
    items = translator.encode(corpus(40, 21, max_words=9))
    batches = translator.batches(items, beam=search.get("beam", 1), batch_tokens=120)
    assert len(batches) > 1
    alone = OnnxTranslator.load(export, threads=1)  # the sessions each part thread runs on
    one_at_a_time = alone.search_batches(split_batches(batches, 2), alone.decode_options(**search, inter_threads=1))
    threads, original = set(), onnx_translator.search

    def spy(model, *args, **kwargs):
        threads.add((threading.get_ident(), model))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(onnx_translator, "search", spy)
    parallel = translator.search_batches(batches, translator.decode_options(**search, inter_threads=2))
    assert len({ident for ident, _ in threads}) == 2
    assert {model for _, model in threads} == {translator.model} == {translator._sessions(1)}  # loaded
    assert parallel == one_at_a_time
    threads.clear()
    translator.search_batches(batches, translator.decode_options(**search, inter_threads=1))
    # one at a time: sessions of both threads, made for it, on the calling thread
    assert threads == {(threading.get_ident(), translator._sessions(2))} and translator._sessions(2) is not translator.model


def test_the_graphs_are_loaded_once_for_the_default_settings(exports):
    """With ``decode.inter_threads: auto`` the translator searches and scores in parts on one-thread
    sessions: those are the only sessions it loads (a second copy of the graphs only for a call
    that asks for one search at a time), and scoring in parts gives one-thread scores."""
    from nmt.inference.onnx_translator import OnnxTranslator

    _, export = exports("bahdanau")
    translator = OnnxTranslator.load(export, threads=2)
    lines = corpus(24, 5, max_words=9)
    hyps = translator.translate(lines)
    scores = translator.score(lines, hyps)
    assert list(translator._models) == [1]
    alone = OnnxTranslator.load(export, threads=1)
    assert hyps == alone.translate(lines) and scores == alone.score(lines, hyps)
    translator.translate(lines, inter_threads=1)
    assert sorted(translator._models) == [1, 2]


def test_shortlist_search_equals_torch_shortlist_search(tmp_path, random_run):
    """An export carries the run's lexicon; a shortlist search over it gives the torch engine's
    hypotheses and scores (log-probabilities normalised over the batch's shortlist)."""
    from nmt.inference.onnx_translator import OnnxTranslator
    from nmt.inference.shortlist import LEXICON_FILE, Lexicon, id_list_chunks
    from nmt.inference.translator import Translator
    from nmt.tools.export import export_run

    run = build_run(tmp_path / "run", "luong-general", random_run)
    rng = random.Random(3)
    src = [[rng.randrange(4, 34) for _ in range(rng.randint(1, 6))] for _ in range(300)]
    tgt = [[rng.randrange(4, 26) for _ in range(rng.randint(1, 6))] for _ in range(300)]
    Lexicon.build(id_list_chunks(src, tgt), 34, 26, iterations=2, keep=4).save(run / LEXICON_FILE)
    export = export_run(run, tmp_path / "export")
    assert (export / LEXICON_FILE).is_file()
    torch_t = Translator.load(run, device="cpu")
    onnx_t = OnnxTranslator.load(export, threads=1)
    texts = corpus(20, 13)
    for settings in (dict(beam=1), dict(beam=3, n_best=2, no_repeat_ngram=2)):
        want = torch_t.translate(texts, return_scores=True, shortlist=2, shortlist_frequent=3, **settings)
        have = onnx_t.translate(texts, return_scores=True, shortlist=2, shortlist_frequent=3, **settings)
        full = onnx_t.translate(texts, return_scores=True, **settings)
        assert [[x.tokens for x in r.hypotheses] for r in have] == [[x.tokens for x in r.hypotheses] for r in want]
        for w, h in zip(want, have):
            assert [x.score for x in h.hypotheses] == pytest.approx([x.score for x in w.hypotheses], abs=5e-5)
        assert [r.hypotheses[0].score for r in full] != pytest.approx([r.hypotheses[0].score for r in have])


def test_shortlist_step_scores_only_the_shortlist_and_an_older_export_still_works(exports, tmp_path):
    """The shortlist step graph gives the logits of the columns asked for: normalised over them they
    equal the full step's log-probabilities renormalised over the same columns, with the same state
    and attention. An export made before that graph existed (export.json without it) translates
    over a shortlist as one with it does."""
    from nmt.inference.onnx_translator import OnnxTranslator, pad_sources
    from nmt.inference.shortlist import LEXICON_FILE, Lexicon, id_list_chunks

    run, export = exports("bahdanau")
    translator = OnnxTranslator.load(export, threads=1)
    model = translator.model
    assert model.shortlist_decoder is not None
    sources = _sources(translator.tokenizers, 6)
    src, lengths = pad_sources(sources)
    state, memory = model.encode(src, lengths)
    prev = np.full(len(sources), 2, dtype=np.int64)
    columns = np.array([0, 1, 2, 3, 5, 9, 17, 20], dtype=np.int64)
    log_probs, full_state, full_att, _ = model.step(prev, state, memory)
    logits, cut_state, cut_att, _ = model.step_columns(prev, columns, state, memory)
    assert logits.shape == (len(sources), columns.size)

    def renormalised(x):
        return x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)

    np.testing.assert_allclose(renormalised(logits), renormalised(log_probs[:, columns]), atol=2e-5)
    np.testing.assert_allclose(cut_att, full_att, atol=1e-6)
    for name in model.state_names:
        np.testing.assert_allclose(cut_state[name], full_state[name], atol=1e-6)

    # an older export: no shortlist step in export.json (nor on disk)
    rng = random.Random(3)
    src_ids = [[rng.randrange(4, 34) for _ in range(rng.randint(1, 6))] for _ in range(300)]
    tgt_ids = [[rng.randrange(4, 26) for _ in range(rng.randint(1, 6))] for _ in range(300)]
    with_lexicon = tmp_path / "export"
    shutil.copytree(export, with_lexicon)
    Lexicon.build(id_list_chunks(src_ids, tgt_ids), 34, 26, iterations=2, keep=4).save(with_lexicon / LEXICON_FILE)
    meta = json.loads((with_lexicon / "export.json").read_text())
    meta["lexicon"] = LEXICON_FILE
    meta["sha256"].pop("decoder_step_shortlist.onnx")
    (with_lexicon / "export.json").write_text(json.dumps(meta))
    older = tmp_path / "older"
    shutil.copytree(with_lexicon, older)
    (older / "decoder_step_shortlist.onnx").unlink()
    meta.pop("decoder_step_shortlist")
    (older / "export.json").write_text(json.dumps(meta))
    new_t, old_t = OnnxTranslator.load(with_lexicon, threads=1), OnnxTranslator.load(older, threads=1)
    assert old_t.model.shortlist_decoder is None
    texts = corpus(20, 13)
    for settings in (dict(beam=1), dict(beam=3, n_best=2)):
        want = old_t.translate(texts, return_scores=True, shortlist=2, shortlist_frequent=3, **settings)
        have = new_t.translate(texts, return_scores=True, shortlist=2, shortlist_frequent=3, **settings)
        assert [[x.tokens for x in r.hypotheses] for r in have] == [[x.tokens for x in r.hypotheses] for r in want]
        for w, h in zip(want, have):
            assert [x.score for x in h.hypotheses] == pytest.approx([x.score for x in w.hypotheses], abs=5e-5)


def test_an_export_decodes_over_the_recipes_shortlist_when_it_holds_the_lexicon(tmp_path, random_run):
    """The export of a run whose recipe has a shortlist decodes over it by default, as the run
    does, when the run has a lexicon to copy; without one it scores the full vocabulary."""
    import yaml

    from nmt.inference.onnx_translator import OnnxTranslator
    from nmt.inference.shortlist import LEXICON_FILE, Lexicon, id_list_chunks
    from nmt.inference.translator import Translator
    from nmt.tools.export import export_run

    run = build_run(tmp_path / "run", "bahdanau", random_run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["decode"].update(shortlist=2, shortlist_frequent=3)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    bare = export_run(run, tmp_path / "bare")  # no lexicon yet
    assert OnnxTranslator.load(bare, threads=1).decode_options().shortlist == 0
    rng = random.Random(3)
    src = [[rng.randrange(4, 34) for _ in range(rng.randint(1, 6))] for _ in range(300)]
    tgt = [[rng.randrange(4, 26) for _ in range(rng.randint(1, 6))] for _ in range(300)]
    Lexicon.build(id_list_chunks(src, tgt), 34, 26, iterations=2, keep=4).save(run / LEXICON_FILE)
    onnx_t = OnnxTranslator.load(export_run(run, tmp_path / "export"), threads=1)
    assert onnx_t.decode_options().shortlist == 2
    texts = corpus(12, 5)
    default = onnx_t.translate(texts, return_scores=True)
    run_default = Translator.load(run, device="cpu").translate(texts, return_scores=True)
    full = onnx_t.translate(texts, return_scores=True, shortlist=0)
    assert [r.hypotheses[0].tokens for r in default] == [r.hypotheses[0].tokens for r in run_default]
    assert [r.hypotheses[0].score for r in default] == pytest.approx([r.hypotheses[0].score for r in run_default],
                                                                     abs=5e-5)
    assert [r.hypotheses[0].score for r in full] != pytest.approx([r.hypotheses[0].score for r in default])


def test_sampling_runs_the_shared_sampler(exports, tmp_path):
    """Sampling on the ONNX engine: reproducible per line whatever the batch, different with
    another seed; top_k=1 is greedy search (the torch engine's tokens)."""
    from nmt.inference.onnx_translator import OnnxTranslator
    from nmt.inference.translator import Translator

    run, export = exports("bahdanau")
    onnx_t = OnnxTranslator.load(export, threads=1)
    texts = corpus(16, 17)
    drawn = onnx_t.translate(texts, sample=True, seed=4, n_best=2, return_scores=True)
    assert [[h.text for h in r.hypotheses] for r in drawn] == [
        [h.text for h in onnx_t.translate([t], sample=True, seed=4, n_best=2, lines=[i + 1],
                                          return_scores=True)[0].hypotheses] for i, t in enumerate(texts)]
    for r in drawn:
        assert [h.score for h in r.hypotheses] == sorted((h.score for h in r.hypotheses), reverse=True)
    assert onnx_t.translate(texts, sample=True, seed=5) != onnx_t.translate(texts, sample=True, seed=4)
    assert onnx_t.translate(texts, sample=True, seed=4) != onnx_t.translate(texts, beam=1)
    greedy = Translator.load(run, device="cpu").translate(texts, beam=1)
    assert onnx_t.translate(texts, sample=True, top_k=1) == greedy
    assert onnx_t.translate(texts, sample=True, top_p=1e-6) == greedy
    from nmt.cli import main

    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["translate", "--engine", "onnx", str(export), "-i", str(tmp_path / "in.txt"),
                 "-o", str(tmp_path / "out.txt"), "--sample", "--seed", "4"]) == 0
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines() == \
        onnx_t.translate(texts, sample=True, seed=4)


def test_bench_translate_measures_an_export_beside_the_run(tiny_run, tmp_path, capsys):
    """`nmt bench translate --engine onnx EXPORT`: the export's speed and quality on the run's split,
    the same sentences and BLEU as the torch engine in float32; options an export cannot honour exit 2."""
    from nmt.cli import main
    from nmt.tools.export import export_run

    export = export_run(tiny_run, tmp_path / "export")
    records = {}
    for engine, path, extra in (("torch", tiny_run, ["--precision", "float32"]), ("onnx", export, [])):
        capsys.readouterr()
        assert main(["bench", "translate", "--engine", engine, str(path), "--split", "test", "--beam", "2",
                     "--json", *extra]) == 0
        records[engine] = json.loads(capsys.readouterr().out)
    torch_record, onnx_record = records["torch"], records["onnx"]
    assert onnx_record["engine"] == "onnx" and onnx_record["precision"] == "float32"
    assert onnx_record["kernels"] is None and onnx_record["sentences_per_s"] > 0
    assert onnx_record["sentences"] == torch_record["sentences"] > 0
    assert onnx_record["bleu"] == torch_record["bleu"] and onnx_record["chrf"] == torch_record["chrf"]
    from nmt.inference.precision_auto import cpu_description

    assert torch_record["machine"]["cpu"] == onnx_record["machine"]["cpu"] == cpu_description()  # the host, named
    for extra, word in ((["--precision", "bf16"], "--precision bf16"), (["--kernels", "reference"], "--kernels"),
                        (["--batch-sentences", "8"], "--batch-sentences"), (["--checkpoint", "last"], "--checkpoint")):
        assert main(["bench", "translate", "--engine", "onnx", str(export), *extra]) == 2
        assert word in capsys.readouterr().err
    assert main(["bench", "translate", "--engine", "onnx", str(export), str(export)]) == 2
    assert "one export directory" in capsys.readouterr().err
