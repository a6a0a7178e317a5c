"""``nmt export``."""
from __future__ import annotations

import argparse

from nmt.commands.common import add_checkpoint

NAME = "export"
HELP = "export a trained run as ONNX graphs for translation without PyTorch"
EXAMPLES = """
    nmt export runs/fr-en -o export/fr-en
    nmt translate --engine onnx export/fr-en -i test.fr -o test.en     onnxruntime + numpy only
    nmt export runs/fr-en -o export/fr-en-int8 --quantize int8           int8 weights (CPU)
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory written by nmt train")
    p.add_argument("-o", "--output", required=True, metavar="EXPORT_DIR", help="directory to write")
    add_checkpoint(p)
    p.add_argument("--quantize", choices=["int8"],
                   help="int8: store the graphs' weight matrices as int8 (onnxruntime dynamic quantization): "
                        "smaller and faster on the CPU, a little less accurate (docs/performance.md)")


def run(args) -> int:
    from nmt.tools.export import export_cli

    return export_cli(args)
