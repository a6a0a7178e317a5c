"""What a run trains on: the corpus, its tokenizers (trained, loaded, or adopted from the run a
continued training starts from), the encoded splits, the shortlist lexicon, and the stream of
token batches with its resumable position."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from nmt.atomic import atomic_write_text
from nmt.config import Recipe
from nmt.errors import NmtError
from nmt.inference.checkpoint import RECIPE_HEADER
from nmt.training.rundir import InitSource, init_record

log = logging.getLogger("nmt.train")


@dataclass
class RunInputs:
    """The data side of a run, ready to train on."""

    corpus: dict[str, Any]  #: raw splits (``train``, ``valid``)
    tokenizers: Any  #: :class:`~nmt.data.tokenizer.SubwordTokenizers`
    train_ds: Any  #: the encoded, filtered training split (memory-mapped Arrow)
    valid_ds: Any  #: the encoded valid split (memory-mapped Arrow)
    lexicon: Any  #: the shortlist lexicon (None without ``decode.shortlist``)
    sampler: Any  #: :class:`~nmt.data.batching.TokenBatchSampler` of this process's share
    #: :class:`~nmt.data.augment.TrainingExamples` when a regularisation of ``train`` is on, else None
    examples: Any = None


def prepare_inputs(recipe: Recipe, run_dir: Path, resume: bool, accelerator,
                   init: InitSource | None = None) -> RunInputs:
    """Load and encode the data (the main process first: it trains or copies the tokenizers, the
    others read what it wrote), write the resolved ``recipe.yaml``, build the lexicon and sampler."""
    from nmt.data.augment import Augmentation, TrainingExamples
    from nmt.data.batching import TokenBatchSampler, lengths_of

    t = recipe.train
    with accelerator.main_process_first():  # rank 0 fills the datasets cache, the others reuse it
        corpus = _corpus(recipe)
    # rank 0 trains, loads or copies them in the run directory; the others receive its models
    tokenizers = _tokenizers(recipe, run_dir, resume, accelerator, init, corpus["train"])
    with accelerator.main_process_first():  # rank 0 encodes into the encoded cache, the others read it
        train_ds, valid_ds = _encoded(recipe, corpus, tokenizers, accelerator.is_main_process)
    if accelerator.is_main_process:
        atomic_write_text(run_dir / "recipe.yaml", RECIPE_HEADER + recipe.to_yaml())
    if len(train_ds) == 0:
        raise NmtError("the training split is empty after filtering; relax data.filter (max_len, max_ratio)")
    init_dir = None if init is None else init.run_dir
    lexicon = _lexicon(run_dir, recipe, tokenizers, train_ds, accelerator, resume,
                       init_dir, corpus["train"]) if recipe.decode.shortlist else None
    if not recipe.decode.shortlist and accelerator.is_main_process:  # else written with the lexicon
        _names(run_dir, recipe, tokenizers, train_ds, resume, init_dir)
    augmentation = Augmentation.from_recipe(recipe)
    examples = TrainingExamples(train_ds, tokenizers, augmentation) if augmentation.active else None
    src_lens, tgt_lens = lengths_of(train_ds) if examples is None else (examples.src_lens, examples.tgt_lens)
    if examples is not None and len(examples) > len(train_ds):
        log.info("train.concat_ratio %s: %d concatenated examples of %d pairs each beside the %d pairs",
                 t.concat_ratio, len(examples) - len(train_ds), t.concat_pairs, len(train_ds))
    sampler = TokenBatchSampler(
        src_lens, tgt_lens, batch_tokens=t.batch_tokens,
        max_sentences=t.max_sentences, bucket_width=t.bucket_width, seed=t.seed,
        num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    return RunInputs(corpus, tokenizers, train_ds, valid_ds, lexicon, sampler, examples)


def _corpus(recipe: Recipe):
    """The raw ``train`` and ``valid`` splits, their languages checked."""
    from nmt.data.corpus import load_corpus

    corpus = load_corpus(recipe.data, splits=("train", "valid"))
    _check_sides(recipe, corpus["train"])
    return corpus


def _tokenizers(recipe: Recipe, run_dir: Path, resume: bool, accelerator, init: InitSource | None, train):
    """The run's sentencepiece models: rank 0's, sent to every other process (which never reads
    the run directory: on another node it need not exist)."""
    from nmt.data.tokenizer import SubwordTokenizers
    from nmt.training.distributed import share

    tokenizers = None
    if accelerator.is_main_process:
        if init is not None:  # continued training: the trained run's models, copied
            tokenizers = SubwordTokenizers.adopt(init.run_dir, run_dir, init.record)
        elif resume and init_record(run_dir) is not None:  # the checkpoint checks their sha256
            tokenizers = SubwordTokenizers.load(run_dir)
        else:
            tokenizers = SubwordTokenizers.load_or_train(recipe.tokenizer, train, run_dir, resume=resume)
    return share(accelerator, tokenizers)


def _encoded(recipe: Recipe, corpus, tokenizers, first: bool = True):
    """``(train_ds, valid_ds)``: the training split encoded and filtered, the valid split encoded;
    both memory-mapped from the encoded cache (:mod:`nmt.data.encoded_cache`), which a later run
    of the same corpus and tokenizers reads instead of encoding again."""
    import os

    from nmt.data.encoded_cache import encode_split

    # the main process encodes while every other process waits: it may use all the CPUs; the others
    # (on another node, where its cache is not) share their machine's
    local = 1 if first else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    # subword sampling segments the text again every epoch: keep it beside the ids
    train_ds = encode_split(corpus["train"], tokenizers, recipe.data, "train", filtered=True,
                            local_processes=local, keep_text=recipe.train.subword_sampling)
    valid_ds = encode_split(corpus["valid"], tokenizers, recipe.data, "valid", filtered=False,
                            local_processes=local)
    return train_ds, valid_ds


def _check_sides(recipe: Recipe, train) -> None:
    """Refuse a corpus whose sides look swapped (``data.check_languages``) before anything is
    trained, and show two training pairs labelled with their languages, so that a wrong column or
    file is seen in the first lines of the log rather than after the run."""
    from nmt.data.language import check_languages, sample_pairs

    sample = sample_pairs(train)
    if recipe.data.check_languages:
        check_languages(recipe, sample)
    for src, tgt in sample[:2]:
        log.info("sample pair: %s (source) %r -> %s (target) %r",
                 recipe.data.src_lang, src[:120], recipe.data.tgt_lang, tgt[:120])


def _lexicon(run_dir: Path, recipe: Recipe, tokenizers, train_ds, accelerator, resume: bool = False,
             init_from: Path | None = None, raw_train=None):
    """The lexicon of a recipe that decodes with a shortlist (``decode.shortlist``): built from the
    training data before training (IBM Model 1 does not depend on the model), kept on resume.

    A continued training's lexicon is built from its own data and then given the translations of
    the lexicon of the run it starts from, if that has one (:meth:`Lexicon.merged`): the model
    still translates what it learnt there, and a small in-domain set alone would leave most of the
    vocabulary without candidates.

    The lexicon depends only on the corpus, the tokenizers, the length filter and
    ``data.lexicon_sample``: it is kept in the cache of :mod:`nmt.data.encoded_cache` under a
    sha256 of them (:func:`lexicon_identity`), and a later run of the same copies it from there."""
    from nmt.inference.shortlist import LEXICON_FILE, Lexicon
    from nmt.training.distributed import share

    path = run_dir / LEXICON_FILE
    lexicon = None
    if accelerator.is_main_process:
        if not resume:  # one left by a failed attempt may fit other tokenizers
            path.unlink(missing_ok=True)
        if not path.is_file():
            _cached_or_built_lexicon(run_dir, recipe, tokenizers, train_ds, raw_train)
            if init_from is not None and (init_from / LEXICON_FILE).is_file():
                Lexicon.load(path).merged(Lexicon.load(init_from / LEXICON_FILE)).save(path)
            _merge_parent_names(run_dir, init_from)
        lexicon = Lexicon.load(path)
    return share(accelerator, lexicon)  # the other processes never read the run directory


def _names(run_dir: Path, recipe: Recipe, tokenizers, train_ds, resume: bool, init_from: Path | None) -> None:
    """``RUN_DIR/names.json`` (:mod:`nmt.inference.names`) for a recipe without a lexicon: from the
    pairs a lexicon would read, kept on resume."""
    from nmt.inference.names import NAMES_FILE
    from nmt.inference.shortlist import name_table

    path = run_dir / NAMES_FILE
    if resume and path.is_file():
        return
    name_table(train_ds, tokenizers, recipe.data.lexicon_sample).save(path)
    _merge_parent_names(run_dir, init_from)


def _merge_parent_names(run_dir: Path, init_from: Path | None) -> None:
    """A continued run's table of names also knows the words of the run it starts from."""
    from nmt.inference.names import NAMES_FILE, NameTable

    if init_from is not None and (init_from / NAMES_FILE).is_file() and (run_dir / NAMES_FILE).is_file():
        names = run_dir / NAMES_FILE
        NameTable.load(names).merged(NameTable.load(init_from / NAMES_FILE)).save(names)


def lexicon_identity(recipe: Recipe, tokenizers, raw_train) -> dict | None:
    """What decides a run's lexicon (None when the corpus has no identity: then it is not cached)."""
    from dataclasses import asdict

    from nmt.data.encoded_cache import corpus_identity

    corpus = corpus_identity(recipe.data, raw_train)
    if corpus is None:
        return None
    return {"corpus": corpus, "tokenizers": tokenizers.file_hashes, "filter": asdict(recipe.data.filter),
            "lexicon_sample": recipe.data.lexicon_sample, "method": "ibm-model-1", "iterations": 5,
            "keep": 100, "names": 1}


def _cached_or_built_lexicon(run_dir: Path, recipe: Recipe, tokenizers, train_ds, raw_train) -> None:
    """Write ``RUN_DIR/lexicon.safetensors`` and ``RUN_DIR/names.json`` (built with it): from the
    cache, or built and then kept there."""
    from nmt.atomic import atomic_write_bytes
    from nmt.data.encoded_cache import cache_root, file_entry_key, load_files, store_files
    from nmt.inference.names import NAMES_FILE
    from nmt.inference.shortlist import LEXICON_FILE, build_for_run

    identity = None if raw_train is None else lexicon_identity(recipe, tokenizers, raw_train)
    key = None if identity is None else file_entry_key("lexicon", identity)
    files = None if key is None else load_files(key, (LEXICON_FILE, NAMES_FILE))
    if files is not None:
        for name, data in files.items():
            atomic_write_bytes(run_dir / name, data)
        log.info("lexicon read from the cache %s (building skipped)", cache_root() / key)
        return
    path = build_for_run(run_dir, recipe=recipe, tokenizers=tokenizers, train_ds=train_ds,
                         max_pairs=recipe.data.lexicon_sample)
    if key is not None:
        store_files(key, {LEXICON_FILE: path.read_bytes(), NAMES_FILE: (run_dir / NAMES_FILE).read_bytes()},
                    len(train_ds),
                    describe=f"lexicon of {len(train_ds)} pairs (data.lexicon_sample {recipe.data.lexicon_sample})")


def batch_stream(dataset, sampler, examples=None) -> Iterator:
    """Endless stream of collated batches; the sampler advances epochs and remembers its position.

    With ``examples`` (:class:`~nmt.data.augment.TrainingExamples`) the sampler's indices are
    examples of that set, built for their epoch and batch position (regularisation on).

    No DataLoader: its iterators draw seeds from the global RNG, which would make a resumed run
    diverge from an uninterrupted one; and the sampler's position is then exactly the batches trained.
    """
    from nmt.data.batching import collate

    if examples is not None:
        while True:
            for indices in sampler:  # the sampler counts the batch before handing it out
                yield examples.batch(indices, sampler.epoch, sampler.position - 1, sampler.rank)
    columns = dataset.select_columns(["src_ids", "tgt_ids"])
    while True:
        for indices in sampler:
            rows = columns[indices]
            yield collate([{"src_ids": s, "tgt_ids": t} for s, t in zip(rows["src_ids"], rows["tgt_ids"])])


def epoch_progress(sampler) -> float:
    """Epochs trained, with the fraction of the current one."""
    return sampler.epoch + sampler.position / max(1, len(sampler))
