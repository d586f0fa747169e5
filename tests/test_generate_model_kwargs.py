"""generate(**model_kwargs): forward inputs (token_type_ids, position_ids, head_mask, cross-attention inputs)
pass through to the model as in transformers 4.57's generate, with exactly its tokens; anything else is a
TypeError naming it."""

from __future__ import annotations

import pytest
import torch

import gpt2kit
from hf_oracle import hf_model


def _pair(tmp_path_factory, seed: int, **config):
    hf = hf_model("GPT2LMHeadModel", seed=seed, **config)
    folder = tmp_path_factory.mktemp("gen-kwargs")
    hf.save_pretrained(folder)
    return hf, gpt2kit.GPT2LMHeadModel.from_pretrained(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _pair(tmp_path_factory, seed=7)


@pytest.fixture(scope="module")
def cross_models(tmp_path_factory):
    return _pair(tmp_path_factory, seed=3, add_cross_attention=True)


def inputs(B=3, T=7, seed=0):
    """Left-padded prompts (B, T) with their mask, token types and arbitrary position ids."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 99, (B, T), generator=g)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    mask[1, :1] = 0
    x = x.masked_fill(mask == 0, 0)
    token_types = torch.randint(0, 99, (B, T), generator=g)
    positions = torch.randint(0, 50, (B, T), generator=g)
    return x, mask, token_types, positions


def both(models, x, **kw):
    hf, ours = models
    with torch.no_grad():
        a = hf.generate(x, pad_token_id=0, **kw)
    b = ours.generate(x, pad_token_id=0, **kw)
    return a, b


STRATEGIES = [
    dict(max_new_tokens=10),
    dict(max_new_tokens=10, num_beams=3),
    dict(max_new_tokens=8, num_beams=4, num_return_sequences=2, length_penalty=0.5),
    dict(max_new_tokens=10, repetition_penalty=1.3, no_repeat_ngram_size=2),
]
FORWARD_INPUTS = ["token_type_ids", "position_ids", "token_type_ids+position_ids"]


@pytest.mark.parametrize("padded", [True, False], ids=["left-padded", "unpadded"])
@pytest.mark.parametrize("names", FORWARD_INPUTS)
@pytest.mark.parametrize("kw", STRATEGIES, ids=["greedy", "beam", "beam-return2", "processors"])
def test_token_types_and_positions_match_transformers(models, kw, names, padded):
    x, mask, token_types, positions = inputs()
    given = {"token_type_ids": token_types, "position_ids": positions}
    forward = {name: given[name] for name in names.split("+")}
    a, b = both(models, x, attention_mask=mask if padded else None, **forward, **kw)
    assert torch.equal(a, b), (a, b)


def test_token_types_change_the_tokens(models):
    # Guards the comparison above: the inputs reach the model, they are not silently dropped.
    x, mask, token_types, positions = inputs()
    _, ours = models
    plain = ours.generate(x, attention_mask=mask, max_new_tokens=10, pad_token_id=0)
    typed = ours.generate(
        x, attention_mask=mask, token_type_ids=token_types, max_new_tokens=10, pad_token_id=0
    )
    moved = ours.generate(x, attention_mask=mask, position_ids=positions, max_new_tokens=10, pad_token_id=0)
    assert not torch.equal(plain, typed) and not torch.equal(plain, moved)


def test_scores_with_token_types_match_transformers(models):
    hf, ours = models
    x, mask, token_types, _ = inputs()
    kw = dict(
        attention_mask=mask,
        token_type_ids=token_types,
        max_new_tokens=6,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    with torch.no_grad():
        a = hf.generate(x, **kw)
    b = ours.generate(x, **kw)
    assert torch.equal(a.sequences, b.sequences)
    for sa, sb in zip(a.scores, b.scores, strict=True):
        torch.testing.assert_close(sb, sa, atol=1e-4, rtol=1e-4)


def test_position_ids_of_shape_one_row_broadcast(models):
    _, ours = models
    x, mask, _, positions = inputs()
    one = ours.generate(x, position_ids=positions[:1], max_new_tokens=5, pad_token_id=0)
    full = ours.generate(x, position_ids=positions[:1].expand_as(x), max_new_tokens=5, pad_token_id=0)
    assert torch.equal(one, full)


def test_head_mask_matches_transformers(models):
    x, mask, _, _ = inputs()
    head_mask = torch.ones(2, 4)
    head_mask[0, 1], head_mask[1, 3] = 0.0, 0.5
    for hm in (head_mask, head_mask[0]):  # per layer and head, or per head for every layer
        a, b = both(models, x, attention_mask=mask, head_mask=hm, max_new_tokens=8)
        assert torch.equal(a, b)
    # With beams transformers repeats head_mask like a per-row input, which scrambles different per-layer
    # masks; the same mask on every layer survives that, so there both must agree.
    same = head_mask[:1].expand(2, 4)
    a, b = both(models, x, attention_mask=mask, head_mask=same, max_new_tokens=8, num_beams=2)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kw", [dict(max_new_tokens=8), dict(max_new_tokens=8, num_beams=3)], ids=["greedy", "beam"]
)
def test_cross_attention_inputs_match_transformers(cross_models, kw):
    x, mask, token_types, _ = inputs()
    g = torch.Generator().manual_seed(1)
    enc = torch.randn(3, 5, 32, generator=g)
    enc_mask = torch.ones(3, 5, dtype=torch.long)
    enc_mask[2, 3:] = 0
    a, b = both(
        cross_models,
        x,
        attention_mask=mask,
        encoder_hidden_states=enc,
        encoder_attention_mask=enc_mask,
        token_type_ids=token_types,
        **kw,
    )
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kw", [dict(max_new_tokens=8), dict(max_new_tokens=6, num_beams=3)], ids=["greedy", "beam"]
)
def test_traced_step_takes_token_types_and_positions(models, kw):
    """The fixed-shape compiled step (traced by dynamo with backend="eager", no inductor compile time)."""
    _, ours = models
    x, mask, token_types, positions = inputs()
    forward = dict(attention_mask=mask, token_type_ids=token_types, position_ids=positions, pad_token_id=0)
    eager = ours.generate(x, **forward, **kw)
    traced = ours.generate(x, **forward, compile={"backend": "eager"}, **kw)
    assert torch.equal(eager, traced)
    a, _ = both(models, x, **{k: v for k, v in forward.items() if k != "pad_token_id"}, **kw)
    assert torch.equal(a, traced)


def test_truncated_prompt_truncates_its_forward_inputs(models):
    _, ours = models
    g = torch.Generator().manual_seed(2)
    x = torch.randint(1, 99, (2, 60), generator=g)
    token_types = torch.randint(0, 99, (2, 60), generator=g)
    out = ours.generate(
        x, token_type_ids=token_types, max_new_tokens=10, truncate_prompt=True, pad_token_id=0
    )
    want = ours.generate(x[:, -54:], token_type_ids=token_types[:, -54:], max_new_tokens=10, pad_token_id=0)
    assert torch.equal(out, want)


def test_ignored_and_none_forward_arguments_are_accepted_like_transformers(models):
    x, mask, token_types, _ = inputs()
    # transformers drops labels before calling the model; logits_to_keep does not change generate's tokens.
    a, b = both(models, x, attention_mask=mask, labels=x, max_new_tokens=5)
    assert torch.equal(a, b)
    _, ours = models
    plain = ours.generate(x, attention_mask=mask, max_new_tokens=5, pad_token_id=0)
    same = ours.generate(
        x,
        attention_mask=mask,
        max_new_tokens=5,
        pad_token_id=0,
        logits_to_keep=1,
        token_type_ids=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
    )
    assert torch.equal(plain, same)


def test_unknown_and_unsupported_keywords_raise_naming_them(models):
    _, ours = models
    x, mask, token_types, _ = inputs()
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['max_new_token', 'tokentype_ids'\]"):
        ours.generate(x, token_type_ids=token_types, max_new_token=5, tokentype_ids=token_types)
    with pytest.raises(ValueError, match=r"inputs_embeds has shape \(3, 5, 32\) but input_ids \(3, 7\)"):
        ours.generate(x, inputs_embeds=torch.zeros(3, 5, 32))
    with pytest.raises(TypeError, match="past_key_values must be a gpt2kit Cache"):
        ours.generate(x, past_key_values=object())
    with pytest.raises(ValueError, match=r"past_key_values holds 7 positions but input_ids only 7"):
        ours.generate(x, past_key_values=ours(x).past_key_values)
    for name in ("assistant_model", "prompt_lookup_num_tokens"):
        with pytest.raises(ValueError, match=rf"{name}= asks for .* which gpt2kit does not implement"):
            ours.generate(x, **{name: 2})
    with pytest.raises(ValueError, match=r"cache_implementation='offloaded' is not one gpt2kit runs"):
        ours.generate(x, cache_implementation="offloaded")
    with pytest.raises(ValueError, match=r"token_type_ids has shape \(3, 4\) but input_ids \(3, 7\)"):
        ours.generate(x, token_type_ids=token_types[:, :4])
    with pytest.raises(ValueError, match=r"position_ids has shape \(2, 7\)"):
        ours.generate(x, position_ids=token_types[:2])
    with pytest.raises(TypeError, match="token_type_ids must be a tensor"):
        ours.generate(x, token_type_ids=token_types.tolist())
    with pytest.raises(ValueError, match="encoder_attention_mask was passed without encoder_hidden_states"):
        ours.generate(x, encoder_attention_mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"compile= .* no \['head_mask'\]"):
        ours.generate(x, head_mask=torch.ones(2, 4), compile={"backend": "eager"})


@pytest.mark.parametrize("strategy", STRATEGIES[:2], ids=["greedy", "beams"])
def test_inputs_embeds_like_transformers(models, strategy):
    """The prompt's embeddings given with its ids: the prefill reads them, the sequences start with the ids."""
    x, mask, token_types, _ = inputs()
    embeds = models[1].get_input_embeddings()(x).detach() * 1.5  # not the ids' own lookup
    kw = dict(attention_mask=mask, inputs_embeds=embeds, token_type_ids=token_types, **strategy)
    a, b = both(models, x, return_dict_in_generate=True, output_scores=True, **kw)
    assert a.sequences.tolist() == b.sequences.tolist()
    assert (
        b.sequences.tolist()
        != models[1].generate(x, pad_token_id=0, attention_mask=mask, **strategy).tolist()
    )
    for sa, sb in zip(a.scores, b.scores):
        torch.testing.assert_close(sa, sb, atol=1e-4, rtol=1e-4)


def test_continue_from_past_key_values_gives_transformers_tokens(models):
    """past_key_values of one generate() call continue in the next: the same tokens as one longer call."""
    hf, ours = models
    x, mask, _, _ = inputs()
    kw = dict(pad_token_id=0, do_sample=False, return_dict_in_generate=True)
    with torch.no_grad():
        full = hf.generate(x, attention_mask=mask, max_new_tokens=6, **kw).sequences
    part = ours.generate(x, attention_mask=mask, max_new_tokens=4, **kw)
    assert part.past_key_values.get_seq_length() == part.sequences.shape[1] - 1
    grown = torch.cat([mask, torch.ones(3, 4, dtype=mask.dtype)], dim=1)
    cont = ours.generate(
        part.sequences, attention_mask=grown, past_key_values=part.past_key_values, max_new_tokens=2, **kw
    )
    assert cont.sequences.tolist() == full.tolist()


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
@pytest.mark.parametrize("num_beams", [1, 2], ids=["greedy", "beams"])
def test_step_outputs_like_transformers(models, use_cache, num_beams):
    """return_dict_in_generate: per-step attentions, hidden states and logits, and the cache, as transformers'."""
    x, mask, _, _ = inputs()
    kw = dict(
        max_new_tokens=3,
        num_beams=num_beams,
        attention_mask=mask,
        use_cache=use_cache,
        return_dict_in_generate=True,
        output_attentions=True,
        output_hidden_states=True,
        output_logits=True,
    )
    theirs, ours = both(models, x, **kw)
    assert ours.sequences.tolist() == theirs.sequences.tolist()
    for name in ("attentions", "hidden_states"):
        got, want = getattr(ours, name), getattr(theirs, name)
        assert len(got) == len(want)
        for step_got, step_want in zip(got, want):
            assert len(step_got) == len(step_want)
            for a, b in zip(step_got, step_want):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(ours.logits, theirs.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    if not use_cache:
        assert ours.past_key_values is None and theirs.past_key_values is None
        return
    assert type(ours.past_key_values).__name__ == "DynamicCache"
    for layer in range(len(theirs.past_key_values)):
        for kv in range(2):
            torch.testing.assert_close(ours.past_key_values[layer][kv], theirs.past_key_values[layer][kv])
