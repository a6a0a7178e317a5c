"""nmt.data.check and nmt.data.language: the checks of a user's corpus before training."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sentencepiece as spm

from nmt.config import recipe_from_dict
from nmt.data.check import check_corpus, format_report
from nmt.data.corpus import load_corpus
from nmt.data.language import check_languages, detect_languages, sample_pairs
from nmt.errors import NmtError

REPO = Path(__file__).resolve().parents[1]


def _tiny(split: str) -> list[tuple[str, str]]:
    """(English, French) pairs of the shipped tiny corpus."""
    lines = (REPO / "data" / "tiny" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t")[:2]) for line in lines]


def _write_tsv(path: Path, rows) -> None:
    path.write_text("".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")


def _corpus(tmp_path: Path, train, valid, test, french_first: bool = False) -> Path:
    """A TSV corpus directory (English<TAB>French, or French first)."""
    root = tmp_path / "corpus"
    root.mkdir()
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        _write_tsv(root / f"{name}.tsv", [(b, a) for a, b in rows] if french_first else rows)
    return root


def _recipe(tmp_path: Path, path: Path, **data):
    raw = {"data": {"format": "tsv", "path": str(path), "src_lang": "fr", "tgt_lang": "en",
                    "splits": {"train": "train.tsv", "valid": "valid.tsv", "test": "test.tsv"},
                    "cache_dir": str(tmp_path / "hf-cache"), **data},
           "tokenizer": {"src_vocab_size": 200, "tgt_vocab_size": 200}}
    return recipe_from_dict(raw)


def _train_sample(recipe):
    return sample_pairs(load_corpus(recipe.data, splits=("train",))["train"])


@pytest.fixture
def french_first(tmp_path):
    """The tiny corpus written French<TAB>English, read with the default columns {src: 1, tgt: 0}."""
    root = _corpus(tmp_path, _tiny("train"), _tiny("valid"), _tiny("test"), french_first=True)
    return _recipe(tmp_path, root)


# --------------------------------------------------------------------------------------------------
# Languages
# --------------------------------------------------------------------------------------------------


def test_french_first_tsv_with_default_columns_is_refused(french_first):
    assert french_first.data.columns == {"src": 1, "tgt": 0}  # the defaults
    with pytest.raises(NmtError) as info:
        check_languages(french_first, _train_sample(french_first))
    message = str(info.value)
    assert "data.columns is {src: 1, tgt: 0}" in message
    assert "--set data.columns.src=0 --set data.columns.tgt=1" in message
    assert "columns: {src: 0, tgt: 1}" in message
    assert "data.check_languages" in message
    # what was detected on each side, on how many lines
    assert "source side en " in message and "target side fr " in message
    assert "(300 sampled)" in message


def test_the_fix_given_in_the_message_passes(tmp_path, french_first):
    fixed = _recipe(tmp_path, Path(french_first.data.path), columns={"src": 0, "tgt": 1})
    check_languages(fixed, _train_sample(fixed))
    result = detect_languages(fixed, _train_sample(fixed))
    assert (result.src.looks_like, result.tgt.looks_like) == ("fr", "en")
    assert not result.swapped


def test_the_check_can_be_turned_off(tmp_path, french_first):
    off = _recipe(tmp_path, Path(french_first.data.path), check_languages=False)
    check_languages(off, _train_sample(off))  # no refusal
    report = check_corpus(off)
    assert report.ok
    assert any("not refused" in msg for level, msg in report.findings if level == "warning")


def test_check_corpus_reports_swapped_languages_as_an_error(french_first):
    report = check_corpus(french_first)
    assert not report.ok
    errors = [msg for level, msg in report.findings if level == "error"]
    assert len(errors) == 1 and "data.columns" in errors[0]
    assert "training would refuse" in format_report(report)


def test_same_column_twice_is_refused(tmp_path):
    root = _corpus(tmp_path, _tiny("train"), _tiny("valid"), _tiny("test"))
    recipe = _recipe(tmp_path, root, columns={"src": 0, "tgt": 0})
    with pytest.raises(NmtError, match="name the same column"):
        check_languages(recipe, _train_sample(recipe))


def test_text_format_refusal_names_the_files(tmp_path):
    root = tmp_path / "text"
    root.mkdir()
    pairs = _tiny("train")
    for split in ("train", "valid", "test"):  # English in the .fr files and French in the .en files
        (root / f"{split}.fr").write_text("".join(f"{en}\n" for en, _ in pairs), encoding="utf-8")
        (root / f"{split}.en").write_text("".join(f"{fr}\n" for _, fr in pairs), encoding="utf-8")
    recipe = _recipe(tmp_path, root, format="text")
    with pytest.raises(NmtError) as info:
        check_languages(recipe, _train_sample(recipe))
    message = str(info.value)
    assert "{split}.fr (source)" in message and "mv $s.fr tmp" in message
    assert "data.columns" not in message


def test_short_lines_and_unknown_languages_are_not_refused(tmp_path, french_first):
    short = [("Yes.", "Oui."), ("No.", "Non."), ("Go!", "Va !")] * 100
    result = detect_languages(french_first, short)
    assert result.src.judged == 0 and not result.swapped
    check_languages(french_first, short)

    unknown = _recipe(tmp_path, Path(french_first.data.path), src_lang="xq", tgt_lang="en")
    pairs = _train_sample(unknown)
    result = detect_languages(unknown, pairs)
    assert any("'xq'" in note for note in result.notes)
    assert result.src.looks_like == "en"  # English in the source column: still refused
    with pytest.raises(NmtError):
        check_languages(unknown, pairs)


def test_a_minority_of_wrong_lines_is_not_refused(french_first):
    """Noise (a third of the sample in the other language) does not refuse a corpus."""
    good = [(fr, en) for en, fr in _tiny("train")][:300]
    noisy = [(en, fr) if i % 3 == 0 else (fr, en) for i, (fr, en) in enumerate(good)]
    check_languages(french_first, noisy)
    flipped = [(en, fr) if i % 3 else (fr, en) for i, (fr, en) in enumerate(good)]
    with pytest.raises(NmtError):
        check_languages(french_first, flipped)


GERMAN = ["Ich bin heute sehr müde.", "Wir gehen morgen ins Kino.", "Das Wetter ist schön heute.",
          "Kannst du mir bitte helfen?", "Er hat sein Buch vergessen.", "Die Kinder spielen im Garten.",
          "Ich habe keine Zeit dafür.", "Sie wohnt seit Jahren in Berlin.", "Wo ist der Bahnhof?",
          "Das Essen schmeckt wirklich gut."]


def test_no_clear_majority_is_not_refused(french_first):
    """Top language English on 40% of the source lines, French 30%, German 30%: no verdict."""
    pairs = [(fr, en) for en, fr in _tiny("train")][:300]
    mixed = [(en if i % 10 < 4 else fr if i % 10 < 7 else GERMAN[i % 10], en)
             for i, (fr, en) in enumerate(pairs)]
    result = detect_languages(french_first, mixed)
    assert max(result.src.detected, key=result.src.detected.get) == "en"
    assert result.src.looks_like is None and not result.swapped
    assert any("no clear majority" in note for note in result.notes)
    check_languages(french_first, mixed)


def test_the_language_check_reads_a_bounded_sample_spread_over_the_corpus():
    """What keeps the start-up check cheap: however large the corpus, a fixed number of rows is
    read, spread from its first to its last row (a corpus sorted by length is sampled throughout)."""
    from datasets import Dataset

    from nmt.data.language import DEFAULT_SAMPLE

    n = 50_000
    ds = Dataset.from_dict({"src": [f"s{i}" for i in range(n)], "tgt": [f"t{i}" for i in range(n)]})
    pairs = sample_pairs(ds)
    assert len(pairs) == DEFAULT_SAMPLE
    rows = [int(src[1:]) for src, _ in pairs]
    assert rows == sorted(set(rows)) and rows[0] == 0 and rows[-1] >= n - 2 * (n // DEFAULT_SAMPLE)
    assert all(tgt == f"t{row}" for (_, tgt), row in zip(pairs, rows)), "pairs stay pairs"
    assert sample_pairs(ds.select(range(10))) == [(f"s{i}", f"t{i}") for i in range(10)]


# --------------------------------------------------------------------------------------------------
# Corpus statistics
# --------------------------------------------------------------------------------------------------


def test_overlap_between_train_and_test_is_counted_exactly(tmp_path):
    train, test = _tiny("train"), _tiny("test")
    shared = train[10:17]  # 7 training pairs copied into test
    root = _corpus(tmp_path, train, _tiny("valid"), test[:25] + shared)
    report = check_corpus(_recipe(tmp_path, root, columns={"src": 1, "tgt": 0}))
    overlap = {o.split: o for o in report.overlaps}
    assert (overlap["test"].pairs, overlap["test"].same_pair) == (32, 7)
    assert (overlap["test"].same_src, overlap["test"].same_tgt) == (7, 7)
    assert overlap["valid"].same_pair == 0
    assert any("test: 7 of 32 pairs also occur in train" in m for _, m in report.findings)
    assert repr(shared[0][1]) in overlap["test"].examples[0]


def test_shared_source_sentences_are_counted_apart_from_pairs(tmp_path):
    train, test = _tiny("train"), _tiny("test")
    other = [(en + " Really.", fr) for en, fr in train[:4]]  # same French source, other English
    root = _corpus(tmp_path, train, _tiny("valid"), test[:20] + other)
    overlap = check_corpus(_recipe(tmp_path, root)).overlaps[1]
    assert (overlap.same_pair, overlap.same_src, overlap.same_tgt) == (0, 4, 0)


def test_duplicates_and_empty_lines_are_counted(tmp_path):
    train = _tiny("train")
    extra = [train[3]] * 3 + [train[5]] * 2 + [("", "Une phrase sans traduction."), ("Alone.", "")]
    valid = _tiny("valid") + [("Nothing here.", "")]
    root = _corpus(tmp_path, train + extra, valid, _tiny("test"))
    report = check_corpus(_recipe(tmp_path, root))
    assert report.duplicates == 5
    assert "(4 times)" in report.duplicate_examples[0]
    train_report = report.split("train")
    assert train_report.dropped == {"empty side": 2}
    assert train_report.pairs == len(train) + 5
    assert report.split("valid").lines["empty"] == 1
    assert report.split("valid").pairs == len(valid)  # valid/test are never filtered
    text = format_report(report)
    assert "duplicates in train: 5" in text and "dropped 2 (empty side)" in text


def test_suspicious_lines_and_lengths(tmp_path):
    train = _tiny("train") + [
        ("Same text.", "Same text."),
        ("See https://example.org now", "Voir https://example.org maintenant"),
        ("12345", "12345 !"),
        ("I was tired.", "J'Ã©tais fatiguÃ©."),
        ("Yes.", "Oui, bien sûr, je viendrai demain matin avec toute la famille."),
    ]
    root = _corpus(tmp_path, train, _tiny("valid"), _tiny("test"))
    report = check_corpus(_recipe(tmp_path, root))
    lines = report.split("train").lines
    assert lines["identical"] == 1 and lines["url_markup"] == 1 and lines["no_letters"] == 1
    assert lines["mojibake"] == 1 and lines["ratio"] == 1
    src = report.split("train").src_words  # French side: the long line has 11 words
    assert src.max == 11 and src.p50 <= src.p95 <= src.max


def test_a_vocabulary_too_large_for_the_corpus_is_warned(tmp_path):
    root = _corpus(tmp_path, _tiny("train"), _tiny("valid"), _tiny("test"))
    recipe = _recipe(tmp_path, root)
    recipe.tokenizer.src_vocab_size = 5000
    report = check_corpus(recipe)
    src, tgt = report.vocab
    assert src.verdict == "too large" and tgt.verdict != "too large"
    warnings = [m for level, m in report.findings if level == "warning" and "tokenizer." in m]
    assert len(warnings) == 1 and "tokenizer.src_vocab_size=5000 is too large" in warnings[0]
    assert f"--set tokenizer.src_vocab_size={src.suggested}" in warnings[0]
    # the warning is right: sentencepiece refuses that size, and accepts the suggested one
    french = [fr for _, fr in _tiny("train")]
    with pytest.raises(RuntimeError, match="Vocabulary size too high"):
        _train_spm(french, 5000)
    _train_spm(french, src.suggested)


def _train_spm(lines, size):
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=io.BytesIO(),
                                   vocab_size=size, character_coverage=1.0, minloglevel=3)


def test_joint_vocabulary_is_compared_with_both_sides(tmp_path):
    root = _corpus(tmp_path, _tiny("train"), _tiny("valid"), _tiny("test"))
    recipe = _recipe(tmp_path, root)
    recipe.tokenizer.joint = True
    (advice,) = check_corpus(recipe).vocab
    assert advice.key == "tokenizer.src_vocab_size"
    assert advice.words > 544  # both sides' words together (544 French words alone)


def test_an_unsplit_file_with_few_valid_pairs_is_warned(tmp_path):
    path = tmp_path / "all.tsv"
    _write_tsv(path, _tiny("train") + _tiny("valid") + _tiny("test"))
    report = check_corpus(_recipe(tmp_path, path))
    assert report.deterministic_split
    valid = report.split("valid").pairs
    assert valid < 200
    assert any(f"valid: only {valid} pairs" in m and "data.split_permille" in m
               for _, m in report.findings)


def test_report_as_json_and_text(tmp_path):
    root = _corpus(tmp_path, _tiny("train"), _tiny("valid"), _tiny("test"))
    report = check_corpus(_recipe(tmp_path, root))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True
    assert [s["split"] for s in data["splits"]] == ["train", "valid", "test"]
    assert data["languages"]["src"]["looks_like"] == "fr"
    text = format_report(report)
    for part in ("split", "train", "vocabulary", "languages", "findings"):
        assert part in text
    assert text.rstrip().endswith("ok")


def test_an_empty_training_split_is_an_error(tmp_path):
    root = _corpus(tmp_path, [("", "Rien."), ("Nothing.", "")], _tiny("valid"), _tiny("test"))
    report = check_corpus(_recipe(tmp_path, root))
    assert not report.ok
    assert report.split("train").dropped == {"empty side": 2}
    assert any(level == "error" and m.startswith("train: no pairs after filtering")
               for level, m in report.findings)


def _cli(*args: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "nmt", "data", "check", *args], capture_output=True,
                          text=True, cwd=REPO)


def test_data_check_command_exits_2_on_swapped_columns_and_0_after_the_fix(tmp_path):
    root = _corpus(tmp_path, _tiny("train"), _tiny("valid"), _tiny("test"), french_first=True)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"base: {REPO / 'recipes' / 'tiny.yaml'}\ndata:\n  path: {root}\n"
                      f"  splits: {{train: train.tsv, valid: valid.tsv, test: test.tsv}}\n"
                      f"  cache_dir: {tmp_path / 'hf-cache'}\n", encoding="utf-8")
    swapped = _cli(str(recipe))
    assert swapped.returncode == 2, swapped.stderr
    assert "data.columns" in swapped.stdout and "Traceback" not in swapped.stderr
    fixed = _cli(str(recipe), "--set", "data.columns.src=0", "--set", "data.columns.tgt=1", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert json.loads(fixed.stdout)["ok"] is True


def test_training_on_swapped_columns_stops_at_start_up(tmp_path):
    """nmt train refuses before tokenizers or weights are trained, with exit 2 and the fix."""
    import subprocess
    import sys
    root = _corpus(tmp_path, _tiny("train"), _tiny("valid"), _tiny("test"), french_first=True)
    run = subprocess.run([sys.executable, "-m", "nmt", "train", str(REPO / "recipes" / "tiny.yaml"),
                          "--run-dir", str(tmp_path / "run"), "--set", f"data.path={root}",
                          "--set", "data.splits={train: train.tsv, valid: valid.tsv, test: test.tsv}",
                          "--set", f"data.cache_dir={tmp_path / 'hf-cache'}"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "data.columns.src=0" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not list((tmp_path / "run").glob("*.model"))
