"""nmt.tools.plots: attention heatmaps, curves from metrics.jsonl, activation plots and ``nmt plot``."""
from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from nmt.errors import DataError, NmtError
from nmt.tools.plots import (
    DPI,
    parse_line_range,
    plot_attention,
    plot_cli,
    plot_curves,
    plot_grad_norms,
    read_metrics,
    save_figure,
)

SRC = ["▁Je", "▁suis", "▁fatigu", "é", ".", "</s>"]
TGT = ["▁I", "▁am", "▁tired", ".", "</s>"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def attention(t: int = len(TGT), s: int = len(SRC), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(s), size=t)


def heatmap_axes(fig):
    return [ax for ax in fig.axes if ax.images]


# ------------------------------------------------------------------------------------ attention

def test_attention_png_labels_and_size(tmp_path):
    out = tmp_path / "sub" / "att.png"
    fig = plot_attention(attention(), SRC, TGT, out, title="bahdanau attention")
    width, height = png_size(out)
    w_in, h_in = fig.get_size_inches()
    assert abs(width - w_in * DPI) <= 1 and abs(height - h_in * DPI) <= 1
    (ax,) = heatmap_axes(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == SRC
    assert [t.get_text() for t in ax.get_yticklabels()] == TGT
    assert all(t.get_rotation() == 90 for t in ax.get_xticklabels())
    assert ax.images[0].get_array().shape == (len(TGT), len(SRC))
    assert fig._suptitle.get_text() == "bahdanau attention"
    assert any(a.get_ylabel() == "attention weight" for a in fig.axes)  # the colour bar
    assert not [p for p in out.parent.iterdir() if p.name != "att.png"]  # no temp file left


def test_attention_scales_with_sentence_length():
    small = plot_attention(attention(), SRC, TGT, None)
    src50 = [f"▁w{i}" for i in range(49)] + ["</s>"]
    tgt50 = [f"▁o{i}" for i in range(47)] + ["</s>"]
    big = plot_attention(attention(48, 50), src50, tgt50, None)
    assert big.get_size_inches()[0] > 2 * small.get_size_inches()[0]
    assert big.get_size_inches()[1] > 2 * small.get_size_inches()[1]
    (ax_big,) = heatmap_axes(big)
    (ax_small,) = heatmap_axes(small)
    assert [t.get_text() for t in ax_big.get_xticklabels()] == src50
    assert ax_big.get_xticklabels()[0].get_fontsize() < ax_small.get_xticklabels()[0].get_fontsize()


def test_attention_formats_by_extension(tmp_path):
    plot_attention(attention(), SRC, TGT, tmp_path / "a.svg")
    plot_attention(attention(), SRC, TGT, tmp_path / "a.pdf")
    plot_attention(attention(), SRC, TGT, tmp_path / "noext")
    assert b"<svg" in (tmp_path / "a.svg").read_bytes()[:400]
    assert (tmp_path / "a.pdf").read_bytes()[:5] == b"%PDF-"
    assert png_size(tmp_path / "noext")[0] > 0  # PNG by default
    with pytest.raises(NmtError, match="unknown image format 'xyz'"):
        plot_attention(attention(), SRC, TGT, tmp_path / "a.xyz")


def test_attention_accepts_tensors_and_marks_local_p_centres():
    torch = pytest.importorskip("torch")
    positions = torch.tensor([0.4, 1.2, 2.5, 3.9, 5.0])
    fig = plot_attention(torch.tensor(attention(), dtype=torch.bfloat16), SRC, TGT, None,
                         title="local-p attention", positions=positions)
    (ax,) = heatmap_axes(fig)
    marks = [line for line in ax.get_lines() if line.get_label().startswith("p_t")]
    assert len(marks) == 1 and marks[0].get_marker() not in (None, "None", "")
    assert np.allclose(marks[0].get_xdata(), positions.numpy())
    assert np.allclose(marks[0].get_ydata(), np.arange(len(TGT)))
    without = plot_attention(attention(), SRC, TGT, None)
    assert not heatmap_axes(without)[0].get_lines()


def test_one_panel_per_head(tmp_path):
    heads = np.stack([attention(len(SRC), len(SRC), seed=h) for h in range(3)])
    fig = plot_attention(None, SRC, SRC, tmp_path / "heads.png", title="encoder self-attention",
                         head_weights=heads)
    panels = heatmap_axes(fig)
    assert len(panels) == 3
    assert [ax.get_title() for ax in panels] == ["head 1", "head 2", "head 3"]
    for ax, h in zip(panels, heads):
        assert [t.get_text() for t in ax.get_xticklabels()] == SRC
        assert [t.get_text() for t in ax.get_yticklabels()] == SRC
        assert np.allclose(ax.images[0].get_array(), h)
    assert png_size(tmp_path / "heads.png")[0] > 0


def test_attention_shape_errors():
    with pytest.raises(NmtError, match=r"shape \(5, 5\).*5 output and 6 source tokens"):
        plot_attention(attention(5, 5), SRC, TGT, None)
    with pytest.raises(NmtError, match="positions has 3 entries but there are 5 output tokens"):
        plot_attention(attention(), SRC, TGT, None, positions=[1, 2, 3])
    with pytest.raises(NmtError, match="expected 3 dimensions"):
        plot_attention(None, SRC, SRC, None, head_weights=attention(6, 6))


# --------------------------------------------------------------------------------------- curves

def write_metrics(run: Path, steps=(10, 20, 30, 40), scale: float = 1.0) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, step in enumerate(steps):
        lines.append({"kind": "train", "step": step, "epoch": step / 40, "time": step * 0.5,
                      "loss": scale * (5.0 - i), "ppl": float(np.exp(5.0 - i)), "lr": 1e-3,
                      "tokens_per_s": 1000.0,
                      "grad_norm": {"embeddings": 0.1 * (i + 1), "encoder": 1.0, "attention": 0.5,
                                    "decoder": 2.0, "output": 3.0 / (i + 1)}})
        if step % 20 == 0:
            lines.append({"kind": "valid", "step": step, "time": step * 0.5 + 1, "loss": scale * (6.0 - i),
                          "ppl": 10.0, "bleu": 2.0 * i + 1, "chrf": 20.0})
    path = run / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return path


def test_curves_overlay_runs(tmp_path):
    write_metrics(tmp_path / "bahdanau")
    write_metrics(tmp_path / "luong", steps=(10, 20), scale=2.0)
    out = tmp_path / "curves.png"
    fig = plot_curves([tmp_path / "bahdanau", tmp_path / "luong"], out)
    assert png_size(out)[0] > 0
    train_ax, valid_ax, bleu_ax = fig.axes[:3]
    assert [line.get_label() for line in train_ax.get_lines()] == ["bahdanau", "luong"]
    assert [t.get_text() for t in train_ax.get_legend().get_texts()] == ["bahdanau", "luong"]
    first, second = train_ax.get_lines()
    assert list(first.get_xdata()) == [10, 20, 30, 40] and list(first.get_ydata()) == [5, 4, 3, 2]
    assert list(second.get_ydata()) == [10, 8]
    assert list(valid_ax.get_lines()[0].get_xdata()) == [20, 40]
    assert list(valid_ax.get_lines()[0].get_ydata()) == [5.0, 3.0]
    assert list(bleu_ax.get_lines()[0].get_ydata()) == [3.0, 7.0]
    assert "BLEU" in bleu_ax.get_title()


def test_grad_norms_log_scale(tmp_path):
    write_metrics(tmp_path / "run")
    fig = plot_grad_norms([tmp_path / "run"], None)
    panels = [ax for ax in fig.axes if ax.get_lines()]
    assert [ax.get_title() for ax in panels] == [
        f"gradient norm: {p}" for p in ("embeddings", "encoder", "attention", "decoder", "output")]
    assert all(ax.get_yscale() == "log" for ax in panels)
    assert np.allclose(panels[4].get_lines()[0].get_ydata(), [3.0, 1.5, 1.0, 0.75])


def test_metrics_errors(tmp_path):
    with pytest.raises(DataError, match="metrics.jsonl' not found"):
        read_metrics(tmp_path)
    path = write_metrics(tmp_path / "run")
    lines = path.read_text().splitlines()
    lines[2] = '{"kind": "train", "step": 30, "loss": '  # truncated in the middle of the file
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        plot_curves([tmp_path / "run"], None)
    assert str(path) in str(err.value) and "line 3" in str(err.value)
    lines[2] = '{"kind": "train", "step": 30, "loss": "high"}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 3: 'loss' must be a number"):
        read_metrics(tmp_path / "run")
    lines[2] = "[1, 2]"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 3: expected a JSON object"):
        read_metrics(tmp_path / "run")
    path.write_text("")
    with pytest.raises(DataError, match="no records"):
        read_metrics(tmp_path / "run")


def test_unterminated_last_line_is_skipped(tmp_path):
    path = write_metrics(tmp_path / "run")
    complete = len(read_metrics(tmp_path / "run"))
    with path.open("a") as fh:
        fh.write('{"kind": "train", "st')  # a run still writing its next record
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert len(read_metrics(tmp_path / "run")) == complete


# ---------------------------------------------------------------------------------- activations

def test_activation_curves_and_derivatives(tmp_path):
    pytest.importorskip("nmt.model.activations")
    from nmt.tools.plots import plot_activations

    fig = plot_activations(["relu", "tanh", "maxout", "aprelu"], tmp_path / "act.png")
    assert png_size(tmp_path / "act.png")[0] > 0
    values_ax, deriv_ax = fig.axes[:2]
    labels = [line.get_label() for line in values_ax.get_lines() if not line.get_label().startswith("_")]
    assert labels[:2] == ["relu", "tanh"] and labels[2].startswith("maxout (k=")
    assert "random" in labels[2] and labels[3] == "aprelu"
    relu, tanh = values_ax.get_lines()[2:4]  # after the two zero axis lines
    x = relu.get_xdata()
    assert x.min() == -4 and x.max() == 4
    assert np.allclose(relu.get_ydata(), np.maximum(x, 0))
    assert np.allclose(tanh.get_ydata(), np.tanh(x))
    d_relu, d_tanh = deriv_ax.get_lines()[2:4]
    assert np.allclose(d_relu.get_ydata(), (x > 0).astype(float))
    assert np.allclose(d_tanh.get_ydata(), 1 - np.tanh(x) ** 2, atol=1e-6)
    with pytest.raises(NmtError, match="unknown activation 'rleu'; did you mean 'relu'"):
        plot_activations(["rleu"], None)


def test_learned_activation_parameters():
    pytest.importorskip("nmt.model.activations")
    from nmt.tools.plots import plot_activations

    learned = {"encoder.act": {"alpha": 0.3, "beta": 0.0},
               "decoder.act": [0.1, 0.2, 0.2, 0.4, 0.9]}
    fig = plot_activations(["relu"], None, learned=learned)
    assert [ax.get_title() for ax in fig.axes] == [
        "activation f(x)", "derivative f'(x) (autograd)", "learned activations", "learned negative slopes"]
    curve = [line for line in fig.axes[2].get_lines() if line.get_label().startswith("encoder.act")][0]
    x, y = curve.get_xdata(), curve.get_ydata()
    assert np.allclose(y, np.where(x > 0, 1.5 * x, 0.3 * x))  # (1 + sigmoid(0)) x, alpha x
    counts = sum(p.get_height() for p in fig.axes[3].patches)
    assert counts == 5


# ------------------------------------------------------------------------------------------ CLI

def test_parse_line_range():
    assert list(parse_line_range("1-3")) == [1, 2, 3]
    assert list(parse_line_range(" 7 ")) == [7]
    assert list(parse_line_range("2 - 4", total=4)) == [2, 3, 4]
    for bad, message in [("a-b", "expected a 1-based inclusive range"), ("0-2", "start at 1"),
                         ("5-2", "backwards"), ("1-", "expected"), ("3-9", "has only 4 lines")]:
        with pytest.raises(NmtError, match=message):
            parse_line_range(bad, total=4)


@pytest.fixture(scope="module")
def selfatt_run(tiny_recipe, tmp_path_factory):
    """A real run with two self-attention layers in the encoder and learned AReLU activations."""
    from nmt.training.loop import train

    run = tmp_path_factory.mktemp("plots") / "run"
    train(tiny_recipe("train.max_steps=2", "train.valid_every=2", "model.encoder.self_attention_layers=2",
                      "model.encoder.self_attention_heads=2", "model.encoder.self_attention_ff_size=32",
                      "model.activation=arelu"), run_dir=run)
    return run


def plot_args(what: str, **kw) -> argparse.Namespace:
    """The namespace `nmt plot WHAT` parses (every option at its default), with ``kw`` set."""
    from nmt.cli import build_parser

    positional = {"attention": "runs/x", "curves": "runs/x", "activations": "relu"}[what]
    args = build_parser().parse_args(["plot", what, positional])
    vars(args).update(kw)
    return args


def test_cli_attention_source(tmp_path, selfatt_run, capsys):
    out = tmp_path / "att.png"
    assert plot_cli(plot_args("attention", run_dir=str(selfatt_run), source="Je suis fatigué .",
                              output=str(out), checkpoint="last")) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(out), str(tmp_path / "att.self-attention-layer1.png"),
                       str(tmp_path / "att.self-attention-layer2.png")]
    for path in written:
        assert png_size(Path(path))[0] > 0


def test_cli_attention_input_lines(tmp_path, tiny_run, capsys):
    inp = tmp_path / "in.fr"
    inp.write_text("un\ndeux mots\n\ntrois mots ici\ncinq\n", encoding="utf-8")
    out_dir = tmp_path / "plots"
    assert plot_cli(plot_args("attention", run_dir=str(tiny_run), input=str(inp), lines="2-4",
                              out_dir=str(out_dir))) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in out_dir.iterdir()) == ["line2.png", "line4.png"]
    assert "line 3" in captured.err and "empty" in captured.err
    with pytest.raises(NmtError, match="has only 5 lines"):
        plot_cli(plot_args("attention", run_dir=str(tiny_run), input=str(inp), lines="4-9",
                           out_dir=str(out_dir)))


def test_cli_attention_argument_errors(tmp_path):
    """Arguments are checked before a model is loaded (the run directory does not exist)."""
    cases = [
        (dict(), "give --source"),
        (dict(source="a", input="f"), "not both"),
        (dict(source="a", out_dir="d"), "go with --input"),
        (dict(input=str(tmp_path / "in.fr"), output="x.png"), "-o names the image for --source"),
        (dict(input=str(tmp_path / "in.fr")), "--input needs --out-dir"),
        (dict(input=str(tmp_path / "missing"), out_dir="d"), "missing' not found"),
        (dict(source="a", beam=0), "--beam"),
    ]
    for kw, message in cases:
        with pytest.raises(NmtError, match=message):
            plot_cli(plot_args("attention", run_dir=str(tmp_path / "no-run"), **kw))


def test_cli_curves_and_activations(tmp_path, selfatt_run, capsys):
    write_metrics(tmp_path / "run")
    out = tmp_path / "c.png"
    assert plot_cli(plot_args("curves", run_dirs=[str(tmp_path / "run")], output=str(out))) == 0
    assert capsys.readouterr().out.split() == [str(out), str(tmp_path / "c.grad-norms.png")]
    assert png_size(out)[0] > 0 and png_size(tmp_path / "c.grad-norms.png")[0] > 0

    act = tmp_path / "act.png"
    assert plot_cli(plot_args("activations", names=["relu", "arelu"], run=str(selfatt_run), output=str(act))) == 0
    assert png_size(act)[0] > 0


def test_cli_main_reports_corrupt_metrics(tmp_path, capsys):
    from nmt.cli import main

    path = write_metrics(tmp_path / "run")
    path.write_text(path.read_text() + "not json\n" + '{"kind": "train", "step": 99}\n')
    assert main(["plot", "curves", str(tmp_path / "run"), "-o", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl, line 7: corrupt record" in err and "Traceback" not in err
    assert not (tmp_path / "c.png").exists()


def test_save_figure_rejects_directories(tmp_path):
    from matplotlib.figure import Figure

    with pytest.raises(NmtError, match="is a directory"):
        save_figure(Figure(), tmp_path)
