"""torch.export of gpt2kit's models, as of transformers' (the way to ExecuTorch, AOTInductor and other
runtimes): the output records and DynamicCache are pytree nodes, so a forward that returns them (the default
return_dict=True, use_cache=True) or takes a cache exports, runs the same and saves."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.utils._pytree as pytree

import gpt2kit
from gpt2kit.model.cache import DynamicCache

CONFIG = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=64)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return gpt2kit.GPT2LMHeadModel(gpt2kit.GPT2Config(**CONFIG)).eval()


def test_outputs_and_caches_are_pytrees(lm):
    ids = torch.randint(0, 512, (2, 8))
    with torch.no_grad():
        out = lm(ids, output_hidden_states=True)
    leaves, spec = pytree.tree_flatten(out)
    assert all(isinstance(t, torch.Tensor) for t in leaves)
    assert len(leaves) == 1 + 2 * 2 + 3  # logits, a key and a value per layer, 3 hidden states
    back = pytree.tree_unflatten(leaves, spec)
    assert type(back) is type(out) and back.keys() == out.keys() and torch.equal(back.logits, out.logits)
    assert isinstance(back.past_key_values, DynamicCache) and back.past_key_values.get_seq_length() == 8


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_default_forward_exports_and_runs_the_same(lm, use_cache):
    ids = torch.randint(0, 512, (2, 8))
    program = torch.export.export(lm, (ids,), {"use_cache": use_cache})
    got, want = program.module()(ids, use_cache=use_cache), lm(ids, use_cache=use_cache)
    assert type(got) is type(want) and got.keys() == want.keys()
    torch.testing.assert_close(got.logits, want.logits)
    if use_cache:
        for (gk, gv), (wk, wv) in zip(got.past_key_values, want.past_key_values):
            torch.testing.assert_close(gk, wk)
            torch.testing.assert_close(gv, wv)
    saved = io.BytesIO()
    torch.export.save(program, saved)
    saved.seek(0)
    torch.testing.assert_close(
        torch.export.load(saved).module()(ids, use_cache=use_cache).logits, want.logits
    )


def test_a_decode_step_with_a_cache_exports(lm):
    ids, nxt = torch.randint(0, 512, (2, 8)), torch.randint(0, 512, (2, 1))
    with torch.no_grad():
        past = lm(ids).past_key_values
    program = torch.export.export(lm, (nxt,), {"past_key_values": copy.deepcopy(past)})
    got = program.module()(nxt, past_key_values=copy.deepcopy(past))
    want = lm(nxt, past_key_values=copy.deepcopy(past))
    torch.testing.assert_close(got.logits, want.logits)
    assert got.past_key_values.get_seq_length() == 9
    # An exported program is a function: it returns the grown cache and leaves the one passed in as it was
    # (the eager forward appends to it), so a decode loop over the program feeds back what it returns.
    given = copy.deepcopy(past)
    program.module()(nxt, past_key_values=given)
    assert given.get_seq_length() == 8


@pytest.mark.parametrize("cls", ["GPT2Model", "GPT2DoubleHeadsModel", "GPT2ForTokenClassification"])
def test_the_other_heads_export(cls):
    model = getattr(gpt2kit, cls)(gpt2kit.GPT2Config(**CONFIG)).eval()
    ids = torch.randint(0, 512, (2, 8))
    got, want = torch.export.export(model, (ids,)).module()(ids), model(ids)
    assert type(got) is type(want)
    torch.testing.assert_close(got[0], want[0])
