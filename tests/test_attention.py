"""Attention kinds: masking, normalisation, step-wise == batched, precompute, reference formulas."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nmt.errors import NmtError
from nmt.model.attention import (
    ATTENTION_KINDS,
    AttentionError,
    LocalPAttention,
    MultiHeadAttention,
    SelfAttentionLayer,
    build_attention,
    masked_softmax,
)

Q_DIM, K_DIM = 8, 6  # deliberately different: only luong-dot (and local-p with dot) need them equal
LENGTHS = (1, 7, 13)  # very different lengths, one sentence of a single token
TGT_LEN = 5

# (test id, build_attention kwargs); every kind and every local-p score
KINDS = [
    ("bahdanau", dict(kind="bahdanau", hidden_size=10)),
    ("luong-dot", dict(kind="luong-dot")),
    ("luong-general", dict(kind="luong-general")),
    ("luong-concat", dict(kind="luong-concat", hidden_size=10)),
    ("local-p-dot", dict(kind="local-p", score="dot", window=2)),
    ("local-p-general", dict(kind="local-p", score="general", window=3)),
    ("local-p-concat", dict(kind="local-p", score="concat", window=2, hidden_size=10)),
]
IDS = [k for k, _ in KINDS]


def key_dim(cfg: dict) -> int:
    return Q_DIM if cfg.get("score") == "dot" or cfg["kind"] == "luong-dot" else K_DIM


def make(cfg: dict, seed: int = 0, kernels: str = "auto"):
    torch.manual_seed(seed)
    return build_attention(query_dim=Q_DIM, key_dim=key_dim(cfg), kernels=kernels, **cfg).double().eval()


def batch(kdim: int, lengths=LENGTHS, tgt_len=TGT_LEN, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    src_len = max(lengths)
    query = torch.randn(len(lengths), tgt_len, Q_DIM, generator=gen, dtype=torch.float64)
    keys = torch.randn(len(lengths), src_len, kdim, generator=gen, dtype=torch.float64)
    values = torch.randn(len(lengths), src_len, kdim, generator=gen, dtype=torch.float64)
    mask = torch.arange(src_len)[None, :] < torch.tensor(lengths)[:, None]
    return query, keys, values, mask


def is_local(cfg: dict) -> bool:
    return cfg["kind"] == "local-p"


# --------------------------------------------------------------------------------------------------
# Properties every kind must have
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [c for _, c in KINDS], ids=IDS)
def test_weights_normalised_and_exactly_zero_on_padding(cfg, kernels):
    attn = make(cfg, kernels=kernels)
    query, keys, values, mask = batch(key_dim(cfg))
    context, weights = attn(query, keys, values, mask)
    assert context.shape == (3, TGT_LEN, key_dim(cfg))
    assert weights.shape == (3, TGT_LEN, max(LENGTHS))
    pad = ~mask.unsqueeze(1).expand_as(weights)
    assert (weights[pad] == 0).all()
    assert (weights >= 0).all()
    sums = weights.sum(-1)
    if is_local(cfg):  # Gaussian-scaled, not renormalised: sum <= 1 (and > 0: window never empty)
        assert (sums <= 1 + 1e-12).all() and (sums > 0).all()
        # the single-token sentence: p_t = 0 exactly, so its only weight is 1 · exp(0) = 1
        torch.testing.assert_close(weights[0, :, 0], torch.ones(TGT_LEN, dtype=torch.float64))
    else:
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-12)
    torch.testing.assert_close(context, weights @ values)


@pytest.mark.parametrize("cfg", [c for _, c in KINDS], ids=IDS)
def test_padded_keys_and_values_change_nothing(cfg, kernels):
    attn = make(cfg, kernels=kernels)
    query, keys, values, mask = batch(key_dim(cfg))
    context, weights = attn(query, keys, values, mask)
    pad = ~mask.unsqueeze(-1)
    keys2 = torch.where(pad, 100 * torch.randn_like(keys), keys)
    values2 = torch.where(pad, -100 * torch.randn_like(values), values)
    assert not torch.equal(keys, keys2) and not torch.equal(values, values2)  # the test does test
    context2, weights2 = attn(query, keys2, values2, mask)
    torch.testing.assert_close(weights2, weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(context2, context, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cfg", [c for _, c in KINDS], ids=IDS)
def test_step_by_step_equals_all_at_once(cfg, kernels):
    attn = make(cfg, kernels=kernels)
    query, keys, values, mask = batch(key_dim(cfg))
    proj = attn.precompute(keys)
    context, weights = attn(query, keys, values, mask, proj_keys=proj)
    positions = attn.last_positions if is_local(cfg) else None
    steps = [attn(query[:, t:t + 1], keys, values, mask, proj_keys=proj) for t in range(TGT_LEN)]
    torch.testing.assert_close(torch.cat([c for c, _ in steps], 1), context, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([w for _, w in steps], 1), weights, rtol=0, atol=1e-12)
    if positions is not None:
        assert positions.shape == (3, TGT_LEN)
        assert attn.last_positions.shape == (3, 1)
        torch.testing.assert_close(attn.last_positions[:, 0], positions[:, -1])


@pytest.mark.parametrize("cfg", [c for _, c in KINDS], ids=IDS)
def test_precompute_path_equals_plain_path(cfg, kernels):
    attn = make(cfg, kernels=kernels)
    query, keys, values, mask = batch(key_dim(cfg))
    plain = attn(query, keys, values, mask)
    # values differ from keys here: the projection is of the keys alone
    pre = attn(query, keys, values, mask, proj_keys=attn.precompute(keys))
    for a, b in zip(plain, pre):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # the decoder's case: values are the keys, precompute(keys) alone
    plain = attn(query, keys, keys, mask)
    pre = attn(query, keys, keys, mask, proj_keys=attn.precompute(keys))
    for a, b in zip(plain, pre):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # the projection is one tensor (or None) so the decoder can reorder it for beam search
    proj = attn.precompute(keys)
    assert proj is None or (isinstance(proj, torch.Tensor) and proj.shape[:2] == keys.shape[:2])


@pytest.mark.parametrize("cfg", [c for _, c in KINDS], ids=IDS)
def test_bf16_autocast_shapes_and_float32_softmax(cfg):
    torch.manual_seed(0)
    attn = build_attention(query_dim=Q_DIM, key_dim=key_dim(cfg), **cfg).eval()
    query, keys, values, mask = (t.float() if t.is_floating_point() else t
                                 for t in batch(key_dim(cfg), lengths=(1, 7, 300)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        context, weights = attn(query, keys, values, mask, proj_keys=attn.precompute(keys))
    assert context.shape == (3, TGT_LEN, key_dim(cfg)) and torch.isfinite(context).all()
    assert weights.shape == (3, TGT_LEN, 300) and weights.dtype == torch.float32
    assert (weights[~mask.unsqueeze(1).expand_as(weights)] == 0).all()
    if is_local(cfg):
        # positions beyond 256 survive (bf16 would round them to even numbers)
        assert attn.last_positions.dtype == torch.float32
        assert (attn.last_positions[2] <= 299).all()
    else:
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, TGT_LEN), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Reference formulas, from each module's own weights
# --------------------------------------------------------------------------------------------------


def reference_softmax(scores, mask):
    """Masked softmax written out: exp over real tokens / its sum, 0 on padding."""
    e = torch.exp(scores - scores.max()) * mask.unsqueeze(1)
    return e / e.sum(-1, keepdim=True)


def test_masked_softmax_fully_masked_row_is_zero_not_nan():
    scores = torch.randn(2, 3, 4)
    allowed = torch.tensor([[True, False, True, False], [False] * 4]).unsqueeze(1)
    w = masked_softmax(scores, allowed)
    assert torch.isfinite(w).all() and (w[1] == 0).all() and (w[0][:, [1, 3]] == 0).all()
    torch.testing.assert_close(w[0].sum(-1), torch.ones(3))


@pytest.mark.parametrize("kind", ["bahdanau", "luong-concat"])
@pytest.mark.parametrize("activation,fn", [("tanh", torch.tanh), ("relu", F.relu)])
def test_additive_score_matches_einsum(kind, activation, fn, kernels):
    attn = make(dict(kind=kind, hidden_size=10, activation=activation), kernels=kernels)
    query, keys, values, mask = batch(K_DIM)
    w_q, w_k, b_k = attn.query_proj.weight, attn.key_proj.weight, attn.key_proj.bias
    v = attn.v.weight[0]
    # score[b, t, s] = Σ_h v_h act((W_q q_bt)_h + (W_k k_bs)_h + b_h)
    pre = (torch.einsum("hq,btq->bth", w_q, query)[:, :, None, :]
           + torch.einsum("hk,bsk->bsh", w_k, keys)[:, None, :, :] + b_k)
    expected = torch.einsum("h,btsh->bts", v, fn(pre))
    with torch.no_grad():
        torch.testing.assert_close(attn.score(query, keys, attn.precompute(keys)), expected)
        context, weights = attn(query, keys, values, mask)
    torch.testing.assert_close(weights, reference_softmax(expected, mask))
    torch.testing.assert_close(context, torch.einsum("bts,bsk->btk", weights, values))


@pytest.mark.parametrize("kind", ["bahdanau", "luong-concat"])
def test_tanh_by_sigmoid_equals_the_tanh_equation_in_float64(kind):
    """The fast twin (kernels.additive_tanh_score, auto) against the plain score (reference) of the
    same weights, values and gradients."""
    fast, plain = make(dict(kind=kind, hidden_size=10), kernels="auto"), make(dict(kind=kind, hidden_size=10),
                                                                             kernels="reference")
    query, keys, _, _ = batch(K_DIM)
    query.requires_grad_()
    results = []
    for attn in (fast, plain):
        scores = attn.score(query, keys, attn.precompute(keys))
        results.append((scores, torch.autograd.grad(scores.square().sum(), [query, *attn.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-12)
    for g, e in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_tanh_score_keeps_its_precision_under_bf16_autocast():
    """tanh runs as 2σ(2a) - 1 (faster on CPU); with a large Σv the constant must be subtracted
    before the bf16 result is rounded, or scores lose their low bits (measured: 0.14 instead of 0.02 here)."""
    torch.manual_seed(0)
    attn = make(dict(kind="bahdanau", hidden_size=256, activation="tanh"), kernels="auto").float()
    with torch.no_grad():
        attn.v.weight.fill_(0.25)  # Σv = 64, while each score stays within a few units
        attn.query_proj.weight.mul_(0.05)
        attn.key_proj.weight.mul_(0.05)
    query, keys = (x.float() for x in batch(K_DIM)[:2])
    with torch.no_grad():
        exact = attn.score(query, keys, attn.precompute(keys))
        pre = (query @ attn.query_proj.weight.T)[:, :, None, :] + attn.key_proj(keys)[:, None, :, :]
        torch.testing.assert_close(exact, torch.tanh(pre) @ attn.v.weight[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = attn.score(query, keys, attn.precompute(keys)).float()
    assert exact.abs().max() < 8
    assert (low - exact).abs().max() < 0.05  # measured 0.019; 0.14 without the bias trick


@pytest.mark.parametrize("kind", ["bahdanau", "luong-concat"])
def test_additive_score_with_maxout_widens_projections(kind):
    attn = make(dict(kind=kind, hidden_size=4, activation="maxout"))  # maxout's default: 2 pieces
    assert attn.query_proj.weight.shape == (8, Q_DIM) and attn.key_proj.weight.shape == (8, K_DIM)
    query, keys, values, mask = batch(K_DIM)
    pre = (torch.einsum("hq,btq->bth", attn.query_proj.weight, query)[:, :, None, :]
           + torch.einsum("hk,bsk->bsh", attn.key_proj.weight, keys)[:, None, :, :] + attn.key_proj.bias)
    hidden = pre.unflatten(-1, (4, 2)).amax(-1)  # max over 2 consecutive pieces per scorer unit
    expected = torch.einsum("h,btsh->bts", attn.v.weight[0], hidden)
    with torch.no_grad():
        _, weights = attn(query, keys, values, mask)
    torch.testing.assert_close(weights, reference_softmax(expected, mask))


@pytest.mark.parametrize("activation", ["prelu", "aprelu"])
def test_additive_score_with_per_channel_activation(activation):
    attn = make(dict(kind="bahdanau", hidden_size=10, activation=activation))
    query, keys, values, mask = batch(K_DIM)
    _, weights = attn(query, keys, values, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, TGT_LEN, dtype=torch.float64))
    steps = [attn(query[:, t:t + 1], keys, values, mask)[1] for t in range(TGT_LEN)]
    torch.testing.assert_close(torch.cat(steps, 1), weights, rtol=0, atol=1e-12)


def test_general_score_matches_einsum():
    attn = make(dict(kind="luong-general"))
    query, keys, values, mask = batch(K_DIM)
    expected = torch.einsum("btq,qk,bsk->bts", query, attn.key_proj.weight, keys)  # qᵀ W k
    with torch.no_grad():
        context, weights = attn(query, keys, values, mask)
    torch.testing.assert_close(weights, reference_softmax(expected, mask))
    torch.testing.assert_close(context, torch.einsum("bts,bsk->btk", weights, values))


def test_dot_score_matches_einsum():
    attn = make(dict(kind="luong-dot"))
    query, keys, values, mask = batch(Q_DIM)
    expected = torch.einsum("btd,bsd->bts", query, keys)
    context, weights = attn(query, keys, values, mask)
    torch.testing.assert_close(weights, reference_softmax(expected, mask))
    torch.testing.assert_close(context, torch.einsum("bts,bsk->btk", weights, values))


def mha_reference(attn: MultiHeadAttention, x, mask):
    """softmax(Q Kᵀ / √d_k) V per head, concatenated, then W_o; straight from the weights."""
    q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias)
    k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias)
    v = F.linear(x, attn.v_proj.weight, attn.v_proj.bias)
    heads, d_k = attn.heads, attn.head_dim
    outs, maps = [], []
    for h in range(heads):
        sl = slice(h * d_k, (h + 1) * d_k)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d_k)
        allowed = mask.unsqueeze(1).expand_as(scores)
        a = torch.where(allowed, scores, torch.tensor(float("-inf"), dtype=scores.dtype)).softmax(-1)
        maps.append(a)
        outs.append(a @ v[..., sl])
    return F.linear(torch.cat(outs, -1), attn.out_proj.weight, attn.out_proj.bias), torch.stack(maps, 1)


def self_attention_batch(d_model: int, lengths=LENGTHS, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), d_model, generator=gen, dtype=torch.float64)
    return x, torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]


def test_multihead_one_head_is_scaled_dot_product():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, heads=1).double().eval()
    x, mask = self_attention_batch(8)
    context, weights = attn(x, mask)
    exp_context, exp_maps = mha_reference(attn, x, mask)
    torch.testing.assert_close(weights, exp_maps[:, 0])
    torch.testing.assert_close(context, exp_context)


def test_multihead_per_head_weights_and_average():
    torch.manual_seed(0)
    attn = MultiHeadAttention(12, heads=3).double().eval()
    x, mask = self_attention_batch(12)
    context, head_weights = attn(x, mask, need_head_weights=True)
    _, mean_weights = attn(x, mask)
    assert head_weights.shape == (3, 3, max(LENGTHS), max(LENGTHS))
    exp_context, exp_maps = mha_reference(attn, x, mask)
    torch.testing.assert_close(head_weights, exp_maps)
    torch.testing.assert_close(mean_weights, exp_maps.mean(1))
    torch.testing.assert_close(context, exp_context)


# --------------------------------------------------------------------------------------------------
# local-p
# --------------------------------------------------------------------------------------------------


def test_local_p_no_weight_outside_window_and_positions_use_true_length():
    attn = make(dict(kind="local-p", score="general", window=2))
    query, keys, values, mask = batch(K_DIM, tgt_len=20)
    _, weights = attn(query, keys, values, mask)
    p = attn.last_positions
    assert p.shape == (3, 20)
    s = torch.arange(13, dtype=torch.float64)
    outside = (s - p.unsqueeze(-1)).abs() > 2
    assert outside.any() and (weights[outside] == 0).all()
    last = torch.tensor(LENGTHS, dtype=torch.float64).unsqueeze(-1) - 1
    assert ((p >= 0) & (p <= last)).all()
    torch.testing.assert_close(attn.predict_positions(query, mask), p)
    # saturate the predictor: p_t must reach each sentence's *own* last real token, not src_len - 1
    with torch.no_grad():
        attn.position_proj.weight.copy_(torch.eye(Q_DIM))
        attn.position_v.weight.fill_(1e4)
    ones = torch.ones(3, 1, Q_DIM, dtype=torch.float64)  # logit = 1e4 · 8 · tanh(1) -> σ = 1
    torch.testing.assert_close(attn.predict_positions(ones, mask), last, rtol=0, atol=1e-9)
    torch.testing.assert_close(attn.predict_positions(-ones, mask), torch.zeros_like(last),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("length,p_t,window", [
    (8, 3.5, {2: 0.0, 3: 1.0, 4: 2.0, 5: 0.5}),            # p_t = 7 · σ(0) = 3.5: s ∈ [1.5, 5.5]
    (9, 4.0, {2: 0.0, 3: 1.0, 4: 2.0, 5: 0.5, 6: -1.0}),   # p_t = 8 · σ(0) = 4: both edges s = 2, 6 in
])
def test_local_p_hand_checked_case(length, p_t, window):
    """v_p = 0 so σ(·) = 0.5 and p_t = (S - 1) / 2; D = 2, σ = D/2 = 1; source padded to 10."""
    attn = LocalPAttention(query_dim=2, key_dim=2, window=2, score="dot").double()
    with torch.no_grad():
        attn.position_v.weight.zero_()
    query = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)                   # q = e_0
    keys = torch.full((1, 10, 2), 9.0, dtype=torch.float64)                     # q·k_s = 9 outside
    for s, score in window.items():
        keys[0, s, 0] = score
    values = torch.randn(1, 10, 2, dtype=torch.float64)
    mask = torch.arange(10).unsqueeze(0) < length
    context, weights = attn(query, keys, values, mask)
    assert attn.last_positions.item() == pytest.approx(p_t)
    z = sum(math.exp(v) for v in window.values())
    expected = [0.0] * 10
    for s, score in window.items():  # softmax over the window × exp(-(s - p)² / (2σ²))
        expected[s] = math.exp(score) / z * math.exp(-((s - p_t) ** 2) / 2)
    torch.testing.assert_close(weights[0, 0], torch.tensor(expected, dtype=torch.float64))
    assert weights.sum().item() < 1  # not renormalised
    torch.testing.assert_close(context, weights @ values)


def test_local_p_positions_are_trainable():
    attn = make(dict(kind="local-p", score="general", window=3))
    query, keys, values, mask = batch(K_DIM)
    context, _ = attn(query, keys, values, mask)
    context.square().sum().backward()
    assert attn.position_proj.weight.grad.abs().sum() > 0
    assert attn.position_v.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------
# Self-attention encoder block
# --------------------------------------------------------------------------------------------------


def test_self_attention_layer_padding_does_not_leak():
    torch.manual_seed(0)
    layer = SelfAttentionLayer(8, heads=2, ff_size=16, dropout=0.1, activation="relu").double().eval()
    mask = torch.arange(13)[None, :] < torch.tensor(LENGTHS)[:, None]
    x = torch.randn(3, 13, 8, dtype=torch.float64)
    y, head_weights = layer(x, mask)
    assert y.shape == x.shape and head_weights.shape == (3, 2, 13, 13)
    assert torch.isfinite(y).all() and (y[~mask] == 0).all()
    x2 = torch.where(mask.unsqueeze(-1), x, 1e3 * torch.randn_like(x))
    y2, head_weights2 = layer(x2, mask)
    torch.testing.assert_close(y2[mask], y[mask], rtol=0, atol=1e-12)
    real = mask[:, None, :, None] & mask[:, None, None, :]
    torch.testing.assert_close(head_weights2 * real, head_weights * real, rtol=0, atol=1e-12)
    assert (y[mask] != x[mask]).any()  # the block does something
    # a real position's output really depends on the other real positions (attention is live)
    x3 = x.clone()
    x3[2, 5] += torch.randn(8, dtype=torch.float64)  # not a constant shift: LayerNorm removes those
    y3, _ = layer(x3, mask)
    assert not torch.allclose(y3[2, 6], y[2, 6])


# --------------------------------------------------------------------------------------------------
# Builder errors
# --------------------------------------------------------------------------------------------------


def test_unknown_kind_suggests_closest():
    with pytest.raises(AttentionError, match=r"'bahdanu'.*did you mean 'bahdanau'") as info:
        build_attention("bahdanu", 8, 8)
    assert isinstance(info.value, NmtError) and isinstance(info.value, ValueError)
    assert "luong-general" in str(info.value)  # lists the choices
    with pytest.raises(AttentionError, match="did you mean 'luong-general'"):
        build_attention("luong_general", 8, 8)


def test_local_p_needs_window():
    with pytest.raises(AttentionError, match="window"):
        build_attention("local-p", 8, 8)
    with pytest.raises(AttentionError, match="window"):
        build_attention("local-p", 8, 8, window=0)


def test_dot_needs_matching_sizes():
    with pytest.raises(AttentionError, match=r"8 vs .* 6"):
        build_attention("luong-dot", 8, 6)
    with pytest.raises(AttentionError, match=r"8 vs .* 6"):
        build_attention("local-p", 8, 6, score="dot", window=3)
    with pytest.raises(AttentionError, match="did you mean 'dot'"):
        build_attention("local-p", 8, 8, score="dott", window=3)


def test_multihead_heads_must_divide():
    with pytest.raises(AttentionError, match="divide"):
        MultiHeadAttention(6, heads=4)


def test_builder_kinds_are_the_recipe_kinds():
    """build_attention accepts exactly the kinds model.attention.kind does (multi-head attention
    serves the encoder's self-attention blocks, not the decoder)."""
    import typing

    from nmt.config import AttentionConfig

    recipe_kinds = typing.get_args(typing.get_type_hints(AttentionConfig)["kind"])
    assert ATTENTION_KINDS == recipe_kinds
    with pytest.raises(AttentionError, match="unknown attention kind 'multihead'"):
        build_attention("multihead", 8, 8)
