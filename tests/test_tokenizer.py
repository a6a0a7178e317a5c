"""nmt.data.tokenizer: sentencepiece training from a dataset, round trips, files, errors."""
from __future__ import annotations

import pickle
import random

import datasets
import pytest

from nmt.config import TokenizerConfig
from nmt.data.tokenizer import (
    SRC_MODEL,
    TGT_MODEL,
    SubwordTokenizers,
    load,
    load_or_train,
    train,
)
from nmt.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt.errors import CheckpointError, ConfigError

SUBJECTS = [("I", "je"), ("you", "tu"), ("we", "nous"), ("they", "ils"), ("she", "elle")]
VERBS = [("see", "vois"), ("like", "aime"), ("want", "veux"), ("eat", "mange"), ("paint", "peins")]
OBJECTS = [("the cat", "le chat"), ("a house", "une maison"), ("the red apple", "la pomme rouge"),
           ("my friend", "mon ami"), ("green tea", "du thé vert"), ("the old bridge", "le vieux pont")]


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        (se, sf), (ve, vf), (oe, of) = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
        out.append((f"{sf.capitalize()} {vf} {of} à {rng.randint(1, 99)} heures.",
                    f"{se.capitalize()} {ve} {oe} at {rng.randint(1, 99)}."))
    return out


@pytest.fixture(scope="module")
def train_ds():
    pairs = _pairs(400)
    return datasets.Dataset.from_dict({"src": [p[0] for p in pairs], "tgt": [p[1] for p in pairs]})


CFG = TokenizerConfig(src_vocab_size=50, tgt_vocab_size=45, num_threads=1)


@pytest.fixture(scope="module")
def trained(train_ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(CFG, train_ds, out), out


def test_files_and_special_ids(trained):
    tok, out = trained
    assert (out / SRC_MODEL).is_file() and (out / TGT_MODEL).is_file()
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert (tok.PAD, tok.UNK, tok.BOS, tok.EOS) == (0, 1, 2, 3)
    for sp in (tok.src, tok.tgt):
        assert [sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()] == [0, 1, 2, 3]
    assert tok.tgt_pieces_from_ids([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]
    assert tok.src_vocab_size == 50 and tok.tgt_vocab_size == 45 and not tok.joint


def test_short_lists_are_coded_one_text_at_a_time_with_the_same_result(trained, train_ds, monkeypatch):
    """sentencepiece starts a thread pool for every list it is given: a short list (a served model
    call) is encoded and decoded one text at a time, a long one as a list; both give the same."""
    import copy

    from nmt.data import tokenizer as module

    tok, _ = trained
    texts = list(train_ds["tgt"][:300]) + ["", "   "]
    whole = [tok.tgt.encode(texts, out_type=int), tok.tgt.decode(tok.tgt.encode(texts, out_type=int))]
    lists = []
    spy = copy.copy(tok)
    for side in ("src", "tgt"):
        real = getattr(tok, side)

        class Spy:
            def __getattr__(self, name, real=real):
                return getattr(real, name)

            def encode(self, x, real=real, **kw):
                lists.append(isinstance(x, list))
                return real.encode(x, **kw)

            def decode(self, x, real=real, **kw):
                lists.append(bool(x) and isinstance(x[0], list))
                return real.decode(x, **kw)

        setattr(spy, side, Spy())
    short = texts[:module.THREADED_FROM - 3] + texts[-2:]
    assert spy.encode_tgt(short) == whole[0][:module.THREADED_FROM - 3] + whole[0][-2:]
    assert spy.decode_tgt(spy.encode_tgt(short)) == whole[1][:module.THREADED_FROM - 3] + whole[1][-2:]
    assert spy.encode_src(short[:3]) == tok.src.encode(short[:3], out_type=int)
    assert lists and not any(lists)  # never a list: no thread pool
    assert spy.encode_tgt(texts) == whole[0] and spy.decode_tgt(whole[0]) == whole[1]
    assert lists[-2:] == [True, True]  # a long list goes to sentencepiece whole


def test_round_trip(trained):
    tok, _ = trained
    sentences = ["I see the cat at 12.", "They eat green tea at 7.", "We like my friend at 42."]
    ids = tok.encode_tgt(sentences)
    assert all(isinstance(i, int) and 4 <= i < tok.tgt_vocab_size for seq in ids for i in seq)
    assert tok.decode_tgt(ids) == sentences
    src = ["Je vois le chat à 3 heures.", "Nous peins la pomme rouge à 9 heures."]
    assert tok.decode_src(tok.encode_src(src)) == src
    # decoding stops at EOS and ignores BOS / PAD
    assert tok.decode_tgt([[BOS_ID] + ids[0] + [EOS_ID] + ids[1] + [PAD_ID]]) == [sentences[0]]
    pieces = tok.src_pieces("Je vois le chat.")
    assert "".join(pieces).replace("▁", " ").strip() == "Je vois le chat."
    assert tok.tgt_pieces_from_ids(ids[0])[0].startswith("▁")


def test_unknown_characters_map_to_unk(trained):
    tok, _ = trained
    assert UNK_ID in tok.encode_tgt(["I see 漢字."])[0]


def test_load_gives_identical_encodings(trained):
    tok, out = trained
    again = load(out)
    texts = ["Ils aiment une maison à 5 heures.", "Tu veux mon ami."]
    assert again.encode_src(texts) == tok.encode_src(texts)
    assert again.encode_tgt(texts) == tok.encode_tgt(texts)
    assert again.fingerprint == tok.fingerprint
    clone = pickle.loads(pickle.dumps(tok))  # DataLoader workers / datasets.map(num_proc)
    assert clone.encode_tgt(texts) == tok.encode_tgt(texts)


def test_load_or_train_reuses_existing(trained, train_ds, monkeypatch):
    tok, out = trained

    def fail(*a, **k):
        raise AssertionError("retrained although the models exist")

    monkeypatch.setattr(SubwordTokenizers, "train", classmethod(fail))
    assert load_or_train(CFG, train_ds, out).fingerprint == tok.fingerprint


def test_load_missing_model(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load(tmp_path)
    assert f"run directory {tmp_path} has no tokenizer model {SRC_MODEL}" in str(err.value)
    assert "nmt train" in str(err.value)


def test_corrupt_model(tmp_path, trained):
    _, out = trained
    (tmp_path / SRC_MODEL).write_bytes(b"not a model")
    (tmp_path / TGT_MODEL).write_bytes((out / TGT_MODEL).read_bytes())
    with pytest.raises(CheckpointError, match="not a valid sentencepiece model"):
        load(tmp_path)


def test_vocab_too_large_is_config_error(train_ds, tmp_path):
    cfg = TokenizerConfig(src_vocab_size=50, tgt_vocab_size=5000, num_threads=1)
    with pytest.raises(ConfigError) as err:
        train(cfg, train_ds, tmp_path)
    msg = str(err.value)
    assert "tokenizer.tgt_vocab_size" in msg and "5000" in msg and "--set tokenizer.tgt_vocab_size=" in msg
    assert not (tmp_path / SRC_MODEL).exists()  # nothing half-written


def test_vocab_smaller_than_alphabet_is_config_error(train_ds, tmp_path):
    cfg = TokenizerConfig(src_vocab_size=10, tgt_vocab_size=45, num_threads=1)
    with pytest.raises(ConfigError, match=r"tokenizer\.src_vocab_size: 10 .*character_coverage"):
        train(cfg, train_ds, tmp_path)


def test_joint_model(train_ds, tmp_path):
    cfg = TokenizerConfig(joint=True, src_vocab_size=70, tgt_vocab_size=70, num_threads=1,
                          model_type="bpe")
    tok = train(cfg, train_ds, tmp_path)
    assert tok.joint and tok.src_vocab_size == tok.tgt_vocab_size == 70
    assert (tmp_path / SRC_MODEL).read_bytes() == (tmp_path / TGT_MODEL).read_bytes()
    assert load(tmp_path).joint
    text = ["Je vois the cat."]
    assert tok.encode_src(text) == tok.encode_tgt(text)
    assert tok.decode_tgt(tok.encode_tgt(text)) == text


def test_trains_on_the_given_side_only(tmp_path):
    ds = datasets.Dataset.from_dict({"src": ["ééé ààà ççç"] * 50, "tgt": ["xyz uvw"] * 50})
    tok = train(TokenizerConfig(src_vocab_size=10, tgt_vocab_size=11, num_threads=1), ds, tmp_path)
    assert UNK_ID not in tok.encode_src(["ééé ààà"])[0]
    assert UNK_ID in tok.encode_tgt(["ééé"])[0]  # target model never saw the source
