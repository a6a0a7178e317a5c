"""The translator: embeddings → encoder → bridge → decoder (with attention) → output projection.

``Seq2Seq`` reads no files and knows nothing about tokenization: token ids in, logits and
losses out. Search (``nmt.inference.search``) uses only :meth:`Seq2Seq.encode`,
:meth:`Seq2Seq.search_tables`, :meth:`Seq2Seq.start` and :meth:`Seq2Seq.step_logits`.

``cfg.kernels`` (the recipe's ``model.kernels``) picks, for every operation that has one, between
the plain equation (``reference``) and its CPU fast twin in :mod:`nmt.kernels` (``auto``); each
layer holds the choice as ``self.fast`` and makes it at one call site.
"""
from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from nmt import kernels
from nmt.config import KERNELS, ModelConfig
from nmt.data.vocab import N_SPECIAL, PAD_ID
from nmt.errors import ConfigError
from nmt.kernels import gru_gates
from nmt.model.activations import ActivatedLinear, Dropout, available_activations
from nmt.model.decoder import BahdanauDecoder, DecoderState, Memory, build_decoder
from nmt.model.encoder import Encoder, EncoderOutput

#: parameter-name prefixes of the parts whose gradient norms training reports
PARTS = ("embeddings", "encoder", "attention", "decoder", "output")


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        if cfg.kernels not in KERNELS:
            raise ConfigError(f"model.kernels: got {cfg.kernels!r}, expected one of {', '.join(KERNELS)}")
        self.cfg = cfg
        self.fast = cfg.kernels == "auto"
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        act, opts = cfg.activation, dict(cfg.activation_options)
        emb = cfg.embedding_dim
        self.src_embed = nn.Embedding(src_vocab_size, emb, padding_idx=PAD_ID)
        if cfg.shared_embeddings:
            if src_vocab_size != tgt_vocab_size:
                raise ConfigError("model.shared_embeddings: source and target vocabularies differ "
                                  f"({src_vocab_size} vs {tgt_vocab_size}); set tokenizer.joint: true")
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = nn.Embedding(tgt_vocab_size, emb, padding_idx=PAD_ID)
        self.embed_dropout = Dropout(cfg.dropout, cfg.kernels)
        self.encoder = Encoder(emb, cfg.encoder, act, opts, cfg.kernels)
        dec = cfg.decoder
        key_dim = self.encoder.output_dim
        att = cfg.attention
        score = att.score if att.kind == "local-p" else att.kind
        if score in ("luong-dot", "dot") and key_dim != dec.hidden_size:
            raise ConfigError(
                f"model.attention: the dot score needs decoder.hidden_size ({dec.hidden_size}) equal to "
                f"the encoder output width ({key_dim} = {'2 × ' if cfg.encoder.bidirectional else ''}"
                f"encoder.hidden_size); change one of them or use luong-general")
        readout_dim = emb if cfg.tied_embeddings else dec.hidden_size
        # bridge: s_0 = act(W_b h_enc) (Bahdanau et al. 2015 appendix A.2.2 uses tanh); one per layer
        self.bridge = (ActivatedLinear(self.encoder.final_dim, dec.hidden_size * dec.layers, act, **opts)
                       if dec.bridge else None)
        self.decoder = build_decoder(emb, key_dim, readout_dim, dec, att, act, opts, cfg.kernels)
        self.output = nn.Linear(readout_dim, tgt_vocab_size)
        if cfg.tied_embeddings:
            self.output.weight = self.tgt_embed.weight
        self._init_weights(cfg.init)

    # ------------------------------------------------------------------------------------- set-up
    def _init_weights(self, scheme: str) -> None:
        if scheme == "pytorch":
            return
        # SELU layers keep the LeCun-normal initialisation ActivatedLinear gave them
        keep = {id(p) for m in self.modules() if isinstance(m, ActivatedLinear)
                and available_activations()[m.activation_name].self_normalizing for p in m.linear.parameters()}
        gru_hidden = {id(p): rnn.hidden_size for rnn in (self.encoder.rnn, self.decoder.rnn) for p in rnn.parameters()}
        for name, param in self.named_parameters():
            if id(param) in keep:
                continue
            if param.dim() > 1:
                if scheme == "xavier_uniform":
                    if id(param) in gru_hidden:
                        # per gate, so each gate's matrix gets its own fan-in/fan-out scale
                        for gate in gru_gates(gru_hidden[id(param)]).unpack(param.data, dim=0):
                            nn.init.xavier_uniform_(gate)
                    else:
                        nn.init.xavier_uniform_(param)
                else:
                    nn.init.uniform_(param, -0.1, 0.1)
            elif name.endswith("bias") and ("rnn" in name or name.startswith("output")):
                nn.init.zeros_(param)
        with torch.no_grad():
            self.src_embed.weight[PAD_ID].zero_()
            self.tgt_embed.weight[PAD_ID].zero_()

    def part_of(self, name: str) -> str:
        """Which reporting part (``PARTS``) a parameter name belongs to."""
        if "embed" in name:
            return "embeddings"
        if name.startswith("decoder.attention"):
            return "attention"
        if name.startswith("output"):
            return "output"
        if name.startswith("encoder"):
            return "encoder"
        return "decoder"  # decoder GRU, readout, bridge

    # ------------------------------------------------------------------------------------ forward
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor, src_mask: torch.Tensor,
               need_attention: bool = False, tables: kernels.SearchTables | None = None) -> EncoderOutput:
        """``src (batch, src_len)`` ids -> encoder states and final state. With search ``tables``
        that hold ``source_gates``, the GRU's first-layer input gates are looked up per id."""
        if tables is not None and tables.source_gates is not None:
            return self.encoder(None, src_lengths, src_mask, need_attention=need_attention,
                                gate_lookup=(tables.source_gates, src))
        embedded = self.embed_dropout(self.src_embed(src))
        return self.encoder(embedded, src_lengths, src_mask, need_attention=need_attention)

    def search_tables(self) -> kernels.SearchTables | None:
        """What the fast search step derives from the weights (:mod:`nmt.kernels.search`), or None:
        search then runs the plain :meth:`step`. This is where search picks its path: ``auto``, the
        Bahdanau decoder, eval mode without autograd, plain weight tensors.

        Call it under the autocast search runs in (the tables take its dtype), and keep the tables
        no longer than the weights stay unchanged: they are a function of them. Where the encoder's
        search GRU applies, they also hold its input gates per source id (``source_gates``).
        """
        dec = self.decoder
        if not (self.fast and isinstance(dec, BahdanauDecoder)
                and kernels.search_tables_apply(dec.readout.linear.weight, self.training)):
            return None
        tables = dec.search_tables(self.tgt_embed.weight)
        if kernels.gru_inference_applies(self.src_embed.weight, self.encoder.rnn):
            tables = replace(tables, source_gates=kernels.input_gate_table(self.encoder.rnn, self.src_embed.weight))
        return tables

    def start(self, enc: EncoderOutput, tables: kernels.SearchTables | None = None,
              fold_context: bool = False) -> tuple[DecoderState, Memory]:
        """Initial decoder state (bridge) and the attention memory with keys projected once.

        With search ``tables`` and ``fold_context`` the memory also holds the keys through every
        weight that reads the context (:func:`nmt.kernels.fold_context`; pays with several beams).
        With ``tables`` every product is :mod:`nmt.kernels.batch_invariant`'s: a sentence starts the
        same alone and in any batch.
        """
        batch = enc.final.size(0)
        dec = self.cfg.decoder
        linear = F.linear if tables is None else kernels.batch_invariant.linear
        if self.bridge is not None:
            hidden = self.bridge(enc.final, linear=linear).view(batch, dec.layers, dec.hidden_size)
        else:
            hidden = enc.final.new_zeros(batch, dec.layers, dec.hidden_size)
        keys = enc.states
        device_type = keys.device.type
        if torch.is_autocast_enabled(device_type):
            # cast once per source, not in every decoder step's attention bmm
            keys = keys.to(torch.get_autocast_dtype(device_type))
        real = None
        if tables is None and self.fast and kernels.row_padding_applies(keys):  # B·S rows, rounded up
            linear = kernels.padded_linear
        elif tables is not None:  # the real positions only: a batch of mixed lengths is half padding
            real = kernels.batch_invariant.real_rows(enc.mask)
            linear = partial(kernels.batch_invariant.masked_linear, real=real)
        memory = self.decoder.precompute(Memory(keys=keys, mask=enc.mask), linear)
        if tables is not None and fold_context:
            memory = replace(memory, folded=kernels.fold_context(memory.keys, tables, real))
        return self.decoder.init_state(hidden), memory

    def step_logits(self, prev_tokens: torch.Tensor, state: DecoderState, memory: Memory,
                    output: tuple[torch.Tensor, torch.Tensor] | None = None,
                    tables: kernels.SearchTables | None = None):
        """One decoding step for search: ``logits (batch, V)`` (bfloat16 under bf16 autocast) and a StepOutput.

        Search ranks and masks the logits themselves and normalises only the few values it keeps
        (``nmt.inference.search.LogNormaliser``): on a CPU, every extra pass over a (beams, vocabulary)
        matrix costs about as much as the decoder's own GEMMs. ``output = (weight (L, D), bias (L,))``
        replaces the output layer by some of its rows (a lexical shortlist): logits ``(batch, L)``.
        With ``tables`` (:meth:`search_tables`) the decoder's fast search step runs; its memory then
        holds one row per sentence, shared by the sentence's ``batch / sentences`` beams, and a row's
        logits do not depend on the other rows (:mod:`nmt.kernels.batch_invariant`).
        """
        out = self.step_readout(prev_tokens, state, memory, tables)
        return self.logits(out.readout, output, tables), out

    def step_readout(self, prev_tokens: torch.Tensor, state: DecoderState, memory: Memory,
                     tables: kernels.SearchTables | None = None):
        """:meth:`step_logits` up to the output layer: the StepOutput, whose ``readout (batch, D)``
        :meth:`logits` turns into logits."""
        if tables is not None:
            return self.decoder.search_step(tables, prev_tokens, state, memory)
        return self.decoder.step(self.embed_dropout(self.tgt_embed(prev_tokens)), state, memory)

    def logits(self, readout: torch.Tensor, output: tuple[torch.Tensor, torch.Tensor] | None = None,
               tables: kernels.SearchTables | None = None) -> torch.Tensor:
        """The output layer of search's step (``output``, ``tables``: see :meth:`step_logits`)."""
        linear = F.linear if tables is None else kernels.batch_invariant.linear
        weight, bias = output if output is not None else (self.output.weight, self.output.bias)
        return linear(readout, weight, bias)

    def forward(self, src, src_lengths, src_mask, tgt_in, tgt_out, tgt_mask, label_smoothing: float = 0.0,
                subset: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Training objective of a batch: ``(loss_sum, nll_sum)`` summed over real target tokens.

        ``src (batch, src_len)``, ``tgt_in``/``tgt_out``/``tgt_mask (batch, tgt_len)``; ``subset``:
        see :meth:`loss`. Computing the loss inside ``forward`` keeps every parameter inside
        DistributedDataParallel's forward.
        """
        readout, _ = self.teacher_force(src, src_lengths, src_mask, tgt_in)
        return self.loss(readout, tgt_out, tgt_mask, label_smoothing, subset)

    def teacher_force(self, src, src_lengths, src_mask, tgt_in):
        """Readout ``(batch, tgt_len, D)`` and attention ``(batch, tgt_len, src_len)`` of a target."""
        enc = self.encode(src, src_lengths, src_mask)
        state, memory = self.start(enc)
        embedded = self.embed_dropout(self.tgt_embed(tgt_in))
        return self.decoder(embedded, state, memory)

    def loss(self, readout: torch.Tensor, tgt_out: torch.Tensor, tgt_mask: torch.Tensor,
             label_smoothing: float = 0.0,
             subset: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed token cross-entropy over real target positions (one output GEMM, no padding).

        Returns ``(loss_sum, nll_sum)``: the (label-smoothed) training objective and the plain
        negative log-likelihood, both summed over tokens (divide by the token count); see
        :func:`cross_entropy`. The fast twin (:func:`nmt.kernels.linear_cross_entropy`) runs the
        output layer and the loss as one operation that never keeps the (tokens, vocabulary) logits
        for autograd; under bf16 autocast they stay bf16 (per-token values summed in float32).

        ``subset``: ``(columns (C,), offsets (C,))``, sorted target ids holding every target of the
        batch and a constant added to each one's logit (training only,
        :mod:`nmt.training.batch_vocab`). The softmax then runs over those rows of the output layer,
        ``p'_v = exp(z_v + o_v) / Σ_{u ∈ C} exp(z_u + o_u)`` (a sampled softmax, Jean et al. 2015),
        and label smoothing spreads ε over the C ids.
        """
        flat = readout[tgt_mask]  # (n_tokens, D): padding never reaches the output layer
        targets = tgt_out[tgt_mask]
        weight, bias = self.output.weight, self.output.bias
        if subset is not None:
            columns, offsets = subset
            weight, bias = weight.index_select(0, columns), bias.index_select(0, columns) + offsets
            targets = torch.searchsorted(columns, targets)  # each target's place among the columns
        if self.fast and kernels.linear_cross_entropy_applies(flat):
            return kernels.linear_cross_entropy(flat, weight, bias, targets, label_smoothing)
        return cross_entropy(F.linear(flat, weight, bias), targets, label_smoothing)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                  label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token cross-entropy with label smoothing (Szegedy et al. 2016), summed over tokens::

        log p = log_softmax(z)
        L     = Σ_tokens [ (1 − ε) (−log p_y) + ε · mean_v(−log p_v) ]
        NLL   = Σ_tokens −log p_y

    ``logits z (N, V)``, ``targets y (N,)`` -> ``(L, NLL)`` scalars in float32 (float64 for float64
    logits); the NLL carries no gradient. ``L`` is
    ``F.cross_entropy(z, y, label_smoothing=ε, reduction="sum")``.
    """
    log_probs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (N, V)
    nll = -log_probs.gather(1, targets.unsqueeze(1)).sum()
    loss = nll if label_smoothing == 0 else (
        (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=1).sum())
    return loss, nll.detach()


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
    return Seq2Seq(cfg, src_vocab_size, tgt_vocab_size)


#: bytes per parameter while training in float32: weights, gradients and Adam's two moments
TRAINING_BYTES_PER_PARAMETER = 4 * 4


def available_memory() -> int:
    """Bytes of memory this process can still use (free and reclaimable RAM, as ``free`` reports)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_model_config(cfg: ModelConfig, source: str | None = None,
                       vocab_sizes: tuple[int, int] = (N_SPECIAL + 1, N_SPECIAL + 1),
                       training: bool = True) -> int | None:
    """Raise :class:`ConfigError` for a model section that cannot be built: unknown activation
    options (names are checked when the recipe is read), sizes the layers reject, or sizes whose parameters (with
    ``vocab_sizes``) cannot fit in the memory available: training needs
    :data:`TRAINING_BYTES_PER_PARAMETER` bytes per parameter before any activation, loading one
    float32 copy. Nothing is allocated: the layers are built on the meta device. Returns the number
    of parameters.
    """
    problems = []
    n_params = None
    try:
        with torch.device("meta"):
            model = Seq2Seq(cfg, *vocab_sizes)
        n_params = sum(p.numel() for p in model.parameters())
    except ConfigError as exc:
        problems += [f"model: {problem}" for problem in exc.problems]
    except (RuntimeError, OverflowError, ValueError, MemoryError):
        # a tensor too large to even describe (its byte count overflows)
        problems.append(_too_large(cfg, vocab_sizes, None, training))
    if n_params is not None:
        per_param = TRAINING_BYTES_PER_PARAMETER if training and not torch.cuda.is_available() else 4
        if n_params * per_param > available_memory():
            problems.append(_too_large(cfg, vocab_sizes, n_params, training))
    if problems:
        raise ConfigError(problems, source)
    return n_params


def _too_large(cfg: ModelConfig, vocab_sizes: tuple[int, int], n_params: int | None, training: bool) -> str:
    """The message for a model that cannot fit in memory, naming the keys that set its size."""
    sizes = [("model.embedding_dim", cfg.embedding_dim),
             ("model.encoder.hidden_size", cfg.encoder.hidden_size),
             ("model.encoder.layers", cfg.encoder.layers),
             ("model.decoder.hidden_size", cfg.decoder.hidden_size),
             ("model.decoder.layers", cfg.decoder.layers)]
    if cfg.encoder.self_attention_layers:
        sizes += [("model.encoder.self_attention_layers", cfg.encoder.self_attention_layers),
                  ("model.encoder.self_attention_ff_size", cfg.encoder.self_attention_ff_size)]
    if cfg.attention.hidden_size is not None:
        sizes.append(("model.attention.hidden_size", cfg.attention.hidden_size))
    sizes += [("tokenizer.src_vocab_size", vocab_sizes[0]), ("tokenizer.tgt_vocab_size", vocab_sizes[1])]
    keys = ", ".join(f"{key} ({value:,})" for key, value in sizes)
    available = available_memory() / 2**30
    if n_params is None:
        return (f"model: the sizes are too large to build any tensor; reduce {keys}")
    what = ("to train (float32 weights, gradients and Adam's two moments)" if training
            else "to hold its float32 weights")
    per_param = TRAINING_BYTES_PER_PARAMETER if training and not torch.cuda.is_available() else 4
    return (f"model: {n_params:,} parameters need {n_params * per_param / 2**30:,.1f} GiB {what}, more "
            f"than the {available:,.1f} GiB of memory available; reduce {keys}")


def perplexity(nll_per_token: float) -> float:
    return math.exp(min(nll_per_token, 50.0))
