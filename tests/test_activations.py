"""nmt.model.activations: every activation against its formula and the torch built-in, gradients, the
attention-based activations (AReLU, APReLU), the layer helpers and the registry's errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

from nmt.errors import ConfigError
from nmt.model.activations import (
    ActivatedLinear,
    Activation,
    APReLU,
    AReLU,
    Dropout,
    Maxout,
    activation_parameters,
    available_activations,
    get_activation,
    make_dropout,
)

LAMBDA, ALPHA = 1.0507009873554804934, 1.6732632423543772848  # Klambauer et al. 2017


def inputs(dtype=torch.float64, seed=0) -> torch.Tensor:
    """(5, 8): zeros, tiny, +-50, both sides of softplus' threshold 20, and random values."""
    g = torch.Generator().manual_seed(seed)
    special = torch.tensor([[0.0, -0.0, 50.0, -50.0, 1e-4, -1e-4, 21.0, -21.0],
                            [3.0, -3.0, 8.0, -8.0, 19.5, -19.5, 0.5, -0.5]], dtype=torch.float64)
    rand = torch.randn(3, 8, generator=g, dtype=torch.float64) * 3
    return torch.cat([special, rand]).to(dtype)


def away_from_kinks(shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=torch.float64) * 3 + 0.1
    sign = torch.where(torch.rand(*shape, generator=g) < 0.5, -1.0, 1.0).double()
    return x * sign


sig = lambda x: 1 / (1 + torch.exp(-x))  # noqa: E731


def softplus_ref(x, beta=1.0, threshold=20.0):
    return torch.where(beta * x > threshold, x, torch.log(1 + torch.exp(beta * x)) / beta)


# name, options, formula (float64), torch built-in oracle (or None)
CASES = [
    ("identity", {}, lambda x: x, None),
    ("sigmoid", {}, sig, torch.sigmoid),
    ("tanh", {}, lambda x: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x)), torch.tanh),
    ("relu", {}, lambda x: torch.where(x > 0, x, 0 * x), F.relu),
    ("leaky_relu", {}, lambda x: torch.where(x > 0, x, 0.01 * x), F.leaky_relu),
    ("leaky_relu", {"slope": 0.2}, lambda x: torch.where(x > 0, x, 0.2 * x), lambda x: F.leaky_relu(x, 0.2)),
    ("prelu", {}, lambda x: torch.where(x > 0, x, 0.25 * x), lambda x: F.prelu(x, x.new_full((1,), 0.25))),
    ("elu", {}, lambda x: torch.where(x > 0, x, torch.exp(x) - 1), F.elu),
    ("elu", {"alpha": 0.5}, lambda x: torch.where(x > 0, x, 0.5 * (torch.exp(x) - 1)),
     lambda x: F.elu(x, alpha=0.5)),
    ("selu", {}, lambda x: LAMBDA * torch.where(x > 0, x, ALPHA * (torch.exp(x) - 1)), F.selu),
    ("gelu", {}, lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2))), F.gelu),
    ("gelu", {"approximate": "tanh"},
     lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
     lambda x: F.gelu(x, approximate="tanh")),
    ("gelu_tanh", {}, lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
     lambda x: F.gelu(x, approximate="tanh")),
    ("swish", {"beta": 1.5}, lambda x: x * sig(1.5 * x), None),
    ("swish", {"beta": 0.5, "learnable": True}, lambda x: x * sig(0.5 * x), None),
    ("silu", {}, lambda x: x * sig(x), F.silu),
    ("mish", {}, lambda x: x * torch.tanh(softplus_ref(x)), F.mish),
    ("softplus", {}, softplus_ref, F.softplus),
    ("softplus", {"beta": 2.0, "threshold": 5.0}, lambda x: softplus_ref(x, 2.0, 5.0),
     lambda x: F.softplus(x, beta=2.0, threshold=5.0)),
    # alpha is a float32 parameter: its value is float32(0.9) also after .double()
    ("arelu", {}, lambda x: torch.where(x > 0, (1 + sig(torch.tensor(2.0).double())) * x,
                                        torch.tensor(0.9).double() * x), None),
    ("maxout", {}, lambda x: torch.maximum(x[..., 0::2], x[..., 1::2]), None),
    ("maxout", {"pieces": 4}, lambda x: x.reshape(*x.shape[:-1], 2, 4).max(-1).values, None),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" if o else n for n, o, _, _ in CASES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,options,formula,builtin", CASES, ids=IDS)
def test_against_formula_and_builtin(name, options, formula, builtin, dtype):
    act = get_activation(name, **options).to(dtype)
    x = inputs(dtype)
    y = act(x)
    assert y.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(y, formula(x.double()).to(dtype), **tol)
    if builtin is not None:
        torch.testing.assert_close(y, builtin(x), **tol)


@pytest.mark.parametrize("name,options,formula,builtin", CASES, ids=IDS)
def test_bfloat16_runs_and_stays_close(name, options, formula, builtin):
    x = inputs(torch.bfloat16)
    y = get_activation(name, **options)(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), formula(x.double()), rtol=2e-2, atol=2e-2)


def test_prelu_per_channel_against_builtin():
    act = get_activation("prelu", channels=8).double()
    with torch.no_grad():
        act.slope.copy_(torch.linspace(-0.5, 0.9, 8))
    x = inputs()[:4].reshape(2, 2, 8)
    want = F.prelu(x.reshape(-1, 8), act.slope.detach()).reshape(x.shape)  # torch: channels on dim 1
    torch.testing.assert_close(act(x), want)
    assert torch.all(get_activation("prelu").slope == 0.25)


def _check_gradients(act: nn.Module, x: torch.Tensor, **kw) -> None:
    """gradcheck with respect to the input and to every learned parameter."""
    act = act.double()
    names = [n for n, _ in act.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in act.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(act, dict(zip(names, ps)), (x,), kw)

    assert gradcheck(f, (x.requires_grad_(), *params))


@pytest.mark.parametrize("name,options", [(n, o) for n, o, _, _ in CASES], ids=IDS)
def test_gradcheck(name, options):
    _check_gradients(get_activation(name, **options), away_from_kinks((3, 8)))


def test_gradcheck_per_channel_and_aprelu():
    _check_gradients(get_activation("prelu", channels=4), away_from_kinks((3, 4)))
    _check_gradients(get_activation("aprelu", channels=4), away_from_kinks((2, 3, 4)))
    mask = torch.tensor([[True, True, False], [True, True, True]])
    _check_gradients(get_activation("aprelu", channels=4), away_from_kinks((2, 3, 4)), mask=mask)


def test_softplus_gradient_finite_above_threshold():
    x = torch.tensor([-100.0, 0.0, 19.0, 25.0, 1e4], requires_grad=True)
    get_activation("softplus")(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.sigmoid(x.detach()))
    x = torch.tensor([-1e4, 1e4], requires_grad=True)
    get_activation("elu")(x).sum().backward()
    assert torch.isfinite(x.grad).all()


# ---- AReLU


def test_arelu_defaults_and_slopes():
    act = get_activation("arelu")
    assert act.alpha.item() == pytest.approx(0.9) and act.beta.item() == 2.0
    x = torch.tensor([-2.0, -0.5, 0.5, 3.0])
    torch.testing.assert_close(act(x), torch.tensor([-1.8, -0.45, 0.5, 3.0]) * torch.tensor(
        [1, 1, 1 + 1 / (1 + math.exp(-2)), 1 + 1 / (1 + math.exp(-2))]))
    with torch.no_grad():
        act.beta.fill_(-1.0)
    assert act(torch.tensor([2.0])).item() == pytest.approx(2 * (1 + 1 / (1 + math.e)))


@pytest.mark.parametrize("alpha,slope", [(5.0, 0.99), (-1.0, 0.01), (0.3, 0.3)])
def test_arelu_clamps_negative_slope(alpha, slope):
    act = AReLU(alpha=alpha)
    assert act(torch.tensor([-2.0])).item() == pytest.approx(-2 * slope)


def test_arelu_keeps_its_slopes_in_search_and_follows_parameter_updates(monkeypatch):
    act = AReLU()
    computed = []
    plain = AReLU.positive_slope
    monkeypatch.setattr(AReLU, "positive_slope", lambda self: computed.append(1) or plain(self))
    x = torch.tensor([-2.0, 3.0])
    expected = torch.tensor([-1.8, 3.0 * (1 + 1 / (1 + math.exp(-2)))])
    with torch.inference_mode():  # search: computed once, then kept
        for _ in range(3):
            torch.testing.assert_close(act(x), expected)
    assert len(computed) == 1
    with torch.no_grad():  # an update in place is seen at the next call
        act.beta.fill_(-1.0)
    with torch.inference_mode():
        assert act(torch.tensor([2.0])).item() == pytest.approx(2 * (1 + 1 / (1 + math.e)))
    act.load_state_dict({"alpha": torch.tensor(0.5), "beta": torch.tensor(0.0)})
    with torch.inference_mode():
        torch.testing.assert_close(act(torch.tensor([-2.0, 2.0])), torch.tensor([-1.0, 3.0]))
    assert len(computed) == 3
    y = act(x.requires_grad_())  # with autograd: computed at every call, gradients reach the parameters
    y.sum().backward()
    assert act.beta.grad is not None and len(computed) == 4


# ---- APReLU


def aprelu_reference(act: APReLU, x: torch.Tensor, lengths=None) -> torch.Tensor:
    """Per sample, written out: pooled stats -> FC -> LayerNorm -> ReLU -> FC -> sigmoid."""
    def slopes(v):  # v: (time, C) real positions -> (C,)
        s = torch.cat([v.clamp(min=0).mean(0), v.clamp(max=0).mean(0)])
        h = F.linear(s, act.fc1.weight, act.fc1.bias)
        h = F.layer_norm(h, h.shape, act.norm.weight, act.norm.bias, act.norm.eps)
        return torch.sigmoid(F.linear(h.clamp(min=0), act.fc2.weight, act.fc2.bias))

    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            a = slopes(x[b, t][None] if lengths is None else x[b, :lengths[b]])
            out[b, t] = x[b, t].clamp(min=0) + a * x[b, t].clamp(max=0)
    return out


def test_aprelu_matches_reference_with_and_without_mask():
    torch.manual_seed(0)
    act = get_activation("aprelu", channels=6).double()
    x = torch.randn(3, 5, 6, dtype=torch.float64) * 2
    lengths = [5, 2, 3]
    mask = torch.arange(5)[None] < torch.tensor(lengths)[:, None]
    y = act(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, aprelu_reference(act, x))
    y = act(x, mask=mask)
    assert y.shape == x.shape
    torch.testing.assert_close(y, aprelu_reference(act, x, lengths))


def test_aprelu_slopes_differ_between_samples_and_positives_pass():
    torch.manual_seed(1)
    act = APReLU(channels=8)
    x = torch.randn(2, 8) * 3
    a = act.slopes(x)
    assert a.shape == (2, 8) and ((a > 0) & (a < 1)).all()
    assert (a[0] - a[1]).abs().max() > 1e-3
    y = act(x)
    assert torch.equal(y[x > 0], x[x > 0])
    torch.testing.assert_close(y[x < 0], (a * x)[x < 0])


def test_aprelu_padding_never_influences_real_positions():
    torch.manual_seed(2)
    act = APReLU(channels=4)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    y = act(x, mask=mask)
    x2 = x.clone()
    x2[0, 3:] = torch.tensor([100.0, -100.0, float("inf"), float("nan")])
    y2 = act(x2, mask=mask)
    assert torch.equal(y[:, :3], y2[:, :3]) and torch.equal(y[1], y2[1])
    # a real position does influence its sentence, and only its sentence
    x3 = x.clone()
    x3[0, 0] = -5.0
    y3 = act(x3, mask=mask)
    assert not torch.allclose(y[0, 1:3], y3[0, 1:3]) and torch.equal(y[1], y3[1])


def test_aprelu_without_mask_each_vector_is_independent():
    torch.manual_seed(3)
    act = APReLU(channels=4)
    x = torch.randn(2, 5, 4)
    x2 = x.clone()
    x2[0, 2] = torch.randn(4) * 10
    y, y2 = act(x), act(x2)
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[0, 2] = False
    assert torch.equal(y[keep], y2[keep])


def test_aprelu_sample_does_not_depend_on_batch():
    torch.manual_seed(4)
    act = APReLU(channels=4)
    x = torch.randn(3, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    torch.testing.assert_close(act(x, mask=mask)[1:2], act(x[1:2], mask=mask[1:2]))


def test_aprelu_shape_errors():
    act = APReLU(channels=4)
    with pytest.raises(ValueError, match="mask must broadcast to"):
        act(torch.randn(2, 5, 4), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must broadcast to"):
        act(torch.randn(2, 5, 4), mask=torch.ones(3, 2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        act(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"\(batch, T, C\)"):
        act.forward_causal(torch.randn(5, 4))


def test_aprelu_pooled_statistic_is_the_masked_mean():
    """s = [mean relu(x); mean min(x, 0)] over the real positions only, hand-computed; a mask that
    broadcasts (one source mask for every query of an attention scorer) pools the same way."""
    torch.manual_seed(7)
    act = APReLU(channels=3).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    s = act.pooled(x, mask)
    assert s.shape == (2, 1, 6)
    for b, n in enumerate([2, 4]):
        real = x[b, :n]
        want = [sum(max(float(real[t, c]), 0.0) for t in range(n)) / n for c in range(3)]
        want += [sum(min(float(real[t, c]), 0.0) for t in range(n)) / n for c in range(3)]
        assert s[b, 0].tolist() == pytest.approx(want, abs=1e-12)
    # (batch, queries, positions, C) with a (batch, 1, positions) mask: each query pools on its own
    x4 = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    s4 = act.pooled(x4, mask.unsqueeze(1))
    for q in range(3):
        torch.testing.assert_close(s4[:, q], act.pooled(x4[:, q], mask))
    torch.testing.assert_close(act(x4, mask.unsqueeze(1))[:, 1], act(x4[:, 1], mask))


def test_aprelu_causal_pools_over_the_steps_so_far_and_steps_agree():
    """forward_causal at step t = the masked form on steps 1..t; forward_step one step at a time
    (carrying the running pool) = forward_causal; later steps never change earlier ones."""
    torch.manual_seed(8)
    act = APReLU(channels=4).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64) * 2
    y = act.forward_causal(x)
    for t in range(5):
        torch.testing.assert_close(y[:, t], act(x[:, : t + 1], torch.ones(2, t + 1, dtype=torch.bool))[:, t])
    pool = None
    for t in range(5):
        y_t, pool = act.forward_step(x[:, t], pool)
        torch.testing.assert_close(y_t, y[:, t])
    assert pool.shape == (2, 9) and pool[:, -1].tolist() == [5.0, 5.0]
    x2 = x.clone()
    x2[:, 3:] = 100.0
    assert torch.equal(act.forward_causal(x2)[:, :3], y[:, :3])
    assert not torch.allclose(act.forward_causal(x2)[:, 3:], y[:, 3:])


def test_position_wise_activations_have_identical_decoder_forms():
    x = torch.randn(2, 3, 4)
    for name in ["tanh", "prelu", "maxout"]:
        act = get_activation(name, **({"channels": 4} if name == "prelu" else {}))
        torch.testing.assert_close(act.forward_causal(x), act(x))
        y, pool = act.forward_step(x[:, 0])
        torch.testing.assert_close(y, act(x[:, 0]))
        assert pool is None


# ---- maxout and the layer helpers


def test_maxout_layout_and_errors():
    y = Maxout()(torch.tensor([[1.0, 5.0, 3.0, 2.0]]))  # channel c's pieces are contiguous
    assert y.tolist() == [[5.0, 3.0]]
    x = torch.randn(2, 3, 12)
    y = get_activation("maxout", pieces=3)(x)
    assert y.shape == (2, 3, 4)
    torch.testing.assert_close(y, torch.stack([x[..., 3 * c:3 * c + 3].max(-1).values for c in range(4)], -1))
    with pytest.raises(ValueError, match="pieces=3.*multiple of 3.*10"):
        Maxout(pieces=3)(torch.randn(2, 10))
    with pytest.raises(ConfigError, match="pieces"):
        get_activation("maxout", pieces=0)


def test_activated_linear():
    torch.manual_seed(5)
    layer = ActivatedLinear(6, 4, "maxout", pieces=3)
    assert layer.linear.out_features == 12
    x = torch.randn(2, 3, 6)
    y = layer(x)
    assert y.shape == (2, 3, 4)
    torch.testing.assert_close(y, layer.linear(x).reshape(2, 3, 4, 3).amax(-1))
    assert ActivatedLinear(6, 4, "relu").linear.out_features == 4
    assert ActivatedLinear(6, 4, "prelu").activation.slope.shape == (4,)
    # mask reaches APReLU
    layer = ActivatedLinear(6, 4, "aprelu")
    mask = torch.tensor([[True, True, False], [True, False, False]])
    h = layer.linear(x)
    torch.testing.assert_close(layer(x, mask=mask), layer.activation(h, mask=mask))
    assert not torch.allclose(layer(x, mask=mask), layer(x))


def test_selu_layer_is_lecun_normal_with_alpha_dropout():
    torch.manual_seed(6)
    layer = ActivatedLinear(400, 300, "selu")
    w = layer.linear.weight
    assert w.std().item() == pytest.approx(1 / math.sqrt(400), rel=0.03)
    assert abs(w.mean().item()) < 2e-3 and torch.all(layer.linear.bias == 0)
    assert isinstance(make_dropout("selu", 0.1), nn.AlphaDropout)
    d = make_dropout("relu", 0.3)
    assert type(d) is Dropout and d.p == 0.3


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_drops_at_rate_p_and_scales_survivors(p, dtype, kernels):
    """nn.Dropout (reference) and its CPU twin nmt.kernels.dropout (auto)."""
    torch.manual_seed(0)
    drop = Dropout(p, kernels).train()
    x = torch.full((400, 500), 3.0, dtype=dtype, requires_grad=True)
    y = drop(x)
    dropped = (y == 0).double().mean().item()
    # 200k Bernoulli(p) draws: 5 standard deviations
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
    kept = y[y != 0]
    assert torch.allclose(kept.float(), torch.full_like(kept.float(), 3.0 / (1 - p)), rtol=1e-2)
    y.float().sum().backward()  # the gradient goes through the same mask
    assert torch.equal(x.grad == 0, y == 0)
    assert torch.allclose(x.grad[y != 0].float(), torch.full_like(kept.float(), 1 / (1 - p)), rtol=1e-2)
    # neighbouring elements (the four 16-bit lanes of one draw) are independent: no lane is biased
    lanes = (y == 0).view(-1, 4).double().mean(0)
    assert torch.all((lanes - p).abs() < 5 * math.sqrt(p * (1 - p) / (x.numel() / 4)))


def test_dropout_is_identity_in_eval_and_reproducible_by_seed(kernels):
    x = torch.randn(7, 33)
    drop = Dropout(0.3, kernels)
    assert torch.equal(drop.eval()(x), x)
    drop.train()
    torch.manual_seed(5)
    first = drop(x)
    torch.manual_seed(5)
    assert torch.equal(drop(x), first)
    assert not torch.equal(drop(x), first)  # the generator moved on
    assert torch.equal(Dropout(0.0, kernels).train()(x), x)
    assert torch.count_nonzero(Dropout(1.0, kernels).train()(x)) == 0


def test_activation_parameters():
    model = nn.Sequential(ActivatedLinear(3, 2, "arelu"), ActivatedLinear(2, 2, "prelu"), AReLU(alpha=5.0))
    params = activation_parameters(model)
    assert params["0.activation"]["alpha"] == pytest.approx(0.9)
    assert params["0.activation"]["positive_slope"] == pytest.approx(1 + 1 / (1 + math.exp(-2)))
    assert params["2"]["negative_slope"] == pytest.approx(0.99)
    assert params["1.activation"]["slope"] == [0.25, 0.25]


# ---- registry


def test_registry_entries():
    reg = available_activations()
    for name in ["identity", "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu",
                 "gelu_tanh", "swish", "silu", "mish", "softplus", "maxout", "arelu", "aprelu"]:
        assert name in reg
    for name, spec in reg.items():
        assert spec.description and "\n" not in spec.description and spec.paper
        act = spec.example()  # plotting: defaults, channels=1 where needed
        assert isinstance(act, Activation)
        x = torch.linspace(-3, 3, 2 * 7).reshape(7, 2)[:, :1] if name != "maxout" else torch.randn(7, 2)
        assert act(x, mask=None).shape == (7, 1)
    assert [n for n, s in reg.items() if s.needs_channels] == ["aprelu"]
    assert [n for n, s in reg.items() if s.self_normalizing] == ["selu"]
    assert reg["maxout"].width_factor(pieces=3) == 3 and reg["maxout"].width_factor() == 2
    assert reg["gelu"].width_factor() == 1
    assert "relu" in ", ".join(reg)  # nmt.config joins the names into its message


def test_unknown_name_and_bad_options():
    with pytest.raises(ConfigError, match=r"unknown activation 'gleu'; did you mean 'gelu'\?.*available: .*arelu"):
        get_activation("gleu")
    with pytest.raises(ConfigError, match="did you mean 'aprelu'"):
        ActivatedLinear(3, 2, "apprelu")
    with pytest.raises(ConfigError, match="channels="):
        get_activation("aprelu")
    with pytest.raises(ConfigError, match="unknown option.*pieces.*slope"):
        get_activation("leaky_relu", pieces=2)
    with pytest.raises(ConfigError, match="relu.*unknown option.*slope.*its options: none"):
        get_activation("relu", slope=0.1)
    with pytest.raises(ConfigError, match="approximate"):
        get_activation("gelu", approximate="fast")
    with pytest.raises(ConfigError, match="beta"):
        get_activation("softplus", beta=0)


def test_aprelu_runs_with_bf16_linear_layers():
    """Inference turns Linear layers into bfloat16 ones (``--precision bf16``); APReLU's
    subnetwork then still runs, its sums in the LayerNorm's float32."""
    import copy

    torch.manual_seed(9)
    layer = ActivatedLinear(4, 6, "aprelu").eval()
    x = torch.randn(2, 3, 4)
    want = layer.forward_causal(x)
    bf16 = copy.deepcopy(layer)
    for module in bf16.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, pool = bf16.forward_step(x[:, 0])
    assert pool.dtype == torch.float32
    torch.testing.assert_close(y.float(), want[:, 0], atol=0.05, rtol=0.05)
