"""scripts/onnx_precisions.py: the graphs it times compute the product they are named after."""
import numpy as np
import pytest
import torch

from conftest import load_script

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def script():
    return load_script("onnx_precisions")


def test_bfloat16_words_round_to_nearest_even_as_torch_does(script):
    x = torch.randn(4096, dtype=torch.float64).mul(1e3).float()
    x[:4] = torch.tensor([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -0.0, 65504.0])  # ties to even, both ways
    expected = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(script.bfloat16_words(x.numpy()), expected)


def test_each_graph_that_loads_multiplies_as_numpy(script):
    import onnxruntime as ort
    from onnx import TensorProto

    rng = np.random.default_rng(1)
    weight = rng.standard_normal((512, 1024)).astype(np.float32)
    a = rng.standard_normal((7, 512)).astype(np.float32)
    expected = a @ weight
    float32 = script.matmul_model(TensorProto.FLOAT, weight)
    cases = {"float32": (float32, np.float32, 1e-4), "int8": (script.int8_model(float32), np.float32, 0.05),
             "float16": (script.matmul_model(TensorProto.FLOAT16, weight.astype(np.float16)), np.float16, 5e-3)}
    for name, (model, dtype, tolerance) in cases.items():
        got = script.cpu_session(ort, model, 1).run(None, {"A": a.astype(dtype)})[0].astype(np.float32)
        error = np.abs(got - expected).max() / np.abs(expected).max()
        assert error < tolerance, (name, error)
    quantized = {node.op_type for node in cases["int8"][0].graph.node}
    assert quantized & {"MatMulInteger", "DynamicQuantizeMatMul"} and "MatMul" not in quantized
    assert script.matmul_model(TensorProto.BFLOAT16, weight).graph.initializer[0].data_type == TensorProto.BFLOAT16
