"""Training-mode dropout on CPUs (model/dropout.py): the 15-bit masks keep the expected value and drop at the
configured rate, are reproducible from torch's generator, and attention with dropout computes exactly
dropout(softmax(scale * q k^T)) v with that mask: forward, gradient and gradient of the gradient, alone and
inside the model (against the model's exact attention path drawing the same masks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpt2kit import GPT2Config, GPT2LMHeadModel
from gpt2kit.model import dropout as D


@pytest.fixture
def small_tensors_too(monkeypatch):
    monkeypatch.setattr(D, "MIN_ELEMENTS", 0)


def test_the_mask_drops_at_the_rate_and_keeps_the_mean():
    torch.manual_seed(0)
    n = 1 << 20
    for p in (0.1, 0.3, 0.5):
        y = D.dropout(torch.ones(n), p)
        rate = (y == 0).float().mean().item()
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(rate - p) < 5 * sigma, (p, rate)
        kept = y[y != 0]
        # the kept elements carry 1 / (keep rate), the 15-bit level's exact inverse: the expectation stays 1
        level = round(p * 2**15)
        torch.testing.assert_close(kept, torch.full_like(kept, 2**15 / (2**15 - level)))
        assert abs(y.mean().item() - 1) < 5 * sigma / (1 - p)


def test_masks_come_from_torchs_generator():
    x = torch.randn(4, 64, 128)
    torch.manual_seed(5)
    a, b = D.dropout(x, 0.1), D.dropout(x, 0.1)
    torch.manual_seed(5)
    assert torch.equal(D.dropout(x, 0.1), a)  # manual_seed (and a saved RNG state) reproduce the masks
    assert not torch.equal(a, b)  # each call draws afresh


def test_where_torchs_dropout_runs():
    x = torch.randn(64, 512)
    assert D.usable(x, 0.1)
    assert not D.usable(x, 1e-5)  # 15-bit levels would move p by more than 0.1%: torch's own
    assert not D.usable(x[:4, :4], 0.1)  # small: torch's own
    assert not D.usable(x.long(), 0.1)
    assert D._threshold(1.0) is None and D._threshold(0.0) is None
    assert D.dropout(x, 0.1, training=False) is x
    assert D.dropout(x, 0.0) is x
    module = D.Dropout(0.1)
    assert isinstance(module, nn.Dropout) and repr(module) == repr(nn.Dropout(0.1))
    assert module.eval()(x) is x
    # torch.func sees torch's dropout (which it can batch) and gets the same kind of result
    out = torch.func.vmap(lambda r: D.dropout(r, 0.5), randomness="different")(torch.ones(64, 512))
    assert set(out.unique().tolist()) == {0.0, 2.0}


def test_gradient_is_the_mask_times_the_scale(small_tensors_too):
    x = torch.randn(8, 33, requires_grad=True)
    torch.manual_seed(1)
    y = D.dropout(x, 0.2)
    gy = torch.ones_like(y, requires_grad=True)
    (g,) = torch.autograd.grad(y, x, gy, create_graph=True)
    assert torch.equal(g * x.detach(), y.detach())  # the same mask, the same scale
    assert set(g.unique().tolist()) == {0.0, torch.tensor(2**15 / (2**15 - round(0.2 * 2**15))).item()}
    (gg,) = torch.autograd.grad(g.sum(), gy)  # differentiable again: the backward is linear in gy
    assert torch.equal(gg, g.detach())


def reference(q, k, v, allowed, scale, p, seed):
    """The composite ops with the mask keep_mask draws for the same seed."""
    torch.manual_seed(seed)
    B, nh, T, _ = q.shape
    keep, keep_scale = D.keep_mask((B * nh, T, k.shape[2]), p)
    return D._composite(q, k, v, allowed, scale, keep, keep_scale)


def masks(B, T, S=None):
    """Boolean masks (True = may attend) for T queries after S - T cached keys."""
    S = T if S is None else S
    causal = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    padded = causal[None, None].repeat(B, 1, 1, 1)
    padded[0, ..., :3] = False  # left padding of row 0: a query that would see no key keeps its causal ones
    empty = ~padded.any(-1, keepdim=True)
    padded |= empty & causal
    return {"causal": causal, "padded": padded, "none": None}


@pytest.mark.parametrize("mask", ["causal", "padded", "none"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("S", [17, 23], ids=["T=S", "T<S"])
def test_attention_equals_the_composite_with_the_same_mask(small_tensors_too, mask, dtype, S):
    B, nh, T, hs = 2, 3, 17, 8  # B * nh * T * S odd at S = 23: the last int32 draw is half used
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, nh, T, hs, generator=g, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, nh, S, hs, generator=g, dtype=dtype, requires_grad=True) for _ in range(2))
    allowed = masks(B, T, S)[mask]
    torch.manual_seed(7)
    got = D.attention(q, k, v, allowed, 0.3, 0.2)
    assert type(got.grad_fn).__name__.startswith("_AttentionWithDropout")
    want = reference(q, k, v, allowed, 0.3, 0.2, seed=7)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, **tol)
    gy = torch.randn(got.shape, generator=g, dtype=dtype)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), gy), torch.autograd.grad(want, (q, k, v), gy)):
        torch.testing.assert_close(a, b, **tol)
    assert (got == 0).sum() < got.numel()  # not everything dropped


def test_double_backward_where_only_some_inputs_need_a_gradient(small_tensors_too):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 2, 6, 4, generator=g, dtype=torch.float64) for _ in range(2))
    causal = masks(1, 6)["causal"]
    torch.manual_seed(3)
    y = D.attention(q, k, v, causal, 0.5, 0.25)
    (gq,) = torch.autograd.grad(y.square().sum(), q, create_graph=True)
    (hq,) = torch.autograd.grad(gq.sum(), q)
    torch.manual_seed(3)
    keep, keep_scale = D.keep_mask((2, 6, 6), 0.25)
    want = D._composite(q, k, v, causal, 0.5, keep, keep_scale)
    (wq,) = torch.autograd.grad(want.square().sum(), q, create_graph=True)
    torch.testing.assert_close(hq, torch.autograd.grad(wq.sum(), q)[0])


def test_attention_gradcheck_and_gradgradcheck(small_tensors_too):
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, 1, 5, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    causal = masks(1, 5)["causal"]

    def f(q, k, v):
        torch.manual_seed(3)  # the same mask at every evaluation
        return D.attention(q, k, v, causal, 0.5, 0.25)

    assert torch.autograd.gradcheck(f, (q, k, v))
    assert torch.autograd.gradgradcheck(f, (q, k, v))


def test_attention_under_bf16_autocast_matches_float32(small_tensors_too):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 32, 16, generator=g, requires_grad=True) for _ in range(3))
    causal = masks(2, 32)["causal"]
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = D.attention(q, k, v, causal, 0.25, 0.1)
    assert got.dtype == torch.bfloat16
    want = reference(q, k, v, causal, 0.25, 0.1, seed=2)  # float32
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
    got.float().sum().backward()
    assert q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()


def test_attention_leaves_torch_func_and_tiny_inputs_to_sdpa():
    x = torch.randn(1, 2, 4, 8)
    assert D.attention(x, x, x, None, 1.0, 0.1) is None  # 64 elements: SDPA
    big = torch.randn(2, 4, 64, 32)
    assert D.attention(big, big, big, None, 1.0, 1e-6) is None
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(big, torch.ones_like(big))
        assert D.attention(dual, big, big, None, 1.0, 0.1) is None


@pytest.mark.parametrize("padded", [False, True], ids=["causal", "left-padded"])
@pytest.mark.parametrize("upcast", [False, True], ids=["plain", "reorder_and_upcast"])
def test_model_training_step_equals_the_exact_attention_path_with_the_same_masks(
    small_tensors_too, padded, upcast
):
    """The fast path (dropout.attention) and the exact path (transformers' eager order of operations, asked
    for by output_attentions) draw the same masks in the same order for the same seed: same loss, same
    gradients, so dropout in the fast path is exactly attention dropout."""
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=97,
        n_positions=32,
        attn_pdrop=0.3,
        resid_pdrop=0.2,
        embd_pdrop=0.1,
        reorder_and_upcast_attn=upcast,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).train()
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    if padded:
        mask[1, :4] = 0
        # the two paths treat a query that may see no key differently (pad positions are garbage anyway):
        # leave the pads' predictions out of the loss
        labels[1, :5] = -100

    def run(exact: bool):
        model.zero_grad()
        torch.manual_seed(11)
        out = model(ids, attention_mask=mask, labels=labels, output_attentions=exact)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fast_loss, fast_grads = run(False)
    exact_loss, exact_grads = run(True)
    torch.testing.assert_close(fast_loss, exact_loss, rtol=1e-5, atol=1e-6)
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], exact_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.manual_seed(12)
    other = model(ids, attention_mask=mask, labels=labels).loss.detach()
    assert not torch.equal(other, fast_loss)  # dropout is on: another seed, other masks


def test_model_fast_path_skips_sdpa_in_training(small_tensors_too, monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(kw) or sdpa(*a, **kw)
    )
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=32))
    ids = torch.randint(0, 97, (2, 12))
    model.train()(ids, labels=ids).loss.backward()
    assert calls == []  # both layers ran dropout.attention
    model.eval()(ids)
    assert len(calls) == 2 and all(kw["dropout_p"] == 0.0 for kw in calls)


@pytest.mark.parametrize(
    "native, float32, computes_in",
    [(True, False, torch.bfloat16), (False, False, torch.float32), (True, True, torch.float32)],
    ids=["native-bf16", "emulated-bf16", "reorder_and_upcast_attn"],
)
def test_attention_under_autocast_computes_in(small_tensors_too, monkeypatch, native, float32, computes_in):
    """bf16 products where the CPU has them natively. Where they are emulated (AVX2-only x86: 429 ms a layer
    against 40 in float32 under ONEDNN_MAX_CPU_ISA=AVX2), or where the config asks for float32 scores
    (reorder_and_upcast_attn), the attention runs in float32; it returns the autocast dtype either way."""
    monkeypatch.setattr(D.kernels, "native_bf16", lambda: native)
    seen = []
    apply = D._AttentionWithDropout.apply
    monkeypatch.setattr(
        D._AttentionWithDropout, "apply", lambda q, *rest: seen.append(q.dtype) or apply(q, *rest)
    )
    q, k, v = (torch.randn(2, 2, 16, 8, requires_grad=True) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = D.attention(q, k, v, masks(2, 16)["causal"], 0.3, 0.1, float32=float32)
    assert y.dtype == (torch.float32 if float32 else torch.bfloat16)
    assert seen == [computes_in]
    y.float().sum().backward()
    assert q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()


def test_compiled_training_runs_the_same_attention_dropout_op(small_tensors_too):
    """Under torch.compile the attention runs as the opaque gpt2kit::attention_with_dropout op (SDPA with
    dropout before: its math path, traced), drawing the same masks as eager mode for the same seed (with no
    other dropout: inductor draws those its own way). With gradient checkpointing, where the compiled
    backward recomputes the op: untagged, it drew new masks there and the gradients came out wrong (2e-2)."""
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=32, attn_pdrop=0.2, resid_pdrop=0.0,
        embd_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).train()
    model.gradient_checkpointing_enable()
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(1))

    def run(forward):
        model.zero_grad()
        torch.manual_seed(5)
        loss = forward(ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager_loss, eager_grads = run(model)
    torch.manual_seed(6)
    other = model(ids, labels=ids).loss.detach()
    compiled = torch.compile(model)
    compiled_loss, compiled_grads = run(compiled)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert not torch.equal(other, eager_loss)  # the masks matter: another seed, another loss
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("precision", ["float32", "bf16-autocast"])
def test_a_compiled_training_step_is_one_graph(small_tensors_too, precision):
    """dynamo traces the whole training forward and loss without a graph break (fullgraph=True raises at
    one). Two split it before: kernels.native_bf16() read torch.get_num_threads() (untraceable) in every
    layer's attention under bf16 autocast, so each layer's attention became a frame of its own, recompiled
    per layer past dynamo's limit of 8 (a 124M model's last layers then ran uncompiled); and the LM loss's
    label check was a data-dependent bool(). The "eager" backend: dynamo's tracing is what is tested."""
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=32, attn_pdrop=0.1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).train()
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    step = torch.compile(model, backend="eager", fullgraph=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-autocast")
    with autocast:
        loss = step(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.weight.grad is not None
