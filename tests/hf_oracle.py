"""Helpers to build the oracle: tiny random transformers 4.57 checkpoints, written in the test itself."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

TINY = dict(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4)


def hf_model(cls_name: str, seed: int = 0, **config):
    """A transformers model of class cls_name with eager attention, random weights, eval mode."""
    import transformers

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**{**TINY, **config})
    cfg._attn_implementation = "eager"
    model = getattr(transformers, cls_name)(cfg)
    # Large random weights, biases and LayerNorm affines: activations then span the range where GELU variants
    # differ and softmaxes are peaked, so a wrongly wired or approximated piece cannot hide under 1e-5.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
            elif ".ln_" in name or "ln_f" in name:
                p.normal_(1.0, 0.5)
            else:
                p.normal_(0.0, 0.3)
    return model.eval()


def save_hf(model, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, **kwargs)
    return folder


def load_hf(cls_name: str, folder: Path):
    import transformers

    return getattr(transformers, cls_name).from_pretrained(folder, attn_implementation="eager").eval()
