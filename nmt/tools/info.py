"""`nmt info`: what this installation runs with."""
from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

#: CPU features the fast paths care about: bf16 GEMMs (AVX-512 BF16, AMX), int8 dot products (VNNI)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_model_and_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str | None, list[str]]:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has (Linux; elsewhere ``(None, [])``)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None, []
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, [flag for flag in CPU_FLAGS if flag in flags]


def info_text() -> str:
    import torch

    lines = [f"nmt {importlib.metadata.version('nmt')}", f"python {platform.python_version()} ({platform.machine()})"]
    for pkg in ("torch", "accelerate", "datasets", "sentencepiece", "sacrebleu", "safetensors",
                "matplotlib", "PyYAML", "tqdm", "py3langid", "fastapi", "uvicorn", "onnxruntime", "tensorboard"):
        try:
            lines.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{pkg} (not installed)")
    lines.append(f"cpu cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
                 f"interop threads: {torch.get_num_interop_threads()}")
    lines.append(f"cpu capability: {torch.backends.cpu.get_cpu_capability()}")
    model, flags = cpu_model_and_flags()
    if model:
        lines.append(f"cpu model: {model}")
    if model or flags:
        bf16 = "yes" if {"avx512_bf16", "amx_bf16"} & set(flags) else "no (bf16 runs emulated, slower)"
        lines.append(f"cpu features: {' '.join(flags) or 'none of ' + ', '.join(CPU_FLAGS)}; "
                     f"bf16 in hardware: {bf16}")
    cuda = torch.cuda.is_available()
    from nmt.training.precision import resolve_precision

    training = resolve_precision("auto", "cuda" if cuda else "cpu")
    lines.append(training.note.replace("train.precision auto:", "train.precision auto here:"))
    lines.append(f"cuda: {torch.cuda.device_count()} device(s)" if cuda else "cuda: not available")
    if cuda:
        for i in range(torch.cuda.device_count()):
            lines.append(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
    mps = getattr(torch.backends, "mps", None)
    lines.append(f"mps: {'available' if mps is not None and mps.is_available() else 'not available'}")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_MIXED_PRECISION"):
        if var in os.environ:
            lines.append(f"{var}={os.environ[var]}")
    return "\n".join(lines)
