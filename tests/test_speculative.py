"""Prompt lookup and assisted decoding: exactly plain greedy's tokens (and transformers 4.57's prompt lookup
tokens), proposals accepted on repetitive text, and clear errors for what they do not run."""

from __future__ import annotations

import copy

import pytest
import torch

import gpt2kit
from gpt2kit.generation.search import lookup_candidates
from hf_oracle import hf_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf = hf_model("GPT2LMHeadModel", seed=3)
    folder = tmp_path_factory.mktemp("spec")
    hf.save_pretrained(folder)
    return hf, gpt2kit.GPT2LMHeadModel.from_pretrained(folder)


@pytest.fixture(scope="module")
def demo():
    model = gpt2kit.GPT2LMHeadModel.from_pretrained("gpt2kit-demo").eval()
    tok = gpt2kit.AutoTokenizer.from_pretrained("gpt2kit-demo")
    return model, tok


def draft_of(model, n_layer: int):
    """The model's first n_layer blocks with its embeddings and head: a cheap draft that often agrees."""
    draft = copy.deepcopy(model)
    draft.transformer.h = draft.transformer.h[:n_layer]
    draft.config.n_layer = n_layer
    return draft


def tiny_prompt(T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(1, 99, (1, T // 2), generator=g)
    return torch.cat([half, half, half[:, : T - 2 * (T // 2)]], dim=1)  # repeats, so lookups match


def test_lookup_candidates_follow_transformers_rules():
    seq = torch.tensor([5, 6, 7, 8, 9, 5, 6])
    assert lookup_candidates(seq, 3, 2, 10).tolist() == [7, 8, 9]  # the bigram (5, 6) matches at 0
    assert lookup_candidates(seq, 10, 2, 10).tolist() == [7, 8, 9, 5, 6]  # cut at the sequence's end
    assert lookup_candidates(seq, 10, 2, 2).tolist() == [7, 8]  # and at the room left
    assert lookup_candidates(seq, 10, 2, 10, eos=torch.tensor([9])).tolist() == [7, 8]  # before eos
    assert lookup_candidates(torch.tensor([1, 2, 3, 4]), 3, 2, 10).tolist() == []  # no earlier match
    assert lookup_candidates(torch.tensor([1, 2, 3, 2]), 3, 2, 10).tolist() == [3, 2]  # unigram fallback


@pytest.mark.parametrize("N", [1, 3, 10])
@pytest.mark.parametrize("T,new", [(4, 1), (7, 2), (9, 12), (16, 30)])
def test_prompt_lookup_is_greedy_and_transformers(tiny, N, T, new):
    # eos_token_id=-1: never stops, and transformers 4.57's prompt lookup fails on eos_token_id=None
    hf, ours = tiny
    x = tiny_prompt(T, seed=T * 10 + new)
    kw = dict(max_new_tokens=new, pad_token_id=0, eos_token_id=-1)
    greedy = ours.generate(x, **kw)
    lookup = ours.generate(x, prompt_lookup_num_tokens=N, **kw)
    torch.testing.assert_close(lookup, greedy, rtol=0, atol=0)
    with torch.no_grad():
        theirs = hf.generate(x, prompt_lookup_num_tokens=N, **kw)
    torch.testing.assert_close(lookup, theirs, rtol=0, atol=0)


def test_prompt_lookup_with_processors_and_ngram_size(tiny):
    hf, ours = tiny
    x = tiny_prompt(12, seed=1)
    kw = dict(max_new_tokens=20, pad_token_id=0, eos_token_id=-1, repetition_penalty=1.3, min_new_tokens=5)
    for ngram in (1, 3):
        lookup = ours.generate(x, prompt_lookup_num_tokens=4, max_matching_ngram_size=ngram, **kw)
        torch.testing.assert_close(lookup, ours.generate(x, **kw), rtol=0, atol=0)
        with torch.no_grad():
            theirs = hf.generate(x, prompt_lookup_num_tokens=4, max_matching_ngram_size=ngram, **kw)
        torch.testing.assert_close(lookup, theirs, rtol=0, atol=0)


def test_prompt_lookup_stops_at_eos(tiny):
    hf, ours = tiny
    x = tiny_prompt(10, seed=5)
    free = ours.generate(x, max_new_tokens=20, pad_token_id=0, eos_token_id=-1)
    for i in (0, 3, 9):  # a token greedy produces, so that as eos it ends the sequence there
        eos = int(free[0, x.shape[1] + i])
        kw = dict(max_new_tokens=20, pad_token_id=0, eos_token_id=eos)
        greedy = ours.generate(x, **kw)
        assert greedy.shape[1] < free.shape[1] and int(greedy[0, -1]) == eos
        for N in (2, 10):
            lookup = ours.generate(x, prompt_lookup_num_tokens=N, **kw)
            torch.testing.assert_close(lookup, greedy, rtol=0, atol=0)
            with torch.no_grad():
                theirs = hf.generate(x, prompt_lookup_num_tokens=N, **kw)
            torch.testing.assert_close(lookup, theirs, rtol=0, atol=0)


def test_prompt_lookup_returns_scores_and_cache_like_greedy(tiny):
    _, ours = tiny
    x = tiny_prompt(14, seed=2)
    kw = dict(max_new_tokens=10, pad_token_id=0, eos_token_id=-1, return_dict_in_generate=True)
    kw.update(output_scores=True, output_logits=True)
    greedy = ours.generate(x, **kw)
    lookup = ours.generate(x, prompt_lookup_num_tokens=5, **kw)
    torch.testing.assert_close(lookup.sequences, greedy.sequences, rtol=0, atol=0)
    assert len(lookup.scores) == len(greedy.scores) == 10
    for a, b in zip(lookup.scores, greedy.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert lookup.past_key_values.get_seq_length() == greedy.past_key_values.get_seq_length()


def test_demo_model_accepts_lookups_and_matches_greedy(demo):
    model, tok = demo
    texts = [
        "guitar (noun): a",
        "The cat sat on the mat. The cat sat on the mat. The cat",
        "Repeat: a guitar is a musical instrument. Again: a guitar is",
    ]
    for text in texts:
        x = tok([text], return_tensors="pt")["input_ids"]
        for new in (1, 17, 64):
            greedy = model.generate(x, max_new_tokens=new)
            for N in (2, 10):
                out = model.generate(x, max_new_tokens=new, prompt_lookup_num_tokens=N)
                torch.testing.assert_close(out, greedy, rtol=0, atol=0)
    # the demo model's continuation of the first prompt repeats itself: proposals are made and accepted
    from gpt2kit.generation.search import plan_generation, speculative_decode

    x = tok([texts[0]], return_tensors="pt")["input_ids"]
    plan = plan_generation(model, x, None, None, max_new_tokens=40, prompt_lookup_num_tokens=10)
    state: dict = {}
    list(speculative_decode(model, plan, state=state))
    assert state["speculation"]["accepted"] > state["speculation"]["proposed"] / 2


def test_demo_model_matches_transformers_prompt_lookup(demo):
    transformers = pytest.importorskip("transformers")
    from gpt2kit import hub

    model, tok = demo
    theirs = transformers.GPT2LMHeadModel.from_pretrained(hub.BUNDLED_MODELS["gpt2kit-demo"]).eval()
    x = tok(["guitar (noun): a"], return_tensors="pt")["input_ids"]
    kw = dict(max_new_tokens=48, prompt_lookup_num_tokens=10, pad_token_id=model.config.eos_token_id)
    with torch.no_grad():
        expected = theirs.generate(x, attention_mask=torch.ones_like(x), **kw)
    ours = model.generate(x, **kw)
    assert ours.shape[1] == x.shape[1] + 48
    # transformers 4.57 keeps every accepted candidate even past max_new_tokens (here it returns 55 new
    # tokens); gpt2kit stops at max_new_tokens, as plain greedy does: the same tokens up to there
    torch.testing.assert_close(ours, expected[:, : ours.shape[1]], rtol=0, atol=0)


@pytest.mark.parametrize("n_assist", [1, 2, 5, 20])
def test_assisted_decoding_is_greedy(tiny, n_assist):
    hf, ours = tiny
    other = gpt2kit.GPT2LMHeadModel(ours.config).eval()  # a random draft: proposals mostly rejected
    for draft in (ours, draft_of(ours, 1), other):
        draft = copy.deepcopy(draft)
        draft.generation_config.num_assistant_tokens = n_assist
        for T, new in ((3, 1), (8, 9), (15, 25)):
            x = tiny_prompt(T, seed=T)
            kw = dict(max_new_tokens=new, pad_token_id=0, eos_token_id=-1)
            out = ours.generate(x, assistant_model=draft, **kw)
            torch.testing.assert_close(out, ours.generate(x, **kw), rtol=0, atol=0)


def test_assisted_decoding_on_demo_model_stops_at_eos(demo):
    model, tok = demo
    draft = draft_of(model, 1)
    for text in ("Hello", "guitar (noun): a", "The cat sat on the mat. The cat"):
        x = tok([text], return_tensors="pt")["input_ids"]
        for n_assist in (3, 20):
            draft.generation_config.num_assistant_tokens = n_assist
            for new in (1, 40):
                greedy = model.generate(x, max_new_tokens=new)
                out = model.generate(x, max_new_tokens=new, assistant_model=draft)
                torch.testing.assert_close(out, greedy, rtol=0, atol=0)


def test_speculation_refuses_what_it_does_not_run(tiny):
    _, ours = tiny
    x = tiny_prompt(8, seed=0)
    for name, value in (("prompt_lookup_num_tokens", 3), ("assistant_model", ours)):
        with pytest.raises(ValueError, match=rf"{name}= asks for .* for a batch \(2 prompts\)"):
            ours.generate(x.repeat(2, 1), **{name: value})
        with pytest.raises(ValueError, match=rf"{name}= verifies proposals against the cache"):
            ours.generate(x, use_cache=False, **{name: value})
        with pytest.raises(ValueError, match=rf"{name}= does not run with \['position_ids'\]"):
            ours.generate(x, position_ids=torch.arange(8)[None], **{name: value})
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="prompt_lookup_num_tokens must be a positive integer"):
            ours.generate(x, prompt_lookup_num_tokens=bad)
    with pytest.raises(ValueError, match="max_matching_ngram_size must be a positive integer"):
        ours.generate(x, prompt_lookup_num_tokens=2, max_matching_ngram_size=0)
    with pytest.raises(TypeError, match="assistant_model must be a gpt2kit language model"):
        ours.generate(x, assistant_model=object())
    small = gpt2kit.GPT2LMHeadModel(
        gpt2kit.GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=1, n_head=4)
    )
    with pytest.raises(ValueError, match="assistant_model has vocab_size=50 but the model 99"):
        ours.generate(x, assistant_model=small)


def test_beam_search_ignores_prompt_lookup_as_transformers(tiny, caplog):
    hf, ours = tiny
    x = tiny_prompt(8, seed=4)
    kw = dict(max_new_tokens=6, num_beams=3, pad_token_id=0, eos_token_id=-1)
    out = ours.generate(x, prompt_lookup_num_tokens=3, **kw)
    torch.testing.assert_close(out, ours.generate(x, **kw), rtol=0, atol=0)
    assert "ignores it" in caplog.text


def test_stop_strings_and_left_padding_on_demo_model(demo):
    model, tok = demo
    draft = draft_of(model, 1)
    x = tok(["guitar (noun): a"], return_tensors="pt")["input_ids"]
    kw = dict(max_new_tokens=40, stop_strings=["north of the north"], tokenizer=tok)
    greedy = model.generate(x, **kw)
    assert tok.decode(greedy[0]).endswith("north of the north")
    torch.testing.assert_close(model.generate(x, prompt_lookup_num_tokens=10, **kw), greedy, rtol=0, atol=0)
    padded = torch.cat([torch.full((1, 2), 50256), x], dim=1)
    mask = torch.ones_like(padded)
    mask[:, :2] = 0  # left padding
    kw = dict(max_new_tokens=30, attention_mask=mask)
    greedy = model.generate(padded, **kw)
    for extra in (dict(prompt_lookup_num_tokens=10), dict(assistant_model=draft)):
        torch.testing.assert_close(model.generate(padded, **extra, **kw), greedy, rtol=0, atol=0)
