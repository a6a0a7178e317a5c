"""Figures of terminology constraints (docs/results.md): term-usage rate, BLEU with and without
constraints, and the decoding time of both at beam 5.

    python scripts/constraint_figures.py RUN_DIR SRC REF [--lines 1000] [--beam 5] [--json OUT]

Constraints come from the reference through the run's lexicon (``lexicon.safetensors``), for each
source line in source-word order:

1. a source word is its whitespace token with the punctuation around it stripped (``str.strip``
   of ``string.punctuation`` and « » ¿ ¡ …); only words that the source sentencepiece model
   encodes as ONE piece are looked at;
2. its term is the lexicon's best translation of that piece (``top_ids[piece, 0]``) when that
   target piece starts a word (``▁``), the rest is at least 3 letters (``str.isalpha``), and
   that word occurs in the reference as a word (the reference split on whitespace, punctuation
   stripped the same way, compared case-sensitively);
3. the first two distinct terms found are the line's constraints (0, 1 or 2 terms).

Term usage: a term counts as used when its target subwords (tokenized as the translator tokenizes
constraints) occur in the output's subwords; also reported: as a word of the output text.
Times are wall-clock seconds of ``Translator.translate`` over the lines at one thread (one warm-up
line first), ``--rounds`` runs of each, interleaved, on whatever else the machine runs at the time;
the slowdown is given as the ratio of the best times and as the median of the rounds' ratios.
"""
from __future__ import annotations

import argparse
import json
import platform
import string
import subprocess
import time

PUNCT = string.punctuation + "«»¿¡…“”’‘"


def words(text: str) -> list[str]:
    return [w.strip(PUNCT) for w in text.split() if w.strip(PUNCT)]


def terms_of(translator, lexicon_top, src: str, ref: str, limit: int = 2) -> list[tuple[str, str]]:
    """The constraints of one line (the rule of the module docstring)."""
    tok = translator.tokenizers
    ref_words = set(words(ref))
    found: list[tuple[str, str]] = []
    for word in words(src):
        ids = tok.encode_src([word])[0]
        if len(ids) != 1:
            continue
        piece = tok.tgt.id_to_piece(int(lexicon_top[ids[0]][0])) if lexicon_top[ids[0]][0] >= 0 else ""
        target = piece[1:]
        if piece.startswith("▁") and len(target) >= 3 and target.isalpha() and target in ref_words:
            if target not in [t for _, t in found]:
                found.append((word, target))
        if len(found) == limit:
            break
    return found


def timed(translator, srcs, **kwargs):
    start = time.perf_counter()
    out = translator.translate(srcs, return_scores=True, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("src")
    p.add_argument("ref")
    p.add_argument("--lines", type=int, default=1000)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5, help="timed runs of each, interleaved")
    p.add_argument("--json")
    args = p.parse_args()

    import sacrebleu
    import torch

    from nmt.inference.constraints import occurrences
    from nmt.inference.shortlist import LEXICON_FILE, Lexicon
    from nmt.inference.translator import Translator

    torch.set_num_threads(1)
    srcs = open(args.src, encoding="utf-8").read().splitlines()[: args.lines]
    refs = open(args.ref, encoding="utf-8").read().splitlines()[: args.lines]
    translator = Translator.load(args.run_dir, device="cpu")
    top = Lexicon.load(f"{args.run_dir}/{LEXICON_FILE}").top_ids.tolist()
    constraints = [terms_of(translator, top, s, r) for s, r in zip(srcs, refs)]
    translator.translate(srcs[:1], beam=args.beam)  # warm-up: tables, lexicon
    times: dict[str, list[float]] = {"without": [], "with": []}
    outputs = {}
    for _ in range(args.rounds):  # interleaved, so a change of the machine's load hits both
        for name, cons in (("without", None), ("with", constraints)):
            outputs.setdefault(name, []).append(timed(translator, srcs, beam=args.beam, constraints=cons))
            times[name].append(outputs[name][-1][1])
    plain, constrained = outputs["without"][0][0], outputs["with"][0][0]
    ratios = sorted(w / p for w, p in zip(times["with"], times["without"]))

    n_terms = sum(len(c) for c in constraints)
    used_tok = used_word = used_plain = met = 0
    for cs, res, base in zip(constraints, constrained, plain):
        if not cs:
            continue
        hyp, base_hyp = res.hypotheses[0], base.hypotheses[0]
        met += bool(hyp.constraints_met)
        ids = translator.encode_targets([t for _, t in cs])
        out_ids = [translator.tokenizers.tgt.piece_to_id(p) for p in hyp.tokens]
        base_ids = [translator.tokenizers.tgt.piece_to_id(p) for p in base_hyp.tokens]
        used_tok += sum(occurrences(out_ids, c) >= 1 for c in ids)
        used_plain += sum(occurrences(base_ids, c) >= 1 for c in ids)
        used_word += sum(t in words(hyp.text) for _, t in cs)
    bleu_plain = sacrebleu.corpus_bleu([r.hypotheses[0].text for r in plain], [refs]).score
    bleu_cons = sacrebleu.corpus_bleu([r.hypotheses[0].text for r in constrained], [refs]).score
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    figures = {
        "lines": len(srcs), "lines_with_terms": sum(1 for c in constraints if c), "terms": n_terms,
        "term_usage_subwords": used_tok / max(1, n_terms), "term_usage_words": used_word / max(1, n_terms),
        "term_usage_without_constraints": used_plain / max(1, n_terms),
        "lines_all_met": met, "bleu_without": round(bleu_plain, 2), "bleu_with": round(bleu_cons, 2),
        "seconds_without": [round(t, 2) for t in times["without"]],
        "seconds_with": [round(t, 2) for t in times["with"]],
        "slowdown_of_best_times": round(min(times["with"]) / min(times["without"]), 3),
        "slowdown_median_of_rounds": round(ratios[len(ratios) // 2], 3),
        "beam": args.beam, "threads": 1, "cpu": cpu, "python": platform.python_version(),
        "torch": torch.__version__,
        "same_output_every_round": all([h.hypotheses[0].text for h in out] == [h.hypotheses[0].text for h in runs[0][0]]
                                       for runs in outputs.values() for out, _ in runs),
    }
    text = json.dumps(figures, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
