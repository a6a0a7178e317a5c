"""The weight layouts: every implementation (plain forward and step, the fast search step, the
training kernels) reads the blocks of a fused weight through the decoder's named layouts only."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nmt.kernels import Layout, gru_gates
from nmt.model.decoder import BahdanauDecoder

from test_model import batch


def test_layout_splits_into_views_and_cat_inverts_it():
    layout = Layout(state=3, context=2, embedding=4)
    assert layout.names == ("state", "context", "embedding") and layout.width == 9
    assert layout.block("context") == slice(3, 5) and layout.span("context", "embedding") == slice(3, 9)
    assert layout.size("state", "context") == 5
    weight = torch.randn(6, 9)
    parts = layout.split(weight, dim=1)
    assert {n: tuple(p.shape) for n, p in parts.items()} == {"state": (6, 3), "context": (6, 2), "embedding": (6, 4)}
    assert all(p.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr() for p in parts.values())
    assert torch.equal(parts["context"], weight[:, 3:5])
    assert [torch.equal(a, b) for a, b in zip(layout.unpack(weight, dim=1), parts.values())] == [True] * 3
    shuffled = {name: parts[name] for name in ("embedding", "state", "context")}
    assert torch.equal(layout.cat(shuffled, dim=1), weight)
    with pytest.raises(ValueError, match="spans 9"):
        layout.split(torch.randn(6, 8), dim=1)
    with pytest.raises(ValueError, match="needs parts"):
        layout.cat({"state": parts["state"]}, dim=1)


def test_gru_gates_are_nn_gru_order():
    """r, z, n: the rows nn.GRU documents for weight_ih/weight_hh (reset, update, new)."""
    gates = gru_gates(5)
    assert gates.names == ("r", "z", "n") and gates.width == 15
    cell = nn.GRUCell(3, 5)
    x, h = torch.randn(2, 3), torch.randn(2, 5)
    w_ih, w_hh = gates.split(cell.weight_ih, dim=0), gates.split(cell.weight_hh, dim=0)
    b_ih, b_hh = gates.split(cell.bias_ih, dim=0), gates.split(cell.bias_hh, dim=0)
    with torch.no_grad():
        def pre(gate):
            return x @ w_ih[gate].T + b_ih[gate], h @ w_hh[gate].T + b_hh[gate]
        r = torch.sigmoid(sum(pre("r")))
        z = torch.sigmoid(sum(pre("z")))
        n = torch.tanh(pre("n")[0] + r * pre("n")[1])
        torch.testing.assert_close(cell(x, h), (1 - z) * n + z * h)


# --------------------------------------------------------------------------------------------------
# The layouts are the only source: reorder a layout (and the weight's blocks with it) and nothing
# changes; perturb one named block and every path changes alike
# --------------------------------------------------------------------------------------------------


def _reorder(layout: Layout, order: tuple[str, ...]) -> Layout:
    return Layout(**{name: layout.widths[name] for name in order})


def _relayout(weight: nn.Parameter, old: Layout, new: Layout) -> None:
    """Rewrite ``weight``'s columns from ``old``'s order into ``new``'s, in place."""
    with torch.no_grad():
        weight.copy_(new.cat(old.split(weight.detach().clone(), dim=1), dim=1))


def _permuted_twin(model, tiny_model, kind, feed, kernels):
    """A second model whose decoder lists every fused weight's blocks in another order (reversed),
    with its weights' columns moved to match: the same function if the layouts are the only source."""
    twin = tiny_model(kind, feed, kernels=kernels).double()
    twin.load_state_dict(model.state_dict())
    dec = twin.decoder
    new = _reorder(dec.input_layout, dec.input_layout.names[::-1])
    _relayout(dec.rnn.weight_ih_l0, dec.input_layout, new)
    dec.input_layout = new
    name, linear = (("readout_layout", dec.readout.linear) if isinstance(dec, BahdanauDecoder)
                    else ("combine_layout", dec.combine.linear))
    old = getattr(dec, name)
    new = _reorder(old, old.names[::-1])
    _relayout(linear.weight, old, new)
    setattr(dec, name, new)
    return twin


def _decode(model, enc, tgt_in, tables=None, fold=False):
    """The logits of every step of forced decoding ``tgt_in``: (T, batch, V)."""
    state, memory = model.start(enc, tables, fold_context=fold)
    logits = []
    for t in range(tgt_in.size(1)):
        step_logits, out = model.step_logits(tgt_in[:, t], state, memory, tables=tables)
        logits.append(step_logits)
        state = out.state
    return torch.stack(logits)


def _every_path(model, data):
    """Teacher-forced loss and gradients (training kernels where they apply), plain step logits and,
    where the model has them, the fast search step's logits."""
    src, lens, smask, tgt_in, tgt_out, tmask = data
    model.train()
    model.zero_grad()
    loss, _ = model(src, lens, smask, tgt_in, tgt_out, tmask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.eval()
    out = {"loss": loss.detach()}
    with torch.inference_mode():
        enc = model.encode(src, lens, smask)
        out["step"] = _decode(model, enc, tgt_in)
        tables = model.search_tables()
        if tables is not None:
            for fold in (False, True):
                out[f"search{fold}"] = _decode(model, enc, tgt_in, tables, fold)
    return out, grads


KINDS = [("bahdanau", True), ("luong-general", True), ("luong-general", False), ("luong-concat", True),
         ("local-p", True), ("luong-dot", False)]


@pytest.mark.parametrize("kind,feed", KINDS)
def test_reordered_layouts_compute_the_same_function(kind, feed, tiny_model, kernels):
    model = tiny_model(kind, feed, kernels=kernels).double()
    twin = _permuted_twin(model, tiny_model, kind, feed, kernels)
    assert not torch.equal(twin.decoder.rnn.weight_ih_l0, model.decoder.rnn.weight_ih_l0) or not feed
    data = batch([5, 2, 7])
    want, want_grads = _every_path(model, data)
    got, got_grads = _every_path(twin, data)
    assert got.keys() == want.keys()
    assert ("searchTrue" in got) == (kind == "bahdanau" and kernels == "auto")
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-10, atol=1e-10, msg=key)
    # gradients land in the blocks the layouts name: move the twin's back into the model's order
    dec, twin_dec = model.decoder, twin.decoder
    moved = {"decoder.rnn.weight_ih_l0": (twin_dec.input_layout, dec.input_layout)}
    if isinstance(dec, BahdanauDecoder):
        moved["decoder.readout.linear.weight"] = (twin_dec.readout_layout, dec.readout_layout)
    else:
        moved["decoder.combine.linear.weight"] = (twin_dec.combine_layout, dec.combine_layout)
    for name, grad in want_grads.items():
        if name in moved:
            src_layout, dst_layout = moved[name]
            got_grads[name] = dst_layout.cat(src_layout.split(got_grads[name], dim=1), dim=1)
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-10, atol=1e-10, msg=name)


PARTS = [("bahdanau", "readout", "context"), ("bahdanau", "readout", "embedding"), ("bahdanau", "input", "context"),
         ("bahdanau", "gate", "n"), ("luong-concat", "combine", "state"), ("luong-concat", "input", "feed"),
         ("local-p", "gate", "z")]


def _named_part(decoder, where: str, name: str) -> torch.Tensor:
    if where == "readout":
        return decoder.readout_parts()[name]
    if where == "combine":
        return decoder.combine_parts()[name]
    if where == "input":
        return decoder.gru_input_parts()[name]
    return gru_gates(decoder.hidden_size).split(decoder.rnn.weight_hh_l0, dim=0)[name]


@pytest.mark.parametrize("kind,where,name", PARTS)
def test_perturbing_one_named_part_changes_every_path_alike(kind, where, name, tiny_model):
    """The fast paths (auto) and the plain equations (reference) read a named block at the same
    place: after changing that block alone they still agree, and they do not agree with before."""
    fast = tiny_model(kind).double()
    plain = tiny_model(kind, kernels="reference").double()
    plain.load_state_dict(fast.state_dict())
    data = batch([5, 2, 7])
    before, _ = _every_path(plain, data)
    for model in (fast, plain):
        part = _named_part(model.decoder, where, name)
        with torch.no_grad():
            part.add_(torch.linspace(-0.5, 0.5, part.numel(), dtype=part.dtype).view_as(part))
    got, got_grads = _every_path(fast, data)
    want, want_grads = _every_path(plain, data)
    assert not torch.allclose(want["step"], before["step"])  # the part is live
    for key, value in got.items():
        torch.testing.assert_close(value, want[key if key in want else "step"], rtol=1e-10, atol=1e-10, msg=key)
    for key, grad in want_grads.items():
        torch.testing.assert_close(got_grads[key], grad, rtol=1e-10, atol=1e-10, msg=key)


@pytest.mark.parametrize("kind", ["bahdanau", "luong-concat"])
def test_exported_step_of_a_reordered_layout_equals_the_model(kind, tiny_model, tmp_path):
    """The ONNX step graph follows the layouts too (it is traced from the plain step)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from nmt.tools.export import export_model

    model = tiny_model(kind, weight_scale=2.0, kernels="reference").double()  # the exporter's equations
    twin = _permuted_twin(model, tiny_model, kind, True, "reference")
    model.float()
    graphs = export_model(twin, tmp_path)
    session = ort.InferenceSession(str(tmp_path / "decoder_step.onnx"), providers=["CPUExecutionProvider"])
    src, lens, smask, tgt_in, _, _ = batch([5, 2, 7])
    with torch.no_grad():
        state, memory = model.start(model.encode(src, lens, smask))
        for t in range(tgt_in.size(1)):
            feeds = {"prev_tokens": tgt_in[:, t].numpy(),
                     **{f"state.{n}": getattr(state, n).numpy() for n in graphs["state"]},
                     **{f"memory.{n}": getattr(memory, n).numpy() for n in graphs["memory"]}}
            log_probs = session.run(["log_probs"], feeds)[0]
            logits, out = model.step_logits(tgt_in[:, t], state, memory)
            torch.testing.assert_close(torch.from_numpy(log_probs), torch.log_softmax(logits, -1),
                                       rtol=1e-5, atol=1e-5)
            state = out.state
