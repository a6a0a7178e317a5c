"""Options shared by several subcommands, each declared once here."""
from __future__ import annotations

import argparse

from nmt.config import KERNELS, PRECISIONS, DecodeConfig

CHECKPOINT_HELP = "best | last | avg | a checkpoint file (default: best)"


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.lr=3e-4 (repeatable)")


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="best", help=CHECKPOINT_HELP)


def add_precision(p: argparse.ArgumentParser) -> None:
    """``--precision`` of a command without the generated decode options (``nmt serve``); the
    others get it from the schema field ``decode.precision`` (:func:`nmt.config.add_decode_arguments`)."""
    help = DecodeConfig.__dataclass_fields__["precision"].metadata["help"]
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help=f"{help} (default: the recipe's decode.precision)")


#: the answer to ``--quantize`` of nmt translate and nmt bench translate (int8 on the PyTorch engine)
QUANTIZE_REMOVED = ("--quantize (int8 on the PyTorch engine) was removed: it was not faster than float32. "
                    "int8 runs on the ONNX engine: nmt export RUN_DIR -o EXPORT_DIR --quantize int8, then "
                    "nmt translate --engine onnx EXPORT_DIR; or leave --quantize out (--precision auto "
                    "picks bf16 where it is faster)")


class _Removed(argparse.Action):
    """An option that was removed: giving it exits 2 with ``message`` (what to do instead)."""

    def __init__(self, option_strings, dest, message: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs=0, help=argparse.SUPPRESS, **kwargs)
        self.message = message

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(self.message)


def add_removed_quantize(p: argparse.ArgumentParser) -> None:
    """``--quantize``, kept only to tell old scripts where int8 went."""
    p.add_argument("--quantize", action=_Removed, message=QUANTIZE_REMOVED)


def add_kernels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernels", choices=KERNELS,
                   help="auto: CPU fast paths where they apply; reference: the plain equations only, "
                        "as a GPU runs them (default: the recipe's model.kernels)")
