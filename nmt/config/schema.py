"""The recipe schema: nested dataclasses, one per section, and :func:`setting`, the field helper
that carries a field's help, allowed range and choices.

Every default lives here; ``nmt config show RECIPE`` prints the resolved recipe. Validation
(:mod:`nmt.config.validation`), the generated command-line options (:mod:`nmt.config.options`)
and the server's request model read the metadata, so each setting is described once.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Union

import yaml

from nmt.metrics import METRICS

#: the names of the activation registry (``nmt.model.activations.available_activations()``);
#: kept here because the recipe is read below the model layer (a test keeps the two equal)
ACTIVATIONS: tuple[str, ...] = (
    "identity", "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "gelu_tanh",
    "swish", "silu", "mish", "softplus", "maxout", "arelu", "aprelu")

#: sacrebleu's BLEU tokenizers (``sacrebleu.metrics.BLEU.TOKENIZERS``; a test keeps them equal)
BLEU_TOKENIZERS: tuple[str, ...] = (
    "none", "zh", "13a", "intl", "char", "ja-mecab", "ko-mecab", "spm", "flores101", "flores200", "spBLEU-1K")

_NO_DEFAULT = object()


def setting(default: Any = _NO_DEFAULT, help: str = "", *, default_factory: Callable[[], Any] | None = None,
            min: float | None = None, max: float | None = None, above: float | None = None,
            below: float | None = None, choices: tuple[str, ...] | None = None, noun: str | None = None,
            length: int | None = None, note: str | None = None, metavar: str | None = None) -> Any:
    """A recipe field that carries its help text and what it allows.

    ``min``/``max``: inclusive bounds; ``above``/``below``: exclusive bounds; for a list field they
    bound each item, and ``length`` fixes the item count. ``choices``: the allowed strings (of the
    value, or of each item of a list), named ``noun`` in messages ("unknown activation 'x'").
    ``note`` explains a bound in its message. ``metavar`` names the value in ``--help``.
    """
    meta = {"help": help, "min": min, "max": max, "above": above, "below": below, "choices": choices,
            "noun": noun, "length": length, "note": note, "metavar": metavar}
    meta = {k: v for k, v in meta.items() if v is not None}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    if default is _NO_DEFAULT:
        raise TypeError("setting() needs a default or a default_factory")
    return field(default=default, metadata=meta)


@dataclass
class FilterConfig:
    """Cleaning applied to training pairs (valid/test are only normalised, never dropped)."""

    max_len: int = setting(100, "drop pairs whose source or target has more subwords than this", above=0)
    max_ratio: float = setting(3.0, "drop pairs whose subword length ratio (longer/shorter) exceeds this",
                               above=0)
    min_len: int = setting(1, "drop pairs with fewer subwords than this on either side", min=0)
    normalize: Literal["NFC", "NFKC", "none"] = "NFC"  #: Unicode normalisation of both sides


@dataclass
class DataConfig:
    """Where the parallel corpus comes from. Everything is read through HuggingFace ``datasets``.

    ``format``:
      - ``tsv``: a directory (``path``) holding one tab-separated file per split (``splits``), or one
        file with no splits (then ``valid``/``test`` are carved off deterministically); ``columns``
        are 0-based column indices.
      - ``text``: a pair of parallel plain-text files per split: ``{path}/{split}.{src_lang}`` and
        ``{path}/{split}.{tgt_lang}``.
      - ``jsonl``: one JSON object per line; ``columns`` are field names.
      - ``hub``: a dataset on the HuggingFace Hub (``hub_id``, ``hub_config``); ``columns`` name the
        fields, or use ``translation`` for the usual ``{"translation": {"fr": ..., "en": ...}}``.
      - ``url``: a remote TSV file (``url``; ``zip://member::https://...`` reaches inside archives),
        downloaded and cached by ``datasets``; split deterministically.
    """

    format: Literal["tsv", "text", "jsonl", "hub", "url"] = "tsv"
    path: Optional[str] = None  #: local directory or file (``${ENV:-default}`` allowed)
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train.tsv", "valid": "valid.tsv", "test": "test.tsv"}
    )
    src_lang: str = "fr"
    tgt_lang: str = "en"
    columns: dict[str, Union[int, str]] = field(default_factory=lambda: {"src": 1, "tgt": 0})
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    url: Optional[str] = None
    #: When the corpus has no fixed splits: fraction (in 1/1000 hash buckets) that goes to valid/test.
    #: Pairs are grouped by target sentence so that one sentence never lands in two splits.
    split_permille: dict[str, int] = field(default_factory=lambda: {"test": 12, "valid": 12})
    split_salt: str = "tatoeba-fra-eng-split|"
    max_train_pairs: Optional[int] = None  #: keep only the first N training pairs (debugging)
    filter: FilterConfig = field(default_factory=FilterConfig)
    cache_dir: Optional[str] = None  #: where ``datasets`` caches downloads and Arrow files
    #: Processes that tokenise the corpus (the result is the same for any number); null: 1 for a
    #: split under 100k pairs, else the CPUs this process may use, at most 8 (rank 0 encodes while
    #: the other processes wait and uses them all; processes of another machine share theirs).
    num_proc: Optional[int] = setting(None, "processes that clean and tokenise the corpus", above=0, metavar="N")
    #: Before training, check on a sample of training pairs that the source side is in ``src_lang`` and
    #: the target side in ``tgt_lang`` (refuse swapped columns or files); false turns the check off.
    check_languages: bool = True
    #: The shortlist lexicon (``decode.shortlist``) is built by IBM Model 1 over at most this many
    #: training pairs, evenly spaced over the corpus (its memory grows with the pairs it uses:
    #: about 160 MB for 163k pairs); null uses every pair.
    lexicon_sample: Optional[int] = setting(200_000, "training pairs the shortlist lexicon is built from",
                                            above=0, metavar="N")


_VOCAB_NOTE = "4 special pieces + characters"


@dataclass
class TokenizerConfig:
    """sentencepiece subwords, trained on the training split only and stored in the run directory."""

    model_type: Literal["unigram", "bpe"] = "unigram"
    joint: bool = False  #: one shared vocabulary for both languages
    src_vocab_size: int = setting(8000, "source vocabulary size", min=8, note=_VOCAB_NOTE)
    tgt_vocab_size: int = setting(8000, "target vocabulary size", min=8, note=_VOCAB_NOTE)
    character_coverage: float = setting(1.0, "share of characters sentencepiece covers", min=0, max=1)
    #: Above the fr-en corpus (163k pairs), which is read whole; about a minute of training on
    #: 200k pairs twice Tatoeba's length on 2 busy cores.
    input_sentence_size: int = setting(
        200_000, "training pairs sentencepiece learns from (each side): a larger training split is "
                 "sampled down to this many, evenly spaced", above=0, metavar="N")
    num_threads: int = 2


@dataclass
class EncoderConfig:
    layers: int = setting(1, "GRU layers", above=0)
    bidirectional: bool = True
    hidden_size: int = setting(256, "GRU size per direction", above=0)
    dropout: float = setting(0.2, "between GRU layers and on the encoder output", min=0, below=1)
    self_attention_layers: int = setting(0, "multi-head self-attention blocks on top of the GRU", min=0)
    self_attention_heads: int = setting(4, "heads of each self-attention block", above=0)
    self_attention_ff_size: int = setting(1024, "feed-forward size of each self-attention block", above=0)


@dataclass
class DecoderConfig:
    layers: int = setting(1, "GRU layers", above=0)
    hidden_size: int = setting(256, "GRU size", above=0)
    dropout: float = setting(0.2, "on the attentional/readout vector before the output layer", min=0, below=1)
    input_feeding: bool = True  #: Luong: feed the previous attentional vector into the GRU input
    bridge: bool = True  #: initial state = act(W · encoder final state); else zeros


@dataclass
class AttentionConfig:
    """``kind``: bahdanau | luong-dot | luong-general | luong-concat | local-p.

    Bahdanau attention is computed *before* the decoder GRU (the context feeds the GRU); all Luong
    kinds *after* it (attentional hidden state). ``local-p`` uses ``score`` inside a Gaussian window
    of half-width ``window`` (Luong et al. 2015, §3.2).
    """

    kind: Literal["bahdanau", "luong-dot", "luong-general", "luong-concat", "local-p"] = "bahdanau"
    hidden_size: Optional[int] = setting(None, "additive/concat scorer size; default: decoder hidden size",
                                         above=0)
    activation: Optional[str] = setting(None, "scorer non-linearity; default: tanh", choices=ACTIVATIONS,
                                        noun="activation")
    score: Literal["dot", "general", "concat"] = "general"  #: local-p's alignment score
    window: Optional[int] = setting(None, "local-p half window D (required for local-p)", above=0)


@dataclass
class ModelConfig:
    embedding_dim: int = setting(256, "embedding size", above=0)
    tied_embeddings: bool = setting(
        False, "the output layer's weight is the target embedding table (Press & Wolf 2017); the "
               "readout before it is then embedding_dim wide")
    shared_embeddings: bool = setting(
        False, "one embedding table for source and target (needs tokenizer.joint: true)")
    dropout: float = setting(0.2, "on embeddings", min=0, below=1)
    #: Non-linearity of every layer that has one (bridge, readout / attentional state, self-attention
    #: feed-forward), by registry name (``nmt.model.activations.available_activations()``).
    activation: str = setting("tanh", "non-linearity of every layer that has one", choices=ACTIVATIONS,
                              noun="activation")
    activation_options: dict[str, Any] = field(default_factory=dict)  #: e.g. ``{pieces: 2}``
    init: Literal["xavier_uniform", "uniform", "pytorch"] = "xavier_uniform"
    #: Implementation of the operations that have a CPU fast path (``nmt/kernels``): ``auto`` takes
    #: it where it applies (CPU training, search); ``reference`` runs only the plain equations of
    #: ``nmt/model`` (nn.GRU, the attention and loss formulas, nn.Dropout), as a GPU does. Both give
    #: the same numbers up to rounding; weights trained with one load with the other.
    kernels: Literal["auto", "reference"] = "auto"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)


#: the values of ``model.kernels``
KERNELS: tuple[str, ...] = typing.get_args(typing.get_type_hints(ModelConfig)["kernels"])


@dataclass
class TrainConfig:
    seed: int = 42
    batch_tokens: int = setting(4096, "target tokens (incl. EOS, no padding) per batch", above=0)
    max_sentences: int = setting(512, "cap on sentences per batch", above=0)
    bucket_width: int = setting(1, "length bucket granularity in tokens (1 = exact length buckets)", above=0)
    accumulate: int = setting(1, "gradient accumulation steps", above=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = setting(1e-3, "learning rate", above=0)
    betas: list[float] = setting(help="Adam's beta1 and beta2", default_factory=lambda: [0.9, 0.999],
                                 min=0, below=1, length=2)
    weight_decay: float = setting(0.0, "weight decay", min=0)
    schedule: Literal["constant", "inverse_sqrt", "cosine", "plateau"] = "constant"
    warmup_steps: int = setting(0, "steps of linear learning-rate warm-up", min=0)
    min_lr: float = setting(1e-5, "lowest learning rate of the schedule", min=0)
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    clip_norm: float = setting(1.0, "gradient norm clipping; 0 disables clipping", min=0)
    label_smoothing: float = setting(0.0, "label smoothing of the loss", min=0, below=1)
    softmax: Literal["full", "batch", "auto"] = setting(
        "full", "full | batch | auto: the training loss's softmax over the whole target vocabulary, or over "
                "a subset per batch: its target subwords, the softmax_frequent most frequent ones and "
                "softmax_sampled drawn uniformly from the rest (Jean et al. 2015); auto: batch when training "
                "runs in float32 on a CPU, full elsewhere (the run's recipe.yaml records the choice); "
                "validation, evaluation and translation always use the whole vocabulary",
        choices=("full", "batch", "auto"), noun="softmax", metavar="KIND")
    softmax_frequent: int = setting(
        500, "softmax: batch: the most frequent target subwords of the training split, in every batch's "
             "subset", min=0, metavar="N")
    softmax_sampled: int = setting(
        512, "softmax: batch: target subwords drawn per batch from the rest of the vocabulary (their "
             "logits corrected for the draw)", min=0, metavar="N")
    # Regularisation for small corpora (docs/training.md): each is off by default and changes only
    # the training batches; validation, evaluation and translation never see it.
    src_word_dropout: float = setting(
        0.0, "training only: probability that a source subword is replaced by <unk> (or removed, "
             "word_dropout_mode); EOS and padding are never touched", min=0, below=1)
    tgt_word_dropout: float = setting(
        0.0, "training only: probability that a decoder input subword (the previous target token) "
             "is replaced by <unk>; BOS and padding are never touched, the loss targets never", min=0, below=1)
    word_dropout_mode: Literal["unk", "drop"] = setting(
        "unk", "source word dropout: replace the subword by <unk>, or remove it", choices=("unk", "drop"),
        noun="word dropout mode")
    subword_sampling: bool = setting(
        False, "training only: a new sentencepiece segmentation of every training sentence each epoch "
               "(unigram: subword regularisation, bpe: BPE-dropout), seeded by (seed, epoch, pair)")
    subword_alpha: Optional[float] = setting(
        None, "subword sampling: unigram smoothing (lower = more varied segmentations); bpe: the "
              "probability of dropping each merge; default: 0.2 for unigram (Kudo 2018), 0.1 for bpe "
              "(Provilkov et al. 2020)", above=0, below=1)
    subword_nbest: int = setting(
        -1, "subword sampling (unigram): sample among the N best segmentations; -1 = all of them",
        min=-1, note="-1 or at least 2", metavar="N")
    concat_ratio: float = setting(
        0.0, "add ratio x (training pairs) examples, each concat_pairs pairs joined (sources with "
             "sources, targets with targets), drawn once from the seed", min=0, max=10)
    concat_pairs: int = setting(2, "pairs joined into one concatenated example", min=2, max=16)
    concat_mode: Literal["random", "consecutive"] = setting(
        "random", "concatenated examples join random pairs, or pairs that follow each other in the corpus",
        choices=("random", "consecutive"), noun="concatenation mode")
    max_steps: Optional[int] = setting(None, "stop after this many updates", above=0)
    max_epochs: Optional[int] = setting(None, "stop after this many epochs", above=0)
    budget_minutes: Optional[float] = setting(None, "stop training after this much training wall time",
                                              above=0)
    valid_every: int = setting(1000, "steps between validations", above=0)
    valid_beam: int = setting(1, "1 = greedy decoding for validation BLEU", above=0)
    valid_max_sentences: Optional[int] = setting(None, "validate BLEU on the first N valid pairs only", above=0)
    #: What makes a validation the new "best" checkpoint (and resets ``patience``): a higher valid
    #: BLEU, or with ``loss`` a lower valid loss. An equal BLEU counts as better when the valid loss
    #: is lower: early in training every validation scores BLEU 0 while the loss still falls, and
    #: the best checkpoint is then the one that has learned most, not the first (which outputs
    #: next to nothing).
    early_stopping_metric: Literal["bleu", "loss"] = "bleu"
    patience: Optional[int] = setting(None, "validations without improvement before stopping", above=0)
    precision: Literal["auto", "no", "bf16", "fp16"] = setting(
        "no", "auto | no | bf16 | fp16: mixed precision of training (accelerate's autocast); auto: bf16 "
              "on a GPU with bf16 and on a CPU with bf16 instructions (AVX-512 BF16, AMX), else no "
              "(float32); a resumed run keeps the mode it started with (docs/performance.md)", metavar="MODE")
    #: torch intra-op threads. ``auto`` (default): on an idle machine torch's own choice; beside
    #: other work seen at start-up, one per CPU it leaves free, waiting passively
    #: (nmt.training.threads); an integer fixes the count, ``null`` always takes torch's choice
    num_threads: Optional[Union[int, Literal["auto"]]] = setting("auto", "torch intra-op threads", above=0)
    log_every: int = setting(100, "steps between training log lines", above=0)
    keep_last: int = setting(
        1, "weights of the last N checkpoints kept in checkpoints/ as stepNNNNNNNN.safetensors, for "
           "`nmt average` (1: only the last, which resume needs)", min=1, metavar="N")
    plot_sentences: int = 3  #: attention plots of fixed valid sentences at each validation
    #: Continued training (``nmt train --init-from RUN_DIR``): the trained run whose weights and
    #: tokenizer models this run starts from, with this recipe's data, schedule and a fresh
    #: optimizer. Its model and tokenizer sections must equal the run's (dropout, init and kernels
    #: may differ). Written as an absolute path into the new run's recipe.yaml.
    init_from: Optional[str] = None
    init_checkpoint: Literal["best", "last", "avg"] = "best"  #: which weights of ``init_from``
    max_nan_skips: int = setting(5, "consecutive non-finite losses before the run stops", above=0)
    #: Several processes: how long one waits for the others in a collective operation before the
    #: run stops with an error (a node that died is seen at once; one that hangs after this long).
    #: It must cover the longest wait at start-up, while rank 0 trains the tokenizers and builds the
    #: lexicon (over at most ``tokenizer.input_sentence_size`` sentences and ``data.lexicon_sample``
    #: pairs).
    dist_timeout: float = setting(1800.0, "seconds a process waits for the others before the run stops",
                                  min=5, metavar="SECONDS")


@dataclass
class DecodeConfig:
    """Search settings (:mod:`nmt.inference.search`), the defaults of ``nmt translate``, ``nmt
    evaluate``, ``nmt bench translate`` and validation; each field is also a command-line option of
    those commands (``n_best`` -> ``--n-best``)."""

    beam: int = setting(5, "beam size; 1 = greedy search", min=1, metavar="K")
    n_best: int = setting(1, "hypotheses per sentence (at most the beam size; given without a beam, it "
                          "widens the beam to K)", min=1, metavar="K")
    length_penalty: float = setting(
        0.0, "GNMT length penalty alpha: score / ((5 + |Y|) / 6) ** alpha; 0 = none", min=0, metavar="ALPHA")
    coverage_penalty: float = setting(0.0, "GNMT coverage penalty beta; 0 = none", min=0, metavar="BETA")
    max_len_a: float = setting(1.5, "max output length = a * source length + b", min=0, metavar="A")
    max_len_b: int = setting(10, "max output length = a * source length + b", min=0, metavar="B")
    min_len: int = setting(0, "tokens generated before EOS is allowed", min=0, metavar="N")
    no_repeat_ngram: int = setting(0, "forbid repeating n-grams of this size; 0 = off", min=0, metavar="N")
    batch_tokens: int = setting(8000, "source tokens x beam size per translation batch", min=1, metavar="N")
    shortlist: int = setting(
        0, "lexical shortlist (nmt shortlist): K translations per source subword + the frequent ones; "
           "0 = full vocabulary", min=0, metavar="K")
    shortlist_frequent: int = setting(100, "most frequent target subwords always in a shortlist", min=0,
                                      metavar="N")
    max_input_len: int = setting(250, "longer inputs are truncated (with a warning) to this many subwords",
                                 min=1, metavar="N")
    split_sentences: bool = setting(
        True, "translate an input of several sentences one sentence at a time (cut by sentencex for the "
              "source language) and join the translations")
    names: bool = setting(
        True, "carry capitalised source words the training data lacks (names) into the translation "
              "through surrogate names the model knows (RUN_DIR/names.json, written by nmt train)")
    sample: bool = setting(
        False, "draw each token from the model's distribution instead of searching; n_best is then "
               "the number of independent samples per sentence; excludes beam > 1")
    # the range keeps logits / T finite in float32 (|logits| of a trained model stay far below
    # 3e35 = float32 max x 1e-3): 0.001 is already greedy in effect and 100 close to uniform
    temperature: float = setting(1.0, "sampling: logits divided by T (< 1 sharper, > 1 flatter)",
                                 min=0.001, max=100, metavar="T")
    top_k: int = setting(0, "sampling: draw from the K most probable tokens only; 0 = all", min=0,
                         metavar="K")
    top_p: float = setting(1.0, "sampling: draw from the smallest set of most probable tokens whose "
                                "probability reaches P (nucleus); 1 = all", above=0, max=1, metavar="P")
    seed: int = setting(0, "sampling: random seed; each sentence is sampled from its own stream of "
                           "(seed, the sentence), the same wherever it stands", min=0, metavar="S")
    precision: Literal["auto", "float32", "bf16"] = setting(
        "auto", "auto | float32 | bf16: search in float32 or under bf16 autocast (faster on AVX-512 "
                "BF16/AMX CPUs and GPUs); auto: time both on a batch of the run's size before the first search and "
                "take bf16 only if it is at least a tenth faster (cached per model and machine; "
                "docs/performance.md)", metavar="MODE")
    inter_threads: Union[int, Literal["auto"]] = setting(
        "auto", "searches at once: each batch is split into N parts, searched side by side on the "
                "engine's threads / N intra-op threads each (CTranslate2's inter_threads); auto: N = the "
                "engine's threads on a CPU, 1 on a GPU", above=0, metavar="N")

    def problems(self, label: Callable[[str], str] | None = None) -> list[str]:
        """Out-of-range values and combinations, each named by ``label(field)`` (default: the field)."""
        from nmt.config.validation import decode_problems

        return decode_problems(self, label or (lambda name: name))

    def updated(self, changes: Mapping[str, Any] | None = None,
                label: Callable[[str], str] | None = None, **more: Any) -> "DecodeConfig":
        """A validated copy with ``changes`` (``None`` values keep the current setting).

        Without a new ``beam``, a larger ``n_best`` widens the beam to it, and sampling sets it to 1
        (``n_best`` is then the number of samples). Problems raise
        :class:`~nmt.errors.ConfigError`, each naming the setting as ``label(field)`` (a
        command-line flag, a keyword argument).
        """
        from nmt.config.validation import updated_decode

        return updated_decode(self, {**(changes or {}), **more}, label or (lambda name: name))

    def check(self) -> "DecodeConfig":
        """Raise :class:`~nmt.errors.ConfigError` if a value is out of range; return ``self``."""
        from nmt.errors import ConfigError

        problems = self.problems()
        if problems:
            raise ConfigError(problems, what="decode settings")
        return self


#: the values of ``decode.precision``
PRECISIONS: tuple[str, ...] = typing.get_args(typing.get_type_hints(DecodeConfig)["precision"])


@dataclass
class EvalConfig:
    metrics: list[str] = setting(help="metrics of nmt evaluate", default_factory=lambda: list(METRICS),
                                 choices=METRICS, noun="metric")
    bleu_tokenize: str = setting("13a", "sacrebleu's BLEU tokenizer", choices=BLEU_TOKENIZERS,
                                 noun="BLEU tokenizer")


@dataclass
class OutputConfig:
    name: Optional[str] = None  #: run name; default: the recipe file name
    run_dir: Optional[str] = None  #: default: ``runs/<name>``
    tensorboard: bool = False


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def resolved_run_dir(recipe: Recipe, override: str | None = None) -> Path:
    """Where a run of ``recipe`` writes: ``override``, else ``output.run_dir``, else ``runs/<name>``."""
    if override:
        return Path(override)
    if recipe.output.run_dir:
        return Path(recipe.output.run_dir)
    return Path("runs") / (recipe.output.name or "run")
