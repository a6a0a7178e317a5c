"""Ensemble decoding: an ensemble of one model is that model, a model with itself too; a step is the
mean of the members' log-probabilities; fast and plain members mix; the shortlist; run directories
on the command line and the errors for runs that cannot be ensembled."""
from __future__ import annotations

import copy
import functools
import math
import shutil
from pathlib import Path

import pytest
import torch

from nmt.cli import main
from nmt.config import DecodeConfig
from nmt.errors import NmtError
from nmt.data.vocab import BOS_ID, EOS_ID, PAD_ID
from nmt.inference.ensemble import Ensemble
from nmt.inference.search import beam_search, greedy_search, pad_sources, score_targets, search
from nmt.inference.shortlist import LEXICON_FILE, Lexicon
from nmt.inference.translator import Translator

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCES = [[4, 5, 6, EOS_ID], [7, EOS_ID], [5, 5, 8, 9, 4, 6, EOS_ID], [9, 8, EOS_ID]]
SEARCHES = [(greedy_search, {"beam": 1}), (beam_search, {"beam": 4, "n_best": 3}),
            (beam_search, {"beam": 3, "length_penalty": 1.0, "coverage_penalty": 0.3})]


@pytest.fixture
def tiny_model(tiny_model):
    """Random models with a 12-word target vocabulary and varied, context-dependent outputs."""
    return functools.partial(tiny_model, src_vocab=10, tgt_vocab=12, weight_scale=3.0, eos_bias=1.0)


def run(fn, model, return_attention=True, **opts):
    src, lengths, mask = pad_sources(SOURCES)
    return fn(model, src, lengths, mask, DecodeConfig(max_len_b=8, **opts), return_attention=return_attention)


def assert_same(got, want, abs=1e-5):
    for g_hyps, w_hyps in zip(got, want, strict=True):
        assert [h.tokens for h in g_hyps] == [h.tokens for h in w_hyps]
        for g, w in zip(g_hyps, w_hyps):
            assert g.score == pytest.approx(w.score, abs=abs)
            assert g.raw_score == pytest.approx(w.raw_score, abs=abs)
            assert g.log_probs == pytest.approx(w.log_probs, abs=abs)
            assert g.finished == w.finished
            torch.testing.assert_close(g.attention, w.attention)


# ----------------------------------------------------------------------------- equal to a model

@pytest.mark.parametrize("kind", ["bahdanau", "luong-general", "local-p"])
@pytest.mark.parametrize("fn,opts", SEARCHES, ids=["greedy", "beam-nbest", "beam-penalties"])
def test_ensemble_of_one_model_is_that_model(kind, fn, opts, tiny_model, kernels):
    model = tiny_model(kind, kernels=kernels)
    want = run(fn, model, **opts)
    assert any(len(h[0].tokens) > 2 for h in want)
    assert_same(run(fn, Ensemble([model]), **opts), want)


@pytest.mark.parametrize("fn,opts", SEARCHES, ids=["greedy", "beam-nbest", "beam-penalties"])
def test_model_ensembled_with_itself_is_that_model(fn, opts, tiny_model, kernels):
    model = tiny_model("bahdanau", kernels=kernels)
    assert_same(run(fn, Ensemble([model, model]), **opts), run(fn, model, **opts))


def test_sampling_a_model_ensembled_with_itself_is_sampling_that_model(tiny_model):
    from nmt.inference.search import sample_search

    model = tiny_model("bahdanau")
    opts = {"sample": True, "beam": 1, "n_best": 3, "seed": 4, "temperature": 1.3}
    want = run(sample_search, model, **opts)
    assert len({tuple(h.tokens) for h in want[2]}) > 1
    assert_same(run(sample_search, Ensemble([model, model]), **opts), want)


# ------------------------------------------------------------------------------ the mean of two

def test_step_log_probs_are_the_mean_of_the_members(tiny_model, kernels):
    a = tiny_model("bahdanau", seed=0, kernels=kernels)
    b = tiny_model("luong-general", seed=5, kernels=kernels)
    ensemble = Ensemble([a, b])
    src, lengths, mask = pad_sources(SOURCES)
    prev = torch.tensor([BOS_ID, 6, 7, 1])
    with torch.inference_mode():
        enc = ensemble.encode(src, lengths, mask)
        state, memory = ensemble.start(enc, ensemble.search_tables())
        got, out = ensemble.step_logits(prev, state, memory, tables=ensemble.search_tables())
        want, want_att = 0, 0
        for m in (a, b):
            m_state, m_memory = m.start(m.encode(src, lengths, mask))
            logits, m_out = m.step_logits(prev, m_state, m_memory)
            want = want + torch.log_softmax(logits, -1) / 2
            want_att = want_att + m_out.attention / 2
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(out.attention, want_att)
    assert not torch.allclose(torch.logsumexp(got, -1), torch.zeros(len(SOURCES)))  # not renormalised


@pytest.mark.parametrize("fn,opts", SEARCHES[:2], ids=["greedy", "beam-nbest"])
def test_search_scores_are_the_mean_of_the_members_forced_scores(fn, opts, tiny_model, kernels):
    """Token log-probabilities and attention of every hypothesis equal the mean of the members'
    teacher-forced ones; greedy picks the arg-max of that mean at every step."""
    a = tiny_model("bahdanau", seed=0, kernels=kernels)
    b = tiny_model("local-p", seed=7, kernels=kernels)
    found = run(fn, Ensemble([a, b]), **opts)
    single = [run(fn, m, **opts) for m in (a, b)]
    assert any(h[0].tokens != s[0].tokens for h, s in zip(found, single[0]))  # the ensemble decides
    src, lengths, mask = pad_sources(SOURCES)
    for sentence, hyps in enumerate(found):
        rows = [SOURCES[sentence]] * len(hyps)
        s, l, m = pad_sources(rows)
        tokens = [h.tokens for h in hyps]
        per_member = [score_targets(model, s, l, m, tokens, add_eos=False)[1] for model in (a, b)]
        tgt_in = torch.full((len(hyps), max(len(t) for t in tokens)), PAD_ID)
        for row, t in enumerate(tokens):
            tgt_in[row, : len(t)] = torch.tensor([BOS_ID] + t[:-1])
        with torch.inference_mode():
            attention = sum(model.teacher_force(s, l, m, tgt_in)[1] for model in (a, b)) / 2
        for row, h in enumerate(hyps):
            mean = [(x + y) / 2 for x, y in zip(per_member[0][row], per_member[1][row])]
            assert h.log_probs == pytest.approx(mean, abs=1e-5)
            assert h.raw_score == pytest.approx(sum(mean), abs=1e-4)
            torch.testing.assert_close(h.attention, attention[row, : len(h.tokens), : len(SOURCES[sentence])],
                                       atol=1e-5, rtol=1e-4)
        if fn is greedy_search:  # each token is the best continuation of its prefix under the mean
            (h,) = hyps
            for t in range(len(h.tokens)):
                prefix = h.tokens[:t]
                options = [prefix + [v] for v in [1, EOS_ID] + list(range(4, 12))]
                s, l, m = pad_sources([SOURCES[sentence]] * len(options))
                sums = [score_targets(model, s, l, m, options, add_eos=False)[0] for model in (a, b)]
                best = max(range(len(options)), key=lambda i: sums[0][i] + sums[1][i])
                assert options[best][-1] == h.tokens[t]
    ensemble_scores, _ = score_targets(Ensemble([a, b]), src, lengths, mask, [h[0].tokens for h in found],
                                       add_eos=False)
    assert ensemble_scores == pytest.approx([h[0].raw_score for h in found], abs=1e-4)


def test_fast_and_plain_members_mix(tiny_model):
    """A member on the fast search step and one on the plain step (no fast step for Luong) search
    exactly as both on the plain step: the plain member gets a memory row per beam."""
    fast = Ensemble([tiny_model("bahdanau", kernels="auto"), tiny_model("luong-general", seed=3)])
    plain = Ensemble([tiny_model("bahdanau", kernels="reference"), tiny_model("luong-general", seed=3)])
    with torch.inference_mode():
        assert fast.search_tables()[0] is not None and fast.search_tables()[1] is None
        assert plain.search_tables() is None
    for fn, opts in SEARCHES:
        assert_same(run(fn, fast, **opts), run(fn, plain, **opts), abs=1e-4)


def test_shortlist_ensemble_equals_full_search_with_other_logits_masked(tiny_model):
    """Each member is normalised over the sentence's own shortlist, then averaged: the same as
    members whose logits outside that shortlist are -inf."""
    a = tiny_model("bahdanau", tgt_vocab=40, seed=0)
    b = tiny_model("luong-general", tgt_vocab=40, seed=2)
    g = torch.Generator().manual_seed(2)
    lexicon = Lexicon(torch.stack([torch.randperm(36, generator=g)[:3] + 4 for _ in range(10)]),
                      torch.linspace(0.5, 0.1, 3).expand(10, 3).clone(), torch.randperm(40, generator=g))
    src, lengths, mask = pad_sources(SOURCES)
    columns = lexicon.columns(src, mask, 2, 3)
    assert 8 < columns.numel() < 40

    def masked(model, own):
        out = copy.deepcopy(model)
        outside = torch.ones(40, dtype=torch.bool)
        outside[own] = False
        with torch.no_grad():
            out.output.bias[outside] = -math.inf
        return out

    for beam in (1, 3):
        got = search(Ensemble([a, b]), src, lengths, mask,
                     DecodeConfig(beam=beam, n_best=2 if beam > 1 else 1, max_len_b=6, shortlist=2,
                                  shortlist_frequent=3), lexicon, return_attention=True)
        for k in range(len(SOURCES)):
            own = lexicon.columns(src[k:k + 1], mask[k:k + 1], 2, 3)
            want = search(Ensemble([masked(a, own), masked(b, own)]), src[k:k + 1], lengths[k:k + 1],
                          mask[k:k + 1], DecodeConfig(beam=beam, n_best=2 if beam > 1 else 1, max_len_b=6),
                          return_attention=True)
            assert_same(got[k:k + 1], want, abs=1e-4)  # alone: float rounding of other shapes


# --------------------------------------------------------------------------------- run directories

def perturbed_copy(run: Path, to: Path, seed: int) -> Path:
    """A copy of a run whose weights differ (as another seed's would), without training twice."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(run, to)
    g = torch.Generator().manual_seed(seed)
    for path in (to / "checkpoints").glob("*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(path))
        for name, tensor in tensors.items():
            if tensor.is_floating_point():
                tensors[name] = tensor + 0.5 * tensor.std() * torch.randn(tensor.shape, generator=g)
        save_file(tensors, str(path), metadata=metadata)
    return to


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("ensemble")
    return perturbed_copy(tiny_run, base / "a", 1), perturbed_copy(tiny_run, base / "b", 2)


LINES = ["Je suis fatigué.", "", "Merci beaucoup !", "Il fait beau aujourd'hui."]


def test_translator_and_cli_decode_the_ensemble(runs, tmp_path, capsys):
    a, b = runs
    ensemble = Translator.load([a, b], device="cpu")
    members = [Translator.load(r, device="cpu") for r in runs]
    assert isinstance(ensemble.model, Ensemble) and len(ensemble.model) == 2
    results = ensemble.translate(LINES, beam=3, n_best=2, return_scores=True)
    assert all(len(res.hypotheses) == 2 for res in results[:1] + results[2:])
    for line, res in zip(LINES, results):  # Translator.score: the mean of the members' log-probabilities
        texts = [h.text for h in res.hypotheses] + ["I am tired."]
        scores = [m.score([line] * len(texts), texts) for m in members]
        mean = ensemble.score([line] * len(texts), texts)
        assert mean == pytest.approx([(x + y) / 2 for x, y in zip(*scores)], abs=1e-4)
    (tmp_path / "in.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    assert main(["translate", str(a), str(b), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.txt"),
                 "--beam", "3"]) == 0
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines() == ensemble.translate(LINES, beam=3)
    (tmp_path / "ref.txt").write_text("I am tired.\n\nThank you!\nNice weather.\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["translate", str(a), str(b), "-i", str(tmp_path / "in.txt"),
                 "--score-reference", str(tmp_path / "ref.txt")]) == 0
    got = [float(x) for x in capsys.readouterr().out.split()]
    refs = ["I am tired.", "", "Thank you!", "Nice weather."]
    want = [(x + y) / 2 for x, y in zip(*(m.score(LINES, refs) for m in members))]
    assert got == pytest.approx(want, abs=1e-3)


def test_evaluate_an_ensemble(runs, capsys):
    a, b = runs
    assert main(["evaluate", str(a), str(b), "--split", "test", "--beam", "1", "--json"]) == 0
    import json

    record = json.loads(capsys.readouterr().out)
    assert record["ensemble"] == [str(a), str(b)]
    assert Path(record["json_path"]).name == "test.best.ensemble2.beam1.json"
    hyps = Path(record["hypotheses"]).read_text(encoding="utf-8").splitlines()
    from nmt.data.corpus import load_corpus

    ensemble = Translator.load([a, b], device="cpu")
    sources = [str(s) for s in load_corpus(ensemble.recipe.data, splits=("test",))["test"]["src"]]
    assert hyps == ensemble.translate(sources, beam=1)


def test_bench_translate_an_ensemble(runs, capsys):
    import json

    a, b = runs
    assert main(["bench", "translate", str(a), str(b), "--split", "test", "--beam", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["run_dir"] == f"{a}+{b}" and record["sentences"] > 0


def test_runs_that_cannot_be_ensembled_exit_2_naming_them(runs, tmp_path, capsys):
    a, b = runs
    other_tgt = shutil.copytree(b, tmp_path / "other-tgt")  # another target vocabulary
    shutil.copy(other_tgt / "spm.src.model", other_tgt / "spm.tgt.model")
    other_src = shutil.copytree(b, tmp_path / "other-src")  # another source tokenizer
    shutil.copy(other_src / "spm.tgt.model", other_src / "spm.src.model")
    (tmp_path / "in.txt").write_text("Merci.\n", encoding="utf-8")
    for other, what in ((other_tgt, "target vocabularies differ"), (other_src, "source tokenizers differ")):
        capsys.readouterr()
        assert main(["translate", str(a), str(other), "-i", str(tmp_path / "in.txt"),
                     "-o", str(tmp_path / "out.txt")]) == 2
        err = capsys.readouterr().err
        assert what in err and str(a) in err and str(other) in err and "Traceback" not in err
        assert not (tmp_path / "out.txt").exists()
        assert main(["evaluate", str(a), str(other), "--split", "test"]) == 2
        assert what in capsys.readouterr().err
    assert main(["translate", str(a), str(b), "--checkpoint", str(a / "checkpoints" / "best.safetensors"),
                 "-i", str(tmp_path / "in.txt")]) == 2
    assert "best, last or avg" in capsys.readouterr().err


def test_shortlist_needs_one_lexicon_in_every_run(runs, tmp_path, capsys):
    import yaml

    a = shutil.copytree(runs[0], tmp_path / "a")
    b = shutil.copytree(runs[1], tmp_path / "b")
    from nmt.inference.shortlist import build_for_run

    build_for_run(a, iterations=2, keep=10, max_pairs=100)
    shutil.copy(a / LEXICON_FILE, b / LEXICON_FILE)  # one lexicon serves runs that share their tokenizers
    (tmp_path / "in.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    ensemble = Translator.load([a, b], device="cpu")
    assert main(["translate", str(a), str(b), "-i", str(tmp_path / "in.txt"), "-o", str(out),
                 "--shortlist", "5"]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == ensemble.translate(LINES, shortlist=5)
    assert ensemble.lexicon is not None

    lexicon = Lexicon.load(b / LEXICON_FILE)  # b's lexicon rebuilt: same tables, another build time
    lexicon.metadata["seconds"] = "12345.0"
    lexicon.save(b / LEXICON_FILE)
    assert (a / LEXICON_FILE).read_bytes() != (b / LEXICON_FILE).read_bytes()
    shared = Translator.load([a, b], device="cpu")
    shared.decode_options(shortlist=5)
    assert shared.lexicon is not None  # still one lexicon
    capsys.readouterr()
    assert main(["translate", str(a), str(b), "-i", str(tmp_path / "in.txt"), "-o", str(out),
                 "--shortlist", "5"]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == ensemble.translate(LINES, shortlist=5)

    lexicon.top_probs[0] = lexicon.top_probs[0].flip(0)  # other tables: refused
    lexicon.save(b / LEXICON_FILE)
    assert main(["translate", str(a), str(b), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "x.txt"),
                 "--shortlist", "5"]) == 2  # asked for explicitly: refused
    err = capsys.readouterr().err
    assert "lexicon" in err and str(a) in err and str(b) in err
    assert not (tmp_path / "x.txt").exists()
    # the first run's recipe asks for it: decoded without, with a warning
    recipe = a / "recipe.yaml"
    header, body = recipe.read_text(encoding="utf-8").split("\n", 1)
    data = yaml.safe_load(body)
    data["decode"]["shortlist"] = 5
    recipe.write_text(header + "\n" + yaml.safe_dump(data), encoding="utf-8")
    assert main(["translate", str(a), str(b), "-i", str(tmp_path / "in.txt"), "-o", str(out)]) == 0
    assert "decoding without the shortlist" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8").splitlines() == ensemble.translate(LINES, shortlist=0)
    # the translator keeps its recipe as loaded: the missing shortlist is a decode setting of its own
    loaded = Translator.load([a, b], device="cpu")
    assert loaded.recipe.decode.shortlist == 5 and loaded.decode.shortlist == 0
    assert loaded.translate(LINES) == ensemble.translate(LINES, shortlist=0)
    with pytest.raises(NmtError, match="lexicon"):
        loaded.translate(LINES, shortlist=5)  # asked for explicitly: refused
