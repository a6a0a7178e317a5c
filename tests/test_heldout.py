"""scripts/build_heldout.py and the held-out sets it built (data/heldout/): no pair may share a
sentence with what a model of the shipped corpus trains or selects on."""
import json
import lzma
from pathlib import Path

import pytest

from conftest import REPO, load_script
from nmt.data.text import clean_text

HELDOUT = REPO / "data" / "heldout"


@pytest.fixture(scope="module")
def build():
    return load_script("build_heldout")


def _xz_tsv(path: Path, rows):
    with lzma.open(path, "wt", encoding="utf-8") as f:
        f.writelines(f"{en}\t{fr}\n" for en, fr in rows)


def _lines(path: Path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_filter_removes_pairs_with_either_side_seen(build, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _xz_tsv(corpus / "train.tsv.xz", [("I see a cat.", "Je vois un chat.")])
    _xz_tsv(corpus / "valid.tsv.xz", [("He runs.", "Il court.")])
    _xz_tsv(corpus / "test.tsv.xz", [("Go away.", "Va-t'en.")])  # not seen by a model: kept
    # "Il court.\x07" is the valid French once cleaned; "Cafe\u0301" is "Café" after NFC
    fra = ["Je vois un chat.", "Il court.\x07", "Elle mange.", "Va-t'en.", "Un café.", "Le café."]
    eng = ["I can see a cat.", "He is running.", "He runs.", "Go away.", "A coffee.", "The coffee."]
    _lines(tmp_path / "t.fra", fra)
    _lines(tmp_path / "t.eng", eng)
    _lines(tmp_path / "f.fra", ["Bonjour le monde.", "Cafe\u0301."])
    _lines(tmp_path / "f.eng", ["Hello world.", "Coffee."])
    out = tmp_path / "out"
    counts = build.build(build.parse_args([
        "--tatoeba-fra", str(tmp_path / "t.fra"), "--tatoeba-eng", str(tmp_path / "t.eng"),
        "--flores-fra", str(tmp_path / "f.fra"), "--flores-eng", str(tmp_path / "f.eng"),
        "--corpus", str(corpus), "--out", str(out)]))
    assert counts["tatoeba_pairs_read"] == 6
    assert counts["removed_french_seen"] == 2  # train French, valid French after cleaning
    assert counts["removed_english_seen_only"] == 1  # "He runs." is valid English
    assert counts["tatoeba_kept"] == 3
    assert counts["tatoeba_unseen_dev"] + counts["tatoeba_unseen_test"] == 3
    kept_fr = (out / "tatoeba-unseen-dev.fr").read_text().split("\n")[:-1] + \
        (out / "tatoeba-unseen-test.fr").read_text().split("\n")[:-1]
    assert sorted(kept_fr) == ["Le café.", "Un café.", "Va-t'en."]
    assert (out / "flores200-devtest.fr").read_text() == "Bonjour le monde.\nCafé.\n"
    assert json.loads((out / "counts.json").read_text()) == counts


def test_split_is_fixed_and_keeps_an_english_sentence_in_one_half(build):
    pairs = [(f"Phrase {i}.", f"Sentence {i % 40}.") for i in range(200)]
    halves = build.split_halves(pairs)
    assert halves == build.split_halves(list(pairs))  # deterministic
    assert 40 < len(halves["dev"]) < 160  # both halves are used
    for name, other in (("dev", "test"), ("test", "dev")):
        english = {en.lower() for _, en in halves[name]}
        assert english.isdisjoint(en.lower() for _, en in halves[other])
    # case does not move a sentence: paraphrase groups differ in case at times
    assert build.half_of("Sentence 3.") == build.half_of("SENTENCE 3.")
    # the rule itself is part of the published sets: pin two values
    assert [build.half_of(f"Sentence {i}.") for i in range(1, 5)] == ["dev", "test", "test", "dev"]


def _read_side(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def test_shipped_heldout_sets_share_no_sentence_with_train_or_valid(build):
    seen_fr, seen_en = build.read_corpus_sides(REPO / "data" / "tatoeba-fra-eng")
    counts = json.loads((HELDOUT / "counts.json").read_text())
    sizes = {"tatoeba-unseen-dev": counts["tatoeba_unseen_dev"],
             "tatoeba-unseen-test": counts["tatoeba_unseen_test"],
             "flores200-devtest": counts["flores_pairs"]}
    for stem, size in sizes.items():
        fr, en = _read_side(HELDOUT / f"{stem}.fr"), _read_side(HELDOUT / f"{stem}.en")
        assert len(fr) == len(en) == size > 0, stem
        assert not seen_fr.intersection(clean_text(s) for s in fr), stem
        assert not seen_en.intersection(clean_text(s) for s in en), stem
    dev_en = {s.lower() for s in _read_side(HELDOUT / "tatoeba-unseen-dev.en")}
    assert dev_en.isdisjoint(s.lower() for s in _read_side(HELDOUT / "tatoeba-unseen-test.en"))


def _length_buckets():
    return load_script("length_buckets")


def test_length_buckets_split_by_source_words_and_score_each_bucket():
    module = _length_buckets()
    assert [module.bucket_of(" ".join(["w"] * n)) for n in (1, 6, 7, 10, 11, 15, 16, 40)] == \
        ["1-6", "1-6", "7-10", "7-10", "11-15", "11-15", "16+", "16+"]
    sources = ["a b c", "a b c d e f g h", "x y"]
    refs = ["the cat sat on the mat", "a dog ran in the park today", "hello there friend"]
    hyps = ["the cat sat on the mat", "nothing alike here", "hello there friend"]
    records = {r["bucket"]: r for r in module.score_buckets(sources, refs, hyps)}
    assert records["1-6"]["pairs"] == 2 and records["1-6"]["bleu"] == 100.0
    assert records["7-10"]["pairs"] == 1 and records["7-10"]["bleu"] < 10
    assert records["11-15"] == {"bucket": "11-15", "pairs": 0}
    assert records["1-6"]["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_pairs_are_split_by_source_words_the_training_sources_lack(tmp_path, capsys):
    module = _length_buckets()
    known = module.known_words(["Tom a mangé l'orange.", "Il pleut à Paris, 12 fois !"])
    assert known == {"tom", "a", "mangé", "l", "orange", "il", "pleut", "à", "paris", "12", "fois"}
    # words are compared lower-cased; an apostrophe or a hyphen splits words; case marks names
    assert module.unseen_bucket_of("TOM A MANGÉ L'ORANGE", known) == ["seen"]
    assert module.unseen_bucket_of("Il pleut des figues.", known) == ["unseen"]
    assert module.unseen_bucket_of("Ichiro a mangé l'orange.", known) == ["unseen", "unseen-capitalised"]
    assert module.unseen_bucket_of("Il pleut 13 fois.", known) == ["unseen"]
    sources = ["Tom a mangé l'orange.", "Il pleut des figues.", "Ichiro a mangé."]
    refs = ["Tom ate the orange.", "It is raining figs.", "Ichiro ate."]
    hyps = ["Tom ate the orange.", "It is raining.", "He ate."]
    records = {r["bucket"]: r for r in module.score_unseen(sources, refs, hyps, known)}
    assert records["seen"]["pairs"] == 1 and records["seen"]["bleu"] == 100.0
    assert records["unseen"]["pairs"] == 2 and records["unseen"]["bleu"] < 100
    assert records["unseen-capitalised"]["pairs"] == 1 and records["unseen-capitalised"]["bleu"] < 100
    # the command line: --train-src adds the second breakdown to the table and to --json
    for name, lines in (("src", sources), ("ref", refs), ("hyp", hyps), ("train", ["Tom a mangé l'orange.", "Il pleut."])):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = [f"--{k}={tmp_path / k}" for k in ("src", "ref", "hyp")]
    assert module.main(args + ["--json"]) == 0
    assert [r["bucket"] for r in json.loads(capsys.readouterr().out)] == ["1-6", "7-10", "11-15", "16+"]
    assert module.main(args + ["--json", f"--train-src={tmp_path / 'train'}"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert [r["pairs"] for r in both["by_unseen_words"]] == [1, 2, 1]
    assert both["by_source_length"][0]["pairs"] == 3
    assert module.main(args + [f"--train-src={tmp_path / 'train'}"]) == 0
    table = capsys.readouterr().out
    assert "training words" in table and "unseen-capitalised      1" in table


def test_the_estimate_gives_the_names_pairs_the_seen_pairs_precisions_and_length_ratio():
    from sacrebleu.metrics import BLEU

    module = _length_buckets()
    seen = ([900, 500, 300, 200], [1000, 900, 800, 700], 1000, 1100)
    names = ([100, 20, 5, 1], [400, 350, 300, 250], 400, 380)
    counts, totals, sys_len, ref_len = module._like(names, seen)
    assert ref_len == 380 and sys_len == round(380 * 1000 / 1100)  # the seen pairs' length ratio
    assert totals == [round(t * sys_len / 400) for t in names[1]]
    for c, t, (mc, mt) in zip(counts, totals, zip(seen[0], seen[1])):
        assert abs(c / t - mc / mt) < 2 / t  # the seen pairs' precisions, to rounding
    # pooled as sacrebleu pools a corpus
    parts = [seen, names]
    assert module._bleu_of(parts) == round(BLEU.compute_bleu(
        [1000, 520, 305, 201], [1400, 1250, 1100, 950], 1400, 1480, smooth_method="exp").score, 2)
    known = module.known_words(["le chat dort sur le lit", "il pleut sur la ville ce matin"])
    sources = ["le chat dort sur le lit", "il pleut sur la ville ce matin", "Ichiro dort sur le lit",
               "il pleut des figues sur la ville"]
    refs = ["the cat sleeps on the bed", "it is raining on the town this morning",
            "Ichiro sleeps on the bed", "it is raining figs on the town"]
    perfect_seen = ["the cat sleeps on the bed", "it is raining on the town this morning",
                    "he sleeps on the bed", "it is raining on the town"]
    estimates = module.as_seen_estimates(sources, refs, perfect_seen, known)
    assert estimates["set"] == round(BLEU().corpus_score(perfect_seen, [refs]).score, 2) < 100
    assert estimates["set"] < estimates["names_as_seen"] < 100  # the figs pair stays as it is
    assert module.as_seen_estimates(sources[:3], refs[:3], perfect_seen[:3], known)["names_as_seen"] == 100
    assert module.as_seen_estimates(sources[2:], refs[2:], perfect_seen[2:], known) == \
        {"set": round(BLEU().corpus_score(perfect_seen[2:], [refs[2:]]).score, 2)}  # no seen pair
