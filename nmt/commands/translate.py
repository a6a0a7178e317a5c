"""``nmt translate``."""
from __future__ import annotations

import argparse

from nmt.commands.common import add_checkpoint, add_kernels, add_removed_quantize
from nmt.config import add_decode_arguments

NAME = "translate"
HELP = "translate text with a trained run (greedy, batched beam search or sampling)"
EXAMPLES = """
    nmt translate runs/fr-en -i test.fr -o test.en
    echo "Je suis fatigué." | nmt translate runs/fr-en
    nmt translate runs/fr-en -i test.fr --n-best 3 --beam 5     K lines per input: i<TAB>score<TAB>text
    nmt translate runs/fr-en -i test.fr --score-reference test.en   log-probability of references
    nmt translate runs/fr-en -i test.fr --alignments           TEXT<TAB>0-0 1-2 2-1 (word alignments)
    nmt translate runs/fr-en runs/fr-en-seed2 -i test.fr     an ensemble: mean of the runs' log-probs
    nmt translate runs/fr-en -i big.fr -o big.en --workers 2    2 one-thread processes
    torchrun --nproc_per_node 2 -m nmt translate runs/fr-en -i big.fr -o big.en
    nmt translate --engine onnx export/fr-en -i test.fr -o test.en   an nmt export, without PyTorch
    nmt translate runs/fr-en -i test.fr --glossary terms.tsv   each line: SOURCE TERM<TAB>TARGET TERM
    echo 'Le <b>chat</b> dort.' | nmt translate runs/fr-en --markup html    tags kept: The <b>cat</b> ...
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="+", metavar="RUN_DIR",
                   help="run directory written by nmt train; several: decode with their ensemble (they must "
                        "share their tokenizers); --engine onnx: one export directory written by nmt export")
    p.add_argument("-i", "--input", help="input file (default: stdin)")
    p.add_argument("-o", "--output", help="output file (default: stdout); written atomically")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="torch: the run's PyTorch model (default); onnx: an nmt export on onnxruntime, "
                        "without PyTorch")
    add_checkpoint(p)
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="translate with N processes of one CPU thread each, over chunks of the input: "
                        "for large files (default 1: this process, with torch's threads); the output "
                        "is the same. At most the CPUs this process may use, and no more than the "
                        "input's lines (a note says when fewer are started)")
    p.add_argument("--score-reference", metavar="FILE",
                   help="instead of translating, print the log-probability of each reference line")
    p.add_argument("--alignments", action="store_true",
                   help="append a tab and the word alignments from the attention (Pharaoh format: "
                        "SRC-TGT 0-based word indices, e.g. 0-0 1-2 2-1) to each output line")
    p.add_argument("--glossary", metavar="FILE",
                   help="terminology: lines SOURCE TERM<TAB>TARGET TERM; where a source term occurs in an "
                        "input line (whole words, case-sensitive), the translation contains the target term "
                        "exactly once (lexically constrained beam search; docs/decoding.md)")
    p.add_argument("--markup", choices=["html"],
                   help="html: input lines carry inline HTML tags and entities (<b>, <a href=...>, <br/>, "
                        "&amp;); the text is translated and every tag put back around the target words "
                        "aligned to the words it enclosed; output is HTML. Tags that do not nest: exit 2 "
                        "(docs/decoding.md)")
    add_removed_quantize(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr which precision --precision auto chose, and the figures why")
    add_kernels(p)
    add_decode_arguments(p, notes={"n_best": "writes K lines per input line, INDEX<TAB>SCORE<TAB>TEXT, "
                                             "INDEX the 0-based input line; default: one line per input "
                                             "line, the best"})


def run(args) -> int:
    from nmt.tools.translate import translate_cli

    return translate_cli(args)
