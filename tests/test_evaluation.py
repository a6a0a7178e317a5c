"""nmt.tools.evaluate: sacrebleu scoring, file reading rules, error messages and ``nmt evaluate``."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from nmt.errors import DataError, NmtError
from nmt.tools.evaluate import (
    evaluate_cli,
    evaluate_files,
    format_scores,
    parse_metrics,
    read_lines,
    score_corpus,
)

HYPS = ["The cat sat on a mat.", "Hello world!", "It is raining today, isn't it?",
        "We will see tomorrow."]
REFS = ["The cat sat on the mat.", "Hello there, world!", "It's raining today, isn't it?",
        "We'll see tomorrow."]
REFS2 = ["A cat was sitting on the mat.", "Hello world!", "Today it rains, doesn't it?",
         "See you tomorrow."]


def write(path: Path, lines: list[str], trailing_newline: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""), encoding="utf-8")
    return path


def cli_args(**kw) -> argparse.Namespace:
    """The namespace `nmt evaluate` parses (every option at its default), with ``kw`` set."""
    from nmt.cli import build_parser

    args = build_parser().parse_args(["evaluate"])
    vars(args).update(kw)
    return args


# -------------------------------------------------------------------------------------- scoring

def test_scores_equal_sacrebleu_api():
    got = score_corpus(HYPS, [REFS])
    assert list(got) == ["bleu", "chrf", "ter"]
    bleu = sacrebleu.corpus_bleu(HYPS, [REFS])
    chrf = sacrebleu.corpus_chrf(HYPS, [REFS])
    ter = sacrebleu.corpus_ter(HYPS, [REFS])
    assert got["bleu"]["score"] == pytest.approx(bleu.score, abs=1e-9)
    assert got["chrf"]["score"] == pytest.approx(chrf.score, abs=1e-9)
    assert got["ter"]["score"] == pytest.approx(ter.score, abs=1e-9)
    assert 0 < got["bleu"]["score"] < 100 and got["ter"]["score"] > 0  # a non-trivial example
    assert got["bleu"]["line"] == str(bleu)
    assert got["chrf"]["line"] == str(chrf)
    assert got["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|")
    assert got["chrf"]["signature"].startswith("nrefs:1|") and "nc:6" in got["chrf"]["signature"]
    assert got["ter"]["signature"].startswith("nrefs:1|case:lc|tok:tercom")
    assert format_scores(got).splitlines()[0] == \
        f"BLEU|{got['bleu']['signature']} = {str(bleu)[len('BLEU = '):]}"


def test_bleu_tokenizer_and_metric_subset():
    got = score_corpus(HYPS, [REFS], metrics=["bleu"], bleu_tokenize="char")
    assert list(got) == ["bleu"]
    expected = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="char").score
    assert got["bleu"]["score"] == pytest.approx(expected)
    assert got["bleu"]["score"] != pytest.approx(score_corpus(HYPS, [REFS], "bleu")["bleu"]["score"])
    assert "tok:char" in got["bleu"]["signature"]
    with pytest.raises(NmtError, match="unknown BLEU tokenizer 'nope'"):
        score_corpus(HYPS, [REFS], "bleu", bleu_tokenize="nope")


def test_multi_reference():
    got = score_corpus(HYPS, [REFS, REFS2])
    assert got["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score)
    assert got["ter"]["score"] == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS, REFS2]).score)
    assert got["bleu"]["signature"].startswith("nrefs:2|")
    # the second reference matches line 2 exactly, so two references score higher than one
    assert got["bleu"]["score"] > score_corpus(HYPS, [REFS])["bleu"]["score"]


def test_score_corpus_rejects_bad_shapes():
    with pytest.raises(NmtError, match=r"score_corpus\(hyps, \[refs\]\)"):
        score_corpus(HYPS, REFS)  # a flat list instead of a list of reference sets
    with pytest.raises(DataError, match="reference set 1 has 3 segments but there are 4 hypotheses"):
        score_corpus(HYPS, [REFS[:3]])
    with pytest.raises(DataError, match="no hypotheses"):
        score_corpus([], [[]])


def test_parse_metrics():
    assert parse_metrics(None) == ["bleu", "chrf", "ter"]
    assert parse_metrics("BLEU, chrf,bleu") == ["bleu", "chrf"]
    with pytest.raises(NmtError, match="unknown metric 'blue'; did you mean 'bleu'"):
        parse_metrics("blue,chrf")
    with pytest.raises(NmtError, match="no metric"):
        parse_metrics(" , ")


# ---------------------------------------------------------------------------------------- files

def test_read_lines_like_sacrebleu_cli(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"one  \r\ntwo\n\nfour\n")
    assert read_lines(f) == ["one", "two", "", "four"]  # final newline dropped, blank line kept
    f.write_bytes(b"one\ntwo")  # no final newline
    assert read_lines(f) == ["one", "two"]
    f.write_bytes(b"")
    assert read_lines(f) == []


def test_scores_equal_sacrebleu_cli(tmp_path):
    exe = shutil.which("sacrebleu") or str(Path(sys.executable).with_name("sacrebleu"))
    if not Path(exe).exists():
        pytest.skip("the sacrebleu command line is not installed")
    hyp = write(tmp_path / "hyp.txt", [h + "  \r" if i == 1 else h for i, h in enumerate(HYPS)])
    ref = write(tmp_path / "ref.txt", REFS, trailing_newline=False)
    ref2 = write(tmp_path / "ref2.txt", REFS2)
    for refs in ([ref], [ref, ref2]):
        out = subprocess.run([exe, *map(str, refs), "-i", str(hyp), "-m", "bleu", "chrf", "ter",
                              "-b", "-w", "6"], capture_output=True, text=True, check=True).stdout
        expected = json.loads(out)
        got = evaluate_files(hyp, refs)
        assert [round(got[m]["score"], 6) for m in ("bleu", "chrf", "ter")] == \
            pytest.approx(expected, abs=1e-6)


def test_evaluate_files_errors(tmp_path):
    hyp = write(tmp_path / "hyp.txt", HYPS)
    short = write(tmp_path / "short.txt", REFS[:3])
    with pytest.raises(DataError) as err:
        evaluate_files(hyp, [short])
    msg = str(err.value)
    assert "hyp.txt" in msg and "has 4 lines" in msg and "short.txt" in msg and "has 3 lines" in msg

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match=r"hypothesis file .*empty\.txt' is empty"):
        evaluate_files(empty, [short])
    with pytest.raises(DataError, match=r"reference file .*empty\.txt' is empty"):
        evaluate_files(hyp, [empty])

    with pytest.raises(DataError, match=r"reference file .*missing\.txt' not found"):
        evaluate_files(hyp, [tmp_path / "missing.txt"])

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("ok\nstill ok\nfatigu\u00e9\nend\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        evaluate_files(hyp, [latin1])
    msg = str(err.value)
    assert "latin1.txt" in msg and "not UTF-8" in msg and "line 3" in msg and "0xe9" in msg
    assert "byte 7 of the line" in msg

    with pytest.raises(NmtError, match="unknown metric 'bleu4'"):
        evaluate_files(hyp, [hyp], metrics="bleu4")


# ------------------------------------------------------------------------------------------ CLI

def test_cli_files_text_and_json(tmp_path, capsys):
    hyp = write(tmp_path / "hyp.txt", HYPS)
    ref = write(tmp_path / "ref.txt", REFS)
    assert evaluate_cli(cli_args(hyp=str(hyp), ref=[str(ref)], metrics="bleu,chrf")) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("BLEU|nrefs:1|") and out[1].startswith("chrF2|nrefs:1|")
    assert f"= {sacrebleu.corpus_bleu(HYPS, [REFS]).score:.2f} " in out[0]

    assert evaluate_cli(cli_args(hyp=str(hyp), ref=[str(ref)], json=True)) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["scores"]) == {"bleu", "chrf", "ter"}
    assert data["scores"]["ter"]["score"] == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS]).score)


def test_cli_argument_errors(tmp_path):
    with pytest.raises(NmtError, match="one of these argument sets") as err:
        evaluate_cli(cli_args())
    assert "--hyp OUT --ref REF" in str(err.value) and "nmt evaluate RUN_DIR" in str(err.value)
    with pytest.raises(NmtError, match="--hyp needs at least one --ref"):
        evaluate_cli(cli_args(hyp="h.txt"))
    with pytest.raises(NmtError, match="--ref needs --hyp"):
        evaluate_cli(cli_args(ref=["r.txt"]))
    with pytest.raises(NmtError, match="or --hyp/--ref files"):
        evaluate_cli(cli_args(run_dir="runs/x", hyp="h.txt", ref=["r.txt"]))
    with pytest.raises(NmtError, match="--beam only apply when evaluating a run directory"):
        evaluate_cli(cli_args(hyp="h.txt", ref=["r.txt"], beam=5))
    with pytest.raises(NmtError, match="--greedy means beam 1"):
        evaluate_cli(cli_args(run_dir=str(tmp_path), greedy=True, beam=4))


def test_cli_main_exit_code(tmp_path, capsys):
    from nmt.cli import main

    hyp = write(tmp_path / "hyp.txt", HYPS)
    assert main(["evaluate", "--hyp", str(hyp), "--ref", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt' not found" in capsys.readouterr().err


# ------------------------------------------------------------------------- run-directory mode

def test_run_mode_on_a_trained_run(tiny_run, tmp_path, capsys):
    """``nmt evaluate RUN``: the run's translator on its corpus's test split, scored and written
    into the run; decode options from the recipe (beam 3) or the command line (--greedy)."""
    import shutil

    from nmt.data.corpus import load_corpus
    from nmt.inference.translator import Translator

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    translator = Translator.load(run)
    test = load_corpus(translator.recipe.data, splits=("test",))["test"]
    sources, refs = [str(s) for s in test["src"]], [str(t) for t in test["tgt"]]
    for options, beam in (({}, 3), ({"greedy": True}, 1)):
        assert evaluate_cli(cli_args(run_dir=str(run), json=True, metrics="bleu,ter", **options)) == 0
        hyps = (run / "eval" / f"test.best.beam{beam}.hyp").read_text(encoding="utf-8").splitlines()
        assert hyps == translator.translate(sources, beam=beam)
        record = json.loads((run / "eval" / f"test.best.beam{beam}.json").read_text(encoding="utf-8"))
        assert record["split"] == "test" and record["beam"] == beam and record["checkpoint"] == "best"
        assert record["metrics"] == ["bleu", "ter"] and record["sentences"] == len(sources) > 10
        assert record["timestamp"] and record["command"].startswith("nmt evaluate ")
        assert record["scores"]["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
        assert record["scores"]["ter"]["score"] == pytest.approx(sacrebleu.corpus_ter(hyps, [refs]).score)
        assert record["scores"]["bleu"]["signature"].startswith("nrefs:1|")
        assert not [p for p in (run / "eval").iterdir() if p.name.startswith(".")]  # no temp files left
        assert json.loads(capsys.readouterr().out)["scores"] == record["scores"]

    with pytest.raises(NmtError, match="run directory .* not found"):
        evaluate_cli(cli_args(run_dir=str(tmp_path / "nope")))
    with pytest.raises(NmtError, match="--split 'dev': unknown split; the run's corpus has train, valid"):
        evaluate_cli(cli_args(run_dir=str(run), split="dev"))


def test_run_mode_applies_decode_options_onto_the_recipe(tiny_run, tmp_path, loaded_translators, capsys):
    """Every decode option of `nmt evaluate` lands in the run's recipe decode section, is recorded,
    and an out-of-range one is refused naming the option."""
    import shutil

    loaded = loaded_translators
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert evaluate_cli(cli_args(run_dir=str(run), length_penalty=0.5, max_input_len=7, json=True)) == 0
    assert loaded[-1].recipe.decode.length_penalty == 0.0, "the flags are passed, the loaded recipe is kept"
    record = json.loads(capsys.readouterr().out)
    decode = record["decode"]
    assert (decode["beam"], decode["length_penalty"], decode["max_input_len"]) == (3, 0.5, 7)
    assert "--length-penalty 0.5 --max-input-len 7" in record["command"]
    with pytest.raises(NmtError, match="--min-len/decode.min_len: got -1, must be >= 0"):
        evaluate_cli(cli_args(run_dir=str(run), min_len=-1))
    # a yes/no option is recorded as a flag that the command line takes back
    assert evaluate_cli(cli_args(run_dir=str(run), sample=True, seed=3, json=True)) == 0
    command = json.loads(capsys.readouterr().out)["command"]
    assert "--sample --seed 3" in command and "True" not in command


def test_a_truncated_gz_hypothesis_file_is_a_data_error(tmp_path):
    import gzip

    data = gzip.compress("\n".join(HYPS).encode() + b"\n")
    (tmp_path / "hyp.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all\n")
    refs = write(tmp_path / "ref.txt", REFS)
    for name in ("hyp.gz", "bad.gz"):
        with pytest.raises(DataError, match=f"{name}' is not a complete gzip file"):
            evaluate_files(tmp_path / name, refs)


def test_scores_are_printed_before_a_failed_save(tiny_run, tmp_path, capsys, monkeypatch):
    """A run directory that cannot take the results (RUN/eval a file, a read-only file system)
    still shows the scores; then exit 2 says why nothing was saved."""
    import errno

    from nmt.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "eval").write_text("in the way\n")
    assert main(["evaluate", str(run), "--greedy", "--metrics", "bleu"]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("BLEU|nrefs:1")
    assert "could not be saved" in captured.err and "eval is a file, not a directory" in captured.err
    (run / "eval").unlink()

    import nmt.tools.evaluate as evaluate_module

    def read_only(path, text):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(evaluate_module, "atomic_write_text", read_only)
    assert main(["evaluate", str(run), "--greedy", "--metrics", "bleu", "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["scores"]["bleu"]["score"] >= 0
    assert "Read-only file system" in captured.err and str(run / "eval") in captured.err


def test_run_mode_on_a_test_set_of_your_own(tiny_run, tmp_path, capsys):
    """``nmt evaluate RUN --src SRC --ref REF --ref REF2``: the file translated by the run and scored
    against both references with sacrebleu, stored under eval/file-SRC.*; mismatched files refused."""
    import shutil

    from nmt.inference.translator import Translator

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    sources = ["Je suis fatigué.", "Il fait froid.", "Merci beaucoup."]
    refs = [["I am tired.", "It is cold.", "Thank you very much."], ["I'm tired.", "It's cold.", "Thanks a lot."]]
    (tmp_path / "my test.fr").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    for i, ref in enumerate(refs):
        (tmp_path / f"ref{i}.en").write_text("".join(r + "\n" for r in ref), encoding="utf-8")
    ref_files = [str(tmp_path / "ref0.en"), str(tmp_path / "ref1.en")]
    assert evaluate_cli(cli_args(run_dir=[str(run)], src=str(tmp_path / "my test.fr"), ref=ref_files,
                                 json=True, greedy=True)) == 0
    hyps = (run / "eval" / "file-my_test.fr.best.beam1.hyp").read_text(encoding="utf-8").splitlines()
    assert hyps == Translator.load(run).translate(sources, beam=1)
    record = json.loads((run / "eval" / "file-my_test.fr.best.beam1.json").read_text(encoding="utf-8"))
    assert record["src"] == str(tmp_path / "my test.fr") and record["refs"] == ref_files
    assert record["scores"]["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score)
    assert record["scores"]["bleu"]["signature"].startswith("nrefs:2|")
    assert "--src" in record["command"] and record["sentences"] == 3
    capsys.readouterr()

    (tmp_path / "short.en").write_text("I am tired.\n", encoding="utf-8")
    with pytest.raises(NmtError, match="source file .* has 3 lines, reference file .*short.en' has 1"):
        evaluate_cli(cli_args(run_dir=[str(run)], src=str(tmp_path / "my test.fr"), ref=[str(tmp_path / "short.en")]))
    with pytest.raises(NmtError, match="needs at least one --ref"):
        evaluate_cli(cli_args(run_dir=[str(run)], src=str(tmp_path / "my test.fr")))
    with pytest.raises(NmtError, match="--src translates with a run"):
        evaluate_cli(cli_args(src=str(tmp_path / "my test.fr"), ref=ref_files))
