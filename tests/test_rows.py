"""Row counts rounded up in bf16 CPU training (nmt.kernels.rows): the padded products equal the plain
ones, values and gradients, and a training step runs few distinct row counts."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nmt.kernels.loss import linear_cross_entropy
from nmt.kernels.rows import ROW_MULTIPLE, coarse_multiple, pad_rows, padded_rows, padded_linear, padded_mm, row_multiple, row_padding_applies
from tests.test_model import batch


@pytest.mark.parametrize("shape", [(5, 7, 6), (32, 6), (33, 6), (1, 6)])
def test_padded_linear_equals_linear_with_gradients(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(*shape[:-1], 4, generator=g, dtype=torch.float64)
    want = F.linear(x, w, b)
    want_grads = torch.autograd.grad(want, (x, w, b), up)
    got = padded_linear(x, w, b, multiple=ROW_MULTIPLE)
    got_grads = torch.autograd.grad(got, (x, w, b), up)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for got_grad, want_grad in zip(got_grads, want_grads):
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12)


def test_padded_mm_and_pad_rows():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(45, 3, generator=g, dtype=torch.float64), torch.randn(45, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(padded_mm(a, b, 32), a.t() @ b, rtol=1e-12, atol=1e-12)
    padded = pad_rows(a, 32)
    assert padded.shape == (64, 3) and torch.equal(padded[:45], a) and not padded[45:].any()
    assert pad_rows(padded, 32) is padded


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_on_padded_rows_equals_unpadded(smoothing):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(45, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 11, (45,), generator=g)
    results = []
    for multiple, chunk_bytes in [(1, 2**20), (32, 2**20), (8, 8 * 11 * 3)]:  # one chunk; padded; 3 rows → 8
        loss, nll = linear_cross_entropy(h, w, b, y, smoothing, chunk_bytes=chunk_bytes, multiple=multiple)
        results.append((loss, nll, *torch.autograd.grad(loss, (h, w, b))))
    for got in results[1:]:
        for got_part, want_part in zip(got, results[0]):
            torch.testing.assert_close(got_part, want_part, rtol=1e-12, atol=1e-12)


def test_padding_only_for_16_bit_training_on_the_cpu():
    x = torch.zeros(3, 4)
    assert row_multiple(x) == 1 and not row_padding_applies(x)
    assert row_multiple(x.bfloat16()) == ROW_MULTIPLE and row_padding_applies(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert row_padding_applies(x)
        with torch.no_grad():  # search keeps its products
            assert not row_padding_applies(x)


class _RowCounts(TorchDispatchMode):
    """The row counts (M and K) of every bf16 matrix product but matrix-vector ones."""

    def __init__(self):
        super().__init__()
        self.sizes, self.long_sums = set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        operands = {"mm": args[:2], "addmm": args[1:3]}.get(name)
        # a product with one column is the attention's per-step score vᵀu over B·S rows: not padded
        if operands is not None and operands[0].dtype == torch.bfloat16 and operands[1].size(1) > 1:
            self.sizes.update((operands[0].size(0), operands[0].size(1)))
            if operands[0].size(0) == 1 and operands[0].size(1) > 64:  # v's gradient: one row, K = T·B·S
                self.long_sums.add(operands[0].size(1))
        return func(*args, **(kwargs or {}))


def test_a_bf16_training_step_runs_few_row_counts(tiny_model):
    """Over batches of many shapes, every bf16 product's M and K above the model's own sizes
    (all below 64 here) and the batch size is a multiple of 32: the sequence-wide products and
    their weight gradients are padded, the per-step ones run the batch's rows."""
    model = tiny_model("bahdanau", True).train()
    counts = _RowCounts()
    g = torch.Generator().manual_seed(4)
    with counts:
        for _ in range(6):
            lengths = torch.randint(9, 21, (7,), generator=g).tolist()
            src, lens, smask, tgt_in, tgt_out, tmask = batch(lengths)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = model(src, lens, smask, tgt_in, tgt_out, tmask)
            loss.backward()
    large = {size for size in counts.sizes if size > 64}
    assert large and all(size % ROW_MULTIPLE == 0 for size in large), sorted(large)
    # v's gradient is summed step by step: no product sums over the T·B·S rows of a batch, whose
    # count would compile a kernel per batch
    assert not counts.long_sums, sorted(counts.long_sums)


@pytest.mark.parametrize("rows", [1, 31, 33, 255, 1000, 1056, 2049, 36000, 32769, 10**6 + 1])
def test_coarse_multiple_adds_at_most_an_eighth(rows):
    padded = padded_rows(rows, coarse_multiple(rows))
    assert padded % ROW_MULTIPLE == 0 and rows <= padded <= max(rows * 1.125, padded_rows(rows, ROW_MULTIPLE))
    assert padded_rows(padded, coarse_multiple(padded)) == padded  # a padded count stays as it is
    octave = [padded_rows(k, coarse_multiple(k)) for k in range(4096, 8193)]
    assert len(set(octave)) == 9  # 8 counts in (4096, 8192], and 4096 itself
