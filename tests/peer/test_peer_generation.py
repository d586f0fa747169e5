"""GenerationTesterMixin's tests (transformers 4.5x tests/generation/test_utils.py) as GPT2ModelTest runs
them, on both backends, for the two generative classes (LM head, double heads). The tests check properties
(lengths, output structure, cache shapes, equivalences); the last one also compares tokens with transformers
on the same weights."""

from __future__ import annotations

import inspect

import pytest
import torch
from peer_utils import (
    GENERATIVE_CLASSES,
    HEADS,
    HIDDEN,
    LAYERS,
    SEQ,
    VOCAB,
    common_inputs,
    make_config,
    transformers_model,
)

MAX_NEW = 3  # GenerationTesterMixin.max_new_tokens
PROCESSORS = dict(bad_words_ids=[[1, 0]], repetition_penalty=1.2, remove_invalid_values=True)
SAMPLING = dict(top_k=10, top_p=0.7, temperature=0.7)
BEAMS = dict(early_stopping=False, length_penalty=2.0, num_beams=2, num_return_sequences=1)
HUB_ONLY = (
    "transformers 4.57 runs {} only as hub code (custom_generate=..., trust_remote_code=True), which needs "
    "the network; gpt2kit runs it, compared token for token with transformers 4.55 in tests/test_strategies.py"
)


def generate_inputs(backend, batch_size=2, eager=False, **overrides):
    """prepare_config_and_inputs_for_generate: no head_mask, `batch_size` rows, eos unset (pad = old eos)."""
    config = make_config(backend, **overrides)
    config.eos_token_id = None
    config.forced_eos_token_id = None
    if eager:  # transformers 4.57 returns attention probabilities only from eager attention
        config._attn_implementation = "eager"
    inputs = common_inputs()
    inputs = {
        "input_ids": inputs["input_ids"][:batch_size],
        "token_type_ids": inputs["token_type_ids"][:batch_size],
    }
    return config, inputs


def all_outputs(use_cache):
    return dict(
        output_scores=True,
        output_logits=True,
        output_hidden_states=True,
        output_attentions=True,
        return_dict_in_generate=True,
        use_cache=use_cache,
    )


def check_outputs(output, use_cache=False, num_return_sequences=1, num_beams=1):
    """_check_outputs: scores, logits, attentions, hidden states and the cache, per generated step."""
    sequences = output.sequences
    input_batch = sequences.shape[0] // num_return_sequences
    batch = input_batch * (num_beams if num_beams > 1 else num_return_sequences)
    length = sequences.shape[-1]
    gen_len = length - SEQ

    assert isinstance(output.scores, tuple) and len(output.scores) == gen_len
    assert all(s.shape == (batch, VOCAB) for s in output.scores)
    assert isinstance(output.logits, tuple)
    assert all(s.shape[0] == batch and s.shape[-1] == VOCAB for s in output.logits)

    steps = output.attentions[1:] if use_cache else output.attentions
    start = SEQ + 1 if use_cache else SEQ
    assert isinstance(output.attentions, tuple) and len(steps) == length - start
    for i, layers in enumerate(steps):
        assert isinstance(layers, tuple)
        expected = (batch, HEADS, 1 if use_cache else start + i, start + i)
        assert [tuple(a.shape) for a in layers] == [expected] * len(layers)

    steps = output.hidden_states[1:] if use_cache else output.hidden_states
    assert isinstance(output.hidden_states, tuple) and len(steps) == length - start
    for i, layers in enumerate(steps):
        expected = (batch, 1 if use_cache else start + i, HIDDEN)
        assert [tuple(h.shape) for h in layers] == [expected] * len(layers)

    if use_cache:
        check_cache(output.past_key_values, batch, length - 1)
    else:
        assert output.past_key_values is None


def check_cache(past, batch, length):
    """_check_past_key_values_for_generate: one (key, value) per layer, each (B, nh, length, hs)."""
    expected = (batch, HEADS, length, HIDDEN // HEADS)
    assert len(past) == LAYERS
    for layer in range(LAYERS):
        key, value = past[layer][0], past[layer][1]
        assert tuple(key.shape) == expected and tuple(value.shape) == expected


def check_similar(a, b, atol=1e-5, rtol=1e-5):
    """_check_similar_generate_outputs: the same sequences, or the same scores up to the first mismatch."""
    if torch.equal(a.sequences, b.sequences):
        return
    prompt = a.sequences.shape[1] - len(a.scores)
    for row in range(a.sequences.shape[0]):
        same = a.sequences[row] == b.sequences[row]
        if same.all():
            continue
        step = int(same.int().argmin()) - prompt
        assert torch.allclose(a.scores[step][row], b.scores[step][row], atol=atol, rtol=rtol), f"row {row}"


def new_length(output, inputs):
    return output.shape[-1] == MAX_NEW + inputs["input_ids"].shape[-1]


# --- greedy, sampling, beams --------------------------------------------------------------------------


def test_greedy_generate(backend):
    """mirrors GenerationTesterMixin.test_greedy_generate"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend)
        model = cls(config).eval()
        out = model.generate(do_sample=False, num_beams=1, max_new_tokens=MAX_NEW, **PROCESSORS, **inputs)
        assert new_length(out, inputs)


def test_greedy_generate_dict_outputs(backend):
    """mirrors GenerationTesterMixin.test_greedy_generate_dict_outputs"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend, eager=True)
        model = cls(config).eval()
        out = model.generate(
            do_sample=False, num_beams=1, max_new_tokens=MAX_NEW, **all_outputs(False), **PROCESSORS, **inputs
        )
        assert out.sequences.shape[-1] == MAX_NEW + SEQ
        assert type(out).__name__ == "GenerateDecoderOnlyOutput"
        check_outputs(out)


def test_greedy_generate_dict_outputs_use_cache(backend):
    """mirrors GenerationTesterMixin.test_greedy_generate_dict_outputs_use_cache"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend, eager=True)
        config.is_decoder = True
        model = cls(config).eval()
        out = model.generate(
            do_sample=False, num_beams=1, max_new_tokens=MAX_NEW, **all_outputs(True), **PROCESSORS, **inputs
        )
        assert out.sequences.shape[-1] == MAX_NEW + SEQ
        check_outputs(out, use_cache=True)


def test_sample_generate(backend):
    """mirrors GenerationTesterMixin.test_sample_generate"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend)
        model = cls(config).eval()
        torch.manual_seed(0)
        out = model.generate(
            do_sample=True, num_beams=1, max_new_tokens=MAX_NEW, num_return_sequences=1, **PROCESSORS, **SAMPLING,
            **inputs,
        )  # fmt: skip
        assert new_length(out, inputs)


def test_sample_generate_dict_output(backend):
    """mirrors GenerationTesterMixin.test_sample_generate_dict_output"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend, eager=True)
        model = cls(config).eval()
        torch.manual_seed(0)
        out = model.generate(
            do_sample=True, num_beams=1, max_new_tokens=MAX_NEW, num_return_sequences=2, **all_outputs(False),
            **PROCESSORS, **SAMPLING, **inputs,
        )  # fmt: skip
        assert out.sequences.shape[-1] == MAX_NEW + SEQ
        assert type(out).__name__ == "GenerateDecoderOnlyOutput"
        check_outputs(out, num_return_sequences=2)


def test_beam_search_generate(backend):
    """mirrors GenerationTesterMixin.test_beam_search_generate"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend)
        model = cls(config).eval()
        out = model.generate(do_sample=False, max_new_tokens=MAX_NEW, **BEAMS, **PROCESSORS, **inputs)
        assert new_length(out, inputs)


def test_beam_search_generate_dict_output(backend):
    """mirrors GenerationTesterMixin.test_beam_search_generate_dict_output"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend, eager=True)
        model = cls(config).eval()
        out = model.generate(
            do_sample=False, max_new_tokens=MAX_NEW, **all_outputs(False), **BEAMS, **PROCESSORS, **inputs
        )
        assert out.sequences.shape[-1] == MAX_NEW + SEQ
        assert type(out).__name__ == "GenerateBeamDecoderOnlyOutput"
        check_outputs(out, num_beams=2)


def test_beam_search_generate_dict_outputs_use_cache(backend):
    """mirrors GenerationTesterMixin.test_beam_search_generate_dict_outputs_use_cache"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend, eager=True)
        config.is_decoder = True
        model = cls(config).eval()
        out = model.generate(
            do_sample=False, max_new_tokens=MAX_NEW, **all_outputs(True), **BEAMS, **PROCESSORS, **inputs
        )
        assert out.sequences.shape[-1] == MAX_NEW + SEQ
        check_outputs(out, use_cache=True, num_beams=2)


def test_beam_sample_generate(backend):
    """mirrors GenerationTesterMixin.test_beam_sample_generate"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend)
        model = cls(config).eval()
        torch.manual_seed(0)
        out = model.generate(
            do_sample=True, max_new_tokens=MAX_NEW, **BEAMS, **PROCESSORS, **SAMPLING, **inputs
        )
        assert new_length(out, inputs)


def test_beam_sample_generate_dict_output(backend):
    """mirrors GenerationTesterMixin.test_beam_sample_generate_dict_output"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend, eager=True)
        model = cls(config).eval()
        torch.manual_seed(0)
        out = model.generate(
            do_sample=True, max_new_tokens=MAX_NEW, **all_outputs(False), **BEAMS, **PROCESSORS, **SAMPLING,
            **inputs,
        )  # fmt: skip
        assert out.sequences.shape[-1] == MAX_NEW + SEQ
        assert type(out).__name__ == "GenerateBeamDecoderOnlyOutput"
        check_outputs(out, num_beams=2)


def test_generate_without_input_ids(backend):
    """mirrors GenerationTesterMixin.test_generate_without_input_ids"""
    config, _ = generate_inputs(backend)
    assert config.bos_token_id is not None
    if config.bos_token_id == config.pad_token_id:  # else the attention mask of the bos prompt is all zero
        config.pad_token_id = None
    for cls in backend.generative_classes:
        model = cls(config).eval()
        assert model.generate(do_sample=False, max_new_tokens=MAX_NEW, remove_invalid_values=True) is not None


@pytest.mark.parametrize(
    "name",
    [
        "test_group_beam_search_generate",
        "test_group_beam_search_generate_dict_output",
        "test_constrained_beam_search_generate",
        "test_constrained_beam_search_generate_dict_output",
        "test_contrastive_generate",
        "test_contrastive_generate_dict_outputs_use_cache",
        "test_contrastive_generate_low_memory",
        "test_dola_decoding_sample",
    ],
)
def test_hub_only_decoding_modes(backend, name):
    """mirrors the GenerationTesterMixin tests of group beam search, constrained beam search, contrastive
    search and DoLa: transformers 4.57 refuses these modes without hub code, so none can run offline"""
    mode = name.removeprefix("test_").split("_generate")[0].split("_decoding")[0].replace("_", " ")
    pytest.skip(HUB_ONLY.format(mode))


# --- assisted decoding and prompt lookup ----------------------------------------------------------------


def assisted_kwargs(**extra):
    return dict(eos_token_id=-1, max_new_tokens=4, num_beams=1, do_sample=False, **all_outputs(True), **extra)


@pytest.mark.parametrize("assistant_type", ["random", "same"])
def test_assisted_decoding_matches_greedy_search(backend, assistant_type):
    """mirrors GenerationTesterMixin.test_assisted_decoding_matches_greedy_search"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend, batch_size=1, eager=True)
        config.is_decoder = True
        model = cls(config).eval()
        greedy = model.generate(**assisted_kwargs(), **inputs, **PROCESSORS)
        assistant = cls(config).eval() if assistant_type == "random" else model
        assistant.generation_config.num_assistant_tokens = 2
        assistant.generation_config.num_assistant_tokens_schedule = "constant"
        assisted = model.generate(**assisted_kwargs(assistant_model=assistant), **inputs, **PROCESSORS)
        check_similar(greedy, assisted)
        for out in (greedy, assisted):
            check_outputs(out, use_cache=True)


def test_prompt_lookup_decoding_matches_greedy_search(backend):
    """mirrors GenerationTesterMixin.test_prompt_lookup_decoding_matches_greedy_search"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend, batch_size=1, eager=True)
        config.is_decoder = True
        model = cls(config).eval()
        greedy = model.generate(**assisted_kwargs(), **inputs)
        lookup = model.generate(**assisted_kwargs(prompt_lookup_num_tokens=2), **inputs)
        check_similar(greedy, lookup)
        for out in (greedy, lookup):
            check_outputs(out, use_cache=True)


def test_assisted_decoding_sample(backend):
    """mirrors GenerationTesterMixin.test_assisted_decoding_sample"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend, batch_size=1, eager=True)
        config.is_decoder = True
        model = cls(config).eval()
        model.generation_config.num_assistant_tokens = 2
        model.generation_config.num_assistant_tokens_schedule = "constant"
        kwargs = assisted_kwargs(assistant_model=model)
        kwargs["do_sample"] = True
        check_outputs(model.generate(**kwargs, **inputs), use_cache=True)


# --- padding, cache, embeddings -------------------------------------------------------------------------


def test_left_padding_compatibility(backend):
    """mirrors GenerationTesterMixin.test_left_padding_compatibility"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend)
        input_ids = inputs["input_ids"]
        mask = torch.ones_like(input_ids)
        model = cls(config).eval()
        model.generation_config.use_cache = False

        def kwargs(ids, attention_mask):
            position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
            return dict(
                input_ids=ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache_position=torch.arange(ids.shape[-1]),
            )

        pad = torch.full(
            (input_ids.shape[0], 32), config.pad_token_id if config.pad_token_id is not None else 0
        )
        with torch.no_grad():
            plain = model(**kwargs(input_ids, mask)).logits[:, -1]
            padded = model(
                **kwargs(torch.cat([pad, input_ids], 1), torch.cat([torch.zeros_like(pad), mask], 1))
            ).logits[:, -1]
        torch.testing.assert_close(plain, padded, rtol=1e-5, atol=1e-5)


def test_past_key_values_format(backend):
    """mirrors GenerationTesterMixin.test_past_key_values_format"""
    for cls in backend.generative_classes:
        model = cls(make_config(backend))
        inputs = common_inputs()
        outputs = model(**inputs, use_cache=True)
        assert "past_key_values" in outputs
        past = outputs["past_key_values"]
        assert len(past) == LAYERS and len(past[0]) == 2
        check_cache(past, inputs["input_ids"].shape[0], inputs["input_ids"].shape[1])


@pytest.mark.parametrize("num_beams", [1, 2], ids=["greedy", "beam search"])
def test_generate_from_inputs_embeds(backend, num_beams):
    """mirrors GenerationTesterMixin.test_generate_from_inputs_embeds"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend)
        config.is_decoder = True
        model = cls(config).eval()
        input_ids = inputs.pop("input_ids")
        kwargs = dict(
            return_dict_in_generate=True,
            output_scores=True,
            num_beams=num_beams,
            do_sample=False,
            max_new_tokens=5,
            min_new_tokens=5,
        )
        from_ids = model.generate(input_ids, **kwargs, **inputs)
        assert from_ids.sequences.shape == (input_ids.shape[0], input_ids.shape[1] + 5)
        embeds = model.get_input_embeddings()(input_ids)
        from_embeds = model.generate(input_ids, inputs_embeds=embeds, **kwargs, **inputs)
        check_similar(from_ids, from_embeds)
        torch.manual_seed(0)
        from_random = model.generate(input_ids, inputs_embeds=torch.rand_like(embeds), **kwargs, **inputs)
        for a, b in zip(from_embeds.scores, from_random.scores):
            assert not torch.allclose(a, b)
        # no attention_mask in the inputs: upstream then skips generating from the embeddings alone


def test_generate_from_inputs_embeds_with_static_cache(backend):
    """mirrors GenerationTesterMixin.test_generate_from_inputs_embeds_with_static_cache (max_length counts the
    embedded prompt and the cache holds max_length - 1 positions, as in transformers 4.57)"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend)
        model = cls(config).eval()
        input_ids = inputs.pop("input_ids")
        model.config.use_cache = True
        model.generation_config.eos_token_id = model.config.eos_token_id = -1
        embeds = model.get_input_embeddings()(input_ids)
        out = model.generate(
            inputs_embeds=embeds,
            max_length=30,
            cache_implementation="static",
            return_dict_in_generate=True,
            **inputs,
        )
        assert type(out.past_key_values).__name__ == "StaticCache"
        check_cache(out.past_key_values, input_ids.shape[0], 30 - 1)


def test_generate_continue_from_past_key_values(backend):
    """mirrors GenerationTesterMixin.test_generate_continue_from_past_key_values"""
    for cls in backend.generative_classes:
        config = make_config(backend)
        inputs = common_inputs()
        del inputs["token_type_ids"]
        model = cls(config).eval()
        model.generation_config.pad_token_id = model.generation_config.eos_token_id = -1
        model.generation_config.forced_eos_token_id = None
        model.generation_config.use_cache = True
        assert "past_key_values" in model(**inputs)

        full = model.generate(**inputs, do_sample=False, max_new_tokens=4, return_dict_in_generate=True)
        part = model.generate(**inputs, do_sample=False, max_new_tokens=3, return_dict_in_generate=True)
        inputs["past_key_values"] = part.past_key_values
        inputs["input_ids"] = part.sequences
        cont = model.generate(**inputs, do_sample=False, max_new_tokens=1, return_dict_in_generate=True)
        assert full.sequences.tolist() == cont.sequences.tolist()
        for layer in range(len(cont.past_key_values)):
            for kv in range(2):
                assert torch.allclose(full.past_key_values[layer][kv], cont.past_key_values[layer][kv])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_generate_with_static_cache(backend, dtype):
    """mirrors GenerationTesterMixin.test_generate_with_static_cache (cache length = generated length - 1, as
    transformers 4.57 and upstream's later version have it)"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend, layer_norm_epsilon=1.0)
        config.is_decoder = True
        model = cls(config).to(dtype).eval()
        kwargs = dict(max_new_tokens=20, return_dict_in_generate=True, output_scores=True, use_cache=True)
        static = model.generate(**kwargs, **inputs, cache_implementation="static")
        assert type(static.past_key_values).__name__ == "StaticCache"
        check_cache(static.past_key_values, inputs["input_ids"].shape[0], SEQ + 20 - 1)
        check_similar(model.generate(**kwargs, **inputs), static)


def logits_to_keep_classes(backend, oracle):
    return [
        getattr(backend, n)
        for n in GENERATIVE_CLASSES
        if "logits_to_keep" in inspect.signature(getattr(oracle, n).forward).parameters
    ]


def test_generate_methods_with_logits_to_keep(backend, oracle):
    """mirrors GenerationTesterMixin.test_generate_methods_with_logits_to_keep"""
    for cls in logits_to_keep_classes(backend, oracle):
        config, inputs = generate_inputs(backend, use_cache=True)
        config.is_decoder = True
        model = cls(config).eval()
        kwargs = dict(max_new_tokens=10, do_sample=False)
        with_all = model.generate(**kwargs, **inputs, logits_to_keep=0)
        assert with_all.tolist() == model.generate(**inputs, **kwargs).tolist()


def test_assisted_decoding_with_logits_to_keep(backend, oracle):
    """mirrors GenerationTesterMixin.test_assisted_decoding_with_logits_to_keep"""
    for cls in logits_to_keep_classes(backend, oracle):
        config, inputs = generate_inputs(backend, batch_size=1, use_cache=True)
        config.is_decoder = True
        model = cls(config).eval()
        kwargs = dict(
            max_new_tokens=10,
            do_sample=False,
            assistant_model=model,
            return_dict_in_generate=True,
            output_scores=True,
        )
        check_similar(
            model.generate(**kwargs, **inputs, logits_to_keep=0), model.generate(**inputs, **kwargs)
        )


def test_inherits_generation_mixin(backend):
    """mirrors GenerationTesterMixin.test_inherits_generation_mixin"""
    for cls in backend.generative_classes:
        assert "GenerationMixin" in str(cls.__bases__)


def test_eager_matches_sdpa_generate(backend, tmp_path):
    """mirrors GenerationTesterMixin.test_eager_matches_sdpa_generate (slow upstream; a second here)"""
    for cls in backend.generative_classes:
        config, inputs = generate_inputs(backend, n_positions=30 + SEQ + 1)
        cls(config).save_pretrained(tmp_path / cls.__name__)
        kwargs = dict(max_new_tokens=30, do_sample=False, return_dict_in_generate=True, output_scores=True)
        results = [
            cls.from_pretrained(tmp_path / cls.__name__, dtype=torch.float16, attn_implementation=impl)
            .eval()
            .generate(**inputs, **kwargs, use_cache=True)
            for impl in ("eager", "sdpa")
        ]
        check_similar(*results, atol=1e-3, rtol=1e-3)


# --- peer check: the same tokens as transformers on the same weights -----------------------------------


@pytest.mark.parametrize(
    "mode",
    [
        dict(do_sample=False),
        dict(do_sample=True, **SAMPLING),
        dict(do_sample=False, num_beams=2, length_penalty=2.0),
        dict(do_sample=True, num_beams=2, **SAMPLING),
        dict(do_sample=False, bad_words_ids=[[1, 0]], repetition_penalty=1.2),
    ],
    ids=["greedy", "sample", "beam", "beam_sample", "processors"],
)
@pytest.mark.parametrize("cls_name", GENERATIVE_CLASSES)
def test_generate_matches_transformers(backend, checkpoints, cls_name, mode):
    """the modes above give transformers' tokens and scores on the same weights and seed (peer check)"""
    folder = checkpoints(cls_name, eos_token_id=None)
    inputs = generate_inputs(backend)[1]
    kwargs = dict(max_new_tokens=8, return_dict_in_generate=True, output_scores=True, **mode)
    model = getattr(backend, cls_name).from_pretrained(folder).eval()
    torch.manual_seed(0)
    ours = model.generate(**inputs, **kwargs)
    torch.manual_seed(0)
    theirs = transformers_model(folder, cls_name).generate(**inputs, **kwargs)
    assert ours.sequences.tolist() == theirs.sequences.tolist()
    for a, b in zip(ours.scores, theirs.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("use_cache", [False, True], ids=["no_cache", "cache"])
def test_generate_dict_outputs_match_transformers(backend, checkpoints, use_cache):
    """return_dict_in_generate with every output asked for holds the fields transformers returns, with the
    same shapes (peer check; the upstream dict-output tests also pass remove_invalid_values)"""
    folder = checkpoints("GPT2LMHeadModel", eos_token_id=None)
    inputs = generate_inputs(backend)[1]
    kwargs = dict(max_new_tokens=MAX_NEW, do_sample=False, **all_outputs(use_cache))
    model = backend.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    ours = model.generate(**inputs, **kwargs)
    theirs = transformers_model(folder, "GPT2LMHeadModel").generate(**inputs, **kwargs)
    expected = {k for k, v in theirs.items() if v is not None}
    assert {k for k in ours if getattr(ours, k) is not None} == expected
    check_outputs(ours, use_cache=use_cache)
