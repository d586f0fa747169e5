"""Parity with transformers 4.57 (eager attention) on tiny random checkpoints written by transformers.

Every output is compared in fp32 within 1e-5, relative to the tensor's own scale: the oracle's weights are
deliberately large (so approximations cannot hide), hidden states reach magnitudes of ~30, and there the
last-bit rounding differences of fp32 reductions alone are ~1e-6 of the scale. Positions that are padding are compared only where the
exact path is used (it replicates eager attention step for step); the fast path leaves garbage at pad
positions, as transformers' SDPA path does, so there only real positions are compared.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close as _assert_close

import gpt2kit
from hf_oracle import hf_model

TOL = dict(atol=1e-5, rtol=1e-5)


def assert_close(actual, expected, **_):
    """torch's assert_close with atol = 1e-5 * max(1, max |expected|) and rtol = 1e-5."""
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    _assert_close(actual, expected, atol=1e-5 * scale, rtol=1e-5)


CONFIGS = {
    "base": {},
    "flags": dict(
        scale_attn_by_inverse_layer_idx=True,
        reorder_and_upcast_attn=True,
        n_inner=48,
        activation_function="relu",
        layer_norm_epsilon=1e-3,
    ),
    "layer_scaled": dict(scale_attn_by_inverse_layer_idx=True, n_layer=3),
    "unscaled_cross": dict(
        scale_attn_weights=False, activation_function="silu", add_cross_attention=True, n_layer=3
    ),
    "gelu_tanh": dict(activation_function="gelu", n_head=2, n_layer=1),
    "tanh_act": dict(activation_function="tanh", n_head=8),
}


def pair(tmp_path, cls_name, config_name="base", seed=0, **extra):
    """(transformers model, gpt2kit model loaded from the folder transformers saved)."""
    hf = hf_model(cls_name, seed=seed, **CONFIGS[config_name], **extra)
    folder = tmp_path / f"{cls_name}-{config_name}"
    hf.save_pretrained(folder)
    ours = getattr(gpt2kit, cls_name).from_pretrained(folder)
    return hf, ours


def ids(B=3, T=10, vocab=99, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_lm_logits_loss_hidden_states_and_attentions(tmp_path, config_name):
    hf, ours = pair(tmp_path, "GPT2LMHeadModel", config_name)
    x = ids()
    labels = x.clone()
    labels[0, :3] = -100
    kw = dict(labels=labels, output_hidden_states=True, output_attentions=True)
    if hf.config.add_cross_attention:
        enc = torch.randn(3, 7, 32)
        enc_mask = torch.ones(3, 7, dtype=torch.long)
        enc_mask[1, 5:] = 0
        kw |= dict(encoder_hidden_states=enc, encoder_attention_mask=enc_mask)
    with torch.no_grad():
        a, b = hf(x, **kw), ours(x, **kw)
    assert_close(b.logits, a.logits, **TOL)
    assert_close(b.loss, a.loss, **TOL)
    assert len(b.hidden_states) == len(a.hidden_states) == hf.config.n_layer + 1
    for h_ours, h_hf in zip(b.hidden_states, a.hidden_states):
        assert_close(h_ours, h_hf, **TOL)
    for p_ours, p_hf in zip(b.attentions, a.attentions):
        assert_close(p_ours, p_hf, **TOL)
    if hf.config.add_cross_attention:
        assert len(b.cross_attentions) == hf.config.n_layer
        for p_ours, p_hf in zip(b.cross_attentions, a.cross_attentions):
            assert_close(p_ours, p_hf, **TOL)
    # the fast path (no attentions requested) gives the same logits
    fast_kw = {k: v for k, v in kw.items() if k not in ("output_attentions",)}
    with torch.no_grad():
        assert_close(ours(x, **fast_kw).logits, a.logits, **TOL)


@pytest.mark.parametrize("config_name", ["base", "flags"])
def test_padding_right_and_left_with_position_ids(tmp_path, config_name):
    hf, ours = pair(tmp_path, "GPT2LMHeadModel", config_name)
    x = ids(B=3, T=9)
    right = torch.ones_like(x)
    right[1, 6:] = 0
    right[2, 2:] = 0
    left = right.flip(-1)
    for mask in (right, left):
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            a = hf(x, attention_mask=mask, position_ids=position_ids)
            b = ours(x, attention_mask=mask, position_ids=position_ids)
            exact = ours(x, attention_mask=mask, position_ids=position_ids, output_attentions=True)
        real = mask.bool()
        assert_close(b.logits[real], a.logits[real], **TOL)
        assert_close(exact.logits, a.logits, **TOL)  # the exact path matches even at pad positions
        assert torch.isfinite(b.logits).all(), "padding must not produce NaN anywhere"


def test_head_mask_inputs_embeds_token_type_ids(tmp_path):
    hf, ours = pair(tmp_path, "GPT2Model", "base")
    x = ids()
    tt = ids(seed=5) % 3
    embeds = torch.randn(3, 10, 32)
    head_mask_1d = torch.tensor([1.0, 0.0, 1.0, 0.5])
    head_mask_2d = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    with torch.no_grad():
        for kw in (
            dict(input_ids=x, head_mask=head_mask_1d, output_attentions=True),
            dict(input_ids=x, head_mask=head_mask_2d),
            dict(inputs_embeds=embeds, output_hidden_states=True),
            dict(input_ids=x, token_type_ids=tt),
        ):
            a, b = hf(**kw), ours(**kw)
            assert_close(b.last_hidden_state, a.last_hidden_state, **TOL)
            if "output_attentions" in kw:
                for p_ours, p_hf in zip(b.attentions, a.attentions):
                    assert_close(p_ours, p_hf, **TOL)


@pytest.mark.parametrize("config_name", ["base", "flags", "layer_scaled"])
def test_cached_decoding_equals_full_recompute(tmp_path, config_name):
    hf, ours = pair(tmp_path, "GPT2LMHeadModel", config_name)
    x = ids(B=2, T=12)
    with torch.no_grad():
        full = ours(x).logits
        out = ours(x[:, :5], use_cache=True)
        steps = [out.logits]
        past = out.past_key_values
        for t in range(5, 12):
            out = ours(x[:, t : t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
        # a legacy tuple cache from transformers is accepted too
        hf_out = hf(x[:, :5], use_cache=True)
        legacy = tuple((k, v) for k, v in hf_out.past_key_values.to_legacy_cache())
        from_legacy = ours(x[:, 5:], past_key_values=legacy).logits
    assert_close(torch.cat(steps, dim=1), full, **TOL)
    assert_close(from_legacy, full[:, 5:], **TOL)
    k, v = past[0]
    assert k.shape == v.shape == (2, ours.config.n_head, 12, ours.config.head_dim)
    assert len(past) == ours.config.n_layer


def test_cached_decoding_with_left_padding(tmp_path):
    hf, ours = pair(tmp_path, "GPT2LMHeadModel")
    x = ids(B=2, T=8)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = ours(x, attention_mask=mask, position_ids=pos).logits
        out = ours(x[:, :6], attention_mask=mask[:, :6], position_ids=pos[:, :6], use_cache=True)
        out2 = ours(
            x[:, 6:], attention_mask=mask, position_ids=pos[:, 6:], past_key_values=out.past_key_values
        )
        a = hf(x[:, :6], attention_mask=mask[:, :6], position_ids=pos[:, :6], use_cache=True)
        a2 = hf(x[:, 6:], attention_mask=mask, position_ids=pos[:, 6:], past_key_values=a.past_key_values)
    assert_close(out2.logits, full[:, 6:], **TOL)
    assert_close(out2.logits, a2.logits, **TOL)


def test_double_heads(tmp_path):
    hf, ours = pair(tmp_path, "GPT2DoubleHeadsModel")
    x = torch.randint(0, 99, (2, 3, 8))
    mc_token_ids = torch.tensor([[7, 5, 3], [2, 7, 6]])
    mc_labels = torch.tensor([1, 2])
    kw = dict(mc_token_ids=mc_token_ids, mc_labels=mc_labels, labels=x, output_hidden_states=True)
    with torch.no_grad():
        a, b = hf(x, **kw), ours(x, **kw)
    for field in ("loss", "mc_loss", "logits", "mc_logits"):
        assert_close(getattr(b, field), getattr(a, field), **TOL)
    assert_close(b.hidden_states[-1], a.hidden_states[-1], **TOL)
    assert b.mc_logits.shape == (2, 3)


@pytest.mark.parametrize(
    "num_labels,labels,problem",
    [
        (3, torch.tensor([0, 2, 1]), None),
        (1, torch.tensor([0.5, -1.0, 2.0]), None),
        (4, torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]]), None),
        (3, torch.tensor([0, 2, 1]), "single_label_classification"),
    ],
)
def test_sequence_classification(tmp_path, num_labels, labels, problem):
    hf, ours = pair(
        tmp_path, "GPT2ForSequenceClassification", num_labels=num_labels, pad_token_id=0, problem_type=problem
    )
    x = ids(B=3, T=7).clamp(min=1)
    x[0, 5:] = 0  # right padding with pad id 0
    x[2, :2] = 0  # left padding
    mask = (x != 0).long()
    with torch.no_grad():
        a = hf(x, attention_mask=mask, labels=labels)
        b = ours(x, attention_mask=mask, labels=labels)
    assert_close(b.logits, a.logits, **TOL)
    assert_close(b.loss, a.loss, **TOL)


def test_token_classification_and_qa(tmp_path):
    hf, ours = pair(tmp_path, "GPT2ForTokenClassification", num_labels=5)
    x = ids()
    labels = ids(seed=3) % 5
    labels[0, 0] = -100
    with torch.no_grad():
        a, b = hf(x, labels=labels), ours(x, labels=labels)
    assert_close(b.logits, a.logits, **TOL)
    assert_close(b.loss, a.loss, **TOL)

    hf, ours = pair(tmp_path, "GPT2ForQuestionAnswering")
    start, end = torch.tensor([1, 4, 50]), torch.tensor([3, 9, 2])  # 50 is out of range: ignored
    with torch.no_grad():
        a = hf(x, start_positions=start, end_positions=end)
        b = ours(x, start_positions=start, end_positions=end)
    for field in ("loss", "start_logits", "end_logits"):
        assert_close(getattr(b, field), getattr(a, field), **TOL)


def test_return_dict_false_and_output_access(tmp_path):
    hf, ours = pair(tmp_path, "GPT2LMHeadModel")
    x = ids()
    with torch.no_grad():
        a = hf(x, labels=x, return_dict=False)
        b = ours(x, labels=x, return_dict=False)
        d = ours(x, labels=x)
    assert isinstance(b, tuple) and len(b) == len(a) == 3  # loss, logits, past_key_values
    assert_close(b[0], a[0], **TOL)
    assert_close(b[1], a[1], **TOL)
    assert d[0] is d.loss and d["logits"] is d.logits and d[1] is d.logits
    assert list(d.keys()) == ["loss", "logits", "past_key_values"]
    with pytest.raises(KeyError):
        d["attentions"]


def test_dropout_in_train_mode_only(tmp_path):
    _, ours = pair(tmp_path, "GPT2LMHeadModel")
    x = ids()
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(x).logits, ours(x).logits)
        ours.train()
        assert not torch.equal(ours(x).logits, ours(x).logits)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_eager_attention_is_causal_and_equals_transformers_eager(tmp_path, padded):
    """attn_implementation="eager" built the exact path's masks but ran the fast path, which could not read
    them: attention saw future tokens (position 0 changed with the last token)."""
    hf, ours = pair(tmp_path, "GPT2LMHeadModel")
    hf.set_attn_implementation("eager")
    ours.set_attn_implementation("eager")
    x = ids()
    mask = torch.ones_like(x)
    if padded:
        mask[0, :3] = 0
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % 99
    with torch.no_grad():
        a = ours(x, attention_mask=mask).logits
        b = ours(x2, attention_mask=mask).logits
        assert_close(a[:, :-1], b[:, :-1])  # the past never sees the future
        want = hf(x, attention_mask=mask).logits
        keep = mask.bool()
        assert_close(a[keep], want[keep])
        ours.set_attn_implementation("sdpa")
        assert_close(ours(x, attention_mask=mask).logits[keep], want[keep])
