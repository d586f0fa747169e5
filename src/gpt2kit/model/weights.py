"""Checkpoint files in transformers' layout: find them, read them safely, map keys, write them back.

Keys and shapes are transformers' own (`transformer.h.0.attn.c_attn.weight`, stored (in, out)), so a folder
moves between the two libraries untouched. The one translation is the "transformer." prefix: checkpoints
saved from a bare GPT2Model (OpenAI's released ones) lack it, head models have it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_WEIGHTS, SAFE_INDEX, BIN_WEIGHTS, BIN_INDEX)
PREFIX = "transformer."

# Buffers older checkpoints carry (the causal mask, a -1e4 scalar); we compute masks instead.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".crossattention.bias", ".crossattention.masked_bias")


def find_weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder, safetensors preferred; FileNotFoundError if none."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            return _shards_from_index(path)
        return [path]
    others = other_formats(folder)
    if others:
        raise FileNotFoundError(_other_formats_message(folder, others))
    raise FileNotFoundError(
        f"no weights in {folder}: looked for {', '.join(WEIGHT_FILES)}. "
        "A folder written by save_pretrained has model.safetensors."
    )


# The weight formats a Hub repository may hold beside PyTorch's (the `gpt2` repository has all of them), which
# gpt2kit never reads: a folder with PyTorch weights loads those and ignores these; a folder with only these
# gets an error that says how to convert them. (kind, glob patterns, how to get PyTorch weights; {folder} and
# {name} are filled in.)
_OTHER_FORMATS = (
    (
        "TensorFlow",
        ("*.h5",),
        "convert them with transformers (and tensorflow installed): "
        "GPT2LMHeadModel.from_pretrained('{folder}', from_tf=True).save_pretrained(OUT)",
    ),
    (
        "Flax",
        ("*.msgpack",),
        "convert them with transformers (and flax installed): "
        "GPT2LMHeadModel.from_pretrained('{folder}', from_flax=True).save_pretrained(OUT)",
    ),
    (
        "GGUF (llama.cpp)",
        ("*.gguf",),
        "convert it with transformers (and gguf installed): "
        "GPT2LMHeadModel.from_pretrained('{folder}', gguf_file='{name}').save_pretrained(OUT)",
    ),
    (
        "ONNX",
        ("*.onnx", "onnx/*.onnx"),
        "an ONNX export runs in ONNX Runtime and does not convert back; use the model.safetensors "
        "(or pytorch_model.bin) of the repository it came from",
    ),
    (
        "rust-bert",
        ("*.ot",),
        "rust-bert's format does not convert back; use the model.safetensors (or pytorch_model.bin) of the "
        "repository it came from",
    ),
    (
        "TensorFlow Lite",
        ("*.tflite",),
        "a TensorFlow Lite export does not convert back; use the model.safetensors (or pytorch_model.bin) of "
        "the repository it came from",
    ),
)


def other_formats(folder: Path) -> list[tuple[str, list[str], str]]:
    """The non-PyTorch weight files in folder, as (kind, file names, how to get PyTorch weights)."""
    found = []
    for kind, patterns, fix in _OTHER_FORMATS:
        names = sorted(
            {p.relative_to(folder).as_posix() for pattern in patterns for p in folder.glob(pattern)}
        )
        if names:
            found.append((kind, names, fix.format(folder=folder, name=names[0])))
    return found


def _other_formats_message(folder: Path, others: list[tuple[str, list[str], str]]) -> str:
    looked = f"gpt2kit reads PyTorch weights ({', '.join(WEIGHT_FILES)})"
    if len(others) == 1:
        kind, names, fix = others[0]
        return f"{folder} has {kind} weights only ({', '.join(names)}); {fix}. {looked}."
    kinds = "; ".join(f"{kind} ({', '.join(names)}): {fix}" for kind, names, fix in others)
    return f"{folder} has no PyTorch weights, only other formats. {kinds}. {looked}."


def _shards_from_index(index_path: Path) -> list[Path]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{index_path} is not a valid shard index ({e}); re-download or re-save the model"
        ) from None
    shards = sorted({index_path.parent / name for name in weight_map.values()})
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{index_path} lists shards that are missing: {', '.join(missing)}")
    return shards


def read_state_dict(files: Iterable[Path], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read every tensor of the given weight files. .bin files are read with weights_only (no pickled code)."""
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            state.update(_read_safetensors(path, device))
        else:
            state.update(_read_bin(path, device))
    return state


def _read_safetensors(path: Path, device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(
            f"{path} is not a readable safetensors file ({e}); it is probably truncated or corrupt — "
            "re-download or re-save it"
        ) from None


def _read_bin(path: Path, device) -> dict[str, torch.Tensor]:
    try:
        state = load_weights_only(path, device)
    except Exception as e:  # torch raises several types for bad zips, pickles, and unsafe globals
        if holds_pickled_objects(e):
            raise ValueError(
                f"{path} holds Python objects besides tensors, and gpt2kit never runs pickled code; "
                "re-save the checkpoint with safetensors"
            ) from None
        raise ValueError(
            f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: "
            f"{load_error_reason(e)}); it is probably truncated or corrupt — re-download or re-save it"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def load_weights_only(path: Path, device: str | torch.device = "cpu") -> Any:
    """torch.load that never runs pickled code: a restricted unpickler that builds only tensors and plain
    containers. Zip-format files (torch >= 1.6) are memory-mapped; torch can map no other, so the legacy
    format (`_use_new_zipfile_serialization=False`, old transformers checkpoints) is read whole."""
    with open(path, "rb") as f:
        # The test torch itself uses to pick its reader: a zip starts with a local file header.
        is_zip = f.read(4) == b"PK\x03\x04"
    return torch.load(path, map_location=device, weights_only=True, mmap=is_zip)


# What torch's restricted unpickler says when a file names a class or function it will not call; any other
# failure (a bad opcode, a broken zip, an early end of file) means the bytes are damaged.
_PICKLED_OBJECT_ERRORS = ("Unsupported global", "unsupported GLOBAL", "Can only build", "Can only create new")


def holds_pickled_objects(error: BaseException) -> bool:
    """True when torch.load(weights_only=True) refused a file for holding Python objects (possibly code),
    False when the file is merely truncated or corrupt."""
    return any(marker in str(error) for marker in _PICKLED_OBJECT_ERRORS)


def load_error_reason(error: BaseException) -> str:
    # torch's unpickler errors wrap the real cause ("Unsupported operand 103") in a dozen lines of advice on
    # weights_only=False, which is never the fix here.
    text = str(error).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def match_keys(
    state: dict[str, torch.Tensor], model_keys: Iterable[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename checkpoint keys to the model's, adding or dropping the "transformer." prefix as needed.

    Returns the renamed state and the checkpoint keys the model has no place for (unexpected keys).
    """
    model_keys = set(model_keys)
    model_has_prefix = any(k.startswith(PREFIX) for k in model_keys)
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        candidates = [key]
        if model_has_prefix and not key.startswith(PREFIX):
            candidates.append(PREFIX + key)  # a base checkpoint into a head model
        if not model_has_prefix and key.startswith(PREFIX):
            candidates.append(key[len(PREFIX) :])  # a head checkpoint into a base model
        for name in candidates:
            if name in model_keys:
                out[name] = tensor
                break
        else:
            unexpected.append(key)
    return out, unexpected


class ShapeMismatchError(RuntimeError, ValueError):
    """Checkpoint tensors whose shapes differ from the model's. A RuntimeError, as transformers raises
    (load_state_dict's "size mismatch"), and a ValueError, as gpt2kit's bad-input errors are."""


def check_shapes(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str) -> None:
    bad = [(k, tuple(t.shape), tuple(expected[k])) for k, t in state.items() if t.shape != expected[k]]
    if bad:
        lines = "; ".join(f"{k}: checkpoint {got}, model {want}" for k, got, want in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ShapeMismatchError(
            f"the weights in {source} do not fit the model built from its config — {lines}{more}. "
            "The config.json does not match the weights: fix config.json or use the weights' own config; "
            "to re-initialise the mismatched weights instead (a new num_labels), pass "
            "ignore_mismatched_sizes=True."
        )


def save_state_dict(
    state: dict[str, torch.Tensor],
    folder: Path,
    safe_serialization: bool = True,
    max_shard_size: int | str = "5GB",
) -> list[Path]:
    """Write state into folder as model.safetensors (or pytorch_model.bin), sharded above max_shard_size.

    Every file is written to a temporary name and renamed into place, so an interrupted save never leaves
    a half-written file under a real name. Stale weight files from an earlier save are removed.
    """
    limit = parse_size(max_shard_size)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes

    base, index_name = (SAFE_WEIGHTS, SAFE_INDEX) if safe_serialization else (BIN_WEIGHTS, BIN_INDEX)
    stem, ext = base.rsplit(".", 1)
    names = (
        [base]
        if len(shards) == 1
        else [f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}" for i in range(1, len(shards) + 1)]
    )
    for old in folder.glob(f"{stem}*.{ext}"):
        if old.name not in names:
            old.unlink()
    from gpt2kit.data import file_mode

    written = []
    for name, shard in zip(names, shards):
        path = folder / name
        tmp = folder / f".{name}.tmp"
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(shard, tmp, metadata={"format": "pt"})
        else:
            torch.save(shard, tmp)
        os.chmod(tmp, file_mode(path))  # safetensors creates 0o600 files
        os.replace(tmp, path)
        written.append(path)
    index_path = folder / index_name
    if len(shards) > 1:
        from gpt2kit.data import atomic_write_text

        total = sum(t.numel() * t.element_size() for t in state.values())
        weight_map = {k: name for name, shard in zip(names, shards) for k in shard}
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(index_path, json.dumps(index, indent=2) + "\n")
        written.append(index_path)
    elif index_path.exists():
        index_path.unlink()
    return written


def parse_size(size: int | str) -> int:
    """'5GB' / '200MB' / '10KiB' / 12345 -> bytes."""
    if isinstance(size, int):
        return size
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    s = size.strip().upper()
    for unit, factor in units.items():
        if s.endswith(unit):
            try:
                return int(float(s[: -len(unit)]) * factor)
            except ValueError:
                break
    raise ValueError(f"max_shard_size must be bytes or a size like '5GB' or '200MB', got {size!r}")


def _safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file (name -> dtype, shape, offsets), read without loading data."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n < 100_000_000:
            raise ValueError(f"{path} is not a safetensors file (header size {n}); it is probably corrupt")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError:
            raise ValueError(f"{path} has a corrupt safetensors header; re-download or re-save it") from None
    header.pop("__metadata__", None)
    return header


_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64"}


def inspect_checkpoint(folder: Path) -> dict:
    """A plain summary of a checkpoint folder: files, tensor count, parameters, dtypes. Reads headers only
    for safetensors (a zip-format .bin is memory-mapped), so it is fast on any size."""
    files = find_weight_files(folder)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, int] = {}
    for path in files:
        if path.suffix == ".safetensors":
            for name, info in _safetensors_header(path).items():
                shapes[name] = tuple(info["shape"])
                dt = _ST_DTYPES.get(info["dtype"], info["dtype"].lower())
                dtypes[dt] = dtypes.get(dt, 0) + 1
        else:
            for name, t in _read_bin(path, "cpu").items():
                shapes[name] = tuple(t.shape)
                dt = str(t.dtype).removeprefix("torch.")
                dtypes[dt] = dtypes.get(dt, 0) + 1
    tensors = {k: v for k, v in shapes.items() if not k.endswith(_IGNORED_SUFFIXES)}
    # A separately saved lm_head is the tied embedding in GPT-2; count it once, as num_parameters() does.
    counted = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    extra = [p for p in folder.iterdir() if p not in files and p.name != "config.json"]
    return {
        "path": str(folder),
        "weight_files": [{"name": p.name, "bytes": p.stat().st_size} for p in files],
        "other_files": sorted(p.name + ("/" if p.is_dir() else "") for p in extra),
        "tensors": len(tensors),
        "num_parameters": sum(math.prod(s) for s in counted.values()),
        "dtypes": dtypes,
    }
