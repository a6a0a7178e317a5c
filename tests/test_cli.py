"""CLI: help for every verb, exit codes, config show/validate."""
import subprocess
import sys

import pytest

from nmt.cli import build_parser, main

VERBS = ["train", "translate", "evaluate", "plot", "bench", "sweep", "config", "info"]


def test_top_level_help_lists_verbs(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out
    assert "examples:" in out


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help_with_examples(verb, capsys):
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_config_validate_ok(repo, capsys):
    assert main(["config", "validate", str(repo / "recipes/fr-en.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_config_validate_misspelt_key_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {path: /tmp}\nmodel:\n  encoder: {hiden_size: 3}\n")
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.encoder.hiden_size" in err and "did you mean 'model.encoder.hidden_size'" in err
    assert "Traceback" not in err


def test_config_show_applies_overrides(repo, capsys):
    assert main(["config", "show", str(repo / "recipes/fr-en.yaml"), "--set", "train.lr=0.01"]) == 0
    import yaml
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["lr"] == 0.01
    assert shown["model"]["attention"]["kind"] == "bahdanau"


def test_bad_verb_and_missing_args_exit_2():
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["frobnicate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train"])
    assert info.value.code == 2


def test_console_script_runs_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {path: /tmp}\ntrain: {lr: fast}\n")
    proc = subprocess.run([sys.executable, "-m", "nmt", "config", "validate", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.lr: got 'fast', expected a number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_info_prints_versions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "accelerate" in out and "threads" in out


def test_allocator_tuning_respects_the_users_malloc_settings(monkeypatch):
    import ctypes
    import sys

    from nmt.cli import keep_freed_memory_for_reuse
    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory_for_reuse() is False and calls == []
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    for name in [n for n in __import__("os").environ if n.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    assert keep_freed_memory_for_reuse() is True
    # M_MMAP_THRESHOLD (-3) at glibc's 32 MiB maximum, M_TRIM_THRESHOLD (-1) at 512 MiB
    assert calls == [(-3, 32 * 2**20), (-1, 512 * 2**20)]
