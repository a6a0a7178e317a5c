"""Continuous batching (nmt/inference/continuous.py, nmt/tools/serve_worker.py): sentences that
join a beam search under way get exactly what they get searched alone, and a worker answers each
sentence when it is done."""
import dataclasses

import pytest
import torch

from test_batch_invariant import SRC_VOCAB, TGT_VOCAB, _lexicon, _sources, model  # noqa: F401 - model: a fixture

from nmt.config import DecodeConfig
from nmt.inference.continuous import JoiningSearch, joinable
from nmt.inference.search import pad_sources, search
from nmt.model.seq2seq import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _joined(model, tables, lexicon, options, arrivals: dict[int, list[list[int]]]):
    """Search the sources of ``arrivals`` (step -> sources joining before it); the hypotheses of
    each source by its position over all arrivals, and the most cohorts seen under way at once."""
    joining = JoiningSearch(model, tables, lexicon, options, torch.device("cpu"))
    found, step, at, most = {}, 0, 0, 0
    while joining.running or step <= max(arrivals):
        if step in arrivals:
            joining.add(arrivals[step], list(range(at, at + len(arrivals[step]))))
            at += len(arrivals[step])
        if joining.running:
            most = max(most, len(joining.cohorts))
            found.update(dict(joining.step()))
        step += 1
    return [found[k] for k in range(at)], most


@pytest.mark.parametrize("beam,shortlist,bf16", [(5, 10, False), (5, 0, False), (2, 10, False), (5, 10, True)])
def test_sentences_that_join_a_search_under_way_get_what_they_get_alone(model, beam, shortlist, bf16):
    """Cohorts join at steps 0, 1, 3 and 6 while the others run (max lengths from 2 to 14), over
    the shortlists of their own sentences; each sentence's hypotheses, scores and token
    log-probabilities equal those of searching it alone, exactly."""
    options = DecodeConfig(beam=beam, n_best=min(beam, 3), max_len_a=0.5, max_len_b=2, shortlist=shortlist,
                           shortlist_frequent=20)
    lexicon = _lexicon()
    arrivals = {0: _sources(5, 1), 1: _sources(1, 2), 3: _sources(7, 3), 6: _sources(3, 4)}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        tables = model.search_tables()
        got, most = _joined(model, tables, lexicon, options, arrivals)
        everything = [s for step in sorted(arrivals) for s in arrivals[step]]
        for source, hyps in zip(everything, got, strict=True):
            src, lengths, mask = pad_sources([source])
            (alone,) = search(model, src, lengths, mask, options, lexicon, tables=tables)
            assert [(h.tokens, h.score, h.log_probs) for h in hyps] == \
                [(h.tokens, h.score, h.log_probs) for h in alone]
    assert most >= 3  # cohorts did run side by side


def test_with_the_plain_step_joined_sentences_stay_within_rounding(model):
    """``kernels: reference`` (a memory row per beam, rows rounded by their batch): the same
    tokens, scores within float32 rounding of searching each sentence alone."""
    plain = build_model(dataclasses.replace(model.cfg, kernels="reference"), SRC_VOCAB, TGT_VOCAB).eval()
    plain.load_state_dict(model.state_dict())
    options = DecodeConfig(beam=3, n_best=2, max_len_a=0.5, max_len_b=2, shortlist=10, shortlist_frequent=20)
    lexicon = _lexicon()
    arrivals = {0: _sources(4, 5), 2: _sources(4, 6)}
    with torch.inference_mode():
        assert plain.search_tables() is None
        got, most = _joined(plain, None, lexicon, options, arrivals)
        for source, hyps in zip([s for k in sorted(arrivals) for s in arrivals[k]], got, strict=True):
            src, lengths, mask = pad_sources([source])
            (alone,) = search(plain, src, lengths, mask, options, lexicon)
            assert [h.tokens for h in hyps] == [h.tokens for h in alone]
            torch.testing.assert_close([h.score for h in hyps], [h.score for h in alone], rtol=0, atol=1e-5)
    assert most == 2


def test_what_cannot_join_a_search():
    assert joinable(DecodeConfig(beam=5))
    assert not joinable(DecodeConfig(beam=1))  # greedy search has its own loop
    assert not joinable(DecodeConfig(beam=1, sample=True))
    assert not joinable(DecodeConfig(beam=5, coverage_penalty=0.2))  # coverage over one source width
    for flag in ("attention", "alignment", "constraints", "markup"):
        assert not joinable(DecodeConfig(beam=5), **{flag: True})
    with pytest.raises(ValueError, match="beam >= 2"):
        JoiningSearch(None, None, None, DecodeConfig(beam=1), torch.device("cpu"))


# ------------------------------------------------------------------------------- the worker

class _Pipe:
    """The worker's end of its pipe, in this process: what it sends is kept."""

    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import train_served_run

    return train_served_run(tmp_path_factory.mktemp("continuous") / "tiny")


def test_a_worker_answers_each_sentence_when_done_and_a_later_call_overtakes(run):
    """Call 1 holds two texts whose outputs must be 10 pieces or more; two steps later call 2
    brings a text without that minimum and one that asks for attention (run whole as it
    arrives), and call 3 a text that joins call 1's search under way. Call 2 ends first; call 1's
    first sentence done is answered before call 1 ends; every answer is that of
    ``Translator.translate``."""
    from nmt.inference.translator import Translator
    from nmt.tools.serve_worker import WorkerLoop

    translator = Translator.load(run, device="cpu")
    pipe = _Pipe()
    loop = WorkerLoop({"m": translator}, pipe)

    def group(texts, attention=False, **options):
        return {"model": "m", "texts": texts, "options": {"beam": 3, **options}, "attention": attention,
                "alignment": False, "scores": [True] * len(texts), "constraints": None}

    loop.accept(1, [group(["Bonjour", "Je suis fatigué et tu es belle"], min_len=10)])
    loop.step()
    loop.step()
    loop.accept(2, [group(["Merci"]), group(["Il fait froid"], attention=True)])
    loop.accept(3, [group(["Bonsoir"], min_len=10)])
    (long_search,) = [j.translation.search for k, j in loop.joining.items() if ("min_len", 10) in k[-1]]
    side_by_side = 0
    while loop.calls:
        loop.step()
        side_by_side = max(side_by_side, len(long_search.cohorts))
    assert side_by_side == 2  # "Bonsoir" joined the search under way (after at most JOIN_WAIT_STEPS)
    ends = [m[0] for m in pipe.sent if m[0] != "sentences"]
    assert sorted(ends) == [1, 2, 3] and ends[0] == 2, ends
    streamed = {(ident, g, k): answer for m in pipe.sent if m[0] == "sentences" for ident, g, k, answer in m[1]}
    (outcomes1,) = [m[1] for m in pipe.sent if m[0] == 1]
    (outcomes2,) = [m[1] for m in pipe.sent if m[0] == 2]
    (outcomes3,) = [m[1] for m in pipe.sent if m[0] == 3]
    assert sum(r is None for r in outcomes1[0]["results"]) == 1  # one sentence answered before its call ended

    def answer(ident, outcomes, g, k):
        return outcomes[g]["results"][k] or streamed[(ident, g, k)]

    cases = [("Bonjour", {"min_len": 10}, answer(1, outcomes1, 0, 0)),
             ("Je suis fatigué et tu es belle", {"min_len": 10}, answer(1, outcomes1, 0, 1)),
             ("Merci", {}, answer(2, outcomes2, 0, 0)), ("Il fait froid", {}, answer(2, outcomes2, 1, 0)),
             ("Bonsoir", {"min_len": 10}, answer(3, outcomes3, 0, 0))]
    for text, options, got in cases:
        (direct,) = translator.translate([text], beam=3, return_scores=True, **options)
        assert got["text"] == direct.text
        assert [h["score"] for h in got["hypotheses"]] == [h.score for h in direct.hypotheses]
        assert [h["token_log_probs"] for h in got["hypotheses"]] == [h.token_log_probs for h in direct.hypotheses]
    assert "attention" in outcomes2[1]["results"][0]["hypotheses"][0]
    assert len(answer(1, outcomes1, 0, 1)["hypotheses"][0]["tokens"]) >= 11  # 10 pieces and EOS
