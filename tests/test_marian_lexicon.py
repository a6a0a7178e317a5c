"""scripts/marian_lexicon.py: the lexicon Marian's --shortlist reads, from nmt's IBM Model 1."""
import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def lexicon_lines():
    return load_script("marian_lexicon").lexicon_lines


# Marian's sentencepiece ids start at 0 with </s>: id 0 is a real word here, not IBM Model 1's NULL
SRC = ["</s>", "<unk>", "▁chat", "▁chien", "▁le"]
TGT = ["</s>", "<unk>", "▁cat", "▁dog", "▁the"]


def parse(lines):
    entries = {}
    for line in lines:
        tgt, src, prob = line.split(" ")
        entries.setdefault(src, []).append((tgt, float(prob)))
    return entries


def test_best_translations_in_marians_format(lexicon_lines):
    src = [[4, 2]] * 3 + [[4, 3]] * 3 + [[2]] * 2 + [[0]] * 3
    tgt = [[4, 2]] * 3 + [[4, 3]] * 3 + [[2]] * 2 + [[3]] * 3
    entries = parse(lexicon_lines(src, tgt, SRC, TGT, keep=50))
    assert entries["▁chat"][0][0] == "▁cat" and entries["▁chat"][0][1] > 0.5
    assert entries["▁chien"][0][0] == "▁dog" and entries["▁chien"][0][1] > 0.5
    assert entries["▁le"][0][0] == "▁the"
    # id 0 keeps its own translations: had it been taken for NULL, it would share the alignment mass
    # of every sentence (NULL is in all of them) instead of the one word it co-occurs with
    assert entries["</s>"] == [("▁dog", pytest.approx(1.0, abs=1e-3))]
    for src_piece, targets in entries.items():
        probs = [p for _, p in targets]
        assert probs == sorted(probs, reverse=True), src_piece
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)  # p(. | s) over the co-occurring targets
    assert "NULL" not in entries


def test_keep_limits_the_targets_per_source(lexicon_lines):
    src = [[2, 3, 4]] * 2
    tgt = [[2, 3, 4]] * 2
    entries = parse(lexicon_lines(src, tgt, SRC, TGT, keep=2))
    assert set(entries) == {"▁chat", "▁chien", "▁le"}
    assert all(len(targets) == 2 for targets in entries.values())
