"""``train.precision: auto``: bf16 where the hardware computes it, float32 elsewhere; ``train.softmax:
auto``: the softmax over part of the vocabulary in float32 on a CPU; a resumed run keeps what it
started with."""
from __future__ import annotations

import logging
import shutil

import pytest

from nmt.training import precision as tp

WITH_BF16 = "model name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
AVX512_ONLY = "model name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
AVX2_ONLY = "model name\t: Some CPU\nflags\t\t: fpu sse2 avx2 fma\n"
AMX = "model name\t: Some CPU\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n"


@pytest.mark.parametrize("cpuinfo, mode", [(WITH_BF16, "bf16"), (AMX, "bf16"), (AVX512_ONLY, "no"),
                                           (AVX2_ONLY, "no"), ("", "no")])
def test_auto_takes_bf16_only_on_a_cpu_with_bf16_instructions(cpuinfo, mode):
    decision = tp.resolve_precision("auto", "cpu", cpuinfo=cpuinfo)
    assert decision.mode == mode
    assert decision.note.startswith(f"train.precision auto: {mode}")
    assert not decision.warning
    if cpuinfo in (AVX512_ONLY, AVX2_ONLY):
        assert "emulated" in decision.note


def test_a_resumed_run_keeps_the_mode_it_started_with():
    assert tp.resolve_precision("auto", "cpu", saved="bf16", cpuinfo=AVX2_ONLY).mode == "bf16"
    assert tp.resolve_precision("auto", "cpu", saved="no", cpuinfo=WITH_BF16).mode == "no"
    assert tp.resolve_precision("auto", "cpu", saved="auto", cpuinfo=WITH_BF16).mode == "bf16"


def test_a_mode_given_is_kept_and_bf16_without_the_instructions_is_warned_about():
    assert tp.resolve_precision("no", "cpu", cpuinfo=WITH_BF16) == tp.Decision("no")
    assert tp.resolve_precision("bf16", "cpu", cpuinfo=WITH_BF16) == tp.Decision("bf16")
    slow = tp.resolve_precision("bf16", "cpu", cpuinfo=AVX2_ONLY)
    assert slow.mode == "bf16"
    assert "emulated" in slow.warning and "train.precision: auto" in slow.warning
    assert not tp.resolve_precision("bf16", "cpu", cpuinfo="").warning  # unknown: not warned about


def test_the_recipe_accepts_auto_and_names_it_among_the_choices(tiny_recipe):
    from nmt.errors import NmtError

    assert tiny_recipe("train.precision=auto").train.precision == "auto"
    assert tiny_recipe("train.softmax=auto").train.softmax == "auto"
    with pytest.raises(NmtError, match="'auto'"):
        tiny_recipe("train.precision=bf17")
    with pytest.raises(NmtError, match="'auto'"):
        tiny_recipe("train.softmax=some")


def test_training_with_auto_records_the_chosen_modes_and_resume_keeps_them(tmp_path, tiny_recipe, monkeypatch,
                                                                         caplog):
    """The run's recipe.yaml says the precision and softmax it trained with; resumed on a machine
    where ``auto`` would choose the others, it keeps its own. (accelerate fixes the mixed precision
    once per process, so this test trains in float32 only: the machine first lacks bf16, then has it.)"""
    from nmt.training.loop import train
    from nmt.training.rundir import saved_train

    monkeypatch.setattr(tp, "bf16_instructions", lambda cpuinfo=None: False)
    run = tmp_path / "run"
    recipe = tiny_recipe("train.precision=auto", "train.softmax=auto", "train.max_steps=2", "train.valid_every=2")
    with caplog.at_level(logging.INFO, logger="nmt.train"):
        train(recipe, run_dir=run)
    assert (recipe.train.precision, recipe.train.softmax) == ("no", "batch")
    assert (saved_train(run).precision, saved_train(run).softmax) == ("no", "batch")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("train.precision auto: no (the CPU has no bf16 instructions") for m in messages)
    assert any(m.startswith("train.softmax auto: batch (float32 on a CPU") for m in messages)
    assert not any("trained the fr-en recipe" in m for m in messages)  # the hint is for the full softmax only

    monkeypatch.setattr(tp, "bf16_instructions", lambda cpuinfo=None: True)
    resumed = tiny_recipe("train.precision=auto", "train.softmax=auto", "train.max_steps=4", "train.valid_every=2")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nmt.train"):
        train(resumed, run_dir=run, resume=True)
    assert (resumed.train.precision, resumed.train.softmax) == ("no", "batch")
    assert (saved_train(run).precision, saved_train(run).softmax) == ("no", "batch")
    messages = [r.getMessage() for r in caplog.records]
    assert "train.precision auto: no, as the run was started" in messages
    assert "train.softmax auto: batch, as the run was started" in messages
    changed = [m for m in messages if "changed settings" in m]
    assert changed and "max_steps" in changed[0] and "precision" not in changed[0] and "softmax" not in changed[0]


def test_float32_training_with_the_full_softmax_logs_the_hint(tmp_path, tiny_recipe, monkeypatch, caplog):
    from nmt.training.loop import train

    monkeypatch.setattr(tp, "bf16_instructions", lambda cpuinfo=None: False)
    with caplog.at_level(logging.INFO, logger="nmt.train"):
        train(tiny_recipe("train.precision=auto", "train.max_steps=1", "train.valid_every=1"), run_dir=tmp_path / "run")
    assert any("train.softmax: batch" in r.getMessage() and "trained the fr-en recipe" in r.getMessage()
               for r in caplog.records)


def test_a_run_directory_without_a_readable_recipe_has_no_saved_settings(tmp_path, tiny_run):
    from nmt.training.rundir import saved_train

    assert saved_train(tmp_path / "nothing") is None
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "recipe.yaml").write_text("train: [unclosed\n")
    assert saved_train(copy) is None


@pytest.mark.parametrize("mode, device, softmax", [("no", "cpu", "batch"), ("bf16", "cpu", "full"),
                                                   ("fp16", "cpu", "full"), ("no", "cuda", "full"),
                                                   ("bf16", "cuda", "full")])
def test_softmax_auto_takes_the_subset_only_for_float32_on_a_cpu(mode, device, softmax):
    decision = tp.resolve_softmax("auto", mode, device)
    assert decision.mode == softmax and decision.note.startswith(f"train.softmax auto: {softmax} (")


def test_softmax_given_is_kept_and_a_resumed_run_keeps_its_softmax():
    for given in ("full", "batch"):
        assert tp.resolve_softmax(given, "no", "cpu") == tp.Decision(given)
        assert tp.resolve_softmax(given, "bf16", "cuda", saved="batch" if given == "full" else "full").mode == given
    assert tp.resolve_softmax("auto", "no", "cpu", saved="full").mode == "full"
    assert tp.resolve_softmax("auto", "bf16", "cpu", saved="batch").mode == "batch"
    assert tp.resolve_softmax("auto", "no", "cpu", saved="auto").mode == "batch"


def test_the_softmax_hint_is_said_for_float32_training_on_a_cpu_with_the_full_softmax_only():
    assert "train.softmax: batch" in tp.softmax_hint("no", "full", "cpu")
    for mode, softmax, device in (("bf16", "full", "cpu"), ("no", "batch", "cpu"), ("no", "full", "cuda")):
        assert tp.softmax_hint(mode, softmax, device) == ""
