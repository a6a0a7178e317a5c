#!/usr/bin/env python3
"""Decoding speed and BLEU of a Marian model, measured as `nmt bench translate` measures nmt's.

    python scripts/marian_bench.py SOURCE REFERENCE --options "MARIAN DECODER OPTIONS" [--json OUT]

Runs in the virtualenv of scripts/marian_setup.sh (pymarian, sacrebleu). The model is loaded with
``pymarian.Translator`` (Marian's decoder options, e.g. ``-m model.npz -v src.spm tgt.spm
--cpu-threads 2 --beam-size 5``) and warmed up on the first 32 sentences; the clock then covers one
``translate`` call over all of SOURCE (subwords in and out, search). BLEU and chrF are sacrebleu's
defaults on the detokenized output against REFERENCE, as nmt scores its own.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source"), parser.add_argument("reference")
    parser.add_argument("--options", required=True, help="Marian decoder options, one string")
    parser.add_argument("--output", help="also write the translations here")
    parser.add_argument("--json", help="write the result here (default: print it)")
    args = parser.parse_args(argv)
    import pymarian
    import sacrebleu

    sources = Path(args.source).read_text(encoding="utf-8").splitlines()
    references = Path(args.reference).read_text(encoding="utf-8").splitlines()
    if len(sources) != len(references):
        print(f"marian_bench.py: {args.source} has {len(sources)} lines, {args.reference} "
              f"{len(references)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    translator = pymarian.Translator(args.options + " --quiet")
    load_seconds = time.perf_counter() - start
    translator.translate(sources[:32])  # warm-up, as nmt's bench
    cpu_start, start = time.process_time(), time.perf_counter()
    hyps = translator.translate(sources)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if len(hyps) != len(sources):
        print(f"marian_bench.py: {len(hyps)} translations for {len(sources)} sources", file=sys.stderr)
        return 1
    if args.output:
        Path(args.output).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    bleu_metric, chrf_metric = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu = bleu_metric.corpus_score(hyps, [references])
    chrf = chrf_metric.corpus_score(hyps, [references])
    result = {
        "what": "marian translate", "options": args.options, "pymarian": pymarian.__version__,
        "sentences": len(sources), "seconds": round(seconds, 3),
        "sentences_per_s": round(len(sources) / seconds, 1),
        # CPU time over wall time: how many of Marian's --cpu-threads workers were busy
        "cpu_seconds": round(cpu_seconds, 3), "load_seconds": round(load_seconds, 2),
        "bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2),
        "bleu_signature": str(bleu_metric.get_signature()),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": {"python": platform.python_version(), "processor": platform.processor()},
    }
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
