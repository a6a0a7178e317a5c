"""The special token ids every vocabulary shares (sentencepiece is trained to put them first)."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
N_SPECIAL = 4  #: ids below this are the special tokens above
