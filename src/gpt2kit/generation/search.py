"""The decoding loops: greedy and sampling, beam search, with a static KV cache.

Small functions in the style of gpt-fast: `prefill` runs the prompt once and fills the cache,
`decode_one_token` runs one position per sequence, `choose` picks the next token. `decode` strings them
together as a generator that yields each step's tokens, so `generate()` and streaming share one loop.

Semantics (lengths, padding, eos handling, beam scoring) follow transformers 4.57's generate(), so greedy
and beam search return exactly its tokens for the same checkpoint.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import time
import types
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from gpt2kit.generation import traced
from gpt2kit.generation.config import GenerationConfig
from gpt2kit.generation.processors import (
    NEG_INF,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    build_processors,
    in_vocabulary,
)
from gpt2kit.model import hugepages, quant
from gpt2kit.model.attention import AttentionMask
from gpt2kit.model.cache import Cache, DynamicCache, StaticCache, as_cache
from gpt2kit.model.outputs import ModelOutput
from gpt2kit.model.packed import PackedLinear

logger = logging.getLogger(__name__)

_DEFAULT_MAX_LENGTH = 20  # transformers: without max_length / max_new_tokens, 20 new tokens
# The cache_implementation values generate() takes: they choose the type of the past_key_values it returns
# (gpt2kit decodes on a preallocated static cache either way).
CACHE_IMPLEMENTATIONS = ("static", "dynamic", "dynamic_full")


@dataclass
class GenerateDecoderOnlyOutput(ModelOutput):
    """What generate(return_dict_in_generate=True) returns for greedy and sampling."""

    sequences: torch.LongTensor | None = None
    scores: tuple[torch.FloatTensor, ...] | None = None
    logits: tuple[torch.FloatTensor, ...] | None = None
    # per step, per layer: (B, nh, T_step, S) and (B, T_step, C); T_step is the prompt at the first step,
    # then 1 with the cache (the whole sequence so far without it)
    attentions: tuple[tuple[torch.FloatTensor, ...], ...] | None = None
    hidden_states: tuple[tuple[torch.FloatTensor, ...], ...] | None = None
    past_key_values: Any = None


@dataclass
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """What generate(return_dict_in_generate=True) returns for beam search."""

    sequences: torch.LongTensor | None = None
    sequences_scores: torch.FloatTensor | None = None
    scores: tuple[torch.FloatTensor, ...] | None = None
    logits: tuple[torch.FloatTensor, ...] | None = None
    beam_indices: torch.LongTensor | None = None
    attentions: tuple[tuple[torch.FloatTensor, ...], ...] | None = None  # of all B * num_beams rows
    hidden_states: tuple[tuple[torch.FloatTensor, ...], ...] | None = None
    past_key_values: Any = None


# --- the model calls --------------------------------------------------------------------------------------


class _Record:
    """The per-step attentions and hidden states that generate(return_dict_in_generate=True,
    output_attentions=True / output_hidden_states=True) returns, one forward pass per entry."""

    def __init__(self, attentions: bool, hidden_states: bool) -> None:
        self.attentions: list | None = [] if attentions else None
        self.hidden_states: list | None = [] if hidden_states else None

    def flags(self) -> dict[str, bool]:
        return {
            "output_attentions": self.attentions is not None,
            "output_hidden_states": self.hidden_states is not None,
        }

    def add(self, out) -> None:
        if self.attentions is not None:
            self.attentions.append(out.attentions)
        if self.hidden_states is not None:
            self.hidden_states.append(out.hidden_states)


def _logits(
    model,
    input_ids,
    attention_mask,
    position_ids,
    cache,
    record: _Record | None = None,
    head=None,
    **model_inputs,
) -> torch.Tensor:
    """Run the trunk over input_ids (B, T) and return the last position's logits as float32 (B, V).

    cache: the cache to read and extend, or None to run without one. record: where this pass's attentions
    and hidden states go, when generate() returns them. head: None for the LM head, or a callable
    (model, trunk output with hidden_states) -> logits (B, V) that reads other layers too (DoLa).
    model_inputs: the other forward inputs generate() was given (token_type_ids, head_mask, ...)."""
    flags = record.flags() if record is not None else {}
    if head is not None:
        flags["output_hidden_states"] = True
    out = model.transformer(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=cache is not None,
        return_dict=True,
        **flags,
        **model_inputs,
    )
    if record is not None:
        record.add(out)
    if head is not None:
        return head(model, out)
    return model.lm_head(out.last_hidden_state[:, -1, :]).float()


def prefill(
    model, input_ids, attention_mask, position_ids, cache, record=None, head=None, **model_inputs
) -> torch.Tensor:
    """The whole prompt in one forward pass; fills the cache. -> logits (B, V) of the last position."""
    return _logits(model, input_ids, attention_mask, position_ids, cache, record, head, **model_inputs)


def decode_one_token(
    model, tokens, attention_mask, position_ids, cache, record=None, head=None, **model_inputs
) -> torch.Tensor:
    """One new position per sequence, tokens (B, 1), against the cache. -> logits (B, V)."""
    return _logits(model, tokens, attention_mask, position_ids, cache, record, head, **model_inputs)


class _SlotCache(Cache):
    """A StaticCache's full buffers as the fixed-shape step sees them: `update` writes the new position at
    a tensor index (no Python int that would change every step) and returns the whole buffer."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], slot: torch.Tensor) -> None:
        self.keys, self.values, self.slot = keys, values, slot

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer_idx].index_copy_(2, self.slot, k)
        self.values[layer_idx].index_copy_(2, self.slot, v)
        return self.keys[layer_idx], self.values[layer_idx]


def decode_one_token_static(
    model,
    tokens: torch.Tensor,
    position_ids: torch.Tensor,
    cache_position: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    key_ok: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """decode_one_token with every shape fixed, so that torch.compile traces it once (gpt-fast's step).

    tokens, position_ids (B, 1); cache_position (1,): the cache slot of the new position; keys, values: a
    StaticCache's per-layer buffers (B, nh, S, hs), written in place at that slot; key_ok (B, S) bool,
    False at left padding; token_type_ids (B, 1) or None. Attention reads all S slots and masks the ones
    after cache_position, so no shape depends on how far decoding has got. -> logits (B, V) as float32.
    """
    tr = model.transformer
    x = tr.wte(tokens) + tr.wpe(position_ids)  # (B, 1, C)
    if token_type_ids is not None:  # added after the positions, in GPT2Model's order (same rounding)
        x = x + tr.wte(token_type_ids)
    x = tr.drop(x)
    visible = key_ok & (torch.arange(key_ok.shape[1], device=x.device) <= cache_position)  # (B, S)
    mask = AttentionMask(sdpa=visible[:, None, None, :])
    slots = _SlotCache(keys, values, cache_position)
    for block in tr.h:
        x = block(x, mask, slots)[0]
    return model.lm_head(tr.ln_f(x)[:, -1, :]).float()


# torch.compile's modes; True means "default". Options are checked here so a typo fails before any work.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_COMPILE_KEYS = ("mode", "fullgraph", "dynamic", "backend", "options")
_compiled_steps: dict[str, Any] = {}


def compile_options(compile: bool | str | dict | None) -> dict[str, Any] | None:
    """generate()'s `compile=` -> torch.compile keyword arguments, or None for the eager step.

    False / None: eager. True: torch.compile(mode="default", fullgraph=True, dynamic=False). A mode name
    (one of COMPILE_MODES), or a dict of torch.compile arguments (mode, fullgraph, dynamic, backend, options).
    A max-autotune mode on a CPU also freezes the weights into the step (CPU_MAX_AUTOTUNE, frozen_step).

    >>> compile_options(True)
    {'fullgraph': True, 'dynamic': False, 'mode': 'default'}
    """
    if compile is None or compile is False:
        return None
    opts: dict[str, Any] = {"fullgraph": True, "dynamic": False}
    if compile is True:
        opts["mode"] = "default"
    elif isinstance(compile, str):
        if compile not in COMPILE_MODES:
            raise ValueError(
                f"compile={compile!r} is not a torch.compile mode; use True or one of {COMPILE_MODES}"
            )
        opts["mode"] = compile
    elif isinstance(compile, dict):
        unknown = sorted(set(compile) - set(_COMPILE_KEYS))
        if unknown:
            raise ValueError(
                f"compile= got unknown torch.compile arguments {unknown}; allowed: {_COMPILE_KEYS}"
            )
        if compile.get("mode", "default") not in COMPILE_MODES:
            raise ValueError(f"compile['mode']={compile['mode']!r} is not one of {COMPILE_MODES}")
        opts.update(compile)
    else:
        raise TypeError(
            f"compile must be a bool, a torch.compile mode name or a dict, got {type(compile).__name__}"
        )
    return opts


def compiled_step(options: dict[str, Any], model=None):
    """decode_one_token_static under torch.compile with these options, built once per option set (and, for a
    step with frozen weights, per model and weights: see frozen_step).

    Compilation itself happens on the first call for each (batch size, cache length, dtype), and again
    whenever one of those changes (up to torch._dynamo's recompile limit, then it runs eagerly).
    """
    if model is not None and freezes(options, next(model.parameters()).device):
        return frozen_step(model, options)
    key = _options_key(options)
    if key not in _compiled_steps:
        _compiled_steps[key] = torch.compile(decode_one_token_static, **options)
    return _compiled_steps[key]


def _options_key(options: dict[str, Any]) -> str:
    return repr(sorted(options.items()))


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return list(itertools.chain(model.parameters(), model.buffers()))


# compile="max-autotune" on a CPU: inductor's max-autotune with the weights frozen into the step, so that it
# can lay them out at compile time and multiply with its own C++ GEMM kernels ("CPP"), each product's kernel
# chosen against torch's ("ATEN") by timing. Without freezing it has no CPU GEMM of its own to choose. Measured
# (benchmarks/RESULTS.md, session 10): 124M fp32 batch 1, 8.0 ms/step against 10.1 with pack_weights and 9.2
# for ONNX Runtime fp32, the same greedy tokens.
# They are set around each call: inductor reads `freezing` while dynamo traces, before torch.compile's options
# apply (passed as an option it did nothing: the LM head's product stayed on MKL, 8.9 ms against 3.0).
# The last two keep inductor's per-product timing tables (~8 lines each, dozens of products) off stderr.
CPU_MAX_AUTOTUNE = {
    "max_autotune": True,
    "freezing": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    "autotune_num_choices_displayed": 0,
    "max_autotune_report_choices_stats": False,
}
_frozen_steps: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, tuple[tuple, Any]]] = (
    weakref.WeakKeyDictionary()
)


def freezes(options: dict[str, Any], device: torch.device) -> bool:
    """Whether these compile options get CPU_MAX_AUTOTUNE: a max-autotune mode, inductor, no options of the
    caller's own (torch.compile takes a mode or options, not both), the model on a CPU."""
    return (
        device.type == "cpu"
        and str(options.get("mode", "default")).startswith("max-autotune")
        and options.get("backend", "inductor") == "inductor"
        and "options" not in options
    )


_SAMPLES = 64  # elements of each tensor that weights_version reads


def weights_version(model: torch.nn.Module) -> tuple:
    """What changes when a model's weights do: each parameter's and buffer's storage, its version counter
    (bumped by every in-place write through it: an optimizer step, load_state_dict, `p.mul_()` under
    no_grad) and 64 of its elements spread evenly (writes through `p.data` or NumPy bump no counter; an
    inference tensor has none). A change through `.data` that misses all 64 elements of every tensor goes
    unseen: torch._dynamo.reset() then drops the frozen step. Costs ~1 ms a generate() call (124M)."""
    tensors = _weights(model)
    with torch.no_grad():
        views = []
        for t in tensors:
            flat = t.detach().reshape(-1)  # (a view where contiguous, as parameters are)
            view = flat[:: max(1, flat.numel() // _SAMPLES)][:_SAMPLES]
            views.append(view if view.dtype == torch.float32 else view.float())
        samples = torch.cat(views).tolist() if views else []  # one copy, one conversion
    counters = tuple((t.data_ptr(), 0 if t.is_inference() else t._version) for t in tensors)
    return counters, tuple(samples)


def frozen_step(model: torch.nn.Module, options: dict[str, Any]):
    """The max-autotune step of CPU_MAX_AUTOTUNE for this model as its weights are now. Frozen weights are
    constants of the compiled code: a step compiled before the weights changed in place would go on computing
    with the old ones (measured: other tokens, silently), so a change gets a step of its own, compiled again.
    Each is a copy of decode_one_token_static with its own code object, since dynamo keeps compiled code per
    code object and would find the old graph for the same model again.

    Memory: dynamo's cache holds a frozen step's weights (the model's own tensors) until torch._dynamo.reset(),
    also after the model is collected or its weights changed; their packed copies in inductor's module cache
    go when the step does (_drop_frozen_weights), which that reset alone would not free."""
    key = _options_key(options)
    version = weights_version(model)
    held = _frozen_steps.setdefault(model, {})
    if key in held and held[key][0] == version:
        return held[key][1]
    if key in held:
        logger.warning(
            "the model's weights changed since its decode step was compiled with them frozen in "
            "(compile=%r on a CPU): compiling the step again",
            options.get("mode"),
        )
    f = decode_one_token_static
    fn = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    kwargs = {k: v for k, v in options.items() if k != "mode"}
    compiled = torch.compile(fn, **kwargs)
    # inductor's autotuner calls a deprecated torch API on each product (its own business, nothing the user
    # can act on): that one warning only, only from inductor.
    warnings.filterwarnings("ignore", "TypedStorage is deprecated", UserWarning, r"torch\._inductor")
    from torch._inductor import config as inductor_config
    from torch._inductor.codecache import PyCodeCache

    loaded: list = []  # the inductor modules this step's compilations loaded
    # Its weights, by id: a module loaded during a call is this step's only if it holds one of them as a
    # frozen constant (another thread may compile at the same time; its modules are not ours to empty).
    own = {id(t) for t in _weights(model)}

    @functools.wraps(fn)
    def step(*args):
        n = len(PyCodeCache.modules)
        # (process-wide settings, for the time of the call: a compilation another thread starts meanwhile
        # gets them too)
        with inductor_config.patch(CPU_MAX_AUTOTUNE):
            out = compiled(*args)
        for module in PyCodeCache.modules[n:]:
            if any(id(v) in own for v in vars(module).values() if isinstance(v, torch.Tensor)):
                loaded.append(module)
        return out

    weakref.finalize(step, _drop_frozen_weights, loaded).atexit = False
    held[key] = (version, step)
    return step


def _drop_frozen_weights(modules: list) -> None:
    """Once a frozen step is gone (its model collected, or its weights changed): its compiled modules' frozen
    weights and packed copies, which inductor's module cache (PyCodeCache) would keep until the process ends.
    Nothing calls those modules again: only the step reached their code."""
    for module in modules:
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor):
                delattr(module, name)


# Processors whose effect decode() may apply in place (_forbidden_ids): they forbid eos up to a length.
_EOS_MASKS = (MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor)


def _in_place_masks(plan: _Plan, scores_out: list | None, logits_out: list | None) -> list | None:
    """The processors, when the loop may apply them to the step's logits in place: each only forbids eos
    until a length (min_length, min_new_tokens) and nobody keeps the logits. The list's own call copies
    the (B, V) scores once per processor; with the loop's bookkeeping that was ~110 us of a ~4 ms int8 step
    at batch 1 (2-core EPYC), a fifth of what is not a product. None: run the list."""
    procs = plan.processors
    if scores_out is not None or logits_out is not None or plan.head is not None:
        return None
    if type(procs) is not LogitsProcessorList or not all(type(p) in _EOS_MASKS for p in procs):
        return None
    return list(procs)


def choose(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """scores (B, V) after the processors -> next tokens (B,): argmax, or a draw from softmax(scores)."""
    if do_sample:
        probs = torch.softmax(scores, dim=-1)
        return multinomial_one(probs, generator)
    return torch.argmax(scores, dim=-1)


def multinomial_one(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """torch.multinomial(probs, 1).squeeze(1): the same token and the same generator state after, faster on
    a CPU.

    torch draws one exponential per entry, q = -log1p(-u) with u uniform from 53 random bits in float64,
    rounds q to float32 and takes argmax(probs / q); its CPU kernel takes those logarithms one at a time:
    ~790 us for GPT-2's 50257 ids at batch 1 and ~6.1 ms at batch 8 (2-core EPYC), more than a decode step.
    torch.rand(float64) draws the same uniforms and a vectorized log1p gives the same q: ~270 us and ~2.8 ms.
    That rests on how torch's kernels draw, so it is checked against torch.multinomial once per process
    (_same_draws), and torch.multinomial runs where it differs, for other dtypes, devices and layouts, and
    for rows it would refuse (nan, negative, all zero), so that its error is the one raised. (The float64
    logarithms may differ from torch's scalar ones in the last bit; rounded to float32 they were equal for 2M
    draws, and a difference could only move a draw at a near-tie of probs / q.)"""
    if (
        probs.device.type != "cpu"
        or probs.dtype != torch.float32
        or probs.dim() != 2
        or not probs.is_contiguous()  # torch draws in memory order, torch.rand in index order
        or not _same_draws()
    ):
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
    totals = probs.sum(-1)
    if not bool(((totals > 0) & torch.isfinite(totals)).all() & (probs.amin() >= 0)):
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # its error
    return _exponential_race(probs, generator)


def _exponential_race(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(probs.shape, dtype=torch.float64, generator=generator)
    q = u.neg_().log1p_().neg_().to(torch.float32)  # in place: at batch 8 each new buffer cost ~0.5 ms
    return torch.argmax(torch.div(probs, q, out=q), dim=-1)


@functools.cache
def _same_draws() -> bool:
    """Whether _exponential_race draws what torch.multinomial draws here, generator state included."""
    try:
        g = torch.Generator().manual_seed(1234)
        for shape in ((1, 997), (3, 4099)):
            probs = torch.softmax(torch.randn(shape, generator=g) * 4, dim=-1)
            probs[:, ::7] = 0.0  # masked tokens, as top-k / top-p leave them
            seed = int(torch.randint(1 << 30, (1,), generator=g))
            a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            for _ in range(3):
                want = torch.multinomial(probs, num_samples=1, generator=a).squeeze(1)
                if not torch.equal(_exponential_race(probs, b), want):
                    return False
            if not torch.equal(a.get_state(), b.get_state()):
                return False
    except Exception as e:  # noqa: BLE001 - any failure: torch.multinomial, which is always right
        logger.debug("fast multinomial not used (%s: %s)", type(e).__name__, e)
        return False
    return True


# --- setting up a call ------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Everything a loop needs, resolved once from generate()'s arguments."""

    input_ids: torch.Tensor  # (B, T), already expanded for beams / return sequences
    attention_mask: torch.Tensor | None  # (B, T) or None when nothing is padded
    config: GenerationConfig
    max_length: int  # total length, prompt included
    eos: torch.Tensor | None  # (n_eos,)
    pad_token_id: int | None
    processors: LogitsProcessorList
    stop_checker: _StopStrings | None
    compile: dict[str, Any] | None = None  # torch.compile arguments for the decode step, or None (eager)
    # The caller's position_ids (B, T), expanded like input_ids; None: counted from the mask.
    position_ids: torch.Tensor | None = None
    # The other forward inputs (token_type_ids, head_mask, ...), per-row ones expanded like input_ids.
    model_inputs: dict[str, Any] = field(default_factory=dict)
    # past_key_values the caller passed (expanded like input_ids): their positions are not run again.
    past: Cache | None = None
    # The prompt's embeddings (B, T, C) the caller passed with input_ids: the prefill reads them instead.
    inputs_embeds: torch.Tensor | None = None
    # generate(assistant_model=...): the draft model whose greedy tokens the model verifies, or None.
    assistant: Any = None
    # The decoding strategy: "greedy", "sample", "beam", "group_beam", "constrained_beam", "contrastive",
    # "dola" or "assisted" (prompt lookup or a draft model).
    mode: str = "greedy"
    # What turns a forward pass into next-token logits when not the LM head alone (DoLa's contrast of
    # layers); see _logits.
    head: Any = None
    # Columns at the start of input_ids that only stand in for an embeddings-only prompt (generate(
    # inputs_embeds=...) without input_ids): the prefill reads the embeddings, processors and stop strings
    # never see these columns, and the returned sequences leave them out, as transformers returns only the
    # new tokens then.
    hidden_prompt: int = 0


class _SkipPrompt:
    """A processor list or stop checker that sees the token ids without the first n columns."""

    def __init__(self, fn, n: int) -> None:
        self.fn, self.n = fn, n

    def __call__(self, input_ids: torch.Tensor, *args, **kwargs):
        return self.fn(input_ids[..., self.n :], *args, **kwargs)


# Forward inputs generate() passes on to the model, as transformers' generate() does with **model_kwargs.
# Per-row tensors among them are expanded with input_ids for beams and return sequences.
MODEL_INPUTS = (
    "token_type_ids",
    "position_ids",
    "head_mask",
    "encoder_hidden_states",
    "encoder_attention_mask",
)
_PER_ROW_INPUTS = ("token_type_ids", "position_ids", "encoder_hidden_states", "encoder_attention_mask")
# Forward arguments transformers' generate() accepts that cannot change the tokens: it drops labels before
# calling the model, and logits_to_keep only trims logits that generate() does not read.
_IGNORED_INPUTS = ("labels", "logits_to_keep")
# Forward arguments generate() runs itself; accepted only as None.
_OWN_INPUTS = ("cache_position", "return_dict")
# transformers' decoding modes that gpt2kit does not implement; accepted only as None (their default).
_UNSUPPORTED = {
    "assistant_tokenizer": "assisted decoding",
}


def _split_model_inputs(unused: dict[str, Any]) -> dict[str, Any]:
    """generate()'s keyword arguments that are not GenerationConfig fields -> the forward inputs to pass on.

    Raises TypeError naming the ones that are neither, as transformers does (it raises ValueError)."""
    for name, mode in _UNSUPPORTED.items():
        if unused.pop(name, None) is not None:
            raise ValueError(
                f"generate(): {name}= asks for {mode}, which gpt2kit does not implement; generate without "
                f"{name} (greedy search gives the tokens {mode} would verify), or use transformers for it"
            )
    unknown = sorted(k for k in unused if k not in MODEL_INPUTS + _IGNORED_INPUTS + _OWN_INPUTS)
    if unknown:
        raise TypeError(
            f"generate() got unexpected keyword arguments {unknown}; pass GenerationConfig fields "
            "(max_new_tokens, do_sample, temperature, top_k, top_p, num_beams, ...) or forward inputs "
            f"({', '.join(MODEL_INPUTS)})"
        )
    own = sorted(k for k in _OWN_INPUTS if unused.get(k) is not None)
    if own:
        raise TypeError(
            f"generate() does not take {own} in gpt2kit: it builds the cache, positions and outputs itself; "
            "pass the prompt as input_ids"
        )
    return {k: v for k, v in unused.items() if k in MODEL_INPUTS and v is not None}


def _check_model_inputs(inputs: dict[str, Any], input_ids: torch.Tensor) -> dict[str, Any]:
    """Check the forward inputs against the prompt (B, T) and move them to its device."""
    B, T = input_ids.shape
    out = {}
    for name, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"generate(): {name} must be a tensor, got {type(value).__name__}")
        value = value.to(input_ids.device)
        if name in ("token_type_ids", "position_ids"):
            if value.dim() != 2 or value.shape[1] != T or value.shape[0] not in (1, B):
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)} but input_ids {tuple(input_ids.shape)}; "
                    f"pass one {name[:-4]} id per prompt token, shape ({B}, {T})"
                )
            value = value.expand(B, T)
        elif name in ("encoder_hidden_states", "encoder_attention_mask") and value.shape[0] != B:
            raise ValueError(f"{name} holds {value.shape[0]} rows but input_ids {B}; pass one row per prompt")
        out[name] = value
    if "encoder_hidden_states" not in out and "encoder_attention_mask" in out:
        raise ValueError("encoder_attention_mask was passed without encoder_hidden_states; pass both")
    return out


def plan_generation(
    model,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    generation_config: GenerationConfig | None,
    logits_processor=None,
    tokenizer=None,
    truncate_prompt: bool = False,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    compile: bool | str | dict | None = False,
    assistant_model=None,
    **kwargs: Any,
) -> _Plan:
    compile_opts = compile_options(compile)
    if compile_opts is not None and any(isinstance(m, PackedLinear) for m in model.modules()):
        raise ValueError(
            "compile= cannot trace a model after pack_weights() (oneDNN's packed tensors are opaque to "
            "torch.compile); use one of the two, or quantize_int8(model) with compile="
        )
    base = generation_config or getattr(model, "generation_config", None)
    if base is None:
        base = GenerationConfig.from_model_config(model.config)
    cfg = copy.deepcopy(base)
    user_set_max_length = "max_length" in kwargs
    past = as_cache(kwargs.pop("past_key_values", None))
    inputs_embeds = kwargs.pop("inputs_embeds", None)
    model_inputs = _split_model_inputs(cfg.update(**kwargs))
    uncompiled = sorted(set(model_inputs) - {"token_type_ids", "position_ids"})
    if compile_opts is not None and uncompiled:
        raise ValueError(
            f"compile= runs a fixed-shape decode step that has no {uncompiled}; generate without compile= "
            "to pass them"
        )
    if cfg.cache_implementation not in (None, *CACHE_IMPLEMENTATIONS):
        raise ValueError(
            f"cache_implementation={cfg.cache_implementation!r} is not one gpt2kit runs; use 'static' or "
            "'dynamic' (or leave it unset): gpt2kit decodes on its own preallocated cache either way, and the "
            "choice sets the type of the past_key_values returned"
        )
    returns_layers = cfg.return_dict_in_generate and (cfg.output_attentions or cfg.output_hidden_states)
    if compile_opts is not None and (returns_layers or not cfg.use_cache):
        raise ValueError(
            "compile= runs a fixed-shape cached decode step, which returns no attentions or hidden states and "
            "needs use_cache=True; generate without compile= for output_attentions, output_hidden_states or "
            "use_cache=False"
        )
    n_positions = model.config.n_positions

    hidden_prompt = 0
    if input_ids is None and inputs_embeds is not None:
        # An embeddings-only prompt. As transformers: the ids start empty (placeholder columns here, which
        # nothing reads), max_length counts the embedded prompt, and the cache is needed to step past it.
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3:
            raise ValueError(
                "inputs_embeds must be a (batch, length, n_embd) tensor, got "
                f"{getattr(inputs_embeds, 'shape', type(inputs_embeds))}"
            )
        hidden_prompt = inputs_embeds.shape[1]
        input_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=model.device)
        cfg.use_cache = True
    if input_ids is None:
        bos = cfg.bos_token_id if cfg.bos_token_id is not None else model.config.bos_token_id
        if bos is None:
            raise ValueError("generate() needs input_ids, or a bos_token_id to start from")
        input_ids = torch.tensor([[bos]], device=model.device)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be a (batch, length) tensor, got {getattr(input_ids, 'shape', type(input_ids))}; "
            "use tok(texts, return_tensors='pt', padding=True)"
        )
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty; generate() needs at least one token (or no input_ids at all)")
    input_ids = input_ids.to(model.device)
    model_inputs = _check_model_inputs(model_inputs, input_ids)
    position_ids = model_inputs.pop("position_ids", None)

    eos = cfg.eos_token_id
    eos_list = [eos] if isinstance(eos, int) else list(eos or [])
    pad = cfg.pad_token_id
    if pad is None and eos_list:
        logger.info("Setting pad_token_id to eos_token_id %s for open-end generation.", eos_list[0])
        pad = eos_list[0]
    if attention_mask is None:
        # As transformers: infer the mask from pad tokens only when pad differs from eos (and from ids only).
        if not hidden_prompt and pad is not None and pad not in eos_list and bool((input_ids == pad).any()):
            attention_mask = (input_ids != pad).long()
    else:
        attention_mask = attention_mask.to(input_ids.device)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}"
            )
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # nothing padded: the faster unmasked path gives the same result
    if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):
        logger.warning(
            "A decoder-only architecture is being used, but right-padding was detected! For correct generation "
            "results, please set `padding_side='left'` when initializing the tokenizer."
        )

    # Lengths, as transformers resolves them.
    T = input_ids.shape[1]
    if cfg.max_new_tokens is not None:
        max_length = T + cfg.max_new_tokens
    elif hidden_prompt:  # transformers takes the embedded prompt out of max_length: it counts the prompt
        max_length = cfg.max_length
    elif not user_set_max_length and cfg.max_length == _DEFAULT_MAX_LENGTH:
        max_length = min(T + _DEFAULT_MAX_LENGTH, n_positions)
    else:
        max_length = cfg.max_length
    if max_length > n_positions:
        new = max_length - T
        if truncate_prompt and new < n_positions and past is None and inputs_embeds is None:
            keep = n_positions - new
            logger.warning("dropping the first %d prompt tokens to fit n_positions=%d", T - keep, n_positions)
            input_ids = input_ids[:, -keep:]
            attention_mask = attention_mask[:, -keep:] if attention_mask is not None else None
            position_ids = position_ids[:, -keep:] if position_ids is not None else None
            if "token_type_ids" in model_inputs:
                model_inputs["token_type_ids"] = model_inputs["token_type_ids"][:, -keep:]
            T, max_length = keep, n_positions
        else:
            raise ValueError(
                f"the prompt ({T} tokens) plus {new} new tokens is {max_length}, beyond the model's "
                f"n_positions={n_positions}; lower max_new_tokens, shorten the prompt, or pass "
                "truncate_prompt=True to drop the prompt's left part"
            )
    if max_length <= T:
        logger.warning(
            "max_length=%d leaves no room after a %d-token prompt; nothing is generated", max_length, T
        )
    cfg.max_length = max_length
    if cfg.min_new_tokens is not None:
        cfg.min_length = T + cfg.min_new_tokens

    if cfg.num_beams > 1 and cfg.num_return_sequences > cfg.num_beams:
        raise ValueError(
            f"num_return_sequences ({cfg.num_return_sequences}) must be <= num_beams ({cfg.num_beams})"
        )
    if past is not None:
        past = _check_past(past, input_ids, cfg)
    if inputs_embeds is not None:
        inputs_embeds = _check_embeds(inputs_embeds, input_ids, model.config.n_embd)
    if cfg.num_beams == 1 and not cfg.do_sample and cfg.num_return_sequences > 1:
        raise ValueError("greedy search returns one sequence per prompt; use do_sample=True or num_beams > 1")
    expand = cfg.num_beams if cfg.num_beams > 1 else cfg.num_return_sequences
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        attention_mask = (
            attention_mask.repeat_interleave(expand, dim=0) if attention_mask is not None else None
        )
        # As transformers' _expand_inputs_for_generation; head_mask is per layer and head, not per row.
        position_ids = position_ids.repeat_interleave(expand, dim=0) if position_ids is not None else None
        if inputs_embeds is not None:
            inputs_embeds = inputs_embeds.repeat_interleave(expand, dim=0)
        for name in _PER_ROW_INPUTS:
            if name in model_inputs:
                model_inputs[name] = model_inputs[name].repeat_interleave(expand, dim=0)

    from gpt2kit.generation import strategies

    mode = strategies.resolve_mode(cfg, assistant_model)
    speculative = cfg.prompt_lookup_num_tokens is not None or assistant_model is not None
    if speculative and (mode == "assisted" or cfg.num_beams > 1):
        _check_speculation(cfg, input_ids, position_ids, compile_opts, assistant_model, model)
    strategies.check_plan(mode, cfg, model, compile_opts, past, inputs_embeds)
    if hidden_prompt and (speculative or past is not None):
        raise ValueError(
            "an embeddings-only prompt (inputs_embeds without input_ids) runs without "
            f"{'past_key_values' if past is not None else 'prompt lookup or an assistant model'} in gpt2kit; "
            "pass the prompt's input_ids too"
        )

    stop_strings = cfg.stop_strings
    stop_checker = None
    if stop_strings:
        if tokenizer is None:
            raise ValueError(
                "stop_strings need the tokenizer: call generate(..., stop_strings=..., tokenizer=tok)"
            )
        stop_checker = _StopStrings(
            [stop_strings] if isinstance(stop_strings, str) else list(stop_strings), tokenizer
        )

    procs_cfg = cfg
    if hidden_prompt:  # the processors count only new tokens, as transformers' empty input_ids have them
        procs_cfg = copy.copy(cfg)
        procs_cfg.max_length = max_length - T
        procs_cfg.min_length = max((cfg.min_length or 0) - T, 0)
    procs = build_processors(
        procs_cfg,
        prompt_length=T - hidden_prompt,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        logits_processor=logits_processor,
        vocab_size=model.config.vocab_size,
        device=input_ids.device,
    )
    if hidden_prompt:
        procs = _SkipPrompt(procs, hidden_prompt)
        stop_checker = _SkipPrompt(stop_checker, hidden_prompt) if stop_checker is not None else None
    eos_tensor = torch.tensor(eos_list, device=input_ids.device) if eos_list else None
    return _Plan(
        input_ids,
        attention_mask,
        cfg,
        max_length,
        eos_tensor,
        pad,
        procs,
        stop_checker,
        compile_opts,
        position_ids,
        model_inputs,
        past,
        inputs_embeds,
        assistant_model if mode == "assisted" else None,
        mode,
        strategies.dola_head(cfg, model) if mode == "dola" else None,
        hidden_prompt,
    )


def _check_speculation(cfg, input_ids, position_ids, compile_opts, assistant, model) -> None:
    """Refuse what prompt lookup and assisted decoding do not run. Beam search ignores them with a warning,
    as transformers does."""
    name = "prompt_lookup_num_tokens" if cfg.prompt_lookup_num_tokens is not None else "assistant_model"
    mode = "prompt lookup decoding" if name == "prompt_lookup_num_tokens" else "assisted decoding"
    if cfg.num_beams > 1:
        logger.warning(
            "%s= runs with greedy search only; beam search (num_beams=%d) ignores it", name, cfg.num_beams
        )
        return
    if input_ids.shape[0] != 1:
        raise ValueError(
            f"{name}= asks for {mode}, which gpt2kit does not implement for a batch ({input_ids.shape[0]} "
            "prompts), as transformers; pass one prompt at a time"
        )
    if not cfg.use_cache:
        raise ValueError(f"{name}= verifies proposals against the cache; pass use_cache=True")
    unsupported = ["position_ids"] * (position_ids is not None) + ["compile"] * (compile_opts is not None)
    if unsupported:
        raise ValueError(
            f"{name}= does not run with {unsupported} in gpt2kit; generate without them, or without {name}"
        )
    if cfg.prompt_lookup_num_tokens is None:
        if not (hasattr(assistant, "transformer") and hasattr(assistant, "lm_head")):
            raise TypeError(
                f"assistant_model must be a gpt2kit language model (GPT2LMHeadModel), got {type(assistant).__name__}"
            )
        if assistant.config.vocab_size != model.config.vocab_size:
            raise ValueError(
                f"assistant_model has vocab_size={assistant.config.vocab_size} but the model "
                f"{model.config.vocab_size}; the draft must share the model's tokenizer"
            )
        if assistant.config.n_positions < cfg.max_length:
            raise ValueError(
                f"assistant_model holds n_positions={assistant.config.n_positions}, fewer than "
                f"max_length={cfg.max_length}; lower max_new_tokens"
            )


def _check_embeds(embeds: torch.Tensor, input_ids: torch.Tensor, n_embd: int) -> torch.Tensor:
    """inputs_embeds (B, T, C) for the prompt input_ids (B, T), already expanded like them."""
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3:
        raise ValueError(
            f"inputs_embeds must be a (batch, length, n_embd) tensor, got {getattr(embeds, 'shape', type(embeds))}"
        )
    if tuple(embeds.shape) != (*input_ids.shape, n_embd):
        raise ValueError(
            f"inputs_embeds has shape {tuple(embeds.shape)} but input_ids {tuple(input_ids.shape)}; pass one "
            f"{n_embd}-wide embedding per prompt token"
        )
    return embeds.to(input_ids.device)


def _check_past(past: Cache, input_ids: torch.Tensor, cfg: GenerationConfig) -> Cache:
    """The caller's past_key_values, checked against the prompt (B, T) and expanded for beams / return
    sequences as input_ids will be."""
    B, T = input_ids.shape
    n = past.get_seq_length()
    if not cfg.use_cache:
        raise ValueError("past_key_values= continues from a cache, which needs use_cache=True")
    if n >= T:
        raise ValueError(
            f"past_key_values holds {n} positions but input_ids only {T}; pass the whole sequence (the cached "
            "part and at least one new token) as input_ids, as transformers expects"
        )
    layers = past.to_legacy_cache()
    if layers and layers[0][0].shape[0] != B:
        raise ValueError(
            f"past_key_values holds {layers[0][0].shape[0]} rows but input_ids {B}; pass the cache of these prompts"
        )
    expand = cfg.num_beams if cfg.num_beams > 1 else cfg.num_return_sequences
    if expand > 1:
        layers = tuple((k.repeat_interleave(expand, 0), v.repeat_interleave(expand, 0)) for k, v in layers)
    return DynamicCache.from_legacy_cache(layers)


def _start(model, plan: _Plan, position_ids: torch.Tensor, cache: StaticCache | None, record) -> torch.Tensor:
    """The prefill: the prompt in one pass -> logits (B, V) of its last position. With the caller's
    past_key_values, those positions are copied into the cache and only the rest of the prompt runs."""
    n = 0
    inputs = plan.model_inputs
    if plan.past is not None and cache is not None:
        n = plan.past.get_seq_length()
        for i, (k, v) in enumerate(plan.past):
            cache.update(
                i, k.to(cache.k[i].device, cache.k[i].dtype), v.to(cache.v[i].device, cache.v[i].dtype)
            )
        if "token_type_ids" in inputs:
            inputs = {**inputs, "token_type_ids": inputs["token_type_ids"][:, n:]}
    ids = plan.input_ids[:, n:]
    if plan.inputs_embeds is not None:  # the caller's embeddings stand in for the ids' lookup
        ids, inputs = None, {**inputs, "inputs_embeds": plan.inputs_embeds[:, n:]}
    return prefill(model, ids, plan.attention_mask, position_ids[:, n:], cache, record, plan.head, **inputs)


class _StopStrings:
    """Checks whether a sequence's text has just reached one of the stop strings.

    A stop string counts when it ends inside the newest token's text, as transformers' StopStringCriteria
    decides, so a string split across several tokens is still found.
    """

    def __init__(self, stops: list[str], tokenizer) -> None:
        if not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop_strings must be non-empty strings, got {stops!r}")
        self.stops = stops
        self.tokenizer = tokenizer
        # Every token decodes to at least one byte, so this many tokens always cover the longest stop string.
        self.window = max(len(s.encode("utf-8")) for s in stops) + 1

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, t) -> (B,) bool: which rows end with a stop string."""
        hits = []
        for row in tokens[:, -self.window :].tolist():
            text = self.tokenizer.decode(row)
            last = self.tokenizer.decode(row[-1:])
            # The match must end in the last token's text: beyond len(text) - len(last).
            hits.append(
                any(text.find(s, max(0, len(text) - len(last) - len(s) + 1)) >= 0 for s in self.stops)
            )
        return torch.tensor(hits, device=tokens.device)


def _position_ids(attention_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """Positions that count only real tokens, so a left-padded prompt starts at 0 (as transformers)."""
    if attention_mask is None:
        return torch.arange(T, device=device).expand(B, T)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def _positions(plan: _Plan, B: int, T: int) -> tuple[torch.Tensor, int]:
    """-> (the prompt's position_ids (B, T), how much a new token's position grows per step).

    Without position_ids from the caller, positions count real tokens and grow by one per new token. With
    them, transformers 4.57 feeds every new token the prompt's last position (it slices the caller's
    position_ids to their last column at each step and never extends them), so the step is 0.
    """
    if plan.position_ids is not None:
        return plan.position_ids, 0
    return _position_ids(plan.attention_mask, B, T, plan.input_ids.device), 1


def _step_inputs(plan: _Plan) -> dict[str, Any]:
    """The forward inputs of one decode step: as transformers, each new token takes the token type of the
    prompt's last column (it extends token_type_ids by repeating that column)."""
    inputs = dict(plan.model_inputs)
    if "token_type_ids" in inputs:
        inputs["token_type_ids"] = inputs["token_type_ids"][:, -1:]
    return inputs


# The compiled step's cache length is max_length rounded up to this, so that nearby lengths share one
# compiled graph (each new shape costs a full compile); the extra slots are masked, and cost one more
# K/V read per slot and layer.
_CACHE_BUCKET = 64


def _new_cache(model, plan: _Plan, batch_size: int) -> StaticCache:
    length = plan.max_length
    if plan.compile is not None:
        length = -(-length // _CACHE_BUCKET) * _CACHE_BUCKET
    cache = StaticCache.for_model(
        model.config, batch_size, length, dtype=model.dtype, device=plan.input_ids.device
    )
    if plan.compile is not None:
        # The fixed-shape step reads every slot and masks the unfilled ones; a masked slot still enters the
        # attention as probability 0 x value, and 0 x NaN from uninitialised memory would be NaN.
        for buf in (*cache.k, *cache.v):
            buf.zero_()
    return cache


def _returned_cache(cache: StaticCache | None, config: GenerationConfig) -> Cache | None:
    """The past_key_values generate() returns: as transformers, a DynamicCache of the cached positions, or
    the StaticCache itself with cache_implementation="static"; None without a cache (use_cache=False)."""
    if cache is None:
        return None
    if config.cache_implementation == "static":
        return cache
    return DynamicCache.from_legacy_cache(cache.to_legacy_cache())


def _recompute_step(model, plan: _Plan, mask: torch.Tensor | None, record: _Record | None):
    """use_cache=False: each step runs the whole sequence so far again, as transformers does without a
    cache (slower; the attentions and hidden states returned then cover every position)."""
    B, T = plan.input_ids.shape
    prompt_pos, advance = _positions(plan, B, T)
    inputs = dict(plan.model_inputs)
    types = inputs.pop("token_type_ids", None)

    def step(tokens, cur, position_ids, history):
        new = cur - T
        offsets = torch.arange(1, new + 1, device=prompt_pos.device) * advance
        pos = torch.cat([prompt_pos, prompt_pos[:, -1:] + offsets], dim=1)
        if types is not None:  # as transformers: each new token takes the type of the prompt's last column
            inputs["token_type_ids"] = torch.cat([types, types[:, -1:].expand(-1, new)], dim=1)
        return _logits(
            model,
            history,
            mask[:, :cur] if mask is not None else None,
            pos,
            None,
            record,
            plan.head,
            **inputs,
        )

    return step


def _step_function(
    model,
    plan: _Plan,
    cache: StaticCache | None,
    mask: torch.Tensor | None,
    record: _Record | None = None,
    trace: bool = False,
    pick: list | None = None,
):
    """-> step(tokens (B, 1), cur, position_ids (B, 1), history (B, cur)) -> logits (B, V) for the token at
    position cur - 1: the eager decode_one_token, the compiled fixed-shape decode_one_token_static, or
    without a cache a forward pass over the whole history. trace: the eager step may be recorded and
    replayed without Python (traced.py; the same logits), for loops that feed it one position after another.
    pick: greedy decoding's ids to forbid per length (_forbidden_ids); a recorded step then also applies
    them and takes the argmax, and returns (scores, next tokens (B,)) instead of the logits."""
    if cache is None:
        return _recompute_step(model, plan, mask, record)
    inputs = _step_inputs(plan)
    if plan.compile is None and trace and plan.head is None and traced.traceable(model, record, inputs):
        return _traced_step(model, plan, cache, mask, pick)
    if plan.compile is None:

        def step(tokens, cur, position_ids, history=None):
            return decode_one_token(
                model,
                tokens,
                mask[:, :cur] if mask is not None else None,
                position_ids,
                cache,
                record,
                plan.head,
                **inputs,
            )

        return step

    fn = compiled_step(plan.compile, model)
    B, S = shape = (plan.input_ids.shape[0], cache.max_length)
    key_ok = torch.ones(shape, dtype=torch.bool, device=plan.input_ids.device)
    if mask is not None:
        key_ok[:, : mask.shape[1]] = mask.bool()
    calls = 0

    def step(tokens, cur, position_ids, history=None):
        nonlocal calls
        t0 = time.perf_counter()
        logits = fn(
            model,
            tokens,
            position_ids,
            torch.tensor([cur - 1], device=tokens.device),
            cache.k,
            cache.v,
            key_ok,
            inputs.get("token_type_ids"),
        )
        if calls == 0:  # where compilation happens when this shape is new: tell the user what it cost
            logger.info(
                "first compiled decode step of this call (batch %d, cache %d, compilation included if the "
                "shape is new): %.1f s",
                B,
                S,
                time.perf_counter() - t0,
            )
        calls += 1
        # keep the cache's own bookkeeping right: beam search's reorder_cache reads it
        cache.lengths = [cur] * len(cache.lengths)
        return logits

    return step


def _traced_step(model, plan: _Plan, cache: StaticCache, mask: torch.Tensor | None, pick=None):
    """_step_function's eager step, recorded by traced.TracedDecode once the call is long enough; with pick,
    the step that also makes greedy decoding's choice (traced._PickStep)."""
    B, T = plan.input_ids.shape
    padded = mask is not None and not bool(mask[:, :T].all())  # an all-ones mask is no mask (GPT2Model)
    run = traced.TracedDecode(model, B, padded, steps=plan.max_length - T, pick=pick is not None)
    probe = torch.empty(cache.max_length, device=plan.input_ids.device)

    def step(tokens, cur, position_ids, history=None):
        keys_mask = mask[:, :cur] if padded else None
        if pick is None:
            out = run(tokens, position_ids, cache.k, cache.v, probe[:cur], keys_mask)
        else:  # the logits are for a sequence of cur tokens: the masks in force at that length
            out = run(tokens, position_ids, cache.k, cache.v, probe[:cur], pick(cur), keys_mask)
        cache.lengths = [cur] * len(cache.lengths)
        return out

    return step


def _forbidden_ids(masks: list, vocab: int, device: torch.device):
    """length -> the ids the masks forbid for a sequence of that many tokens (1-D, inside the vocabulary,
    empty when none is in force), one tensor per set of masks in force."""
    kept: dict[tuple, torch.Tensor] = {}

    def forbidden(length: int) -> torch.Tensor:
        on = tuple(p.active(length) for p in masks)
        ids = kept.get(on)
        if ids is None:
            parts = [p.eos_token_id for p, active in zip(masks, on, strict=True) if active]
            ids = torch.cat(parts).unique() if parts else torch.empty(0, dtype=torch.long)
            ids = kept[on] = in_vocabulary(ids, vocab).to(device)
        return ids

    return forbidden


# --- greedy and sampling --------------------------------------------------------------------------------


def decode(
    model,
    plan: _Plan,
    generator: torch.Generator | None = None,
    scores_out: list | None = None,
    logits_out: list | None = None,
    record: _Record | None = None,
    state: dict | None = None,
) -> Iterator[torch.Tensor]:
    """Greedy or sampled decoding; yields the tokens (B,) chosen at each step.

    `plan.input_ids` holds the prompt; the tokens so far live in one preallocated (B, max_length) buffer,
    and the cache is static, so a step allocates nothing that grows with the sequence. state, when given,
    receives the cache under "cache" (None with use_cache=False).
    """
    cfg = plan.config
    ids = plan.input_ids
    B, T = ids.shape
    device = ids.device
    if plan.max_length <= T:
        return
    tokens = torch.full((B, plan.max_length), plan.pad_token_id or 0, dtype=torch.long, device=device)
    tokens[:, :T] = ids
    mask = None
    if plan.attention_mask is not None:
        mask = torch.ones((B, plan.max_length), dtype=plan.attention_mask.dtype, device=device)
        mask[:, :T] = plan.attention_mask
    cache = _new_cache(model, plan, B) if cfg.use_cache else None
    if state is not None:
        state["cache"] = cache
    masks = _in_place_masks(plan, scores_out, logits_out)
    forbidden = _forbidden_ids(masks, model.config.vocab_size, device) if masks is not None else None
    pick = forbidden if not cfg.do_sample else None
    step = _step_function(model, plan, cache, mask, record, trace=True, pick=pick)
    unfinished = torch.ones(B, dtype=torch.bool, device=device)

    position_ids, advance = _positions(plan, B, T)
    with torch.inference_mode():
        logits = _start(model, plan, position_ids, cache, record)
    # Every step's positions (B, 1) made at once: an op per step between two replays costs 10-20 us cold.
    # Each is contiguous, as a sum made per step was: a compiled step guards on its inputs' strides.
    steps_ahead = torch.arange(1, plan.max_length - T + 1, device=device)[:, None, None]  # (n, 1, 1)
    positions = (position_ids[:, -1:] + advance * steps_ahead).unbind(0)  # n x (B, 1)
    cur = T
    picked = None  # the next tokens, when the step chose them (pick)
    finished = False  # whether a row may have finished: until then every row runs and nothing is padded
    while True:
        if picked is not None:
            nxt = picked
        else:
            if forbidden is not None:
                ids = forbidden(cur)
                if ids.numel():
                    with torch.inference_mode():  # the step's logits are inference tensors
                        logits.index_fill_(-1, ids, NEG_INF)
                scores = logits
            else:
                scores = plan.processors(tokens[:, :cur], logits)
            if scores_out is not None:
                scores_out.append(scores)
            if logits_out is not None:  # DoLa's head keeps the final layer's logits, which it returns
                logits_out.append(plan.head.raw if plan.head is not None else logits)
            nxt = choose(scores, cfg.do_sample, generator)
        if finished and plan.eos is not None:  # as transformers: stop strings alone pad nothing
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, plan.pad_token_id))
        tokens[:, cur] = nxt
        cur += 1
        yield nxt
        if plan.eos is not None:
            ended = torch.isin(nxt, plan.eos)
            if finished or bool(ended.any()):
                unfinished &= ~ended
                finished = True
        if plan.stop_checker is not None:
            unfinished &= ~plan.stop_checker(tokens[:, :cur])
            finished = True
        if cur >= plan.max_length or (finished and not bool(unfinished.any())):
            break
        with torch.inference_mode():
            logits = step(nxt[:, None], cur, positions[cur - 1 - T], tokens[:, :cur])
        if isinstance(logits, tuple):
            logits, picked = logits


# --- prompt lookup decoding ------------------------------------------------------------------------------


def lookup_candidates(
    seq: torch.Tensor, num_tokens: int, ngram_size: int, room: int, eos: torch.Tensor | None = None
) -> torch.Tensor:
    """Prompt lookup (transformers' PromptLookupCandidateGenerator): find the first earlier occurrence of
    the sequence's last n-gram (longest n first, n <= ngram_size) and propose the tokens that followed it.

    seq (L,) the tokens so far; at most min(num_tokens, room) tokens come back, cut before the first eos
    so a verified eos still ends the sequence. -> (k,) candidates, k = 0 when nothing matches.

    >>> lookup_candidates(torch.tensor([5, 6, 7, 8, 5, 6]), 3, 2, 10).tolist()
    [7, 8, 5]
    """
    L = seq.shape[0]
    for n in range(min(ngram_size, L - 1), 0, -1):
        windows = seq.unfold(0, n, 1)  # (L - n + 1, n)
        starts = (windows == seq[-n:]).all(dim=1).nonzero().flatten() + n
        # the first match whose continuation is non-empty (the last window itself continues with nothing)
        starts = starts[starts < L]
        if starts.numel():
            start = int(starts[0])
            chosen = seq[start : min(start + num_tokens, L, start + room)]
            if eos is not None:
                hit = torch.isin(chosen, eos).nonzero()
                if hit.numel():
                    chosen = chosen[: int(hit[0])]
            return chosen
    return seq[:0]


def _verify(model, tokens, cur: int, k: int, position_ids, mask, cache: StaticCache, record, inputs):
    """Run the last accepted token and k candidates, tokens[:, cur - 1 : cur + k], against a cache of the
    first cur - 1 positions. -> (logits (k + 1, V) as float32, the forward's output): row j is the model's
    next-token logits after tokens[:, : cur + j]."""
    if "token_type_ids" in inputs:  # as in a plain step: each new token takes the prompt's last type
        inputs = {**inputs, "token_type_ids": inputs["token_type_ids"].expand(1, k + 1)}
    out = model.transformer(
        input_ids=tokens[:, cur - 1 : cur + k],
        attention_mask=mask[:, : cur + k] if mask is not None else None,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        return_dict=True,
        **(record.flags() if record is not None else {}),
        **inputs,
    )
    return model.lm_head(out.last_hidden_state[0]).float(), out


def _record_row(record: _Record, out, j: int, keys: int) -> None:
    """Record row j of a verification pass as if it had been its own one-token step (transformers'
    _split_model_outputs): attentions (1, nh, 1, keys), hidden states (1, 1, C)."""
    if record.attentions is not None:
        record.attentions.append(tuple(a[..., j : j + 1, :keys] for a in out.attentions))
    if record.hidden_states is not None:
        record.hidden_states.append(tuple(h[:, j : j + 1] for h in out.hidden_states))


class _DraftProposer:
    """Assisted decoding's proposals: the draft model's own continuation of the tokens so far, greedy, or
    sampled from the draft's processed scores when the call samples (those scores are kept in `q` for
    speculative sampling's acceptance test).

    The draft keeps a static cache of the tokens it has run (`fed`); each round it drops the positions
    that no longer match the sequence (rejected proposals), runs the new tokens in one pass, then proposes
    up to `num` tokens one at a time. The last proposal is never run, as it may be rejected."""

    def __init__(
        self,
        draft,
        plan: _Plan,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.draft, self.positions, self.mask = draft, positions, mask
        self.sample, self.processors, self.generator = plan.config.do_sample, plan.processors, generator
        self.q: list[torch.Tensor] = []  # per proposal, the draft's processed scores (1, V) it was drawn from
        self.num = draft.generation_config.num_assistant_tokens  # the assistant's setting, as transformers
        self.eos = plan.eos
        device = plan.input_ids.device
        self.cache = StaticCache.for_model(draft.config, 1, plan.max_length, dtype=draft.dtype, device=device)
        self.fed = torch.full((plan.max_length,), -1, dtype=torch.long, device=device)

    def _run(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Run ids (1, t) at sequence indices start.. against the cache -> last position's logits (V,)."""
        end = start + ids.shape[1]
        out = self.draft.transformer(
            input_ids=ids,
            attention_mask=self.mask[:, :end] if self.mask is not None else None,
            position_ids=self.positions[:, start:end],
            past_key_values=self.cache,
            use_cache=True,
            return_dict=True,
        )
        self.fed[start:end] = ids[0]
        return self.draft.lm_head(out.last_hidden_state[0, -1])

    def __call__(self, tokens: torch.Tensor, cur: int, room: int) -> torch.Tensor:
        k = min(self.num, room)
        if k <= 0:
            return tokens[0, :0]
        # positions still valid: the common prefix of what the draft ran and the sequence (at most cur - 1,
        # so that at least one token runs and gives the next logits)
        same = self.fed[: cur - 1] == tokens[0, : cur - 1]
        valid = cur - 1 if bool(same.all()) else int(same.int().argmin())
        self.cache.crop(valid)
        cand: list[torch.Tensor] = []
        self.q = []
        with torch.inference_mode():
            logits = self._run(tokens[:, valid:cur], valid)
            for i in range(k):
                if self.sample:  # the draft's distribution q: the call's processors over the draft's logits
                    ids = (
                        torch.cat([tokens[:, :cur], torch.cat(cand)[None]], dim=1)
                        if cand
                        else tokens[:, :cur]
                    )
                    self.q.append(self.processors(ids, logits.float()[None]))
                    nxt = choose(self.q[-1], True, self.generator)  # (1,)
                else:
                    nxt = torch.argmax(logits, dim=-1, keepdim=True)  # (1,)
                cand.append(nxt)
                if i == k - 1 or (self.eos is not None and bool(torch.isin(nxt, self.eos))):
                    break
                logits = self._run(nxt[None], cur + i)
        return torch.cat(cand)


def speculative_decode(
    model,
    plan: _Plan,
    scores_out: list | None = None,
    logits_out: list | None = None,
    record: _Record | None = None,
    state: dict | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Greedy decoding or sampling with proposals (prompt lookup or a draft model); yields the tokens (1,)
    one at a time: exactly greedy's, or (do_sample) draws from the model's processed distribution by
    speculative sampling (`_speculative_pick`).

    Each round proposes k tokens and runs them with the last accepted token in one forward pass; the
    model's argmax keeps the longest prefix of the proposal it agrees with, then adds its own next token,
    and the cache is cropped back to the kept positions. A round without proposals is a plain one-token
    step. Batch size 1 (as transformers). state, when given, receives "cache" and "speculation" (tokens
    proposed and accepted)."""
    cfg = plan.config
    ids = plan.input_ids
    T = ids.shape[1]
    device = ids.device
    if plan.max_length <= T:
        return
    tokens = torch.full((1, plan.max_length), plan.pad_token_id or 0, dtype=torch.long, device=device)
    tokens[:, :T] = ids
    mask = None
    if plan.attention_mask is not None:
        mask = torch.ones((1, plan.max_length), dtype=plan.attention_mask.dtype, device=device)
        mask[:, :T] = plan.attention_mask
    cache = _new_cache(model, plan, 1)
    if state is not None:
        state["cache"] = cache
    prompt_pos, _ = _positions(plan, 1, T)
    # every index's position: the prompt's, then one more per new token
    positions = torch.cat(
        [prompt_pos, prompt_pos[:, -1:] + torch.arange(1, plan.max_length - T + 1, device=device)], dim=1
    )
    if cfg.prompt_lookup_num_tokens is not None:
        num, ngram = cfg.prompt_lookup_num_tokens, cfg.max_matching_ngram_size or 2

        def propose(tokens, cur, room):
            return lookup_candidates(tokens[0, :cur], num, ngram, room, plan.eos)

    else:
        propose = _DraftProposer(plan.assistant, plan, positions, mask, generator)
    with torch.inference_mode():
        rows = _start(model, plan, prompt_pos, cache, record)  # (1, V): the first new token's logits
    inputs = _step_inputs(plan)
    cur, cand, out = T, tokens[0, :0], None
    proposed = accepted = 0
    while True:
        if cfg.do_sample:
            picks, picked_scores = _speculative_pick(
                plan, tokens, cur, cand, rows, getattr(propose, "q", None), generator
            )
        for j in range(cand.shape[0] + 1):
            if cfg.do_sample:
                scores, nxt = picked_scores[j : j + 1], picks[j : j + 1]
            else:
                scores = plan.processors(tokens[:, :cur], rows[j : j + 1])
                nxt = torch.argmax(scores, dim=-1)
            if scores_out is not None:
                scores_out.append(scores)
            if logits_out is not None:
                logits_out.append(rows[j : j + 1])
            if record is not None and out is not None:
                _record_row(record, out, j, cur)
            tokens[:, cur] = nxt
            cur += 1
            yield nxt
            done = cur >= plan.max_length or (plan.eos is not None and bool(torch.isin(nxt, plan.eos)))
            if not done and plan.stop_checker is not None:
                done = bool(plan.stop_checker(tokens[:, :cur])[0])
            if cfg.do_sample and (done or j == picks.shape[0] - 1):
                accepted += j  # the picks before the last are accepted candidates
                break
            if done or j == cand.shape[0] or int(nxt) != int(cand[j]):
                break
            accepted += 1
        if done:
            break
        # the cache holds the positions up to the last accepted token's predecessor: drop rejected ones
        cache.crop(cur - 1)
        # at most max_length - cur - 1 proposals: the model adds one token of its own after them
        cand = propose(tokens, cur, plan.max_length - cur - 1)
        k = cand.shape[0]
        proposed += k
        tokens[0, cur : cur + k] = cand  # the processors of row j read the candidates before it
        with torch.inference_mode():
            rows, out = _verify(
                model, tokens, cur, k, positions[:, cur - 1 : cur + k], mask, cache, record, inputs
            )
    if state is not None:
        state["speculation"] = {"proposed": proposed, "accepted": accepted}
    cache.crop(cur - 1)


def _speculative_pick(
    plan: _Plan,
    tokens: torch.Tensor,
    cur: int,
    cand: torch.Tensor,
    rows: torch.Tensor,
    q_scores: list[torch.Tensor] | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One round of speculative sampling, by transformers 4.57's rules. -> (the tokens to add (m,), the
    processed scores of their rows (m, V)).

    rows (k + 1, V): the model's logits after each of the k candidates cand (tokens[:, cur : cur + k]) and
    before the first. With a draft's scores q (Leviathan et al. 2023, algorithm 1): candidate j is kept with
    probability min(1, p_j / q_j) until the first rejection, then one token is drawn from max(p - q, 0)
    (from p after all k), so every token is distributed as plain sampling's. Without q (prompt lookup):
    each row is sampled from p and the candidates are kept while they equal the draws. A last candidate that
    ends the sequence (eos, a stop string) is taken without a further draw, as transformers does."""
    k = cand.shape[0]
    scores = torch.cat([plan.processors(tokens[:, : cur + j], rows[j : j + 1]) for j in range(k + 1)])
    if k == 0:
        return choose(scores, True, generator), scores
    p = scores.softmax(dim=-1)  # (k + 1, V)
    ends = plan.eos is not None and bool(torch.isin(cand[-1:], plan.eos).any())
    if not ends and plan.stop_checker is not None:
        ends = bool(plan.stop_checker(tokens[:, : cur + k])[0])
    steps = torch.arange(k, device=p.device)
    if q_scores is None:
        drawn = torch.multinomial(p, num_samples=1, generator=generator)[:, 0]  # (k + 1,)
        n = int((cand != drawn[:k]).int().cumsum(0).eq(0).sum())
        if ends and n == k:
            return cand, scores[:k]
        return drawn[: n + 1], scores[: n + 1]
    q = torch.cat(q_scores).softmax(dim=-1)  # (k, V)
    ratio = p[steps, cand] / q[steps, cand]
    keep = torch.rand(ratio.shape, generator=generator, device=ratio.device, dtype=ratio.dtype) <= ratio
    n = int((~keep).int().cumsum(0).eq(0).sum())
    if ends and n == k:
        return cand, scores[:k]
    residual = p[n]
    if n < k:
        residual = (p[n] - q[n]).clamp(min=0)
        # p == q (a draft as good as the model) leaves nothing to draw from: p itself is the right choice
        residual = residual / residual.sum() if bool(residual.sum() > 0) else p[n]
    t = multinomial_one(residual[None], generator)
    return torch.cat([cand[:n], t]), scores[: n + 1]


# --- beam search ----------------------------------------------------------------------------------------


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (B, k, ...), idx (B, m) -> (B, m, ...): pick beams per batch row."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def beam_search(
    model,
    plan: _Plan,
    generator: torch.Generator | None = None,
    scores_out: list | None = None,
    logits_out: list | None = None,
    record: _Record | None = None,
    state: dict | None = None,
):
    """transformers 4.57's vectorised beam search, on the static cache.

    Keeps, per prompt, num_beams running hypotheses and the num_beams best finished ones. Each step takes
    the top (n_eos + 1) * num_beams continuations (so enough stay alive after eos), moves those that hit a
    stopping condition into the finished set with the length-normalised score, and continues the best
    unfinished ones. Returns (sequences (B*n, L), sequence scores (B*n,), beam indices).
    """
    cfg = plan.config
    k = cfg.num_beams
    flat_ids = plan.input_ids
    BK, T = flat_ids.shape
    B = BK // k
    device = flat_ids.device
    max_length = plan.max_length
    V = model.config.vocab_size
    n_eos = plan.eos.numel() if plan.eos is not None else 0
    keep = max(2, 1 + n_eos) * k
    top_k_mask = torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(keep - k, dtype=torch.bool)]).to(
        device
    )
    # transformers fills unused positions with pad (or eos when pad is 0 / unset), and -1 without any eos
    fill = (plan.pad_token_id or int(plan.eos[0])) if plan.eos is not None else -1

    running = torch.full((B, k, max_length), fill, dtype=torch.long, device=device)
    running[:, :, :T] = flat_ids.view(B, k, T)
    sequences = running.clone()
    running_scores = torch.zeros((B, k), device=device)
    running_scores[:, 1:] = -1e9  # all beams start identical: only the first may expand at step one
    beam_scores = torch.full((B, k), -1e9, device=device)
    finished = torch.zeros((B, k), dtype=torch.bool, device=device)
    may_improve = torch.ones((B, 1), dtype=torch.bool, device=device)
    running_beam_idx = torch.full((B, k, max_length - T), -1, dtype=torch.long, device=device)
    beam_idx_out = running_beam_idx.clone()

    mask = None
    if plan.attention_mask is not None:
        mask = torch.ones((BK, max_length), dtype=plan.attention_mask.dtype, device=device)
        mask[:, :T] = plan.attention_mask
    cache = _new_cache(model, plan, BK) if cfg.use_cache else None
    if state is not None:
        state["cache"] = cache
    step_fn = _step_function(model, plan, cache, mask, record, trace=True)
    position_ids, advance = _positions(plan, BK, T)
    with torch.inference_mode():
        logits = _start(model, plan, position_ids, cache, record)
    next_pos = position_ids[:, -1:] + advance
    cur = T
    while cur < max_length:
        if logits_out is not None:
            logits_out.append(logits)
        log_probs = torch.log_softmax(logits, dim=-1)
        log_probs = plan.processors(running[:, :, :cur].reshape(BK, cur), log_probs)
        if scores_out is not None:
            scores_out.append(log_probs)
        acc = (log_probs.view(B, k, V) + running_scores[:, :, None]).view(B, k * V)

        # the best `keep` continuations of every prompt
        if cfg.do_sample:
            top_idx = torch.multinomial(torch.softmax(acc, dim=-1), keep, generator=generator)
            top_scores = torch.gather(acc, 1, top_idx)
        else:
            top_scores, top_idx = torch.topk(acc, keep)
        from_beam = top_idx // V
        top_seqs = _gather(running, from_beam)
        top_seqs[:, :, cur] = top_idx % V
        top_beam_idx = _gather(running_beam_idx, from_beam)
        top_beam_idx[:, :, cur - T] = from_beam + torch.arange(B, device=device)[:, None] * k

        # which continuations end here: eos, stop strings, or the length limit
        done = torch.zeros((B, keep), dtype=torch.bool, device=device)
        if plan.eos is not None:
            done |= torch.isin(top_seqs[:, :, cur], plan.eos)
        if plan.stop_checker is not None:
            done |= plan.stop_checker(top_seqs[:, :, : cur + 1].reshape(B * keep, -1)).view(B, keep)
        if cur + 1 >= max_length:
            done |= True

        # continue with the best unfinished ones
        alive_scores = top_scores + done.float() * -1e9
        nxt = torch.topk(alive_scores, k)[1]
        running = _gather(top_seqs, nxt)
        running_scores = _gather(alive_scores, nxt)
        running_beam_idx = _gather(top_beam_idx, nxt)

        # add the finished ones to the kept best, length-normalised
        just_done = done & top_k_mask[None, :]
        norm = top_scores / ((cur + 1 - T) ** cfg.length_penalty)
        full = finished.all(dim=-1, keepdim=True) & (cfg.early_stopping is True)
        norm = norm + full.float() * -1e9 + (~may_improve).float() * -1e9 + (~just_done).float() * -1e9
        merged_scores = torch.cat([beam_scores, norm], dim=1)
        best = torch.topk(merged_scores, k)[1]
        sequences = _gather(torch.cat([sequences, top_seqs], dim=1), best)
        beam_scores = _gather(merged_scores, best)
        beam_idx_out = _gather(torch.cat([beam_idx_out, top_beam_idx], dim=1), best)
        finished = _gather(torch.cat([finished, just_done], dim=1), best)

        # the surviving beams' cache rows move with them
        reorder = running_beam_idx[:, :, cur - T].reshape(BK)
        if cache is not None:
            cache.reorder_cache(reorder)
        cur += 1

        # stop when no running beam can still beat the worst finished one (transformers' heuristic)
        if cfg.early_stopping == "never" and cfg.length_penalty > 0.0:
            best_len = max_length - T
        else:
            best_len = cur - T
        best_running = running_scores[:, :1] / (best_len**cfg.length_penalty)
        worst_done = torch.where(finished, beam_scores.min(dim=1, keepdim=True)[0], torch.tensor(-1.0e9))
        may_improve = may_improve & (best_running > worst_done).any(dim=-1, keepdim=True)
        open_beams = not (bool(finished.all()) and cfg.early_stopping is True)
        if not (bool(may_improve.any()) and open_beams and not bool(done.all())) or cur >= max_length:
            break
        with torch.inference_mode():
            logits = step_fn(
                running[:, :, cur - 1].reshape(BK, 1), cur, next_pos, running[:, :, :cur].reshape(BK, cur)
            )
        next_pos = next_pos + advance

    n = cfg.num_return_sequences
    sequences = sequences[:, :n].reshape(B * n, max_length)
    beam_scores = beam_scores[:, :n].reshape(B * n)
    beam_idx_out = beam_idx_out[:, :n].reshape(B * n, -1)
    generated = int((beam_idx_out + 1).bool().sum(dim=1).max())
    return sequences[:, : T + generated], beam_scores, beam_idx_out[:, :generated]


# --- the entry point --------------------------------------------------------------------------------------


def generate(
    model,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    streamer=None,
    logits_processor=None,
    tokenizer=None,
    generator: torch.Generator | None = None,
    **kwargs: Any,
):
    """transformers' generate(): prompt + continuation ids (B * num_return_sequences, L).

    See GPT2LMHeadModel.generate for the arguments.
    """
    plan = plan_generation(
        model, input_ids, attention_mask, generation_config, logits_processor, tokenizer, **kwargs
    )
    planned = plan.max_length - plan.input_ids.shape[-1]
    if model.device.type == "cpu" and hugepages.adopt_when_due(model, planned, plan.compile is not None):
        traced.forget(model)  # a long-running model's weights moved into huge pages; recordings hold the old
    # batched steps of a long-running int8 model: their own engine (a new recording key, model/quant.py)
    quant.few_rows_engines_when_due(model, planned)
    cfg = plan.config
    want_dict = cfg.return_dict_in_generate
    scores = [] if want_dict and cfg.output_scores else None
    raw = [] if want_dict and cfg.output_logits else None
    record = None
    if want_dict and (cfg.output_attentions or cfg.output_hidden_states):
        record = _Record(cfg.output_attentions, cfg.output_hidden_states)
    state: dict[str, Any] = {}
    if cfg.num_beams > 1:
        if streamer is not None:
            raise ValueError("streaming is not supported with beam search (num_beams > 1); use num_beams=1")
        if plan.mode in ("group_beam", "constrained_beam"):
            from gpt2kit.generation.strategies import legacy_beam_search

            sequences, seq_scores, beam_indices = legacy_beam_search(model, plan, scores, raw, record, state)
        else:
            sequences, seq_scores, beam_indices = beam_search(
                model, plan, generator, scores, raw, record, state
            )
        sequences = sequences[:, plan.hidden_prompt :]
        if not want_dict:
            return sequences
        return GenerateBeamDecoderOnlyOutput(
            sequences=sequences,
            sequences_scores=seq_scores if cfg.output_scores else None,
            scores=tuple(scores) if scores is not None else None,
            logits=tuple(raw) if raw is not None else None,
            beam_indices=beam_indices if cfg.output_scores else None,
            attentions=_recorded(record, "attentions"),
            hidden_states=_recorded(record, "hidden_states"),
            past_key_values=_returned_cache(state.get("cache"), cfg),
        )

    if streamer is not None:
        streamer.put(plan.input_ids[:, plan.hidden_prompt :].cpu())
    steps = []
    if plan.mode == "assisted":
        loop = speculative_decode(model, plan, scores, raw, record, state, generator)
    elif plan.mode == "contrastive":
        from gpt2kit.generation.strategies import contrastive_decode

        loop = contrastive_decode(model, plan, scores, raw, state)
    else:
        loop = decode(model, plan, generator, scores, raw, record, state)
    for nxt in loop:
        steps.append(nxt)
        if streamer is not None:
            streamer.put(nxt.cpu())
    if streamer is not None:
        streamer.end()
    sequences = torch.cat([plan.input_ids, torch.stack(steps, dim=1)], dim=1) if steps else plan.input_ids
    sequences = sequences[:, plan.hidden_prompt :]  # an embeddings-only prompt: the new tokens alone
    if not want_dict:
        return sequences
    return GenerateDecoderOnlyOutput(
        sequences=sequences,
        scores=tuple(scores) if scores is not None else None,
        logits=tuple(raw) if raw is not None else None,
        attentions=_recorded(record, "attentions"),
        hidden_states=_recorded(record, "hidden_states"),
        past_key_values=_returned_cache(state.get("cache"), cfg),
    )


def _recorded(record: _Record | None, name: str) -> tuple | None:
    values = getattr(record, name) if record is not None else None
    return tuple(values) if values is not None else None
