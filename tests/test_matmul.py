"""The float32 CPU kernel choice (model/matmul.py): oneDNN's product and its backward are right, it is used
exactly where it should be, and torch's default stays available bit for bit."""

from __future__ import annotations

import pytest
import torch

from gpt2kit import GPT2Config, GPT2LMHeadModel
from gpt2kit.model import matmul
from gpt2kit.model.linear import Linear

pytestmark = pytest.mark.skipif(
    not matmul.onednn_linear_available(),
    reason="this torch build has no oneDNN linear op",
)


@pytest.fixture()
def choice():
    """Set the kernel for one test, then restore what the process had."""
    before = matmul.cpu_matmul()
    yield matmul.set_cpu_matmul
    matmul.set_cpu_matmul(before)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed_x", [False, True])
@pytest.mark.parametrize("layout", ["oi", "io"])
def test_onednn_linear_forward_and_backward_match_float64(bias, transposed_x, layout):
    g = torch.Generator().manual_seed(0)
    # (37, 48) rows, contiguous or a transposed view: strides oneDNN must read as they are
    x = torch.randn(48, 37, generator=g).t() if transposed_x else torch.randn(37, 48, generator=g)
    # the weight (out, in): stored so (the LM head) or (in, out) and seen through .t() (GPT-2's projections,
    # whose gradient the backward computes in the (in, out) layout)
    w = torch.randn(53, 48, generator=g) if layout == "oi" else torch.randn(48, 53, generator=g).t()
    b = torch.randn(53, generator=g) if bias else None
    x.requires_grad_(True)
    w.requires_grad_(True)
    if b is not None:
        b.requires_grad_(True)
    y = matmul._OneDNNLinear.apply(x, w, b)
    gy = torch.randn(y.shape, generator=g)
    y.backward(gy)

    x64, w64 = x.detach().double().requires_grad_(True), w.detach().double().requires_grad_(True)
    b64 = b.detach().double().requires_grad_(True) if b is not None else None
    y64 = torch.nn.functional.linear(x64, w64, b64)
    y64.backward(gy.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)
    assert w.grad.stride() == w.stride()  # in the weight's own layout: no transposing copy to accumulate it
    if b is not None:
        torch.testing.assert_close(b.grad.double(), b64.grad, rtol=1e-5, atol=1e-5)


def test_projections_and_lm_head_use_the_chosen_kernel(choice):
    torch.manual_seed(0)
    layer = Linear(16, 24)
    torch.nn.init.normal_(layer.weight)
    x = torch.randn(2, 5, 16, requires_grad=True)

    choice("torch")
    exact = layer(x)
    assert torch.equal(exact, torch.addmm(layer.bias, x.reshape(-1, 16), layer.weight).view(2, 5, 24))
    assert "OneDNN" not in type(exact.grad_fn.next_functions[0][0]).__name__

    choice("onednn")
    fast = layer(x)
    assert "OneDNN" in type(fast.grad_fn.next_functions[0][0]).__name__  # ViewBackward <- _OneDNNLinear
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own bf16 kernels, not ours
        assert "OneDNN" not in type(layer(x).grad_fn.next_functions[0][0]).__name__
    assert layer.to(torch.bfloat16)(x.detach().bfloat16()).dtype == torch.bfloat16  # bf16: torch's path

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_layer=1, n_embd=16, n_head=2)).eval()
    ids = torch.tensor([[1, 2, 3]])
    logits = model(ids).logits
    assert "OneDNN" in type(logits.grad_fn.next_functions[0][0]).__name__
    choice("torch")
    torch.testing.assert_close(model(ids).logits, logits, rtol=1e-5, atol=1e-5)


def test_training_gradients_agree_between_kernels(choice):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_layer=2, n_embd=32, n_head=2, resid_pdrop=0.0)
    config.embd_pdrop = config.attn_pdrop = 0.0
    model = GPT2LMHeadModel(config)
    ids = torch.randint(0, 64, (3, 12))
    grads = {}
    for kernel in ("torch", "onednn"):
        choice(kernel)
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        grads[kernel] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, g in grads["torch"].items():
        torch.testing.assert_close(grads["onednn"][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_bad_choice_names_the_variable(choice, monkeypatch):
    with pytest.raises(ValueError, match="GPT2KIT_CPU_MATMUL"):
        choice("mkl")
    monkeypatch.setenv("GPT2KIT_CPU_MATMUL", "torch")
    monkeypatch.setattr(matmul, "_choice", None)
    assert matmul.cpu_matmul() == "torch"
    assert choice("auto") == "auto"  # measured per shape, whatever the vendor (test_kernels.py)


def test_double_backward_strided_bias_and_frozen_weights(choice):
    choice("onednn")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 8, generator=g, requires_grad=True)
    w = torch.randn(5, 8, generator=g, requires_grad=True)
    b = torch.randn(10, generator=g)[::2]  # a strided view: oneDNN misreads those unless made contiguous
    y = matmul.fp32_linear(x, w, b)
    assert y is not None
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-5)

    def grad_norm(f):  # a gradient penalty: needs the backward to be differentiable
        (gx,) = torch.autograd.grad(f(x, w, b).square().sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.square().sum(), w)
        return gw

    ours = grad_norm(matmul.fp32_linear)
    torch.testing.assert_close(ours, grad_norm(torch.nn.functional.linear), rtol=1e-4, atol=1e-4)
    assert ours.abs().sum() > 0

    frozen = matmul.fp32_linear(x, w.detach(), None)  # fine-tuning with a frozen layer
    frozen.sum().backward()
    torch.testing.assert_close(x.grad, w.detach().sum(0).expand(6, 8), rtol=1e-5, atol=1e-5)


def test_transforms_and_switches_fall_back_to_torch(choice, monkeypatch):
    choice("onednn")
    x, w = torch.randn(4, 3), torch.randn(2, 3)
    # torch.func and forward-mode AD: torch's own ops, which implement them
    gx = torch.func.grad(lambda t: _linear_sum(t, w))(x)
    torch.testing.assert_close(gx, w.sum(0).expand(4, 3))
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))
        assert matmul.fp32_linear(dual, w, None) is None
    with torch.backends.mkldnn.flags(enabled=False):
        assert matmul.fp32_linear(x, w, None) is None
    # while torch.compile traces a few-row product (decoding), return before any kernel choice is looked at
    monkeypatch.setattr(matmul, "is_compiling", lambda: True)
    monkeypatch.setattr(matmul, "cpu_matmul", lambda: pytest.fail("the choice was consulted while tracing"))
    assert matmul.fp32_linear(x, w, None) is None


needs_op = pytest.mark.skipif(
    matmul.linear_op is None or not matmul.onednn_linear_available(), reason="no custom ops or no oneDNN"
)


@needs_op
@pytest.mark.parametrize("policy", ["onednn", "torch"])
def test_compiled_training_runs_the_chosen_kernel(choice, monkeypatch, policy):
    """Under torch.compile, inductor multiplies float32 on torch's kernel (MKL: ~220 GFLOP/s on the AMD EPYCs
    against oneDNN's ~480; a compiled 124M fp32 step ran 1.8x slower than the eager one). Many-row products
    where oneDNN was chosen now run it through the gpt2kit::onednn_linear op, forward and backward: same
    loss and gradients as eager. The aot_eager backend runs the traced graphs as they are (inductor is
    covered by test_dropout's compiled test); what is tested is the tracing and the op's autograd."""
    choice(policy)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=300, n_positions=32, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).train()
    ids = torch.randint(0, 300, (4, 24))  # 96 rows a product: the many-row bucket

    def step(forward):
        model.zero_grad()
        loss = forward(ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    want_loss, want_grads = step(model)
    calls = []
    real = matmul._lp
    monkeypatch.setattr(matmul, "_lp", lambda *a: calls.append(1) or real(*a))
    torch._dynamo.reset()
    loss, grads = step(torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False))
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # 2 layers x 4 projections + the LM head: one product forward, two backward (the input's gradient for
    # all but the first layer's c_attn, whose input is the embedding output: it still needs one)
    assert (len(calls) >= 9 * 3 - 1) if policy == "onednn" else calls == []
    torch._dynamo.reset()


@needs_op
def test_compiled_products_leave_exports_and_func_transforms_to_torch(choice, monkeypatch):
    """What compiled code may run: the op for a many-row float32 product, but not in an exported graph
    (which must run anywhere), not under torch.func (the op has no vmap or jvp rule: compile(vmap) failed
    and compile(jvp) gave zero tangents), not for decoding rows."""
    choice("onednn")
    torch.manual_seed(0)
    x, w = torch.randn(32, 64), torch.randn(48, 64)
    torch.testing.assert_close(matmul._compiled_linear(x, w, None), x @ w.t(), rtol=1e-4, atol=1e-4)
    assert matmul._compiled_linear(x[:8], w, None) is None  # few rows: decoding
    lin = Linear(64, 48)
    torch.nn.init.normal_(lin.weight, std=0.1)
    for name, transform in [
        ("vmap", lambda f: torch.func.vmap(f)(x.view(2, 16, 64))),
        ("jvp", lambda f: torch.func.jvp(f, (x,), (torch.ones_like(x),))[1]),
    ]:
        torch._dynamo.reset()
        got = torch.compile(lambda t, tf=transform: tf(lin), backend="aot_eager", fullgraph=True)(x)
        want = transform(lin)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert matmul._compiled_linear(x, w, None) is None
    torch._dynamo.reset()


@needs_op
def test_compiled_code_follows_the_policy_and_dynamic_shapes(choice, monkeypatch):
    """The choice is a constant to dynamo, so set_cpu_matmul() and torch.backends.mkldnn.flags() must reach
    compiled code (it compiles again); a dynamic row count (the second length of torch.compile's default
    dynamic=None, or dynamic=True) must trace too (fullgraph failed on it)."""
    torch.manual_seed(0)
    lin = Linear(64, 48)
    torch.nn.init.normal_(lin.weight, std=0.1)  # Linear's weight starts as torch.empty
    calls = []
    real = matmul._lp
    monkeypatch.setattr(matmul, "_lp", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    torch._dynamo.reset()
    f = torch.compile(lin, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        choice("onednn")
        f(torch.randn(32, 64))
        assert calls == [32]
        choice("torch")
        f(torch.randn(32, 64))
        assert calls == [32]
        choice("onednn")
        with torch.backends.mkldnn.flags(enabled=False):
            f(torch.randn(32, 64))
        assert calls == [32]
        for rows in (40, 56):  # dynamo makes the rows symbolic at the second length
            x = torch.randn(rows, 64)
            got = f(x)
            assert calls[-1] == rows
            choice("torch")
            torch.testing.assert_close(got, lin(x), rtol=1e-5, atol=1e-5)  # eager, torch's kernel
            choice("onednn")
    torch._dynamo.reset()


@needs_op
def test_export_keeps_torchs_kernels(choice):
    """torch.export's graph must run anywhere: no gpt2kit op in it, whatever this machine chose (end to
    end; torch.export also switches oneDNN off while it traces, so the guard of its own is tested above)."""
    choice("onednn")
    config = GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=300, n_positions=32)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 300, (2, 24))
    program = torch.export.export(model, (ids,), kwargs={"use_cache": False, "return_dict": False})
    graph = str(program.graph)
    assert "onednn_linear" not in graph and ("aten.addmm" in graph or "aten.linear" in graph)


def _linear_sum(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    out = matmul.fp32_linear(x, w, None)
    return (out if out is not None else torch.nn.functional.linear(x, w)).sum()


_FRESH = """
import torch
from gpt2kit import GPT2Config, GPT2LMHeadModel
from gpt2kit.model import matmul
assert matmul._choice is None  # nothing has read the policy yet
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=300, n_positions=64)).train()
ids = torch.randint(0, 300, (2, 32))
loss = torch.compile(model, backend="aot_eager", fullgraph=True)(ids, labels=ids).loss
loss.backward()
print(matmul._choice, float(loss))
"""


@needs_op
def test_a_fresh_process_compiles_before_any_product_ran():
    """The first product of a process resolves the policy (GPT2KIT_CPU_MATMUL), which asks torch whether
    oneDNN is there: dynamo refuses to trace that, so a fullgraph compile before any eager product failed."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GPT2KIT_CPU_MATMUL"}
    done = subprocess.run(
        [sys.executable, "-c", _FRESH], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] in ("auto", "torch")
