"""Weights in transparent huge pages for CPU decoding.

A decode step streams every weight matrix from memory (497 MB a token for the 124M model in float32). Loaded
from a safetensors file the weights are the file's memory map, in 4 KB pages: ~120,000 pages a step, a TLB
miss every 4 KB. Copied into anonymous memory marked MADV_HUGEPAGE, the same bytes sit in 2 MB pages. On the
dev VM (AMD EPYC, 2 threads, THP in "madvise" mode), 124M float32 greedy decoding at batch 1, the three forms
loaded side by side in one process and timed interleaved: 20.6 ms a step from the memory map, 19.9 in plain
anonymous memory, 18.6 in huge pages (lower in 5 of 5 reps).

`adopt(model)` does this for float parameters of at least one huge page (2 MB on x86-64), and gives the
smaller ones plain copies, so that no tensor keeps the file mapped (generate() at batch 1: 19.2 -> 17.7 ms a
step, same comparison; batch 8: 44.2 -> 42.9). Parameters that share their storage (with another Parameter, a
flat buffer, or other processes through share_memory) are left as they are. Where the OS has no transparent
huge pages (not Linux, or THP "never") nothing is copied; `GPT2KIT_HUGEPAGES=0` turns it off. The memory the
weights take stays the same after the copy (the file's pages become reclaimable page cache); while copying,
both are resident. Workers that load the same file no longer share its pages.

The copy is not free: fresh huge pages must be faulted in, and on a later dev VM (a Firecracker guest, AMD
EPYC Zen 5) the 124M model's 500 MB took 1.5-1.9 s, a plain copy ~0.1 s, for 3% a step measured there. So
the server's engine adopts at once (it decodes for hours), and generate() once the model has decoded
ADOPT_AFTER_STEPS steps in this process (adopt_when_due): a one-off call of a few hundred tokens never pays
it; `GPT2KIT_HUGEPAGES=1` adopts at the first call.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref

import torch
from torch import nn


def _pmd_size() -> int:
    """The huge page size the kernel uses for anonymous memory (2 MB on x86-64; 512 MB on arm64 with 64 KB
    base pages)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 2 << 20


ALIGN = _pmd_size()
MIN_BYTES = ALIGN  # smaller tensors cannot fill a huge page

_available: bool | None = None
_lock = threading.Lock()


def available() -> bool:
    """Whether anonymous memory can be asked for in transparent huge pages here."""
    global _available
    if _available is None:
        ok = (
            hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS")
        )
        if ok:
            try:
                with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
                    ok = "[never]" not in f.read()
            except OSError:
                ok = False
        _available = ok
    return _available


def _setting() -> str:
    """GPT2KIT_HUGEPAGES: "0" (also false/no/off), "1" (also true/yes/on) or "" (unset: when due)."""
    value = os.environ.get("GPT2KIT_HUGEPAGES", "").strip().lower()
    return "0" if value in ("0", "false", "no", "off") else "1" if value in ("1", "true", "yes", "on") else ""


def enabled() -> bool:
    return _setting() != "0" and available()


def copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of the CPU tensor t in memory marked for huge pages, starting on a huge-page boundary.
    Its storage is exactly t's size (saving or sharing it copies no padding)."""
    n = t.numel() * t.element_size()
    # Over-allocate by one huge page to start on a boundary: untouched pages cost no memory.
    buf = mmap.mmap(-1, n + ALIGN, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)
    start = -torch.frombuffer(buf, dtype=torch.uint8, count=1).data_ptr() % ALIGN
    raw = torch.frombuffer(buf, dtype=torch.uint8, offset=start, count=n)  # keeps the mapping alive
    out = raw.view(t.dtype).view(t.shape)
    out.copy_(t)
    return out


def owned_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t: in huge pages where enabled and t fills at least one, else a plain one."""
    if enabled() and t.numel() * t.element_size() >= MIN_BYTES:
        return copy(t)
    return t.contiguous() if not t.is_contiguous() else t.clone()


def in_huge_pages(t: torch.Tensor) -> bool:
    """Whether t starts where copy() puts a tensor (a huge-page boundary): how adopt() recognises its copies.
    (Alignment alone does not prove the kernel gave huge pages.)"""
    return t.data_ptr() % ALIGN == 0


def _movable(p: torch.Tensor, owners: dict[int, int]) -> bool:
    """A float CPU parameter that owns its whole storage alone: replacing its data cannot break an alias (two
    Parameters on one storage, a view into a flat buffer, shared memory another process reads). owners:
    storage address -> how many of the model's parameters use it."""
    storage = p.untyped_storage()
    return (
        owners[storage.data_ptr()] == 1
        and p.device.type == "cpu"
        and p.is_floating_point()
        and p.is_contiguous()
        and p.storage_offset() == 0
        and storage.nbytes() == p.numel() * p.element_size()
        and not p.is_shared()
        and not p.is_inference()
    )


# Steps a model decodes in generate() before its weights move into huge pages
# (the call about to run counted).
ADOPT_AFTER_STEPS = 1024
_decoded: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def adopt_when_due(model: nn.Module, steps: int, at_once: bool = False) -> bool:
    """generate()'s call before it plans to decode `steps` steps: adopt(model) once this process has planned
    ADOPT_AFTER_STEPS steps with it, these included; at once with GPT2KIT_HUGEPAGES=1 or at_once (a compiled
    step, which freezes the weights it was compiled with: moving them later would compile it again).
    Returns whether any parameter moved (recordings of the model's decode step then hold the old weights)."""
    if not enabled():
        return False
    done = _decoded.get(model, 0) + max(steps, 0)
    _decoded[model] = done
    if done < ADOPT_AFTER_STEPS and not at_once and _setting() != "1":
        return False
    before = [p.data_ptr() for p in model.parameters()]
    adopt(model)
    return before != [p.data_ptr() for p in model.parameters()]


def adopt(model: nn.Module) -> int:
    """Move the model's float CPU parameters into memory of their own: those of >= MIN_BYTES into huge pages,
    the rest into plain copies (so that nothing keeps a loaded file's memory map alive); returns the bytes
    moved into huge pages. Parameters already moved, aliased or shared are left alone. Cheap when nothing
    changed since the last call (a signature of the parameters' addresses and dtypes)."""
    if not enabled():
        return 0
    signature = tuple((p.data_ptr(), p.dtype) for p in model.parameters())
    if getattr(model, "_gpt2kit_hugepages", None) == signature:
        return 0
    moved = 0
    with _lock, torch.inference_mode(False), torch.no_grad():
        params = list(model.parameters())  # a tied weight is one Parameter: moved once
        owners: dict[int, int] = {}
        for p in params:
            key = p.untyped_storage().data_ptr()
            owners[key] = owners.get(key, 0) + 1
        for p in params:
            if not _movable(p, owners) or in_huge_pages(p):
                continue
            nbytes = p.numel() * p.element_size()
            if nbytes >= MIN_BYTES or not getattr(p, "_gpt2kit_owned", False):
                p.data = owned_copy(p.data)
                moved += nbytes if nbytes >= MIN_BYTES else 0
            p._gpt2kit_owned = True
        model._gpt2kit_hugepages = tuple((p.data_ptr(), p.dtype) for p in model.parameters())
    return moved
