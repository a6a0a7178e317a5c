#!/usr/bin/env python3
"""Which formats onnxruntime's CPU execution provider multiplies, and at what speed: the question
behind ``nmt export`` offering float32 and int8 graphs only.

    python scripts/onnx_precisions.py [--rows 32 300] [--threads 1] [--rounds 5]

For float32, float16 and bfloat16 it builds a one-node graph ``Y = A @ W`` with the decoder's
widest per-step product (``A (rows, 512)`` a bidirectional encoder's context, ``W (512, 1024)``
the weights that read it), and the float32 graph through the dynamic int8 quantization that
``nmt export --quantize int8`` applies; loads each on the CPU provider and times ``run`` (best of
``--rounds`` rounds of 50 calls after a warm-up). A format the provider has no kernel for is
reported as such (onnxruntime refuses the graph at load). Prints the CPU (``lscpu`` model name) and onnxruntime's
version beside the figures.
"""
from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def matmul_model(elem_type: int, weight):
    """The model ``Y = A @ W`` with ``W`` stored in the graph in ``elem_type``."""
    from onnx import helper, numpy_helper

    k, n = weight.shape
    w = numpy_helper.from_array(weight, "W")
    if elem_type != w.data_type:  # bfloat16: numpy has no such dtype; store the raw 16-bit words
        w = helper.make_tensor("W", elem_type, [k, n], bfloat16_words(weight).tobytes(), raw=True)
    a = helper.make_tensor_value_info("A", elem_type, [None, k])
    y = helper.make_tensor_value_info("Y", elem_type, [None, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "W"], ["Y"])], "matmul", [a], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def int8_model(model):
    """``model`` through onnxruntime's dynamic int8 quantization, as ``nmt export --quantize int8``."""
    import logging
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process image models
    with tempfile.TemporaryDirectory() as tmp:
        plain, quantized = Path(tmp) / "plain.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, plain)
        quantize_dynamic(plain, quantized, weight_type=QuantType.QInt8)
        return onnx.load(quantized)


def cpu_session(ort, model, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def bfloat16_words(x: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 bit patterns (uint16), rounded to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def time_runs(session, feed: dict, rounds: int, calls: int = 50) -> float:
    """Best seconds per ``run`` over ``rounds`` rounds of ``calls`` calls, after a warm-up."""
    for _ in range(5):
        session.run(None, feed)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            session.run(None, feed)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[32, 300], help="rows of A (a search step's rows)")
    ap.add_argument("--threads", type=int, default=1, help="the session's intra-op threads")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import onnxruntime as ort
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((512, 1024)).astype(np.float32)
    formats = {"float32": (TensorProto.FLOAT, np.float32), "float16": (TensorProto.FLOAT16, np.float16),
               "bfloat16": (TensorProto.BFLOAT16, None), "int8": (TensorProto.FLOAT, np.float32)}
    print(f"{cpu_name()}, onnxruntime {ort.__version__}, {args.threads} thread(s); MatMul (rows, 512) @ (512, 1024)")
    sessions = {}
    for name, (elem_type, dtype) in formats.items():
        model = matmul_model(elem_type, weight.astype(dtype) if dtype else weight)
        model = int8_model(model) if name == "int8" else model
        try:
            sessions[name] = cpu_session(ort, model, args.threads)
        except Exception as e:  # onnxruntime's own error types (NOT_IMPLEMENTED for a missing kernel)
            print(f"  {name:9} not run: {str(e).splitlines()[0][:160]}")
    for rows in args.rows:
        a = rng.standard_normal((rows, 512)).astype(np.float32)
        timings = {}
        for name, session in sessions.items():
            dtype = formats[name][1]
            if dtype is None:
                continue  # loaded, but numpy cannot feed bfloat16 inputs
            timings[name] = time_runs(session, {"A": a.astype(dtype)}, args.rounds)
        ref = timings["float32"]
        cells = ", ".join(f"{name} {sec * 1e6:,.0f} µs ({sec / ref:.2f}× float32's time)"
                          for name, sec in timings.items())
        print(f"  {rows:>4} rows: {cells}")


if __name__ == "__main__":
    main()
