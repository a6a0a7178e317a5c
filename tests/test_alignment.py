"""Word alignments from attention (nmt.inference.alignment): the piece -> word mapping and the
arg-max pairs on constructed attention matrices, and the mapping against sentencepiece's own
detokenization."""
from __future__ import annotations

import random
import re

import pytest

from nmt.inference.alignment import format_alignment, word_alignment, word_indices

PHARAOH = re.compile(r"^(\d+-\d+( \d+-\d+)*)?$")


def test_word_indices_follow_sentencepiece_word_starts():
    assert word_indices(["▁Je", "▁suis", "▁fati", "gué", ".", "</s>"]) == [0, 1, 2, 2, 2, None]
    # a lone ▁ before a piece without one: the two make one word; a trailing lone ▁ makes none
    assert word_indices(["▁", "«", "▁Bon", "jour", "▁", "</s>"]) == [0, 0, 1, 1, None, None]
    # a first piece without ▁ still starts word 0; <unk> is a word of its own, and so is what follows it
    assert word_indices(["ab", "<unk>", "cd", "▁ef"]) == [0, 1, 2, 3]
    assert word_indices(["▁", "▁"]) == [None, None]
    assert word_indices([]) == []


def test_alignment_of_a_constructed_attention_matrix():
    """Source "le petit chat" (pieces ▁le ▁pe tit ▁chat </s>), target "the small cat" (pieces
    ▁the ▁sm all ▁cat </s>); the arg-max source piece of each target piece is marked 1."""
    src = ["▁le", "▁pe", "tit", "▁chat", "</s>"]
    tgt = ["▁the", "▁sm", "all", "▁cat", "</s>"]
    att = [
        # ▁le  ▁pe  tit  ▁chat </s>
        [0.70, 0.10, 0.10, 0.05, 0.05],  # ▁the -> ▁le      : 0-0
        [0.10, 0.20, 0.60, 0.05, 0.05],  # ▁sm  -> tit      : 1-1
        [0.05, 0.10, 0.10, 0.70, 0.05],  # all  -> ▁chat    : 2-1
        [0.10, 0.35, 0.05, 0.30, 0.20],  # ▁cat -> ▁pe      : 1-2
        [0.00, 0.00, 0.00, 0.00, 1.00],  # </s>: no word
    ]
    assert word_alignment(att, src, tgt) == [(0, 0), (1, 1), (1, 2), (2, 1)]
    assert format_alignment(word_alignment(att, src, tgt)) == "0-0 1-1 1-2 2-1"
    # a piece that attends most to the source EOS is left unaligned; ties go to the first maximum
    att[0] = [0.1, 0.1, 0.1, 0.1, 0.6]
    att[3] = [0.0, 0.4, 0.0, 0.4, 0.2]
    assert word_alignment(att, src, tgt) == [(1, 1), (1, 2), (2, 1)]
    with pytest.raises(ValueError, match="shape"):
        word_alignment(att[:4], src, tgt)
    assert format_alignment([]) == "" and PHARAOH.match("") and PHARAOH.match("0-0 12-3")


def test_words_are_those_of_the_detokenized_text(tmp_path):
    """Pieces grouped by word_indices give exactly the whitespace words sentencepiece decodes, for
    random id sequences (unknown pieces included) and random source sentences."""
    import datasets

    from nmt.config import TokenizerConfig
    from nmt.data.tokenizer import SubwordTokenizers

    rng = random.Random(0)
    words = "le la chat chien maison rouge , « » . ! l' aujourd'hui".split()
    text = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(200)]
    tok = SubwordTokenizers.train(TokenizerConfig(src_vocab_size=40, tgt_vocab_size=40, num_threads=1),
                                  datasets.Dataset.from_dict({"src": text, "tgt": text}), tmp_path)
    for _ in range(300):
        ids = [rng.randrange(1, 40) for _ in range(rng.randint(1, 12))]
        ids = [i for i in ids if i not in (0, 2, 3)]
        pieces = tok.tgt_pieces_from_ids(ids)
        decoded = tok.decode_tgt([ids])[0].split()
        index = word_indices(pieces)
        gathered = ["".join(p for p, w in zip(pieces, index) if w == k) for k in range(len(decoded))]
        gathered = [word.replace("▁", "").replace("<unk>", "⁇") for word in gathered]
        assert gathered == decoded, (pieces, decoded)
        assert max((w for w in index if w is not None), default=-1) == len(decoded) - 1
    for sentence in text[:50] + ["  le   chat  ", "λ chat"]:
        pieces = tok.src_pieces(sentence)
        assert max(w for w in word_indices(pieces) if w is not None) == len(sentence.split()) - 1
