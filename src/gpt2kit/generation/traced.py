"""The decode step recorded once with TorchScript's tracer and replayed without Python (CPU).

A decode step of the 124M model runs ~250 torch ops, each tiny at batch 1. In eager mode every one of them
pays Python: module calls, argument checks, the dynamic int8 op's Python wrapper. That is ~2.2 ms a step on
one core of a 2-core EPYC, a quarter of an int8 step and most of what separates it from ONNX Runtime.
`torch.jit.trace` records the ops one eager step runs and replays them from C++.

The recording is the eager step itself: `model.transformer(...)` on a cache whose length is read from an
input's shape (`_LengthCache`), so the tracer records the length as a symbol and the replay is right at every
length. The kernels are the ones the eager step chose on this machine (matmul.py's measured float32
choice, packed or int8 layers), replayed in the same order, so the logits equal the eager step's bit for
bit. generate() checks that on the first two steps of each recording (two lengths) before trusting it,
and decodes eagerly if they differ.

Greedy decoding that keeps no scores records the choice too (_PickStep): the eos masks of min_length /
min_new_tokens and the argmax, so the loop between two replays only reads the next tokens.

A recording is kept per model and (batch size, padding, threads, the model's modules and tensors), so
the next generate() call of the same shape skips the ~0.3-0.5 s it costs; it is made only once decoding
that shape has run long enough to pay for it (TRACE_AFTER_STEPS), and only for what the tracer can replay: a CPU model in eval mode without
hooks, attention outputs, extra model inputs or cross-attention. GPT2KIT_TRACE_DECODE=0 turns it off.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from gpt2kit.model import matmul, quant
from gpt2kit.model.cache import Cache

logger = logging.getLogger(__name__)

# A recording costs ~0.3-0.5 s, what 150-250 replayed steps of the 124M model save. It is made once this
# many steps of one shape have been decoded, counting the call about to run: a long call records at its
# start, short calls once they add up (a server, a benchmark, a loop over prompts), a one-off short call
# never. Later calls of that shape replay it.
TRACE_AFTER_STEPS = 256
# Recordings kept per model (batch sizes and padding vary between calls).
_PER_MODEL = 4
_recordings: weakref.WeakKeyDictionary[nn.Module, OrderedDict] = weakref.WeakKeyDictionary()
# Eager steps decoded so far per model and shape, towards TRACE_AFTER_STEPS.
_eager_steps: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()
# Shapes whose recording failed or differed from the eager step: never recorded again for that model.
_refused: weakref.WeakKeyDictionary[nn.Module, set] = weakref.WeakKeyDictionary()


def forget(model: nn.Module) -> None:
    """Drop model's recordings and step counts (its weights moved: a recording holds the old ones)."""
    _recordings.pop(model, None)
    _eager_steps.pop(model, None)


def enabled() -> bool:
    """GPT2KIT_TRACE_DECODE: 1 (default) records decode steps where it can, 0 never does."""
    return os.environ.get("GPT2KIT_TRACE_DECODE", "1").strip() not in ("0", "false", "no", "off")


class _LengthCache(Cache):
    """A StaticCache's buffers with the cached length taken from `probe.shape[0]`: the tracer records a
    shape read as a symbol (a Python int would be frozen into the recording). update() writes the new
    position at length - 1 and returns the first `length` positions, as StaticCache.update does."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], probe: torch.Tensor) -> None:
        self.keys, self.values, self.n = keys, values, probe.shape[0]

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer_idx].narrow(2, self.n - 1, 1).copy_(k)
        self.values[layer_idx].narrow(2, self.n - 1, 1).copy_(v)
        return self.keys[layer_idx].narrow(2, 0, self.n), self.values[layer_idx].narrow(2, 0, self.n)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.n - 1

    def __len__(self) -> int:
        return len(self.keys)


class _Step(nn.Module):
    """One eager decode step, as generate()'s decode_one_token runs it, in the form the tracer takes:
    tensors in, logits (B, V) float32 out. probe: any 1-D tensor as long as the cache after this step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens, position_ids, keys, values, probe, attention_mask=None):
        out = self.model.transformer(
            input_ids=tokens,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=_LengthCache(keys, values, probe),
            use_cache=True,
            return_dict=True,
        )
        logits = self.model.lm_head(out.last_hidden_state.select(1, -1))
        return logits if logits.dtype == torch.float32 else logits.float()


class _PickStep(_Step):
    """_Step and then greedy decoding's choice: -inf at `forbid` (1-D ids, empty when no min_length /
    min_new_tokens mask is in force) and the argmax -> (scores (B, V), next tokens (B,)). Recorded with the
    step, the choice runs without Python: in the loop, after a step has streamed the weights through the
    caches, each of its ops paid ~10-20 us of cold dispatch (the masks and argmax ~90 us of a ~4 ms int8
    step at batch 1, 2-core EPYC)."""

    def forward(self, tokens, position_ids, keys, values, probe, forbid, attention_mask=None):
        logits = super().forward(tokens, position_ids, keys, values, probe, attention_mask)
        scores = logits.index_fill_(-1, forbid, float("-inf"))
        return scores, torch.argmax(scores, dim=-1)


def traceable(model: nn.Module, record, step_inputs: dict) -> bool:
    """Whether a decode step of this model, with these generate() settings, can be recorded and replayed."""
    tr = getattr(model, "transformer", None)
    return (
        enabled()
        and hasattr(torch.jit, "trace")
        and tr is not None
        and model.device.type == "cpu"
        and not model.training
        and record is None  # attentions / hidden states per step are Python-side outputs
        and not step_inputs  # token_type_ids and the like: the eager step
        and getattr(tr, "attn_implementation", "sdpa") != "eager"
        and not model.config.add_cross_attention
        and not _hooked(model)
    )


def _hooked(model: nn.Module) -> bool:
    """Forward hooks run Python the replay would skip."""
    from torch.nn.modules import module as M

    if M._global_forward_hooks or M._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _signature(model: nn.Module, batch_size: int, padded: bool) -> tuple:
    """What a recording depends on: the shape it was made for, the kernel policy and thread count its
    choices were measured under, and the model's modules and tensors (a recording holds the tensors it
    saw, so replaced layers, pack_weights, quantize_int8, .to() or weights written in place need a new
    one)."""
    # A parameter's version too: kernels may read a copy made from it (matmul.io_copy), which the recording
    # holds as a constant, so an in-place update (an optimizer step) must make a new recording.
    tensors = tuple((_storage(t), t.dtype, matmul._version(t)) for t in model.parameters())
    tensors += tuple((_storage(t), t.dtype) for t in model.buffers())
    modules = tuple(id(m) for m in model.modules())
    # batched steps of int8 layers switch engines when a process runs long (quant.few_rows_engines_when_due)
    few = quant.few_rows_engines(model) if 2 <= batch_size <= quant.FEW_ROWS else ()
    return (batch_size, padded, torch.get_num_threads(), matmul.cpu_matmul(), modules, tensors, few)


def _inlined(recording: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """The recording as one flat graph: every module call inlined and every weight a constant
    (torch.jit.freeze's first half), then eval-mode dropout removed and duplicate and dead nodes dropped.

    A trace is a tree of module methods, and each call costs the interpreter a frame: ~150 of them per
    124M step, 0.6 ms of a 6.6 ms int8 step at two threads (the same ops, now 10% faster). None of freeze's
    optimizations run (they rewrite linear and conv ops into others that round differently); these passes
    only remove and merge nodes, and the replay is checked against the eager step all the same. The
    recording itself where freezing fails."""
    try:
        recording.eval()  # the wrapper module's flag (the model is in eval mode already): freezing needs it
        frozen = torch.jit.RecursiveScriptModule(torch._C._freeze_module(recording._c, []))
        torch.jit.RecursiveScriptModule._finalize_scriptmodule(frozen)
        torch._C._jit_pass_remove_dropout(frozen._c)
        graph = frozen.graph
        torch._C._jit_pass_cse(graph)
        torch._C._jit_pass_constant_propagation(graph)
        torch._C._jit_pass_dce(graph)
    except Exception as e:  # noqa: BLE001 - any failure: the recording as it is, which works
        logger.debug("decode recording not inlined (%s: %s)", type(e).__name__, e)
        return recording
    return frozen


def _same(a: torch.Tensor | tuple, b: torch.Tensor | tuple) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b)


def _storage(t: torch.Tensor) -> int:
    """Where t's data lives (oneDNN's packed tensors have no data pointer: the tensor itself, then)."""
    return t.data_ptr() if t.layout == torch.strided else id(t)


class TracedDecode:
    """step(tokens, position_ids, keys, values, probe, attention_mask) for one generate() call: the
    recording when it exists and has proved itself, the eager step until then (and forever if it fails)."""

    def __init__(
        self, model: nn.Module, batch_size: int, padded: bool, steps: int, pick: bool = False
    ) -> None:
        self.model = model
        self.eager = _PickStep(model) if pick else _Step(model)
        self.key = (*_signature(model, batch_size, padded), pick)
        kept = _recordings.get(model)
        self.traced: Callable | None = kept.get(self.key) if kept is not None else None
        self.checks = 0 if self.traced is not None else 2  # a reused recording was checked when made
        self.counts = _eager_steps.setdefault(model, {})
        done = self.counts.get(self.key, 0)
        refused = self.key in _refused.get(model, ())
        self.record = self.traced is None and not refused and done + steps >= TRACE_AFTER_STEPS
        if not self.record and self.traced is None and not refused:
            self.counts[self.key] = done + steps

    def __call__(self, *args: torch.Tensor | list[torch.Tensor] | None) -> torch.Tensor | tuple:
        inputs = tuple(a for a in args if a is not None)
        if self.record:
            self.record = False
            return self._make(inputs)
        if self.traced is None:
            return self.eager(*inputs)
        if self.checks < 2:  # the first replays are compared with the eager step at new lengths
            return self._check(inputs)
        return self._replay(inputs)

    def _replay(self, inputs: tuple) -> torch.Tensor | tuple:
        # Without the graph executor's optimizations: they rewrite ops (layer_norm, linear) into others
        # that round differently (1e-6 off the eager logits), and fuse nothing on CPU that would pay for it.
        with torch.jit.optimized_execution(False):
            return self.traced(*inputs)

    def _make(self, inputs: tuple) -> torch.Tensor | tuple:
        t0 = time.perf_counter()
        # The eager step once first, outside the tracer (it is idempotent, see below): kernel decisions
        # taken at a first use (a decode step's attention, an int8 layer's engine for 2-16 rows) time their
        # candidates, which no trace may record, and one taken only after the trace would make the check
        # step differ from the replay, which refuses the recording for good.
        self.eager(*inputs)
        try:
            with warnings.catch_warnings(), matmul.recording_decode():
                warnings.simplefilter("ignore")  # TracerWarnings about checks frozen at this step's values
                traced = torch.jit.trace(self.eager, inputs, check_trace=False)
        except Exception as e:  # a layer the tracer cannot record: decode eagerly
            logger.debug("decode step not traced (%s: %s); decoding eagerly", type(e).__name__, e)
            self._refuse()
            return self.eager(*inputs)
        self.traced, self.checks = _inlined(traced), 0
        logger.debug("decode step traced in %.2f s", time.perf_counter() - t0)
        # The trace ran the eager step and wrote this position's keys and values; the step is idempotent
        # (it rewrites the same slot), so running the replay now compares the two on the same input.
        return self._check(inputs)

    def _check(self, inputs: tuple) -> torch.Tensor | tuple:
        want = self.eager(*inputs)
        got = self._replay(inputs)
        if not _same(got, want):
            logger.debug("the traced decode step differs from the eager one; decoding eagerly")
            self.traced = None
            self._refuse()
            return want
        self.checks += 1
        if self.checks == 2:
            self.counts.pop(self.key, None)
            kept = _recordings.setdefault(self.model, OrderedDict())
            kept[self.key] = self.traced
            while len(kept) > _PER_MODEL:
                kept.popitem(last=False)
        return want

    def _refuse(self) -> None:
        """Never try this shape again for this model (each try costs a recording)."""
        _refused.setdefault(self.model, set()).add(self.key)
        self.counts.pop(self.key, None)
