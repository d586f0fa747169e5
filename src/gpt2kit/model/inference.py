"""The weight formats of the inference commands (`gpt2kit generate`, `gpt2kit serve`): auto, float, packed, int8.

float keeps the weights as loaded (exact, what the Python API does by default); packed reorders them for
oneDNN (pack_weights: logits equal to ~1e-6, 1.9-3.1x faster decoding on CPU); int8 quantizes them
(quantize_int8, with bf16 activations: fastest, ~99% of next tokens equal). auto is packed where oneDNN can
pack (a CPU model, unless the decode step is compiled: dynamo cannot trace packed weights), else float.
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
    """int8 on a CPU runs fast only with bf16 activations (torch's CPU int8 kernel is slow with fp32 ones)."""
    return "bfloat16" if weights == "int8" and _on_cpu(device) else dtype


def _on_cpu(device: str | torch.device | None) -> bool:
    return device is None or torch.device(device).type == "cpu"


def convert_weights(model: nn.Module, weights: str, batch_size: int = 8) -> nn.Module:
    """Apply a resolved format (float, packed or int8) to an eval-mode model, in place; returns it."""
    if weights == "int8":
        from gpt2kit.model.quant import quantize_int8

        return quantize_int8(model)
    if weights == "packed":
        from gpt2kit.model.packed import pack_weights

        return pack_weights(model, batch_size=batch_size)
    if weights != "float":
        raise ValueError(f"convert_weights takes float, packed or int8 (resolve auto first), got {weights!r}")
    return model
