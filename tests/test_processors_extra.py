"""epsilon_cutoff, eta_cutoff, sequence_bias, exponential_decay_length_penalty and watermarking against
transformers 4.57 (the oracle): processor by processor bit for bit, in its order, and through generate()."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from transformers.generation import logits_process as hf

import gpt2kit
from gpt2kit.generation import GenerationConfig, WatermarkingConfig
from gpt2kit.generation import processors as ours
from hf_oracle import hf_model

V = 50


def random_scores(seed: int, batch: int = 3, n_inf: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, V, generator=g) * 3
    for row in range(batch):
        scores[row, torch.randperm(V, generator=g)[:n_inf]] = -float("inf")
    return scores


def random_ids(seed: int, length: int, batch: int = 3) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed + 1000))


def same(our_proc, hf_proc, ids, scores) -> None:
    before = scores.clone()
    got = our_proc(ids, scores)
    assert torch.equal(scores, before)  # nothing changed in place
    expected = hf_proc(ids.clone(), scores.clone())
    assert torch.equal(got.nan_to_num(), expected.nan_to_num()), (got, expected)


@pytest.mark.parametrize("cutoff", [1e-4, 3e-3, 0.02, 0.2, 0.9])
@pytest.mark.parametrize("keep", [1, 4])
def test_epsilon_and_eta(cutoff, keep):
    for seed in range(6):
        ids, scores = random_ids(seed, 5), random_scores(seed)
        same(ours.EpsilonLogitsWarper(cutoff, min_tokens_to_keep=keep), hf.EpsilonLogitsWarper(cutoff, min_tokens_to_keep=keep), ids, scores)  # fmt: skip
        same(ours.EtaLogitsWarper(cutoff, min_tokens_to_keep=keep), hf.EtaLogitsWarper(cutoff, min_tokens_to_keep=keep), ids, scores)  # fmt: skip


def test_sequence_bias():
    for seed in range(8):
        ids, scores = random_ids(seed, 6).clamp(min=1), random_scores(seed)  # the list form wants ids > 0
        bias = {
            (3,): -1.5,
            (7,): 2.0,
            (int(ids[0, -1]), 7): 4.0,  # adds to the one-token bias of 7 on row 0
            (1, 2, 3): 2.0,
            (int(ids[1, -2]), int(ids[1, -1]), 9): -float("inf"),
            tuple(range(1, 11)): 1.0,  # longer than the context: ignored
        }
        same(ours.SequenceBiasLogitsProcessor(bias), hf.SequenceBiasLogitsProcessor(bias), ids, scores)
        as_list = [[list(k), v] for k, v in bias.items()]
        same(ours.SequenceBiasLogitsProcessor(as_list), hf.SequenceBiasLogitsProcessor(as_list), ids, scores)


@pytest.mark.parametrize("start, factor", [(0, 1.5), (2, 0.9), (3, 1.0), (10, 2.0)])
@pytest.mark.parametrize("eos", [3, [3, 4]])
def test_exponential_decay(start, factor, eos):
    for length in (4, 5, 6, 9, 15):
        ids, scores = random_ids(length, length), random_scores(length)
        same(
            ours.ExponentialDecayLengthPenalty((start, factor), eos, 4),
            hf.ExponentialDecayLengthPenalty((start, factor), eos, 4),
            ids,
            scores,
        )


@pytest.mark.parametrize("scheme", ["lefthash", "selfhash"])
@pytest.mark.parametrize("context_width, ratio, bias", [(1, 0.25, 2.0), (3, 0.5, -1.0)])
def test_watermark(scheme, context_width, ratio, bias):
    for seed in range(3):
        ids, scores = random_ids(seed, 6), random_scores(seed, n_inf=0)
        args = (V, "cpu", ratio, bias, 15485863, scheme, context_width)
        same(ours.WatermarkLogitsProcessor(*args), hf.WatermarkLogitsProcessor(*args), ids, scores)


# --- the list generate() builds ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf():
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=V, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval()


def hf_processors(model, gen_kwargs: dict, prompt: torch.Tensor):
    cfg = transformers.GenerationConfig(**copy.deepcopy(gen_kwargs))
    model._prepare_special_tokens(cfg, kwargs_has_attention_mask=True, device="cpu")
    model._prepare_generated_length(cfg, False, True, "input_ids", prompt.shape[1], prompt)
    return model._get_logits_processor(
        generation_config=cfg,
        input_ids_seq_length=prompt.shape[1],
        encoder_input_ids=prompt,
        logits_processor=transformers.LogitsProcessorList(),
        device="cpu",
    )


CONFIGS = [
    dict(do_sample=True, epsilon_cutoff=3e-3, eta_cutoff=1e-3, top_k=0, eos_token_id=3),
    dict(do_sample=True, num_beams=2, epsilon_cutoff=0.01, temperature=0.7, eos_token_id=[3, 4]),
    dict(sequence_bias={(3,): -2.0, (1, 2): 3.0}, repetition_penalty=1.2, eos_token_id=3),
    dict(
        sequence_bias=[[[5], 1.0]],
        exponential_decay_length_penalty=(1, 1.5),
        eos_token_id=3,
        max_new_tokens=9,
    ),
    dict(
        exponential_decay_length_penalty=(0, 1.2),
        forced_eos_token_id=3,
        remove_invalid_values=True,
        suppress_tokens=[7],
        eos_token_id=3,
        max_length=12,
    ),
    dict(watermarking_config={"bias": 3.0}, do_sample=True, renormalize_logits=True, eta_cutoff=0.01),
    dict(watermarking_config={"seeding_scheme": "selfhash", "context_width": 2}, eos_token_id=3),
    dict(epsilon_cutoff=0.01),  # greedy: no warpers
]


@pytest.mark.parametrize("gen_kwargs", CONFIGS, ids=lambda k: ",".join(k)[:50])
def test_build_processors_matches_transformers(tiny_hf, gen_kwargs):
    prompt = random_ids(0, 6, batch=2)
    cfg = GenerationConfig(**copy.deepcopy(gen_kwargs))
    mine = ours.build_processors(cfg, prompt_length=prompt.shape[1], vocab_size=V)
    theirs = hf_processors(tiny_hf, gen_kwargs, prompt)
    assert [type(p).__name__ for p in mine] == [type(p).__name__ for p in theirs]
    for step in range(4):
        ids = torch.cat([prompt, random_ids(step, step, batch=2)], dim=1)
        scores = random_scores(step, batch=2, n_inf=0)
        assert torch.equal(mine(ids, scores), theirs(ids, scores.clone()))


# --- through generate() -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf_lm = hf_model("GPT2LMHeadModel", seed=7)
    folder = tmp_path_factory.mktemp("extra")
    hf_lm.save_pretrained(folder)
    return hf_lm, gpt2kit.GPT2LMHeadModel.from_pretrained(folder)


def prompts():
    x = torch.randint(1, 99, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    return x.masked_fill(mask == 0, 0), mask


GENERATE = [
    dict(sequence_bias={(97,): -5.0, (60, 97): 8.0, (72,): 1.5}),
    dict(exponential_decay_length_penalty=(2, 1.6), eos_token_id=97),
    dict(exponential_decay_length_penalty=(1, 1.3), eos_token_id=[97, 72], num_beams=3),
    dict(do_sample=True, epsilon_cutoff=0.02, top_k=0),
    dict(do_sample=True, eta_cutoff=0.01, top_k=0, temperature=1.3),
    dict(do_sample=True, num_beams=2, epsilon_cutoff=0.05, eos_token_id=97),
    dict(watermarking_config=WatermarkingConfig(bias=4.0)),
    dict(watermarking_config={"bias": 2.5, "seeding_scheme": "selfhash"}, do_sample=True),
]


@pytest.mark.parametrize("kw", GENERATE, ids=lambda k: ",".join(k)[:50])
def test_generate_matches_transformers(models, kw):
    hf_lm, mine = models
    x, mask = prompts()
    theirs_kw = dict(kw)
    marks = kw.get("watermarking_config")
    if marks is not None:  # transformers' generate() takes only its class (a dict fails in its validate())
        marks = marks.to_dict() if isinstance(marks, WatermarkingConfig) else marks
        theirs_kw["watermarking_config"] = transformers.WatermarkingConfig(**marks)
    torch.manual_seed(11)
    with torch.no_grad():
        a = hf_lm.generate(x, attention_mask=mask, max_new_tokens=10, pad_token_id=0, **theirs_kw)
    torch.manual_seed(11)
    b = mine.generate(x, attention_mask=mask, max_new_tokens=10, pad_token_id=0, **kw)
    assert torch.equal(a, b), (a, b)


def test_watermark_changes_the_tokens(models):
    _, mine = models
    x, mask = prompts()
    plain = mine.generate(x, attention_mask=mask, max_new_tokens=10, pad_token_id=0)
    marked = mine.generate(
        x, attention_mask=mask, max_new_tokens=10, pad_token_id=0, watermarking_config={"bias": 8.0}
    )
    assert not torch.equal(plain, marked)


# --- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(epsilon_cutoff=1.5), "epsilon_cutoff must be in"),
        (dict(eta_cutoff=-0.1), "eta_cutoff must be in"),
        (dict(sequence_bias={(1,): "x"}), "sequence_bias values"),
        (dict(sequence_bias={(): 1.0}), "sequence_bias keys"),
        (dict(sequence_bias=[[1, 2]]), "sequence_bias keys"),
        (dict(exponential_decay_length_penalty=(1.5, 2)), "exponential_decay_length_penalty must be"),
        (dict(watermarking_config={"seeding_scheme": "middle"}), "seeding_scheme"),
        (dict(watermarking_config={"greenlist_ratio": 1.5}), "greenlist_ratio"),
        (dict(watermarking_config={"colour": "green"}), "unknown keys"),
    ],
)
def test_bad_settings_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**kw)


def test_exponential_decay_needs_eos(models):
    _, mine = models
    with pytest.raises(ValueError, match="pass eos_token_id"):
        mine.generate(torch.tensor([[1, 2]]), exponential_decay_length_penalty=(1, 1.5), eos_token_id=None, pad_token_id=0)  # fmt: skip


@pytest.mark.parametrize(
    "kw",
    [
        dict(
            do_sample=True,
            sequence_bias=[[[1, 2], 0.5], [[3], -1.0]],
            exponential_decay_length_penalty=[4, 1.1],
            epsilon_cutoff=3e-4,
            eta_cutoff=1e-3,
            watermarking_config={"bias": 3.0, "context_width": 2},
            penalty_alpha=0.6,
            dola_layers="high",
            low_memory=True,
        ),
        dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5),
        dict(num_beams=4, force_words_ids=[[5, 6], [[7], [8, 9]]]),
    ],
)
def test_files_round_trip_with_transformers(tmp_path, kw):
    GenerationConfig(**copy.deepcopy(kw)).save_pretrained(tmp_path / "ours")
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path / "ours")
    for key, value in kw.items():
        if key != "watermarking_config":
            assert getattr(theirs, key) == value, key
    transformers.GenerationConfig(**copy.deepcopy(kw)).save_pretrained(tmp_path / "theirs")
    back = GenerationConfig.from_pretrained(tmp_path / "theirs")
    assert back == GenerationConfig(**copy.deepcopy(kw))
    if "watermarking_config" in kw:
        assert theirs.watermarking_config.bias == 3.0 and theirs.watermarking_config.context_width == 2
        assert back.watermarking_config == WatermarkingConfig(bias=3.0, context_width=2)


def test_constraints_are_not_written(tmp_path):
    from gpt2kit.generation import PhrasalConstraint

    cfg = GenerationConfig(num_beams=2, constraints=[PhrasalConstraint([1, 2])])
    assert "PhrasalConstraint" in repr(cfg)
    with pytest.raises(ValueError, match="pass them to generate"):
        cfg.save_pretrained(tmp_path)
