"""The search-time GRU (nmt.kernels.gru_inference: both directions in one time loop) against
torch.nn.GRU over a packed sequence: values, lengths, padding, layers, directions, autocast."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.kernels import gru_inference_applies, input_gate_table, run_gru_inference


def _packed_reference(rnn, x, lengths):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, h_n = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    return out, h_n


@pytest.mark.parametrize("bidirectional,layers", [(True, 1), (True, 2), (False, 1), (False, 2)])
@pytest.mark.parametrize("lengths", [[3, 7, 1, 5, 7, 2], [1, 1, 1], [4], [2, 6, 6, 1]])
def test_equals_packed_nn_gru(bidirectional, layers, lengths):
    """Unsorted lengths, one-token rows, rows padded beyond their end, a batch padded past its
    longest row (T > max length): float64 values to 1e-12, padding exactly zero."""
    torch.manual_seed(len(lengths) * 10 + layers)
    rnn = nn.GRU(5, 4, num_layers=layers, batch_first=True, bidirectional=bidirectional).double().eval()
    lengths = torch.tensor(lengths)
    steps = int(lengths.max()) + 1
    x = torch.randn(len(lengths), steps, 5, dtype=torch.double)
    with torch.no_grad():
        ref_out, ref_h = _packed_reference(rnn, x, lengths)
        out, h_n = run_gru_inference(rnn, x, lengths)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, ref_h, rtol=0, atol=1e-12)
    for row, n in enumerate(lengths.tolist()):
        assert out[row, n:].abs().max() == 0


def test_float32_equals_nn_gru_and_bf16_autocast_runs_the_hidden_products_in_bf16():
    """float32: within float rounding of nn.GRU (on this CPU its products are nn.GRU's own: equal
    to the bit). bf16 autocast: the outputs stay float32, the hidden products run in bf16 (the
    result is not float32's), and it stays within bf16 rounding of nn.GRU, which keeps float32."""
    torch.manual_seed(3)
    rnn = nn.GRU(16, 8, batch_first=True, bidirectional=True).eval()
    lengths = torch.tensor([9, 4, 1, 9, 6])
    x = torch.randn(5, 9, 16)
    with torch.no_grad():
        ref_out, ref_h = _packed_reference(rnn, x, lengths)
        out, h_n = run_gru_inference(rnn, x, lengths)
        torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
        torch.testing.assert_close(h_n, ref_h, rtol=0, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_out, low_h = run_gru_inference(rnn, x, lengths)
    assert low_out.dtype == low_h.dtype == torch.float32
    assert not torch.equal(low_out, out)
    torch.testing.assert_close(low_out, ref_out, rtol=0, atol=2e-2)
    torch.testing.assert_close(low_h, ref_h, rtol=0, atol=2e-2)
    for row, n in enumerate(lengths.tolist()):
        assert not low_out[row, n:].any()


def test_used_only_for_cpu_search():
    rnn = nn.GRU(1, 1)
    x = torch.zeros(1, 1, 1)
    assert not gru_inference_applies(x, rnn.eval())  # autograd on: training's GRUScan or nn.GRU
    with torch.no_grad():
        assert gru_inference_applies(x, rnn.eval())
        assert not gru_inference_applies(x, rnn.train())  # dropout between layers
        assert not gru_inference_applies(torch.zeros(1, 1, 1, device="meta"), rnn.eval())


@pytest.mark.parametrize("bidirectional,layers", [(True, 1), (True, 2), (False, 1)])
def test_input_gate_lookup_equals_the_embedded_input(bidirectional, layers):
    """The first layer's input gates looked up per id (input_gate_table) give nn.GRU's result on
    the embedded ids; padded ids and one-token rows included."""
    torch.manual_seed(layers)
    rnn = nn.GRU(5, 4, num_layers=layers, batch_first=True, bidirectional=bidirectional).double().eval()
    embedding = torch.randn(9, 5, dtype=torch.double)
    ids = torch.tensor([[4, 5, 6, 3, 0], [7, 0, 0, 0, 0], [8, 8, 5, 6, 3]])
    lengths = torch.tensor([4, 1, 5])
    with torch.no_grad():
        table = input_gate_table(rnn, embedding)
        out, h_n = run_gru_inference(rnn, None, lengths, gate_table=table, ids=ids)
        ref_out, ref_h = _packed_reference(rnn, embedding[ids], lengths)
    assert table.shape == (9, (2 if bidirectional else 1) * 3 * 4)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, ref_h, rtol=0, atol=1e-12)


def test_search_tables_carry_the_source_gates(tiny_model):
    """Seq2Seq.search_tables holds the encoder's input gates per source id under auto; encoding
    with them equals the reference model's encoder."""
    fast = tiny_model(kernels="auto", layers=2).double()
    plain = tiny_model(kernels="reference", layers=2).double()
    plain.load_state_dict(fast.state_dict())
    src = torch.tensor([[4, 5, 6, 3], [7, 3, 0, 0], [3, 0, 0, 0]])
    lengths = torch.tensor([4, 2, 1])
    mask = src != 0
    with torch.no_grad():
        tables = fast.search_tables()
        assert tables.source_gates.shape == (fast.src_embed.weight.size(0), 2 * 3 * fast.encoder.rnn.hidden_size)
        assert plain.search_tables() is None
        got, expected = fast.encode(src, lengths, mask, tables=tables), plain.encode(src, lengths, mask)
    torch.testing.assert_close(got.states, expected.states, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.final, expected.final, rtol=0, atol=1e-12)


def test_float32_is_the_same_alone_and_in_a_batch_and_nn_grus_products():
    """float32 with the table: a sentence's encoding is the same to the bit alone and in a batch
    (the hidden products run on at least 16 rows, where MKL rounds a row the same for any number of
    rows; nn.GRU multiplies only the running rows and itself rounds a sentence alone differently),
    within float rounding of nn.GRU, and equal to it to the bit where 16 rows or more run at every
    step: the products are nn.GRU's own (a batched bmm over both directions is not)."""
    torch.manual_seed(6)
    rnn = nn.GRU(5, 4, batch_first=True, bidirectional=True).eval()
    embedding = torch.randn(20, 5)
    lengths = torch.randint(1, 9, (12,))
    ids = torch.randint(4, 20, (12, 8)) * (torch.arange(8) < lengths[:, None])
    with torch.no_grad():
        table = input_gate_table(rnn, embedding)
        batch_out, batch_h = run_gru_inference(rnn, None, lengths, gate_table=table, ids=ids)
        ref_out, ref_h = _packed_reference(rnn, embedding[ids], lengths)
        torch.testing.assert_close(batch_out, ref_out, rtol=0, atol=1e-6)
        torch.testing.assert_close(batch_h, ref_h, rtol=0, atol=1e-6)
        for k in range(12):
            n = int(lengths[k])
            out, h_n = run_gru_inference(rnn, None, lengths[k:k + 1], gate_table=table, ids=ids[k:k + 1, :n])
            assert torch.equal(out[0], batch_out[k, :n]) and torch.equal(h_n[:, 0], batch_h[:, k])
        many = torch.full((20,), 8)
        ids = torch.randint(4, 20, (20, 8))
        out, h_n = run_gru_inference(rnn, None, many, gate_table=table, ids=ids)
        ref_out, ref_h = _packed_reference(rnn, embedding[ids], many)
        assert torch.equal(out, ref_out) and torch.equal(h_n, ref_h)
