"""``decode.inter_threads`` (nmt.inference.inter_threads): batches split into parts searched side by
side on threads give the translations one search at a time gives, and leave torch's thread count
as they found it."""
from __future__ import annotations

import random
import threading
import time

import pytest
import torch

import nmt.inference.translator as translator_module
from nmt.cli import main
from nmt.config import AttentionConfig, DecodeConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt.inference.inter_threads import resolve_inter_threads, run_parts, split_batches
from nmt.inference.translator import Translator

FR = "le la chat chien maison rouge bleu petit grand mange dort voit un une et".split()
EN = "the cat dog house red blue small big eats sleeps sees a and".split()


def corpus(n: int, seed: int, words=FR, max_words: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, random_run):
    model_cfg = ModelConfig(embedding_dim=12, dropout=0.0, encoder=EncoderConfig(hidden_size=8, dropout=0.0),
                            decoder=DecoderConfig(hidden_size=16, dropout=0.0), attention=AttentionConfig())
    return random_run(tmp_path_factory.mktemp("inter-threads") / "run", model_cfg, corpus(200, 0),
                      corpus(200, 1, EN), src_vocab=30, tgt_vocab=22, eos_bias=3.0)


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------- the helpers

def test_parts_interleave_each_batch_and_cover_it_once():
    batches = [list("abcde"), list("fg"), list("h")]
    assert split_batches(batches, 2) == [list("ace"), list("bd"), ["f"], ["g"], ["h"]]
    assert split_batches(batches, 3) == [list("ad"), list("be"), ["c"], ["f"], ["g"], ["h"]]
    assert split_batches(batches, 1) == batches
    assert split_batches([], 4) == []


def test_auto_is_one_search_per_engine_thread_on_a_cpu_and_one_elsewhere():
    assert resolve_inter_threads("auto", 2) == 2
    assert resolve_inter_threads("auto", 2, on_cpu=False) == 1  # a GPU
    assert resolve_inter_threads(3, 2) == 3
    assert resolve_inter_threads(3, 2, on_cpu=False) == 3  # a number is kept
    assert resolve_inter_threads("auto", 1) == 1
    assert resolve_inter_threads("auto", 0) == 1


TORCH_THREADS = (torch.get_num_threads, torch.set_num_threads)


def test_parts_run_at_once_on_their_share_of_the_threads(two_threads):
    barrier = threading.Barrier(2, timeout=10)  # broken unless two parts run at the same time
    seen = []

    def part(x):
        barrier.wait()
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return x * 10

    assert run_parts(part, [1, 2, 3, 4], 2, TORCH_THREADS) == [10, 20, 30, 40]  # in the parts' order
    assert len({ident for ident, _ in seen}) == 2
    assert {threads for _, threads in seen} == {1}  # 2 torch threads / 2 searches
    assert torch.get_num_threads() == 2  # the caller's again
    assert run_parts(lambda x: threading.get_ident(), [1, 2], 1, TORCH_THREADS) == [threading.get_ident()] * 2
    assert run_parts(lambda x: torch.get_num_threads(), [1], 2, TORCH_THREADS) == [2]  # one part: all threads


def test_a_failing_part_is_raised_and_stops_the_parts_not_started(two_threads):
    done = []

    def part(x):
        if x == 0:
            raise ValueError("part 0 failed")
        time.sleep(0.05)
        done.append(x)

    with pytest.raises(ValueError, match="part 0 failed"):
        run_parts(part, list(range(40)), 2, TORCH_THREADS)
    assert len(done) < 39  # the rest were dropped, not run
    assert torch.get_num_threads() == 2


def test_a_later_part_failing_stops_the_rest_while_an_earlier_one_runs(two_threads):
    done, failed = [], threading.Event()

    def part(x):
        if x == 0:
            failed.wait(5)
            time.sleep(0.2)  # still running when part 1 fails
        elif x == 1:
            failed.set()
            raise ValueError("part 1 failed")
        else:
            time.sleep(0.01)
        done.append(x)

    with pytest.raises(ValueError, match="part 1 failed"):
        run_parts(part, list(range(40)), 2, TORCH_THREADS)
    assert 0 in done and len(done) < 5, done  # the running part ended; the others were dropped
    assert torch.get_num_threads() == 2


# ------------------------------------------------------------------------------- the translator

OPTIONS = [dict(beam=1), dict(beam=3, n_best=2), dict(sample=True, n_best=2, seed=3),
           dict(beam=2, return_attention=True)]
OPTION_IDS = ["greedy", "beam-nbest", "sampling", "attention"]


def same_hypotheses(a, b) -> bool:
    """Every field equal, arrays to the bit."""
    def same(x, y):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return torch.equal(torch.as_tensor(x), torch.as_tensor(y))
        return x == y
    return all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)


@pytest.mark.parametrize("kernels", ["auto", "reference"])
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_parts_on_threads_find_what_the_same_parts_find_one_at_a_time(run_dir, two_threads, monkeypatch,
                                                                    kernels, options):
    """Threads side by side change nothing: each sentence gets, to the bit, what its part gets
    searched alone on one thread, as each thread runs it (sampling: the same draws)."""
    translator = Translator.load(run_dir, device="cpu", kernels=kernels)
    return_attention = options.pop("return_attention", False)
    items = translator.encode(corpus(60, 5, max_words=12))
    batches = translator.batches(items, beam=options.get("beam", 1), batch_tokens=200)
    torch.set_num_threads(1)  # the plain equations round with the thread count
    one_at_a_time = translator.search_batches(split_batches(batches, 2),
                                              translator.decode_options(**options, inter_threads=1),
                                              return_attention)
    torch.set_num_threads(2)
    threads = set()
    search = translator_module.search

    def spy(*args, **kwargs):
        threads.add(threading.get_ident())
        return search(*args, **kwargs)

    monkeypatch.setattr(translator_module, "search", spy)
    parallel = translator.search_batches(batches, translator.decode_options(**options, inter_threads=2),
                                         return_attention)
    assert len(threads) == 2 and len(batches) > 1
    assert parallel.keys() == one_at_a_time.keys() == {it.index for it in items}
    for index, hyps in one_at_a_time.items():
        assert len(parallel[index]) == len(hyps)
        assert all(same_hypotheses(a, b) for a, b in zip(hyps, parallel[index])), index
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("options", OPTIONS[:3], ids=OPTION_IDS[:3])
def test_translations_do_not_depend_on_the_threads(run_dir, two_threads, options):
    """With the fast paths a sentence's search does not depend on its batch: the parts translate
    as the whole batches do (scores to float rounding: sampling's fast path rounds a few scores
    with the batch)."""
    translator = Translator.load(run_dir, device="cpu")
    sources = corpus(60, 5, max_words=12)
    one = translator.translate(sources, inter_threads=1, batch_tokens=200, return_scores=True, **options)
    parallel = translator.translate(sources, inter_threads=2, batch_tokens=200, return_scores=True, **options)
    for a, b in zip(one, parallel, strict=True):
        assert [h.text for h in b.hypotheses] == [h.text for h in a.hypotheses]
        assert [h.score for h in b.hypotheses] == pytest.approx([h.score for h in a.hypotheses], rel=1e-6)


def test_the_callers_autocast_reaches_the_threads(run_dir, two_threads, monkeypatch):
    """Validation during bf16 training searches under the trainer's autocast; the threads' searches
    must too (autocast is a setting of each thread)."""
    translator = Translator.load(run_dir, device="cpu", precision="float32")
    seen = []
    search = translator_module.search

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return search(*args, **kwargs)

    monkeypatch.setattr(translator_module, "search", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        translator.translate(corpus(8, 2), beam=1, inter_threads=2)
    assert len(seen) >= 2 and set(seen) == {torch.bfloat16}
    seen.clear()
    translator.translate(corpus(8, 2), beam=1, inter_threads=2)
    assert set(seen) == {False}


def test_the_setting_is_checked_by_name():
    assert DecodeConfig().inter_threads == "auto"
    assert DecodeConfig().updated(inter_threads=2).inter_threads == 2
    for bad, says in ((0, "got 0, must be > 0"), ("many", "expected an integer or 'auto'")):
        with pytest.raises(Exception, match=says) as caught:
            DecodeConfig().updated(inter_threads=bad)
        assert "inter_threads" in str(caught.value)


def test_cli_option(run_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(corpus(10, 9)) + "\n", encoding="utf-8")
    outputs = []
    for value in ("1", "2", "auto"):
        out = tmp_path / f"out-{value}.txt"
        assert main(["translate", str(run_dir), "-i", str(src), "-o", str(out), "--inter-threads", value]) == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    assert main(["translate", str(run_dir), "-i", str(src), "--inter-threads", "0"]) == 2
    assert "--inter-threads" in capsys.readouterr().err
