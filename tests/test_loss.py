"""The chunked language-modelling loss (model/loss.py) equals F.cross_entropy on the shifted logits: the
value and the gradient, in float32 and bf16, with ignored labels, any strides, across chunk boundaries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2kit.model import loss as loss_mod


def reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    V = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_value_and_gradient_equal_cross_entropy(monkeypatch, dtype, chunk_rows, layout):
    B, T, V = 3, 7, 50
    monkeypatch.setattr(loss_mod, "CHUNK_BYTES", 4 * V * chunk_rows)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 2] = labels[2, 5] = labels[1, 0] = -100  # ignored (labels[:, 0] is never a target anyway)

    def leaf():
        x = base.to(dtype)
        if layout == "strided":  # (T, B, V) storage seen as (B, T, V)
            x = x.transpose(0, 1).contiguous().transpose(0, 1)
        return x.requires_grad_()

    a, b = leaf(), leaf()
    got, want = loss_mod.causal_lm_loss(a, labels), reference(b, labels)
    assert type(got.grad_fn).__name__.startswith("_ShiftedCrossEntropy")  # the chunked path ran
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    (2.5 * got).backward()
    (2.5 * want).backward()
    assert a.grad.dtype == dtype and a.grad.shape == a.shape
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(a.grad, b.grad, rtol=tol, atol=tol)
    assert torch.all(a.grad[:, -1] == 0)


def test_bf16_autocast_logits_and_the_model_path():
    from gpt2kit import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=60, n_positions=16))
    ids = torch.randint(0, 60, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    torch.testing.assert_close(out.loss, reference(out.logits, ids), rtol=1e-6, atol=1e-6)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_all_ignored_gives_nan_like_cross_entropy():
    x = torch.randn(1, 4, 10, requires_grad=True)
    labels = torch.full((1, 4), -100)
    assert torch.isnan(loss_mod.causal_lm_loss(x, labels)) and torch.isnan(reference(x, labels))


def test_labels_of_another_shape_get_cross_entropys_error():
    with pytest.raises(ValueError, match=r"Expected input batch_size \(6\) to match target batch_size \(8\)"):
        loss_mod.causal_lm_loss(torch.randn(2, 4, 10), torch.zeros(2, 5, dtype=torch.long))


def test_double_backward_equals_cross_entropys():
    """create_graph=True (gradient penalties, Hessian-vector products) differentiates the gradient too."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 5, 12, generator=g)
    labels = torch.randint(0, 12, (2, 5), generator=g)
    labels[1, 3] = -100
    v = torch.randn(2, 5, 12, generator=g)
    hvps = []
    for fn in (loss_mod.causal_lm_loss, reference):
        x = base.clone().requires_grad_()
        (gx,) = torch.autograd.grad(fn(x, labels), x, create_graph=True)
        (hvp,) = torch.autograd.grad((gx * v).sum(), x)
        hvps.append((gx.detach(), hvp))
    torch.testing.assert_close(hvps[0][0], hvps[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hvps[0][1], hvps[1][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [-5, 10])
def test_targets_out_of_range_get_cross_entropys_error(bad):
    labels = torch.zeros(2, 4, dtype=torch.long)
    labels[1, 2] = bad
    with pytest.raises((IndexError, RuntimeError), match=f"Target {bad} is out of bounds"):
        loss_mod.causal_lm_loss(torch.randn(2, 4, 10, requires_grad=True), labels)


def test_int32_labels_get_cross_entropys_error():
    with pytest.raises(RuntimeError, match="Long"):
        loss_mod.causal_lm_loss(torch.randn(2, 4, 10), torch.zeros(2, 4, dtype=torch.int32))
