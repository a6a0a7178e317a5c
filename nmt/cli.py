"""The ``nmt`` command line: parses arguments and calls the library. No logic lives here.

Every :class:`~nmt.errors.NmtError` becomes a one-paragraph message on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import textwrap
from typing import Callable

from nmt.config import KERNELS, add_decode_arguments
from nmt.errors import NmtError

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


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_kernels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernels", choices=KERNELS,
                   help="auto: CPU fast paths where they apply; reference: the plain equations only, "
                        "as a GPU runs them (default: the recipe's model.kernels)")


def _add_busy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beside-busy", type=int, default=0, metavar="K",
                   help="measure beside K busy processes (one CPU-bound thread each), started before "
                        "and stopped after the measurement (default 0)")
    p.add_argument("--busy-kind", choices=["spin", "matmul"], default="spin",
                   help="spin: pure-Python arithmetic (needs a core, nothing else); matmul: 256x256 "
                        "matrix products on one torch thread (also competes for caches and memory)")


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.lr=3e-4 (repeatable)")


def _sub(subparsers, name: str, help_: str, examples: str, func: Callable) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_, description=help_, formatter_class=_formatter,
                              epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "))
    p.set_defaults(func=func)
    return p


# ---------------------------------------------------------------------------------------- handlers

def _cmd_train(args) -> int:
    from nmt.config import load_recipe
    from nmt.training.threads import prepare

    recipe = load_recipe(args.recipe, args.overrides)
    # before torch is loaded: train.num_threads auto may choose OpenMP's wait policy
    prepare(recipe.train.num_threads)
    from nmt.training.loop import train  # train() checks the model section and the stop criteria

    if args.init_from is not None:
        recipe.train.init_from = args.init_from
    if args.init_checkpoint is not None:
        recipe.train.init_checkpoint = args.init_checkpoint
    summary = train(recipe, run_dir=args.run_dir, resume=args.resume, recipe_path=args.recipe)
    if summary["stopped"].startswith("signal "):
        # the checkpoint is written and --resume continues, but the training did not finish:
        # say so to the shell (128 + signal number, as for a process killed by it)
        import signal

        return 128 + signal.Signals[summary["stopped"].split()[1]].value
    return 0


def _cmd_translate(args) -> int:
    from nmt.tools.translate import translate_cli

    return translate_cli(args)


def _cmd_export(args) -> int:
    from nmt.tools.export import export_cli

    return export_cli(args)


def _cmd_average(args) -> int:
    from nmt.tools.average import average_cli

    return average_cli(args)


def _cmd_evaluate(args) -> int:
    from nmt.tools.evaluate import evaluate_cli

    return evaluate_cli(args)


def _cmd_plot(args) -> int:
    from nmt.tools.plots import plot_cli

    return plot_cli(args)


def _cmd_bench(args) -> int:
    from nmt.tools.bench import bench_cli

    return bench_cli(args)


def _cmd_shortlist(args) -> int:
    from nmt.errors import NmtError
    from nmt.inference.shortlist import build_for_run

    for flag, value in (("--keep", args.keep), ("--iterations", args.iterations), ("--max-pairs", args.max_pairs)):
        if value < 1:
            raise NmtError(f"{flag} must be >= 1, got {value}")
    path = build_for_run(args.run_dir, iterations=args.iterations, keep=args.keep, max_pairs=args.max_pairs)
    print(f"wrote {path}")
    return 0


def _cmd_sweep(args) -> int:
    from nmt.tools.sweep import sweep_cli

    return sweep_cli(args)


def _cmd_serve(args) -> int:
    from nmt.tools.serve import serve_cli

    return serve_cli(args)


def _cmd_config(args) -> int:
    from nmt.training.loop import load_training_recipe

    # show prints any recipe (a base fragment too); validate also asks that training stops
    recipe = load_training_recipe(args.recipe, args.overrides, require_stop=args.action == "validate")
    if args.action == "show":
        if sys.stdout is None:
            raise NmtError("standard output is closed; nothing can be shown")
        sys.stdout.write(recipe.to_yaml())
    else:
        print(f"{args.recipe}: OK")
    return 0


def _cmd_info(args) -> int:
    from nmt.tools.info import info_text

    print(info_text())
    return 0


# ------------------------------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt", formatter_class=_formatter, epilog=EPILOG_MAIN,
        description="Attention-based GRU sequence-to-sequence machine translation.")
    from nmt import __version__
    parser.add_argument("--version", action="version", version=f"nmt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = _sub(sub, "train", "train a model from a recipe (resumable, distributed through accelerate)", """
        nmt train recipes/fr-en.yaml
        nmt train recipes/fr-en.yaml --run-dir runs/exp1 --set train.precision=bf16
        nmt train recipes/fr-en.yaml --resume                 continue the last checkpoint
        nmt train recipes/my-domain.yaml --init-from runs/fr-en   continue a trained run's weights on new data
        torchrun --nproc_per_node 2 -m nmt train recipes/tiny.yaml   2 CPU processes
        accelerate launch --num_processes 4 -m nmt train recipes/fr-en.yaml   (GPUs)
        """, _cmd_train)
    p.add_argument("recipe", help="recipe YAML file")
    _add_set(p)
    p.add_argument("--run-dir", help="output directory (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--init-from", metavar="RUN_DIR",
                   help="start from the weights and tokenizer models of this trained run, with the "
                        "recipe's data, schedule and a fresh optimizer (continued training, fine-tuning; "
                        "recipe key train.init_from)")
    p.add_argument("--init-checkpoint", choices=["best", "last", "avg"],
                   help="which weights of --init-from (default: the recipe's train.init_checkpoint, best)")

    p = _sub(sub, "translate", "translate text with a trained run (greedy, batched beam search or sampling)", """
        nmt translate runs/fr-en -i test.fr -o test.en
        echo "Je suis fatigué." | nmt translate runs/fr-en
        nmt translate runs/fr-en -i test.fr --n-best 3 --beam 5     K lines per input: i<TAB>score<TAB>text
        nmt translate runs/fr-en -i test.fr --score-reference test.en   log-probability of references
        nmt translate runs/fr-en -i test.fr --alignments           TEXT<TAB>0-0 1-2 2-1 (word alignments)
        nmt translate runs/fr-en runs/fr-en-seed2 -i test.fr     an ensemble: mean of the runs' log-probs
        nmt translate runs/fr-en -i big.fr -o big.en --workers 2    2 one-thread processes
        torchrun --nproc_per_node 2 -m nmt translate runs/fr-en -i big.fr -o big.en
        nmt translate --engine onnx export/fr-en -i test.fr -o test.en   an nmt export, without PyTorch
        """, _cmd_translate)
    p.add_argument("run_dir", nargs="+", metavar="RUN_DIR",
                   help="run directory written by nmt train; several: decode with their ensemble (they must "
                        "share their tokenizers); --engine onnx: one export directory written by nmt export")
    p.add_argument("-i", "--input", help="input file (default: stdin)")
    p.add_argument("-o", "--output", help="output file (default: stdout); written atomically")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="torch: the run's PyTorch model (default); onnx: an nmt export on onnxruntime, "
                        "without PyTorch")
    p.add_argument("--checkpoint", default="best", help="best | last | avg | a checkpoint file (default: best)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="translate with N processes of one CPU thread each, over chunks of the input: "
                        "for large files (default 1: this process, with torch's threads); the output "
                        "is the same")
    p.add_argument("--score-reference", metavar="FILE",
                   help="instead of translating, print the log-probability of each reference line")
    p.add_argument("--alignments", action="store_true",
                   help="append a tab and the word alignments from the attention (Pharaoh format: "
                        "SRC-TGT 0-based word indices, e.g. 0-0 1-2 2-1) to each output line")
    p.add_argument("--quantize", action="store_true", help="int8 dynamic quantization (CPU)")
    p.add_argument("--precision", choices=["float32", "bf16"], default="float32",
                   help="search under bf16 autocast (faster on AVX-512 BF16 CPUs and GPUs)")
    _add_kernels(p)
    add_decode_arguments(p, notes={"n_best": "writes K lines per input line, INDEX<TAB>SCORE<TAB>TEXT; "
                                             "default: one line per input line, the best"})

    p = _sub(sub, "export", "export a trained run as ONNX graphs for translation without PyTorch", """
        nmt export runs/fr-en -o export/fr-en
        nmt translate --engine onnx export/fr-en -i test.fr -o test.en     onnxruntime + numpy only
        """, _cmd_export)
    p.add_argument("run_dir", help="run directory written by nmt train")
    p.add_argument("-o", "--output", required=True, metavar="EXPORT_DIR", help="directory to write")
    p.add_argument("--checkpoint", default="best", help="best | last | avg | a checkpoint file (default: best)")

    p = _sub(sub, "average", "average the weights of a run's last or best checkpoints into checkpoints/avg", """
        nmt average runs/fr-en --last 5        the 5 newest kept checkpoints (train.keep_last: 5 or more)
        nmt average runs/fr-en --best 3        the 3 with the best validation
        nmt translate runs/fr-en --checkpoint avg -i test.fr
        """, _cmd_average)
    p.add_argument("run_dir", help="run directory written by nmt train")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=int, metavar="N", help="average the N newest kept checkpoints")
    which.add_argument("--best", type=int, metavar="N",
                       help="average the N kept checkpoints with the best validation (the run's "
                            "train.early_stopping_metric)")

    p = _sub(sub, "evaluate", "score translations with sacrebleu (BLEU, chrF, TER)", """
        nmt evaluate --hyp out.en --ref test.en
        nmt evaluate --hyp out.en --ref ref1.en --ref ref2.en --metrics bleu,chrf,ter --json
        nmt evaluate runs/fr-en --split test --beam 5          translate the split, then score it
        nmt evaluate runs/fr-en runs/fr-en-seed2 --split test   ... with the ensemble of two runs
        """, _cmd_evaluate)
    p.add_argument("run_dir", nargs="*", metavar="RUN_DIR",
                   help="run directory (translate a split, then score it); several: their ensemble")
    p.add_argument("--hyp", help="hypothesis file (detokenized)")
    p.add_argument("--ref", action="append", default=[], help="reference file (repeatable)")
    p.add_argument("--metrics", default=None, help="comma list of bleu,chrf,ter (default: all)")
    p.add_argument("--split", default="test", help="split of the run's corpus (default: test)")
    p.add_argument("--checkpoint", default="best", help="best | last | avg | a checkpoint file (default: best)")
    p.add_argument("--precision", choices=["float32", "bf16"], default="float32",
                   help="search under bf16 autocast when translating a split")
    add_decode_arguments(p, exclude=("n_best",))
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = _sub(sub, "plot", "plot attention weights, training curves or activation functions", """
        nmt plot attention runs/fr-en --source "Je suis fatigué." -o att.png
        nmt plot attention runs/fr-en --input test.fr --lines 1-10 --out-dir plots/
        nmt plot curves runs/fr-en runs/fr-en-luong -o curves.png
        nmt plot activations relu gelu arelu -o act.png
        nmt plot activations arelu aprelu --run runs/fr-en-arelu -o learned.png
        """, _cmd_plot)
    psub = p.add_subparsers(dest="what", metavar="WHAT")
    psub.required = True
    pa = psub.add_parser("attention", help="attention heatmaps of translations", formatter_class=_formatter)
    pa.add_argument("run_dir")
    pa.add_argument("--source", help="one source sentence")
    pa.add_argument("--input", help="file of source sentences")
    pa.add_argument("--lines", help="line range of --input, e.g. 1-10 (1-based, inclusive)")
    pa.add_argument("-o", "--output", help="image file for --source (png, svg or pdf)")
    pa.add_argument("--out-dir", help="directory for --input plots")
    pa.add_argument("--checkpoint", default="best")
    add_decode_arguments(pa, exclude=("n_best",), defaults={"beam": 1})
    pc = psub.add_parser("curves", help="loss and valid BLEU over steps, runs overlaid", formatter_class=_formatter)
    pc.add_argument("run_dirs", nargs="+")
    pc.add_argument("-o", "--output", default="curves.png")
    pv = psub.add_parser("activations", help="activation functions and their derivatives", formatter_class=_formatter)
    pv.add_argument("names", nargs="+")
    pv.add_argument("--run", help="a trained run: also show learned AReLU/APReLU parameters")
    pv.add_argument("-o", "--output", default="activations.png")

    p = _sub(sub, "bench", "measure training and translation speed", """
        nmt bench train recipes/bench-joeynmt.yaml --steps 200 --flops
        nmt bench translate runs/fr-en --beam 5 --split test --json
        nmt bench train recipes/bench-joeynmt.yaml --beside-busy 1        beside a CPU-bound process
        """, _cmd_bench)
    bsub = p.add_subparsers(dest="what", metavar="WHAT")
    bsub.required = True
    bt = bsub.add_parser("train", help="training throughput (target tokens/s)", formatter_class=_formatter)
    bt.add_argument("recipe")
    _add_set(bt)
    _add_kernels(bt)
    bt.add_argument("--steps", type=int, default=200)
    bt.add_argument("--warmup", type=int, default=20)
    bt.add_argument("--flops", action="store_true",
                    help="also count GEMM FLOPs per token and report them against the measured GEMM peak")
    _add_busy(bt)
    bt.add_argument("--json", action="store_true")
    btr = bsub.add_parser("translate", help="decoding throughput and BLEU", formatter_class=_formatter)
    btr.add_argument("run_dir", nargs="+", metavar="RUN_DIR", help="run directory; several: their ensemble")
    btr.add_argument("--split", default="test")
    btr.add_argument("--batch-sentences", type=int, help="fixed sentence batches, e.g. 64 as JoeyNMT")
    btr.add_argument("--checkpoint", default="best")
    btr.add_argument("--quantize", action="store_true")
    btr.add_argument("--precision", choices=["float32", "bf16"], default="float32")
    _add_kernels(btr)
    add_decode_arguments(btr, exclude=("n_best",))
    _add_busy(btr)
    btr.add_argument("--json", action="store_true")

    p = _sub(sub, "shortlist", "build a run's lexicon for shortlist decoding (IBM Model 1 on its training data)", """
        nmt shortlist runs/fr-en
        nmt translate runs/fr-en -i test.fr --shortlist 20     decode over the batch's shortlist
        """, _cmd_shortlist)
    p.add_argument("run_dir", help="run directory written by nmt train")
    p.add_argument("--keep", type=int, default=100, help="translations kept per source subword (default 100)")
    p.add_argument("--iterations", type=int, default=5, help="EM iterations (default 5)")
    p.add_argument("--max-pairs", type=int, default=200_000,
                   help="train on an evenly spaced sample of at most this many pairs (default 200,000; "
                        "memory grows with pairs × source length × target length)")

    p = _sub(sub, "sweep", "train a grid of recipe variants and report", """
        nmt sweep recipes/sweep-activations.yaml \\
            --grid model.activation=relu,gelu,arelu --grid model.attention.kind=bahdanau,local-p \\
            --steps 500 --seeds 1,2 --jobs 2
        """, _cmd_sweep)
    p.add_argument("recipe")
    _add_set(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
    p.add_argument("--budget-minutes", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--seeds", default=None, help="comma list of seeds")
    p.add_argument("--out-dir", help="sweep directory (default: runs/sweep-<recipe name>)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each with cores/jobs threads (default 1); pair with --steps")

    p = _sub(sub, "serve", "a translation web page showing attention, and a JSON API", """
        nmt serve runs/fr-en                                page at http://127.0.0.1:8000/, API at /docs
        nmt serve runs/fr-en runs/fr-en-local-p --port 8080   two runs side by side
        curl -s localhost:8000/api/translate -H 'content-type: application/json' \\
             -d '{"text": "Je suis fatigué.", "n_best": 3, "beam": 5}'
        """, _cmd_serve)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by nmt train")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--checkpoint", default="best", help="best | last | avg | a checkpoint file (default: best)")
    p.add_argument("--precision", choices=["float32", "bf16"], default="float32")
    p.add_argument("--max-texts", type=int, default=32, help="sentences per request (default 32)")
    p.add_argument("--max-chars", type=int, default=1000, help="characters per sentence (default 1000)")
    p.add_argument("--max-beam", type=int, default=16, help="largest beam a request may ask for (default 16)")
    p.add_argument("--queue-limit", type=int, default=64,
                   help="requests waiting for the model before answering 503 (default 64)")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="how long a request waits for others to batch with (default 2)")
    p.add_argument("--max-batch-texts", type=int, default=64, help="sentences per model call (default 64)")
    p.add_argument("--threads", type=int,
                   help="torch threads of the model (default: torch's choice; 1 suits small models "
                        "and busy machines)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="server log level (info logs every request)")

    p = _sub(sub, "config", "show a recipe resolved (base: applied, defaults filled in) or validate it", """
        nmt config show recipes/fr-en-luong.yaml             fr-en.yaml with the Luong keys over it
        nmt config show recipes/fr-en.yaml --set train.lr=5e-4
        nmt config validate recipes/fr-en.yaml               also checks that training stops by itself
        """, _cmd_config)
    p.add_argument("action", choices=["show", "validate"])
    p.add_argument("recipe")
    _add_set(p)

    _sub(sub, "info", "versions, threads and devices", "nmt info", _cmd_info)
    return parser


def keep_freed_memory_for_reuse() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB for reuse (``mallopt``).

    By default glibc returns large freed blocks to the kernel, so the same activation and gradient
    buffers are mapped and page-faulted in again at every training step; PyTorch's CPU
    tuning guide suggests jemalloc or tcmalloc for the same reason.
    The peak footprint does not grow: memory is only kept, not added. Skipped when the user set any
    ``MALLOC_*`` variable or the C library is not glibc. Returns whether it was applied.
    """
    if any(name.startswith("MALLOC_") for name in os.environ) or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(
            libc.mallopt(m_trim_threshold, 512 * 2**20))
    except (OSError, AttributeError):
        return False


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
