"""Typed recipes: a YAML file parsed into nested dataclasses, validated, with ``--set`` overrides.

Every default lives in the dataclasses below; ``nmt config show RECIPE`` prints the resolved recipe.
Validation collects *all* problems and reports each with its full key path:

- unknown keys (``model.atention``) with a "did you mean" suggestion,
- wrong types (``train.lr: "fast"``) with the value and the expected type,
- out-of-range values and impossible combinations, with what is allowed.

String values may reference environment variables as ``${NAME}`` or ``${NAME:-default}``; this is
how ``recipes/fr-en.yaml`` lets ``NMT_TATOEBA_DIR`` replace its corpus. They are expanded after the
YAML is parsed, in values only (never in keys or comments), so a value may hold any text.
``${NAME}`` needs NAME to be set (an empty value is a value); ``${NAME:-default}`` takes the default
when NAME is unset or empty, as the shell does. Relative data paths are resolved against the
directory of the recipe file that sets them.

Recipe files are read by :class:`RecipeLoader`: safe YAML without aliases, without a key given
twice in one mapping, and with bounded nesting; each refusal names the file and line.

A recipe may start from another: ``base: fr-en.yaml`` (relative to the recipe's directory; the base
may have a base in turn) and then give only the keys that differ, merged section by section over the
base's (:func:`read_recipe`). A training run must stop by itself: :func:`check_stops` rejects a
``train`` section without ``max_steps``, ``max_epochs``, ``budget_minutes`` or ``patience``.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Union

import yaml

from nmt.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            above: float | None = None, metavar: str | None = None) -> Any:
    """A recipe field that carries its help text and allowed range (``min``/``max``, inclusive;
    ``above``: the value must be greater).

    Validation (:func:`field_problems`) and the generated command-line options
    (:func:`add_decode_arguments`) read them, so a setting is described once.
    """
    meta = {"help": help, "min": min, "max": max, "above": above, "metavar": metavar}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


@dataclass
class FilterConfig:
    """Cleaning applied to training pairs (valid/test are only normalised, never dropped)."""

    max_len: int = 100  #: drop pairs whose source or target has more subwords than this
    max_ratio: float = 3.0  #: drop pairs whose subword length ratio (longer/shorter) exceeds this
    min_len: int = 1  #: drop pairs with fewer subwords than this on either side
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
    #: Before training, check on a sample of training pairs that the source side is in ``src_lang`` and
    #: the target side in ``tgt_lang`` (refuse swapped columns or files); false turns the check off.
    check_languages: bool = True


@dataclass
class TokenizerConfig:
    """sentencepiece subwords, trained on the training split only and stored in the run directory."""

    model_type: Literal["unigram", "bpe"] = "unigram"
    joint: bool = False  #: one shared vocabulary for both languages
    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    character_coverage: float = 1.0
    input_sentence_size: int = 2_000_000  #: sentences sampled to train sentencepiece (large corpora)
    num_threads: int = 2


@dataclass
class EncoderConfig:
    layers: int = 1
    bidirectional: bool = True
    hidden_size: int = 256  #: per direction
    dropout: float = 0.2  #: between GRU layers and on the encoder output
    self_attention_layers: int = 0  #: multi-head self-attention blocks on top of the GRU
    self_attention_heads: int = 4
    self_attention_ff_size: int = 1024


@dataclass
class DecoderConfig:
    layers: int = 1
    hidden_size: int = 256
    dropout: float = 0.2  #: on the attentional/readout vector before the output layer
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
    hidden_size: Optional[int] = None  #: additive/concat scorer size; default: decoder hidden size
    activation: Optional[str] = None  #: scorer non-linearity; default: tanh
    score: Literal["dot", "general", "concat"] = "general"  #: local-p's alignment score
    window: Optional[int] = None  #: local-p half window D (required for local-p)


@dataclass
class ModelConfig:
    embedding_dim: int = 256
    tied_embeddings: bool = False  #: tie decoder input embeddings to the output projection
    shared_embeddings: bool = False  #: share source and target embeddings (needs a joint vocabulary)
    dropout: float = 0.2  #: on embeddings
    #: Non-linearity of every layer that has one (bridge, readout / attentional state, self-attention
    #: feed-forward), by registry name (``nmt.model.activations.available_activations()``).
    activation: str = "tanh"
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
    batch_tokens: int = 4096  #: target tokens (incl. EOS, no padding) per batch
    max_sentences: int = 512  #: cap on sentences per batch
    bucket_width: int = 1  #: length bucket granularity in tokens (1 = exact length buckets)
    accumulate: int = 1  #: gradient accumulation steps
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: Literal["constant", "inverse_sqrt", "cosine", "plateau"] = "constant"
    warmup_steps: int = 0
    min_lr: float = 1e-5
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    clip_norm: float = 1.0  #: 0 disables clipping
    label_smoothing: float = 0.0
    max_steps: Optional[int] = None
    max_epochs: Optional[int] = None
    budget_minutes: Optional[float] = None  #: stop training after this much training wall time
    valid_every: int = 1000  #: steps between validations
    valid_beam: int = 1  #: 1 = greedy decoding for validation BLEU
    valid_max_sentences: Optional[int] = None  #: validate BLEU on the first N valid pairs only
    #: What makes a validation the new "best" checkpoint (and resets ``patience``): a higher valid
    #: BLEU, or with ``loss`` a lower valid loss. An equal BLEU counts as better when the valid loss
    #: is lower: early in training every validation scores BLEU 0 while the loss still falls, and
    #: the best checkpoint is then the one that has learned most, not the first (which outputs
    #: next to nothing).
    early_stopping_metric: Literal["bleu", "loss"] = "bleu"
    patience: Optional[int] = None  #: validations without improvement before stopping
    precision: Literal["no", "bf16", "fp16"] = "no"
    #: torch intra-op threads. ``auto`` (default): on an idle machine torch's own choice; beside
    #: other work seen at start-up, one per CPU it leaves free, waiting passively
    #: (nmt.training.threads); an integer fixes the count, ``null`` always takes torch's choice
    num_threads: Optional[Union[int, Literal["auto"]]] = "auto"
    log_every: int = 100
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
    max_nan_skips: int = 5  #: consecutive non-finite losses before the run stops


@dataclass
class DecodeConfig:
    """Search settings (:mod:`nmt.inference.search`), the defaults of ``nmt translate``, ``nmt
    evaluate``, ``nmt bench translate`` and validation; each field is also a command-line option of
    those commands (``n_best`` -> ``--n-best``)."""

    beam: int = setting(5, "beam size; 1 = greedy search", min=1, metavar="K")
    n_best: int = setting(1, "hypotheses per sentence (at most the beam size)", min=1, metavar="K")
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
    sample: bool = setting(
        False, "draw each token from the model's distribution instead of searching; n_best is then "
               "the number of independent samples per sentence; excludes beam > 1")
    temperature: float = setting(1.0, "sampling: logits divided by T (< 1 sharper, > 1 flatter)", above=0,
                                 metavar="T")
    top_k: int = setting(0, "sampling: draw from the K most probable tokens only; 0 = all", min=0,
                         metavar="K")
    top_p: float = setting(1.0, "sampling: draw from the smallest set of most probable tokens whose "
                                "probability reaches P (nucleus); 1 = all", above=0, max=1, metavar="P")
    seed: int = setting(0, "sampling: random seed; line N of the input is sampled from its own stream "
                           "of (seed, N)", min=0, metavar="S")

    def problems(self, label: Callable[[str], str] | None = None) -> list[str]:
        """Out-of-range values and combinations, each named by ``label(field)`` (default: the field)."""
        label = label or (lambda name: name)
        found = field_problems(self, label)
        n_best, beam = self.n_best, self.beam
        numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (n_best, beam))
        if not found and numbers and self.sample is True and beam > 1:
            found.append(f"{label('sample')}: sampling draws one token at a time and excludes beam "
                         f"search ({label('beam')} {beam}); give one of them")
        elif not found and numbers and not self.sample and n_best > beam:
            found.append(f"{label('n_best')}: got {n_best}, must be <= {label('beam')} ({beam})")
        return found

    def updated(self, changes: Mapping[str, Any] | None = None,
                label: Callable[[str], str] | None = None, **more: Any) -> "DecodeConfig":
        """A validated copy with ``changes`` (``None`` values keep the current setting).

        Without a new ``beam``, a larger ``n_best`` widens the beam to it, and sampling sets it to 1
        (``n_best`` is then the number of samples). Problems raise
        :class:`ConfigError`, each naming the setting as ``label(field)`` (a command-line flag, a
        keyword argument).
        """
        label = label or (lambda name: name)
        changes = {**(changes or {}), **more}
        hints = typing.get_type_hints(DecodeConfig)
        problems: list[str] = []
        values = {}
        for name, value in changes.items():
            if name not in hints:
                hint = difflib.get_close_matches(str(name), list(hints), n=1)
                problems.append(f"{label(name)}: unknown decode setting; "
                                + (f"did you mean {hint[0]!r}?" if hint else f"known: {', '.join(hints)}"))
            elif value is not None:
                values[name] = _coerce(value, hints[name], label(name), problems)
        if problems:
            raise ConfigError(problems, what="decode settings")
        if values.get("beam") is None and values.get("sample", self.sample) is True:
            values["beam"] = 1
        elif values.get("beam") is None and isinstance(values.get("n_best"), int):
            values["beam"] = max(self.beam, values["n_best"])
        new = dataclasses.replace(self, **values)
        problems = new.problems(label)
        if problems:
            raise ConfigError(problems, what="decode settings")
        return new

    def check(self) -> "DecodeConfig":
        """Raise :class:`ConfigError` if a value is out of range; return ``self``."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems, what="decode settings")
        return self


@dataclass
class EvalConfig:
    metrics: list[str] = field(default_factory=lambda: ["bleu", "chrf", "ter"])
    bleu_tokenize: str = "13a"


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


# --------------------------------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------------------------------

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class EnvValue(str):
    """A string value that environment variables were expanded into (:func:`expand_env_values`).

    Validation reads it as a number or ``true``/``false`` where the schema wants one
    (``train.lr: ${LR:-1e-3}``), as YAML would have read the same text; elsewhere it is a string.
    """

    def scalar(self) -> Any:
        try:
            value = yaml.load(self, Loader=RecipeLoader)
        except yaml.YAMLError:
            return str(self)
        return value if isinstance(value, (int, float, bool)) else str(self)


def expand_env(text: str, key: str | None = None, source: str | None = None) -> str:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in ``text`` by the environment variable's value.

    ``${NAME}`` needs NAME to be set (an empty value is a value); ``${NAME:-default}`` takes the
    default when NAME is not set or empty, as the shell does. An unset variable raises
    :class:`ConfigError` naming ``key`` and the recipe ``source``.
    """

    def repl(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}environment variable {name} is not set (referenced as "
                              f"{match.group(0)}); set it, or give a default: ${{{name}:-value}}", source)
        return value

    return _ENV_PATTERN.sub(repl, text)


def expand_env_values(node: Any, source: str | None = None, prefix: str = "") -> Any:
    """``node`` (parsed YAML) with environment variables expanded in its string values only: keys,
    comments and the YAML syntax around a value are never touched, so a value may hold any text
    (``#``, ``: ``). Expanded strings become :class:`EnvValue`."""
    if isinstance(node, dict):
        return {k: expand_env_values(v, source, f"{prefix}.{k}" if prefix else str(k))
                for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env_values(v, source, f"{prefix}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        expanded = expand_env(node, prefix or None, source)
        return EnvValue(expanded) if expanded != node else node
    return node


#: deepest nesting of mappings and lists a recipe may have (the schema needs four levels)
MAX_YAML_DEPTH = 32


class RecipeYAMLError(yaml.MarkedYAMLError):
    """YAML that parses but that a recipe refuses: an alias, a duplicate key, nesting too deep."""


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags), stricter where recipes need it: aliases (``*name``)
    are refused before anything is built, so a few hundred bytes of nested aliases cannot expand
    into gigabytes; a key given twice in one mapping is refused (YAML would keep the last silently);
    nesting is bounded (the parser recurses once per level)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise RecipeYAMLError(
                problem=f"YAML alias *{event.anchor}: aliases are not accepted in recipes; write the "
                        "value out (or share settings between recipes with base:)",
                problem_mark=event.start_mark)
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_YAML_DEPTH:
            raise RecipeYAMLError(problem=f"nested deeper than {MAX_YAML_DEPTH} levels",
                                  problem_mark=self.peek_event().start_mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the base class names it
                    break
                if first is not None:
                    raise RecipeYAMLError(
                        problem=f"key {key!r} given twice in one mapping (first at line "
                                f"{first.line + 1}); keep one",
                        problem_mark=key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str | None = None) -> Any:
    """``text`` parsed with :class:`RecipeLoader`; problems raise :class:`ConfigError` naming
    ``source`` and the line."""
    try:
        return yaml.load(text, Loader=RecipeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or str(exc)
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            problem += " (recipes hold plain values only: mappings, lists, strings, numbers, booleans)"
        syntax = isinstance(exc, (yaml.scanner.ScannerError, yaml.parser.ParserError))
        kind = "YAML syntax error: " if syntax else ""
        raise ConfigError(f"{where}{kind}{problem}", source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", source) from None


def read_yaml_file(path: str | os.PathLike) -> Any:
    """A YAML file's contents (:func:`parse_yaml`); a file that is not UTF-8 or cannot be read
    raises :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"line {line}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the "
                          "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)", str(path)) from None
    return parse_yaml(text, str(path))


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "anything"
    plain = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return plain.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; return the value (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if isinstance(value, EnvValue):
        if tp in (int, float, bool):
            value = value.scalar()
        elif origin not in (Union, types.UnionType):
            value = str(value)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping (section), got {value!r}")
            return tp()
        return _build(tp, value, path, problems)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, arg, path, trial)
            if not trial:
                return out
        problems.append(f"{path}: got {value!r}, expected {_type_name(tp)}")
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool):
            # YAML 1.1 reads an unquoted no/yes as a boolean: `precision: no` means "no"
            word = "yes" if value else "no"
            if word in allowed:
                return word
        if value not in allowed:
            hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(
                f"{path}: got {value!r}, expected one of {', '.join(map(repr, allowed))}{extra}"
            )
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str) and item_tp is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            problems.append(f"{path}: got {value!r}, expected a list of {_type_name(item_tp)}")
            return value
        return [_coerce(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(f"{path}: got {value!r}, expected a mapping")
            return value
        for k in value:
            if key_tp is str and not isinstance(k, str):
                problems.append(f"{path}: key {k!r} is {_type_name(type(k))}, keys here are strings "
                                f"(quote it: '{k}')")
        return {k: _coerce(v, item_tp, f"{path}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: got {value!r}, expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: got {value!r}, expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: got {value!r}, expected a number")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: got {value!r}, expected a string")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {path}")  # a bug in the schema, not input


def _build(cls: type, values: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            hint = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            suggestion = f"did you mean '{(prefix + '.') if prefix else ''}{hint[0]}'?" if hint else (
                f"known keys here: {', '.join(names)}"
            )
            problems.append(f"{path}: unknown key; {suggestion}")
            continue
        kwargs[key] = _coerce(value, hints[key], path, problems)
    return cls(**kwargs)


def field_problems(section: Any, label: Callable[[str], str]) -> list[str]:
    """Values of ``section``'s fields outside the range their :func:`setting` declares."""
    found = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # a wrong type is reported by the type check
        low, high, above = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("above")
        if isinstance(value, float) and not math.isfinite(value):
            found.append(f"{label(f.name)}: got {value!r}, must be a finite number")
        elif above is not None and value <= above:
            found.append(f"{label(f.name)}: got {value!r}, must be > {above}")
        elif low is not None and value < low:
            found.append(f"{label(f.name)}: got {value!r}, must be >= {low}")
        elif high is not None and value > high:
            found.append(f"{label(f.name)}: got {value!r}, must be <= {high}")
    return found


def _check_sections(node: Any, prefix: str, problems: list[str]) -> None:
    """Declared ranges (field metadata) of every section, each value named by its key path."""
    for f in dataclasses.fields(node):
        child = getattr(node, f.name)
        if dataclasses.is_dataclass(child):
            _check_sections(child, f"{prefix}{f.name}.", problems)
    if isinstance(node, DecodeConfig):
        problems.extend(node.problems(lambda name: f"{prefix}{name}"))
    else:
        problems.extend(field_problems(node, lambda name: f"{prefix}{name}"))


def _check_ranges(r: Recipe, problems: list[str]) -> None:
    """Value ranges and combinations that the types alone cannot express."""

    def need(cond: bool, message: str) -> None:
        if not cond:
            problems.append(message)

    def positive(path: str, value: Any, allow_zero: bool = False) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = value >= 0 if allow_zero else value > 0
            need(ok, f"{path}: got {value!r}, must be {'>= 0' if allow_zero else '> 0'}")

    def fraction(path: str, value: Any, upper_open: bool = True) -> None:
        if isinstance(value, (int, float)):
            need(0 <= value < 1 if upper_open else 0 <= value <= 1,
                 f"{path}: got {value!r}, must be in [0, 1{')' if upper_open else ']'}")

    for path, value in [
        ("tokenizer.src_vocab_size", r.tokenizer.src_vocab_size),
        ("tokenizer.tgt_vocab_size", r.tokenizer.tgt_vocab_size),
        ("model.embedding_dim", r.model.embedding_dim),
        ("model.encoder.layers", r.model.encoder.layers),
        ("model.encoder.hidden_size", r.model.encoder.hidden_size),
        ("model.encoder.self_attention_heads", r.model.encoder.self_attention_heads),
        ("model.encoder.self_attention_ff_size", r.model.encoder.self_attention_ff_size),
        ("model.decoder.layers", r.model.decoder.layers),
        ("model.decoder.hidden_size", r.model.decoder.hidden_size),
        ("train.batch_tokens", r.train.batch_tokens),
        ("train.max_sentences", r.train.max_sentences),
        ("train.bucket_width", r.train.bucket_width),
        ("train.accumulate", r.train.accumulate),
        ("train.lr", r.train.lr),
        ("train.valid_every", r.train.valid_every),
        ("train.valid_beam", r.train.valid_beam),
        ("train.log_every", r.train.log_every),
        ("train.max_nan_skips", r.train.max_nan_skips),
        ("data.filter.max_len", r.data.filter.max_len),
        ("data.filter.max_ratio", r.data.filter.max_ratio),
    ]:
        positive(path, value)
    for path, value in [
        ("train.warmup_steps", r.train.warmup_steps),
        ("train.weight_decay", r.train.weight_decay),
        ("train.clip_norm", r.train.clip_norm),
        ("train.min_lr", r.train.min_lr),
        ("model.encoder.self_attention_layers", r.model.encoder.self_attention_layers),
        ("data.filter.min_len", r.data.filter.min_len),
    ]:
        positive(path, value, allow_zero=True)
    for path, value in [
        ("model.dropout", r.model.dropout),
        ("model.encoder.dropout", r.model.encoder.dropout),
        ("model.decoder.dropout", r.model.decoder.dropout),
        ("train.label_smoothing", r.train.label_smoothing),
    ]:
        fraction(path, value)
    fraction("tokenizer.character_coverage", r.tokenizer.character_coverage, upper_open=False)
    for opt in ("max_steps", "max_epochs", "budget_minutes", "patience", "num_threads",
                "valid_max_sentences"):
        value = getattr(r.train, opt)
        if value is not None and value != "auto":
            positive(f"train.{opt}", value)
    if isinstance(r.tokenizer.src_vocab_size, int):
        need(r.tokenizer.src_vocab_size >= 8 and r.tokenizer.tgt_vocab_size >= 8,
             "tokenizer.*_vocab_size: must be at least 8 (4 special pieces + characters)")
    if isinstance(r.train.betas, list):
        need(len(r.train.betas) == 2 and all(isinstance(b, float) and 0 <= b < 1 for b in r.train.betas),
             f"train.betas: got {r.train.betas!r}, expected two numbers in [0, 1)")
    _check_sections(r, "", problems)
    att = r.model.attention
    if att.kind == "local-p":
        need(att.window is not None,
             "model.attention.window: local-p attention needs a window half-width D "
             "(e.g. model.attention.window: 10)")
    if att.window is not None:
        positive("model.attention.window", att.window)
    if att.hidden_size is not None:
        positive("model.attention.hidden_size", att.hidden_size)
    enc = r.model.encoder
    if enc.self_attention_layers and isinstance(enc.hidden_size, int):
        width = enc.hidden_size * (2 if enc.bidirectional else 1)
        need(isinstance(enc.self_attention_heads, int) and enc.self_attention_heads > 0
             and width % enc.self_attention_heads == 0,
             f"model.encoder.self_attention_heads: {enc.self_attention_heads} must divide the "
             f"encoder output width {width}")
    if r.model.shared_embeddings:
        need(r.tokenizer.joint, "model.shared_embeddings: needs tokenizer.joint: true "
             "(source and target must share one vocabulary)")
    if r.data.format in ("tsv", "text", "jsonl") and not r.data.path:
        problems.append(f"data.path: format {r.data.format!r} reads local files; set data.path "
                        "(a directory, or a file for a single unsplit corpus)")
    if r.data.format == "hub":
        need(bool(r.data.hub_id), "data.hub_id: format 'hub' needs a dataset id (e.g. 'wmt14')")
    if r.data.format == "url":
        need(bool(r.data.url), "data.url: format 'url' needs the corpus URL")
    for role in ("src", "tgt"):
        need(role in r.data.columns, f"data.columns.{role}: missing (which column holds the {role} side?)")
    need(set(r.data.columns) <= {"src", "tgt"},
         f"data.columns: only 'src' and 'tgt' are allowed, got {sorted(r.data.columns)}")
    need("train" in r.data.splits or r.data.format in ("url",),
         "data.splits.train: missing (the file of the training split)")
    for metric in r.eval.metrics:
        need(metric in ("bleu", "chrf", "ter"),
             f"eval.metrics: unknown metric {metric!r}; choose from bleu, chrf, ter")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> ``(["train", "lr"], 0.0003)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value (e.g. --set train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: bad key {key!r}; expected section.key=value")
    try:
        value = yaml.load(raw, Loader=RecipeLoader) if raw.strip() else ""
    except RecipeYAMLError as exc:
        raise ConfigError(f"--set {text!r}: {exc.problem}") from None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
        value = float(value)  # YAML 1.1 reads 3e-4 as a string
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for part in keys[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return raw


def _fix_floats(node: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-3`` as a string; read such scientific literals as numbers."""
    if isinstance(node, dict):
        return {k: _fix_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_floats(v) for v in node]
    if isinstance(node, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", node):
        return float(node)
    return node


def recipe_from_dict(raw: dict[str, Any], source: str | None = None,
                     base_dir: Path | None = None) -> Recipe:
    """Validate a nested mapping into a :class:`Recipe`, raising :class:`ConfigError` with all problems."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping of sections, got {type(raw).__name__}", source)
    problems: list[str] = []
    recipe = _build(Recipe, _fix_floats(raw), "", problems)
    if not problems:
        _check_ranges(recipe, problems)
    if problems:
        raise ConfigError(problems, source)
    if recipe.data.path and base_dir is not None:
        path = Path(recipe.data.path).expanduser()
        if not path.is_absolute():
            recipe.data.path = str((base_dir / path).resolve())
    return recipe


def _read_yaml(path: Path, named_by: str | None = None) -> dict[str, Any]:
    """One recipe file: parsed (:func:`read_yaml_file`), environment variables expanded in its
    values; ``named_by`` is the recipe whose ``base:`` points here (for the message when the file
    is missing)."""
    if path.is_dir():
        raise ConfigError(f"recipe {str(path)!r} is a directory, not a file; give the path of a .yaml "
                          "recipe (e.g. recipes/fr-en.yaml)", named_by)
    if not path.exists():
        if named_by is not None:
            raise ConfigError(f"base: {str(path)!r} not found (relative paths in base: are relative to "
                              "the directory of the recipe that names them)", named_by)
        raise ConfigError(f"recipe file {str(path)!r} not found (give the path to a .yaml recipe, "
                          "e.g. recipes/fr-en.yaml)")
    raw = read_yaml_file(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping of sections, got {type(raw).__name__}", str(path))
    return expand_env_values(raw, str(path))


def merge_recipes(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` laid over ``base``: mappings merge key by key, any other value (a list, a scalar,
    ``null``) replaces the base's."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_recipes(out[key], value)
        else:
            out[key] = value
    return out


def read_recipe(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file as a mapping with its ``base:`` chain applied (not yet validated).

    ``base: other.yaml`` (relative to the recipe's directory) starts from that recipe, itself
    possibly based on another; the recipe's own keys are merged over it (:func:`merge_recipes`).
    A relative ``data.path`` is made absolute against the directory of the file that sets it.
    """
    path = Path(path)
    named_by = str(_chain[-1]) if _chain else None
    raw = _read_yaml(path, named_by)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data_path = Path(data["path"]).expanduser()
        if not data_path.is_absolute():
            raw["data"] = {**data, "path": str((path.resolve().parent / data_path).resolve())}
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"base: got {base!r}, expected the path of another recipe file "
                          "(e.g. base: fr-en.yaml)", str(path))
    base_path = (path.parent / Path(base).expanduser())
    chain = _chain + (path,)
    if base_path.resolve() in {p.resolve() for p in chain}:
        names = " -> ".join(str(p) for p in chain + (base_path,))
        raise ConfigError(f"base: the recipes name each other in a cycle: {names}; "
                          "remove one of these base: keys", str(path))
    return merge_recipes(read_recipe(base_path, chain), raw)


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read (with its ``base:`` chain), expand, override and validate a recipe file."""
    path = Path(path)
    raw = apply_overrides(read_recipe(path), overrides or [])
    recipe = recipe_from_dict(raw, source=str(path), base_dir=path.resolve().parent)
    if recipe.output.name is None:
        recipe.output.name = path.stem
    return recipe


#: ``train`` keys that end a training run by themselves
STOP_KEYS = ("max_steps", "max_epochs", "budget_minutes", "patience")


def check_stops(recipe: Recipe, source: str | None = None) -> None:
    """Raise :class:`ConfigError` unless the recipe's training ends by itself (one of
    :data:`STOP_KEYS` is set): a run without one would train until it is interrupted."""
    if any(getattr(recipe.train, key) is not None for key in STOP_KEYS):
        return
    raise ConfigError(
        "train: no stop criterion, so training would never end; set at least one of "
        + ", ".join(f"train.{key}" for key in STOP_KEYS)
        + " (e.g. train.max_steps: 20000 or train.budget_minutes: 30, or --set train.max_steps=20000)",
        source)


def resolved_run_dir(recipe: Recipe, override: str | None = None) -> Path:
    if override:
        return Path(override)
    if recipe.output.run_dir:
        return Path(recipe.output.run_dir)
    return Path("runs") / (recipe.output.name or "run")


# --------------------------------------------------------------------------------------------------
# Decode settings on the command line
# --------------------------------------------------------------------------------------------------


def decode_flag(name: str) -> str:
    """The command-line option of a ``decode`` field: ``n_best`` -> ``--n-best``."""
    return "--" + name.replace("_", "-")


def decode_flag_label(name: str) -> str:
    """How errors name a decode setting given on the command line: ``--n-best/decode.n_best``."""
    return f"{decode_flag(name)}/decode.{name}"


def add_decode_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = (),
                         defaults: Mapping[str, Any] | None = None,
                         notes: Mapping[str, str] | None = None) -> None:
    """One option per :class:`DecodeConfig` field (name, type, help from the schema) and
    ``--greedy``. An option left out keeps the run's recipe value (or ``defaults[name]``);
    ``notes[name]`` replaces the help's default statement where a command gives the option a
    meaning of its own."""
    defaults, notes = dict(defaults or {}), dict(notes or {})
    hints = typing.get_type_hints(DecodeConfig)
    group = parser.add_argument_group("decoding (default: the run's recipe, section decode)")
    for f in dataclasses.fields(DecodeConfig):
        if f.name in exclude:
            continue
        default = defaults.get(f.name)
        where = notes.get(f.name) or (f"default {default}" if default is not None
                                      else f"default: the recipe's decode.{f.name}")
        text = f"{f.metadata['help']} ({where})"
        if hints[f.name] is bool:  # --sample / --no-sample; left out: the recipe's value
            group.add_argument(decode_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=default, help=text)
        else:
            group.add_argument(decode_flag(f.name), dest=f.name, type=hints[f.name], default=default,
                               metavar=f.metadata.get("metavar"), help=text)
    group.add_argument("--greedy", action="store_true", help="greedy search (the same as --beam 1)")


def decode_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The decode settings given on the command line (options left out are not included), checked
    on their own: an out-of-range value fails here, naming its option, before a run is loaded."""
    given = vars(args)
    values = {f.name: given[f.name] for f in dataclasses.fields(DecodeConfig)
              if given.get(f.name) is not None}
    if args.greedy:
        if values.get("beam", 1) != 1:
            raise ConfigError(f"--greedy means beam 1, but --beam {values['beam']} was also given; "
                              "give one of them", what="decode settings")
        values["beam"] = 1
    DecodeConfig().updated(values, label=decode_flag_label)
    return values
