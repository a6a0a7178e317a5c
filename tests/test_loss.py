"""The loss: the plain equation (nmt.model.seq2seq.cross_entropy) and its fast twin, the fused
output layer + cross-entropy (nmt.kernels.loss), against PyTorch's own two-step computation."""
import pytest
import torch
import torch.nn.functional as F

from nmt.kernels.loss import CHUNK_BYTES, linear_cross_entropy
from nmt.model.seq2seq import cross_entropy

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(37, 12, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(29, 12, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(29, generator=g, dtype=dtype, requires_grad=True) if bias else None
    targets = torch.randint(0, 29, (37,), generator=g)
    return hidden, weight, b, targets


def _grads(*tensors):
    out = [None if t is None else t.grad.clone() for t in tensors]
    for t in tensors:
        if t is not None:
            t.grad = None
    return out


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_bytes", [CHUNK_BYTES, 10 * 29 * 8])  # one chunk; 37 rows as 10+10+10+7
def test_loss_and_gradients_equal_cross_entropy_of_linear(label_smoothing, bias, chunk_bytes):
    hidden, weight, b, targets = _inputs(bias=bias)
    loss, nll = linear_cross_entropy(hidden, weight, b, targets, label_smoothing, chunk_bytes=chunk_bytes)
    (2.5 * loss).backward()  # a non-unit incoming gradient must scale every gradient
    ours = _grads(hidden, weight, b)

    logits = F.linear(hidden, weight, b)
    ref = F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction="sum")
    (2.5 * ref).backward()
    theirs = _grads(hidden, weight, b)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert nll.item() == pytest.approx(F.cross_entropy(logits, targets, reduction="sum").item(), rel=1e-6)
    for a, r in zip(ours, theirs):
        if r is not None:
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
    assert not nll.requires_grad


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_plain_loss_is_pytorch_cross_entropy(label_smoothing):
    hidden, weight, b, targets = _inputs()
    logits = F.linear(hidden, weight, b)
    loss, nll = cross_entropy(logits, targets, label_smoothing)
    loss.backward()
    ours = _grads(hidden, weight, b)
    ref = F.cross_entropy(F.linear(hidden, weight, b), targets, label_smoothing=label_smoothing, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nll, F.cross_entropy(logits, targets, reduction="sum").detach(), rtol=1e-12, atol=1e-12)
    for a, r in zip(ours, _grads(hidden, weight, b)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    assert not nll.requires_grad
    bf16 = cross_entropy(logits.detach().bfloat16(), targets, label_smoothing)[0]
    assert bf16.dtype == torch.float32  # summed in float32 at least


def test_fused_equals_plain_in_float64():
    """The two twins the model chooses between (kernels auto / reference), values and gradients."""
    hidden, weight, b, targets = _inputs()
    fused = linear_cross_entropy(hidden, weight, b, targets, 0.2, chunk_bytes=10 * 29 * 8)
    fused[0].backward()
    got = _grads(hidden, weight, b)
    plain = cross_entropy(F.linear(hidden, weight, b), targets, 0.2)
    plain[0].backward()
    for a, r in zip(fused, plain):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    for a, r in zip(got, _grads(hidden, weight, b)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_gradcheck():
    hidden, weight, b, targets = _inputs()

    def loss_only(h, w, bias):
        return linear_cross_entropy(h, w, bias, targets, 0.2)[0].double()

    assert torch.autograd.gradcheck(loss_only, (hidden, weight, b))


def test_without_gradients_gives_the_same_numbers():
    hidden, weight, b, targets = _inputs()
    with_grad = linear_cross_entropy(hidden, weight, b, targets, 0.1)
    with torch.no_grad():
        without = linear_cross_entropy(hidden, weight, b, targets, 0.1)
    assert [t.item() for t in without] == pytest.approx([t.item() for t in with_grad], rel=1e-7)


def test_tied_weight_gets_both_gradients():
    """With tied embeddings the output weight is the embedding table: gradients add up."""
    hidden, weight, b, targets = _inputs()
    ids = torch.tensor([3, 5, 5])
    (linear_cross_entropy(hidden, weight, b, targets)[0] + weight[ids].sum()).backward()
    ours = weight.grad.clone()
    weight.grad = None
    (F.cross_entropy(F.linear(hidden, weight, b), targets, reduction="sum") + weight[ids].sum()).backward()
    torch.testing.assert_close(ours, weight.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_of_targets_whose_probability_underflows(dtype, label_smoothing):
    """The log-normaliser is read off the softmax at the target; where the target's probability is
    zero or too small to take the log of, the loss still equals PyTorch's (logsumexp)."""
    hidden, weight, b, targets = _inputs(torch.float32, seed=4)
    with torch.no_grad():
        hidden[:5].mul_(60)  # logit gaps of hundreds: p_y underflows in rows where y is not the top
    reference = F.cross_entropy(F.linear(hidden, weight, b), targets, label_smoothing=label_smoothing,
                                reduction="none")
    assert (reference > 100).sum() >= 2
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss, _ = linear_cross_entropy(hidden, weight, b, targets, label_smoothing)
    assert loss.isfinite()
    assert loss.item() == pytest.approx(reference.sum().item(), rel=1e-5 if dtype == torch.float32 else 2e-2)


def test_bf16_autocast_matches_float32_within_bf16_precision():
    hidden, weight, b, targets = _inputs(torch.float32, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, nll = linear_cross_entropy(hidden, weight, b, targets, 0.1)
    loss.backward()
    ours = _grads(hidden, weight, b)
    assert loss.dtype == torch.float32 and [g.dtype for g in ours] == [torch.float32] * 3
    ref = F.cross_entropy(F.linear(hidden, weight, b), targets, label_smoothing=0.1, reduction="sum")
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=2e-2)
    for a, r in zip(ours, _grads(hidden, weight, b)):
        assert (a - r).abs().max() <= 3e-2 * r.abs().max()


def test_model_loss_ignores_padding(kernels):
    """Seq2Seq.loss (fused op or plain equation): padded positions contribute nothing."""
    from nmt.config import DecoderConfig, EncoderConfig, ModelConfig
    from nmt.model.seq2seq import build_model
    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=8, dropout=0.0, kernels=kernels,
                      encoder=EncoderConfig(hidden_size=8, dropout=0.0),
                      decoder=DecoderConfig(hidden_size=8, dropout=0.0))
    model = build_model(cfg, 20, 20)
    readout = torch.randn(2, 4, model.output.in_features)
    tgt_out = torch.tensor([[4, 5, 6, 2], [7, 2, 0, 0]])
    mask = tgt_out != 0
    loss, _ = model.loss(readout, tgt_out, mask)
    garbage = readout.clone()
    garbage[1, 2:] = 1e4  # padding positions
    assert model.loss(garbage, tgt_out, mask)[0].item() == pytest.approx(loss.item())
    ref = F.cross_entropy(model.output(readout[mask]), tgt_out[mask], reduction="sum")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
