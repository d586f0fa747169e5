"""GenerationConfig against transformers' GenerationConfig (the oracle): defaults, files, validation."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pickle
import subprocess
import sys
from dataclasses import fields

import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation import logits_process as hf_lp

from gpt2kit.config import GPT2Config
from gpt2kit.generation import GENERATION_CONFIG_NAME, GenerationConfig

HFGen = transformers.GenerationConfig
OUR_FIELDS = [f.name for f in fields(GenerationConfig) if f.name != "extra"]


@pytest.fixture(autouse=True)
def quiet_transformers():
    # transformers logs a warning for every "unused flag" config we build on purpose.
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity_warning()


def assert_same_fields(ours: GenerationConfig, theirs: HFGen) -> None:
    for name in OUR_FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name


# --- defaults and fields ----------------------------------------------------------------------------------


def test_defaults_match_transformers_field_by_field():
    assert_same_fields(GenerationConfig(), HFGen())


def test_brief_defaults():
    cfg = GenerationConfig()
    assert (cfg.max_length, cfg.top_k, cfg.num_beams, cfg.temperature, cfg.early_stopping) == (
        20,
        50,
        1,
        1.0,
        False,
    )
    assert cfg.max_new_tokens is None and cfg.eos_token_id is None and cfg.min_p is None


@pytest.mark.parametrize("name", ["static", "dynamic", "offloaded", None])
def test_cache_implementation_names_like_transformers(name):
    assert (
        GenerationConfig(cache_implementation=name).cache_implementation
        == HFGen(cache_implementation=name).cache_implementation
    )
    assert GenerationConfig(remove_invalid_values=True).remove_invalid_values is True


def test_unknown_cache_implementation_raises_like_transformers():
    with pytest.raises(ValueError, match="cache_implementation"):
        HFGen(cache_implementation="paged_static")
    with pytest.raises(ValueError, match=r"Invalid cache_implementation \('paged_static'\)"):
        GenerationConfig(cache_implementation="paged_static")


def test_unknown_keys_are_kept_and_readable():
    cfg = GenerationConfig(max_time=3.0, guidance_scale=1.5)
    assert cfg.max_time == 3.0 and cfg.extra == {"max_time": 3.0, "guidance_scale": 1.5}
    assert cfg.to_dict()["max_time"] == 3.0
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = cfg.nothing


# --- files, both directions -------------------------------------------------------------------------------

SETTINGS = [
    {},
    dict(do_sample=True, temperature=0.7, top_k=0, top_p=0.9, min_p=0.05, max_new_tokens=64),
    dict(
        num_beams=4,
        num_return_sequences=2,
        early_stopping="never",
        length_penalty=0.8,
        no_repeat_ngram_size=3,
    ),
    dict(eos_token_id=[50256, 198], pad_token_id=50256, bos_token_id=50256, forced_eos_token_id=50256),
    dict(
        bad_words_ids=[[11], [318, 257]],
        suppress_tokens=[1, 2],
        begin_suppress_tokens=[220],
        repetition_penalty=1.3,
    ),
    dict(return_dict_in_generate=True, output_scores=True, output_logits=True, renormalize_logits=True),
    dict(
        min_length=5, min_new_tokens=2, stop_strings=["\n\n"], use_cache=False, typical_p=0.95, do_sample=True
    ),
    dict(max_time=2.5, epsilon_cutoff=3e-4, do_sample=True),  # max_time: a key we do not model
]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda k: ",".join(k)[:40] or "default")
def test_ours_loads_in_transformers(kwargs, tmp_path):
    ours = GenerationConfig(**copy.deepcopy(kwargs))
    written = ours.save_pretrained(tmp_path)
    assert written == tmp_path / GENERATION_CONFIG_NAME
    theirs = HFGen.from_pretrained(tmp_path)
    assert_same_fields(ours, theirs)
    for key, value in ours.extra.items():
        assert getattr(theirs, key) == value
    # Same file content as transformers writes for the same settings (it adds its version).
    expected = json.loads(HFGen(**copy.deepcopy(kwargs)).to_json_string())
    expected.pop("transformers_version")
    assert json.loads(written.read_text()) == expected


@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda k: ",".join(k)[:40] or "default")
def test_transformers_file_loads_in_ours(kwargs, tmp_path):
    theirs = HFGen(**copy.deepcopy(kwargs))
    theirs.save_pretrained(tmp_path)
    ours = GenerationConfig.from_pretrained(tmp_path)
    assert_same_fields(ours, theirs)
    assert "transformers_version" not in ours.extra
    assert ours == GenerationConfig(**copy.deepcopy(kwargs))


def test_from_pretrained_variants(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    GenerationConfig(top_k=7).save_pretrained(tmp_path / "m", config_file_name="sampling.json")
    assert GenerationConfig.from_pretrained(tmp_path / "m", "sampling.json").top_k == 7
    assert GenerationConfig.from_pretrained(tmp_path / "m" / "sampling.json").top_k == 7
    cfg = GenerationConfig.from_pretrained(tmp_path / "m", "sampling.json", do_sample=True, top_k=3)
    assert (cfg.do_sample, cfg.top_k) == (True, 3)

    # A folder in the HF cache layout, found by hub id.
    snap = tmp_path / "cache" / "models--org--model" / "snapshots" / "abc"
    GenerationConfig(max_new_tokens=9).save_pretrained(snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc")
    assert GenerationConfig.from_pretrained("org/model").max_new_tokens == 9


def test_builtin_gpt2_names_give_the_hubs_generation_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    cfg = GenerationConfig.from_pretrained("gpt2")
    # openai-community/gpt2's generation_config.json: {"_from_model_config": true, "bos_token_id": 50256, ...}
    assert json.loads(cfg.to_json_string()) == {
        "_from_model_config": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }
    assert GenerationConfig.from_pretrained("distilgpt2", max_new_tokens=5).max_new_tokens == 5


def test_from_pretrained_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="generation_config.json") as err:
        GenerationConfig.from_pretrained(tmp_path / "missing")
    assert "missing" in str(err.value)
    (tmp_path / "no-file").mkdir()
    with pytest.raises(FileNotFoundError, match="has no generation_config.json.*from_model_config"):
        GenerationConfig.from_pretrained(tmp_path / "no-file")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / GENERATION_CONFIG_NAME).write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        GenerationConfig.from_pretrained(tmp_path / "bad")


def test_save_pretrained_is_atomic_and_refuses_a_file(tmp_path):
    GenerationConfig(top_k=3).save_pretrained(tmp_path / "new" / "folder")
    assert [p.name for p in (tmp_path / "new" / "folder").iterdir()] == [GENERATION_CONFIG_NAME]
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="needs a folder"):
        GenerationConfig().save_pretrained(tmp_path / "f")


# --- from_model_config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_kwargs",
    [
        {},
        dict(pad_token_id=0, eos_token_id=[50256, 198]),
        dict(output_hidden_states=True),  # turns on return_dict_in_generate, as in transformers
        dict(use_cache=False, bos_token_id=None),
        dict(max_length=50, do_sample=True, top_k=10),  # legacy generation keys in a model config.json
    ],
)
def test_from_model_config_matches_transformers(model_kwargs):
    ours = GenerationConfig.from_model_config(GPT2Config(**model_kwargs))
    theirs = HFGen.from_model_config(transformers.GPT2Config(**model_kwargs))
    assert_same_fields(ours, theirs)
    expected = json.loads(theirs.to_json_string())
    expected.pop("transformers_version")
    assert json.loads(ours.to_json_string()) == expected


# --- update -----------------------------------------------------------------------------------------------


def test_update_returns_unused_kwargs_like_transformers():
    ours, theirs = GenerationConfig(max_time=1.0), HFGen(max_time=1.0)
    kwargs = dict(do_sample=True, top_p=0.5, max_time=2.0, not_a_setting=1)
    assert ours.update(**kwargs) == theirs.update(**kwargs) == {"not_a_setting": 1}
    assert_same_fields(ours, theirs)
    assert ours.max_time == 2.0


def test_failed_update_leaves_the_config_unchanged():
    cfg = GenerationConfig(do_sample=True, temperature=0.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        cfg.update(top_k=5, temperature=0.0)
    assert (cfg.top_k, cfg.temperature) == (50, 0.5)


# --- validation: errors vs warnings -----------------------------------------------------------------------

# Settings transformers' GenerationConfig itself rejects: ours rejects them too.
HF_CONFIG_ERRORS = [
    (dict(early_stopping="sometimes"), "early_stopping must be True, False or 'never', got 'sometimes'"),
    (dict(max_new_tokens=0), "max_new_tokens must be a positive integer, got 0"),
    (dict(max_new_tokens=-5), "max_new_tokens must be a positive integer, got -5"),
    (
        dict(num_return_sequences=2),
        "greedy decoding returns one sequence.*set do_sample=True or num_beams>=2",
    ),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences=3 is more than num_beams=2"),
]


@pytest.mark.parametrize("kwargs, message", HF_CONFIG_ERRORS)
def test_errors_transformers_raises_too(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)
    with pytest.raises(ValueError):
        HFGen(**kwargs)


# Settings transformers' config accepts but its logits processor rejects inside generate(): ours fails early.
# (value, our message, the transformers processor that raises for it)
PROCESSOR_ERRORS = [
    (
        dict(do_sample=True, temperature=0.0),
        r"temperature must be > 0 when do_sample=True, got 0\.0",
        lambda: hf_lp.TemperatureLogitsWarper(0.0),
    ),
    (
        dict(do_sample=True, temperature=-1.0),
        "temperature must be > 0",
        lambda: hf_lp.TemperatureLogitsWarper(-1.0),
    ),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\].*got 1\.5", lambda: hf_lp.TopPLogitsWarper(1.5)),
    (dict(top_p=-0.1), r"top_p must be in \(0, 1\]", lambda: hf_lp.TopPLogitsWarper(-0.1)),
    (dict(top_k=-1), r"top_k must be an integer >= 0.*got -1", lambda: hf_lp.TopKLogitsWarper(-1)),
    (dict(min_p=1.5), r"min_p must be in \[0, 1\].*got 1\.5", lambda: hf_lp.MinPLogitsWarper(1.5)),
    (dict(typical_p=0.0), r"typical_p must be in \(0, 1\].*got 0\.0", lambda: hf_lp.TypicalLogitsWarper(0.0)),
    (dict(typical_p=1.2), r"typical_p must be in \(0, 1\]", lambda: hf_lp.TypicalLogitsWarper(1.2)),
    (
        dict(repetition_penalty=0.0),
        r"repetition_penalty must be > 0.*got 0\.0",
        lambda: hf_lp.RepetitionPenaltyLogitsProcessor(0.0),
    ),
    (
        dict(no_repeat_ngram_size=-1),
        "no_repeat_ngram_size must be an integer >= 0",
        lambda: hf_lp.NoRepeatNGramLogitsProcessor(-1),
    ),
    (
        dict(bad_words_ids=[]),
        "bad_words_ids must be a non-empty list",
        lambda: hf_lp.NoBadWordsLogitsProcessor([]),
    ),
    (
        dict(bad_words_ids=[[1, -2]]),
        "bad_words_ids must be",
        lambda: hf_lp.NoBadWordsLogitsProcessor([[1, -2]]),
    ),
    (
        dict(min_length=-1),
        "min_length must be a non-negative integer, got -1",
        lambda: hf_lp.MinLengthLogitsProcessor(-1, 0),
    ),
    (
        dict(min_new_tokens=-1),
        "min_new_tokens must be a non-negative integer",
        lambda: hf_lp.MinNewTokensLengthLogitsProcessor(0, -1, 0),
    ),
]


@pytest.mark.parametrize("kwargs, message, hf_processor", PROCESSOR_ERRORS, ids=lambda x: str(x)[:30])
def test_errors_transformers_raises_only_in_generate(kwargs, message, hf_processor):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)
    HFGen(**kwargs)  # accepted by the config ...
    with pytest.raises(ValueError):
        hf_processor()  # ... and refused once generate() builds the processor


# nan and infinities: transformers' config lets them through (temperature=inf even reaches sampling, as a
# uniform distribution); ours refuses them by name, whether or not the setting is used.
NON_FINITE = [
    dict(temperature=math.inf),
    dict(do_sample=True, temperature=math.inf),
    dict(do_sample=True, temperature=math.nan),
    dict(temperature=math.nan),
    dict(do_sample=True, top_p=math.nan),
    dict(do_sample=True, min_p=math.nan),
    dict(do_sample=True, typical_p=math.inf),
    dict(repetition_penalty=math.inf),
    dict(repetition_penalty=math.nan),
    dict(length_penalty=math.nan),
    dict(num_beams=2, length_penalty=-math.inf),
]


@pytest.mark.parametrize("kwargs", NON_FINITE, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_non_finite_numbers_are_refused_by_name(kwargs):
    name = next(k for k in kwargs if k not in ("do_sample", "num_beams"))
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number, got -?(nan|inf)"):
        GenerationConfig(**kwargs)
    cfg = GenerationConfig()
    with pytest.raises(ValueError, match=name):
        cfg.update(**kwargs)
    assert cfg == GenerationConfig()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=0.0),  # "greedy" spelled with temperature: a warning, as in transformers
        dict(temperature=0),
        dict(temperature=5.0),
        dict(do_sample=True, temperature=1e-6),
        dict(do_sample=True, temperature=100.0),
        dict(repetition_penalty=1e6),
        dict(repetition_penalty=0.01),
        dict(num_beams=2, length_penalty=-3.0),
        dict(length_penalty=0),
        dict(do_sample=True, min_p=0.0, top_p=1e-9, typical_p=1.0),
    ],
)
def test_finite_edge_values_pass_as_in_transformers(kwargs):
    HFGen(**kwargs).validate()  # transformers accepts them (at most with a warning) ...
    GenerationConfig(**kwargs)  # ... and so do we


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_beams=0), "num_beams must be an integer >= 1"),
        (dict(num_return_sequences=0), "num_return_sequences must be an integer >= 1"),
        (dict(eos_token_id="</s>"), "eos_token_id must be a token id or a list of token ids"),
        (dict(pad_token_id=1.5), "pad_token_id must be an integer"),
        (dict(suppress_tokens=[1, "a"]), "suppress_tokens must be a list of token ids"),
        (dict(stop_strings=[1]), "stop_strings must be a string or a list of strings"),
        (dict(max_length=-1), "max_length must be a non-negative integer"),
    ],
)
def test_other_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)


# Settings transformers warns about (legal, but ignored): ours warns too and does not raise.
HF_WARNINGS = [
    (dict(temperature=0.7), "temperature=0.7 (only used when do_sample=True)"),
    (dict(temperature=0.0), "temperature=0.0"),  # "greedy" spelled with temperature
    (dict(top_p=0.9), "top_p=0.9"),
    (dict(top_k=10), "top_k=10"),
    (dict(min_p=0.1), "min_p=0.1"),
    (dict(typical_p=0.5), "typical_p=0.5"),
    (dict(length_penalty=2.0), "length_penalty=2.0 (only used when num_beams>1)"),
    (dict(early_stopping=True), "early_stopping=True"),
    (dict(output_scores=True), "output_scores=True (only used when return_dict_in_generate=True)"),
    (dict(pad_token_id=-1), "pad_token_id=-1"),
]


@pytest.mark.parametrize("kwargs, message", HF_WARNINGS)
def test_ignored_settings_warn_as_in_transformers(kwargs, message, caplog):
    with caplog.at_level(logging.WARNING, logger="gpt2kit.generation.config"):
        GenerationConfig(**kwargs)
    assert message in caplog.text
    with pytest.raises(ValueError, match="GenerationConfig is invalid"):
        HFGen(**kwargs).validate(strict=True)  # transformers counts it as a minor issue, too


def test_valid_configs_are_silent(caplog):
    with caplog.at_level(logging.WARNING, logger="gpt2kit.generation.config"):
        GenerationConfig()
        GenerationConfig(do_sample=True, temperature=0.5, top_p=0.9, top_k=0, num_return_sequences=3)
        GenerationConfig(num_beams=4, length_penalty=0.5, early_stopping="never", num_return_sequences=4)
        GenerationConfig(top_p=1.0, min_p=None, typical_p=1.0, temperature=None)
    assert caplog.text == ""


# --- serialisation odds and ends --------------------------------------------------------------------------


def test_to_dict_to_json_string_and_repr():
    cfg = GenerationConfig(do_sample=True, top_p=0.9, custom=1)
    full = cfg.to_dict()
    assert set(OUR_FIELDS) <= set(full) and full["custom"] == 1
    assert json.loads(cfg.to_json_string()) == {"do_sample": True, "top_p": 0.9, "custom": 1}
    assert json.loads(cfg.to_json_string(use_diff=False)) == full
    assert repr(cfg).startswith("GenerationConfig {")
    assert GenerationConfig.from_dict(full) == cfg
    assert copy.deepcopy(cfg) == cfg and pickle.loads(pickle.dumps(cfg)) == cfg
    assert cfg != GenerationConfig(do_sample=True, top_p=0.8, custom=1)


def test_reading_a_config_does_not_import_torch(tmp_path):
    code = "import sys; from gpt2kit.generation import GenerationConfig; GenerationConfig(top_k=3); assert 'torch' not in sys.modules"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr


valid_settings = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": st.integers(1, 500),
        "min_new_tokens": st.integers(0, 10),
        "do_sample": st.just(True),
        "temperature": st.floats(0.05, 5.0),
        "top_k": st.integers(0, 100),
        "top_p": st.floats(0.01, 1.0),
        "min_p": st.floats(0.0, 1.0),
        "typical_p": st.floats(0.01, 1.0),
        "repetition_penalty": st.floats(0.5, 2.0),
        "no_repeat_ngram_size": st.integers(0, 5),
        "eos_token_id": st.integers(0, 50256) | st.lists(st.integers(0, 50256), min_size=1, max_size=3),
        "suppress_tokens": st.lists(st.integers(0, 100), max_size=3),
        "bad_words_ids": st.lists(
            st.lists(st.integers(0, 100), min_size=1, max_size=3), min_size=1, max_size=3
        ),
        "renormalize_logits": st.booleans(),
        "stop_strings": st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=2),
        "unknown_key": st.integers() | st.text(max_size=5),
    },
)


@settings(max_examples=30, deadline=None)
@given(valid_settings)
def test_round_trip_property(kwargs):
    kwargs["do_sample"] = True  # so every sampling setting is legal and silent
    ours = GenerationConfig(**kwargs)
    text = ours.to_json_string()
    assert GenerationConfig.from_dict(json.loads(text)) == ours
    assert_same_fields(ours, HFGen.from_dict(json.loads(text)))
