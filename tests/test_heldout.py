"""scripts/build_heldout.py and the held-out sets it built (data/heldout/): no pair may share a
sentence with what a model of the shipped corpus trains or selects on."""
import importlib.util
import json
import lzma
from pathlib import Path

import pytest

from nmt.data.text import clean_text

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "data" / "heldout"


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("build_heldout", REPO / "scripts" / "build_heldout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_length_buckets_split_by_source_words_and_score_each_bucket():
    spec = importlib.util.spec_from_file_location("length_buckets", REPO / "scripts" / "length_buckets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
