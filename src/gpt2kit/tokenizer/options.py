"""What the keyword arguments of a tokenizer call mean, resolved once into plain data (CallOptions).

transformers 4.x's rules, kept: `max_length` alone turns truncation on (with a warning), `truncation=True`
without max_length means the model's maximum, `padding=True` ignores max_length (with a warning). Also
kept are spellings older 4.x releases took: `pad_to_max_length=True` (pad to the longest text, or to
max_length when given) and `truncation_strategy=...`, each with the FutureWarning those releases gave;
4.57 itself no longer honours them. Keyword arguments no 4.x call knows are logged (once per tokenizer and
spelling) and ignored, as transformers' slow tokenizer does ("Keyword arguments {...} not recognized.").

Where transformers warns through its logger, so do we (logging, once per tokenizer where it says once);
where it calls warnings.warn, so do we.

>>> from gpt2kit import GPT2Tokenizer
>>> o = resolve(GPT2Tokenizer.from_pretrained("gpt2"), truncation=True)
>>> o.truncation, o.max_length, o.padding
('longest_first', 1024, 'do_not_pad')
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpt2kit.tokenizer.truncation import STRATEGIES

if TYPE_CHECKING:
    from gpt2kit.tokenizer.base import TokenizerBase

PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TENSOR_TYPES = ("pt", "np")
# transformers' threshold above which model_max_length means "no limit".
LARGE_INTEGER = int(1e20)
# Every keyword a 4.x encoding call knows (for telling a typo from an unsupported feature).
KNOWN_CALL_KWARGS = frozenset(
    ["text", "text_pair", "text_target", "text_pair_target", "add_special_tokens", "padding", "truncation",
     "max_length", "stride", "pad_to_multiple_of", "padding_side", "return_tensors", "return_token_type_ids",
     "return_attention_mask", "return_overflowing_tokens", "return_special_tokens_mask", "return_offsets_mapping",
     "return_length", "verbose", "add_prefix_space", "pad_to_max_length", "truncation_strategy",
     "prepend_batch_axis", "is_split_into_words", "split_special_tokens"]
)  # fmt: skip

PAD_TOKEN_MISSING = (
    "Asking to pad but the tokenizer does not have a padding token. Please select a token to use as `pad_token` "
    "`(tokenizer.pad_token = tokenizer.eos_token e.g.)` or add a new pad token via "
    "`tokenizer.add_special_tokens({'pad_token': '[PAD]'})`."
)
PAD_TO_MAX_LENGTH_DEPRECATED = (
    "The `pad_to_max_length` argument is deprecated and will be removed in a future version, use `padding=True` or "
    "`padding='longest'` to pad to the longest sequence in the batch, or use `padding='max_length'` to pad to a max "
    "length. In this case, you can give a specific length with `max_length` (e.g. `max_length=45`) or leave "
    "max_length to None to pad to the maximal input size of the model (e.g. 512 for Bert)."
)
TRUNCATION_STRATEGY_DEPRECATED = (
    "The `truncation_strategy` argument is deprecated and will be removed in a future version, use `truncation=True` "
    "to truncate examples to a max length, or truncation='only_first' / 'only_second' / 'longest_first' for pairs."
)


@dataclass(frozen=True)
class CallOptions:
    """One call's arguments with strategies named and defaults filled in."""

    add_special_tokens: bool = True
    padding: str = "do_not_pad"  # "longest" | "max_length" | "do_not_pad"
    truncation: str | None = None  # "longest_first" | "only_first" | "only_second" | None: no truncation
    max_length: int | None = None
    stride: int = 0
    pad_to_multiple_of: int | None = None
    padding_side: str | None = None  # None: the tokenizer's own
    return_tensors: str | None = None
    return_token_type_ids: bool = False
    return_attention_mask: bool = True
    return_overflowing_tokens: bool = False
    return_special_tokens_mask: bool = False
    return_offsets_mapping: bool = False
    return_length: bool = False
    verbose: bool = True
    add_prefix_space: bool = False
    is_split_into_words: bool = False  # text is a list of words (pre-tokenized), a batch a list of such lists
    split_special_tokens: bool = False  # special tokens in the text are encoded as text, not as their ids


def strategy_value(value: Any) -> Any:
    """transformers passes enums (PaddingStrategy.LONGEST, TensorType.PYTORCH...); use their string value."""
    return value.value if hasattr(value, "value") and not isinstance(value, (bool, str)) else value


def check_return_tensors(return_tensors: Any) -> str | None:
    if return_tensors is None:
        return None
    kind = strategy_value(return_tensors)
    if kind not in TENSOR_TYPES:
        raise ValueError(
            f"return_tensors={return_tensors!r} is not supported; use 'pt' (torch), 'np' (numpy) or None (lists)"
        )
    return kind


def check_padding_side(padding_side: Any) -> str | None:
    if padding_side is not None and padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    return padding_side


def resolve(
    tok: TokenizerBase,
    *,
    add_special_tokens: bool = True,
    padding: Any = False,
    truncation: Any = None,
    max_length: int | None = None,
    stride: int = 0,
    pad_to_multiple_of: int | None = None,
    padding_side: str | None = None,
    return_tensors: Any = None,
    return_token_type_ids: bool | None = None,
    return_attention_mask: bool | None = None,
    return_overflowing_tokens: bool = False,
    return_special_tokens_mask: bool = False,
    return_offsets_mapping: bool = False,
    return_length: bool = False,
    verbose: bool = True,
    add_prefix_space: bool | None = None,
    is_split_into_words: bool = False,
    split_special_tokens: bool | None = None,
    pad_to_max_length: bool = False,
    truncation_strategy: Any = None,
    **kwargs: Any,
) -> CallOptions:
    """Check and resolve the keyword arguments of an encoding call, warning as transformers warns."""
    if kwargs:
        warn_unknown(tok, kwargs, verbose)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
        raise ValueError(
            f"stride must be an int >= 0 (tokens shared by consecutive overflow windows), got {stride!r}"
        )
    padding_strategy, truncation_strategy, max_length = resolve_strategies(
        tok,
        padding,
        truncation,
        max_length,
        pad_to_multiple_of,
        verbose,
        pad_to_max_length=pad_to_max_length,
        truncation_strategy=truncation_strategy,
    )
    return CallOptions(
        add_special_tokens=bool(add_special_tokens),
        padding=padding_strategy,
        truncation=truncation_strategy,
        max_length=max_length,
        stride=stride,
        pad_to_multiple_of=pad_to_multiple_of,
        padding_side=check_padding_side(padding_side),
        return_tensors=check_return_tensors(return_tensors),
        return_token_type_ids=bool(return_token_type_ids),
        return_attention_mask=return_attention_mask is not False,
        return_overflowing_tokens=bool(return_overflowing_tokens),
        return_special_tokens_mask=bool(return_special_tokens_mask),
        return_offsets_mapping=bool(return_offsets_mapping),
        return_length=bool(return_length),
        verbose=verbose,
        add_prefix_space=tok.add_prefix_space if add_prefix_space is None else bool(add_prefix_space),
        is_split_into_words=bool(is_split_into_words),
        split_special_tokens=tok.split_special_tokens
        if split_special_tokens is None
        else bool(split_special_tokens),
    )


def warn_unknown(tok: TokenizerBase, unknown: dict[str, Any], verbose: bool = True) -> None:
    """transformers' "not recognized" warning, with the argument it most likely meant (once per spelling)."""
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, KNOWN_CALL_KWARGS, n=1, cutoff=0.75)
        if close:
            hints.append(f"{key!r} -> {close[0]!r}")
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    tok._warn_once(
        f"unknown:{sorted(unknown)}", f"Keyword arguments {unknown} not recognized.{hint}", verbose
    )


def resolve_strategies(
    tok: TokenizerBase,
    padding: Any,
    truncation: Any,
    max_length: int | None,
    pad_to_multiple_of: int | None,
    verbose: bool,
    *,
    pad_to_max_length: bool = False,
    truncation_strategy: Any = None,
) -> tuple[str, str | None, int | None]:
    """(padding strategy, truncation strategy or None, max_length) with transformers' defaults and warnings."""
    padding, truncation = strategy_value(padding), strategy_value(truncation)
    truncation_strategy = strategy_value(truncation_strategy)
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
    ):
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if pad_to_multiple_of is not None and (
        isinstance(pad_to_multiple_of, bool)
        or not isinstance(pad_to_multiple_of, int)
        or pad_to_multiple_of < 1
    ):
        raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")

    if truncation is None and truncation_strategy not in (None, "do_not_truncate"):
        if verbose:
            warnings.warn(TRUNCATION_STRATEGY_DEPRECATED, FutureWarning, stacklevel=4)
        truncation = truncation_strategy
    if max_length is not None and padding is False and truncation is None:
        tok._warn_once(
            "truncation-not-explicit",
            "Truncation was not explicitly activated but `max_length` is provided a specific value, please use "
            "`truncation=True` to explicitly truncate examples to max length. Defaulting to 'longest_first' "
            "truncation strategy. If you encode pairs of sequences (GLUE-style) with the tokenizer you can select "
            "this strategy more precisely by providing a specific strategy to `truncation`.",
            verbose,
        )
        truncation = "longest_first"

    if padding is False and pad_to_max_length:
        # Older 4.x: pad to the longest text, or to max_length when one is given.
        if verbose:
            warnings.warn(PAD_TO_MAX_LENGTH_DEPRECATED, FutureWarning, stacklevel=4)
        strategy = "longest" if max_length is None else "max_length"
    elif padding is True:
        if verbose and max_length is not None and truncation in (None, False, "do_not_truncate"):
            warnings.warn(
                "`max_length` is ignored when `padding`=`True` and there is no truncation strategy. To pad to max "
                "length, use `padding='max_length'`.",
                stacklevel=4,
            )
        strategy = "longest"
    elif padding is False or padding is None:
        strategy = "do_not_pad"
    elif padding in PADDING_STRATEGIES:
        strategy = padding
    else:
        raise ValueError(
            f"padding={padding!r} is not a padding strategy; use True ('longest'), 'max_length' or False"
        )

    if truncation is True:
        cut: str | None = "longest_first"
    elif truncation is False or truncation is None or truncation == "do_not_truncate":
        cut = None
    elif truncation in STRATEGIES:
        cut = truncation
    else:
        raise ValueError(
            f"truncation={truncation!r} is not a truncation strategy; use True ('longest_first'), 'only_first', "
            "'only_second' (pairs) or False"
        )

    if max_length is None:
        no_limit = tok.model_max_length > LARGE_INTEGER
        if strategy == "max_length":
            if no_limit:
                tok._warn_once(
                    "pad-no-max-length",
                    "Asking to pad to max_length but no maximum length is provided and the model has no predefined "
                    "maximum length. Default to no padding.",
                    verbose,
                )
                strategy = "do_not_pad"
            else:
                max_length = tok.model_max_length
        if cut is not None:
            if no_limit:
                tok._warn_once(
                    "truncate-no-max-length",
                    "Asking to truncate to max_length but no maximum length is provided and the model has no "
                    "predefined maximum length. Default to no truncation.",
                    verbose,
                )
                cut = None
            else:
                max_length = tok.model_max_length

    if strategy != "do_not_pad" and tok.pad_token_id is None:
        raise ValueError(PAD_TOKEN_MISSING)
    if (
        cut is not None
        and strategy != "do_not_pad"
        and pad_to_multiple_of
        and max_length
        and max_length % pad_to_multiple_of
    ):
        raise ValueError(
            f"Truncation and padding are both activated but truncation length ({max_length}) is not a multiple of "
            f"pad_to_multiple_of ({pad_to_multiple_of})."
        )
    return strategy, cut, max_length
