"""Translator API and ``nmt translate``: order, empty/long/junk lines, n-best and scoring formats,
atomic output, streaming in chunks, quantization, and the 2-process run equal to the 1-process one.

A tiny run directory (sentencepiece models trained on generated sentences, a random model with
enlarged weights so that outputs vary) is built once per session.
"""
from __future__ import annotations

import io
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nmt.inference.translator as tr
import nmt.tools.line_io as line_io
from nmt.cli import main
from nmt.config import (
    AttentionConfig,
    DecodeConfig,
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
)
from nmt.data.vocab import EOS_ID
from nmt.errors import NmtError
from nmt.inference.alignment import word_alignment
from nmt.inference.search import pad_sources, score_targets
from nmt.inference.translator import Translator, clean_source
from nmt.tools.bench import decode_split_timed

FR = "le la chat chien maison rouge bleu petit grand mange dort voit un une et".split()
EN = "the cat dog house red blue small big eats sleeps sees a and".split()
MAX_INPUT_LEN = 12


def corpus(n: int, seed: int, words=FR, max_words: int = 6) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


def build_run(run: Path, make_random_run, kind: str = "bahdanau", seed: int = 0) -> Path:
    """A run directory with sentencepiece models and a random model with self-attention and AReLU."""
    model_cfg = ModelConfig(
        embedding_dim=12, dropout=0.0, activation="arelu",
        encoder=EncoderConfig(hidden_size=8, dropout=0.0, self_attention_layers=1,
                              self_attention_heads=2, self_attention_ff_size=16),
        decoder=DecoderConfig(hidden_size=16, dropout=0.0),
        attention=AttentionConfig(kind=kind, window=2 if kind == "local-p" else None))
    return make_random_run(run, model_cfg, corpus(200, 0), corpus(200, 1, EN), src_vocab=30,
                           tgt_vocab=22, eos_bias=4.0, seed=seed, max_input_len=MAX_INPUT_LEN)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, random_run) -> Path:
    return build_run(tmp_path_factory.mktemp("translate") / "run", random_run)


@pytest.fixture(scope="session")
def local_run(tmp_path_factory, random_run) -> Path:
    return build_run(tmp_path_factory.mktemp("translate-localp") / "run", random_run, kind="local-p", seed=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def translator(run_dir) -> Translator:
    return Translator.load(run_dir, device="cpu")


SOURCES = corpus(12, 7) + ["le chat", "une maison rouge et un chien bleu"]


# ----------------------------------------------------------------------------------------- API

def test_translate_returns_strings_in_input_order(translator):
    together = translator.translate(SOURCES)
    assert isinstance(together, list) and len(together) == len(SOURCES)
    assert all(isinstance(t, str) for t in together)
    assert len(set(together)) > 3  # the fixture model does not say the same thing to everything
    # batching (length-sorted, several batches) changes nothing: one by one gives the same
    alone = [translator.translate([s])[0] for s in SOURCES]
    assert together == alone
    assert translator.translate(SOURCES, batch_tokens=10) == together


def test_attributes(translator, run_dir):
    assert translator.attention_kind == "bahdanau"
    assert translator.recipe.decode.beam == 3
    assert translator.model.training is False
    assert translator.tokenizers.tgt_vocab_size == 22
    with pytest.raises(TypeError):
        translator.translate("le chat")


def test_decode_settings_are_given_explicitly_and_the_recipe_stays_as_loaded(run_dir):
    """``decode=`` replaces the recipe's decode section as the defaults; the recipe is not changed."""
    translator = Translator.load(run_dir, device="cpu")  # its own: the warnings it prints are counted
    settings = translator.recipe.decode.updated(beam=1, max_len_b=3)
    assert isinstance(settings, DecodeConfig)
    greedy = Translator.load(run_dir, device="cpu", decode=settings)
    assert greedy.recipe.decode == translator.recipe.decode and greedy.recipe.decode.beam == 3
    assert greedy.decode.beam == 1 and greedy.decode_options().max_len_b == 3
    assert greedy.translate(SOURCES) == translator.translate(SOURCES, beam=1, max_len_b=3)
    assert greedy.translate(SOURCES, beam=3, max_len_b=translator.recipe.decode.max_len_b) \
        == translator.translate(SOURCES)
    greedy.decode = None  # back to the recipe's
    assert greedy.translate(SOURCES) == translator.translate(SOURCES)


def test_nbest_results(translator):
    results = translator.translate(SOURCES[:6], beam=4, n_best=3, return_attention=True)
    finished = 0
    for src, res in zip(SOURCES, results):
        assert res.source == src
        assert len(res.hypotheses) == 3
        scores = [h.score for h in res.hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in res.hypotheses}) == 3
        for h in res.hypotheses:
            assert h.src_tokens[-1] == "</s>"
            assert h.src_tokens[:-1] == translator.tokenizers.src_pieces(src)[:MAX_INPUT_LEN]
            assert h.attention.shape == (len(h.tokens), len(h.src_tokens))
            assert len(h.token_log_probs) == len(h.tokens)
            assert sum(h.token_log_probs) == pytest.approx(h.raw_score, abs=1e-4)
            assert "</s>" not in h.tokens[:-1]
            finished += h.tokens[-1] == "</s>"
        assert res.text == res.hypotheses[0].text
    assert finished > 0


def test_reported_scores_equal_forced_decoding_and_score(translator):
    """Translation scores = teacher-forced log-probabilities of the same ids; t.score() = the same
    forced decoding of the tokenized reference text."""
    results = translator.translate(SOURCES, beam=3, n_best=3, return_scores=True)
    tok = translator.tokenizers
    items = translator.encode(SOURCES)
    srcs, targets, expected = [], [], []
    for item, res in zip(items, results):
        for h in res.hypotheses:
            srcs.append(item.ids)
            targets.append([tok.tgt.piece_to_id(p) for p in h.tokens])
            expected.append(h.raw_score)
            assert h.score == pytest.approx(h.raw_score)  # no penalties configured
    src, lengths, mask = pad_sources(srcs)
    forced, _ = score_targets(translator.model, src, lengths, mask, targets, add_eos=False)
    assert forced == pytest.approx(expected, abs=1e-4)

    texts = [r.hypotheses[0].text for r in results]
    scored, per_token = translator.score(SOURCES, texts, return_token_log_probs=True)
    assert translator.score(SOURCES, texts) == scored
    ref_ids = tok.encode_tgt(texts)
    src, lengths, mask = pad_sources([it.ids for it in items])
    direct, _ = score_targets(translator.model, src, lengths, mask, ref_ids, add_eos=True)
    assert scored == pytest.approx(direct, abs=1e-4)
    assert [len(t) for t in per_token] == [len(ids) + 1 for ids in ref_ids]
    for item, res, value in zip(items, results, scored):
        h = res.hypotheses[0]
        if h.tokens[-1] == "</s>" and tok.encode_tgt([h.text])[0] + [EOS_ID] == \
                [tok.tgt.piece_to_id(p) for p in h.tokens]:
            assert value == pytest.approx(h.raw_score, abs=1e-4)  # round trip: the very same ids


def test_nbest_widens_the_default_beam(translator):
    (res,) = translator.translate(["le chat"], n_best=5)  # the recipe's beam is 3
    assert len(res.hypotheses) == 5
    with pytest.raises(NmtError, match="n_best"):
        translator.translate(["le chat"], beam=2, n_best=5)


def test_score_checks_lengths_and_handles_empty(translator):
    with pytest.raises(NmtError, match="2 sources but 1 targets"):
        translator.score(["a", "b"], ["x"])
    scores = translator.score(["", "le chat"], ["the cat", ""])
    assert len(scores) == 2 and all(s < 0 for s in scores)


def test_empty_lines_are_not_translated(translator, monkeypatch):
    seen = []
    original = tr.search

    def spy(model, src, lengths, mask, options, lexicon=None, return_attention=False, **more):
        seen.extend(lengths.tolist())
        return original(model, src, lengths, mask, options, lexicon, return_attention, **more)

    monkeypatch.setattr(tr, "search", spy)
    out = translator.translate(["", "le chat", "   ", "\x00\x01", "\t"])
    assert out[0] == out[2] == out[3] == out[4] == ""
    assert len(seen) == 1 and min(seen) >= 2
    seen.clear()
    assert translator.translate(["", " "]) == ["", ""] and seen == []
    rich = translator.translate(["", "le chat"], n_best=2, beam=2)
    assert rich[0].hypotheses[0].text == "" and rich[0].hypotheses[0].score == 0.0


def test_long_line_truncated_with_warning(translator, capsys):
    long_line = " ".join(["maison rouge"] * 20)
    results = translator.translate(["le chat", long_line], return_attention=True)
    err = capsys.readouterr().err
    assert "line 2:" in err and "truncated" in err and "line 1:" not in err
    hyp = results[1].hypotheses[0]
    assert len(hyp.src_tokens) == MAX_INPUT_LEN + 1
    assert hyp.attention.shape[1] == MAX_INPUT_LEN + 1


def test_clean_source():
    assert clean_source("  a\x00b\x1b[0m\tc\r\n") == "ab[0m c"
    assert clean_source("e\u0301t\u00e9") == "\u00e9t\u00e9"  # NFC
    assert clean_source("x\ud800y\ufffe") == "xy"  # lone surrogate, non-character
    assert clean_source("ﬁ", "NFKC") == "fi" and clean_source("ﬁ", "none") == "ﬁ"
    assert clean_source("\x85\u2028") == ""  # NEL control and line separator: whitespace only


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=30),
                          st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=30),
                          st.sampled_from(["", " ", "\x00", "\ud800", "le chat", "\u2028"])),
                max_size=6))
def test_any_unicode_keeps_line_count(translator, lines):
    out = translator.translate(lines, beam=1, max_len_a=0.0, max_len_b=3)
    assert len(out) == len(lines)
    assert all(isinstance(t, str) for t in out)
    for line, text in zip(lines, out):
        if not clean_source(line):
            assert text == ""


def test_encoder_self_attention_and_activation_parameters(translator):
    maps = translator.encoder_self_attention("le chat mange")
    n = len(translator.tokenizers.src_pieces("le chat mange")) + 1
    assert maps.shape == (1, 2, n, n)
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, 2, n))
    assert translator.encoder_self_attention("") is None
    params = translator.learned_activation_parameters()
    assert params and all("alpha" in p and "beta" in p for p in params.values())


def test_local_p_positions(local_run):
    t = Translator.load(local_run, device="cpu")
    assert t.attention_kind == "local-p"
    (res,) = t.translate(["le petit chat mange"], beam=2, return_attention=True)
    h = res.hypotheses[0]
    assert h.positions.shape == (len(h.tokens),)
    assert ((h.positions >= 0) & (h.positions <= len(h.src_tokens) - 1)).all()


def test_int8_on_the_torch_engine_is_refused_naming_the_onnx_export(run_dir, tmp_path, capsys):
    from nmt.cli import main
    from nmt.errors import NmtError

    with pytest.raises(NmtError, match="nmt export .*--quantize int8"):
        Translator.load(run_dir, quantize=True)
    for argv in (["translate", str(run_dir), "--quantize"], ["bench", "translate", str(run_dir), "--quantize"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "--quantize int8, then nmt translate --engine onnx" in capsys.readouterr().err


def test_decode_split_timed(translator):
    expected = translator.translate(SOURCES, beam=2)
    for kwargs in ({}, {"batch_tokens": 16}, {"batch_sentences": 3}):
        hyps, seconds, n_tokens = decode_split_timed(translator, SOURCES, 2, **kwargs)
        assert hyps == expected and seconds > 0
        assert n_tokens >= len(SOURCES)  # at least one token (EOS) per sentence


# ----------------------------------------------------------------------------------------- CLI

def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def cli(*argv: str) -> int:
    return main(["translate", *map(str, argv)])


LINES = ["le chat", "", "un chien rouge", " ".join(["maison bleue"] * 15), "\x00\x1b", "la maison"]


def test_cli_line_alignment(run_dir, tmp_path, translator, capsys):
    # CRLF, undecodable bytes, a form feed and U+2028 inside lines: none of them splits a line
    data = ("\n".join(LINES) + "\r\n").encode() + b"un \xff\xfe chien\n" + "le\x0cchat\u2028et\n".encode()
    src = write_bytes(tmp_path / "in.txt", data)
    out = tmp_path / "sub" / "out.txt"
    assert cli(run_dir, "-i", src, "-o", out) == 0
    got = out.read_text(encoding="utf-8").split("\n")
    assert got[-1] == "" and len(got) - 1 == len(LINES) + 2
    expected = translator.translate(LINES + ["un \ufffd\ufffd chien", "le\x0cchat\u2028et"])
    assert got[:-1] == expected
    assert got[1] == "" and got[4] == ""
    err = capsys.readouterr().err
    assert "line 4" in err and "truncated" in err  # the long line
    assert "line 7" in err and "UTF-8" in err  # the undecodable bytes
    assert oct(out.stat().st_mode & 0o777) != "0o600"  # not the temp file's private mode
    assert [p.name for p in out.parent.iterdir()] == ["out.txt"]


def test_cli_stdin_stdout_and_last_line_without_newline(run_dir, monkeypatch, capsysbinary, translator):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"le chat\n\nla maison")))
    assert cli(run_dir, "--beam", "2") == 0
    out = capsysbinary.readouterr().out.decode()
    assert out.split("\n") == translator.translate(["le chat", "", "la maison"], beam=2) + [""]


def test_cli_chunks_give_the_same_output(run_dir, tmp_path, monkeypatch):
    src = write_bytes(tmp_path / "in.txt", "\n".join(SOURCES + LINES).encode() + b"\n")
    assert cli(run_dir, "-i", src, "-o", tmp_path / "a.txt") == 0
    monkeypatch.setattr(line_io, "CHUNK_LINES", 4)
    assert cli(run_dir, "-i", src, "-o", tmp_path / "b.txt", "--n-best", "1") == 0
    assert cli(run_dir, "-i", src, "-o", tmp_path / "c.txt") == 0
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "c.txt").read_bytes()
    # many small batches per chunk: the same lines again
    assert cli(run_dir, "-i", src, "-o", tmp_path / "d.txt", "--batch-tokens", "10") == 0
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "d.txt").read_bytes()
    b_lines = (tmp_path / "b.txt").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in b_lines] == list(range(len(SOURCES + LINES)))


def test_cli_nbest_format(run_dir, tmp_path, translator):
    src = write_bytes(tmp_path / "in.txt", "\n".join(["le chat", "", "la maison rouge"]).encode() + b"\n")
    out = tmp_path / "nbest.txt"
    assert cli(run_dir, "-i", src, "-o", out, "--beam", "3", "--n-best", "3") == 0
    rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 9 and all(len(r) == 3 for r in rows)
    assert [int(r[0]) for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert rows[3][1:] == ["0.0000", ""] and rows[4][1:] == ["-inf", ""] and rows[5][1:] == ["-inf", ""]
    expected = translator.translate(["le chat", "", "la maison rouge"], beam=3, n_best=3)
    for i, res in enumerate(expected):
        if i == 1:
            continue
        block = rows[3 * i: 3 * i + 3]
        assert [r[2] for r in block] == [h.text for h in res.hypotheses]
        assert [float(r[1]) for r in block] == pytest.approx([h.score for h in res.hypotheses], abs=1e-4)
        assert [float(r[1]) for r in block] == sorted((float(r[1]) for r in block), reverse=True)


def test_cli_score_reference(run_dir, tmp_path, translator, capsys):
    srcs, refs = ["le chat", "", "la maison"], ["the cat", "a", ""]
    src = write_bytes(tmp_path / "in.txt", "\n".join(srcs).encode() + b"\n")
    ref = write_bytes(tmp_path / "ref.txt", "\n".join(refs).encode() + b"\n")
    out = tmp_path / "scores.txt"
    assert cli(run_dir, "-i", src, "--score-reference", ref, "-o", out) == 0
    got = [float(x) for x in out.read_text().splitlines()]
    assert got == pytest.approx(translator.score(srcs, refs), abs=1e-5)

    short = write_bytes(tmp_path / "short.txt", b"the cat\n")
    assert cli(run_dir, "-i", src, "--score-reference", short, "-o", tmp_path / "x.txt") == 2
    err = capsys.readouterr().err
    assert str(src) in err and str(short) in err and "3 lines" in err and "1" in err
    assert not (tmp_path / "x.txt").exists()
    # stdin input (no counting beforehand): detected while streaming
    assert line_io.read_chunk(iter(["a"]), iter(["x", "y"]), 0, "stdin", "ref.txt") == {"src": ["a"], "ref": ["x"]}
    with pytest.raises(NmtError, match="stdin has 1 lines but ref.txt has more"):
        line_io.read_chunk(iter([]), iter(["y"]), 1, "stdin", "ref.txt")
    with pytest.raises(NmtError, match="only 1 lines"):
        line_io.read_chunk(iter(["a", "b"]), iter(["x"]), 0, "stdin", "ref.txt")


def test_reference_scores_agree_across_threads_and_shards_to_the_documented_precision(translator):
    """The number of threads (and of processes, each scoring a share) changes the order of float32
    additions, not the score beyond about 1e-6 relative (nmt.tools.translate's docstring)."""
    srcs = corpus(40, 11, max_words=9)
    refs = corpus(40, 12, EN, max_words=9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = translator.score(srcs, refs)
        torch.set_num_threads(2)
        two = translator.score(srcs, refs)
        shares = [translator.score(srcs, refs, shard=(rank, 2)) for rank in range(2)]
    finally:
        torch.set_num_threads(threads)
    sharded = [a if a is not None else b for a, b in zip(*shares)]
    assert two == pytest.approx(one, rel=1e-6, abs=1e-6)
    assert sharded == pytest.approx(one, rel=1e-6, abs=1e-6)


def test_cli_interrupted_output_leaves_no_file(run_dir, tmp_path, monkeypatch):
    src = write_bytes(tmp_path / "in.txt", "\n".join(SOURCES).encode() + b"\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.txt"
    monkeypatch.setattr(line_io, "CHUNK_LINES", 3)
    calls = []
    original = Translator.search_batches

    def failing(self, batches, options, return_attention=False):
        calls.append(1)
        if len(calls) == 3:  # two chunks written to the temporary file, then it breaks
            raise RuntimeError("simulated crash")
        return original(self, batches, options, return_attention)

    monkeypatch.setattr(Translator, "search_batches", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli(run_dir, "-i", src, "-o", out)
    assert list(out_dir.iterdir()) == []

    calls.clear()
    monkeypatch.setattr(Translator, "search_batches", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert cli(run_dir, "-i", src, "-o", out) == 130
    assert list(out_dir.iterdir()) == []


def test_cli_option_errors(run_dir, tmp_path, capsys):
    src = write_bytes(tmp_path / "in.txt", b"le chat\n")
    assert cli(run_dir, "-i", src, "--greedy", "--beam", "4") == 2
    assert "--greedy" in capsys.readouterr().err
    assert cli(run_dir, "-i", src, "--beam", "2", "--n-best", "3") == 2
    assert "n_best" in capsys.readouterr().err
    assert cli(run_dir, "-i", tmp_path / "missing.txt") == 2
    assert "missing.txt" in capsys.readouterr().err
    assert cli(run_dir, "-i", src, "--checkpoint", "last") == 2
    assert "last" in capsys.readouterr().err


def test_cli_checkpoint_path_and_greedy(run_dir, tmp_path, capsysbinary, translator):
    src = write_bytes(tmp_path / "in.txt", b"le chat\nla maison\n")
    weights = run_dir / "checkpoints" / "best.safetensors"
    assert cli(run_dir, "-i", src, "--checkpoint", weights, "--greedy") == 0
    out = capsysbinary.readouterr().out.decode().splitlines()
    assert out == translator.translate(["le chat", "la maison"], beam=1)


def test_kernels_reference_translates_as_auto(run_dir, tmp_path, capsysbinary, translator):
    """--kernels reference (the plain step, per-beam memory) finds what auto (kernels.search) finds."""
    plain = Translator.load(run_dir, device="cpu", kernels="reference")
    assert plain.recipe.model.kernels == "reference" and translator.recipe.model.kernels == "auto"
    for beam in (1, 3):
        fast_out = translator.translate(SOURCES, beam=beam, return_scores=True)
        plain_out = plain.translate(SOURCES, beam=beam, return_scores=True)
        assert [r.text for r in fast_out] == [r.text for r in plain_out]
        assert [r.hypotheses[0].score for r in fast_out] == pytest.approx(
            [r.hypotheses[0].score for r in plain_out], abs=1e-4)
    src = write_bytes(tmp_path / "in.txt", b"le chat\nla maison rouge\n")
    assert cli(run_dir, "-i", src, "--kernels", "reference") == 0
    assert capsysbinary.readouterr().out.decode().splitlines() == translator.translate(["le chat", "la maison rouge"])
    with pytest.raises(NmtError, match="kernels"):
        Translator.load(run_dir, kernels="fast")


def test_translator_keeps_its_own_copy_of_the_model(run_dir, translator):
    """Changing the caller's model afterwards (training it) reaches neither the weights nor what
    search derived from them."""
    model = translator.model
    copy = Translator(translator.recipe, translator.tokenizers, model, device="cpu")
    before = copy.translate(SOURCES)
    assert copy.model is not model and not any(p.requires_grad for p in copy.model.parameters())
    with torch.no_grad():
        saved = [p.clone() for p in model.parameters()]
        for p in model.parameters():
            p.mul_(-1.0)
    try:
        assert copy.translate(SOURCES) == before
    finally:
        with torch.no_grad():
            for p, old in zip(model.parameters(), saved):
                p.copy_(old)


# ------------------------------------------------------------------------------ subprocesses

def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_subprocess_stdin_stdout(run_dir, translator):
    lines = ["le chat", "", "un chien \x00 rouge", "la maison"]
    proc = subprocess.run([sys.executable, "-m", "nmt", "translate", str(run_dir)],
                          input="\n".join(lines).encode() + b"\n", capture_output=True, env=_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split("\n") == translator.translate(lines) + [""]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_two_processes_equal_one(run_dir, tmp_path, kernels):
    # long lines (truncated, with a warning from the process that translates them), small batches
    lines = corpus(25, 3, max_words=9) + ["", "le chat"]
    lines[1] = " ".join(["maison rouge"] * 10)
    src = write_bytes(tmp_path / "in.txt", "\n".join(lines).encode() + b"\n")
    common = ["-i", src, "--n-best", "2", "--batch-tokens", "40", "--kernels", kernels]
    assert cli(run_dir, *common, "-o", tmp_path / "one.txt") == 0
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "nmt", "translate",
                           str(run_dir), *map(str, common), "-o", str(tmp_path / "two.txt")],
                          capture_output=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert "[rank 1]: warning: line" in proc.stderr.decode()  # the second process translated a share
    one = (tmp_path / "one.txt").read_bytes()
    assert one.count(b"\n") == 2 * len(lines)
    assert (tmp_path / "two.txt").read_bytes() == one


def test_one_process_on_a_cpu_only_machine_skips_accelerate(monkeypatch):
    import torch

    from nmt.inference.devices import distributed_state

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if torch.accelerator.current_accelerator() is not None:
        pytest.skip("this machine has an accelerator: accelerate chooses the device")
    state = distributed_state()
    assert (state.num_processes, state.process_index, state.is_main_process) == (1, 0, True)
    assert state.device == torch.device("cpu")
    assert type(state).__module__ == "nmt.inference.devices"


def test_cli_decode_options_apply_onto_the_recipe(run_dir, tmp_path, capsysbinary):
    lines = ["une maison rouge et un chien bleu", "le chat"]
    src = write_bytes(tmp_path / "in.txt", ("\n".join(lines) + "\n").encode())
    assert cli(run_dir, "-i", src, "--max-input-len", "2", "--min-len", "2", "--beam", "2") == 0
    captured = capsysbinary.readouterr()
    assert b"truncated to the first 2 (decode.max_input_len)" in captured.err
    expected = Translator.load(run_dir, device="cpu")
    expected.recipe.decode.max_input_len = 2
    assert captured.out.decode().splitlines() == expected.translate(lines, beam=2, min_len=2)


def test_cli_decode_options_leave_the_loaded_recipe_unchanged(run_dir, tmp_path, capsysbinary, loaded_translators):
    """The flags are passed to each call; the recipe the run loaded keeps its own decode section."""
    loaded, load = loaded_translators, Translator.load
    src = write_bytes(tmp_path / "in.txt", b"le chat\nune maison rouge\n")
    assert cli(run_dir, "-i", src, "--beam", "2", "--length-penalty", "0.5", "--min-len", "2",
               "--shortlist-frequent", "7") == 0
    assert loaded[-1].recipe.decode == load(run_dir, device="cpu").recipe.decode
    expected = load(run_dir, device="cpu").translate(["le chat", "une maison rouge"], beam=2,
                                                      length_penalty=0.5, min_len=2)
    assert capsysbinary.readouterr().out.decode().splitlines() == expected


def test_bf16_weights_equal_autocast_over_float32_weights(run_dir, translator):
    """precision="bf16" holds Linear/GRU weights in bf16 (nmt.inference.precision); autocast would
    cast float32 weights to bf16 for the same GEMMs, so the search finds the same hypotheses. A
    float32 translator runs under an enclosing autocast (as validation of a bf16 training does)."""
    fast = Translator.load(run_dir, device="cpu", precision="bf16")
    assert {p.dtype for p in fast.model.output.parameters()} == {torch.bfloat16}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = translator.translate(SOURCES, beam=3, n_best=2, return_scores=True)
    held = fast.translate(SOURCES, beam=3, n_best=2, return_scores=True)
    plain = translator.translate(SOURCES, beam=3, n_best=2, return_scores=True)
    for a, b in zip(cast, held):
        assert [h.tokens for h in a.hypotheses] == [h.tokens for h in b.hypotheses]
        assert [h.score for h in a.hypotheses] == pytest.approx([h.score for h in b.hypotheses], abs=1e-3)
    # the enclosing autocast did take effect (bf16 scores are not the float32 ones)
    assert any(a.hypotheses[0].score != b.hypotheses[0].score for a, b in zip(cast, plain))


# ------------------------------------------------------------------------------------ sampling

def test_cli_sampling_is_reproducible_by_line(run_dir, tmp_path, monkeypatch, translator):
    """--sample --n-best K: K samples per line in the n-best format; the same seed gives the same
    file whatever the chunking and batching; another seed another file; the Python API agrees."""
    lines = SOURCES + LINES
    src = write_bytes(tmp_path / "in.txt", "\n".join(lines).encode() + b"\n")
    args = ["-i", src, "--sample", "--n-best", "3", "--temperature", "1.5", "--top-k", "10", "--top-p", "0.95"]
    assert cli(run_dir, *args, "--seed", "7", "-o", tmp_path / "a.txt") == 0
    monkeypatch.setattr(line_io, "CHUNK_LINES", 4)
    assert cli(run_dir, *args, "--seed", "7", "--batch-tokens", "10", "-o", tmp_path / "b.txt") == 0
    assert cli(run_dir, *args, "--seed", "8", "-o", tmp_path / "c.txt") == 0
    a, b, c = ([line.split("\t") for line in (tmp_path / name).read_text(encoding="utf-8").splitlines()]
               for name in ("a.txt", "b.txt", "c.txt"))
    # the same samples; scores equal up to the rounding of other batch shapes
    assert [(r[0], r[2]) for r in a] == [(r[0], r[2]) for r in b]
    assert [float(r[1]) for r in a] == pytest.approx([float(r[1]) for r in b], abs=1e-3)
    assert [r[2] for r in a] != [r[2] for r in c]
    rows = a
    assert len(rows) == 3 * len(lines)
    assert [int(r[0]) for r in rows] == [i for i in range(len(lines)) for _ in range(3)]
    results = translator.translate(lines, n_best=3, sample=True, temperature=1.5, top_k=10, top_p=0.95,
                                   seed=7)
    texts = [h.text for res in results for h in res.hypotheses]
    empty = lines.index("")
    assert [r[2] for r in rows[:3 * empty]] == texts[:3 * empty]
    assert rows[3 * empty][1:] == ["0.0000", ""] and rows[3 * empty + 1][1] == "-inf"
    # not all samples of a line are the same
    assert any(len({r[2] for r in rows[3 * i: 3 * i + 3]}) > 1 for i in range(len(SOURCES)))


def test_a_sentence_samples_the_same_alone_at_any_line_and_among_others(translator):
    """A sentence's samples depend on the seed and the sentence only: not on its line number, its
    batch or the other sentences (each samples from streams of (seed, its source ids))."""
    opts = dict(n_best=3, sample=True, temperature=1.5, seed=7, return_scores=True)

    def texts(results):
        return [[h.text for h in r.hypotheses] for r in results]

    lines = SOURCES + LINES
    together = texts(translator.translate(lines, **opts))
    alone = [texts(translator.translate([line], **opts))[0] for line in lines]
    assert together == alone
    assert texts(translator.translate(lines, lines=[100 + i for i in range(len(lines))], **opts)) == together
    assert texts(translator.translate(lines[::-1], **opts)) == together[::-1]
    # equal sentences draw equal samples; another seed draws others
    assert texts(translator.translate([SOURCES[0], SOURCES[0]], **opts)) == [together[0]] * 2
    assert texts(translator.translate(lines, **{**opts, "seed": 8})) != together


def test_cli_sampling_option_errors_write_nothing(run_dir, tmp_path, capsys):
    src = write_bytes(tmp_path / "in.txt", b"le chat\n")
    out = tmp_path / "out.txt"
    for bad, named in ((["--sample", "--beam", "4"], "--sample"), (["--sample", "--top-p", "0"], "--top-p"),
                       (["--sample", "--top-p", "1.5"], "--top-p"),
                       (["--sample", "--temperature", "0"], "--temperature"),
                       (["--sample", "--temperature", "-2"], "--temperature")):
        assert cli(run_dir, "-i", src, "-o", out, *bad) == 2
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err
        assert not out.exists()
    # sampling without --beam samples even though the recipe searches with beam 3
    assert cli(run_dir, "-i", src, "-o", out, "--sample") == 0


# ---------------------------------------------------------------------------------- alignments

PHARAOH = re.compile(r"^(\d+-\d+( \d+-\d+)*)?$")


def check_alignment(pairs, src_text: str, tgt_text: str) -> None:
    assert pairs == sorted(set(pairs))
    for i, j in pairs:
        assert 0 <= i < len(src_text.split()) and 0 <= j < len(tgt_text.split()), (pairs, src_text, tgt_text)


@pytest.mark.parametrize("opts", [{"beam": 1}, {"beam": 3, "n_best": 3}, {"sample": True, "n_best": 2}],
                         ids=["greedy", "beam", "sample"])
def test_alignments_from_the_hypothesis_attention(translator, opts):
    results = translator.translate(SOURCES + [""], return_alignment=True, **opts)
    with_att = translator.translate(SOURCES + [""], return_attention=True, **opts)
    aligned = 0
    for src, res, res_att in zip(SOURCES + [""], results, with_att):
        assert len(res.hypotheses) == opts.get("n_best", 1) or src == ""
        for h, h_att in zip(res.hypotheses, res_att.hypotheses):
            assert h.attention is None and h_att.alignment is None  # each only when asked for
            check_alignment(h.alignment, clean_source(src), h.text)
            if src:
                assert h.alignment == word_alignment(h_att.attention, h_att.src_tokens, h_att.tokens)
            aligned += len(h.alignment)
    assert aligned > len(SOURCES)
    assert results[-1].hypotheses[0].alignment == []


def test_cli_alignments_one_line_per_input_line(run_dir, tmp_path, translator):
    src = write_bytes(tmp_path / "in.txt", "\n".join(LINES + SOURCES).encode() + b"\n")
    out = tmp_path / "out.txt"
    assert cli(run_dir, "-i", src, "-o", out, "--alignments") == 0
    rows = [line.split("\t") for line in out.read_text(encoding="utf-8").split("\n")[:-1]]
    assert len(rows) == len(LINES + SOURCES) and all(len(r) == 2 for r in rows)
    assert [r[0] for r in rows] == translator.translate(LINES + SOURCES)
    assert rows[1] == ["", ""]  # the empty input line
    for line, (text, pairs) in zip(LINES + SOURCES, rows):
        assert PHARAOH.match(pairs), pairs
        check_alignment([tuple(map(int, p.split("-"))) for p in pairs.split()], clean_source(line), text)
    assert sum(bool(r[1]) for r in rows) >= len(SOURCES)

    assert cli(run_dir, "-i", src, "-o", out, "--alignments", "--beam", "3", "--n-best", "3") == 0
    nbest = [line.split("\t") for line in out.read_text(encoding="utf-8").split("\n")[:-1]]
    assert len(nbest) == 3 * len(LINES + SOURCES) and all(len(r) == 4 for r in nbest)
    assert [int(r[0]) for r in nbest] == [i for i in range(len(LINES + SOURCES)) for _ in range(3)]
    assert nbest[3][1:] == ["0.0000", "", ""] and nbest[4][1:] == ["-inf", "", ""]
    assert all(PHARAOH.match(r[3]) for r in nbest)


def test_cli_alignments_with_score_reference_is_refused(run_dir, tmp_path, capsys):
    src = write_bytes(tmp_path / "in.txt", b"le chat\n")
    assert cli(run_dir, "-i", src, "--alignments", "--score-reference", src, "-o", tmp_path / "o") == 2
    assert "--alignments" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- hostile outputs and inputs

def test_cli_output_to_a_device_a_fifo_and_a_symlink(run_dir, tmp_path, translator):
    """-o never replaces what is not a regular file: a device node and a FIFO are written into, a
    symlink's target is replaced (atomically) and the link kept."""
    import stat
    import threading

    src = write_bytes(tmp_path / "in.txt", b"le chat\nun chien rouge\n")
    expected = "".join(t + "\n" for t in translator.translate(["le chat", "un chien rouge"]))
    target = tmp_path / "target.txt"
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target.name)
    assert cli(run_dir, "-i", src, "-o", link) == 0
    assert link.is_symlink() and target.read_text() == expected

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert cli(run_dir, "-i", src, "-o", fifo) == 0
    reader.join(timeout=60)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and got == [expected.encode()]

    if os.geteuid() == 0:  # a null device of our own (never the real /dev/null)
        null = tmp_path / "null"
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        assert cli(run_dir, "-i", src, "-o", null) == 0
        assert stat.S_ISCHR(null.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_input_and_reference_may_be_pipes(run_dir, tmp_path, translator, capsysbinary):
    """-i and --score-reference take what a shell's <(command) gives: a pipe (a missing file and a
    directory are still refused by name)."""
    lines = ["le chat", "un chien rouge"]

    def pipe(data: bytes) -> str:
        read, write = os.pipe()
        threading = __import__("threading")
        threading.Thread(target=lambda: (os.write(write, data), os.close(write))).start()
        return f"/dev/fd/{read}"

    assert cli(run_dir, "-i", pipe(b"le chat\nun chien rouge\n")) == 0
    assert capsysbinary.readouterr().out.decode().splitlines() == translator.translate(lines)
    refs = ["the cat", "a red dog"]
    assert cli(run_dir, "-i", pipe(b"le chat\nun chien rouge\n"),
               "--score-reference", pipe(b"the cat\na red dog\n")) == 0
    scores = [float(x) for x in capsysbinary.readouterr().out.decode().split()]
    assert scores == pytest.approx(translator.score(lines, refs), abs=1e-5)
    assert cli(run_dir, "-i", pipe(b"le chat\nun chien rouge\n"), "--score-reference", pipe(b"the cat\n")) == 2
    assert "line-aligned" in capsysbinary.readouterr().err.decode()
    assert cli(run_dir, "-i", tmp_path) == 2
    assert "is a directory" in capsysbinary.readouterr().err.decode()


def test_an_over_long_line_is_cut_with_a_warning(tmp_path, capsys):
    """Memory per line is bounded: a line longer than the limit is read up to it (at a character
    boundary) and the rest skipped, with a warning naming the line."""
    from nmt.inference.sources import WarningCounter

    data = b"short\n" + "é".encode() * 50_001 + b"x\nnext\r\nlast"
    lines = list(line_io.iter_lines(io.BufferedReader(io.BytesIO(data), 4096), "in.txt",
                                     WarningCounter(), limit=1001))
    assert lines == ["short", "é" * 500, "next", "last"]
    err = capsys.readouterr().err
    assert "in.txt line 2: 100,003 bytes; only the first 1,000 are read" in err
    exact = list(line_io.iter_lines(io.BytesIO(b"abc\nabcd\n"), "x", WarningCounter(), limit=4))
    assert exact == ["abc", "abcd"] and "line" not in capsys.readouterr().err
    assert line_io.line_limit(250) == 1 << 16 and line_io.line_limit(10_000) == 640_000


@pytest.mark.slow
def test_a_20_mb_line_takes_bounded_memory(run_dir, tmp_path):
    src = write_bytes(tmp_path / "in.txt", b"le chat " * 2_500_000)
    script = ("import resource, runpy, sys; sys.argv = ['nmt', 'translate', sys.argv[1], '-i', sys.argv[2]]\n"
              "try:\n    runpy.run_module('nmt', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code, file=sys.stderr)")
    baseline = subprocess.run([sys.executable, "-c", script, str(run_dir), str(write_bytes(tmp_path / "s", b"le chat\n"))],
                              capture_output=True, env=_env(), timeout=120)
    proc = subprocess.run([sys.executable, "-c", script, str(run_dir), str(src)], capture_output=True,
                          env=_env(), timeout=120)
    err = proc.stderr.decode()
    assert "in.txt line 1: 20,000,000 bytes" in err, err[-2000:]
    peak, code = err.split("\n")[-2].split()
    base = int(baseline.stderr.decode().split("\n")[-2].split()[0])
    assert code == "0" and int(peak) - base < 100_000, (peak, base)  # KiB: well under 100 MB more


def test_cli_write_errors_are_exit_2_naming_the_output(run_dir, tmp_path):
    """/dev/full as stdout or as -o: ENOSPC on write is a message and exit 2, not a traceback;
    a closed stdin or stdout is named."""
    src = write_bytes(tmp_path / "in.txt", b"le chat\n")
    cmd = [sys.executable, "-m", "nmt", "translate", str(run_dir)]
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(cmd + ["-i", str(src)], stdout=full, stderr=subprocess.PIPE, env=_env(), timeout=120)
    assert proc.returncode == 2 and b"standard output: No space left on device" in proc.stderr, proc.stderr
    assert b"Traceback" not in proc.stderr and b"Exception ignored" not in proc.stderr
    proc = subprocess.run(cmd + ["-i", str(src), "-o", "/dev/full"], capture_output=True, env=_env(), timeout=120)
    assert proc.returncode == 2 and b"/dev/full: No space left on device" in proc.stderr, proc.stderr
    proc = subprocess.run(cmd + ["-i", str(src)], capture_output=True, env=_env(), timeout=120,
                          preexec_fn=lambda: os.close(1), close_fds=True)
    assert proc.returncode == 2 and b"standard output is closed" in proc.stderr, proc.stderr
    proc = subprocess.run(cmd, capture_output=True, env=_env(), timeout=120, preexec_fn=lambda: os.close(0))
    assert proc.returncode == 2 and b"standard input is closed" in proc.stderr, proc.stderr


def test_cli_a_full_file_system_removes_the_partial_output(run_dir, tmp_path):
    """-o on a file system that is full: exit 2 naming the file, no temporary file left, an
    existing output untouched. A real tmpfs of our own (root only)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        src = write_bytes(tmp_path / "in.txt", ("\n".join(SOURCES * 50) + "\n").encode())
        (mount / "out.txt").write_text("previous\n")
        with open(mount / "filler", "wb", buffering=0) as handle:  # every byte that is left
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:
                pass
        assert main(["translate", str(run_dir), "-i", str(src), "-o", str(mount / "out.txt")]) == 2
        assert sorted(p.name for p in mount.iterdir()) == ["filler", "out.txt"]
        assert (mount / "out.txt").read_text() == "previous\n"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_sigterm_during_translate_removes_the_partial_output(run_dir, tmp_path):
    src = write_bytes(tmp_path / "in.txt", ("\n".join(SOURCES * 30000) + "\n").encode())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "nmt", "translate", str(run_dir), "-i", str(src),
                             "-o", str(out_dir / "out.txt")], stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 120
    while not list(out_dir.iterdir()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "translation ended before it could be stopped"
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + 15, err.decode()[-2000:]
    assert list(out_dir.iterdir()) == [] and b"Traceback" not in err
# ------------------------------------------------------------------------- --workers N processes

def _workers_gone(seconds: float = 20) -> bool:
    """No worker process is left: stopped workers are reaped within ``seconds`` (one that kept
    running a task, as a worker sleeping two minutes would, is not)."""
    import multiprocessing
    import time

    deadline = time.monotonic() + seconds
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    return multiprocessing.active_children() == []


def _worker_input(tmp_path: Path) -> tuple[Path, list[str]]:
    # empty lines, long lines (truncated, with warnings from whichever worker translates them)
    lines = corpus(40, 3, max_words=9) + ["", "le chat", ""]
    lines[1] = " ".join(["maison rouge"] * 10)
    lines[6] = ""
    return write_bytes(tmp_path / "in.txt", "\n".join(lines).encode() + b"\n"), lines


def _untimed(err: str) -> str:
    return re.sub(r"^\d\d:\d\d:\d\d ", "", err, flags=re.M)


@pytest.mark.slow
def test_workers_write_what_one_process_writes(run_dir, tmp_path, monkeypatch, capsys):
    """Chunks of 7 lines: many chunks in flight, written in order; n-best and 1-best; the same
    bytes and the same warnings as one process."""
    src, lines = _worker_input(tmp_path)
    monkeypatch.setattr(line_io, "CHUNK_LINES", 7)
    for extra in (["--n-best", "2", "--batch-tokens", "40", "--alignments"], ["--greedy"]):
        assert cli(run_dir, "-i", src, "-o", tmp_path / "one.txt", *extra) == 0
        one_err = capsys.readouterr().err
        assert cli(run_dir, "-i", src, "-o", tmp_path / "two.txt", "--workers", "2", *extra) == 0
        two_err = capsys.readouterr().err
        one = (tmp_path / "one.txt").read_bytes()
        assert one.count(b"\n") == len(lines) * (2 if extra[0] == "--n-best" else 1)
        assert (tmp_path / "two.txt").read_bytes() == one
        # log records carry the time of day (when a training in this process set up the console log)
        assert _untimed(two_err) == _untimed(one_err) and "line 2: " in two_err and "truncated" in two_err
    assert _workers_gone()


#: imported by every Python started with its directory on PYTHONPATH: the workers' search fails
#: on a batch holding the line "boom" (an exception) or "die" (the process ends at once), and
#: takes two minutes over "slow"
FAILING_WORKER = """
import os
import time
import nmt.inference.translator as tr

original = tr.Translator.search_batches

def search_batches(self, batches, options, return_attention=False):
    texts = {it.text for group in batches for it in group}
    if "boom" in texts:
        raise RuntimeError("simulated failure in a worker")
    if "die" in texts:
        os._exit(9)
    if "slow" in texts:
        time.sleep(120)
    return original(self, batches, options, return_attention)

tr.Translator.search_batches = search_batches
"""


def _failing_workers(tmp_path: Path, monkeypatch) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAILING_WORKER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))


@pytest.mark.slow
def test_a_failing_worker_stops_the_run_without_output(run_dir, tmp_path, monkeypatch, capsys):
    _failing_workers(tmp_path, monkeypatch)
    monkeypatch.setattr(line_io, "CHUNK_LINES", 5)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # which task a dead worker ran is unknown: every line in flight is named (the third chunk's
    # lines, and the fourth's if it was sent already)
    for bad, code, words in (("boom", 1, [r"failed while translating lines 11-15: RuntimeError: "
                                          r"simulated failure in a worker"]),
                             ("die", 1, [r"ended abruptly while translating lines \d+-(15|20) \(killed"])):
        lines = corpus(20, 4)
        lines[12] = bad  # the third chunk: two chunks are written to the temporary file before it
        src = write_bytes(tmp_path / "in.txt", "\n".join(lines).encode() + b"\n")
        assert cli(run_dir, "-i", src, "-o", out_dir / "out.txt", "--workers", "2") == code
        err = capsys.readouterr().err
        assert all(re.search(word, err) for word in words), err
        assert list(out_dir.iterdir()) == []  # no output, not even a partial file
    # a worker that cannot load the run: the loader's message and status
    assert cli(run_dir, "-i", src, "-o", out_dir / "out.txt", "--workers", "2", "--checkpoint", "last") == 2
    assert "last" in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []
    assert _workers_gone()


@pytest.mark.slow
def test_ctrl_c_stops_the_workers(run_dir, tmp_path, monkeypatch):
    """Ctrl-C while a worker is deep in a task: the workers are stopped at once, no output is left."""
    import time

    _failing_workers(tmp_path, monkeypatch)
    lines = corpus(20, 4)
    lines[7] = "slow"  # the second chunk: a worker is in it when the first chunk is written
    src = write_bytes(tmp_path / "in.txt", "\n".join(lines).encode() + b"\n")
    monkeypatch.setattr(line_io, "CHUNK_LINES", 5)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def interrupted(self, lines):
        time.sleep(1)
        raise KeyboardInterrupt()

    monkeypatch.setattr(line_io.Output, "write_lines", interrupted)
    start = time.perf_counter()
    assert cli(run_dir, "-i", src, "-o", out_dir / "out.txt", "--workers", "2") == 130
    assert time.perf_counter() - start < 60
    assert list(out_dir.iterdir()) == []
    assert _workers_gone()


def test_workers_option_errors(run_dir, tmp_path, capsys, monkeypatch):
    src = write_bytes(tmp_path / "in.txt", b"le chat\n")
    assert cli(run_dir, "-i", src, "--workers", "0") == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli(run_dir, "-i", src, "--workers", "2") == 2
    assert "torchrun" in capsys.readouterr().err


def test_workers_are_capped_by_the_cpus_and_the_input(run_dir, tmp_path, capsys, monkeypatch):
    """``--workers 3`` with 2 CPUs on a 1-line input: the CPUs cap it (a note says so), and one
    process is started for the one line; the output is the one process's. (``--workers 99999``
    once started processes until the machine ran out of memory.)"""
    import nmt.tools.translate as translate_tool
    import nmt.training.threads as threads

    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    started = []
    stop = translate_tool._stop_workers

    def spy(pool, finished):
        started.append(len(pool._processes or {}))
        stop(pool, finished)

    monkeypatch.setattr(translate_tool, "_stop_workers", spy)
    src = write_bytes(tmp_path / "in.txt", b"le chat\n")
    assert cli(run_dir, "-i", src, "-o", tmp_path / "one.txt") == 0
    capsys.readouterr()
    assert cli(run_dir, "-i", src, "-o", tmp_path / "many.txt", "--workers", "3") == 0
    err = capsys.readouterr().err
    assert "--workers 3 capped to 2" in err and "started 1 of 2 workers" in err, err
    assert started == [1]
    assert (tmp_path / "many.txt").read_bytes() == (tmp_path / "one.txt").read_bytes()
    assert _workers_gone()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_end_with_a_killed_parent_and_its_leftover_is_removed(run_dir, tmp_path):
    """``kill -9`` of the ``--workers`` parent: its workers end within seconds; the next run
    removes the hidden temporary output the killed one left, with a note."""
    import signal

    src = write_bytes(tmp_path / "in.txt", ("\n".join(corpus(4000, 5)) + "\n").encode())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "nmt", "translate", str(run_dir), "-i", str(src),
                             "-o", str(out_dir / "out.txt"), "--workers", "2"], stderr=subprocess.PIPE,
                            env=_env())
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and proc.poll() is None:
        workers = [p for p in _children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
        if len(workers) == 2 and list(out_dir.iterdir()):
            break
        time.sleep(0.1)
    assert proc.poll() is None and len(workers) == 2, "the workers did not start"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while any(_running(p) for p in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_running(p) for p in workers), "the workers outlived their parent"
    [left] = list(out_dir.iterdir())
    assert left.name.startswith(".out.txt.") and left.name.endswith(".tmp")
    tiny = write_bytes(tmp_path / "one.txt", b"le chat\n")
    again = subprocess.run([sys.executable, "-m", "nmt", "translate", str(run_dir), "-i", str(tiny), "-o",
                            str(out_dir / "out.txt")], capture_output=True, text=True, env=_env())
    assert again.returncode == 0, again.stderr
    assert f"removed {left}" in again.stderr
    assert [p.name for p in out_dir.iterdir()] == ["out.txt"]


#: translates argv[3:] with chunks of argv[1] lines, tracing the main process's Python allocations
#: from the call on; prints the peak and the largest resident size of its worker processes
_TRACED_TRANSLATE = r"""
import json, resource, sys, tracemalloc
import nmt.tools.line_io as line_io
import nmt.tools.translate, nmt.inference.translator, nmt.commands  # imported before tracing
from nmt.cli import main
line_io.CHUNK_LINES = int(sys.argv[1])
tracemalloc.start()
code = main(["translate", *sys.argv[2:]])
peak = tracemalloc.get_traced_memory()[1]
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"code": code, "peak": peak, "children": children}))
"""


def _traced_translate(run_dir: Path, src: Path, out: Path, *extra: str, chunk: int = 100) -> dict:
    import json

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", _TRACED_TRANSLATE, str(chunk), str(run_dir), "-i", str(src),
                           "-o", str(out), "--greedy", *extra], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_large_file_is_translated_at_flat_memory(run_dir, tmp_path):
    """4x the lines (chunks of 100 lines: 20 and 80 chunks), the same peak: input is read and output written chunk by chunk, by one
    process and by workers, and the workers write what one process writes."""
    lines = corpus(8_000, 11, max_words=10)
    small, large = tmp_path / "2k.txt", tmp_path / "8k.txt"
    small.write_text("\n".join(lines[:2_000]) + "\n")
    large.write_text("\n".join(lines) + "\n")
    # what holding the 6k extra input lines would cost (their output lines cost about as much)
    held = sum(sys.getsizeof(line) + 8 for line in lines[2_000:])
    for extra in ([], ["--workers", "2"]):
        a = _traced_translate(run_dir, small, tmp_path / "a.txt", *extra)
        b = _traced_translate(run_dir, large, tmp_path / f"b{len(extra)}.txt", *extra)
        assert b["peak"] - a["peak"] < held / 4, (extra, a, b, held)
        assert b["children"] - a["children"] < 64 << 20  # the workers' resident memory too
    one, two = (tmp_path / "b0.txt").read_bytes(), (tmp_path / "b2.txt").read_bytes()
    assert one.count(b"\n") == 8_000 and two == one
