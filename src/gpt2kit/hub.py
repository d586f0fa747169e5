"""Find a model's files: a local folder, the local Hugging Face cache, or (optionally) a download.

Resolution order for `name_or_path`:
1. an existing folder (a downloaded checkpoint, a save_pretrained output);
2. the local Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), in its
   `models--org--name/snapshots/<revision>/` layout;
3. only when asked, online, and huggingface_hub is installed: a download into that cache.
Offline use never imports huggingface_hub.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

BUNDLED_VOCAB_DIR = Path(__file__).parent / "tokenizer" / "gpt2"

# Models shipped inside the package, found by name before the HF cache (a folder of that name wins).
BUNDLED_MODELS = {"gpt2kit-demo": Path(__file__).parent / "models" / "gpt2kit-demo"}

# Names whose tokenizer is GPT-2's own vocabulary, bundled with the package.
GPT2_NAMES = frozenset(
    [
        "gpt2kit-demo",
        "gpt2",
        "gpt2-medium",
        "gpt2-large",
        "gpt2-xl",
        "distilgpt2",
        "openai-community/gpt2",
        "openai-community/gpt2-medium",
        "openai-community/gpt2-large",
        "openai-community/gpt2-xl",
        "distilbert/distilgpt2",
    ]
)

# The hub moved the original checkpoints under organisations; a cache may hold either spelling.
_REPO_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


def hf_cache_dir() -> Path:
    """The folder the Hugging Face hub caches models in, from the same environment variables it reads."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(hf_home).expanduser() / "hub"


def is_offline() -> bool:
    """HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set to a true value, spelled as huggingface_hub accepts it."""
    truthy = ("1", "on", "true", "yes")
    return (
        os.environ.get("HF_HUB_OFFLINE", "0").lower() in truthy
        or os.environ.get("TRANSFORMERS_OFFLINE", "0").lower() in truthy
    )


def _candidate_repo_ids(name: str) -> list[str]:
    ids = [name]
    if name in _REPO_ALIASES:
        ids.append(_REPO_ALIASES[name])
    ids += [k for k, v in _REPO_ALIASES.items() if v == name]
    return ids


def find_in_cache(name: str, revision: str | None = None) -> Path | None:
    """The snapshot folder of `name` in the local HF cache, or None. Never touches the network."""
    cache = hf_cache_dir()
    for repo_id in _candidate_repo_ids(name):
        repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
        snapshots = repo_dir / "snapshots"
        if not snapshots.is_dir():
            continue
        ref = revision or "main"
        ref_file = repo_dir / "refs" / ref
        if ref_file.is_file():
            snap = snapshots / ref_file.read_text().strip()
            if snap.is_dir():
                return snap
        if revision and (snapshots / revision).is_dir():
            return snapshots / revision
        if revision:
            continue  # that revision is not cached: another snapshot would silently be the wrong files
        # No ref for it: take the most recently written snapshot.
        snaps = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if snaps:
            return snaps[-1]
    return None


def download(name: str, revision: str | None = None, allow_patterns: list[str] | None = None) -> Path | None:
    """Download `name` from the hub into the HF cache; None when offline or huggingface_hub is missing."""
    if is_offline():
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        logger.info("huggingface_hub is not installed; not downloading %s (pip install 'gpt2kit[hub]')", name)
        return None
    try:
        path = snapshot_download(
            _REPO_ALIASES.get(name, name), revision=revision, allow_patterns=allow_patterns, etag_timeout=10
        )
    except Exception as e:  # network, auth, missing repo: all mean "not available"
        logger.info("could not download %s: %s", name, e)
        return None
    return Path(path)


# What a model download fetches: configs, tokenizer files and PyTorch weights. A Hub repository holds more (the
# `gpt2` one also has TensorFlow, Flax, rust-bert, TFLite and ONNX copies: several GB beside a 0.5 GB checkpoint),
# none of which gpt2kit reads.
MODEL_FILE_PATTERNS = ["*.json", "*.txt", "*.safetensors"]
BIN_FILE_PATTERNS = ["pytorch_model*.bin"]


def download_model(name: str, revision: str | None = None) -> Path | None:
    """Download a model's configs, tokenizer and weights: safetensors, or the .bin files when it has none
    (transformers' preference; many repositories have both, and one copy is enough)."""
    snap = download(name, revision, allow_patterns=MODEL_FILE_PATTERNS)
    if snap is not None and not any(snap.glob("*.safetensors")):
        snap = download(name, revision, allow_patterns=BIN_FILE_PATTERNS) or snap
    return snap


def looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (./x, /x, ~/x, a/b/c) can only be a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def find_model_dir(
    name_or_path: str | os.PathLike,
    *,
    local_files_only: bool = False,
    download_ok: bool = False,
    revision: str | None = None,
    required: bool = True,
    files: tuple[str, ...] = ("config.json",),
) -> Path | None:
    """Resolve a folder, a cached hub name, or (if download_ok and online) a downloaded hub name."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if name in BUNDLED_MODELS and not path.exists() and BUNDLED_MODELS[name].is_dir():
        return BUNDLED_MODELS[name]
    if not path.exists() and not looks_like_path(name):
        snap = find_in_cache(name, revision)
        if snap is not None:
            return snap
        if download_ok and not local_files_only:
            snap = download_model(name, revision)
            if snap is not None:
                return snap
    if required:
        raise FileNotFoundError(not_found_message(name, list(files)))
    return None


def not_found_message(name_or_path: str | os.PathLike, files: list[str]) -> str:
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_file():
        return f"{path} is a file; pass the folder that holds {', '.join(files)}"
    return (
        f"no model folder or cached model named {name!r}: looked for the folder {path.resolve()} "
        f"(with {', '.join(files)}) and for a snapshot in the Hugging Face cache {hf_cache_dir()}. "
        "Pass the path of a folder written by save_pretrained (or downloaded from the hub)."
    )
