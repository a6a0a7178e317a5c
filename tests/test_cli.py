"""CLI: help for every verb, exit codes, config show/validate."""
import subprocess
import sys

import pytest

from nmt.cli import build_parser, main

VERBS = ["train", "translate", "evaluate", "average", "plot", "bench", "sweep", "config", "info"]


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


def test_config_show_prints_the_recipe_with_its_base_applied(repo, capsys):
    import yaml

    assert main(["config", "show", str(repo / "recipes/fr-en-luong.yaml")]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert "base" not in shown
    assert shown["model"]["attention"]["kind"] == "luong-general"  # the variant's key
    assert shown["train"]["budget_minutes"] == 30 and shown["train"]["precision"] == "auto"  # fr-en's
    assert shown["output"]["name"] == "fr-en-luong"


def test_no_stop_criterion_is_exit_2_for_validate_and_train(tmp_path, capsys):
    recipe = tmp_path / "endless.yaml"
    recipe.write_text("data: {path: /tmp}\ntrain: {lr: 0.001}\n")
    for argv in (["config", "validate", str(recipe)], ["train", str(recipe), "--run-dir", str(tmp_path / "run")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no stop criterion" in err and "Traceback" not in err
        for key in ("train.max_steps", "train.max_epochs", "train.budget_minutes", "train.patience"):
            assert key in err
    assert not (tmp_path / "run").exists()
    # a --set that adds the criterion makes it valid; so does clearing one and setting another
    assert main(["config", "validate", str(recipe), "--set", "train.max_steps=10"]) == 0
    assert main(["config", "validate", str(recipe), "--set", "train.max_steps=null",
                 "--set", "train.budget_minutes=1"]) == 0
    assert main(["config", "validate", str(recipe), "--set", "train.max_steps=null"]) == 2
    capsys.readouterr()


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
    assert "train.precision auto here: " in out  # what the fr-en recipe trains in on this machine


def test_allocator_tuning_respects_the_users_malloc_settings(monkeypatch):
    import ctypes
    import sys

    from nmt.heap import keep_freed_memory_for_reuse
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


DECODING_COMMANDS = [(["translate", "RUN"], ()), (["evaluate", "RUN"], ("n_best",)),
                     (["bench", "translate", "RUN"], ("n_best",)), (["plot", "attention", "RUN"], ("n_best",))]


@pytest.mark.parametrize("argv,excluded", DECODING_COMMANDS)
def test_decode_options_are_the_recipe_schema(argv, excluded, capsys):
    """Every decode field is an option (name, type and help from DecodeConfig) of every decoding
    command; options left out stay None, so the run's recipe decides."""
    import dataclasses

    from nmt.config import DecodeConfig, decode_arguments

    parser = build_parser()
    fields = [f for f in dataclasses.fields(DecodeConfig) if f.name not in excluded]
    given = {"beam": 2, "length_penalty": 0.5, "max_len_a": 1.25, "shortlist": 7, "max_input_len": 9}
    args = parser.parse_args(argv + [x for name, value in given.items()
                                     for x in (f"--{name.replace('_', '-')}", str(value))])
    for f in fields:
        value = vars(args)[f.name]
        assert value == given.get(f.name, 1 if (f.name == "beam" and argv[0] == "plot") else None), f.name
    assert decode_arguments(args) == given
    assert decode_arguments(parser.parse_args(argv + ["--greedy"]))["beam"] == 1
    with pytest.raises(SystemExit):
        parser.parse_args(argv[:-1] + ["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        # a yes/no setting is a pair of flags (--sample, --no-sample), the others take a value
        spelled = f"{flag}, --no-{flag[2:]}" if f.type in (bool, "bool") else f"{flag} {f.metadata['metavar']}"
        assert f"{spelled} {' '.join(f.metadata['help'].split())}" in shown, flag
    assert "--n-best" not in shown if excluded else "--n-best" in shown


@pytest.mark.parametrize("flags,named", [
    (["--beam", "0"], "--beam/decode.beam: got 0, must be >= 1"),
    (["--length-penalty", "-1"], "--length-penalty/decode.length_penalty: got -1.0, must be >= 0"),
    (["--max-len-a", "inf"], "--max-len-a/decode.max_len_a: got inf, must be a finite number"),
    (["--batch-tokens", "0"], "--batch-tokens/decode.batch_tokens: got 0, must be >= 1"),
    (["--beam", "2", "--n-best", "3"], "--n-best/decode.n_best: got 3, must be <= --beam/decode.beam (2)"),
    (["--greedy", "--beam", "3"], "--greedy means beam 1"),
    (["--sample", "--beam", "3"], "--sample/decode.sample: sampling draws one token at a time and excludes "
                                  "beam search (--beam/decode.beam 3)"),
    (["--sample", "--top-p", "0"], "--top-p/decode.top_p: got 0.0, must be in (0, 1]"),
    (["--sample", "--top-p", "1.01"], "--top-p/decode.top_p: got 1.01, must be in (0, 1]"),
    (["--sample", "--temperature", "0"], "--temperature/decode.temperature: got 0.0, must be in [0.001, 100]"),
    (["--sample", "--temperature", "-0.5"], "--temperature/decode.temperature: got -0.5, must be in [0.001, 100]"),
])
def test_out_of_range_decode_options_exit_2_naming_the_option(tmp_path, capsys, flags, named):
    # checked before the run directory is read: the run does not even need to exist
    assert main(["translate", str(tmp_path / "no-run"), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_recipe_decode_ranges_come_from_the_schema(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {path: /tmp}\ndecode: {max_input_len: 0, no_repeat_ngram: -2, beam: 2, n_best: 3}\n")
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "decode.max_input_len: got 0, must be >= 1" in err
    assert "decode.no_repeat_ngram: got -2, must be >= 0" in err


@pytest.mark.parametrize("argv", [["info"], ["config", "show", "RECIPE"]])
def test_a_full_stdout_is_exit_2_with_a_message(repo, tmp_path, argv):
    argv = [str(repo / "recipes/tiny.yaml") if a == "RECIPE" else a for a in argv]
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "nmt", *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    assert "Exception ignored" not in proc.stderr


def test_subcommands_are_the_command_modules_and_shared_options_are_declared_once(repo):
    """Each subcommand is one nmt.commands module (arguments beside the handler); options that
    several commands take are declared in one place."""
    import argparse

    from nmt.commands import COMMANDS

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [command.NAME for command in COMMANDS]
    for command in COMMANDS:
        assert sub.choices[command.NAME].get_default("func") is command.run
    text = "".join(path.read_text(encoding="utf-8") for path in (repo / "nmt").rglob("*.py"))
    for flag in ("--checkpoint", "--precision", "--kernels", "--set", "--beside-busy"):
        assert text.count(f'add_argument("{flag}"') == 1, flag


def test_info_reads_the_cpu_model_and_the_features_fast_paths_use(tmp_path):
    from nmt.tools.info import cpu_model_and_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_bf16 "
                       "amx_tile amx_bf16 sse4_2\n\nprocessor\t: 1\nmodel name\t: Example CPU 9000\n"
                       "flags\t\t: fpu avx2\n")
    assert cpu_model_and_flags(cpuinfo) == ("Example CPU 9000", ["avx2", "avx512f", "avx512_bf16", "amx_tile",
                                                                 "amx_bf16"])
    assert cpu_model_and_flags(tmp_path / "missing") == (None, [])


def test_version_is_the_changelogs_newest_release_and_the_packages(capsys):
    """`nmt --version`, pyproject.toml and the newest released section of CHANGELOG.md agree."""
    import re
    import tomllib
    from pathlib import Path

    from nmt import __version__

    root = Path(__file__).resolve().parents[1]
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$",
                          (root / "CHANGELOG.md").read_text(encoding="utf-8"), flags=re.M)
    assert released and released[0] == __version__
    assert tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"] == __version__
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"nmt {__version__}"
