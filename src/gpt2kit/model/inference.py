"""The weight formats of the inference commands (`gpt2kit generate`, `gpt2kit serve`): auto, float, packed, int8.

float keeps the weights as loaded (exact, what the Python API does by default); packed reorders them for
oneDNN (pack_weights: logits equal to ~1e-6; each layer is packed only where that measured faster on this
machine); int8 quantizes them (quantize_int8: the fastest int8 kernel this machine has, per layer, measured;
next tokens mostly equal, see benchmarks/RESULTS.md). auto is packed where oneDNN can pack (a CPU model,
unless the decode step is compiled: dynamo cannot trace packed weights), else float.
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_FORMATS = ("auto", "float", "packed", "int8")


def resolve_weights(weights: str, device: str | torch.device | None = None, compile: bool = False) -> str:
    """auto -> packed or float for this device; the other formats as given (checked)."""
    from gpt2kit.model.packed import packing_available

    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights={weights!r} is not one of {', '.join(WEIGHT_FORMATS)}")
    on_cpu = _on_cpu(device)
    if weights == "packed" and not on_cpu:
        raise ValueError(
            f"--weights packed is oneDNN's CPU layout and cannot run on {device}; use --weights auto or float"
        )
    if weights != "auto":
        return weights
    return "packed" if on_cpu and packing_available() and not compile else "float"


def load_dtype(weights: str, dtype: str, device: str | torch.device | None = None) -> str:
    """The dtype to load in: as asked. (int8 used to force bf16 activations on CPU, a trap on CPUs without
    native bf16; quantize_int8 now measures its kernels for whatever dtype the model has.)"""
    return dtype


def _on_cpu(device: str | torch.device | None) -> bool:
    return device is None or torch.device(device).type == "cpu"


def convert_weights(model: nn.Module, weights: str, batch_size: int = 8) -> nn.Module:
    """Apply a resolved format (float, packed or int8) to an eval-mode model, in place; returns it.
    batch_size: the rows a decode step will multiply (packing is timed and laid out for them). Every int8
    kernel also runs in a compiled decode step (packing is refused for one when resolving)."""
    if weights == "int8":
        from gpt2kit.model.quant import quantize_int8

        return quantize_int8(model)
    if weights == "packed":
        from gpt2kit.model.packed import pack_weights

        return pack_weights(model, batch_size=batch_size)
    if weights != "float":
        raise ValueError(f"convert_weights takes float, packed or int8 (resolve auto first), got {weights!r}")
    return model


def measure_kernels(config, rows: tuple[int, ...] = (1, 8, 64), remeasure: bool = False) -> dict[str, dict]:
    """Decide (time, where this machine has no decision yet) the kernels for every linear shape of a model
    with this GPT2Config: the float32 route at each row count, packing at the decode rows, int8 at one row
    and its engine for 2-16 rows, and a decode step's attention (one query per row) at the decode rows.
    Returns {decision key: {"choice": name, "gflops": {candidate: GFLOP/s}}} for those shapes.

    Random weights of the right shapes stand in for the model's: a kernel's speed depends on the shape, not
    the values. remeasure forgets this machine's earlier decisions first."""
    from gpt2kit.model import attention, kernels, matmul
    from gpt2kit.model.linear import Linear, layout, out_in_weight
    from gpt2kit.model.packed import _packed_rows, packing_available
    from gpt2kit.model.quant import (
        DynamicInt8Linear,
        _choose,
        _few_rows_packed,
        dynamic_engines,
        in_cache,
        int8_family,
    )

    if remeasure:
        kernels.TABLE.clear()
        matmul._fast.clear()
        attention._decode_fast.clear()
    c, inner = config.n_embd, config.inner_dim
    shapes = [(c, 3 * c), (c, c), (c, inner), (inner, c)]
    layers: list[nn.Module] = []
    for k, n in shapes:
        layer = Linear(k, n)
        nn.init.normal_(layer.weight, std=0.02)
        layers.append(layer)
    # The model's own LM head class: its float32 product has kernels of its own (split-K on an (in, out)
    # copy), and a packing decision measured on a plain nn.Linear would be reused for it.
    head = matmul.LMHead(c, config.vocab_size, bias=False)
    nn.init.normal_(head.weight, std=0.02)
    layers.append(head)
    cached = in_cache(config, torch.float32)  # as quantize_int8 decides: weights in the cache are timed there
    keys = []
    with torch.no_grad(), kernels.EVICTOR.held():  # one eviction buffer for all the decisions
        for layer in layers:
            w = out_in_weight(layer)
            n, k = w.shape
            lay = layout(layer)
            if matmul.onednn_linear_available() and matmul.cpu_matmul() == "auto":
                for m in rows:
                    matmul.kernel_for(torch.empty(m, k), w)
                    keys.append(kernels.decision_key(f"fp32-{lay}", k, n, m))
            if packing_available():
                for m in (r for r in rows if r <= 16):
                    _packed_rows(layer, m)
                    keys.append(kernels.decision_key(f"pack-float32-{lay}", k, n, m))
            if dynamic_engines():
                chosen = _choose(layer, torch.float32, "auto", cached)
                family = int8_family("auto", torch.float32, lay, cached)
                keys.append(kernels.decision_key(family, k, n, 1))
                if isinstance(chosen, DynamicInt8Linear):  # and its engine for batched decoding
                    _few_rows_packed(chosen)
                    keys.append(kernels.decision_key("int8-dynamic-rows", k, n, 8))
        if matmul.cpu_matmul() != "torch":
            for m in (r for r in rows if r <= 16):
                attention.decode_kernel(m * config.n_head, config.head_dim)
                keys.append(kernels.decision_key("attn1-float32", config.head_dim, m * config.n_head, 1))
    found = kernels.TABLE.decisions()
    return {key: vars(found[key]) for key in keys if key in found}
