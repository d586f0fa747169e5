"""Which kernel multiplies float32 matrices on a CPU: torch's default (MKL) or oneDNN, per shape, by measurement.

torch sends float32 products on x86 CPUs to MKL's sgemm. Which is faster, it or oneDNN (which torch also
ships), depends on the CPU and the shape: on an AMD EPYC with AVX-512 oneDNN runs ~500 GFLOP/s where MKL's
sgemm runs ~220 (MKL takes its AVX-512 kernels only on Intel), at every row count; on an AVX2-only EPYC
oneDNN wins 3-6x at 8 rows but loses 0.6x on 768x3072 at 2048 rows. So `auto` (the default) times both
once per (weight shape, layout, row bucket) on the machine that runs (model/kernels.py: decisions cached
per CPU, torch version and thread count under ~/.cache/gpt2kit) and keeps oneDNN only where it is faster
than torch's kernel. Products too small to matter (under kernels.MIN_MACS) stay on torch's kernel.

`fp32_linear` computes x @ w.T + b with oneDNN's `_linear_pointwise` on the plain weight (no packing, no copy:
the parameters stay ordinary, trainable tensors) and has its own backward, written with the same kernel.
It sums in another order than MKL, so results agree to float32 rounding (~1e-6 relative), not bit for bit.

GPT2KIT_CPU_MATMUL=auto (default) | onednn | torch, read at the first float32 CPU product of the process
(set it before that; set_cpu_matmul() changes it any time); onednn and torch force one kernel everywhere.
torch's kernels still run under autocast, under torch.func transforms and forward-mode AD, for double
backward's second pass, and inside torch.compile except for many-row products, where compiled code calls
oneDNN through the custom op gpt2kit::onednn_linear where it was chosen (_compiled_linear).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import warnings
import weakref

import torch
from torch import nn

from gpt2kit.model import hugepages, kernels

CHOICES = ("auto", "onednn", "torch")
_choice: str | None = None  # one of CHOICES, once read
# (layout, K, N, row bucket, threads) -> (kernel, the best kernel other than splitk-io): the hot path's copy of
# kernels.TABLE's decisions. The second runs where a gradient must reach the weight, which splitk-io's copy
# cannot pass on.
_fast: dict[tuple[str, int, int, str, int], tuple[str, str]] = {}
# .on is True while generation/traced.py records a decode step (in this thread) to replay in this process.
_recording = threading.local()


@contextlib.contextmanager
def recording_decode():
    """While this is active, a torch.jit trace records this machine's measured kernel choices.

    A trace made for export or TorchScript (torch.jit.trace of a model) keeps torch's own kernels, which run
    anywhere; the decode step generate() records is replayed in this process only, for the batch size it was
    recorded at, so it keeps the kernels chosen here."""
    before = getattr(_recording, "on", False)
    _recording.on = True
    try:
        yield
    finally:
        _recording.on = before


def exporting_trace() -> bool:
    """Whether a torch.jit trace made for export runs (not a decode step recorded here): it keeps torch's own
    kernels (see recording_decode)."""
    return torch.jit.is_tracing() and not getattr(_recording, "on", False)


def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's linear op (CPU builds on x86 and ARM do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def set_cpu_matmul(choice: str) -> str:
    """Choose the float32 CPU kernel for gpt2kit's projections and LM head: auto (measured per shape),
    onednn or torch everywhere. Returns the choice."""
    global _choice
    if choice not in CHOICES:
        raise ValueError(f"CPU matmul {choice!r} is not one of {', '.join(CHOICES)} (GPT2KIT_CPU_MATMUL)")
    if choice == "onednn" and not onednn_linear_available():
        raise ValueError("this torch build has no oneDNN linear op; use GPT2KIT_CPU_MATMUL=torch or auto")
    if choice == "auto" and not onednn_linear_available():
        choice = "torch"  # nothing to choose between
    _choice = choice
    _fast.clear()
    return choice


def cpu_matmul() -> str:
    """ "auto", "onednn" or "torch": the float32 CPU kernel policy (from GPT2KIT_CPU_MATMUL on first use)."""
    return _choice or set_cpu_matmul(os.environ.get("GPT2KIT_CPU_MATMUL", "auto").strip().lower() or "auto")


def kernel_for(x2: torch.Tensor, weight: torch.Tensor) -> str:
    """Which kernel multiplies x2 (M, K) by weight (N, K) here: "torch", "onednn", "splitk" or "splitk-io"
    (the policy, or under auto this machine's measured decision for the shape, the weight's layout and M's
    row bucket)."""
    return _decision(x2, weight)[0]


def _decision(x2: torch.Tensor, weight: torch.Tensor) -> tuple[str, str]:
    """(kernel, kernel where a gradient must reach the weight) for this product (see kernel_for)."""
    policy = cpu_matmul()
    if policy != "auto":
        return policy, policy
    key = _key(x2, weight)
    hit = _fast.get(key)
    if hit is None:
        layout, k, n, bucket, _ = key
        if k * n * kernels.timing_rows(bucket, k, n) < kernels.MIN_MACS:
            hit = ("torch", "torch")
        else:
            m = x2.shape[0]
            decision = kernels.TABLE.decide(f"fp32-{layout}", k, n, m, lambda rows: _candidates(rows, weight))
            # What runs where the choice cannot (a gradient to the weight, for splitk-io): the next best.
            rest = {name: g for name, g in decision.gflops.items() if name != "splitk-io"}
            best_rest = max(rest, key=rest.__getitem__, default="torch")
            hit = (decision.choice, best_rest if decision.choice == "splitk-io" else decision.choice)
        _fast[key] = hit
    return hit


def _key(x2: torch.Tensor, weight: torch.Tensor) -> tuple[str, int, int, str, int]:
    """(layout, K, N, row bucket, threads): what a decision depends on (kernels.TABLE keys its decisions by
    the thread count too: set_num_threads changes which kernel wins)."""
    n, k = weight.shape
    return _layout(weight), k, n, kernels.row_bucket(x2.shape[0]), torch.get_num_threads()


def _layout(weight: torch.Tensor) -> str:
    """ "io": (in, out) storage seen through .t() (GPT-2's projections); "oi": stored (out, in) (the LM head).
    oneDNN reads them differently, on AVX2 the layout decided which kernel won, and a weight gradient is
    cheapest computed in the weight's own layout."""
    return "io" if weight.stride(0) == 1 and weight.shape[0] > 1 else "oi"


def _candidates(rows: int, weight: torch.Tensor) -> dict[str, object]:
    """torch's kernel, oneDNN's and (for a few rows) split-K, on copies of this weight in its own layout
    (cycled, so that each call reads its weight from memory, kernels.cold_copies) and random rows."""
    w = weight.detach()
    copies = itertools.cycle(kernels.cold_copies(w, lambda: _same_layout_copy(w), w.numel() * 4, rows))
    x = kernels.random_input(rows, w.shape[1])
    b = kernels.random_input(w.shape[0])
    calls = {
        "torch": lambda: torch.nn.functional.linear(x, next(copies), b),
        "onednn": lambda: _lp(x, next(copies), b),
    }
    if rows <= SPLITK_MAX_ROWS and _splits(w.shape[1]) > 1:
        calls["splitk"] = lambda: splitk_linear(x, next(copies), b)
        if not (w.stride(0) == 1 and w.shape[0] > 1):  # (out, in) storage: also split-K on an (in, out) copy
            io = itertools.cycle(
                kernels.cold_copies(w.t().contiguous(), lambda: w.t().contiguous(), w.numel() * 4, rows)
            )
            calls["splitk-io"] = lambda: splitk_linear(x, next(io).t(), b)
    return calls


def _same_layout_copy(w: torch.Tensor) -> torch.Tensor:
    """A copy of w (N, K) with the same strides: (in, out) storage stays (in, out)."""
    return w.t().clone().t() if w.stride(0) == 1 and w.shape[0] > 1 else w.clone()


# Split-K is a candidate up to this many rows: beyond, the products are compute-bound and threaded anyway.
SPLITK_MAX_ROWS = 16


def _splits(k: int) -> int:
    """Into how many slices of K split-K cuts a product: one per thread, when K divides evenly."""
    c = torch.get_num_threads()
    while c > 1 and k % c:
        c -= 1
    return c


def splitk_linear(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x2 (M, K) @ weight (N, K).T + bias, as the sum of one product per slice of K run side by side.

    torch's CPU kernel multiplies a single row (matrix-vector) on one thread, so a batch-1 decode step
    streams the weights at one core's memory bandwidth (~17 GB/s of ~32 on the dev VM). A batched product
    over slices of K runs one slice per thread: 27 GB/s over GPT-2's projections there. The weight is only
    viewed (either layout), and the ops are torch's own, so autograd works; sums differ from torch's kernel
    in float32 rounding (~1e-6 relative).
    """
    # Python ints, and -1 for the rows: a decode step's trace then holds constants, not the shape arithmetic
    # (size, floor_divide, item: ~15 ops a product) it records from a traced tensor's shape.
    n, k = (int(d) for d in weight.shape)
    c = _splits(k)
    parts = torch.bmm(x2.reshape(-1, c, k // c).transpose(0, 1), weight.t().view(c, k // c, n))  # (c, M, N)
    y = parts.sum(0)
    return y if bias is None else y.add_(bias)


def _version(t: torch.Tensor) -> int:
    """t's in-place write counter (inference-mode tensors have none, and cannot be written in place)."""
    try:
        return t._version
    except RuntimeError:
        return 0


# id(weight) -> (weakref to the weight, its version and data pointer when copied, the (in, out) copy or None
# once dropped). The entry lives as long as the weight: its finalizer removes it.
_io_copies: dict[int, tuple[weakref.ref, int, int, torch.Tensor | None]] = {}


def io_copy(weight: torch.Tensor) -> torch.Tensor:
    """An (in, out) contiguous copy of weight (out, in), kept while the weight lives and remade after it
    changes (an optimizer step, load_state_dict), for splitk-io.

    Why a copy: a few rows times the LM head (the embedding matrix, stored (vocab, in)) stream their weight
    at ~26 GB/s with oneDNN on the dev VM; split-K over the (in, out) form streams each thread's half of the
    rows front to back at ~35-42. The copy costs the weight's size again (154 MB for GPT-2's vocabulary at
    768 wide), so it exists only where that measured faster (decisions per machine) and only for products
    no gradient flows through."""
    key = id(weight)
    hit = _io_copies.get(key)
    version, ptr = _version(weight), weight.data_ptr()
    if hit is not None and hit[0]() is weight and hit[1] == version and hit[2] == ptr and hit[3] is not None:
        return hit[3]
    # in huge pages where the weight is (hugepages.adopt: a long-running model), else a plain copy (~5x
    # faster to make on the dev VM, where a process's fresh huge pages were slow to fault in)
    w = weight.detach().t()
    copy = hugepages.owned_copy(w) if hugepages.in_huge_pages(weight) else w.contiguous()
    if hit is None or hit[0]() is not weight:
        weakref.finalize(weight, _io_copies.pop, key, None)
    _io_copies[key] = (weakref.ref(weight), version, ptr, copy)
    return copy


def drop_io_copy(weight: torch.Tensor) -> None:
    """Free weight's (in, out) copy, if it has one (made again on the next product that uses it)."""
    hit = _io_copies.get(id(weight))
    if hit is not None and hit[0]() is weight:
        _io_copies[id(weight)] = (hit[0], hit[1], hit[2], None)


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def fp32_linear(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """x2 (M, in) @ weight (out, in).T + bias by oneDNN, when that is the float32 kernel chosen; else None.

    Under torch.compile, the oneDNN op for many-row products (linear_op) where that was measured faster,
    else None (see _compiled_linear). None also under autocast (which casts the operands for torch's own
    kernels), with
    oneDNN switched off (torch.backends.mkldnn.flags(enabled=False)), under torch.func transforms and
    forward-mode AD (which this op does not implement), and for anything but float32 CPU tensors.
    """
    if is_compiling():
        return _compiled_linear(x2, weight, bias)
    if (
        # an exported trace must run anywhere: torch's kernels (see recording_decode for the exception)
        exporting_trace()
        or not _float32_cpu(x2, weight)
        or x2.shape[0] == 0
        or not torch.backends.mkldnn.enabled
        or _transformed(x2, weight, bias)
    ):
        return None
    kernel, with_grad = _decision(x2, weight)
    training = torch.is_grad_enabled() and weight.requires_grad
    if training:
        kernel = with_grad  # splitk-io's copy cannot pass a gradient on to the weight
        if _io_copies:
            drop_io_copy(weight)  # a copy made for decoding would go stale at the next optimizer step anyway
    if kernel == "splitk-io":
        return splitk_linear(x2, io_copy(weight).t(), bias)
    if kernel == "torch":
        return None
    if kernel == "splitk":
        return splitk_linear(x2, weight, bias)
    if torch.jit.is_tracing():  # the tracer records the op itself, not the autograd.Function around it
        return _lp(x2, weight, None if bias is None else bias.contiguous())
    return _OneDNNLinear.apply(x2, weight, None if bias is None else bias.contiguous())


def _float32_cpu(x2: torch.Tensor, weight: torch.Tensor) -> bool:
    """Float32 CPU operands outside autocast (which casts them for torch's own kernels): what oneDNN's float32
    product is for."""
    return (
        x2.dtype is torch.float32
        and weight.dtype is torch.float32
        and x2.device.type == "cpu"
        and not _autocast_on()
    )


def _compiled_linear(
    x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor | None:
    """fp32_linear while torch.compile traces: linear_op where oneDNN measured faster for this many-row
    product, else None (the caller's torch op, which inductor runs on torch's kernel: MKL's sgemm, 200-230
    GFLOP/s on the AMD EPYCs where oneDNN runs ~480, so a compiled float32 training step ran 1.8x slower than
    the eager one). Not while exporting (torch.export: the graph must run anywhere), not under torch.func
    transforms (the op has no vmap or jvp rule), and not for a few rows: decoding, where a Python op's call
    costs more than the kernel saves. The row count is only compared (a symbolic one under dynamic shapes
    becomes a guard): above SPLITK_MAX_ROWS every product falls in the "many" row bucket."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    if (
        linear_op is None
        or (exporting is not None and exporting())
        or _functorch_active()
        or not _float32_cpu(x2, weight)
        or (bias is not None and bias.dtype is not torch.float32)
        or x2.shape[0] <= SPLITK_MAX_ROWS
    ):
        return None
    n, k = weight.shape  # a parameter's: static
    # The policy and the oneDNN switch are read here, in traced code, so that dynamo guards on them and
    # compiles again when set_cpu_matmul() or torch.backends.mkldnn.flags() changes them.
    policy = _choice if _choice is not None else _first_policy()
    choice = _compiled_choice(_layout(weight), int(k), int(n), policy, torch.backends.mkldnn.enabled)
    if choice != "onednn":
        return None
    return linear_op(x2, weight, None if bias is None else bias.contiguous())


def _functorch_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jvp) is active: traceable by dynamo, unlike _transformed."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


@kernels.constant_under_compile
def _first_policy() -> str:
    """cpu_matmul() where no product has read the policy yet: resolving it asks torch whether oneDNN is
    there (torch.backends.mkldnn.is_available, which dynamo refuses to trace), so it runs at trace time;
    once set, `_choice` is read in traced code (dynamo guards on it)."""
    return cpu_matmul()


@kernels.constant_under_compile
def _compiled_choice(layout: str, k: int, n: int, policy: str, onednn_enabled: bool) -> str:
    """The kernel for a many-row product by a (layout, K, N) weight where a gradient reaches the weight,
    decided (measured, where this machine has no decision yet) on a stand-in weight of that shape and layout,
    under this policy: a constant to dynamo."""
    if not (onednn_enabled and onednn_linear_available()):
        return "torch"
    if policy != "auto":
        return policy
    weight = kernels.random_input(k, n).t() if layout == "io" else kernels.random_input(n, k)
    with torch.no_grad():
        return _decision(torch.empty(SPLITK_MAX_ROWS + 1, k), weight)[1]


# The float32 product as one op compiled code calls (torch.library.custom_op exists from torch 2.4; before,
# compiled code keeps torch's kernels). Its backward is written with it, as _OneDNNLinear's is.
linear_op = None
if hasattr(torch.library, "custom_op"):

    @torch.library.custom_op("gpt2kit::onednn_linear", mutates_args=())
    def linear_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return _lp(x, w, b)

    @linear_op.register_fake
    def _(x, w, b):
        return x.new_empty(x.shape[0], w.shape[0])

    def _linear_setup(ctx, inputs, output) -> None:
        x, w, b = inputs
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        ctx.in_out = _layout(w) == "io"

    def _linear_backward(ctx, gy: torch.Tensor):
        x, w = ctx.saved_tensors
        return _linear_grads(lambda a, bt: linear_op(a, bt, None), ctx, gy, x, w)

    linear_op.register_autograd(_linear_backward, setup_context=_linear_setup)


def _transformed(*tensors: torch.Tensor | None) -> bool:
    """Inside torch.func (grad, vmap) or carrying forward-mode tangents: leave those to torch's own ops."""
    wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    for t in tensors:
        if t is None:
            continue
        if wrapped is not None and wrapped(t):
            return True
        if torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
            return True
    return False


def is_compiling() -> bool:
    """Whether torch.compile is tracing this call (torch.compiler.is_compiling exists from torch 2.3)."""
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(check()) if check is not None else False


def _lp(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """oneDNN's x @ w.T + b (w plain or packed), also inside a torch.jit trace."""
    if torch.jit.is_tracing():
        return _traceable_lp()(x, w, b)
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


# The tracer cannot record the op's empty list of optional scalars; a TorchScript function can hold it,
# and a trace records a call to one as its graph.
_LP_SOURCE = """
def lp(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    scalars: List[Optional[Union[int, float, complex]]] = []
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", scalars, "")
"""
_lp_script = None


def _traceable_lp():
    global _lp_script
    if _lp_script is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            _lp_script = torch.jit.CompilationUnit(_LP_SOURCE).lp
    return _lp_script


class LMHead(nn.Linear):
    """The LM head: an nn.Linear (same parameters, same state dict) whose float32 CPU product goes through
    fp32_linear. It projects onto the vocabulary, a third of a 124M model's FLOPs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The weight's shape, not in/out_features: tying to a resized embedding changes the weight only.
        out = fp32_linear(x.reshape(-1, self.weight.shape[1]), self.weight, self.bias)
        if out is None:
            return super().forward(x)
        return out.view(*x.shape[:-1], self.weight.shape[0])


class _OneDNNLinear(torch.autograd.Function):
    """y = x @ w.T + b with oneDNN, forward and backward (any strides: oneDNN reads them as they are)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        # Keep only what the backward will use: a frozen weight needs no x, a frozen input no w.
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if need_w else None, w if need_x else None)
        ctx.has_bias = b is not None
        ctx.in_out = _layout(w) == "io"
        return _lp(x, w, b)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, w = ctx.saved_tensors
        # With create_graph (double backward) use differentiable ops: oneDNN's op has no derivative.
        return _linear_grads(_mm_t if torch.is_grad_enabled() else _lp, ctx, gy, x, w)


def _mm_t(a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
    """a @ bt.T with differentiable ops (double backward: oneDNN's op has no derivative)."""
    return a.mm(bt.t())


def _linear_grads(product, ctx, gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> tuple:
    """The gradients of y = x @ w.T + b, with product(a, bt) = a @ bt.T: the eager backward's (oneDNN, or
    differentiable ops under create_graph) and the compiled op's (linear_op). ctx: needs_input_grad, in_out,
    has_bias."""
    gx = product(gy, w.t()) if ctx.needs_input_grad[0] else None  # gy @ w
    gw = None
    if ctx.needs_input_grad[1]:
        if ctx.in_out and product is not _mm_t:
            # (in, out) storage (GPT-2's projections): x.T @ gy comes out in that layout. gy.T @ x made oneDNN
            # copy gy.T (M x out) to contiguous first and the gradient then needed a transposing copy into
            # the parameter's layout: ~10 ms a layer of a 124M float32 step at 4 x 256 tokens, same bits.
            gw = product(x.t(), gy.t()).t()
        else:
            gw = product(gy.t(), x.t())  # gy.T @ x
    gb = gy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return gx, gw, gb
