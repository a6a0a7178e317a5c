"""The hand-written time loops (nmt.kernels.gru, nmt.kernels.bahdanau) against torch.nn.GRU, the
plain GRU cell and the decoder's step loop: values, gradients, lengths, masks, precision."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.config import AttentionConfig, DecoderConfig, EncoderConfig
from nmt.kernels import BahdanauRecurrence, GRUScan, bahdanau_recurrence_applies, gru_scan_applies, run_gru
from nmt.model.decoder import BahdanauDecoder, DecoderState, LuongDecoder, Memory, gru_cell
from nmt.model.encoder import Encoder


def test_plain_gru_cell_equals_nn_gru_cell():
    torch.manual_seed(9)
    cell = nn.GRUCell(5, 4).double()
    x, h = torch.randn(3, 5, dtype=torch.double), torch.randn(3, 4, dtype=torch.double)
    gates_x = nn.functional.linear(x, cell.weight_ih, cell.bias_ih)
    torch.testing.assert_close(gru_cell(gates_x, h, cell.weight_hh, cell.bias_hh), cell(x, h), rtol=0, atol=1e-12)


def _packed_reference(rnn, x, lengths, h0):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, h_n = rnn(packed, h0)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    return out, h_n


@pytest.mark.parametrize("bidirectional,layers,with_h0", [(True, 1, False), (True, 2, True), (False, 2, True)])
def test_values_and_gradients_equal_packed_nn_gru(bidirectional, layers, with_h0):
    torch.manual_seed(0)
    rnn = nn.GRU(5, 4, num_layers=layers, batch_first=True, bidirectional=bidirectional).double()
    batch, steps = 6, 7
    x = torch.randn(batch, steps, 5, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([3, 7, 1, 5, 7, 2])  # unsorted, with a one-token row
    directions = 2 if bidirectional else 1
    h0 = (torch.randn(layers * directions, batch, 4, dtype=torch.double, requires_grad=True)
          if with_h0 else None)
    ref_out, ref_h = _packed_reference(rnn, x, lengths, h0)
    out, h_n = run_gru(rnn, x, lengths, h0)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, ref_h, rtol=0, atol=1e-12)
    assert out[2, 1:].abs().max() == 0  # padding stays zero

    grad_out, grad_h = torch.randn_like(ref_out), torch.randn_like(ref_h)
    inputs = [x, *rnn.parameters()] + ([h0] if with_h0 else [])
    expected = torch.autograd.grad((ref_out * grad_out).sum() + (ref_h * grad_h).sum(), inputs)
    got = torch.autograd.grad((out * grad_out).sum() + (h_n * grad_h).sum(), inputs)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_full_length_without_lengths_equals_nn_gru():
    torch.manual_seed(1)
    rnn = nn.GRU(3, 5, batch_first=True).double()
    x = torch.randn(4, 6, 3, dtype=torch.double)
    h0 = torch.randn(1, 4, 5, dtype=torch.double)
    ref_out, ref_h = rnn(x, h0)
    out, h_n = run_gru(rnn, x, None, h0)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, ref_h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_passes_gradcheck_with_rows_ending_early(reverse):
    torch.manual_seed(2)
    steps, batch, hidden = 4, 3, 2
    gates_x = torch.randn(steps, batch, 3 * hidden, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(batch, hidden, dtype=torch.double, requires_grad=True)
    w = torch.randn(3 * hidden, hidden, dtype=torch.double, requires_grad=True)
    b = torch.randn(3 * hidden, dtype=torch.double, requires_grad=True)
    active = [3, 2, 2, 1]  # rows sorted longest first: lengths 4, 3, 1
    assert torch.autograd.gradcheck(lambda *a: GRUScan.apply(*a, active, reverse), (gates_x, h0, w, b))


def test_bf16_autocast_stays_close_to_float32():
    torch.manual_seed(3)
    rnn = nn.GRU(32, 32, batch_first=True, bidirectional=True)
    x = torch.randn(8, 9, 32)
    lengths = torch.tensor([9, 4, 7, 9, 1, 2, 8, 5])
    ref_out, ref_h = _packed_reference(rnn, x, lengths, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = run_gru(rnn, x, lengths)
    assert out.dtype == torch.float32  # states kept in float32; only the GEMMs run in bf16
    torch.testing.assert_close(out, ref_out, rtol=0, atol=3e-2)
    torch.testing.assert_close(h_n, ref_h, rtol=0, atol=3e-2)
    (out.sum() + h_n.sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in rnn.parameters())


def test_used_only_for_cpu_training():
    x = torch.zeros(1, 1, 1)
    assert gru_scan_applies(x) and bahdanau_recurrence_applies(x, 1, "tanh")
    assert not bahdanau_recurrence_applies(x, 2, "tanh") and not bahdanau_recurrence_applies(x, 1, "relu")
    with torch.no_grad():
        assert not gru_scan_applies(x) and not bahdanau_recurrence_applies(x, 1, "tanh")
    meta = torch.zeros(1, 1, 1, device="meta")
    assert not gru_scan_applies(meta) and not bahdanau_recurrence_applies(meta, 1, "tanh")


def test_encoder_scan_equals_packed_nn_gru():
    """The encoder under auto (GRUScan in training) and under reference (packed nn.GRU) give the
    same annotations and gradients without dropout."""
    torch.manual_seed(4)
    fast = Encoder(6, EncoderConfig(layers=2, hidden_size=5, dropout=0.0), kernels="auto").double()
    plain = Encoder(6, EncoderConfig(layers=2, hidden_size=5, dropout=0.0), kernels="reference").double()
    plain.load_state_dict(fast.state_dict())
    emb = torch.randn(3, 5, 6, dtype=torch.double)
    lengths = torch.tensor([5, 2, 4])
    mask = torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)
    grads = []
    for enc in (fast, plain):
        out = enc(emb, lengths, mask)
        grads.append(torch.autograd.grad(out.states.sum() + out.final.square().sum(), list(enc.parameters())))
        with torch.no_grad():
            inferred = enc(emb, lengths, mask)  # no autograd: nn.GRU under both settings
        torch.testing.assert_close(out.states, inferred.states, rtol=0, atol=1e-12)
        torch.testing.assert_close(out.final, inferred.final, rtol=0, atol=1e-12)
    for g, e in zip(*grads):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_encoder_dropout_between_layers_only_in_training(kernels):
    torch.manual_seed(5)
    enc = Encoder(6, EncoderConfig(layers=2, hidden_size=5, dropout=0.5), kernels=kernels)
    emb = torch.randn(3, 5, 6)
    lengths = torch.tensor([5, 2, 4])
    mask = torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)
    enc.train()
    first, second = enc(emb, lengths, mask).final, enc(emb, lengths, mask).final
    assert not torch.allclose(first, second)  # the layer-2 input is dropped differently each call
    enc.eval()
    torch.testing.assert_close(enc(emb, lengths, mask).final, enc(emb, lengths, mask).final)


def test_luong_decoder_without_feeding_trains_through_the_scan():
    torch.manual_seed(6)
    cfg = DecoderConfig(layers=1, hidden_size=5, dropout=0.0, input_feeding=False)
    fast = LuongDecoder(4, 6, 5, cfg, AttentionConfig(kind="luong-general"), "tanh", {}, "auto").double()
    plain = LuongDecoder(4, 6, 5, cfg, AttentionConfig(kind="luong-general"), "tanh", {}, "reference").double()
    plain.load_state_dict(fast.state_dict())
    keys = torch.randn(2, 3, 6, dtype=torch.double)
    mask = torch.ones(2, 3, dtype=torch.bool)
    emb = torch.randn(2, 4, 4, dtype=torch.double)
    state = DecoderState(hidden=torch.randn(2, 1, 5, dtype=torch.double))
    out, _ = fast(emb, state, fast.precompute(Memory(keys=keys, mask=mask)))
    ref, _ = plain(emb, state, plain.precompute(Memory(keys=keys, mask=mask)))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    out.sum().backward()
    ref.sum().backward()
    for g, e in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(g.grad, e.grad, rtol=0, atol=1e-12)
    assert fast.rnn.weight_hh_l0.grad.abs().sum() > 0


# ----------------------------------------------------------------- the Bahdanau decoder's time loop

def _bahdanau_decoder(layers=1, activation=None, seed=7, kernels="auto"):
    torch.manual_seed(seed)
    cfg = DecoderConfig(layers=layers, hidden_size=5, dropout=0.0)
    return BahdanauDecoder(4, 6, 7, cfg, AttentionConfig(kind="bahdanau", activation=activation),
                           "tanh", {}, kernels).double()


def _decoder_grads(dec):
    """Readout, attention and all gradients of one teacher-forced pass."""
    gen = torch.Generator().manual_seed(11)
    keys = torch.randn(3, 4, 6, dtype=torch.double, generator=gen).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    emb = torch.randn(3, 5, 4, dtype=torch.double, generator=gen).requires_grad_()
    h0 = torch.randn(3, dec.cfg.layers, 5, dtype=torch.double, generator=gen).requires_grad_()
    readout, weights = dec(emb, DecoderState(hidden=h0), dec.precompute(Memory(keys=keys, mask=mask)))
    grad_out = torch.randn(readout.shape, dtype=torch.double, generator=gen)
    grads = torch.autograd.grad((readout * grad_out).sum(), [emb, h0, keys, *dec.parameters()])
    return readout, weights, grads


def test_bahdanau_recurrence_equals_the_step_loop():
    """The fused loop (auto, CPU training) against the plain step loop (reference), same weights."""
    fast, plain = _bahdanau_decoder(kernels="auto"), _bahdanau_decoder(kernels="reference")
    ref_out, ref_w, ref_grads = _decoder_grads(plain)
    out, w, grads = _decoder_grads(fast)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(w, ref_w, rtol=0, atol=1e-12)
    assert w[1, :, 2:].abs().max() == 0 and w[2, :, 1:].abs().max() == 0  # padding gets no attention
    for g, e in zip(grads, ref_grads):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layers,activation", [(2, None), (1, "relu")])
def test_bahdanau_configurations_the_fused_loop_does_not_cover_keep_the_step_loop(layers, activation):
    """Only where ``bahdanau_recurrence_applies``; elsewhere auto runs the step loop (and agrees)."""
    fast = _bahdanau_decoder(layers=layers, activation=activation, kernels="auto")
    plain = _bahdanau_decoder(layers=layers, activation=activation, kernels="reference")
    emb = torch.zeros(1, 1, 1)
    assert not bahdanau_recurrence_applies(emb, layers, fast.attention.activation_name)
    for g, e in zip(_decoder_grads(fast)[2], _decoder_grads(plain)[2]):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_bahdanau_recurrence_passes_gradcheck():
    torch.manual_seed(8)
    steps, batch, src_len, hidden, att, key = 3, 2, 3, 2, 3, 2
    d = dict(dtype=torch.double, requires_grad=True)
    args = (torch.randn(steps, batch, 3 * hidden, **d), torch.randn(batch, hidden, **d),
            torch.randn(batch, src_len, att, **d), torch.randn(batch, src_len, key, **d),
            torch.tensor([[True, True, True], [True, True, False]]),
            torch.randn(att, hidden, **d), torch.randn(1, att, **d), torch.randn(3 * hidden, key, **d),
            torch.randn(3 * hidden, hidden, **d), torch.randn(3 * hidden, **d))

    def states_and_contexts(*a):
        states, contexts, _ = BahdanauRecurrence.apply(*a)
        return states, contexts

    assert torch.autograd.gradcheck(states_and_contexts, args)


def test_bahdanau_recurrence_under_bf16_autocast_stays_close():
    dec = _bahdanau_decoder().float()
    keys, emb = torch.randn(3, 4, 6), torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    h0 = torch.randn(3, 1, 5)
    ref, _ = dec(emb, DecoderState(hidden=h0), dec.precompute(Memory(keys=keys, mask=mask)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = dec(emb, DecoderState(hidden=h0), dec.precompute(Memory(keys=keys, mask=mask)))
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=5e-2)
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dec.parameters())
