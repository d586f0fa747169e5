"""Embeddings-only prompts: generate(inputs_embeds=...) without input_ids returns transformers 4.57's new
tokens (its lengths: max_length counts the embedded prompt, min_length too), with padding, processors that
read the ids, beam search, sampling, and a static cache of max_length - 1 positions."""

from __future__ import annotations

import pytest
import torch

import gpt2kit
from hf_oracle import hf_model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = hf_model("GPT2LMHeadModel", seed=2)
    folder = tmp_path_factory.mktemp("embeds")
    hf.save_pretrained(folder)
    return hf, gpt2kit.GPT2LMHeadModel.from_pretrained(folder)


def prompt():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 99, (2, 6), generator=g)
    mask = torch.ones_like(x)
    mask[0, :2] = 0
    return x, mask


CASES = {
    "max_new_tokens": dict(max_new_tokens=5),
    "max_length": dict(max_length=12),
    "default_length": dict(),
    "beam": dict(max_new_tokens=6, num_beams=3, num_return_sequences=2),
    "ids_processors": dict(max_new_tokens=6, repetition_penalty=1.5, no_repeat_ngram_size=2),
    "min_length": dict(max_length=14, min_length=10, eos_token_id=40),
    "sample": dict(max_new_tokens=6, do_sample=True, top_k=10),
}


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_embeddings_only_prompt_matches_transformers(pair, case, padded):
    hf, ours = pair
    x, mask = prompt()
    embeds = hf.transformer.wte(x).detach()
    kw = {"pad_token_id": 0, "eos_token_id": -1, **CASES[case]}
    if padded:
        kw["attention_mask"] = mask
    torch.manual_seed(0)
    want = hf.generate(inputs_embeds=embeds, **kw)
    torch.manual_seed(0)
    got = ours.generate(inputs_embeds=embeds, **kw)
    assert got.tolist() == want.tolist()  # the new tokens alone


def test_embeddings_only_prompt_with_a_static_cache(pair):
    hf, ours = pair
    x, mask = prompt()
    embeds = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(1))
    kw = dict(
        inputs_embeds=embeds, attention_mask=mask, max_length=12, cache_implementation="static",
        return_dict_in_generate=True, output_scores=True, pad_token_id=0, eos_token_id=-1,
    )  # fmt: skip
    want, got = hf.generate(**kw), ours.generate(**kw)
    assert got.sequences.tolist() == want.sequences.tolist()
    assert type(got.past_key_values).__name__ == "StaticCache"
    assert got.past_key_values[0][0].shape == (2, 4, 11, 8)  # max_length - 1 positions, as transformers
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_embeddings_only_prompt_refuses_what_it_cannot_run(pair):
    _, ours = pair
    embeds = torch.randn(1, 4, 32)
    with pytest.raises(ValueError, match="pass the prompt's input_ids too"):
        ours.generate(inputs_embeds=embeds, prompt_lookup_num_tokens=2, max_new_tokens=3)
    with pytest.raises(ValueError, match="batch, length, n_embd"):
        ours.generate(inputs_embeds=torch.randn(4, 32), max_new_tokens=3)
