"""Export directories that lie: an interrupted re-export, graphs of another run, an edited
export.json. Each is refused with exit 2 naming the file, or never happens."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from nmt.cli import main  # noqa: E402
from nmt.config import DecoderConfig, EncoderConfig, ModelConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FR = "le la chat chien maison rouge bleu petit grand mange dort voit un une et sur sous".split()
EN = "the cat dog house red blue small big eats sleeps sees a and on under".split()


def _corpus(n, seed, words):
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(n)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, random_run):
    """vocabulary size -> (run directory, its export)."""
    from nmt.tools.export import export_run

    root = tmp_path_factory.mktemp("export-safety")
    made = {}
    for src_vocab, tgt_vocab in ((30, 22), (34, 26), (40, 30)):
        cfg = ModelConfig(embedding_dim=12, dropout=0.0, activation="tanh",
                          encoder=EncoderConfig(hidden_size=8, dropout=0.0),
                          decoder=DecoderConfig(hidden_size=16, dropout=0.0))
        run = random_run(root / f"run{src_vocab}", cfg, _corpus(200, 0, FR), _corpus(200, 1, EN),
                         src_vocab=src_vocab, tgt_vocab=tgt_vocab, eos_bias=0.5)
        made[src_vocab] = (run, export_run(run, root / f"export{src_vocab}"))
    return made


def _translate(export: Path, tmp_path: Path, capsys) -> tuple[int, str, str]:
    source = tmp_path / "in.fr"
    source.write_text("le chat rouge\nun chien\n", encoding="utf-8")
    code = main(["translate", "--engine", "onnx", str(export), "-i", str(source)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _copy(export: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    return copy


# ------------------------------------------------------------- an interrupted re-export

class _Killed(BaseException):
    """Stands for the process dying mid-export: nothing catches it."""


def test_an_interrupted_re_export_leaves_the_previous_export_whole(runs, tmp_path, monkeypatch, capsys):
    import nmt.tools.export as export_tool

    run_small, export_small = runs[30]
    run_large, _ = runs[40]
    out = _copy(export_small, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = export_tool.atomic_write_bytes

    def dies_after_the_encoder(path, data):
        real(path, data)
        if Path(path).name == "encoder.onnx":
            raise _Killed()

    monkeypatch.setattr(export_tool, "atomic_write_bytes", dies_after_the_encoder)
    with pytest.raises(_Killed):
        export_tool.export_run(run_large, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"], "no staging directory left"
    monkeypatch.undo()
    code, text, err = _translate(out, tmp_path, capsys)
    assert code == 0, err


def test_a_killed_exports_leftovers_are_removed_or_put_back(runs, tmp_path, capsys):
    from nmt.tools.export import export_run

    run, export = runs[30]
    out = tmp_path / "out"
    dead = 2 ** 22 + 7  # above the default pid_max: no such process
    shutil.copytree(export, tmp_path / f".out.{dead}-0123abcd.export")
    shutil.copytree(export, tmp_path / f".out.{dead}-0123abcd.old")  # killed between the renames
    export_run(run, out)
    err = capsys.readouterr().err
    assert "put back" in err and "removed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_refuses_a_link_and_a_directory_of_other_files(runs, tmp_path, capsys):
    run, _ = runs[30]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "link")
    assert main(["export", str(run), "-o", str(tmp_path / "link")]) == 2
    assert "symbolic link" in capsys.readouterr().err and list(elsewhere.iterdir()) == []
    (elsewhere / "notes.txt").write_text("mine")
    assert main(["export", str(run), "-o", str(elsewhere)]) == 2
    assert "other files" in capsys.readouterr().err and (elsewhere / "notes.txt").exists()


# -------------------------------------------------------------- graphs of another run

@pytest.mark.parametrize("other", [30, 40], ids=["smaller vocabulary", "larger vocabulary"])
@pytest.mark.parametrize("graph", ["encoder.onnx", "decoder_step.onnx"])
def test_a_graph_of_another_run_is_refused(runs, tmp_path, capsys, other, graph):
    copy = _copy(runs[34][1], tmp_path)
    shutil.copyfile(runs[other][1] / graph, copy / graph)
    code, text, err = _translate(copy, tmp_path, capsys)
    assert code == 2 and text == ""
    assert graph in err and "Traceback" not in err and "nmt export" in err


def test_a_graph_of_another_run_in_an_export_without_fingerprints(runs, tmp_path, capsys):
    """Exports written before the fingerprints: onnxruntime's failure names the graph."""
    copy = _copy(runs[34][1], tmp_path)
    meta = json.loads((copy / "export.json").read_text())
    del meta["sha256"]
    (copy / "export.json").write_text(json.dumps(meta))
    shutil.copyfile(runs[30][1] / "encoder.onnx", copy / "encoder.onnx")
    code, text, err = _translate(copy, tmp_path, capsys)
    assert code == 2 and "encoder.onnx" in err and "Traceback" not in err


def test_a_tokenizer_model_of_another_export_is_refused(runs, tmp_path, capsys):
    copy = _copy(runs[34][1], tmp_path)
    meta = json.loads((copy / "export.json").read_text())
    shutil.copyfile(runs[30][1] / "spm.src.model", copy / "spm.src.model")
    meta["src_vocab_size"] = 30  # even with its size recorded
    (copy / "export.json").write_text(json.dumps(meta))
    code, _, err = _translate(copy, tmp_path, capsys)
    assert code == 2 and "spm.src.model" in err and "sha256" in err


# ------------------------------------------------------------------- export.json fields

EDITS = {
    "state a number": ({"state": 5}, "state must be a list"),
    "encoder a number": ({"encoder": 5}, "encoder: must be a file name"),
    "memory null": ({"memory": None}, "memory must be a list"),
    "vocabulary a string": ({"tgt_vocab_size": "26"}, "tgt_vocab_size must be a positive integer"),
    "absolute graph": ({"encoder": "/etc/passwd"}, "not a plain file name"),
    "graph above": ({"decoder_step": "../decoder_step.onnx"}, "not a plain file name"),
    "recipe a list": ({"recipe": []}, "recipe must be a mapping"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_export_json_fields_are_checked(runs, tmp_path, capsys, case):
    edit, words = EDITS[case]
    copy = _copy(runs[34][1], tmp_path)
    meta = json.loads((copy / "export.json").read_text())
    meta.update(edit)
    (copy / "export.json").write_text(json.dumps(meta))
    code, _, err = _translate(copy, tmp_path, capsys)
    assert code == 2, err
    assert "export.json" in err and words in err and "Traceback" not in err


def test_a_graph_linked_from_outside_is_refused(runs, tmp_path, capsys):
    copy = _copy(runs[34][1], tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.move(copy / "encoder.onnx", outside)
    os.symlink(outside, copy / "encoder.onnx")
    code, _, err = _translate(copy, tmp_path, capsys)
    assert code == 2 and "encoder.onnx" in err and "leading out of the export directory" in err


def test_an_export_given_to_the_torch_engine_suggests_the_onnx_engine(runs, tmp_path, capsys):
    source = tmp_path / "in.fr"
    source.write_text("le chat\n", encoding="utf-8")
    assert main(["translate", str(runs[34][1]), "-i", str(source)]) == 2
    err = capsys.readouterr().err
    assert "export directory" in err and "--engine onnx" in err
