"""Speculative sampling (generate(assistant_model=..., do_sample=True), and prompt lookup with sampling):
transformers 4.57's acceptance rule, checked as a property: every token is distributed as plain sampling's.

Token-for-token equality with transformers under a seed is not a goal: transformers' first round already
speculates (gpt2kit samples the prefill's token on its own first), and its assistant stops a round early
when its confidence drops below assistant_confidence_threshold (adapted during the call when scikit-learn
is installed), so the two draw their random numbers in different orders.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

import gpt2kit
from gpt2kit.generation.search import _speculative_pick
from hf_oracle import hf_model

V = 6


def plan_stub(eos=None):
    return SimpleNamespace(processors=lambda ids, scores: scores, eos=eos, stop_checker=None)


def first_pick_frequencies(p_logits, q_logits, trials: int, draft: bool) -> torch.Tensor:
    """How often each token comes first out of a round with k = q_logits.shape[0] proposals drawn from q."""
    g = torch.Generator().manual_seed(0)
    k = q_logits.shape[0]
    q = q_logits.softmax(-1)
    counts = torch.zeros(V)
    tokens = torch.zeros(1, 3 + k, dtype=torch.long)
    for _ in range(trials):
        cand = torch.stack([torch.multinomial(q[j], 1, generator=g)[0] for j in range(k)])
        q_scores = [q_logits[j : j + 1] for j in range(k)] if draft else None
        picks, scores = _speculative_pick(plan_stub(), tokens, 3, cand, p_logits, q_scores, g)
        assert 1 <= picks.shape[0] <= k + 1 and scores.shape == (picks.shape[0], V)
        counts[picks[0]] += 1
    return counts / trials


@pytest.mark.parametrize("draft", [True, False], ids=["draft", "lookup"])
def test_first_token_is_distributed_as_the_model_says(draft):
    g = torch.Generator().manual_seed(1)
    p_logits = torch.randn(3, V, generator=g) * 1.5  # k = 2 proposals: 3 rows of model logits
    q_logits = torch.randn(2, V, generator=g) * 1.5
    freq = first_pick_frequencies(p_logits, q_logits, trials=2500, draft=draft)
    torch.testing.assert_close(freq, p_logits[0].softmax(-1), rtol=0, atol=0.04)  # 4.5 standard errors


def test_a_draft_equal_to_the_model_is_always_accepted():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, V, generator=g)
    cand = torch.tensor([1, 4])
    picks, _ = _speculative_pick(
        plan_stub(), torch.zeros(1, 5, dtype=torch.long), 3, cand, logits, [logits[0:1], logits[1:2]], g
    )
    assert picks[:2].tolist() == [1, 4] and picks.shape == (3,)  # both kept, then the model's own token
    # a last proposal that is eos ends the sequence: no further draw
    picks, scores = _speculative_pick(
        plan_stub(eos=torch.tensor([4])), torch.zeros(1, 5, dtype=torch.long), 3, cand, logits,
        [logits[0:1], logits[1:2]], g,
    )  # fmt: skip
    assert picks.tolist() == [1, 4] and scores.shape == (2, V)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("specsample")
    hf_model("GPT2LMHeadModel", seed=3).save_pretrained(folder)
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder)
    draft = copy.deepcopy(model)
    draft.transformer.h = draft.transformer.h[:1]
    draft.config.n_layer = 1
    draft.generation_config.num_assistant_tokens = 3
    return model, draft


@pytest.mark.parametrize("helper", ["draft", "same", "lookup"])
def test_sampling_with_proposals_runs_and_is_seeded(tiny, helper):
    model, draft = tiny
    x = torch.randint(1, 99, (1, 6), generator=torch.Generator().manual_seed(4))
    kw = dict(do_sample=True, top_k=20, max_new_tokens=12, eos_token_id=-1, pad_token_id=0)
    kw.update(
        {"draft": dict(assistant_model=draft), "same": dict(assistant_model=model)}.get(
            helper, dict(prompt_lookup_num_tokens=2)
        )
    )
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        out = model.generate(x, return_dict_in_generate=True, output_scores=True, **kw)
        runs.append(out.sequences)
        assert out.sequences.shape == (1, 18) and len(out.scores) == 12
        assert int(out.sequences.max()) < 99 and torch.equal(out.sequences[:, :6], x)
    assert torch.equal(runs[0], runs[1])  # the same seed, the same tokens
    # top_k=1 leaves one token per step: sampling with proposals is then greedy search exactly
    greedy = model.generate(x, do_sample=False, max_new_tokens=12, eos_token_id=-1, pad_token_id=0)
    one = model.generate(x, **{**kw, "top_k": 1})
    assert one.tolist() == greedy.tolist()
