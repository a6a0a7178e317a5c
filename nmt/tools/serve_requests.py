"""What ``nmt serve`` accepts: its limits (:class:`ServeLimits`), the ``POST /api/translate``
request model, whose search options come from the decode schema (:data:`REQUEST_DECODE`), and
the checks that turn a bad request into a 4xx answer (:class:`ApiError`) naming what to change.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from nmt.errors import NmtError

if TYPE_CHECKING:
    from nmt.tools.serve import ServedModel


@dataclass
class ServeLimits:
    """What one request may ask for and how much the server takes on at once."""

    max_texts: int = 32  #: sentences per request
    max_chars: int = 1000  #: characters per sentence
    max_beam: int = 16  #: largest beam (and n-best) a request may ask for
    max_length_penalty: float = 10.0
    queue_limit: int = 64  #: requests waiting for the model before 503
    batch_window_ms: float = 2.0  #: how long waiting requests wait for others (only when several wait)
    max_batch_texts: int = 64  #: sentences per model call
    #: work (source pieces × beam × n-best) per model call: what a small request may wait behind
    max_batch_work: int = 20_000
    #: work (source pieces × beam × n-best, summed over the texts) of one request
    max_request_work: int = 50_000
    #: attention weights one answer may hold (estimated: n-best × source × max target pieces)
    max_attention_cells: int = 1_000_000
    request_timeout_s: float = 60.0  #: a request not answered by then gets 504
    max_body_bytes: int = 1 << 20
    max_terms: int = 8  #: constraint terms per text
    max_term_chars: int = 200
    retry_after_s: int = 1
    #: a model worker's sentences join the beam search under way at its next step (continuous
    #: batching, :mod:`nmt.tools.serve_worker`) instead of waiting for the call under way to end
    continuous: bool = False

    def __post_init__(self) -> None:
        for name in ("max_texts", "max_chars", "max_beam", "queue_limit", "max_batch_texts",
                     "max_batch_work", "max_request_work", "max_attention_cells", "max_body_bytes",
                     "retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise NmtError(f"serve limit {name} must be an integer >= 1, got {value!r}")
        if not (0 <= self.batch_window_ms <= MAX_BATCH_WINDOW_MS):
            raise NmtError(f"serve limit batch_window_ms must be between 0 and {MAX_BATCH_WINDOW_MS:g}, "
                           f"got {self.batch_window_ms!r}")
        if not (0 < self.request_timeout_s <= MAX_REQUEST_TIMEOUT_S):
            raise NmtError(f"serve limit request_timeout_s must be above 0 and at most "
                           f"{MAX_REQUEST_TIMEOUT_S:g}, got {self.request_timeout_s!r}")


MAX_BATCH_WINDOW_MS = 1000.0  #: a longer window only delays every answer
MAX_REQUEST_TIMEOUT_S = 3600.0


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and a message saying what to change."""

    def __init__(self, status: int, message: str, details: list | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.details, self.headers = status, message, details, headers


#: the ``decode`` settings a request may give, with their request defaults (None: the run's recipe);
#: type, range and description come from :class:`~nmt.config.DecodeConfig`
REQUEST_DECODE: dict[str, Any] = {"beam": None, "n_best": 1, "length_penalty": None, "shortlist": None,
                                  "sample": None, "temperature": None, "top_k": None, "top_p": None,
                                  "seed": None, "split_sentences": None, "names": None}

#: the sampling settings a request may give (see :func:`check_sampling`)
SAMPLING_FIELDS = ("sample", "temperature", "top_k", "top_p", "seed")
MAX_SEED = 2**63 - 1

_BOUNDS = {"min": "ge", "above": "gt", "max": "le", "below": "lt"}


def _decode_fields() -> dict[str, tuple[Any, Any]]:
    """The request fields of :data:`REQUEST_DECODE`, built from the decode schema's fields."""
    import dataclasses
    import typing

    from pydantic import Field

    from nmt.config import DecodeConfig

    hints = typing.get_type_hints(DecodeConfig)
    fields = {}
    for f in dataclasses.fields(DecodeConfig):
        if f.name not in REQUEST_DECODE:
            continue
        default = REQUEST_DECODE[f.name]
        bounds = {_BOUNDS[key]: f.metadata[key] for key in _BOUNDS if key in f.metadata}
        text = f.metadata["help"] + (" (default: the run's recipe)" if default is None else "")
        annotation = hints[f.name] if default is not None else typing.Optional[hints[f.name]]
        fields[f.name] = (annotation, Field(default, description=text, **bounds))
    return fields


@functools.lru_cache(maxsize=None)
def request_model():
    """The pydantic model of ``POST /api/translate`` (one class, built on first use)."""
    from typing import Literal

    from pydantic import ConfigDict, Field, create_model

    return create_model(
        "TranslateRequest",
        __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, protected_namespaces=()),
        __doc__="A translation request: ``text`` or ``texts``, and search options.",
        text=(str | None, Field(None, description="one sentence (give this or texts)")),
        texts=(list[str] | None, Field(None, description="several sentences (or text)")),
        model=(str | None, Field(None, description="a served run's name (default: the first)")),
        **_decode_fields(),
        return_scores=(bool, Field(True, description="scores and per-token log-probabilities")),
        return_attention=(bool, Field(False, description="attention matrices and pieces")),
        return_alignment=(bool, Field(False, description="word alignments from the attention: "
                                                         "(source word, target word) index pairs")),
        constraints=(list[list[str]] | None,
                     Field(None, description="per text, target terms its translation must contain "
                                             "(terminology; beam search); each hypothesis then says "
                                             "where they are (constraint_spans)")),
        markup=(Literal["html"] | None,
                Field(None, description='"html": the texts carry inline HTML tags and entities, which are '
                                        "put back into the translations around the aligned words")),
    )


_TYPE_WORDS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _field_help(request_model) -> str:
    """``text (string), texts (list of strings), ...``: the request's fields, for error messages."""
    import typing

    def word(tp: Any) -> str:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is list:
            return f"list of {word(args[0])}s"
        if args:  # Optional[X]
            return word(args[0])
        return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))

    return ", ".join(f"{name} ({word(info.annotation)})" for name, info in request_model.model_fields.items())


def validation_error(errors: Sequence[dict]) -> ApiError:
    """FastAPI's validation errors as one clear message (and a list of details)."""
    details = []
    for err in errors:
        kind = err.get("type", "")
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        if kind == "json_invalid":
            ctx = err.get("ctx") or {}
            return ApiError(400, f"malformed JSON in the request body: {ctx.get('error', 'invalid JSON')}"
                                 f" (at character {loc[-1] if loc else '?'}); send a JSON object, e.g. "
                                 '{"text": "Je suis fatigué."}')
        if kind == "extra_forbidden":
            message = f"unknown field {where!r}; known fields: {_field_help(request_model())}"
        elif not where and kind in ("model_attributes_type", "dict_type", "missing", "model_type"):
            message = 'the request body must be a JSON object, e.g. {"text": "Je suis fatigué."}'
        else:
            got = err.get("input")
            shown = json.dumps(got, ensure_ascii=False)[:60] if _jsonable(got) else type(got).__name__
            message = f"{where or 'body'}: {err.get('msg', 'invalid value')} (got {shown})"
        details.append({"field": where or None, "message": message})
    if not details:
        details = [{"field": None, "message": "invalid request"}]
    return ApiError(422, "; ".join(d["message"] for d in details), details)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def check_request(req, models: dict[str, ServedModel], default: str, limits: ServeLimits):
    """Request checks that depend on the served runs and the configured limits."""
    name = req.model if req.model is not None else default
    served = models.get(name)
    if served is None:
        raise ApiError(404, f"unknown model {req.model!r}; served models: {', '.join(models)}")
    if (req.text is None) == (req.texts is None):
        raise ApiError(422, 'give exactly one of "text" (a string) or "texts" (a list of strings)')
    texts = [req.text] if req.text is not None else list(req.texts)
    field_name = "text" if req.text is not None else "texts"
    if not texts:
        raise ApiError(422, "texts is empty; give at least one sentence")
    if len(texts) > limits.max_texts:
        raise ApiError(422, f"too many texts: {len(texts)} (at most {limits.max_texts} per request; "
                            "split the list)")
    for i, text in enumerate(texts):
        where = field_name if req.text is not None else f"texts[{i}]"
        _check_unicode(where, text)
        if not text.strip():
            raise ApiError(422, f"{where} is empty; give a sentence to translate")
        if len(text) > limits.max_chars:
            raise ApiError(422, f"{where} has {len(text)} characters; at most {limits.max_chars} "
                                "per text (split it into sentences)")
    beam = req.beam
    if beam is not None and beam > limits.max_beam:
        raise ApiError(422, f"beam {beam} is out of range: 1 to {limits.max_beam}")
    if req.n_best > limits.max_beam:
        raise ApiError(422, f"n_best {req.n_best} is out of range: 1 to {limits.max_beam}")
    if beam is not None and req.n_best > beam:
        raise ApiError(422, f"n_best ({req.n_best}) must not exceed beam ({beam})")
    if req.length_penalty is not None and req.length_penalty > limits.max_length_penalty:
        raise ApiError(422, f"length_penalty {req.length_penalty} is out of range: 0 to "
                            f"{limits.max_length_penalty}")
    if req.shortlist and not served.has_lexicon:
        raise ApiError(422, f"model {served.name!r} has no lexicon for a shortlist; build it with "
                            f"`nmt shortlist {served.summary['run_dir']}` or send shortlist 0")
    options: dict[str, Any] = {"beam": beam, "n_best": req.n_best}
    options.update(check_sampling(req, served))
    if req.length_penalty is not None:
        options["length_penalty"] = float(req.length_penalty)
    if req.split_sentences is not None:
        options["split_sentences"] = req.split_sentences
    if req.names is not None:
        options["names"] = req.names
    if req.shortlist is not None:
        options["shortlist"] = req.shortlist
    elif not served.has_lexicon and served.summary["decode"]["shortlist"]:
        options["shortlist"] = 0  # the recipe asks for a shortlist but the run has no lexicon
    if getattr(req, "markup", None) is not None:
        _check_markup(texts, req.markup, field_name if req.text is not None else "texts")
        options["markup"] = req.markup
    return served, texts, options


def check_sampling(req, served: ServedModel) -> dict[str, Any]:
    """The request's sampling settings (those it gives), checked against its search options.

    Each sentence draws from its own random stream of ``(seed, the sentence's source pieces)``: its
    samples do not depend on the other sentences of the request or on other requests."""
    given = {name: getattr(req, name) for name in SAMPLING_FIELDS if getattr(req, name) is not None}
    sampling = given.get("sample", served.translator.decode.sample)
    if sampling and req.beam is not None and req.beam > 1:
        raise ApiError(422, f"sample draws one token at a time: send beam 1 or no beam (got {req.beam}); "
                            "n_best is the number of samples")
    if given.get("seed", 0) > MAX_SEED:
        raise ApiError(422, f"seed {given['seed']} is out of range: 0 to {MAX_SEED}")
    return given


def is_sampling(served: ServedModel, options: dict[str, Any]) -> bool:
    """Whether a request with these ``options`` samples (its own ``sample``, else the run's)."""
    sample = options.get("sample")
    return bool(served.translator.decode.sample if sample is None else sample)


def _check_markup(texts: Sequence[str], kind: str, field_name: str) -> None:
    """422 naming the text whose markup cannot be carried through (tags that do not nest, ...)."""
    from nmt.inference.markup import MarkupError, parse_markup

    for i, text in enumerate(texts):
        try:
            parse_markup(text)
        except MarkupError as exc:
            where = field_name if field_name == "text" else f"texts[{i}]"
            raise ApiError(422, f"{where}: {kind} markup: {exc}") from None


def _check_unicode(where: str, text: str) -> None:
    """JSON may carry lone surrogates (``"\\ud800"``), which are no text and cannot be encoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(422, f"{where} holds a lone surrogate ({text[exc.start]!r} at character "
                            f"{exc.start}), which is not text; send valid Unicode") from None


def request_work(served: ServedModel, texts: list[str], options: dict[str, Any], attention: bool,
                 limits: ServeLimits) -> list[int]:
    """Each text's work, ``source pieces × beam × n-best``; 413 when the request's total or its
    answer's attention weights exceed the limits, naming what to lower."""
    translator = served.translator
    decode = translator.decode
    n_best = options.get("n_best") or 1
    # sampling runs one row per sample: pieces × n_best
    beam = 1 if is_sampling(served, options) else max(options.get("beam") or decode.beam, n_best)
    pieces = [min(len(ids), decode.max_input_len) + 1 for ids in source_ids(translator.tokenizers, texts)]
    work = [p * beam * n_best for p in pieces]
    if sum(work) > limits.max_request_work:
        raise ApiError(413, f"the request asks for {sum(work):,} units of work (source pieces × beam "
                            f"{beam} × n_best {n_best}, summed over {len(texts)} texts); at most "
                            f"{limits.max_request_work:,} (--max-request-work): send fewer or shorter "
                            "texts, or a smaller beam or n_best")
    if attention:
        heads = served.summary["encoder"]["self_attention_layers"] * served.summary["encoder"]["self_attention_heads"]
        cells = sum(n_best * p * math.ceil(decode.max_len_a * p + decode.max_len_b) + heads * p * p
                    for p in pieces)
        if cells > limits.max_attention_cells:
            raise ApiError(413, f"the answer would hold up to {cells:,} attention weights; at most "
                                f"{limits.max_attention_cells:,} (--max-attention-cells): ask for "
                                "return_attention with fewer or shorter texts or a smaller n_best, "
                                "or without return_attention")
    return work


def source_ids(tokenizers, texts: Sequence[str]) -> list[list[int]]:
    """The source subword ids of each text, encoded one text at a time: sentencepiece encodes a
    list on a pool of threads it starts for the call, which costs the event loop far more than the
    encoding of one short sentence (and waits for a free CPU on a busy machine)."""
    processor = getattr(tokenizers, "src", None)
    if processor is None:
        return tokenizers.encode_src(list(texts))
    return [processor.encode(text, out_type=int) for text in texts]


#: what FastAPI answers for a body it could not parse, whatever the reason
UNREADABLE_BODY = "There was an error parsing the body"


def body_error(cause: BaseException | None) -> ApiError:
    """A 400 naming why the body could not be read as JSON (``cause``: the parser's exception)."""
    example = '; send a JSON object, e.g. {"text": "Je suis fatigué."}'
    if isinstance(cause, RecursionError):
        return ApiError(400, "the JSON body is nested too deeply for the parser (about 1,000 levels); "
                             "a request is a flat object" + example)
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start:cause.start + 1].hex() if hasattr(cause.object, "hex") else "?"
        return ApiError(400, f"the body is not valid UTF-8 (byte 0x{byte} at position {cause.start}); "
                             "send JSON encoded as UTF-8")
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return ApiError(400, f"a number in the body is too long ({cause}); numbers in a request are "
                             "small integers or decimals")
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return ApiError(400, f"the body could not be read as JSON{detail}"[:300] + example)


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float (at any depth) replaced by None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def printable(value: Any) -> Any:
    """``value`` with lone surrogates in its strings (at any depth) written as ``\\udXXX`` text: an
    error message may quote the request, and a surrogate cannot be encoded as UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


def check_constraints(req, texts: Sequence[str], limits: ServeLimits) -> list[list[str]] | None:
    """The request's ``constraints`` (one list of target terms per text), checked; None when none."""
    if req.constraints is None:
        return None
    if len(req.constraints) != len(texts):
        raise ApiError(422, f"constraints has {len(req.constraints)} lists for {len(texts)} texts; give one "
                            "list of target terms per text ([] for none)")
    for i, terms in enumerate(req.constraints):
        if len(terms) > limits.max_terms:
            raise ApiError(422, f"constraints[{i}] has {len(terms)} terms; at most {limits.max_terms} per text")
        for j, term in enumerate(terms):
            _check_unicode(f"constraints[{i}][{j}]", term)
            if not term.strip() or len(term) > limits.max_term_chars:
                raise ApiError(422, f"constraints[{i}][{j}] must be a term of 1 to {limits.max_term_chars} "
                                    "characters")
    return [list(t) for t in req.constraints] if any(req.constraints) else None
