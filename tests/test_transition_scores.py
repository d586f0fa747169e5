"""model.compute_transition_scores against transformers 4.57 for greedy, sampling and beam search."""

from __future__ import annotations

import pytest
import torch

import gpt2kit
from hf_oracle import hf_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf = hf_model("GPT2LMHeadModel", seed=7)
    folder = tmp_path_factory.mktemp("transition")
    hf.save_pretrained(folder)
    return hf, gpt2kit.GPT2LMHeadModel.from_pretrained(folder)


def prompts():
    x = torch.randint(1, 99, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    mask[1, :1] = 0
    return x.masked_fill(mask == 0, 0), mask


CASES = [
    dict(),
    dict(eos_token_id=97, repetition_penalty=1.3),
    dict(do_sample=True, top_k=10, temperature=0.8),
    dict(num_beams=3, num_return_sequences=2, eos_token_id=97),
    dict(num_beams=4, eos_token_id=[97, 72], length_penalty=0.5),
    dict(do_sample=True, num_beams=3, eos_token_id=97),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda k: ",".join(k) or "greedy")
def test_transition_scores_match_transformers(models, kw):
    hf, ours = models
    x, mask = prompts()
    kw = dict(
        max_new_tokens=10,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        **kw,
    )
    torch.manual_seed(1)
    with torch.no_grad():
        a = hf.generate(x, attention_mask=mask, **kw)
    torch.manual_seed(1)
    b = ours.generate(x, attention_mask=mask, **kw)
    assert torch.equal(a.sequences, b.sequences)
    beams_a, beams_b = getattr(a, "beam_indices", None), getattr(b, "beam_indices", None)
    if beams_a is not None:
        assert torch.equal(beams_a, beams_b)
    for normalize in (False, True):
        expected = hf.compute_transition_scores(a.sequences, a.scores, beams_a, normalize)
        got = ours.compute_transition_scores(b.sequences, b.scores, beams_b, normalize)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    expected = hf.compute_transition_scores(a.sequences, a.logits, beams_a, normalize_logits=True)
    got = ours.compute_transition_scores(b.sequences, b.logits, beams_b, normalize_logits=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_beam_scores_sum_to_the_sequence_score(models):
    # transformers' documented use: with length_penalty=0 the transition scores add up to sequences_scores
    _, ours = models
    x, mask = prompts()
    out = ours.generate(
        x,
        attention_mask=mask,
        num_beams=3,
        max_new_tokens=6,
        length_penalty=0.0,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    scores = ours.compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    torch.testing.assert_close(scores.sum(-1), out.sequences_scores, atol=1e-4, rtol=1e-4)


def test_errors(models):
    _, ours = models
    with pytest.raises(ValueError, match="output_scores=True"):
        ours.compute_transition_scores(torch.zeros((1, 3), dtype=torch.long), ())
    out = ours.generate(
        torch.tensor([[1, 2]]),
        num_beams=2,
        num_return_sequences=1,
        max_new_tokens=3,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    with pytest.raises(ValueError, match="beam_indices"):
        ours.compute_transition_scores(out.sequences, out.scores)
