"""The encoder–decoder: packing, step-wise vs teacher-forced equivalence, losses, learning."""
import pytest
import torch
import torch.nn.functional as F

from nmt.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt.model.seq2seq import build_model

BOS, EOS, PAD = 2, 3, 0
KINDS = [("bahdanau", True), ("luong-general", True), ("luong-general", False), ("luong-concat", True),
         ("local-p", True), ("luong-dot", False)]
#: APReLU in the readout / attentional vector (pooled over the steps so far) and in the scorer
APRELU = [("bahdanau", True, "aprelu"), ("luong-concat", True, "aprelu"), ("luong-general", False, "aprelu")]


def step(model, prev, state, memory):
    """One decoding step as search takes it, normalised: log-probs (batch, V) and the StepOutput."""
    logits, out = model.step_logits(prev, state, memory)
    return F.log_softmax(logits.float(), dim=-1), out


def batch(lengths, vocab=17, tgt_lengths=None, vocab_t=19, seed=1):
    g = torch.Generator().manual_seed(seed)
    B, S = len(lengths), max(lengths)
    src = torch.zeros(B, S, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(4, vocab, (n,), generator=g)
        src[i, n - 1] = EOS
    tgt_lengths = tgt_lengths or [n + 1 for n in lengths]
    T = max(tgt_lengths)
    tgt_out = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(tgt_lengths):
        tgt_out[i, :n] = torch.randint(4, vocab_t, (n,), generator=g)
        tgt_out[i, n - 1] = EOS
    tgt_in = torch.cat([torch.full((B, 1), BOS), tgt_out[:, :-1]], dim=1)
    tgt_in[tgt_out == PAD] = PAD
    return (src, torch.tensor(lengths), src != PAD, tgt_in, tgt_out, tgt_out != PAD)


@pytest.mark.parametrize("kind,feed,activation", [k + ("tanh",) for k in KINDS] + APRELU)
def test_teacher_forced_loss_equals_sum_of_step_losses(kind, feed, activation, tiny_model, kernels):
    model = tiny_model(kind, feed, activation=activation, attention_activation=activation, kernels=kernels)
    src, lens, smask, tgt_in, tgt_out, tmask = batch([5, 2, 7])
    with torch.no_grad():
        loss_sum, nll_sum = model(src, lens, smask, tgt_in, tgt_out, tmask)
        state, memory = model.start(model.encode(src, lens, smask))
        total = 0.0
        for t in range(tgt_in.size(1)):
            log_probs, out = step(model, tgt_in[:, t], state, memory)
            state = out.state
            assert (state.pool is not None) == (activation == "aprelu")  # the readout's running pool
            nll = -log_probs.gather(1, tgt_out[:, t:t + 1]).squeeze(1)
            total += float((nll * tmask[:, t]).sum())
    assert float(nll_sum) == pytest.approx(total, rel=1e-5)
    assert float(loss_sum) == pytest.approx(total, rel=1e-5)  # no label smoothing


@pytest.mark.parametrize("kind,feed", KINDS)
def test_step_attention_equals_teacher_forced_attention(kind, feed, tiny_model, kernels):
    model = tiny_model(kind, feed, kernels=kernels)
    src, lens, smask, tgt_in, tgt_out, tmask = batch([4, 6])
    with torch.no_grad():
        _, weights = model.teacher_force(src, lens, smask, tgt_in)
        state, memory = model.start(model.encode(src, lens, smask))
        for t in range(tgt_in.size(1)):
            _, out = step(model, tgt_in[:, t], state, memory)
            state = out.state
            torch.testing.assert_close(out.attention, weights[:, t], rtol=1e-5, atol=1e-6)
    assert torch.all(weights[~smask.unsqueeze(1).expand_as(weights)] == 0)


@pytest.mark.parametrize("activation,fold,tied", [("tanh", True, False), ("arelu", True, False),
                                                  ("maxout", True, False), ("tanh", False, False),
                                                  ("aprelu", True, False), ("arelu", True, True)])
def test_search_step_equals_step_with_beams_sharing_the_memory(activation, fold, tied, tiny_model):
    """The fast search step (kernels.search: context weights applied to the keys, embedding tables,
    one memory row per sentence for its K beams) computes what the plain step computes on per-beam
    memory; with tied embeddings too (the tables and the output layer read one weight)."""
    model = tiny_model("bahdanau", activation=activation, attention_activation=activation,
                       tied_embeddings=tied)
    assert (model.output.weight is model.tgt_embed.weight) == tied
    src, lens, smask, tgt_in, _, _ = batch([5, 2, 7])
    K = 3
    rows = torch.arange(3).repeat_interleave(K)
    with torch.inference_mode():
        tables = model.search_tables()
        enc = model.encode(src, lens, smask)
        plain_state, plain_memory = model.start(enc)
        search_state, search_memory = model.start(enc, tables, fold_context=fold)
        assert (search_memory.folded is not None) == fold and plain_memory.folded is None
        plain_state, plain_memory = plain_state.select(rows), plain_memory.select(rows)
        search_state = search_state.select(rows)
        g = torch.Generator().manual_seed(3)
        for t in range(4):
            prev = torch.randint(4, 19, (3 * K,), generator=g)
            want_logits, want = model.step_logits(prev, plain_state, plain_memory)
            got_logits, got = model.step_logits(prev, search_state, search_memory, tables=tables)
            torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got.attention, want.attention, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got.state.hidden, want.state.hidden, rtol=1e-5, atol=1e-6)
            # beams diverge: reorder the rows of the state, as beam search does
            order = (torch.arange(3).repeat_interleave(K) * K + torch.randint(0, K, (3 * K,), generator=g))
            plain_state, search_state = want.state.select(order), got.state.select(order)


def test_search_tables_only_under_auto_in_eval_without_autograd(tiny_model):
    """``reference`` searches with the plain step; tables are never built where autograd records."""
    model = tiny_model("bahdanau")
    with torch.inference_mode():
        assert model.search_tables() is not None
        assert tiny_model("bahdanau", kernels="reference").search_tables() is None
        assert tiny_model("luong-general").search_tables() is None  # no fast step for Luong
    assert model.search_tables() is None  # autograd on
    with torch.inference_mode():
        assert model.train().search_tables() is None


@pytest.mark.parametrize("kind,feed,layers", [("bahdanau", True, 1), ("bahdanau", True, 2),
                                              ("luong-general", False, 1), ("luong-concat", True, 1),
                                              ("luong-dot", False, 2), ("local-p", True, 1)])
def test_auto_equals_reference_in_float64_with_gradients(kind, feed, layers, tiny_model):
    """The whole training objective: every fast twin that applies (GRU scan, Bahdanau recurrence,
    tanh by sigmoid, fused loss) against the plain equations, values and gradients to 1e-10."""
    fast = tiny_model(kind, feed, layers=layers).double().train()
    plain = tiny_model(kind, feed, layers=layers, kernels="reference").double().train()
    _assert_same_objective(fast, plain)


@pytest.mark.parametrize("kind,feed,shared", [("bahdanau", True, False), ("bahdanau", True, True),
                                              ("luong-general", False, False), ("luong-concat", True, True)])
def test_tied_embeddings_fast_training_equals_plain(kind, feed, shared, tiny_model):
    """Tied output and target embeddings (and with ``shared_embeddings`` the source's too): the
    readout is sized to the embeddings, one weight gets the gradients of all its uses, and the
    fast twins (fused loss, Bahdanau recurrence, GRU scan) equal the plain equations."""
    fields = dict(tied_embeddings=True, shared_embeddings=shared, src_vocab=19 if shared else 17)
    fast = tiny_model(kind, feed, **fields).double().train()
    plain = tiny_model(kind, feed, kernels="reference", **fields).double().train()
    assert fast.output.weight is fast.tgt_embed.weight
    assert (fast.src_embed.weight is fast.tgt_embed.weight) == shared
    assert fast.output.in_features == fast.cfg.embedding_dim != fast.cfg.decoder.hidden_size
    _assert_same_objective(fast, plain)


def _assert_same_objective(fast, plain):
    """``fast`` and ``plain`` (float64, training mode) given the same weights: the same loss and
    gradients on a batch, to 1e-10."""
    plain.load_state_dict(fast.state_dict())
    src, lens, smask, tgt_in, tgt_out, tmask = batch([5, 2, 7])
    results = []
    for model in (fast, plain):
        loss, nll = model(src, lens, smask, tgt_in, tgt_out, tmask, label_smoothing=0.1)
        loss.backward()
        results.append((loss.detach(), nll, {n: p.grad for n, p in model.named_parameters()}))
    (loss_f, nll_f, grads_f), (loss_p, nll_p, grads_p) = results
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(nll_f, nll_p, rtol=1e-12, atol=1e-10)
    for name, grad in grads_p.items():
        torch.testing.assert_close(grads_f[name], grad, rtol=1e-10, atol=1e-10, msg=name)


def test_packed_encoder_ignores_padding(tiny_model, kernels):
    """A sentence encodes the same alone and in a batch padded to a longer length."""
    model = tiny_model(layers=2, self_att=1, kernels=kernels)
    src, lens, smask, *_ = batch([3, 9, 5])
    with torch.no_grad():
        together = model.encode(src, lens, smask)
        for i, n in enumerate(lens.tolist()):
            alone = model.encode(src[i:i + 1, :n], lens[i:i + 1], smask[i:i + 1, :n])
            torch.testing.assert_close(together.states[i, :n], alone.states[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(together.final[i], alone.final[0], rtol=1e-5, atol=1e-6)
        assert torch.all(together.states[~smask] == 0)


def test_packed_matches_unpacked_gru_on_real_positions(tiny_model):
    model = tiny_model()
    src, lens, smask, *_ = batch([4, 4])  # equal lengths: no padding, plain GRU must agree
    with torch.no_grad():
        packed = model.encode(src, lens, smask).states
        plain, _ = model.encoder.rnn(model.src_embed(src))
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-6)


def test_label_smoothing_formula(tiny_model, kernels):
    model = tiny_model(kernels=kernels)
    src, lens, smask, tgt_in, tgt_out, tmask = batch([3, 4])
    with torch.no_grad():
        readout, _ = model.teacher_force(src, lens, smask, tgt_in)
        loss, nll = model.loss(readout, tgt_out, tmask, label_smoothing=0.1)
        logits = model.output(readout)[tmask]
        expected = F.cross_entropy(logits, tgt_out[tmask], label_smoothing=0.1, reduction="sum")
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(nll) == pytest.approx(float(F.cross_entropy(logits, tgt_out[tmask], reduction="sum")), rel=1e-5)


@pytest.mark.parametrize("activation", ["relu", "gelu", "swish", "selu", "prelu", "aprelu", "arelu", "maxout", "mish"])
def test_every_registry_activation_builds_and_trains_a_step(activation, tiny_model, kernels):
    model = tiny_model("luong-general", True, activation=activation, kernels=kernels).train()
    src, lens, smask, tgt_in, tgt_out, tmask = batch([3, 5])
    loss, _ = model(src, lens, smask, tgt_in, tgt_out, tmask)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if "readout" in n or "combine" in n)


def test_selu_layers_keep_lecun_init_and_alpha_dropout(tiny_model):
    model = tiny_model("luong-general", activation="selu")
    assert isinstance(model.decoder.readout_dropout, torch.nn.AlphaDropout)


def test_dot_attention_dimension_mismatch_is_a_config_error():
    from nmt.errors import ConfigError
    cfg = ModelConfig(encoder=EncoderConfig(hidden_size=8), decoder=DecoderConfig(hidden_size=8),
                      attention=AttentionConfig(kind="luong-dot"))
    with pytest.raises(ConfigError, match="decoder.hidden_size"):
        build_model(cfg, 10, 10)


def test_tied_embeddings_share_storage(tiny_model):
    model = tiny_model(tied_embeddings=True)
    assert model.output.weight.data_ptr() == model.tgt_embed.weight.data_ptr()


def test_model_overfits_twenty_pairs(kernels):
    """20 pairs, learned to exact reproduction under greedy decoding."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    pairs = []
    for _ in range(20):
        n = int(torch.randint(2, 6, (1,), generator=g))
        s = torch.randint(4, 15, (n,), generator=g).tolist()
        pairs.append((s + [EOS], [x + 2 for x in reversed(s)] + [EOS]))  # reverse and shift
    cfg = ModelConfig(embedding_dim=32, dropout=0.0, kernels=kernels,
                      encoder=EncoderConfig(hidden_size=32, dropout=0.0),
                      decoder=DecoderConfig(hidden_size=64, dropout=0.0),
                      attention=AttentionConfig(kind="bahdanau"))
    model = build_model(cfg, 17, 19)
    S, T = max(len(s) for s, _ in pairs), max(len(t) for _, t in pairs)
    src = torch.tensor([s + [PAD] * (S - len(s)) for s, _ in pairs])
    tgt_out = torch.tensor([t + [PAD] * (T - len(t)) for _, t in pairs])
    tgt_in = torch.cat([torch.full((20, 1), BOS), tgt_out[:, :-1]], 1).masked_fill(tgt_out == PAD, PAD)
    lens, smask, tmask = (src != PAD).sum(1), src != PAD, tgt_out != PAD
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        loss, _ = model(src, lens, smask, tgt_in, tgt_out, tmask)
        (loss / tmask.sum()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        state, memory = model.start(model.encode(src, lens, smask))
        prev = torch.full((20,), BOS)
        outputs = []
        for _ in range(T):
            log_probs, out = step(model, prev, state, memory)
            prev, state = log_probs.argmax(-1), out.state
            outputs.append(prev)
    decoded = torch.stack(outputs, 1)
    for i, (_, t) in enumerate(pairs):
        assert decoded[i, :len(t)].tolist() == t


# ---- APReLU pools over the sequence it is applied to


def _aprelu_by_hand(act, h, n):
    """APReLU written out for one sequence ``h (L, C)``: slopes from the mean over its first ``n``
    positions, applied to every position."""
    real = h[:n]
    s = torch.cat([real.clamp(min=0).mean(0), real.clamp(max=0).mean(0)])
    z = F.linear(s, act.fc1.weight, act.fc1.bias)
    z = F.layer_norm(z, z.shape, act.norm.weight, act.norm.bias, act.norm.eps)
    alpha = torch.sigmoid(F.linear(z.clamp(min=0), act.fc2.weight, act.fc2.bias))
    return h.clamp(min=0) + alpha * h.clamp(max=0)


@pytest.mark.parametrize("kind,feed", [("bahdanau", True), ("luong-concat", True), ("luong-concat", False)])
def test_every_aprelu_in_a_model_pools_over_its_sequence(kind, feed, tiny_model):
    """Encoder self-attention feed-forward: the mean over the real source positions. Attention
    scorer: per query, the mean over the real source positions. Readout / attentional vector: at
    step t, the mean over steps 1..t. Each checked against APReLU written out by hand."""
    model = tiny_model(kind, feed, activation="aprelu", self_att=1, attention_activation="aprelu").double()
    src, lens, smask, tgt_in, tgt_out, tmask = batch([5, 2, 4])
    seen = {}

    def keep(name):  # every call's (input, output)
        def hook(module, args, output):
            seen.setdefault(name, []).append((args[0], output))
        return hook

    ffn = model.encoder.self_attention[0].ff_in
    readout = model.decoder.readout if kind == "bahdanau" else model.decoder.combine
    scorer = model.decoder.attention.act
    ffn.activation.register_forward_hook(keep("ffn_act"))  # its input: the pre-activation
    ffn.register_forward_hook(keep("ffn"))
    readout.linear.register_forward_hook(keep("readout_pre"))
    scorer.register_forward_hook(keep("scorer"))
    with torch.no_grad():
        out, _ = model.teacher_force(src, lens, smask, tgt_in)
        [(pre, _)], [(_, got)] = seen["ffn_act"], seen["ffn"]
        for b, n in enumerate(lens.tolist()):
            torch.testing.assert_close(got[b, :n], _aprelu_by_hand(ffn.activation, pre[b], n)[:n])
        for x, got in seen["scorer"]:  # (batch, queries, src_len, H), once or once per step
            for b, n in enumerate(lens.tolist()):
                for q in range(x.size(1)):
                    torch.testing.assert_close(got[b, q, :n], _aprelu_by_hand(scorer, x[b, q], n)[:n])
        # (batch, T, D) at once, or (batch, D) per step (Luong input feeding's step loop)
        pre = torch.stack([p for _, p in seen["readout_pre"]], 1) if feed and kind != "bahdanau" \
            else seen["readout_pre"][0][1]
        assert pre.shape[:2] == out.shape[:2]
        for b in range(pre.size(0)):
            for t in range(pre.size(1)):
                want = _aprelu_by_hand(readout.activation, pre[b, : t + 1], t + 1)[t]
                torch.testing.assert_close(out[b, t], want)


@pytest.mark.parametrize("kind,feed", [("bahdanau", True), ("luong-concat", True), ("luong-general", False)])
def test_aprelu_model_padding_never_changes_a_result(kind, feed, tiny_model):
    """Sentences padded more (source and target) and batched with other sentences give identical
    encoder states, readouts and attention at their real positions."""
    model = tiny_model(kind, feed, activation="aprelu", self_att=1, attention_activation="aprelu")
    src, lens, smask, tgt_in, tgt_out, tmask = batch([3, 6, 4], tgt_lengths=[4, 7, 2])
    pad = 3
    more = [torch.cat([t, t.new_zeros(t.size(0), pad)], 1) for t in (src, smask, tgt_in)]
    with torch.no_grad():
        enc = model.encode(src, lens, smask)
        enc_more = model.encode(more[0], lens, more[1])
        readout, weights = model.teacher_force(src, lens, smask, tgt_in)
        readout_more, weights_more = model.teacher_force(more[0], lens, more[1], more[2])
        for i in range(3):
            n, m = int(lens[i]), int(tmask[i].sum())
            alone, alone_w = model.teacher_force(src[i:i + 1, :n], lens[i:i + 1], smask[i:i + 1, :n],
                                                 tgt_in[i:i + 1, :m])
            for r, w in ((readout_more, weights_more), (readout, weights)):
                torch.testing.assert_close(r[i, :m], alone[0], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(w[i, :m, :n], alone_w[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(enc_more.states[i, :n], enc.states[i, :n], rtol=1e-5, atol=1e-6)
