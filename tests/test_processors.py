"""Logits processors against transformers 4.57's (the oracle): same scores, -inf included, same order."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close
from transformers.generation import logits_process as hf

from gpt2kit.generation import GenerationConfig
from gpt2kit.generation import processors as ours

V = 50  # vocabulary of the random tests
B = 3


def random_scores(
    seed: int, batch: int = B, vocab: int = V, n_inf: int = 5, dtype=torch.float32
) -> torch.Tensor:
    """(batch, vocab) logits with a few -inf entries per row, as after an earlier filter."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, vocab, generator=g) * 3
    for row in range(batch):
        scores[row, torch.randperm(vocab, generator=g)[:n_inf]] = -float("inf")
    return scores.to(dtype)


def random_ids(seed: int, length: int, batch: int = B, high: int = V) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randint(0, high, (batch, length), generator=g)


def check(our_proc, hf_proc, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Same output as transformers, and neither tensor changed in place."""
    ids_before, scores_before = ids.clone(), scores.clone()
    got = our_proc(ids, scores)
    assert_close(scores, scores_before)
    assert torch.equal(ids, ids_before)
    expected = hf_proc(ids.clone(), scores.clone())
    assert_close(got, expected)  # assert_close treats -inf == -inf as equal
    assert got.dtype == scores.dtype and got.shape == scores.shape
    return got


SEEDS = range(8)


# --- warpers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7, 2])
def test_temperature(temperature):
    for seed in SEEDS:
        ids, scores = random_ids(seed, 4), random_scores(seed)
        check(
            ours.TemperatureLogitsWarper(temperature),
            hf.TemperatureLogitsWarper(float(temperature)),
            ids,
            scores,
        )


@pytest.mark.parametrize("top_k, keep", [(1, 1), (5, 1), (5, 8), (V - 1, 1), (V, 1), (V + 10, 1), (1000, 3)])
def test_top_k(top_k, keep):
    for seed in SEEDS:
        ids, scores = random_ids(seed, 4), random_scores(seed)
        got = check(
            ours.TopKLogitsWarper(top_k, min_tokens_to_keep=keep),
            hf.TopKLogitsWarper(top_k, min_tokens_to_keep=keep),
            ids,
            scores,
        )
        if top_k >= V:  # a k past the vocabulary keeps everything
            assert_close(got, scores)


def test_top_k_keeps_ties_with_the_kth():
    scores = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    got = ours.TopKLogitsWarper(2)(torch.zeros(1, 1, dtype=torch.long), scores)
    assert torch.isinf(got).tolist() == [[True, False, False, False, True]]


@pytest.mark.parametrize("top_p", [0.0, 0.1, 0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("keep", [1, 5])
def test_top_p(top_p, keep):
    for seed in SEEDS:
        ids, scores = random_ids(seed, 4), random_scores(seed)
        got = check(
            ours.TopPLogitsWarper(top_p, min_tokens_to_keep=keep),
            hf.TopPLogitsWarper(top_p, min_tokens_to_keep=keep),
            ids,
            scores,
        )
        assert (torch.isfinite(got).sum(-1) >= keep).all()
        if top_p == 1.0:  # nothing finite is dropped
            assert torch.equal(torch.isfinite(got), torch.isfinite(scores))


def test_top_p_drops_a_tail_of_mass_exactly_one_minus_top_p():
    # Probabilities 1/8, 1/8, 1/4, 1/2 are exact in float32: the tail of mass 1/4 = 1 - top_p goes.
    scores = torch.tensor([[0.125, 0.125, 0.25, 0.5]]).log()
    ids = torch.zeros(1, 1, dtype=torch.long)
    got = check(ours.TopPLogitsWarper(0.75), hf.TopPLogitsWarper(0.75), ids, scores)
    assert torch.isfinite(got).tolist() == [[False, False, True, True]]


def gpt2_scores_after_top_k(seed: int, batch: int, top_k: int, ties: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:  # a few distinct values: ties across top-p's cut
        scores = torch.randint(0, 12, (batch, 50257), generator=g).float()
    else:
        scores = torch.randn(batch, 50257, generator=g) * (0.5 + seed % 3)
    return hf.TopKLogitsWarper(top_k)(None, scores)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("top_k", [1, 3, 50, 400])
def test_top_p_after_top_k_is_transformers_bit_for_bit(batch, top_k, monkeypatch):
    """With few finite scores (after top-k) top-p skips sorting the whole row (_after_top_k): the same
    tensor as transformers' sort of all GPT-2's 50257 scores, and no sort; ties across the cut sort."""
    sorts = []
    real_sort = torch.sort
    ids = torch.zeros(batch, 1, dtype=torch.long)
    for seed in range(4):
        for top_p in (0.05, 0.5, 0.9, 0.99):
            for keep in (1, 5):
                scores = gpt2_scores_after_top_k(seed, batch, top_k)
                want = hf.TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(ids, scores.clone())
                monkeypatch.setattr(torch, "sort", lambda *a, **k: sorts.append(1) or real_sort(*a, **k))
                got = ours.TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(ids, scores)
                monkeypatch.setattr(torch, "sort", real_sort)
                assert torch.equal(got, want), (seed, top_p, keep)
    assert not sorts, "the path without the full sort did not run"
    if top_k == 1:
        return
    for seed in range(4):  # ties across the cut: the full sort, whose order among equal scores decides
        scores = gpt2_scores_after_top_k(seed, batch, top_k, ties=True)
        want = hf.TopPLogitsWarper(0.5)(ids, scores.clone())
        monkeypatch.setattr(torch, "sort", lambda *a, **k: sorts.append(1) or real_sort(*a, **k))
        got = ours.TopPLogitsWarper(0.5)(ids, scores)
        monkeypatch.setattr(torch, "sort", real_sort)
        assert torch.equal(got, want)
    assert sorts, "no tie across the cut: the fallback went untested"


def test_top_p_after_top_k_with_nan_is_transformers():
    scores = gpt2_scores_after_top_k(0, 2, 50)
    scores[1, 7] = float("nan")
    ids = torch.zeros(2, 1, dtype=torch.long)
    want = hf.TopPLogitsWarper(0.9)(ids, scores.clone())
    got = ours.TopPLogitsWarper(0.9)(ids, scores)
    assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("keep", [1, 3])
def test_min_p(min_p, keep):
    for seed in SEEDS:
        ids, scores = random_ids(seed, 4), random_scores(seed)
        check(
            ours.MinPLogitsWarper(min_p, min_tokens_to_keep=keep),
            hf.MinPLogitsWarper(min_p, min_tokens_to_keep=keep),
            ids,
            scores,
        )


@pytest.mark.parametrize("mass", [0.05, 0.3, 0.9, 0.99])
@pytest.mark.parametrize("keep", [1, 4])
def test_typical_p(mass, keep):
    for seed in SEEDS:
        ids, scores = random_ids(seed, 4), random_scores(seed)
        check(
            ours.TypicalLogitsWarper(mass, min_tokens_to_keep=keep),
            hf.TypicalLogitsWarper(mass, min_tokens_to_keep=keep),
            ids,
            scores,
        )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    vocab=st.integers(2, 80),
    n_inf=st.integers(0, 1),
    top_k=st.integers(1, 100),
    top_p=st.floats(0.0, 1.0),
    min_p=st.floats(0.0, 1.0),
    mass=st.floats(0.01, 0.99),
    keep=st.integers(1, 4),
    scale=st.sampled_from([0.01, 1.0, 30.0]),  # nearly flat to nearly one-hot distributions
)
def test_warpers_property(seed, vocab, n_inf, top_k, top_p, min_p, mass, keep, scale):
    scores = random_scores(seed, vocab=vocab, n_inf=n_inf * (vocab // 3)) * scale
    ids = random_ids(seed, 3, high=vocab)
    pairs = [
        (
            ours.TopKLogitsWarper(top_k, min_tokens_to_keep=keep),
            hf.TopKLogitsWarper(top_k, min_tokens_to_keep=keep),
        ),
        (
            ours.TopPLogitsWarper(top_p, min_tokens_to_keep=keep),
            hf.TopPLogitsWarper(top_p, min_tokens_to_keep=keep),
        ),
        (
            ours.MinPLogitsWarper(min_p, min_tokens_to_keep=keep),
            hf.MinPLogitsWarper(min_p, min_tokens_to_keep=keep),
        ),
        (
            ours.TypicalLogitsWarper(mass, min_tokens_to_keep=keep),
            hf.TypicalLogitsWarper(mass, min_tokens_to_keep=keep),
        ),
    ]
    for our_proc, hf_proc in pairs:
        check(our_proc, hf_proc, ids, scores)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores(dtype):
    ids, scores = random_ids(0, 6), random_scores(0, dtype=dtype)
    check(ours.TopPLogitsWarper(0.8), hf.TopPLogitsWarper(0.8), ids, scores)
    check(ours.TopKLogitsWarper(7), hf.TopKLogitsWarper(7), ids, scores)
    check(ours.RepetitionPenaltyLogitsProcessor(1.5), hf.RepetitionPenaltyLogitsProcessor(1.5), ids, scores)


# --- processors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2])
def test_repetition_penalty(penalty):
    for seed in SEEDS:
        ids, scores = random_ids(seed, 12), random_scores(seed)
        check(
            ours.RepetitionPenaltyLogitsProcessor(penalty),
            hf.RepetitionPenaltyLogitsProcessor(float(penalty)),
            ids,
            scores,
        )


@pytest.mark.parametrize("ngram", [1, 2, 3, 4])
@pytest.mark.parametrize("length", [1, 2, 3, 6, 20])
def test_no_repeat_ngram(ngram, length):
    for seed in SEEDS:
        # Few distinct ids, so n-grams do repeat.
        ids, scores = random_ids(seed, length, high=4), random_scores(seed)
        check(ours.NoRepeatNGramLogitsProcessor(ngram), hf.NoRepeatNGramLogitsProcessor(ngram), ids, scores)


def test_no_repeat_ngram_example():
    ids = torch.tensor([[5, 6, 7, 5, 6]])  # "5 6" was followed by 7, so 7 is banned next
    got = ours.NoRepeatNGramLogitsProcessor(3)(ids, torch.zeros(1, 10))
    assert torch.isinf(got).nonzero()[:, 1].tolist() == [7]


BAD_WORDS = [
    [[3]],
    [[3], [7], [49]],
    [[1, 2]],  # banned: 2 after 1
    [[1, 2, 3], [4, 4], [0]],
    [[9, 9, 9, 9, 9, 9, 9, 9, 9, 9]],  # longer than the context
]


@pytest.mark.parametrize("bad_words", BAD_WORDS)
@pytest.mark.parametrize("eos", [None, 3, [0, 3]])
@pytest.mark.parametrize("length", [1, 2, 6])  # short contexts: a sequence longer than them is skipped
def test_bad_words(bad_words, eos, length):
    for seed in SEEDS:
        ids, scores = random_ids(seed, length, high=5), random_scores(seed)
        # Rows that end in every multi-token prefix, so the multi-token bans do fire.
        ids[0, -2:] = torch.tensor([1, 2])[-length:]
        ids[1, -1] = 1
        ids[2, -1] = 4
        check(
            ours.NoBadWordsLogitsProcessor(copy.deepcopy(bad_words), eos),
            hf.NoBadWordsLogitsProcessor(copy.deepcopy(bad_words), eos),
            ids,
            scores,
        )


def test_bad_words_multi_token_example():
    proc = ours.NoBadWordsLogitsProcessor([[1, 2], [5]], eos_token_id=5)  # [5] is eos: not banned
    got = proc(torch.tensor([[0, 1], [1, 0]]), torch.zeros(2, 6))
    assert torch.isinf(got).nonzero().tolist() == [[0, 2]]


def test_bad_words_outside_vocab_raise():
    with pytest.raises(ValueError, match=r"ids \[60\] outside the vocabulary of size 50"):
        ours.NoBadWordsLogitsProcessor([[60]])(random_ids(0, 3), random_scores(0))


@pytest.mark.parametrize("min_length", [0, 5, 6, 7, 20])
@pytest.mark.parametrize("eos", [3, [3, 8]])
def test_min_length(min_length, eos):
    ids, scores = random_ids(0, 6), random_scores(0)
    check(
        ours.MinLengthLogitsProcessor(min_length, eos),
        hf.MinLengthLogitsProcessor(min_length, eos),
        ids,
        scores,
    )


@pytest.mark.parametrize("prompt_length, min_new", [(6, 0), (6, 1), (4, 2), (4, 3), (0, 6), (0, 7)])
@pytest.mark.parametrize("eos", [3, [3, 8]])
def test_min_new_tokens(prompt_length, min_new, eos):
    ids, scores = random_ids(0, 6), random_scores(0)
    check(
        ours.MinNewTokensLengthLogitsProcessor(prompt_length, min_new, eos),
        hf.MinNewTokensLengthLogitsProcessor(prompt_length, min_new, eos),
        ids,
        scores,
    )


@pytest.mark.parametrize("max_length", [6, 7, 8])
@pytest.mark.parametrize("eos", [3, [3, 8]])
def test_forced_eos(max_length, eos):
    ids, scores = random_ids(0, 6), random_scores(0)
    got = check(
        ours.ForcedEOSTokenLogitsProcessor(max_length, eos),
        hf.ForcedEOSTokenLogitsProcessor(max_length, eos),
        ids,
        scores,
    )
    if max_length == 7:  # the last free position: only eos is allowed
        assert torch.isfinite(got).nonzero()[:, 1].unique().tolist() == (
            [eos] if isinstance(eos, int) else eos
        )


@pytest.mark.parametrize("tokens", [[0], [1, 2, 49], [3, 70]])  # 70 is outside the vocabulary: ignored
def test_suppress_tokens(tokens):
    ids, scores = random_ids(0, 6), random_scores(0)
    check(ours.SuppressTokensLogitsProcessor(tokens), hf.SuppressTokensLogitsProcessor(tokens), ids, scores)


@pytest.mark.parametrize("begin_index", [5, 6, 7])
def test_begin_suppress_tokens(begin_index):
    ids, scores = random_ids(0, 6), random_scores(0)
    check(
        ours.SuppressTokensAtBeginLogitsProcessor([1, 4], begin_index),
        hf.SuppressTokensAtBeginLogitsProcessor([1, 4], begin_index),
        ids,
        scores,
    )


def test_logit_normalization():
    ids, scores = random_ids(0, 6), random_scores(0)
    check(ours.LogitNormalization(), hf.LogitNormalization(), ids, scores)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_inf_nan_remove(dtype):
    """remove_invalid_values=True: nan -> 0, +inf -> the dtype's max, -inf -> its min, as transformers."""
    ids, scores = random_ids(0, 6), random_scores(0, dtype=dtype)
    scores[0, 1], scores[1, 2], scores[2, 3] = float("nan"), float("inf"), float("nan")
    before = scores.clone()
    got = ours.InfNanRemoveLogitsProcessor()(ids, scores)
    assert_close(scores, before, equal_nan=True)  # not changed in place
    assert_close(got, hf.InfNanRemoveLogitsProcessor()(ids, scores.clone()))
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert got[0, 1] == 0 and got[1, 2] == torch.finfo(dtype).max


# --- presence / frequency penalties (OpenAI's definition is the oracle) ------------------------------------


def reference_penalties(ids, scores, presence, frequency, prompt_length):
    out = scores.clone()
    for row in range(ids.shape[0]):
        generated = ids[row, prompt_length:].tolist()
        for token in set(generated):
            out[row, token] -= presence + frequency * generated.count(token)
    return out


@pytest.mark.parametrize(
    "presence, frequency", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.7), (1.2, 0.3), (-0.5, -0.2)]
)
@pytest.mark.parametrize("prompt_length", [0, 4, 10])
def test_presence_frequency_penalty(presence, frequency, prompt_length):
    for seed in SEEDS:
        ids, scores = random_ids(seed, 10, high=6), random_scores(seed)
        before = scores.clone()
        got = ours.PresenceFrequencyPenaltyLogitsProcessor(presence, frequency, prompt_length)(ids, scores)
        assert_close(got, reference_penalties(ids, scores, presence, frequency, prompt_length))
        assert_close(scores, before)


def test_presence_frequency_ignore_the_prompt():
    ids = torch.tensor([[7, 7, 7, 2, 2, 5]])
    got = ours.PresenceFrequencyPenaltyLogitsProcessor(1.0, 0.5, prompt_length=3)(ids, torch.zeros(1, 8))
    assert got[0].tolist() == [0, 0, -2.0, 0, 0, -1.5, 0, 0]  # 7 is only in the prompt


# --- constructor errors name the value --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ours.TemperatureLogitsWarper(0.0), "temperature must be > 0, got 0.0; for greedy"),
        (lambda: ours.TopKLogitsWarper(0), "top_k must be a positive integer, got 0"),
        (
            lambda: ours.TopKLogitsWarper(5, min_tokens_to_keep=0),
            "min_tokens_to_keep must be an integer >= 1, got 0",
        ),
        (lambda: ours.TopPLogitsWarper(1.1), r"top_p must be in \[0, 1\], got 1.1"),
        (lambda: ours.MinPLogitsWarper(-0.1), r"min_p must be in \[0, 1\], got -0.1"),
        (lambda: ours.TypicalLogitsWarper(1.0), r"typical_p must be in \(0, 1\), got 1.0"),
        (lambda: ours.RepetitionPenaltyLogitsProcessor(-1), "repetition_penalty must be > 0, got -1"),
        (
            lambda: ours.NoRepeatNGramLogitsProcessor(0),
            "no_repeat_ngram_size must be a positive integer, got 0",
        ),
        (lambda: ours.NoBadWordsLogitsProcessor([[]]), "bad_words_ids must be a non-empty list"),
        (lambda: ours.MinLengthLogitsProcessor(-1, 0), "min_length must be an integer >= 0, got -1"),
        (
            lambda: ours.ForcedEOSTokenLogitsProcessor(10, -1),
            r"forced_eos_token_id must be token ids >= 0, got \[-1\]",
        ),
        (
            lambda: ours.PresenceFrequencyPenaltyLogitsProcessor(float("nan")),
            "presence_penalty must be a finite number",
        ),
    ],
)
def test_constructor_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --- build_processors: the list and order of transformers' _get_logits_processor --------------------------


@pytest.fixture(scope="module")
def hf_model():
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=V, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval()


def hf_processors(model, gen_kwargs: dict, prompt: torch.Tensor, custom=()):
    """What transformers' generate() builds, after the same length/special-token preparation it does."""
    cfg = transformers.GenerationConfig(**copy.deepcopy(gen_kwargs))
    model._prepare_special_tokens(cfg, kwargs_has_attention_mask=True, device="cpu")
    # has_default_max_length=False: a max_length in the config is absolute, as build_processors reads it.
    model._prepare_generated_length(
        cfg, False, "min_length" not in gen_kwargs, "input_ids", prompt.shape[1], prompt
    )
    return model._get_logits_processor(
        generation_config=cfg,
        input_ids_seq_length=prompt.shape[1],
        encoder_input_ids=prompt,
        logits_processor=transformers.LogitsProcessorList(custom),
        device="cpu",
    )


CONFIGS = [
    dict(),
    dict(eos_token_id=3),
    dict(do_sample=True),
    dict(do_sample=True, temperature=0.7, top_k=10, top_p=0.9, min_p=0.05, typical_p=0.95, eos_token_id=3),
    dict(do_sample=True, top_k=0, top_p=0.5, num_beams=3, eos_token_id=[3, 4]),  # min_tokens_to_keep = 3
    dict(do_sample=True, top_k=5, num_beams=2),  # beams without eos: keep 2
    dict(repetition_penalty=1.2, no_repeat_ngram_size=2, bad_words_ids=[[1], [2, 5], [3]], eos_token_id=3),
    dict(min_length=8, min_new_tokens=2, eos_token_id=[3, 4], max_new_tokens=4, forced_eos_token_id=3),
    dict(
        forced_eos_token_id=3, remove_invalid_values=True, suppress_tokens=[7], eos_token_id=3, max_length=9
    ),
    dict(
        max_length=9,
        forced_eos_token_id=[3, 4],
        suppress_tokens=[7, 8],
        begin_suppress_tokens=[3, 9],
        eos_token_id=3,
    ),
    dict(
        do_sample=True,
        temperature=1.5,
        renormalize_logits=True,
        repetition_penalty=0.8,
        min_new_tokens=1,
        eos_token_id=3,
    ),
]


@pytest.mark.parametrize("gen_kwargs", CONFIGS, ids=lambda k: ",".join(k)[:50] or "default")
def test_build_processors_matches_transformers(hf_model, gen_kwargs):
    prompt = random_ids(0, 6, batch=2)
    mine = ours.build_processors(GenerationConfig(**copy.deepcopy(gen_kwargs)), prompt_length=prompt.shape[1])
    theirs = hf_processors(hf_model, gen_kwargs, prompt)
    assert [type(p).__name__ for p in mine] == [type(p).__name__ for p in theirs]
    # Step through a few decode positions so length-dependent processors switch on and off.
    for step in range(4):
        ids = torch.cat([prompt, random_ids(step, step, batch=2)], dim=1)
        scores = random_scores(step, batch=2)
        assert_close(mine(ids, scores), theirs(ids, scores.clone()))


def test_custom_processors_merge_like_transformers(hf_model):
    prompt = random_ids(0, 5, batch=2)
    gen_kwargs = dict(do_sample=True, top_k=10, repetition_penalty=1.3, eos_token_id=3)
    mine = ours.build_processors(
        GenerationConfig(**gen_kwargs),
        prompt.shape[1],
        logits_processor=[
            ours.RepetitionPenaltyLogitsProcessor(3.0),
            ours.SuppressTokensLogitsProcessor([1]),
        ],
    )
    theirs = hf_processors(
        hf_model,
        gen_kwargs,
        prompt,
        custom=[hf.RepetitionPenaltyLogitsProcessor(3.0), hf.SuppressTokensLogitsProcessor([1])],
    )
    assert [type(p).__name__ for p in mine] == [type(p).__name__ for p in theirs]
    assert mine[0].penalty == 3.0  # the custom one replaced the built-in one in its place
    scores = random_scores(1, batch=2)
    assert_close(mine(prompt, scores), theirs(prompt, scores.clone()))


def test_presence_frequency_sit_after_repetition_penalty():
    cfg = GenerationConfig(repetition_penalty=1.1, no_repeat_ngram_size=2, do_sample=True, top_k=0)
    names = [
        type(p).__name__ for p in ours.build_processors(cfg, 4, presence_penalty=0.5, frequency_penalty=0.1)
    ]
    assert names == [
        "RepetitionPenaltyLogitsProcessor",
        "PresenceFrequencyPenaltyLogitsProcessor",
        "NoRepeatNGramLogitsProcessor",
    ]
    proc = ours.build_processors(GenerationConfig(), 4, frequency_penalty=0.1)[0]
    assert proc.prompt_length == 4


def test_greedy_ignores_warpers():
    cfg = GenerationConfig(temperature=0.5, top_p=0.5, top_k=3)  # do_sample=False (logs a warning)
    assert list(ours.build_processors(cfg, prompt_length=3)) == []
