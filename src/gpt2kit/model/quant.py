"""int8 weights for faster inference on CPU (opt-in): dynamic int8 (weights and activations) or weight-only.

A decode step reads every weight once and does little arithmetic with it, so its speed is the memory
bandwidth divided by the weights' bytes; int8 weights are a quarter of fp32's. Two kernels use them:

- **dynamic** (`DynamicInt8Linear`): int8 weights with one scale per output channel, and the activations
  quantized to 8 bits per call from their range (torch's quantized engines: fbgemm / oneDNN on x86,
  QNNPACK on ARM). Both operands are integers, so it runs on the CPU's integer dot-product units (VNNI where
  present, AVX2 otherwise): the approach of ONNX Runtime's dynamic quantization. It takes float32
  activations and works on every x86 CPU, with or without native bf16.
- **weight-only** (`Int8Linear`): int8 weights dequantized inside the kernel
  (`torch.ops.aten._weight_int8pack_mm`) with float activations; fast only with bf16 activations on a CPU
  with native bf16, a trap elsewhere (0.05x transformers with fp32 activations on an AVX2-only EPYC).

`quantize_int8(model)` (method="auto") times, for each layer shape, the kernels that exist here and the
float layer as it is (kernels.py: once per shape and machine, cached) and keeps the fastest, so a layer is
never slower than unquantized. Embeddings, LayerNorms, biases and the KV cache keep the model's dtype.

This changes the model's numbers (each weight is rounded to 1/127 of its row's largest magnitude; dynamic
also rounds each activation), so greedy tokens differ from the float model's now and then (benchmarks/
RESULTS.md reports top-1 agreement next to ONNX Runtime's and CTranslate2's); it is never applied implicitly.

>>> from gpt2kit.config import GPT2Config
>>> from gpt2kit.model.heads import GPT2LMHeadModel
>>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).eval()
>>> model = quantize_int8(model, method="weight-only")
>>> type(model.lm_head).__name__, model.lm_head.weight_int8.dtype
('Int8Linear', torch.int8)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import nn

from gpt2kit.model import kernels
from gpt2kit.model.linear import layout, out_in_weight, replace_projections
from gpt2kit.model.matmul import drop_io_copy, is_compiling

logger = logging.getLogger(__name__)

# The dtypes _weight_int8pack_mm accepts for activations (and scales).
_ACTIVATION_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (N, K) float, one row per output -> int8 (N, K) and scales (N,) with weight ~= int8 * scale.

    Symmetric, per output channel: a row's largest magnitude maps to 127.
    """
    w = weight.detach().float()
    # the largest magnitude without an abs() copy, and one temporary for the rest (in place): a 124M model's
    # 124M weights took 0.5 s to quantize with a new tensor per step, most of it faulting in fresh memory
    scales = torch.linalg.vector_norm(w, ord=float("inf"), dim=1).clamp(min=1e-12) / 127.0
    q = torch.div(w, scales[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales


class Int8Linear(nn.Module):
    """y = x @ (weight_int8 * scales).T + bias, weight_int8 (out, in) int8, scales (out,).

    Built from a float layer by `from_float`; the activations' dtype (fp32 or bf16) is the scales' dtype.
    """

    def __init__(
        self,
        weight_int8: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        assert weight_int8.dtype == torch.int8 and weight_int8.dim() == 2
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    @classmethod
    def from_float(cls, module: nn.Module, dtype: torch.dtype) -> Int8Linear:
        """From gpt2kit's Linear (weight (in, out)) or nn.Linear (weight (out, in)); activations in dtype."""
        q, scales = quantize_weight(out_in_weight(module, "quantize"))
        bias = module.bias.detach().to(dtype) if module.bias is not None else None
        return cls(q, scales.to(dtype), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self.scales.dtype:
            x2 = x2.to(self.scales.dtype)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


METHODS = ("auto", "dynamic", "weight-only")
# The quantized engines torch may have, in the order tried (each is a candidate where it builds).
_ENGINES = ("fbgemm", "onednn", "qnnpack")


def dynamic_engines() -> list[str]:
    """The quantized engines of this torch build that can run dynamic int8 linears here."""
    supported = set(torch.backends.quantized.supported_engines)
    return [e for e in _ENGINES if e in supported and (e != "qnnpack" or _arm()) and _engine_runs(e)]


@functools.cache
def _engine_runs(engine: str) -> bool:
    """Whether engine's dynamic int8 linear runs on this CPU, and right, tried once on a small layer.

    torch lists the engines its build has, not the ones that work here: an aarch64 torch lists fbgemm, whose
    prepack raises "unknown architecure" there; and its oneDNN engine (torch 2.13 under qemu's Neoverse N1
    and -cpu max) multiplies right only at the row count of a weight's first call: one row after four gave
    a relative error of 0.57, four after one 0.70 (QNNPACK: 0.01). So the try multiplies 1, 5 and 1 rows."""
    gen = torch.Generator().manual_seed(0)  # not the global RNG: deciding must not move it
    # on the CPU whatever the default device (torch.set_default_device("cuda"), a meta-device block): the
    # answer is kept for the process
    weight = torch.randn(24, 64, generator=gen, device="cpu")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = DynamicInt8Linear(weight, None, engine)
            for rows in (1, 5, 1):
                x = torch.randn(rows, 64, generator=gen, device="cpu")
                if _relative_error(_own_engine(layer, x), x @ weight.T) > 0.05:
                    logger.info("quantized engine %s multiplies wrongly here; not used", engine)
                    return False
    except (RuntimeError, NotImplementedError) as e:
        logger.debug("quantized engine %s does not run here: %s", engine, e)
        return False
    return True


def _arm() -> bool:
    return kernels.hardware().machine in ("aarch64", "arm64")


@contextlib.contextmanager
def _engine(name: str):
    """torch.backends.quantized.engine = name for a block (the packed weight remembers its engine)."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def _reduce_range() -> bool:
    """x86 int8 kernels multiply u8 x s8 pairs with saturating 16-bit sums (vpmaddubsw) unless they use
    AVX-512 VNNI or AMX: 7-bit activations then keep those sums from saturating. Only at the AVX-512 level
    with VNNI (and not under an ONEDNN_MAX_CPU_ISA=AVX2 limit, where oneDNN's engine lost 2-5% accuracy to
    saturation) are the full 8 bits safe."""
    hw = kernels.hardware()
    vnni = hw.isa in ("AVX512", "AVX512-BF16", "AMX") and bool(set(hw.flags) & {"avx512_vnni", "amx_int8"})
    return not vnni and not _arm()


# handle -> prepacked weight of a live DynamicInt8Linear (removed when the layer is garbage collected).
_PACKED: dict[int, object] = {}
_handles = itertools.count()


@torch.library.custom_op("gpt2kit::dynamic_int8_linear", mutates_args=())
def dynamic_int8_linear(x: torch.Tensor, handle: int, out_features: int, reduce_range: bool) -> torch.Tensor:
    """x (M, K) float32 @ the int8 weight registered under handle -> (M, out_features) float32: an op that
    torch.compile sees as one opaque call, so a dynamic int8 model's decode step compiles whole (inductor
    fuses the LayerNorms, GELU, adds and attention around these calls)."""
    return torch.ops.quantized.linear_dynamic(x, _PACKED[handle], reduce_range)


@dynamic_int8_linear.register_fake
def _(x: torch.Tensor, handle: int, out_features: int, reduce_range: bool) -> torch.Tensor:
    return x.new_empty((x.shape[0], out_features))


# The op's one overload, resolved once (the packet resolves it at every call); None in a torch without it.
try:
    _LINEAR_DYNAMIC = torch.ops.quantized.linear_dynamic.default
except (AttributeError, RuntimeError):
    _LINEAR_DYNAMIC = None


class DynamicInt8Linear(nn.Module):
    """y = dequant(quant(x) @ weight_int8.T) + bias: int8 weights (per output channel) and activations
    quantized per call (per tensor), on a torch quantized engine (fbgemm, oneDNN or QNNPACK).

    The weight lives in the engine's prepacked form; activations of any float dtype are computed in float32
    and returned in their own dtype. The engine is the one measured fastest at one row (a batch-1 decode
    step); in a long-running process (few_rows_engines_when_due) products of 2-16 rows (batched decoding)
    run on the engine measured fastest for those, decided at the first such call (_few_rows_packed).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        engine: str,
        quantized: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """quantized: quantize_weight(weight), where the caller has it (each engine's candidate packs the same
        int8 weight: quantizing the 124M model's LM head takes ~0.13 s on the dev VM)."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.engine = engine
        self.reduce_range = _reduce_range()
        self._few: object | None = None  # the packed weight for 2-16 rows, once decided
        # whether 2-16 rows may run on their own engine (few_rows_engines_when_due)
        self.few_rows_engine = False
        # any strides: a projection's (in, out) storage seen as (out, in) quantizes without a float copy
        q, scales = quantize_weight(weight) if quantized is None else quantized
        with warnings.catch_warnings():  # torch deprecates quantized tensors; its dynamic kernels need one
            warnings.simplefilter("ignore")
            zeros = torch.zeros(scales.shape, dtype=torch.long, device=q.device)
            wq = torch._make_per_channel_quantized_tensor(q, scales.double(), zeros, 0)
            b = bias.detach().float().contiguous() if bias is not None else None
            with _engine(engine):
                self._packed = torch.ops.quantized.linear_prepack(wq, b)
        self._register()

    def _register(self) -> None:
        # torch.compile cannot trace the prepacked weight (a TorchScript object), so compiled code reaches it
        # through the gpt2kit::dynamic_int8_linear op by this handle; eager calls skip the op's dispatch cost.
        self.handle = next(_handles)
        _PACKED[self.handle] = self._packed
        weakref.finalize(self, _PACKED.pop, self.handle, None)

    def __setstate__(self, state: dict) -> None:
        # A copy (copy.deepcopy, unpickling) gets its own handle: it shared the original's, and compiled code
        # of a copy whose original was gone raised KeyError.
        super().__setstate__(state)
        self._few = None  # maybe packed on another engine: decided again (cached) and packed from this one
        self.__dict__.setdefault("few_rows_engine", False)
        self._register()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_few": None}  # another engine's copy is made again where due

    def __deepcopy__(self, memo: dict) -> DynamicInt8Linear:
        # The packed weight packs itself again when copied, on the current engine: on aarch64 torch's
        # default engine is not the one it was packed on (fbgemm's prepack raises there), so copy on its own.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        with _engine(self.engine):  # not the few-row weight, maybe packed for another engine: decided again
            state = copy.deepcopy({**self.__dict__, "_few": None}, memo)
        new.__setstate__(state)
        return new

    @classmethod
    def from_float(
        cls, module: nn.Module, engine: str, quantized: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> DynamicInt8Linear:
        return cls(out_in_weight(module, "quantize"), module.bias, engine, quantized)

    def copier(self) -> Callable[[], DynamicInt8Linear]:
        """() -> a copy with its own packed weight, packed from this layer's int8 weight: the cold copies
        quantize_int8 times its candidates on, without quantizing the float weight again for each (that was
        ~1.9 of the 5.2 s a 124M model's first quantize_int8 took on a 2-core EPYC)."""
        with _engine(self.engine):
            wq, b = torch.ops.quantized.linear_unpack(self._packed)

        def copy_() -> DynamicInt8Linear:
            new = type(self).__new__(type(self))
            nn.Module.__init__(new)
            new.out_features, new.in_features = self.out_features, self.in_features
            new.engine, new.reduce_range = self.engine, self.reduce_range
            new._few, new.few_rows_engine = None, False
            with _engine(self.engine):
                new._packed = torch.ops.quantized.linear_prepack(wq, b)
            new._register()
            return new

        return copy_

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and x.dim() >= 2 and not is_compiling():
            packed = self._for_rows(x.numel() // self.in_features)
            # The engines take (..., K) of any strides and return (..., N): one op, where the general path
            # below adds a reshape, contiguous, to and view (5 ops in a recorded decode step, x 49 layers).
            if type(x) is torch.Tensor and _LINEAR_DYNAMIC is not None:
                # Called from Python, torch asks every argument for __torch_function__; the packed weight (a
                # ScriptObject) answers by raising and catching a C++ exception: 10-12 us of a call, 4 without
                # that question (no tensor subclass to ask here) and the overload named. 49 calls a 124M step.
                with torch._C.DisableTorchFunctionSubclass():
                    return _LINEAR_DYNAMIC(x, packed, self.reduce_range)
            return torch.ops.quantized.linear_dynamic(x, packed, self.reduce_range)
        x2 = x.reshape(-1, self.in_features)
        x32 = x2 if x2.dtype == torch.float32 else x2.float()
        if is_compiling():  # compiled code reaches the one-row engine's weight (by its handle)
            y = dynamic_int8_linear(x32.contiguous(), self.handle, self.out_features, self.reduce_range)
        else:
            packed = self._for_rows(x2.shape[0])
            y = torch.ops.quantized.linear_dynamic(x32.contiguous(), packed, self.reduce_range)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def _for_rows(self, rows: int) -> object:
        """The packed weight for a product of this many rows: for 2-16 rows the one _few_rows_packed chose,
        decided at the first such call (not inside a trace: a recording keeps the one-row engine's weight
        until eager code has decided); else the layer's own."""
        if rows <= 1 or rows > FEW_ROWS or not self.few_rows_engine:
            return self._packed
        if self._few is None:
            if torch.jit.is_tracing():
                return self._packed
            try:
                self._few = _few_rows_packed(self)
            except (RuntimeError, NotImplementedError) as e:  # an engine failing mid-measurement: its own
                logger.debug("few-row engine not chosen (%s); the layer's own runs", e)
                self._few = self._packed
        return self._few

    def repacked(self, engine: str) -> object:
        """This layer's int8 weight and bias packed for another engine (unpacked from its own)."""
        with _engine(self.engine):
            wq, b = torch.ops.quantized.linear_unpack(self._packed)
        with _engine(engine):
            return torch.ops.quantized.linear_prepack(wq, b)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, dynamic int8 ({self.engine})"
        )


# Batched decoding's products (2 to this many rows, kernels' "8" bucket) have an engine of their own, once
# a process has planned this many decode steps with the model (generate() calls add up; the server: at
# load). Packing a weight for a second engine costs a new process ~0.35 s at its first batched call (the
# 124M LM head, dev VM) and saves ~0.3-0.8 ms a batch-8 step: a one-off call never pays it back.
FEW_ROWS = 16
FEW_ROWS_AFTER_STEPS = 1024
_planned: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def few_rows_engines(model: nn.Module) -> tuple[bool, ...]:
    """Whether each dynamic int8 layer of model may multiply 2-16 rows on its own engine (part of a recorded
    decode step's key: a recording made before the switch holds the one-row engine's weights)."""
    return tuple(m.few_rows_engine for m in model.modules() if isinstance(m, DynamicInt8Linear))


def few_rows_engines_when_due(model: nn.Module, steps: int, at_once: bool = False) -> bool:
    """generate()'s call before it decodes `steps` steps: let model's dynamic int8 layers multiply 2-16 rows
    on the engine measured fastest for those (_few_rows_packed) once this process has planned
    FEW_ROWS_AFTER_STEPS steps with it, these included, or at once. Returns whether that changed now."""
    waiting = [m for m in model.modules() if isinstance(m, DynamicInt8Linear) and not m.few_rows_engine]
    if not waiting:
        return False
    done = _planned.get(model, 0) + max(steps, 0)
    _planned[model] = done
    if done < FEW_ROWS_AFTER_STEPS and not at_once:
        return False
    for m in waiting:
        m.few_rows_engine = True
    return True


def _few_rows_packed(layer: DynamicInt8Linear) -> object:
    """The packed weight layer multiplies 2-16 rows with: its own, or its int8 weight packed for another
    engine where that measured at least kernels.MARGIN faster at 8 rows (family "int8-dynamic-rows", timed
    cold like quantize_int8's one-row decisions, once per machine and shape, and cached; the layer's engine
    is the floor). Another engine's copy costs the weight's size again (and packing it ~0.26 s for the 124M
    LM head on the dev VM), so it is made only where it won. There fbgemm multiplies the layers 1.6-2x faster
    than oneDNN's engine at 1-16 rows and the LM head about as fast at one row, but the head 1.2-1.8x slower
    at 8-16 rows, timed alone; whole batch-8 / batch-16 steps with the head on oneDNN's engine took 7% / 11%
    less time in one A/B and 1% / 3% more in another, within that VM's noise. (More rows, a prompt or a
    scored text, keep the layer's engine: the two were even there once allocation noise was out of the way,
    0.92-1.17x.)"""
    n, k = layer.out_features, layer.in_features
    rows = 8
    if n * k * rows < kernels.MIN_MACS:
        return layer._packed  # too small to be worth timing
    others = [e for e in dynamic_engines() if e != layer.engine]
    if not others:
        return layer._packed
    built: dict[str, object] = {layer.engine: layer._packed}

    def candidates(m: int) -> dict[str, object]:
        x = kernels.random_input(m, k)
        calls = {}
        for engine in [layer.engine, *others]:
            try:
                first = built[engine] if engine in built else layer.repacked(engine)
            except (RuntimeError, NotImplementedError) as e:  # an engine that cannot unpack or pack it
                logger.debug("int8 weight not repacked for %s: %s", engine, e)
                continue
            if (
                engine != layer.engine
                and _relative_error(
                    torch.ops.quantized.linear_dynamic(x, first, layer.reduce_range),
                    torch.ops.quantized.linear_dynamic(x, layer._packed, layer.reduce_range),
                )
                > 0.04
            ):  # the same int8 weight: only an engine wrong at this row count differs
                logger.info("quantized engine %s multiplies %d rows wrongly here; not used", engine, m)
                continue
            built[engine] = first
            copies = itertools.cycle(kernels.cold_copies(first, lambda e=engine: layer.repacked(e), n * k, m))
            calls[engine] = lambda p=copies: torch.ops.quantized.linear_dynamic(
                x, next(p), layer.reduce_range
            )
        return calls

    with torch.no_grad(), kernels.EVICTOR.held():
        decision = kernels.TABLE.decide("int8-dynamic-rows", k, n, rows, candidates, floor=layer.engine)
    choice = decision.choice
    if choice == layer.engine:
        return layer._packed
    if choice not in built:  # decided by an earlier layer or process: pack it now
        try:
            built[choice] = layer.repacked(choice)
        except (RuntimeError, NotImplementedError):
            return layer._packed
    return built[choice]


def _builders(dtype: torch.dtype, method: str) -> dict[str, object]:
    """name -> layer builder for the int8 kernels that may run here with activations in dtype."""
    out: dict[str, object] = {}
    if method in ("auto", "dynamic"):
        int8: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # one quantization per layer for all engines

        def quantized(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            if id(layer) not in int8:
                int8[id(layer)] = quantize_weight(out_in_weight(layer, "quantize"))
            return int8[id(layer)]

        for engine in dynamic_engines():
            out[f"dynamic-{engine}"] = lambda layer, e=engine: DynamicInt8Linear.from_float(
                layer, e, quantized(layer)
            )
    if method == "weight-only" or (method == "auto" and dtype != torch.float32):
        # with float32 activations torch's CPU kernel is far slower than float: not a candidate for auto
        out["weight-only"] = lambda layer: Int8Linear.from_float(layer, dtype)
    return out


def in_cache(config, dtype: torch.dtype, lm_head: bool = True) -> frozenset[str]:
    """Which forms of a decode step's weights fit in the last-level cache, so that a step reads them from
    there: "int8" (the int8 projections, and the LM head, float where lm_head=False) and "float" (all of them
    in dtype). Empty for a model without a GPT2Config (timed as read from memory)."""
    try:
        c, inner, layers, vocab = config.n_embd, config.inner_dim, config.n_layer, config.vocab_size
    except AttributeError:
        return frozenset()
    blocks, head, size = layers * (c * 3 * c + c * c + 2 * c * inner), vocab * c, dtype.itemsize
    llc = kernels.last_level_cache_bytes()
    fits = {"int8": blocks + head * (1 if lm_head else size) <= llc, "float": (blocks + head) * size <= llc}
    return frozenset(kind for kind, ok in fits.items() if ok)


def int8_family(method: str, dtype: torch.dtype, weight_layout: str, cached: frozenset[str]) -> str:
    """The kernel table's family of an int8 decision (kernels.decision_key): one per cache situation."""
    where = "-in-cache" if "float" in cached else ("-int8-in-cache" if "int8" in cached else "")
    return f"int8-{method}-{str(dtype).removeprefix('torch.')}-{weight_layout}{where}"


def _choose(
    layer: nn.Module, dtype: torch.dtype, method: str, cached: frozenset[str] = frozenset()
) -> nn.Module:
    """The fastest int8 version of layer measured on this machine, or the layer itself when none is faster
    (method auto), or the requested kind's fastest (dynamic / weight-only). cached (in_cache): the forms of
    the model's weights that fit in the last-level cache, so that a decode step reads them from there; they
    are timed there (a decision of its own)."""
    builders = _builders(dtype, method)
    if not builders:
        raise RuntimeError(
            f"no int8 kernel for method={method!r} in this torch build (quantized engines: "
            f"{', '.join(torch.backends.quantized.supported_engines) or 'none'}); use method='weight-only'"
        )
    n, k = out_in_weight(layer, "quantize").shape
    family = int8_family(method, dtype, layout(layer), cached)
    # Decoding dominates generation time: choose at a batch-1 step's single row.
    known = kernels.TABLE.get(kernels.decision_key(family, k, n, 1))
    if known is not None:  # this shape was decided (an earlier layer, or an earlier run): build only that
        if known.choice in builders:
            return builders[known.choice](layer)  # type: ignore[operator]
        if known.choice == "float" and method == "auto":
            return layer
    built: dict[str, nn.Module] = {}
    weight, bias = out_in_weight(layer, "quantize"), layer.bias

    def reference(x: torch.Tensor) -> torch.Tensor:
        # torch's product, not layer(x): at four rows the layer would take (and time) a float32 kernel
        # decision for 2-16 rows that an int8 model never uses (~0.4 s of a first quantize_int8)
        return torch.nn.functional.linear(x, weight, bias)

    for name, build in builders.items():
        try:
            candidate = build(layer)  # type: ignore[operator]
            # An inexact engine is no candidate; one row, then four, as decoding follows a prompt (a kernel
            # right only at its first call's row count fails here: see _engine_runs).
            probes = [kernels.random_input(rows, k, dtype=dtype) for rows in (1, 4)]
            if max(_relative_error(_own_engine(candidate, p), reference(p)) for p in probes) < 0.04:
                built[name] = candidate
        except (RuntimeError, NotImplementedError) as e:
            logger.debug("int8 kernel %s cannot run here: %s", name, e)
    if not built:
        if method == "auto":
            return layer
        raise RuntimeError(f"no {method} int8 kernel runs on this machine; use method='auto'")
    if len(built) == 1 and method != "auto":
        return next(iter(built.values()))

    def candidates(m: int) -> dict[str, object]:
        # Unless the model fits in the cache, each candidate cycles through copies of its weights, read from
        # memory as in a decode step: timed over and over, a 768 x 3072 int8 weight sits in the cache and
        # multiplies 2.4x faster (dynamic fbgemm, Zen 5 EPYC), which favours the kernels that read the most
        # bytes (the float layer).
        x = kernels.random_input(m, k, dtype=dtype)

        def cycle(first: nn.Module, make, nbytes: int, hot: bool):
            # timed cold (nothing fits in the cache), the timer evicts between calls: a few copies; else the
            # float layer's copies alone must push each other out of the cache
            return itertools.cycle(
                [first] if hot else kernels.cold_copies(first, make, nbytes, m, evicted=not cached)
            )

        calls = {}
        for name, c in built.items():
            make = _copier(c, lambda b=builders[name]: b(layer))
            copies = cycle(c, make, n * k, "int8" in cached)
            calls[name] = lambda p=copies: next(p)(x)
        if method == "auto":
            plain = cycle(layer, lambda: copy.deepcopy(layer), n * k * dtype.itemsize, "float" in cached)
            calls["float"] = lambda: next(plain)(x)
        return calls

    floor = "float" if method == "auto" else ""
    choice = kernels.TABLE.decide(family, k, n, 1, candidates, floor=floor, cold=not cached).choice
    return built.get(choice, layer)


def _own_engine(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x), on a dynamic int8 layer's own engine at any row count: probing a candidate must not take
    (and time) the decision for its few-row products."""
    if isinstance(layer, DynamicInt8Linear) and x.dtype == torch.float32:
        return torch.ops.quantized.linear_dynamic(x, layer._packed, layer.reduce_range)
    return layer(x)


def _copier(layer: nn.Module, build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """What makes the cold copies of a candidate: repacking its int8 weight where the engine can unpack it,
    else build (from the float layer)."""
    if isinstance(layer, DynamicInt8Linear):
        try:
            return layer.copier()
        except (RuntimeError, NotImplementedError) as e:
            logger.debug("int8 weight not unpacked on %s (%s); copies quantize again", layer.engine, e)
    return build


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def quantize_int8(model: nn.Module, lm_head: bool = True, method: str = "auto") -> nn.Module:
    """Replace the projections (and, by default, the LM head) with int8 layers, in place; returns model.

    method: "auto" (default) times the int8 kernels this machine has (dynamic int8 on each quantized
    engine; weight-only for bf16/fp16 models) against the float layer, per layer shape, and keeps the
    fastest (kernels.py, cached); "dynamic" or "weight-only" force a kind. Call it on a loaded model in eval
    mode; float32 is the right dtype on every CPU (dynamic int8 computes in integers either way). A tied LM
    head gets its own int8 copy of the token embedding; the embedding itself is untouched. Inference only:
    the quantized weights are buffers, and a quantized model cannot be saved in transformers' format (save
    the float model instead). `model.quantized` names the kinds used, e.g. "int8 (dynamic-fbgemm x49)".

    >>> model = quantize_int8(GPT2LMHeadModel.from_pretrained("gpt2"))  # doctest: +SKIP
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(METHODS)}")
    dtype = next(model.parameters()).dtype
    if dtype not in _ACTIVATION_DTYPES:
        raise ValueError(f"quantize_int8 needs a float32, bfloat16 or float16 model, got {dtype}")
    if model.training:
        raise ValueError(
            "quantize_int8 is for inference; call model.eval() first (int8 weights cannot train)"
        )
    if getattr(model, "quantized", None) or any(
        isinstance(m, (Int8Linear, DynamicInt8Linear)) for m in model.modules()
    ):
        raise ValueError("this model is already quantized")
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not on_cpu:
        method = "weight-only"  # torch's quantized engines are CPU-only, and nothing is timed off the CPU
    if method == "weight-only" and dtype == torch.float32 and on_cpu:
        logger.warning(
            "weight-only int8 with float32 activations runs a slow kernel on CPU (94 ms per 124M decode "
            "step on an AVX-512 EPYC); use method='auto' or 'dynamic', or a bfloat16 model"
        )
    used: dict[str, int] = {}
    cached = in_cache(getattr(model, "config", None), dtype, lm_head)

    def make(layer: nn.Module) -> nn.Module:
        new = _choose(layer, dtype, method, cached) if on_cpu else Int8Linear.from_float(layer, dtype)
        if new is not layer and isinstance(getattr(layer, "weight", None), torch.Tensor):
            # Timing the float layer may have made its LM head an (in, out) copy (matmul.io_copy, 154 MB for
            # GPT-2), which a tied head's weight, the embedding, would keep alive: the int8 layer replaces it.
            drop_io_copy(layer.weight)
        if new is layer:
            kind = "float"
        elif isinstance(new, DynamicInt8Linear):
            kind = f"dynamic-{new.engine}"
        else:
            kind = "weight-only"
        used[kind] = used.get(kind, 0) + 1
        return new

    with torch.no_grad(), kernels.EVICTOR.held():  # one eviction buffer for all the decisions
        replace_projections(model, make, lm_head)
    model.quantized = "int8 (" + ", ".join(f"{k} x{n}" for k, n in sorted(used.items())) + ")"
    return model
