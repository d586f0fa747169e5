"""What every export reads from a checkpoint folder: the language model and its tokenizer.

Both exporters take the model as `GPT2LMHeadModel.from_pretrained` loads it (so a bare GPT2Model checkpoint,
OpenAI's own layout, exports with its head tied to the embedding), in float32: the formats' own dtypes
(float16, int8, q8_0) are made from float32 weights by the exporter.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpt2kit.model import GPT2LMHeadModel
    from gpt2kit.tokenizer.base import TokenizerBase
    from gpt2kit.tokenizer.files import Vocabulary

logger = logging.getLogger(__name__)


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise ImportError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{purpose} needs {e.name or module}, which is not installed: pip install 'gpt2kit[{extra}]'"
        ) from None


def load_lm(model: str | os.PathLike | GPT2LMHeadModel, what: str) -> GPT2LMHeadModel:
    """A folder or cached name -> GPT2LMHeadModel in float32 and eval mode; a loaded model is checked only."""
    import torch

    from gpt2kit.model import GPT2LMHeadModel
    from gpt2kit.progress import loading

    if not isinstance(model, GPT2LMHeadModel):
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(
                f"model must be a folder, a name or a GPT2LMHeadModel, got {type(model).__name__}"
            )
        with loading(model):
            model = GPT2LMHeadModel.from_pretrained(model, dtype=torch.float32)
    if model.config.add_cross_attention:
        raise ValueError(
            f"{what} writes decoder-only GPT-2; this model has cross-attention layers (add_cross_attention=True), "
            "which need encoder states as an input. Export a model without them."
        )
    return model.float().eval()


@dataclass
class TokenizerFiles:
    """A tokenizer and the vocabulary it was read from (merges included), as exporters need them."""

    tokenizer: TokenizerBase
    vocab: Vocabulary
    source: str


def load_tokenizer(
    source: str | os.PathLike | None,
    model: object,
    model_dir: Path | None,
    vocab_size: int,
    required: bool,
    what: str,
) -> TokenizerFiles | None:
    """The tokenizer named by `source` (a folder or "gpt2"), else the model folder's own, else GPT-2's
    bundled vocabulary when the model was named as a GPT-2 model ("gpt2", "gpt2kit-demo").

    None when there is none and the format can do without one (`required=False`). A vocabulary larger
    than the model's embedding would name tokens the model has no row for, so it is refused.
    """
    from gpt2kit import hub
    from gpt2kit.tokenizer import GPT2TokenizerFast, files

    if source is None:
        if model_dir is not None and any(
            (model_dir / name).is_file() for name in (files.VOCAB_FILE, files.TOKENIZER_FILE)
        ):
            source = model_dir
        elif isinstance(model, str) and model in hub.GPT2_NAMES:
            source = model  # a GPT-2 name whose folder has no tokenizer (the bundled demo): GPT-2's own
        else:
            hint = (
                f"{model_dir} has no tokenizer files (vocab.json + merges.txt, or tokenizer.json)"
                if model_dir is not None
                else "the model was passed as an object, with no folder to read a tokenizer from"
            )
            if required:
                raise FileNotFoundError(
                    f"{what} needs the tokenizer: {hint}. Pass tokenizer='gpt2' (--tokenizer gpt2) for GPT-2's "
                    "own vocabulary, or the folder of the tokenizer the model was trained with."
                )
            logger.warning("%s: %s; writing no tokenizer files (pass --tokenizer to add them)", what, hint)
            return None
    folder, _ = files.resolve(source)
    tokenizer = GPT2TokenizerFast.from_pretrained(source)
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer {str(source)!r} has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}; "
            "pass the tokenizer the model was trained with (--tokenizer DIR)"
        )
    return TokenizerFiles(tokenizer, files.read_folder(folder).vocab, str(source))
