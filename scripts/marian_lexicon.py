#!/usr/bin/env python3
"""A lexical shortlist file for Marian's ``--shortlist``, built from the training pairs.

    python scripts/marian_lexicon.py SRC_SPM TGT_SPM TRAIN_SRC TRAIN_TGT OUT [--keep 50]

Marian reads a text lexicon of lines ``target_piece source_piece p(target | source)`` (the format
that fast_align alignments are usually turned into) and keeps, for each source piece of a batch, its
``best`` most probable targets, plus the ``first`` target ids. Here the probabilities come from the
IBM Model 1 that nmt's own shortlist uses (``nmt.inference.shortlist.ibm_model1``), trained on the
pairs encoded with Marian's sentencepiece vocabularies, so the two toolkits' shortlists are built
the same way. Runs in nmt's environment (numpy, sentencepiece, nmt).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from nmt.inference.shortlist import NULL_ID, ibm_model1, id_list_chunks


def lexicon_lines(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
                  src_pieces: Sequence[str], tgt_pieces: Sequence[str], keep: int = 50,
                  iterations: int = 5, chunk_pairs: int = 50_000) -> Iterator[str]:
    """The lexicon's lines, each source piece's ``keep`` best targets, most probable first.

    ``src_ids``/``tgt_ids``: the pairs as sentencepiece ids (Marian's ids are sentencepiece's);
    ``src_pieces``/``tgt_pieces``: the piece of each id.
    """
    # IBM Model 1 reserves NULL_ID for the empty source word, and Marian's vocabularies use every id
    # from 0 (</s>): shift all ids by one past it.
    shift = NULL_ID + 1
    chunks = []
    for start in range(0, len(src_ids), chunk_pairs):
        chunks += id_list_chunks([[i + shift for i in s] for s in src_ids[start:start + chunk_pairs]],
                                 [[i + shift for i in t] for t in tgt_ids[start:start + chunk_pairs]])
    src_vocab, tgt_vocab = len(src_pieces) + shift, len(tgt_pieces) + shift
    links, prob = ibm_model1(chunks, src_vocab, tgt_vocab, iterations=iterations)
    source, target = links // tgt_vocab, links % tgt_vocab
    order = np.lexsort((-prob, source))  # by source, then by falling probability
    source, target, prob = source[order], target[order], prob[order]
    rank = np.arange(source.size) - np.searchsorted(source, source)
    for s, t, p, r in zip(source.tolist(), target.tolist(), prob.tolist(), rank.tolist()):
        if r < keep and s >= shift:  # NULL's translations are not a source piece's
            yield f"{tgt_pieces[t - shift]} {src_pieces[s - shift]} {p:.6g}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src_spm"), parser.add_argument("tgt_spm")
    parser.add_argument("train_src"), parser.add_argument("train_tgt")
    parser.add_argument("out")
    parser.add_argument("--keep", type=int, default=50, help="targets written per source piece")
    parser.add_argument("--iterations", type=int, default=5, help="EM iterations")
    parser.add_argument("--max-pairs", type=int, default=None, help="use only the first N pairs")
    args = parser.parse_args(argv)
    import sentencepiece as spm

    start = time.perf_counter()
    processors = [spm.SentencePieceProcessor(model_file=f) for f in (args.src_spm, args.tgt_spm)]
    sides = []
    for sp, path in zip(processors, (args.train_src, args.train_tgt)):
        lines = Path(path).read_text(encoding="utf-8").splitlines()[:args.max_pairs]
        sides.append(sp.encode(lines))
    if len(sides[0]) != len(sides[1]):
        print(f"marian_lexicon.py: {args.train_src} has {len(sides[0])} lines, {args.train_tgt} "
              f"{len(sides[1])}; give the two sides of one parallel corpus", file=sys.stderr)
        return 2
    pieces = [[sp.id_to_piece(i) for i in range(sp.get_piece_size())] for sp in processors]
    n = 0
    with open(args.out, "w", encoding="utf-8") as out:
        for line in lexicon_lines(sides[0], sides[1], pieces[0], pieces[1], keep=args.keep,
                                  iterations=args.iterations):
            out.write(line + "\n")
            n += 1
    print(f"{args.out}: {n} entries from {len(sides[0])} pairs, IBM Model 1 ({args.iterations} "
          f"iterations), {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
