"""The ``nmt`` command line: builds the parser from the subcommands of :mod:`nmt.commands` (each
declares its arguments beside its handler) and dispatches. No logic lives here.

Every :class:`~nmt.errors.NmtError` becomes a one-paragraph message on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import textwrap

from nmt.commands import COMMANDS
from nmt.commands.common import formatter
from nmt.errors import NmtError
from nmt.heap import keep_freed_memory_for_reuse

EPILOG_MAIN = """\
examples:
  nmt train recipes/fr-en.yaml                      train the French→English model
  nmt train recipes/fr-en.yaml --set train.lr=5e-4  ... with an override
  nmt translate runs/fr-en -i input.fr -o out.en --beam 5
  nmt evaluate runs/fr-en --split test
  nmt average runs/fr-en --last 5                   average checkpoints, then --checkpoint avg
  nmt export runs/fr-en -o export/fr-en             ONNX graphs for translation without PyTorch
  nmt evaluate --hyp out.en --ref ref.en --metrics bleu,chrf
  nmt plot attention runs/fr-en --source "Je suis fatigué." -o att.png
  nmt serve runs/fr-en                              translation page with live attention
  nmt config show recipes/fr-en.yaml --set model.attention.kind=luong-general
  nmt info
"""


def _add_command(subparsers, command) -> argparse.ArgumentParser:
    """The subparser of one :mod:`nmt.commands` module: its help, examples, arguments and handler."""
    examples = textwrap.indent(textwrap.dedent(command.EXAMPLES).strip(), "  ")
    p = subparsers.add_parser(command.NAME, help=command.HELP, description=command.HELP,
                              formatter_class=formatter, epilog="examples:\n" + examples)
    command.add_arguments(p)
    p.set_defaults(func=command.run)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt", formatter_class=formatter, epilog=EPILOG_MAIN,
        description="Attention-based GRU sequence-to-sequence machine translation.")
    from nmt import __version__
    parser.add_argument("--version", action="version", version=f"nmt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        _add_command(sub, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory_for_reuse()
    try:
        return int(args.func(args) or 0)
    except NmtError as exc:
        print(f"nmt {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"nmt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `nmt translate ... | head`
        return 0
    except OSError as exc:  # the environment failed (a full disk, a read-only file system)
        where = f"{exc.filename}: " if exc.filename else "cannot write the output: "  # a stream
        print(f"nmt {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
