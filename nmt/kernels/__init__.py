"""CPU fast paths, each the twin of a plain equation in ``nmt.model`` and tested equal to it.

The model picks between the two at one call site per operation, e.g. in the encoder::

    if self.fast and kernels.gru_scan_applies(x):
        states, h_n = kernels.run_gru(self.rnn, x, lengths, dropout=self.dropout)
    else:
        ...  # nn.GRU over the packed sequence

``self.fast`` is the recipe's ``model.kernels`` (``auto``: True, ``reference``: False); each
``*_applies`` function says from explicit inputs (device, grad mode, configuration) where its
kernel pays. Nothing here imports ``nmt.model``.

- ``gru.run_gru`` (``GRUScan``): ``nn.GRU`` of the encoder and of the Luong decoder without input
  feeding; CPU training.
- ``gru_inference.run_gru_inference``: ``nn.GRU`` of the encoder in search (eval mode, no
  autograd, CPU): both directions of a bidirectional GRU in one time loop; with
  ``input_gate_table`` (``SearchTables.source_gates``) the first layer's input gates are looked up.
- ``bahdanau.BahdanauRecurrence``: the Bahdanau decoder's teacher-forcing step loop; CPU training,
  one layer, tanh scorer.
- ``attention.additive_tanh_score``: ``AdditiveAttention.score`` with tanh; CPU.
- ``loss.linear_cross_entropy``: the output layer + ``seq2seq.cross_entropy``; CPU.
- ``rows.padded_linear`` (with ``padded_mm``): sequence-wide products and weight gradients on row
  counts rounded up to a multiple of 32 in bf16 CPU training, so oneDNN compiles few shapes.
- ``dropout.dropout``: ``activations.Dropout`` (``F.dropout``); CPU training.
- ``layout.Layout`` (with ``gru_gates``) is no kernel: it names the blocks of a fused weight
  (GRU gates, the decoder's input and readout columns) once, for the model and the kernels alike.
- ``search.search_step`` (with ``build_search_tables``, ``fold_context``): ``BahdanauDecoder.step``
  in search (no autograd, eval mode); chosen by ``Seq2Seq.search_tables``.
- ``shortlist_chunks.ShortlistChunks``: search's output layer over a batch's union of shortlists
  (``Seq2Seq.logits`` with an ``OutputShortlist``), one product per chunk of rows over the columns
  its rows own; float32.
- ``batch_invariant``: products and a sum whose value for a row does not depend on the
  other rows (MKL rounds a row by the number of rows, a sum by the padding): search's fast path
  uses them throughout, so that a sentence translates the same alone and in any batch.
"""
from nmt.kernels import batch_invariant
from nmt.kernels.attention import additive_tanh_keys, additive_tanh_score, tanh_by_sigmoid_applies
from nmt.kernels.bahdanau import BahdanauRecurrence, bahdanau_recurrence_applies
from nmt.kernels.dropout import dropout, dropout_applies, dropout_mask
from nmt.kernels.gru import GRUScan, gru_scan_applies, run_gru
from nmt.kernels.gru_inference import gru_inference_applies, input_gate_table, run_gru_inference
from nmt.kernels.layout import Layout, gru_gates
from nmt.kernels.loss import linear_cross_entropy, linear_cross_entropy_applies
from nmt.kernels.rows import padded_linear, row_padding_applies
from nmt.kernels.shortlist_chunks import CHUNK_ROWS, ShortlistChunks, shortlist_chunks_apply
from nmt.kernels.search import (
    SearchTables,
    build_search_tables,
    fold_context,
    search_step,
    search_tables_apply,
)

__all__ = [
    "batch_invariant",
    "additive_tanh_keys", "additive_tanh_score", "tanh_by_sigmoid_applies",
    "BahdanauRecurrence", "bahdanau_recurrence_applies",
    "dropout", "dropout_applies", "dropout_mask",
    "GRUScan", "gru_scan_applies", "run_gru",
    "gru_inference_applies", "input_gate_table", "run_gru_inference",
    "Layout", "gru_gates",
    "linear_cross_entropy", "linear_cross_entropy_applies",
    "padded_linear", "row_padding_applies",
    "SearchTables", "build_search_tables", "fold_context", "search_step", "search_tables_apply",
    "CHUNK_ROWS", "ShortlistChunks", "shortlist_chunks_apply",
]
