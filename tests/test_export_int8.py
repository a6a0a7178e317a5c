"""``nmt export --quantize int8``: int8 graphs that the ONNX engine translates with."""
import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def _op_types(path):
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_int8_export_translates(tiny_run, tmp_path):
    from nmt.inference.onnx_translator import OnnxTranslator
    from nmt.tools.export import export_run

    plain = export_run(tiny_run, tmp_path / "plain")
    int8 = export_run(tiny_run, tmp_path / "int8", quantize="int8")
    meta = json.loads((int8 / "export.json").read_text())
    assert meta["quantize"] == "int8" and "quantize" not in json.loads((plain / "export.json").read_text())
    for graph in ("encoder.onnx", "decoder_step.onnx", "decoder_step_shortlist.onnx"):
        assert "MatMulInteger" in _op_types(int8 / graph) and "MatMulInteger" not in _op_types(plain / graph)
    assert not list(int8.glob("*.float32"))
    sources = ["a b c", "hello world", "x"]
    got = OnnxTranslator.load(int8, threads=1).translate(sources, beam=2)
    assert len(got) == len(sources) and all(isinstance(line, str) for line in got)


def test_export_refuses_an_unknown_quantization(tiny_run, tmp_path):
    from nmt.errors import NmtError
    from nmt.tools.export import export_run

    with pytest.raises(NmtError, match="int8"):
        export_run(tiny_run, tmp_path / "x", quantize="int4")
