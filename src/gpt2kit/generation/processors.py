"""Logits processors: small functions of (tokens so far, next-token scores) -> new scores.

Each processor is called as `proc(input_ids, scores)` with input_ids (B, T) LongTensor (prompt and the
tokens generated so far) and scores (B, V) FloatTensor (next-token logits), and returns new (B, V) scores;
the input tensors are never changed in place. The math, names and order are transformers 4.57's, so the
same settings give the same distribution; `build_processors` assembles the list `generate()` applies.

Legend: B batch rows (sequences or beams), T tokens so far, V vocabulary size.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from gpt2kit.generation.config import check_exponential_decay, sequence_bias_dict

if TYPE_CHECKING:
    from gpt2kit.generation.config import GenerationConfig

logger = logging.getLogger(__name__)

NEG_INF = -math.inf


def _ids_tensor(ids: int | Iterable[int] | torch.Tensor) -> torch.Tensor:
    """One token id or several, as a 1-D LongTensor."""
    if isinstance(ids, torch.Tensor):
        return ids.reshape(-1).long()
    if isinstance(ids, int):
        return torch.tensor([ids], dtype=torch.long)
    return torch.tensor(list(ids), dtype=torch.long)


class _Forbid:
    """scores with -inf at a processor's fixed ids (ids outside the vocabulary are ignored, as transformers):
    `scores.index_fill` over the ids inside the vocabulary, kept per vocabulary size, device and ids tensor.
    This runs every decode step (min-length, suppressed tokens): a masked_fill over a (V,) bool mask built
    each step cost ~50 us for the mask and ~30 us for the fill at batch 1 over GPT-2's 50257 ids (~190 us
    at batch 8); index_fill writes the same values in ~6 (~26) us."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.ids: torch.Tensor | None = None

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        key = (scores.shape[-1], scores.device, id(ids))
        if self.key != key or self.ids is None:
            self.ids, self.key = in_vocabulary(ids.to(scores.device), scores.shape[-1]), key
        return scores.index_fill(-1, self.ids, NEG_INF)


def in_vocabulary(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """The ids a vocabulary of `vocab` tokens has (transformers ignores the others)."""
    return ids[(ids >= 0) & (ids < vocab)]


def _check_min_tokens_to_keep(min_tokens_to_keep: int) -> None:
    if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep must be an integer >= 1, got {min_tokens_to_keep!r}")


class LogitsProcessor:
    """Base class: subclasses implement `__call__(input_ids (B, T), scores (B, V)) -> (B, V)`."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class LogitsProcessorList(list):
    """A list of processors applied in order; callable like one processor.

    Keyword arguments (group beam search's `current_tokens` and `beam_group_idx`) go only to the processors
    whose __call__ takes more than (input_ids, scores), as in transformers.
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        for processor in self:
            if kwargs and _takes_extra_inputs(processor):
                scores = processor(input_ids, scores, **kwargs)
            else:
                scores = processor(input_ids, scores)
        return scores


def _takes_extra_inputs(processor) -> bool:
    return len(inspect.signature(processor.__call__).parameters) > 2


# --- warpers: reshape the distribution we sample from (used only when do_sample=True) ---------------------


class TemperatureLogitsWarper(LogitsProcessor):
    """scores / temperature: < 1 sharpens the distribution, > 1 flattens it."""

    def __init__(self, temperature: float):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(
                f"temperature must be > 0, got {temperature!r}; for greedy decoding use do_sample=False instead"
            )
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores / self.temperature


class TopKLogitsWarper(LogitsProcessor):
    """Keep the k highest scores (ties with the k-th kept too); the rest become filter_value."""

    def __init__(self, top_k: int, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(
                f"top_k must be a positive integer, got {top_k!r}; leave it out to keep all tokens"
            )
        _check_min_tokens_to_keep(min_tokens_to_keep)
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        k = min(self.top_k, scores.shape[-1])  # a k larger than the vocabulary keeps everything
        kth_best = torch.topk(scores, k).values[..., -1:]  # (B, 1)
        return scores.masked_fill(scores < kth_best, self.filter_value)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus sampling: keep the smallest set of top tokens whose probabilities sum to at least top_p."""

    def __init__(self, top_p: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        top_p = float(top_p)
        if not 0 <= top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {top_p!r}; 1.0 keeps every token")
        _check_min_tokens_to_keep(min_tokens_to_keep)
        self.top_p = top_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.filter_value == NEG_INF and scores.dim() == 2:
            kept = self._after_top_k(scores)
            if kept is not None:
                return kept
        # Ascending order, so the tail whose total mass is <= 1 - top_p comes first and is dropped.
        sorted_scores, sorted_idx = torch.sort(scores, descending=False)  # (B, V)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - self.top_p)
        drop_sorted[..., -self.min_tokens_to_keep :] = False  # the best tokens are at the end
        drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)
        return scores.masked_fill(drop, self.filter_value)

    def _after_top_k(self, scores: torch.Tensor) -> torch.Tensor | None:
        """__call__'s result without sorting all V scores, when few are not -inf (after top-k: k of them);
        None otherwise. Sorting GPT-2's 50257 scores took ~670 us a step at batch 1 (2-core EPYC), this ~250.

        The sorted row __call__ builds is the -inf entries and then the m others ascending, which are the m
        largest: that row is rebuilt from torch.topk, and the same softmax and cumsum run on it, so the
        cumulative masses are the same floats. What is dropped is a prefix of that row; when the values on
        either side of its end differ, it is exactly the scores below the first kept value. When they are
        equal (a tie across the cut), which copies torch.sort put first decides, so the full sort runs.
        """
        B, V = scores.shape
        m = int((scores != NEG_INF).sum(-1).max())  # nan counts: it sorts last, as in torch.sort
        if m == 0 or m * 8 > V:
            return None
        top = torch.topk(scores, m).values.flip(-1)  # (B, m) ascending
        row = scores.new_full((B, V), NEG_INF)
        row[:, V - m :] = top
        cumulative = row.softmax(dim=-1).cumsum(dim=-1)[:, V - m :]  # before V - m: exactly 0, all dropped
        drop = cumulative <= (1 - self.top_p)
        drop[..., -self.min_tokens_to_keep :] = False
        cut = (~drop).int().argmax(dim=-1, keepdim=True)  # (B, 1): the first kept place in top
        first_kept = top.gather(1, cut)
        before = torch.cat([top.new_full((B, 1), NEG_INF), top], dim=1).gather(1, cut)  # the last dropped
        if bool(((before == first_kept) & (first_kept > NEG_INF)).any()):
            return None
        return scores.masked_fill(scores < first_kept, NEG_INF)


class MinPLogitsWarper(LogitsProcessor):
    """Drop tokens whose probability is below min_p times the top token's probability."""

    def __init__(self, min_p: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {min_p!r}; 0 keeps every token")
        _check_min_tokens_to_keep(min_tokens_to_keep)
        self.min_p = min_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = scores.softmax(dim=-1)
        drop = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        # Never drop the min_tokens_to_keep best tokens, even if min_p would.
        sorted_idx = torch.argsort(scores, descending=True, dim=-1)
        drop_sorted = torch.gather(drop, 1, sorted_idx)
        drop_sorted[..., : self.min_tokens_to_keep] = False
        drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)
        return scores.masked_fill(drop, self.filter_value)


class TypicalLogitsWarper(LogitsProcessor):
    """Typical sampling: keep the tokens whose surprisal is closest to the entropy, up to mass `mass`."""

    def __init__(self, mass: float = 0.9, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        mass = float(mass)
        if not 0 < mass < 1:
            raise ValueError(f"typical_p must be in (0, 1), got {mass!r}; 1.0 means no typical filtering")
        _check_min_tokens_to_keep(min_tokens_to_keep)
        self.mass = mass
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logp = scores.log_softmax(dim=-1)  # (B, V)
        entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)  # nansum: -inf * 0 at filtered tokens
        distance = (-logp - entropy).abs()
        sorted_distance, sorted_idx = torch.sort(distance, descending=False)
        cumulative = scores.gather(-1, sorted_idx).softmax(dim=-1).cumsum(dim=-1)
        last = (cumulative < self.mass).sum(dim=1).clamp_(max=scores.shape[-1] - 1)  # (B,)
        drop_sorted = sorted_distance > sorted_distance.gather(1, last.view(-1, 1))
        drop_sorted[..., : self.min_tokens_to_keep] = False
        drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)
        return scores.masked_fill(drop, self.filter_value)


class EpsilonLogitsWarper(LogitsProcessor):
    """Epsilon sampling (Hewitt et al. 2022): drop tokens whose probability is below epsilon, keeping at least
    min_tokens_to_keep of the best."""

    def __init__(self, epsilon: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        epsilon = float(epsilon)
        if not 0 < epsilon < 1:
            raise ValueError(f"epsilon_cutoff must be in (0, 1), got {epsilon!r}; 0.0 turns it off")
        _check_min_tokens_to_keep(min_tokens_to_keep)
        self.epsilon = epsilon
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return _drop_below(
            scores, scores.softmax(dim=-1) < self.epsilon, self.min_tokens_to_keep, self.filter_value
        )


class EtaLogitsWarper(LogitsProcessor):
    """Eta sampling (Hewitt et al. 2022): the cutoff is min(eta, sqrt(eta) * exp(-entropy)), so a flat
    distribution (high entropy) keeps more tokens than a peaked one."""

    def __init__(self, epsilon: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        epsilon = float(epsilon)
        if not 0 < epsilon < 1:
            raise ValueError(f"eta_cutoff must be in (0, 1), got {epsilon!r}; 0.0 turns it off")
        _check_min_tokens_to_keep(min_tokens_to_keep)
        self.epsilon = epsilon
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        eta = torch.tensor(self.epsilon, device=scores.device)
        # The entropy as torch.distributions.Categorical computes it (what transformers calls), operation for
        # operation, so that a token on the cutoff falls on the same side: normalised logits, clamped to the
        # dtype's minimum so that -inf * 0 is 0, times the probabilities.
        logp = scores - scores.logsumexp(dim=-1, keepdim=True)
        entropy = -(logp.clamp(min=torch.finfo(logp.dtype).min) * logp.softmax(dim=-1)).sum(-1)  # (B,)
        cutoff = torch.min(eta, eta.sqrt() * torch.exp(-entropy))[..., None]  # (B, 1)
        return _drop_below(
            scores, scores.softmax(dim=-1) < cutoff, self.min_tokens_to_keep, self.filter_value
        )


def _drop_below(scores: torch.Tensor, low: torch.Tensor, keep: int, filter_value: float) -> torch.Tensor:
    """Filter the tokens marked `low` (B, V), except the `keep` best of each row (ties with the keep-th kept)."""
    kth_best = torch.topk(scores, min(keep, scores.shape[-1])).values[..., -1:]  # (B, 1)
    return scores.masked_fill(low & (scores < kth_best), filter_value)


# --- processors: constrain or penalise tokens (every decoding strategy) -----------------------------------


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Make every token already in input_ids less likely: divide positive scores, multiply negative ones.

    CTRL's penalty (Keskar et al. 2019); the prompt counts as well as the generated tokens.
    """

    def __init__(self, penalty: float):
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty!r}; 1.0 means no penalty")
        self.penalty = float(penalty)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        seen = torch.gather(scores, 1, input_ids)  # (B, T)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, input_ids, seen)


class PresenceFrequencyPenaltyLogitsProcessor(LogitsProcessor):
    """OpenAI's penalties: score[j] -= presence * (count[j] > 0) + frequency * count[j].

    count[j] is how often token j occurs among the generated tokens, i.e. input_ids[:, prompt_length:];
    the prompt does not count (unlike the repetition penalty). Negative values reward repetition.
    """

    def __init__(self, presence_penalty: float = 0.0, frequency_penalty: float = 0.0, prompt_length: int = 0):
        for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number (0 turns it off), got {value!r}")
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or prompt_length < 0:
            raise ValueError(f"prompt_length must be an integer >= 0, got {prompt_length!r}")
        self.presence_penalty = float(presence_penalty)
        self.frequency_penalty = float(frequency_penalty)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]  # (B, T - prompt_length)
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        return (
            scores - self.presence_penalty * (counts > 0).to(scores.dtype) - self.frequency_penalty * counts
        )


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Forbid any token that would complete an n-gram already present in the row."""

    def __init__(self, ngram_size: int):
        if isinstance(ngram_size, bool) or not isinstance(ngram_size, int) or ngram_size <= 0:
            raise ValueError(f"no_repeat_ngram_size must be a positive integer, got {ngram_size!r}")
        self.ngram_size = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = self.ngram_size
        if input_ids.shape[1] < n:  # no complete n-gram yet
            return scores
        ngrams = input_ids.unfold(1, n, 1)  # (B, T - n + 1, n): every n-gram of every row
        current = input_ids[:, input_ids.shape[1] - (n - 1) :]  # (B, n - 1): the n-gram being started now
        repeats = (ngrams[:, :, :-1] == current[:, None, :]).all(dim=-1)  # (B, T - n + 1)
        rows, starts = repeats.nonzero(as_tuple=True)
        banned = torch.zeros_like(scores, dtype=torch.bool)
        banned[rows, ngrams[rows, starts, -1]] = True
        return scores.masked_fill(banned, NEG_INF)


class NoBadWordsLogitsProcessor(LogitsProcessor):
    """Forbid token sequences: a single token always, a longer sequence's last token after its prefix.

    One-token sequences that are an eos token are not banned (as transformers), so generation can end.
    """

    def __init__(
        self, bad_words_ids: Sequence[Sequence[int]], eos_token_id: int | Iterable[int] | None = None
    ):
        if (
            not isinstance(bad_words_ids, (list, tuple))
            or len(bad_words_ids) == 0
            or any(
                not isinstance(seq, (list, tuple))
                or len(seq) == 0
                or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in seq)
                for seq in bad_words_ids
            )
        ):
            raise ValueError(
                f"bad_words_ids must be a non-empty list of non-empty lists of token ids, got {bad_words_ids!r}"
            )
        eos = set() if eos_token_id is None else set(_ids_tensor(eos_token_id).tolist())
        sequences = [list(seq) for seq in bad_words_ids if not (len(seq) == 1 and seq[0] in eos)]
        self.bad_words_ids = sequences
        self._single = torch.tensor([seq[0] for seq in sequences if len(seq) == 1], dtype=torch.long)
        self._multi = [torch.tensor(seq, dtype=torch.long) for seq in sequences if len(seq) > 1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab_size = scores.shape[-1]
        too_big = sorted({t for seq in self.bad_words_ids for t in seq if t >= vocab_size})
        if too_big:
            raise ValueError(f"bad_words_ids holds ids {too_big} outside the vocabulary of size {vocab_size}")
        banned = torch.zeros_like(scores, dtype=torch.bool)
        banned[:, self._single.to(scores.device)] = True
        for seq in self._multi:
            # transformers skips a sequence longer than the context, even one whose prefix is the whole context.
            if len(seq) > input_ids.shape[1]:
                continue
            prefix = seq[:-1].to(input_ids.device)
            follows_prefix = (input_ids[:, -len(prefix) :] == prefix).all(dim=1)  # (B,)
            banned[:, seq[-1]] |= follows_prefix.to(scores.device)
        return scores.masked_fill(banned, NEG_INF)


class MinLengthLogitsProcessor(LogitsProcessor):
    """Forbid eos while the sequence (prompt included) is shorter than min_length."""

    def __init__(self, min_length: int, eos_token_id: int | Iterable[int] | torch.Tensor):
        if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 0:
            raise ValueError(f"min_length must be an integer >= 0, got {min_length!r}")
        self.min_length = min_length
        self.eos_token_id = _ids_tensor(eos_token_id)
        self._forbid = _Forbid()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.active(input_ids.shape[-1]):
            return scores
        return self._forbid(self.eos_token_id, scores)

    def active(self, length: int) -> bool:
        """Whether eos is forbidden for a sequence of `length` tokens (search.decode reads it too)."""
        return length < self.min_length


class MinNewTokensLengthLogitsProcessor(LogitsProcessor):
    """Forbid eos until min_new_tokens tokens have been generated after the prompt."""

    def __init__(
        self,
        prompt_length_to_skip: int,
        min_new_tokens: int,
        eos_token_id: int | Iterable[int] | torch.Tensor,
    ):
        for name, value in (
            ("prompt_length_to_skip", prompt_length_to_skip),
            ("min_new_tokens", min_new_tokens),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.prompt_length_to_skip = prompt_length_to_skip
        self.min_new_tokens = min_new_tokens
        self.eos_token_id = _ids_tensor(eos_token_id)
        self._forbid = _Forbid()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.active(input_ids.shape[-1]):
            return scores
        return self._forbid(self.eos_token_id, scores)

    def active(self, length: int) -> bool:
        """Whether eos is forbidden for a sequence of `length` tokens (prompt included)."""
        return length - self.prompt_length_to_skip < self.min_new_tokens


class ForcedEOSTokenLogitsProcessor(LogitsProcessor):
    """At the last position before max_length, allow only eos (score 0 for eos, -inf for the rest)."""

    def __init__(self, max_length: int, eos_token_id: int | Iterable[int] | torch.Tensor):
        self.max_length = max_length
        self.eos_token_id = _ids_tensor(eos_token_id)
        if (self.eos_token_id < 0).any():
            raise ValueError(f"forced_eos_token_id must be token ids >= 0, got {self.eos_token_id.tolist()}")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[-1] != self.max_length - 1:
            return scores
        forced = torch.full_like(scores, NEG_INF)
        forced[:, self.eos_token_id.to(scores.device)] = 0
        return forced


class SuppressTokensLogitsProcessor(LogitsProcessor):
    """Never generate these tokens."""

    def __init__(self, suppress_tokens: Iterable[int]):
        self.suppress_tokens = _ids_tensor(suppress_tokens)
        self._forbid = _Forbid()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self._forbid(self.suppress_tokens, scores)


class SuppressTokensAtBeginLogitsProcessor(LogitsProcessor):
    """Do not generate these tokens as the first new token (at sequence length begin_index)."""

    def __init__(self, begin_suppress_tokens: Iterable[int], begin_index: int):
        self.begin_suppress_tokens = _ids_tensor(begin_suppress_tokens)
        self.begin_index = begin_index
        self._forbid = _Forbid()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[-1] != self.begin_index:
            return scores
        return self._forbid(self.begin_suppress_tokens, scores)


class InfNanRemoveLogitsProcessor(LogitsProcessor):
    """remove_invalid_values=True: nan -> 0, +inf -> the dtype's largest number, -inf -> its smallest, so
    that sampling never meets them (transformers' processor of that name)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        finfo = torch.finfo(scores.dtype)
        out = torch.where(scores != scores, 0.0, scores)
        out = torch.where(scores == float("inf"), finfo.max, out)
        return torch.where(scores == float("-inf"), finfo.min, out)


class LogitNormalization(LogitsProcessor):
    """Log-softmax, so the final scores are log-probabilities (renormalize_logits=True)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.log_softmax(dim=-1)


class SequenceBiasLogitsProcessor(LogitsProcessor):
    """Add a bias to a token sequence's last token wherever the row ends with the rest of the sequence.

    sequence_bias: {(ids...): bias} or [[ids, bias], ...] (the JSON-friendly form). A one-token sequence is
    biased always; a longer one only after its prefix, and never while the row is shorter than it. Positive
    biases favour a sequence, -inf bans it.

    >>> proc = SequenceBiasLogitsProcessor({(3,): -1.0, (1, 2): 5.0})
    >>> proc(torch.tensor([[0, 1]]), torch.zeros(1, 4)).tolist()
    [[0.0, 0.0, 5.0, -1.0]]
    """

    def __init__(self, sequence_bias: dict[tuple[int, ...], float] | list):
        self.sequence_bias = sequence_bias_dict(sequence_bias)
        self._single: torch.Tensor | None = (
            None  # (V,) biases of the one-token sequences, built on first call
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        if self._single is None or self._single.shape[0] != vocab or self._single.device != scores.device:
            too_big = sorted({t for seq in self.sequence_bias for t in seq if t >= vocab})
            if too_big:
                raise ValueError(
                    f"sequence_bias holds ids {too_big} outside the vocabulary of size {vocab}; drop them"
                )
            self._single = torch.zeros(vocab, dtype=torch.float, device=scores.device)
            for seq, bias in self.sequence_bias.items():
                if len(seq) == 1:
                    self._single[seq[0]] = bias
        # Summed in the order transformers sums them (one-token biases, then each sequence in turn), so the
        # biased scores are bit-identical.
        bias = torch.zeros_like(scores) + self._single
        for seq, value in self.sequence_bias.items():
            if len(seq) == 1 or len(seq) > input_ids.shape[1]:
                continue
            prefix = torch.tensor(seq[:-1], dtype=input_ids.dtype, device=input_ids.device)
            follows = (input_ids[:, -len(prefix) :] == prefix).all(dim=1)  # (B,)
            bias[:, seq[-1]] += torch.where(
                follows, torch.tensor(value, device=scores.device), torch.tensor(0.0, device=scores.device)
            )
        return scores + bias


class ExponentialDecayLengthPenalty(LogitsProcessor):
    """After start_index new tokens, raise eos's score by |score| * (decay_factor ** n - 1), n tokens past
    the start: a growing push towards ending (exponential_decay_length_penalty=(start_index, decay_factor)).
    """

    def __init__(
        self,
        exponential_decay_length_penalty: tuple[int, float],
        eos_token_id: int | Iterable[int] | torch.Tensor | None,
        input_ids_seq_length: int,
    ):
        start, factor = check_exponential_decay(exponential_decay_length_penalty)
        if eos_token_id is None:
            raise ValueError(
                "exponential_decay_length_penalty pushes eos up, but there is no eos_token_id; pass eos_token_id"
            )
        self.eos_token_id = _ids_tensor(eos_token_id)
        if (self.eos_token_id < 0).any():
            raise ValueError(f"eos_token_id must be token ids >= 0, got {self.eos_token_id.tolist()}")
        self.regulation_start = start + input_ids_seq_length
        self.regulation_factor = factor

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        past = input_ids.shape[-1] - self.regulation_start
        if past <= 0:
            return scores
        eos = self.eos_token_id.to(scores.device)
        penalties = torch.zeros_like(scores)
        penalties[:, eos] = scores[:, eos].abs() * (self.regulation_factor**past - 1)
        return scores + penalties


class HammingDiversityLogitsProcessor(LogitsProcessor):
    """Group (diverse) beam search: lower each token's score by diversity_penalty times the number of beams
    of the earlier groups that chose it at this step (Vijayakumar et al. 2016), as transformers 4.55.

    Called per group with current_tokens (B * num_beams,) (the tokens the earlier groups chose this step)
    and beam_group_idx; scores are the group's rows (B * group_size, V).
    """

    def __init__(self, diversity_penalty: float, num_beams: int, num_beam_groups: int):
        if isinstance(diversity_penalty, bool) or not isinstance(diversity_penalty, (int, float)):
            raise ValueError(f"diversity_penalty must be a number > 0, got {diversity_penalty!r}")
        if not diversity_penalty > 0:
            raise ValueError(f"diversity_penalty must be > 0, got {diversity_penalty!r}")
        if not isinstance(num_beams, int) or num_beams < 2:
            raise ValueError(
                f"diversity_penalty needs beam search: num_beams must be >= 2, got {num_beams!r}"
            )
        if not isinstance(num_beam_groups, int) or not 2 <= num_beam_groups <= num_beams:
            raise ValueError(
                f"diversity_penalty needs num_beam_groups in [2, num_beams={num_beams}], got {num_beam_groups!r}"
            )
        self.diversity_penalty = float(diversity_penalty)
        self.num_beams = num_beams
        self.group_size = num_beams // num_beam_groups

    def __call__(
        self,
        input_ids: torch.LongTensor,
        scores: torch.FloatTensor,
        current_tokens: torch.LongTensor | None = None,
        beam_group_idx: int = 0,
    ) -> torch.FloatTensor:
        start = beam_group_idx * self.group_size
        if current_tokens is None or start == 0:
            return scores
        B = current_tokens.shape[0] // self.num_beams
        earlier = current_tokens.view(B, self.num_beams)[:, :start]  # (B, start)
        counts = torch.zeros((B, scores.shape[-1]), dtype=scores.dtype, device=scores.device)
        counts.scatter_add_(1, earlier.to(scores.device), torch.ones_like(earlier, dtype=scores.dtype))
        penalty = (self.diversity_penalty * counts).repeat_interleave(scores.shape[0] // B, dim=0)
        return scores - penalty


# --- watermarking -----------------------------------------------------------------------------------------


class WatermarkLogitsProcessor(LogitsProcessor):
    """Kirchenbauer et al. (2023)'s watermark: add `bias` to a "green list" of greenlist_ratio * V tokens,
    drawn afresh each step from a generator seeded by the previous token (lefthash) or, for each of the 40
    best candidates, by the context and the candidate itself (selfhash). A detector that knows the key
    counts green tokens. Same draws as transformers' processor (torch.randperm under the same seeds).
    """

    TABLE_SIZE = 1_000_003

    def __init__(
        self,
        vocab_size: int | None,
        device: torch.device | str | None = None,
        greenlist_ratio: float = 0.25,
        bias: float = 2.0,
        hashing_key: int = 15485863,
        seeding_scheme: str = "lefthash",
        context_width: int = 1,
    ):
        if seeding_scheme not in ("lefthash", "selfhash"):
            raise ValueError(f"seeding_scheme must be 'lefthash' or 'selfhash', got {seeding_scheme!r}")
        if not 0.0 < greenlist_ratio < 1.0:
            raise ValueError(f"greenlist_ratio must be in (0, 1), got {greenlist_ratio!r}")
        if isinstance(context_width, bool) or not isinstance(context_width, int) or context_width < 1:
            raise ValueError(f"context_width must be an integer >= 1, got {context_width!r}")
        self.vocab_size = vocab_size
        self.greenlist_ratio = greenlist_ratio
        self.bias = bias
        self.hashing_key = hashing_key
        self.seeding_scheme = seeding_scheme
        self.context_width = context_width
        self._device = device
        self._rng: torch.Generator | None = None
        self._table: torch.Tensor | None = None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._rng is None:
            self._rng = torch.Generator(device=self._device if self._device is not None else device)
            if self.seeding_scheme == "selfhash":  # the hash table that scheme reads (a fixed permutation)
                self._rng.manual_seed(self.hashing_key)
                self._table = torch.randperm(self.TABLE_SIZE, generator=self._rng, device=self._rng.device)
        return self._rng

    def _greenlist(self, context: torch.Tensor, vocab: int) -> torch.Tensor:
        """The green token ids (greenlist_ratio * V,) after `context` (t,), the row's last tokens."""
        rng = self._generator(context.device)
        context = context[-self.context_width :]
        if self.seeding_scheme == "selfhash":
            a = self._table[context % self.TABLE_SIZE] + 1
            b = self._table[context[-1] % self.TABLE_SIZE] + 1
            seed = int((self.hashing_key * a * b).min())
        else:
            seed = self.hashing_key * int(context[-1])
        rng.manual_seed(seed % (2**64 - 1))
        return torch.randperm(vocab, device=context.device, generator=rng)[
            : int(vocab * self.greenlist_ratio)
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[-1] < self.context_width:
            logger.warning(
                "watermarking needs %d tokens of context but has %d; this step is not watermarked",
                self.context_width,
                input_ids.shape[-1],
            )
            return scores
        vocab = self.vocab_size if self.vocab_size is not None else scores.shape[-1]
        out = scores.clone()
        for row, seq in enumerate(input_ids):
            if self.seeding_scheme == "selfhash":
                # a candidate is green when it is in the green list seeded by itself (40 best candidates)
                best = scores[row].sort(dim=-1, descending=True)[1]
                green = [
                    c
                    for c in best[:40]
                    if bool((self._greenlist(torch.cat([seq, c[None]]), vocab) == c).any())
                ]
                ids = torch.stack(green) if green else best[:0]
            else:
                ids = self._greenlist(seq, vocab)
            out[row, ids] = out[row, ids] + self.bias
        return out


# --- assembling the list ----------------------------------------------------------------------------------


def build_processors(
    generation_config: GenerationConfig,
    prompt_length: int,
    *,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logits_processor: Iterable[LogitsProcessor] | None = None,
    vocab_size: int | None = None,
    device: torch.device | str | None = None,
) -> LogitsProcessorList:
    """The processors generate() applies for `generation_config`, in transformers 4.57's order.

    prompt_length is T of the (padded) prompt: max_new_tokens / min_new_tokens count from there, and the
    presence / frequency penalties count only tokens after it. A max_length that already counts the prompt
    is used as it is. Custom `logits_processor`s replace a built-in one of the same type, else follow the
    built-in processors and precede the sampling warpers (as transformers). Warpers (temperature, top-k,
    top-p, min-p, typical-p, epsilon, eta) are added only when do_sample=True. vocab_size (the model's) sizes
    the watermark's green list; None reads it from the scores.

    >>> from gpt2kit.generation import GenerationConfig
    >>> cfg = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, eos_token_id=50256)
    >>> [type(p).__name__ for p in build_processors(cfg, prompt_length=5)]
    ['TemperatureLogitsWarper', 'TopKLogitsWarper', 'TopPLogitsWarper']
    """
    cfg = generation_config
    eos = None if cfg.eos_token_id is None else _ids_tensor(cfg.eos_token_id)
    # generate() turns the *_new_tokens settings into absolute lengths before building the list.
    max_length = cfg.max_length if cfg.max_new_tokens is None else prompt_length + cfg.max_new_tokens
    min_length = cfg.min_length if cfg.min_new_tokens is None else prompt_length + cfg.min_new_tokens

    procs = LogitsProcessorList()
    if cfg.sequence_bias is not None:
        procs.append(SequenceBiasLogitsProcessor(cfg.sequence_bias))
    if cfg.diversity_penalty is not None and cfg.diversity_penalty > 0.0:
        # group beam search, at transformers 4.55's place (4.56+ moved that strategy to the Hub)
        procs.append(
            HammingDiversityLogitsProcessor(cfg.diversity_penalty, cfg.num_beams, cfg.num_beam_groups)
        )
    if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    if presence_penalty or frequency_penalty:  # not in transformers: OpenAI's API, next to the other penalty
        procs.append(
            PresenceFrequencyPenaltyLogitsProcessor(presence_penalty, frequency_penalty, prompt_length)
        )
    if cfg.no_repeat_ngram_size is not None and cfg.no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGramLogitsProcessor(cfg.no_repeat_ngram_size))
    if cfg.bad_words_ids is not None:
        procs.append(NoBadWordsLogitsProcessor(cfg.bad_words_ids, eos))
    if eos is not None and min_length is not None and min_length > 0:
        procs.append(MinLengthLogitsProcessor(min_length, eos))
    if eos is not None and cfg.min_new_tokens is not None and cfg.min_new_tokens > 0:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_length, cfg.min_new_tokens, eos))
    if cfg.forced_eos_token_id is not None:
        procs.append(ForcedEOSTokenLogitsProcessor(max_length, cfg.forced_eos_token_id))
    if cfg.remove_invalid_values is True:
        procs.append(InfNanRemoveLogitsProcessor())
    if cfg.exponential_decay_length_penalty is not None:
        procs.append(ExponentialDecayLengthPenalty(cfg.exponential_decay_length_penalty, eos, prompt_length))
    if cfg.suppress_tokens is not None:
        procs.append(SuppressTokensLogitsProcessor(cfg.suppress_tokens))
    if cfg.begin_suppress_tokens is not None:
        procs.append(SuppressTokensAtBeginLogitsProcessor(cfg.begin_suppress_tokens, prompt_length))
    procs = _merge(procs, list(logits_processor or []))

    if cfg.do_sample:
        # Beam sampling must keep a non-eos candidate per beam alive, so keep (number of eos ids + 1).
        keep = 1 if cfg.num_beams <= 1 else (len(eos) + 1 if eos is not None else 2)
        if cfg.temperature is not None and cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k is not None and cfg.top_k != 0:
            procs.append(TopKLogitsWarper(cfg.top_k, min_tokens_to_keep=keep))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(cfg.top_p, min_tokens_to_keep=keep))
        if cfg.min_p is not None:
            procs.append(MinPLogitsWarper(cfg.min_p, min_tokens_to_keep=keep))
        if cfg.typical_p is not None and cfg.typical_p < 1.0:
            procs.append(TypicalLogitsWarper(cfg.typical_p, min_tokens_to_keep=keep))
        if cfg.epsilon_cutoff is not None and 0.0 < cfg.epsilon_cutoff < 1.0:
            procs.append(EpsilonLogitsWarper(cfg.epsilon_cutoff, min_tokens_to_keep=keep))
        if cfg.eta_cutoff is not None and 0.0 < cfg.eta_cutoff < 1.0:
            procs.append(EtaLogitsWarper(cfg.eta_cutoff, min_tokens_to_keep=keep))
    if cfg.watermarking_config is not None:  # after every other change to the scores (transformers #34630)
        procs.append(cfg.watermarking_config.construct_processor(vocab_size, device))
    if cfg.renormalize_logits is True:
        procs.append(LogitNormalization())  # last, so what comes out are log-probabilities
    return procs


def _merge(built: list[LogitsProcessor], custom: list[LogitsProcessor]) -> LogitsProcessorList:
    """A custom processor takes the place of a built-in one of the same type; the others go after."""
    merged = LogitsProcessorList()
    for proc in built:
        replacement = next((c for c in custom if type(c) is type(proc)), None)
        merged.append(replacement if replacement is not None else proc)
    merged.extend(c for c in custom if not any(c is m for m in merged))
    return merged
