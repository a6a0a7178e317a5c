"""``precision: auto``: the decision from timings, the calibration, the cache, and that auto's
translations are those of the mode it chose."""
import os
import random
import shutil

import pytest

from nmt.inference import precision_auto as pa

pytestmark = pytest.mark.usefixtures("one_thread")

CPUINFO = ("processor\t: 0\nmodel name\t: Test CPU 9000\n"
           "flags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16\n")


# ------------------------------------------------------------------------------------ picking
def test_pick_never_chooses_a_mode_slower_than_float32():
    rng = random.Random(0)
    for _ in range(2000):
        timings = {"float32": rng.uniform(0.01, 1), "bf16": rng.uniform(0.01, 1)}
        mode, _ = pa.pick(timings)
        assert timings[mode] <= timings["float32"]
        if mode != "float32":  # and only by the margin
            assert timings[mode] <= timings["float32"] * (1 - pa.MARGIN)


@pytest.mark.parametrize("bf16, expected", [(0.95, "float32"), (1.2, "float32"), (0.89, "bf16"), (0.5, "bf16")])
def test_pick_takes_bf16_only_beyond_the_margin(bf16, expected):
    mode, reason = pa.pick({"float32": 1.0, "bf16": bf16})
    assert mode == expected
    assert "bf16" in reason and "%" in reason


def test_calibrate_alternates_and_keeps_the_best_round():
    """Injected durations: each mode's best timed run wins; the warm-up is never timed."""
    durations = {"float32": iter([9.0, 3.0, 2.0, 4.0]), "bf16": iter([9.0, 1.5, 2.5, 1.0])}
    now = [0.0]
    calls = []

    def runner(mode):
        def run():
            calls.append(mode)
            now[0] += next(durations[mode])
        return run

    best, rounds = pa.calibrate({m: runner(m) for m in ("float32", "bf16")}, rounds=3, budget=1e9,
                                clock=lambda: now[0])
    assert best == {"float32": 2.0, "bf16": 1.0} and rounds == 3
    assert calls == ["float32", "bf16", "float32", "bf16", "bf16", "float32", "float32", "bf16"]


def test_calibration_sources_are_fixed_and_in_the_vocabulary():
    a, b = pa.calibration_sources(50, 4, 40), pa.calibration_sources(50, 4, 40)
    assert a == b and len(a) == 40
    assert all(4 <= i < 50 for sentence in a for i in sentence)
    assert {len(sentence) for sentence in a} == {pa.LENGTH - k for k in range(4)}


def test_calibration_sources_draw_frequent_subwords_more_often():
    """Ids about 1/rank, as text uses a frequency-numbered vocabulary: the lower half of the ids
    is most of the draws, and a shortlist's union over the batch stays far below the vocabulary."""
    ids = [i for sentence in pa.calibration_sources(8000, 4, 256) for i in sentence]
    assert sum(i < 4000 for i in ids) > 0.85 * len(ids)
    assert len(set(ids)) < 0.5 * 8000


@pytest.mark.parametrize("batch_tokens, beam, given, sentences", [
    (8000, 1, None, pa.MAX_SENTENCES),                  # greedy's large batches: capped
    (8000, 5, None, 8000 // 5 // (pa.LENGTH + 1)),      # beam 5: the rows of one batch
    (10 * (pa.LENGTH + 1), 1, None, 10),
    (1, 4, None, 1),                                    # at least one sentence
    (8000, 1, 64, 64),                                  # the server's batch
    (8000, 1, 10_000, pa.MAX_SENTENCES)])
def test_calibration_batch_follows_the_runs_batch_size(batch_tokens, beam, given, sentences):
    assert pa.calibration_sentences(batch_tokens, beam, given) == sentences


def test_cpu_description_names_family_and_model_when_the_system_gives_them():
    epyc = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
    assert pa.cpu_description(epyc) == "AMD EPYC (family 25, model 1)"
    assert pa.cpu_description("processor\t: 0\nmodel name\t: Test CPU 9000\n") == "Test CPU 9000"
    assert pa.cpu_description("") == ""


def test_native_bf16_reads_the_flags():
    assert pa.native_bf16(CPUINFO)
    assert not pa.native_bf16(CPUINFO.replace(" avx512_bf16 amx_bf16", ""))


# ------------------------------------------------------------------------------------- cache
def test_cache_key_changes_with_the_machine_and_the_weights(tmp_path):
    weights = tmp_path / "best.safetensors"
    weights.write_bytes(b"1234")
    cpu = pa.cpu_key(CPUINFO)
    key = pa.cache_key([weights], "cpu", "auto", 5, 10, cpu)
    assert key == pa.cache_key([weights], "cpu", "auto", 5, 10, cpu)
    assert key != pa.cache_key([weights], "cpu", "auto", 5, 10, {**cpu, "threads": cpu["threads"] + 1})
    assert key != pa.cache_key([weights], "cpu", "auto", 5, 10, pa.cpu_key(CPUINFO.replace("9000", "9001")))
    assert key != pa.cache_key([weights], "cpu", "auto", 1, 10, cpu)
    assert key != pa.cache_key([weights], "cpu", "auto", 5, 0, cpu)
    software = pa.software_key()
    assert key == pa.cache_key([weights], "cpu", "auto", 5, 10, cpu, software=software)
    assert key != pa.cache_key([weights], "cpu", "auto", 5, 10, cpu, software={**software, "nmt": "9.9"})
    assert key != pa.cache_key([weights], "cpu", "auto", 5, 10, cpu, software={**software, "torch": "9.9"})
    weights.write_bytes(b"12345")  # a rewritten checkpoint
    assert key != pa.cache_key([weights], "cpu", "auto", 5, 10, cpu)


def test_cache_key_changes_with_the_batch_size_class(tmp_path):
    weights = tmp_path / "best.safetensors"
    weights.write_bytes(b"1234")
    cpu = pa.cpu_key(CPUINFO)

    def key(sentences):
        return pa.cache_key([weights], "cpu", "auto", 1, 10, cpu, sentences=sentences)

    assert key(8) != key(256) and key(64) != key(32) and key(1) != key(2)
    assert key(64) == key(100) and key(256) == key(pa.MAX_SENTENCES)  # one class: one timing
    assert pa.cache_key([weights], "cpu", "auto", 1, 10, cpu, parts=2) != key(pa.MAX_SENTENCES)


def test_cache_round_trip(tmp_path):
    path = tmp_path / "sub" / "precision.json"
    assert pa.cached_choice("k", path) is None
    pa.store_choice("k", pa.PrecisionChoice("bf16", "why", {"float32": 1.0, "bf16": 0.5}, 2,
                                            sentences=128, seconds=1.5), path)
    found = pa.cached_choice("k", path)
    assert found.mode == "bf16" and found.cached and found.timings == {"float32": 1.0, "bf16": 0.5}
    assert found.sentences == 128 and found.seconds == 1.5
    assert "per batch of 128 sentences" in found.describe() and "calibrated in 1.5 s" in found.describe()
    path.write_text("not json")
    assert pa.cached_choice("k", path) is None


# ------------------------------------------------------------------------- with a real run
@pytest.fixture
def calibrating(monkeypatch, tmp_path):
    """A CPU with bf16 instructions, the cache in ``tmp_path``, and the timings of each
    calibration injected: ``calibrating.timings`` (set by the test), ``calibrating.runs`` counted."""
    class State:
        timings = {"float32": 1.0, "bf16": 2.0}
        runs = 0

    def fake_calibrate(runners, **kwargs):
        State.runs += 1
        for run in runners.values():  # the searches really run: both translators work
            run()
        return dict(State.timings), 3

    monkeypatch.setenv("NMT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(pa, "MIN_PARAMETERS", 0)  # the test models are tiny
    monkeypatch.setattr(pa, "native_bf16", lambda cpuinfo=None: True)
    monkeypatch.setattr(pa, "calibrate", fake_calibrate)
    return State


SOURCES = ["a b c", "hello world", "the cat sat", "x"]


def _texts(translator):
    return [r.text if hasattr(r, "text") else r for r in translator.translate(SOURCES, beam=2)]


@pytest.mark.parametrize("timings, mode", [({"float32": 1.0, "bf16": 0.5}, "bf16"),
                                           ({"float32": 1.0, "bf16": 0.95}, "float32")])
def test_auto_translates_as_the_mode_it_chose(tiny_run, calibrating, timings, mode):
    from nmt.inference.translator import Translator

    calibrating.timings = timings
    auto = Translator.load(tiny_run, precision="auto")
    assert auto.precision == "auto"  # chosen before the first search, not at load
    got = _texts(auto)
    assert auto.precision == mode and auto.precision_choice.mode == mode
    assert not auto.precision_choice.cached and calibrating.runs == 1
    assert got == _texts(Translator.load(tiny_run, precision=mode))


def test_auto_reuses_the_cache_until_the_checkpoint_changes(tiny_run, tmp_path, calibrating):
    from nmt.inference.checkpoint import checkpoint_path
    from nmt.inference.translator import Translator

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    calibrating.timings = {"float32": 1.0, "bf16": 0.5}
    assert Translator.load(run).resolve_precision().mode == "bf16"  # the recipe's default: auto
    again = Translator.load(run).resolve_precision()
    assert again.cached and again.mode == "bf16" and calibrating.runs == 1
    weights = checkpoint_path(run, "best")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    calibrating.timings = {"float32": 1.0, "bf16": 2.0}
    fresh = Translator.load(run).resolve_precision()
    assert not fresh.cached and fresh.mode == "float32" and calibrating.runs == 2


def test_auto_reuses_the_cache_only_on_the_same_machine(tiny_run, calibrating, monkeypatch):
    from nmt.inference.translator import Translator

    Translator.load(tiny_run, precision="auto").resolve_precision()
    Translator.load(tiny_run, precision="auto").resolve_precision()
    assert calibrating.runs == 1
    real = pa.cpu_key
    monkeypatch.setattr(pa, "cpu_key", lambda cpuinfo=None: {**real(), "cpu": "another CPU"})
    Translator.load(tiny_run, precision="auto").resolve_precision()
    assert calibrating.runs == 2


def test_auto_calibrates_in_the_runs_parts_and_again_for_another_count(tiny_run, calibrating, monkeypatch):
    import torch

    import nmt.inference.translator as translator_module
    from nmt.inference.translator import Translator

    parts = []
    real = translator_module.search_in_parts
    monkeypatch.setattr(translator_module, "search_in_parts",
                        lambda batches, threads, *args: parts.append(threads) or real(batches, threads, *args))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for count in (2, 1, 2):
            Translator.load(tiny_run, precision="auto").resolve_precision(
                Translator.load(tiny_run).decode_options(inter_threads=count))
    finally:
        torch.set_num_threads(threads)
    # float32 and bf16 each searched once in the run's parts per calibration; the third load is cached
    assert calibrating.runs == 2 and parts == [2, 2, 1, 1]


@pytest.fixture
def searched(monkeypatch):
    """The number of sentences in each calibration batch (its sources, recorded)."""
    sizes = []
    real = pa.calibration_sources

    def recording(*args, **kwargs):
        sources = real(*args, **kwargs)
        sizes.append(len(sources))
        return sources

    monkeypatch.setattr(pa, "calibration_sources", recording)
    return sizes


def test_calibration_decodes_the_runs_batch_size(tiny_run, calibrating, searched):
    """Greedy's default batches hold hundreds of sentences: the calibration decodes as many
    (capped), beam search's fewer, the server's its own; each size class is cached apart."""
    from nmt.inference.translator import Translator

    def resolve(batch_sentences=None, **settings):
        translator = Translator.load(tiny_run, precision="auto")
        options = translator.decode_options(**settings)
        return translator.resolve_precision(options, batch_sentences=batch_sentences)

    greedy = resolve(beam=1, batch_tokens=8000, shortlist=0)
    assert searched == [pa.MAX_SENTENCES] and greedy.sentences == pa.MAX_SENTENCES
    resolve(beam=5, batch_tokens=8000, shortlist=0)
    assert searched[-1] == 8000 // 5 // (pa.LENGTH + 1)
    served = resolve(64, beam=1, batch_tokens=8000, shortlist=0)
    assert searched[-1] == 64 and served.sentences == 64 and calibrating.runs == 3
    assert resolve(100, beam=1, batch_tokens=8000, shortlist=0).cached  # 64 and 100: one class
    assert not resolve(8, beam=1, batch_tokens=8000, shortlist=0).cached and calibrating.runs == 4


@pytest.mark.parametrize("small_bf16, mode", [(0.5, "bf16"), (1.0, "float32")])
def test_a_server_takes_bf16_only_if_it_wins_at_its_small_and_its_large_calls(
        tiny_run, calibrating, searched, monkeypatch, small_bf16, mode):
    """``nmt serve`` calibrates at an eighth of its largest call and at the largest: bf16 faster
    at 64 sentences but not at 8 keeps float32."""
    from nmt.inference.translator import Translator
    from nmt.tools.serve_model import calibration_sizes

    def by_size(runners, **kwargs):
        calibrating.runs += 1
        return ({"float32": 1.0, "bf16": small_bf16} if searched[-1] == 8 else {"float32": 1.0, "bf16": 0.5}), 3

    monkeypatch.setattr(pa, "calibrate", by_size)
    assert calibration_sizes(64) == [8, 64] and calibration_sizes(1) == [1] and calibration_sizes(None) == [None]
    translator = Translator.load(tiny_run, precision="auto")
    choice = translator.resolve_precision(translator.decode_options(beam=2, shortlist=0),
                                          batch_sentences=calibration_sizes(64))
    assert searched == [8, 64][: 2 if small_bf16 < 1 else 1]
    assert translator.precision == choice.mode == mode


def test_a_first_translate_calibrates_on_its_own_batch(tiny_run, calibrating, searched):
    from nmt.inference.translator import Translator

    translator = Translator.load(tiny_run, precision="auto")
    translator.translate(SOURCES, beam=1)
    assert searched == [len(SOURCES)] and translator.precision_choice.sentences == len(SOURCES)


def test_explicit_precision_never_calibrates(tiny_run, calibrating):
    from nmt.inference.translator import Translator

    for precision in ("float32", "bf16"):
        translator = Translator.load(tiny_run, precision=precision)
        assert translator.resolve_precision() is None and translator.precision == precision
        translator.translate(SOURCES)
    assert calibrating.runs == 0


def test_a_cpu_without_bf16_stays_float32_without_timing(tiny_run, calibrating, monkeypatch):
    from nmt.inference.translator import Translator

    monkeypatch.setattr(pa, "native_bf16", lambda cpuinfo=None: False)
    choice = Translator.load(tiny_run, precision="auto").resolve_precision()
    assert choice.mode == "float32" and "no bf16" in choice.reason and calibrating.runs == 0


def test_a_small_model_stays_float32_without_timing(tiny_run, calibrating, monkeypatch):
    from nmt.inference.translator import Translator

    monkeypatch.setattr(pa, "MIN_PARAMETERS", 10**9)
    choice = Translator.load(tiny_run, precision="auto").resolve_precision()
    assert choice.mode == "float32" and "too small" in choice.reason and calibrating.runs == 0


def test_bf16_scores_references(tiny_run, calibrating):
    """Forced decoding runs under the autocast of the chosen mode (bf16 weights need it)."""
    from nmt.inference.translator import Translator

    calibrating.timings = {"float32": 1.0, "bf16": 0.5}
    for translator in (Translator.load(tiny_run, precision="bf16"), Translator.load(tiny_run)):
        scores = translator.score(SOURCES[:2], ["a b", "c"])
        assert translator.precision == "bf16" and len(scores) == 2


def test_cli_precision_auto_says_what_it_chose(tiny_run, tmp_path, repo):
    import subprocess
    import sys

    src = tmp_path / "in.txt"
    src.write_text("\n".join(SOURCES) + "\n")
    env = {**os.environ, "PYTHONPATH": str(repo), "NMT_CACHE_DIR": str(tmp_path / "cache")}
    outs, said = {}, {}
    for precision in ("auto", "float32"):
        done = subprocess.run([sys.executable, "-m", "nmt", "translate", str(tiny_run), "-i", str(src),
                               "--precision", precision, "-v", "--beam", "2"], capture_output=True,
                              text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        outs[precision], said[precision] = done.stdout, done.stderr
    assert "precision auto ->" in said["auto"] and "precision auto" not in said["float32"]
    if "auto -> float32" in said["auto"]:
        assert outs["auto"] == outs["float32"]


def test_calibrate_stops_starting_rounds_past_its_budget():
    now = [0.0]

    def run():
        now[0] += 1.0

    best, rounds = pa.calibrate({"float32": run, "bf16": run}, rounds=5, budget=3.5, clock=lambda: now[0])
    assert rounds == 1 and best == {"float32": 1.0, "bf16": 1.0}  # warm-ups + one round = 4 s
