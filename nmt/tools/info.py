"""`nmt info`: what this installation runs with."""
from __future__ import annotations

import importlib.metadata
import os
import platform


def info_text() -> str:
    import torch

    lines = [f"nmt {importlib.metadata.version('nmt')}", f"python {platform.python_version()} ({platform.machine()})"]
    for pkg in ("torch", "accelerate", "datasets", "sentencepiece", "sacrebleu", "safetensors",
                "matplotlib", "PyYAML", "tqdm", "tensorboard"):
        try:
            lines.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{pkg} (not installed)")
    lines.append(f"cpu cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
                 f"interop threads: {torch.get_num_interop_threads()}")
    lines.append(f"cpu capability: {torch.backends.cpu.get_cpu_capability()}")
    cuda = torch.cuda.is_available()
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
