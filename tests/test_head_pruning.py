"""Head pruning: prune_heads() and config.pruned_heads give transformers 4.57's shapes, weights and outputs,
on both attention paths, with caches, in generate() (eager, static-shape and recorded decode steps), through
save / load both ways, and under the int8 and packed weight formats."""

from __future__ import annotations

import pytest
import torch

import gpt2kit
from gpt2kit.generation import traced
from gpt2kit.generation.search import decode_one_token_static
from gpt2kit.model.cache import StaticCache
from gpt2kit.model.packed import pack_weights, packing_available
from gpt2kit.model.quant import dynamic_engines, quantize_int8
from hf_oracle import hf_model

# 3 layers of 4 heads: one layer pruned to a single head, one untouched, one pruned twice.
PRUNE = {0: [0, 2, 3], 2: [1]}
LATER = {2: [3, 1]}  # head 1 of layer 2 is already gone: skipped


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """transformers' model pruned by transformers, saved, and loaded by gpt2kit."""
    hf = hf_model("GPT2LMHeadModel", seed=5, n_layer=3)
    hf.prune_heads(PRUNE)
    hf.prune_heads(LATER)
    folder = tmp_path_factory.mktemp("pruned")
    hf.save_pretrained(folder)
    return hf, gpt2kit.GPT2LMHeadModel.from_pretrained(folder), folder


def prompt(B: int = 2, T: int = 7, padded: bool = False):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 99, (B, T), generator=g)
    mask = torch.ones_like(x)
    if padded:
        mask[0, :3] = 0
    return x.masked_fill(mask == 0, 0), mask


def test_loaded_pruned_checkpoint_has_transformers_shapes(pair):
    hf, ours, _ = pair
    assert ours.config.pruned_heads == {0: [0, 2, 3], 2: [1, 3]}
    assert [b.attn.n_head for b in ours.transformer.h] == [1, 4, 2]
    theirs = hf.state_dict()
    for name, t in ours.state_dict().items():
        assert t.shape == theirs[name].shape, name
    assert ours.transformer.h[0].attn.pruned_heads == hf.transformer.h[0].attn.pruned_heads


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_forward_and_cache_match_transformers(pair, impl):
    hf, ours, _ = pair
    ours.set_attn_implementation(impl)
    x, mask = prompt(padded=True)
    with torch.no_grad():
        want = hf(x, attention_mask=mask, use_cache=True, output_attentions=impl == "eager")
        got = ours(x, attention_mask=mask, use_cache=True, output_attentions=impl == "eager")
        real = mask.bool()  # pad positions are garbage in both libraries, and differently so
        torch.testing.assert_close(got.logits[real], want.logits[real], rtol=1e-5, atol=1e-5)
        if impl == "eager":
            for a, b in zip(got.attentions, want.attentions):
                torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)
        for layer in range(3):  # (B, nh', S, hs) per layer
            assert got.past_key_values[layer][0].shape == want.past_key_values[layer][0].shape
        nxt = torch.tensor([[5], [6]])
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        want2 = hf(nxt, attention_mask=mask2, past_key_values=want.past_key_values).logits
        got2 = ours(nxt, attention_mask=mask2, past_key_values=got.past_key_values).logits
    torch.testing.assert_close(got2, want2, rtol=1e-5, atol=1e-5)
    ours.set_attn_implementation("sdpa")


def test_prune_heads_slices_as_transformers(tmp_path):
    """gpt2kit's own prune_heads on an unpruned checkpoint: the weights transformers' pruning keeps, and a
    folder transformers loads back to the same model."""
    hf = hf_model("GPT2LMHeadModel", seed=6, n_layer=3)
    hf.save_pretrained(tmp_path / "full")
    ours = gpt2kit.GPT2LMHeadModel.from_pretrained(tmp_path / "full")
    for heads in (PRUNE, LATER):
        hf.prune_heads(heads)
        ours.prune_heads(heads)
    assert ours.config.pruned_heads == {k: sorted(v) for k, v in hf.config.pruned_heads.items()}
    theirs = hf.state_dict()
    for name, t in ours.state_dict().items():
        torch.testing.assert_close(t, theirs[name], rtol=0, atol=0, msg=name)
    ours.save_pretrained(tmp_path / "pruned")
    import transformers

    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "pruned", attn_implementation="eager")
    x, mask = prompt()
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, hf(x).logits, rtol=0, atol=0)
    # a pruned model's parameters stay trainable, and a backward pass reaches them
    ours.train()
    ours(x, labels=x).loss.backward()
    assert ours.transformer.h[0].attn.c_attn.weight.grad.shape == (32, 3 * 8)


def test_pruned_heads_in_a_config_build_pruned_models():
    config = gpt2kit.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=99, pruned_heads={-1: [0, 1]})
    model = gpt2kit.GPT2Model(config)
    assert [b.attn.n_head for b in model.h] == [4, 2]
    assert model.h[1].attn.c_attn.weight.shape == (32, 3 * 16)
    assert model.h[1].attn.c_proj.weight.shape == (16, 32)
    cache = StaticCache.for_model(config, batch_size=1, max_length=5)
    assert [k.shape[1] for k in cache.k] == [4, 2]
    with pytest.raises(ValueError, match="layers 0 .. 1"):
        model.prune_heads({5: [0]})
    with pytest.raises(ValueError, match="heads 0 .. 3"):
        model.prune_heads({0: [4]})


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_generate_matches_transformers(pair, cache_implementation):
    hf, ours, _ = pair
    x, mask = prompt(padded=True)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=-1)
    want = hf.generate(x, **kw, cache_implementation=cache_implementation)
    got = ours.generate(x, **kw, cache_implementation=cache_implementation)
    assert got.tolist() == want.tolist()


def test_static_decode_step_equals_the_eager_step(pair):
    _, ours, _ = pair
    x, _ = prompt(B=1, T=5)
    cache = StaticCache.for_model(ours.config, 1, 8)
    for buf in (*cache.k, *cache.v):  # the static step reads (masked) unfilled slots: no NaN garbage there
        buf.zero_()
    with torch.no_grad():
        ours(x[:, :4], past_key_values=cache, use_cache=True)
        want = ours(x[:, 4:], past_key_values=cache, use_cache=True).logits[:, -1]
        cache.crop(4)  # the static step writes slot 4 again
        got = decode_one_token_static(
            ours,
            x[:, 4:],
            torch.tensor([[4]]),
            torch.tensor([4]),
            cache.k,
            cache.v,
            torch.ones(1, 8, dtype=torch.bool),
        )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_recorded_decode_step_gives_the_eager_logits(pair, monkeypatch):
    _, ours, _ = pair
    monkeypatch.setattr(traced, "TRACE_AFTER_STEPS", 1)
    x, mask = prompt(padded=True)

    def run(trace: bool):
        monkeypatch.setenv("GPT2KIT_TRACE_DECODE", "1" if trace else "0")
        out = ours.generate(
            x, attention_mask=mask, max_new_tokens=6, pad_token_id=0, eos_token_id=-1, do_sample=False,
            return_dict_in_generate=True, output_logits=True,
        )  # fmt: skip
        return out.sequences, torch.stack(out.logits)

    want = run(trace=False)
    got = run(trace=True)
    assert len(traced._recordings.get(ours, {})) == 1  # really replayed
    assert got[0].tolist() == want[0].tolist()
    assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("fmt", ["int8", "packed"])
def test_weight_formats_take_pruned_layers(pair, fmt, tmp_path):
    hf, _, folder = pair
    if fmt == "int8" and not dynamic_engines():
        pytest.skip("no dynamic int8 engine in this torch build")
    if fmt == "packed" and not packing_available():
        pytest.skip("oneDNN packing unavailable")
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder)
    model = quantize_int8(model) if fmt == "int8" else pack_weights(model, measure=False)
    x, _ = prompt()
    with torch.no_grad():
        got, want = model(x).logits, hf(x).logits
    assert got.shape == want.shape
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8
