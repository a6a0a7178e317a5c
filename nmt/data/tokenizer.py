"""sentencepiece subword models for the source and target languages.

Models are trained on the training split only, streaming sentences out of the (memory-mapped)
``datasets.Dataset`` through sentencepiece's ``sentence_iterator`` (no temporary corpus file). A
split of more than ``tokenizer.input_sentence_size`` pairs is sampled down to that many pairs,
evenly spaced (:func:`training_sample`), before anything is read, so a huge corpus costs only the
sample's time and memory; a smaller split is read whole.

Models depend only on the settings and the sample's text, so they are kept in the cache of
:mod:`nmt.data.encoded_cache` under a sha256 of both: a new run directory of the same corpus and
settings copies them from there instead of training again (the run directory still holds its own
copy, and stays self-contained).

Files in the run directory: ``spm.src.model`` and ``spm.tgt.model``. With ``tokenizer.joint`` one
model is trained on both sides (vocabulary size ``tokenizer.src_vocab_size``) and written under both
names with identical bytes, so loading never needs to know whether the vocabulary is joint
(:attr:`SubwordTokenizers.joint` tells).

``spm.json`` beside them records what they were trained from: the tokenizer settings and a sha256
of the training split's text, and the sha256 of each model file. A run directory's models are reused
only when that record matches (a resumed run); models left by an interrupted first attempt with
other settings or data are trained again, and ``--resume`` refuses models that do not match.

Special ids are fixed for every model: ``PAD_ID=0``, ``UNK_ID=1``, ``BOS_ID=2``, ``EOS_ID=3``.
sentencepiece's own normaliser is off (``normalization_rule_name=identity``): text is already
normalised by :mod:`nmt.data.corpus` as ``data.filter.normalize`` says, and decoding then reproduces the
cleaned text exactly (up to runs of spaces, which sentencepiece collapses).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

from nmt.atomic import atomic_write_bytes, atomic_write_json
from nmt.config import TokenizerConfig
from nmt.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt.errors import CheckpointError, ConfigError

logger = logging.getLogger("nmt.data.tokenizer")

SRC_MODEL, TGT_MODEL = "spm.src.model", "spm.tgt.model"
RECORD = "spm.json"  #: what the models were trained from (see :func:`training_identity`)
_ITER_BATCH = 10_000
#: sentencepiece's own sample size as passed to it (and recorded in the model file): the sample of
#: :func:`training_sample` is never larger, and models of the same sentences keep the same bytes
#: as those trained when this was the default of ``tokenizer.input_sentence_size``
_SPM_INPUT_SIZE = 2_000_000


def sentence_stream(ds, columns: Sequence[str]) -> Iterator[str]:
    """Yield the non-empty strings of ``columns`` of a dataset, batch by batch (bounded memory)."""
    for column in columns:
        for batch in ds.select_columns([column]).iter(batch_size=_ITER_BATCH):
            for text in batch[column]:
                if text:
                    yield text


def training_sample(cfg: TokenizerConfig, train_ds):
    """The pairs sentencepiece learns from: all of them, or for a split of more than
    ``tokenizer.input_sentence_size`` pairs that many, evenly spaced (deterministic), so that
    training and the identity below read a bounded part of a large corpus."""
    size = cfg.input_sentence_size
    if len(train_ds) <= size:
        return train_ds
    return train_ds.select(np.linspace(0, len(train_ds) - 1, size).astype(np.int64))


def training_identity(cfg: TokenizerConfig, train_ds) -> dict:
    """What decides the models: the tokenizer settings (threads aside) and the text of the
    training sample (:func:`training_sample`; the whole split when it is not larger)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "num_threads"}
    sample = training_sample(cfg, train_ds)
    digest = hashlib.sha256()
    for column in ("src", "tgt"):
        digest.update(f"\0{column}\0".encode())
        for batch in sample.select_columns([column]).iter(batch_size=_ITER_BATCH):
            for text in batch[column]:
                digest.update(text.encode("utf-8"))
                digest.update(b"\n")
    data = {"pairs": len(train_ds), "sha256": digest.hexdigest()}
    if len(sample) < len(train_ds):
        data["sample"] = len(sample)
    return {"tokenizer": settings, "train_data": data}


def model_hashes(out_dir: str | os.PathLike) -> dict[str, str]:
    """sha256 of each model file in ``out_dir`` (recorded in checkpoints: swapped models show)."""
    out = Path(out_dir)
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in (SRC_MODEL, TGT_MODEL)}


def _mismatch(record: dict, identity: dict, hashes: dict[str, str]) -> str | None:
    """Why recorded models do not fit ``identity`` (None: they do)."""
    old_cfg, new_cfg = record.get("tokenizer") or {}, identity["tokenizer"]
    changed = [f"tokenizer.{k} {old_cfg.get(k)!r} (now {v!r})" for k, v in new_cfg.items() if old_cfg.get(k) != v]
    if changed:
        return "other settings: " + ", ".join(changed)
    old_data, new_data = record.get("train_data") or {}, identity["train_data"]
    if old_data.get("sha256") != new_data["sha256"]:
        return (f"other training data ({old_data.get('pairs', '?')} pairs, now {new_data['pairs']}, "
                "and different text)")
    if record.get("models") != hashes:
        return "different files: the model files changed after they were trained"
    return None


def _train_model(sentences: Iterable[str], vocab_size: int, key: str, cfg: TokenizerConfig,
                 verbose: bool = False, sides: int = 1) -> bytes:
    """One model from ``sentences`` (the sample of ``sides`` sides: 2 for a joint vocabulary, so
    that sentencepiece keeps every sentence of a sample of ``input_sentence_size`` pairs)."""
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buf,
            vocab_size=vocab_size, model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            # at least the sample's sentences, so sentencepiece samples no further
            input_sentence_size=max(_SPM_INPUT_SIZE, cfg.input_sentence_size * sides),
            shuffle_input_sentence=True,
            num_threads=cfg.num_threads,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            normalization_rule_name="identity",
            minloglevel=0 if verbose else 2,
        )
    except RuntimeError as exc:
        message = str(exc)
        too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)",
                             message)
        if too_high:
            limit = int(too_high.group(2))
            raise ConfigError(
                f"{key}: {vocab_size} is too large for this training data (sentencepiece can build "
                f"at most {limit} pieces from it); set a smaller value, e.g. --set {key}={limit}"
            ) from None
        too_low = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", message)
        if too_low:
            raise ConfigError(
                f"{key}: {vocab_size} is smaller than the {too_low.group(2)} pieces needed for the "
                f"characters of the training data; raise {key} or lower "
                "tokenizer.character_coverage (e.g. 0.9995)") from None
        if "sentence_iterator" in message or "no sentences" in message.lower() or \
                "Input corpus is empty" in message or "sentences_.empty" in message:
            raise ConfigError(f"{key}: no training sentences to learn a vocabulary from "
                              "(is the training split empty?)") from None
        raise
    return buf.getvalue()


def _processor(proto: bytes, path: Path) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(proto)
    except Exception as exc:  # corrupt or truncated file
        raise CheckpointError(f"{path}: not a valid sentencepiece model ({exc}); delete it to "
                              "retrain, or restore it from the run directory's backup") from None
    specials = [sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()]
    if specials != [PAD_ID, UNK_ID, BOS_ID, EOS_ID]:
        raise CheckpointError(f"{path}: special ids pad/unk/bos/eos are {specials}, expected "
                              f"{[PAD_ID, UNK_ID, BOS_ID, EOS_ID]}; was it written by nmt train?")
    return sp


class SubwordTokenizers:
    """A source and a target sentencepiece model (the same one if ``joint``)."""

    PAD, UNK, BOS, EOS = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, src_proto: bytes, tgt_proto: bytes, where: Path = Path(".")):
        self._src_proto, self._tgt_proto = src_proto, tgt_proto
        self.src = _processor(src_proto, where / SRC_MODEL)
        self.tgt = self.src if tgt_proto == src_proto else _processor(tgt_proto, where / TGT_MODEL)
        #: identifies both models (for ``datasets`` cache fingerprints and checkpoints)
        self.fingerprint = hashlib.sha256(src_proto + b"\0" + tgt_proto).hexdigest()[:16]

    # ---------------------------------------------------------------------------------- creation

    @classmethod
    def train(cls, cfg: TokenizerConfig, train_ds, out_dir: str | os.PathLike,
              verbose: bool = False, identity: dict | None = None) -> "SubwordTokenizers":
        """Train on the ``src``/``tgt`` columns of the training dataset; write the models to out_dir
        and ``spm.json``, the record of what they were trained from."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        identity = identity or training_identity(cfg, train_ds)
        train_ds = training_sample(cfg, train_ds)
        (out / RECORD).unlink(missing_ok=True)  # models first, then their record
        if cfg.joint:
            if cfg.tgt_vocab_size != cfg.src_vocab_size:
                logger.warning("tokenizer.joint: one vocabulary of tokenizer.src_vocab_size=%d pieces; "
                               "tokenizer.tgt_vocab_size=%d is ignored", cfg.src_vocab_size,
                               cfg.tgt_vocab_size)
            src_proto = tgt_proto = _train_model(sentence_stream(train_ds, ["src", "tgt"]),
                                                 cfg.src_vocab_size, "tokenizer.src_vocab_size", cfg,
                                                 verbose, sides=2)
        else:
            src_proto = _train_model(sentence_stream(train_ds, ["src"]), cfg.src_vocab_size,
                                     "tokenizer.src_vocab_size", cfg, verbose)
            tgt_proto = _train_model(sentence_stream(train_ds, ["tgt"]), cfg.tgt_vocab_size,
                                     "tokenizer.tgt_vocab_size", cfg, verbose)
        tok = cls._write(out, src_proto, tgt_proto, identity)
        logger.info("trained sentencepiece %s: src %d pieces, tgt %d pieces%s -> %s", cfg.model_type,
                    tok.src_vocab_size, tok.tgt_vocab_size, " (joint)" if tok.joint else "", out)
        return tok

    @classmethod
    def _write(cls, out: Path, src_proto: bytes, tgt_proto: bytes, identity: dict) -> "SubwordTokenizers":
        """Write the models and then their record ``spm.json`` into ``out``."""
        atomic_write_bytes(out / SRC_MODEL, src_proto)
        atomic_write_bytes(out / TGT_MODEL, tgt_proto)
        atomic_write_json(out / RECORD, {**identity, "models": model_hashes(out)})
        return cls(src_proto, tgt_proto, out)

    @classmethod
    def cached_or_train(cls, cfg: TokenizerConfig, train_ds, out_dir: str | os.PathLike,
                        verbose: bool = False, identity: dict | None = None) -> "SubwordTokenizers":
        """The models of an earlier run with the same ``identity`` (settings and sample text), copied
        from the cache (:mod:`nmt.data.encoded_cache`) into ``out_dir``; else trained and kept there."""
        from nmt.data.encoded_cache import cache_root, file_entry_key, load_files, store_files

        identity = identity or training_identity(cfg, train_ds)
        # another sentencepiece may train other models from the same sentences
        key = file_entry_key("spm", {**identity, "sentencepiece": spm.__version__})
        files = load_files(key, (SRC_MODEL, TGT_MODEL))
        if files is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / RECORD).unlink(missing_ok=True)  # models first, then their record
            logger.info("sentencepiece models read from the cache %s (training skipped)", cache_root() / key)
            return cls._write(out, files[SRC_MODEL], files[TGT_MODEL], identity)
        tok = cls.train(cfg, train_ds, out_dir, verbose, identity=identity)
        store_files(key, {SRC_MODEL: tok._src_proto, TGT_MODEL: tok._tgt_proto}, len(train_ds),
                    describe=f"sentencepiece models of {identity['train_data']['pairs']} pairs")
        return tok

    @classmethod
    def adopt(cls, source_dir: str | os.PathLike, out_dir: str | os.PathLike, origin: dict) -> "SubwordTokenizers":
        """Copy the models of the trained run ``source_dir`` into ``out_dir`` (continued training).

        ``spm.json`` keeps the source's record of what they were trained from (so a run started
        afresh in ``out_dir`` on other data trains its own) and adds ``init_from``: ``origin``.
        """
        source, out = Path(source_dir), Path(out_dir)
        models = cls.load(source)
        try:
            record = json.loads((source / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        out.mkdir(parents=True, exist_ok=True)
        (out / RECORD).unlink(missing_ok=True)  # models first, then their record
        atomic_write_bytes(out / SRC_MODEL, models._src_proto)
        atomic_write_bytes(out / TGT_MODEL, models._tgt_proto)
        atomic_write_json(out / RECORD, {**(record if isinstance(record, dict) else {}),
                                         "models": model_hashes(out), "init_from": origin})
        return cls.load(out)

    @staticmethod
    def exists(out_dir: str | os.PathLike) -> bool:
        out = Path(out_dir)
        return (out / SRC_MODEL).is_file() and (out / TGT_MODEL).is_file()

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "SubwordTokenizers":
        out = Path(out_dir)
        for name in (SRC_MODEL, TGT_MODEL):
            if not (out / name).is_file():
                raise CheckpointError(f"run directory {out} has no tokenizer model {name}; was it "
                                      "written by nmt train?")
        return cls((out / SRC_MODEL).read_bytes(), (out / TGT_MODEL).read_bytes(), out)

    @classmethod
    def load_or_train(cls, cfg: TokenizerConfig, train_ds, out_dir: str | os.PathLike,
                      verbose: bool = False, resume: bool = False) -> "SubwordTokenizers":
        """Reuse the models in ``out_dir`` if ``spm.json`` says they were trained from these settings
        and this data; otherwise train them, or with ``resume`` refuse (CheckpointError)."""
        out = Path(out_dir)
        identity = training_identity(cfg, train_ds)
        if cls.exists(out):
            try:
                record = json.loads((out / RECORD).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                record = None
            if not isinstance(record, dict):
                if resume:  # a run written before models were recorded: nothing to compare
                    logger.warning("%s: the tokenizer models have no %s record; reusing them unchecked",
                                   out, RECORD)
                    return cls.load(out)
                why = f"no {RECORD} record of what they were trained from (left by an interrupted run?)"
            else:
                why = _mismatch(record, identity, model_hashes(out))
                if why is None:
                    return cls.load(out)
            if resume:
                raise CheckpointError(
                    f"--resume: the tokenizer models in {out} were trained with {why}; the checkpoint "
                    "needs the models it was trained with. Restore the recipe's tokenizer settings and "
                    "the training data, or start a new run directory without --resume")
            logger.warning("%s: the tokenizer models there have %s; training new ones", out, why)
        return cls.cached_or_train(cfg, train_ds, out, verbose, identity=identity)

    def __getstate__(self):
        return {"src_proto": self._src_proto, "tgt_proto": self._tgt_proto}

    def __setstate__(self, state):
        self.__init__(state["src_proto"], state["tgt_proto"])

    # ---------------------------------------------------------------------------------- queries

    @property
    def file_hashes(self) -> dict[str, str]:
        """sha256 of the two model files (checkpoints record them: swapped models are refused)."""
        return {SRC_MODEL: hashlib.sha256(self._src_proto).hexdigest(),
                TGT_MODEL: hashlib.sha256(self._tgt_proto).hexdigest()}

    def check_checkpoint(self, metadata: dict, checkpoint: str | os.PathLike, where: str | os.PathLike) -> None:
        """CheckpointError if ``checkpoint`` (its ``metadata``) was trained with other models."""
        recorded = metadata.get("tokenizers")
        if not isinstance(recorded, dict):
            return  # written before checkpoints recorded their tokenizers
        for name, digest in self.file_hashes.items():
            if recorded.get(name) != digest:
                raise CheckpointError(
                    f"{Path(where) / name} is not the tokenizer model checkpoint {checkpoint} was trained "
                    f"with (sha256 {digest[:12]}..., the checkpoint records {str(recorded.get(name))[:12]}...); "
                    "its ids would mean other subwords. Restore the run directory's original spm models")

    @property
    def joint(self) -> bool:
        return self._src_proto == self._tgt_proto

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, texts: list[str]) -> list[list[int]]:
        """Subword ids, without BOS/EOS (:func:`nmt.data.batching.encode_dataset` appends EOS)."""
        return _encode(self.src, texts)

    def encode_tgt(self, texts: list[str]) -> list[list[int]]:
        return _encode(self.tgt, texts)

    def encode_sampled(self, side: str, texts: Sequence[str], seeds: Sequence[int], alpha: float,
                       nbest_size: int = -1) -> list[list[int]]:
        """One sampled segmentation of each text (``side``: ``src`` or ``tgt``), without BOS/EOS.

        Unigram models draw from the segmentation lattice with probabilities ``P(x)^alpha`` among
        the ``nbest_size`` best (-1: all; Kudo 2018); BPE models drop each merge with probability
        ``alpha`` (Provilkov et al. 2020; ``nbest_size`` is ignored). Text ``i`` is drawn from its
        own stream ``seeds[i]``: sentencepiece restarts its generator when the seed is set, so a
        text's segmentation does not depend on what was encoded before it.
        """
        sp = self.src if side == "src" else self.tgt
        out = []
        for text, seed in zip(texts, seeds):
            spm.set_random_generator_seed(int(seed))
            out.append(sp.encode(text, out_type=int, enable_sampling=True, alpha=alpha, nbest_size=nbest_size))
        return out

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Text of id sequences; each sequence is cut at its first EOS, PAD/BOS are ignored."""
        return _decode(self.tgt, [_until_eos(seq) for seq in ids])

    def decode_src(self, ids: list[list[int]]) -> list[str]:
        return _decode(self.src, [_until_eos(seq) for seq in ids])

    def src_pieces(self, text: str) -> list[str]:
        """The source subword pieces of one sentence (attention-plot labels)."""
        return self.src.encode(text, out_type=str)

    def tgt_pieces_from_ids(self, ids: Sequence[int]) -> list[str]:
        """Target pieces of ids (specials as ``<s>``, ``</s>``, ``<pad>``) for plot labels."""
        return [self.tgt.id_to_piece(int(i)) for i in ids]


#: lists shorter than this are encoded and decoded one text at a time: for a list, sentencepiece
#: starts a pool of threads for the call, which takes longer than a few hundred short sentences
#: take alone (about 1-2 ms of waiting for 26 sentences against 0.06 ms, more on a busy machine)
THREADED_FROM = 256


def _encode(processor: spm.SentencePieceProcessor, texts: Sequence[str]) -> list[list[int]]:
    if len(texts) < THREADED_FROM:
        return [processor.encode(text, out_type=int) for text in texts]
    return processor.encode(list(texts), out_type=int)


def _decode(processor: spm.SentencePieceProcessor, ids: list[list[int]]) -> list[str]:
    if len(ids) < THREADED_FROM:
        return [processor.decode(seq) for seq in ids]
    return processor.decode(ids)


def _until_eos(seq: Sequence[int]) -> list[int]:
    out = []
    for i in seq:
        i = int(i)
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            out.append(i)
    return out


def train(cfg: TokenizerConfig, train_ds, out_dir, verbose: bool = False) -> SubwordTokenizers:
    return SubwordTokenizers.train(cfg, train_ds, out_dir, verbose)


def load(out_dir) -> SubwordTokenizers:
    return SubwordTokenizers.load(out_dir)


def load_or_train(cfg: TokenizerConfig, train_ds, out_dir, verbose: bool = False,
                  resume: bool = False) -> SubwordTokenizers:
    return SubwordTokenizers.load_or_train(cfg, train_ds, out_dir, verbose, resume)
