"""GPT2Config against transformers' GPT2Config (the oracle): defaults, aliases, labels, files both ways."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import warnings
from dataclasses import fields

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2kit.config import ACTIVATIONS, PRESETS, GPT2Config

HFConfig = transformers.GPT2Config

OUR_FIELDS = [f.name for f in fields(GPT2Config) if f.name != "extra"]

# The config.json the hub serves for openai-community/gpt2: legacy keys (n_ctx, task_specific_params)
# that neither library models must survive a load/save.
HUB_GPT2_CONFIG = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}


def assert_same_fields(ours: GPT2Config, theirs: HFConfig) -> None:
    """Every field we model has the value transformers reads for it."""
    for name in OUR_FIELDS:
        theirs_value = getattr(theirs, name)
        if name == "transformers_version" and theirs_value is None:
            continue  # metadata of a file: compared only when transformers read one too
        if isinstance(theirs_value, torch.dtype):  # transformers turns "float16" into torch.float16
            theirs_value = str(theirs_value).removeprefix("torch.")
        if name == "label2id":
            # transformers leaves label2id None (or stale) when only id2label is given; ours inverts id2label.
            assert ours.label2id == {v: k for k, v in ours.id2label.items()}
            assert theirs_value in (None, ours.label2id) or theirs.id2label != ours.id2label
            continue
        assert getattr(ours, name) == theirs_value, name
    assert ours.num_labels == theirs.num_labels
    for alias in ("hidden_size", "max_position_embeddings", "num_attention_heads", "num_hidden_layers"):
        assert getattr(ours, alias) == getattr(theirs, alias), alias


# --- defaults and names ---------------------------------------------------------------------------------


def test_defaults_match_transformers_field_by_field():
    assert_same_fields(GPT2Config(), HFConfig())


def test_every_transformers_gpt2_field_exists():
    # The GPT-2-specific keys of transformers' config.json (the ones its repr lists) are all ours too.
    hf_keys = set(json.loads(HFConfig().to_json_string())) - {"transformers_version"}
    assert hf_keys <= set(GPT2Config().to_dict())


def test_n_inner_none_means_four_times_n_embd():
    assert GPT2Config().n_inner is None
    assert GPT2Config(n_embd=64, n_head=4).inner_dim == 256
    assert GPT2Config(n_embd=64, n_head=4, n_inner=100).inner_dim == 100


def test_aliases_read_and_write_like_transformers():
    ours = GPT2Config(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=32)
    theirs = HFConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=32)
    assert (ours.n_embd, ours.n_head, ours.n_layer, ours.n_positions) == (64, 4, 3, 32)
    assert_same_fields(ours, theirs)
    ours.hidden_size, theirs.hidden_size = 128, 128
    ours.num_hidden_layers, theirs.num_hidden_layers = 5, 5
    assert (ours.n_embd, ours.n_layer) == (theirs.n_embd, theirs.n_layer) == (128, 5)


def test_alias_and_name_that_disagree_raise():
    with pytest.raises(ValueError, match="hidden_size=64 contradicts n_embd=128"):
        GPT2Config(hidden_size=64, n_embd=128)
    assert GPT2Config(hidden_size=64, n_embd=64, n_head=4).n_embd == 64


def test_dtype_spelling_of_transformers_5_is_accepted():
    assert GPT2Config(dtype="float16").torch_dtype == "float16"


@pytest.mark.parametrize("activation", ["relu", "silu", "gelu", "tanh", "gelu_new"])
def test_common_activations_accepted(activation):
    assert GPT2Config(activation_function=activation).activation_function == activation


def test_every_accepted_activation_is_known_to_transformers():
    from transformers.activations import ACT2FN

    assert [a for a in ACTIVATIONS if a not in ACT2FN] == []


# --- presets ----------------------------------------------------------------------------------------------

# (n_layer, n_head, n_embd) of the released checkpoints' config.json.
RELEASED = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
    "distilgpt2": (6, 12, 768),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_presets_load_offline(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder named like the preset
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = GPT2Config.from_pretrained(name)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == RELEASED[name]
    assert (cfg.vocab_size, cfg.n_positions, cfg.eos_token_id) == (50257, 1024, 50256)
    hub_id = "distilbert/distilgpt2" if name == "distilgpt2" else f"openai-community/{name}"
    assert GPT2Config.from_pretrained(hub_id) == cfg
    # Overrides apply on top of a preset, and the preset table itself is not changed by them.
    assert GPT2Config.from_pretrained(name, n_layer=2).n_layer == 2
    assert PRESETS[name]["n_layer"] == RELEASED[name][0]


# --- labels -----------------------------------------------------------------------------------------------

LABEL_CASES = [
    {},
    {"num_labels": 3},
    {"id2label": {0: "neg", 1: "neu", 2: "pos"}},
    {"id2label": {"0": "neg", "1": "pos"}},  # JSON spelling: string keys
    {"num_labels": 3, "id2label": {0: "a", 1: "b"}},  # transformers keeps id2label and warns
    {"id2label": {0: "a", 1: "b"}, "label2id": {"a": 0, "b": 1}},
]


@pytest.mark.parametrize("kwargs", LABEL_CASES, ids=lambda k: ",".join(k) or "default")
def test_label_maps_match_transformers(kwargs):
    ours, theirs = GPT2Config(**copy.deepcopy(kwargs)), HFConfig(**copy.deepcopy(kwargs))
    assert ours.num_labels == theirs.num_labels
    assert ours.id2label == theirs.id2label
    # Where transformers has no label2id (id2label given alone) ours is the inverse map.
    assert ours.label2id == (theirs.label2id or {v: k for k, v in theirs.id2label.items()})


def test_num_labels_setter_resizes_maps_like_transformers():
    ours, theirs = GPT2Config(id2label={0: "a", 1: "b"}), HFConfig(id2label={0: "a", 1: "b"})
    ours.num_labels = theirs.num_labels = 4
    assert ours.id2label == theirs.id2label and ours.label2id == theirs.label2id
    ours.num_labels = theirs.num_labels = 4  # same size: the maps stay
    assert ours.id2label == theirs.id2label


def test_from_pretrained_num_labels_override_like_transformers(tmp_path):
    GPT2Config(id2label={0: "neg", 1: "neu", 2: "pos"}).save_pretrained(tmp_path)
    for kwargs in ({}, {"num_labels": 5}, {"num_labels": 3}, {"id2label": {0: "x", 1: "y"}}):
        ours = GPT2Config.from_pretrained(tmp_path, **copy.deepcopy(kwargs))
        theirs = HFConfig.from_pretrained(tmp_path, **copy.deepcopy(kwargs))
        assert ours.id2label == theirs.id2label, kwargs
        # transformers keeps the file's label2id when only id2label is overridden; ours stays consistent.
        assert ours.label2id == {v: k for k, v in ours.id2label.items()}
    with pytest.raises(ValueError, match="num_labels=3 contradicts id2label with 2 labels"):
        GPT2Config.from_pretrained(tmp_path, num_labels=3, id2label={0: "x", 1: "y"})


# --- files, both directions -------------------------------------------------------------------------------


def test_ours_loads_in_transformers_with_same_values(tmp_path):
    ours = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_inner=96,
        activation_function="relu",
        eos_token_id=[50256, 198],
        pad_token_id=0,
        scale_attn_by_inverse_layer_idx=True,
        add_cross_attention=True,
        id2label={0: "neg", 1: "pos", 2: "neu"},
        problem_type="single_label_classification",
        architectures=["GPT2LMHeadModel"],
        my_key={"nested": [1, 2]},
    )
    written = ours.save_pretrained(tmp_path)
    assert written == tmp_path / "config.json"
    theirs = HFConfig.from_pretrained(tmp_path)
    assert_same_fields(ours, theirs)
    assert theirs.my_key == {"nested": [1, 2]}


def test_transformers_file_loads_in_ours_with_same_values(tmp_path):
    theirs = HFConfig(
        n_layer=3,
        n_embd=48,
        n_head=6,
        activation_function="gelu",
        layer_norm_epsilon=1e-6,
        num_labels=4,
        reorder_and_upcast_attn=True,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        their_key="kept",
        dtype="bfloat16",
    )
    theirs.save_pretrained(tmp_path)
    ours = GPT2Config.from_pretrained(tmp_path)
    assert_same_fields(ours, theirs)
    assert ours.their_key == "kept"
    assert "transformers_version" not in ours.extra  # metadata, not a setting: transformers rewrites it


def test_hub_config_json_round_trips_unknown_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(HUB_GPT2_CONFIG))
    ours = GPT2Config.from_pretrained(tmp_path / "config.json")  # a file path works too
    assert_same_fields(ours, HFConfig.from_pretrained(tmp_path))
    assert ours.n_ctx == 1024
    assert ours.task_specific_params["text-generation"]["max_length"] == 50

    ours.save_pretrained(tmp_path / "again")
    data = json.loads((tmp_path / "again" / "config.json").read_text())
    assert data["n_ctx"] == 1024 and data["task_specific_params"] == HUB_GPT2_CONFIG["task_specific_params"]
    assert GPT2Config.from_pretrained(tmp_path / "again") == ours
    # ... and through transformers and back.
    HFConfig.from_pretrained(tmp_path / "again").save_pretrained(tmp_path / "via-hf")
    assert GPT2Config.from_pretrained(tmp_path / "via-hf") == ours


def test_from_pretrained_overrides_a_folder(tmp_path):
    GPT2Config(n_layer=2, n_embd=64, n_head=4).save_pretrained(tmp_path)
    cfg = GPT2Config.from_pretrained(tmp_path, n_layer=5, use_cache=False, new_key=1)
    assert (cfg.n_layer, cfg.n_embd, cfg.use_cache, cfg.new_key) == (5, 64, False, 1)


def test_save_pretrained_creates_folder_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b"
    GPT2Config().save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="needs a folder"):
        GPT2Config().save_pretrained(tmp_path / "file")


def test_to_dict_to_json_string_and_repr():
    cfg = GPT2Config(num_labels=3, foo="bar")
    d = cfg.to_dict()
    assert d["model_type"] == "gpt2" and d["foo"] == "bar"
    # As transformers' to_dict: ids stay ints; JSON turns them into strings, and loading turns them back.
    assert d["id2label"] == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert d["id2label"] == HFConfig(num_labels=3).to_dict()["id2label"]
    full = json.loads(cfg.to_json_string(use_diff=False))
    assert full["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    assert GPT2Config.from_dict(full) == cfg
    # The default JSON is the diff against the defaults, as transformers writes config.json.
    assert json.loads(cfg.to_json_string()) == json.loads(json.dumps(cfg.to_diff_dict()))
    d["n_layer"] = 99  # a copy: changing it leaves the config alone
    assert cfg.n_layer == 12
    text = repr(cfg)
    assert text.startswith("GPT2Config {")  # transformers' shape: class name, then the JSON
    assert json.loads(text[len("GPT2Config ") :])["n_embd"] == 768


def test_copy_pickle_and_equality():
    cfg = GPT2Config(n_layer=2, extra_thing=[1])
    assert copy.deepcopy(cfg) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert cfg != GPT2Config(n_layer=3, extra_thing=[1])
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = cfg.missing


small_ints = st.integers(min_value=1, max_value=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_head=small_ints,
    head_dim=small_ints,
    n_layer=small_ints,
    n_inner=st.none() | st.integers(1, 64),
    activation=st.sampled_from(ACTIVATIONS),
    pdrop=st.floats(0.0, 1.0),
    eps=st.floats(1e-12, 1e-1),
    eos=st.integers(0, 50256) | st.lists(st.integers(0, 50256), min_size=1, max_size=3),
    labels=st.integers(1, 5),
    extra=st.dictionaries(st.sampled_from(["alpha", "beta", "gamma"]), st.integers() | st.text(max_size=5)),
)
def test_round_trip_property(n_head, head_dim, n_layer, n_inner, activation, pdrop, eps, eos, labels, extra):
    kwargs = dict(
        n_head=n_head,
        n_embd=n_head * head_dim,
        n_layer=n_layer,
        n_inner=n_inner,
        activation_function=activation,
        resid_pdrop=pdrop,
        layer_norm_epsilon=eps,
        eos_token_id=eos,
        num_labels=labels,
        **extra,
    )
    cfg = GPT2Config(**kwargs)
    again = GPT2Config.from_dict(json.loads(cfg.to_json_string()))
    assert again == cfg
    assert_same_fields(again, HFConfig.from_dict(json.loads(cfg.to_json_string())))


# --- validation and errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(activation_function="gelu_newest"), "activation_function"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(n_positions=-1), "n_positions"),
        (dict(n_embd=0), "n_embd"),
        (dict(n_layer=0), "n_layer"),
        (dict(n_head=0), "n_head"),
        (dict(n_layer=2.5), "n_layer"),
        (dict(n_layer=True), "n_layer"),
        (dict(n_inner=0), "n_inner"),
        (dict(resid_pdrop=1.5), "resid_pdrop"),
        (dict(attn_pdrop=-0.1), "attn_pdrop"),
        (dict(layer_norm_epsilon=0), "layer_norm_epsilon"),
        (dict(summary_type="max"), "summary_type"),
        (dict(problem_type="ranking"), "problem_type"),
    ],
)
def test_invalid_values_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"GPT2Config\.{field}"):
        GPT2Config(**kwargs)


def test_divisibility_is_checked_by_the_model_and_says_how_to_fix():
    # As transformers: the config itself is valid (ConfigTester builds n_embd=37 with 12 heads); a model
    # built from it is not.
    from gpt2kit import GPT2Model

    assert GPT2Config(n_embd=100).n_embd == HFConfig(n_embd=100).n_embd == 100
    with pytest.raises(ValueError, match=r"n_embd \(100\) must be divisible by n_head \(12\)"):
        GPT2Model(GPT2Config(n_embd=100, n_layer=1))


def test_missing_and_broken_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model") as err:
        GPT2Config.from_pretrained(str(missing))
    assert "config.json" in str(err.value)

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no config\.json"):
        GPT2Config.from_pretrained(tmp_path / "empty")

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        GPT2Config.from_pretrained(tmp_path / "bad")
    with pytest.raises(ValueError, match="is not valid JSON"):
        GPT2Config.from_pretrained(tmp_path / "bad" / "config.json")

    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        GPT2Config.from_pretrained(tmp_path / "list.json")

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' model, not GPT-2"):
        GPT2Config.from_pretrained(tmp_path / "bert")


# --- the attributes every transformers config has (issue 13, item 3A) ------------------------------------

from gpt2kit.config import COMMON_DEFAULTS, GENERATION_DEFAULTS  # noqa: E402

# transformers' config attributes gpt2kit leaves out on purpose: hub uploads and auto-class registration
# (gpt2kit saves folders; huggingface_hub pushes them), the deprecated composite-config constructors, and
# transformers' private helpers of those.
NOT_PROVIDED = {
    "push_to_hub",
    "register_for_auto_class",
    "from_text_audio_configs",
    "from_text_vision_configs",
    "_create_repo",
    "_upload_modified_files",
    "_get_files_timestamps",
    "_set_token_in_kwargs",
    "_get_config_dict",
    "_remove_keys_not_serialized",
    "_output_attentions",
}

# Configs that exercise the common attributes: labels, legacy generation settings, tokenizer hints, the
# encoder-decoder flags, pruned heads (int keys), dtype, and unknown keys.
PARITY_CASES = [
    {},
    {"num_labels": 3, "problem_type": "regression"},
    {"max_length": 50, "num_beams": 4, "do_sample": True, "top_k": 0, "bad_words_ids": [[1, 2]]},
    {"sep_token_id": 3, "decoder_start_token_id": 4, "pad_token_id": 0, "bos_token_id": None},
    {"tokenizer_class": "GPT2TokenizerFast", "prefix": "> ", "finetuning_task": "sst2"},
    {"task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}},
    {
        "is_decoder": True,
        "add_cross_attention": True,
        "cross_attention_hidden_size": 16,
        "tie_encoder_decoder": True,
    },
    {"pruned_heads": {1: [0, 2]}, "chunk_size_feed_forward": 4, "torchscript": True, "use_bfloat16": True},
    {"dtype": "bfloat16", "tf_legacy_loss": True, "my_key": [1, {"a": 2}]},
    {"torch_dtype": "float16", "suppress_tokens": [5], "exponential_decay_length_penalty": [4, 1.5]},
]


def _without_version(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "transformers_version"}


def test_every_transformers_config_attribute_exists_with_its_value():
    ours, theirs = GPT2Config(), HFConfig()
    missing = [a for a in dir(theirs) if not a.startswith("__") and not hasattr(ours, a)]
    assert sorted(set(missing) - NOT_PROVIDED) == []
    for name in COMMON_DEFAULTS:
        theirs_value = getattr(theirs, name)
        assert getattr(ours, name) == theirs_value, name
    for name in (
        "attribute_map",
        "keys_to_ignore_at_inference",
        "model_type",
        "is_encoder_decoder",
        "name_or_path",
    ):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours._attn_implementation is theirs._attn_implementation is None
    assert ours.get_text_config() is ours and theirs.get_text_config() is theirs


def test_our_default_tables_are_transformers_own():
    assert transformers.PretrainedConfig._get_global_generation_defaults() == GENERATION_DEFAULTS
    base = transformers.PretrainedConfig().to_dict()
    base["output_attentions"] = base.pop("output_attentions", False)
    assert {k: base[k] for k in COMMON_DEFAULTS} == COMMON_DEFAULTS
    # Everything a bare PretrainedConfig writes is in the table, except the two keys every file carries.
    assert set(base) - set(COMMON_DEFAULTS) == {"model_type", "transformers_version"}


@pytest.mark.parametrize("kwargs", PARITY_CASES, ids=lambda k: ",".join(k) or "default")
def test_to_dict_and_to_diff_dict_match_transformers(kwargs):
    ours, theirs = GPT2Config(**copy.deepcopy(kwargs)), HFConfig(**copy.deepcopy(kwargs))
    assert _without_version(ours.to_dict()) == _without_version(theirs.to_dict())
    assert _without_version(ours.to_diff_dict()) == _without_version(theirs.to_diff_dict())
    assert ours._get_non_default_generation_parameters() == theirs._get_non_default_generation_parameters()
    assert ours.use_return_dict == theirs.use_return_dict
    assert_same_fields(ours, theirs)


@pytest.mark.parametrize("kwargs", PARITY_CASES, ids=lambda k: ",".join(k) or "default")
def test_files_round_trip_both_ways_attribute_by_attribute(kwargs, tmp_path):
    ours, theirs = GPT2Config(**copy.deepcopy(kwargs)), HFConfig(**copy.deepcopy(kwargs))
    ours.save_pretrained(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers warns about legacy generation settings; tested below
        theirs.save_pretrained(tmp_path / "theirs")
    ours_file = json.loads((tmp_path / "ours" / "config.json").read_text())
    theirs_file = json.loads((tmp_path / "theirs" / "config.json").read_text())
    # The same file, but for the version stamp and the older dtype spelling we add for transformers < 4.56.
    if ours_file.get("dtype") is not None:
        assert ours_file.pop("torch_dtype") == ours_file["dtype"]
    assert _without_version(ours_file) == _without_version(theirs_file)
    for folder in ("ours", "theirs"):
        a, b = GPT2Config.from_pretrained(tmp_path / folder), HFConfig.from_pretrained(tmp_path / folder)
        assert_same_fields(a, b)
        assert a == ours
        assert _without_version(a.to_dict()) == _without_version(b.to_dict())
        assert a.transformers_version == b.transformers_version


def test_generation_settings_in_the_model_config_warn_on_save(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gpt2kit.config"):
        GPT2Config(max_length=50, num_beams=2).save_pretrained(tmp_path)
    assert "non-default generation parameters" in caplog.text and "'max_length': 50" in caplog.text
    with pytest.warns(UserWarning, match="non-default generation parameters"):  # transformers' warning
        HFConfig(max_length=50, num_beams=2).save_pretrained(tmp_path / "hf")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gpt2kit.config"):
        GPT2Config(max_length=None).save_pretrained(tmp_path / "none")  # None: left to the generation config
    assert caplog.text == ""
    # ... and they still reach generate() through the generation config derived from the model config.
    from gpt2kit.generation.config import GenerationConfig

    assert GenerationConfig.from_model_config(GPT2Config.from_pretrained(tmp_path)).max_length == 50


def test_model_save_moves_generation_settings_like_transformers(tmp_path):
    import gpt2kit
    from hf_oracle import hf_model

    hf_model("GPT2LMHeadModel").save_pretrained(tmp_path / "src")
    ours = gpt2kit.GPT2LMHeadModel.from_pretrained(tmp_path / "src", max_length=30, num_beams=2)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "src", max_length=30, num_beams=2)
    ours.save_pretrained(tmp_path / "ours")
    with pytest.warns(UserWarning, match="Moving the following attributes"):
        theirs.save_pretrained(tmp_path / "theirs")
    for name in ("config.json", "generation_config.json"):
        a = json.loads((tmp_path / "ours" / name).read_text())
        b = json.loads((tmp_path / "theirs" / name).read_text())
        a.pop("torch_dtype", None)
        assert _without_version(a) == _without_version(b), name
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["max_length"] is None


def test_attn_implementation_is_recorded_and_checked(tmp_path):
    import gpt2kit
    from hf_oracle import hf_model

    for value in ("eager", "sdpa"):
        ours, theirs = GPT2Config(attn_implementation=value), HFConfig(attn_implementation=value)
        assert ours._attn_implementation == theirs._attn_implementation == value
        assert "attn_implementation" not in ours.to_dict() and "_attn_implementation" not in ours.to_dict()
    GPT2Config(n_layer=2, n_embd=32, n_head=4).save_pretrained(tmp_path)
    assert GPT2Config.from_pretrained(tmp_path, attn_implementation="eager")._attn_implementation == "eager"
    with pytest.raises(ValueError, match=r"'flash_attention_2' is not available.*'sdpa'.*'eager'"):
        GPT2Config(attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="flash_attention_2"):
        GPT2Config.from_pretrained(tmp_path, attn_implementation="flash_attention_2")

    # Models: the config's choice, else "sdpa" recorded on the config, as transformers does on init.
    cfg, hf_cfg = GPT2Config(n_layer=1, n_embd=32, n_head=4), HFConfig(n_layer=1, n_embd=32, n_head=4)
    gpt2kit.GPT2LMHeadModel(cfg), transformers.GPT2LMHeadModel(hf_cfg)
    assert cfg._attn_implementation == hf_cfg._attn_implementation == "sdpa"
    eager = gpt2kit.GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=4, attn_implementation="eager"))
    assert eager.attn_implementation == "eager"

    hf_model("GPT2LMHeadModel").save_pretrained(tmp_path / "m")
    for value in ("eager", "sdpa"):
        ours = gpt2kit.GPT2LMHeadModel.from_pretrained(tmp_path / "m", attn_implementation=value)
        theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "m", attn_implementation=value)
        assert ours.config._attn_implementation == theirs.config._attn_implementation == value
        assert ours.transformer.attn_implementation == value
        assert ours.config.name_or_path == theirs.config.name_or_path == str(tmp_path / "m")
    with pytest.raises(ValueError, match="flash_attention_2.*use 'sdpa'"):
        gpt2kit.GPT2LMHeadModel.from_pretrained(tmp_path / "m", attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="flash_attention_2"):
        ours.set_attn_implementation("flash_attention_2")


def test_dtype_and_torch_dtype_spellings_like_transformers():
    assert GPT2Config(torch_dtype="float16").dtype == "float16"
    assert GPT2Config(dtype=torch.bfloat16).dtype == "bfloat16"  # a torch dtype is stored by name
    # Both given: dtype wins, as in transformers 4.57.
    assert GPT2Config(dtype="float16", torch_dtype="bfloat16").dtype == "float16"
    assert HFConfig(dtype="float16", torch_dtype="bfloat16").dtype == torch.float16
    cfg = GPT2Config()
    cfg.torch_dtype = torch.float16
    assert cfg.dtype == cfg.torch_dtype == "float16" and cfg.to_dict()["dtype"] == "float16"
    assert "torch_dtype" not in cfg.to_dict() and "torch_dtype" not in cfg.extra


def test_ids_from_json_strings_become_ints_like_transformers(tmp_path):
    data = {
        "id2label": {"0": "neg", "1": "pos"},
        "label2id": {"neg": 0, "pos": 1},
        "pruned_heads": {"0": [1]},
    }
    (tmp_path / "config.json").write_text(json.dumps({**HUB_GPT2_CONFIG, **data}))
    ours, theirs = GPT2Config.from_pretrained(tmp_path), HFConfig.from_pretrained(tmp_path)
    assert ours.id2label == theirs.id2label == {0: "neg", 1: "pos"}
    assert ours.pruned_heads == theirs.pruned_heads == {0: [1]}
    assert ours.to_dict()["id2label"] == theirs.to_dict()["id2label"]


def test_update_update_from_string_and_new_attributes_like_transformers():
    ours, theirs = GPT2Config(), HFConfig()
    for cfg in (ours, theirs):
        cfg.update({"n_layer": 3, "max_length": 40, "new_key": "x"})
        cfg.update_from_string("n_embd=96,resid_pdrop=0.2,scale_attn_weights=false,summary_type=mean")
        cfg.my_attribute = [1, 2]  # a new attribute is part of the config, and saved with it
    assert _without_version(ours.to_dict()) == _without_version(theirs.to_dict())
    assert ours.my_attribute == [1, 2] and ours.to_diff_dict()["my_attribute"] == [1, 2]
    assert "new_key" in ours and "new_key" in theirs
    with pytest.raises(ValueError, match="'nope' isn't in the original config"):
        ours.update_from_string("nope=1")
    with pytest.raises(ValueError, match="can't derive true or false"):
        ours.update_from_string("use_cache=maybe")
    with pytest.raises(TypeError, match="only int, float, bool or string"):
        ours.update_from_string("n_inner=5")  # None now: transformers cannot tell its type either
    # A value that cannot describe a model is refused, and the config stays as it was.
    with pytest.raises(ValueError, match=r"GPT2Config\.n_head must be a positive integer"):
        ours.update({"n_layer": 7, "n_head": 0})
    assert (ours.n_layer, ours.n_head) == (3, 12)


def test_torchscript_turns_off_return_dict_like_transformers():
    for kwargs in ({}, {"torchscript": True}, {"return_dict": False}):
        assert GPT2Config(**kwargs).use_return_dict == HFConfig(**kwargs).use_return_dict


def test_get_config_dict_and_download_arguments(tmp_path):
    HFConfig(n_layer=3, n_embd=48, n_head=6).save_pretrained(tmp_path)
    kwargs = dict(cache_dir=str(tmp_path / "c"), force_download=False, token=None, n_layer=2, foo=1)
    ours = GPT2Config.get_config_dict(tmp_path, **kwargs)
    theirs = HFConfig.get_config_dict(tmp_path, **kwargs)
    theirs[0].pop("_commit_hash")  # transformers' hub bookkeeping
    assert ours[0] == theirs[0] == json.loads((tmp_path / "config.json").read_text())
    assert ours[1] == {"n_layer": 2, "foo": 1}
    # Download arguments are accepted and never become config values.
    cfg = GPT2Config.from_pretrained(
        tmp_path, cache_dir="x", token="t", force_download=True, trust_remote_code=True
    )
    assert not cfg.extra and cfg.n_layer == 3
    # return_unused_kwargs as transformers: unknown overrides come back instead of being stored.
    cfg, unused = GPT2Config.from_pretrained(tmp_path, n_layer=2, foo=1, return_unused_kwargs=True)
    hf_cfg, hf_unused = HFConfig.from_pretrained(tmp_path, n_layer=2, foo=1, return_unused_kwargs=True)
    assert unused == hf_unused == {"foo": 1} and cfg.n_layer == hf_cfg.n_layer == 2 and "foo" not in cfg
    # A subfolder, as transformers' subfolder= argument.
    HFConfig(n_layer=5, n_embd=48, n_head=6).save_pretrained(tmp_path / "sub")
    assert GPT2Config.from_pretrained(tmp_path, subfolder="sub").n_layer == 5


def test_to_json_file_writes_the_diff_or_everything(tmp_path):
    cfg = GPT2Config(n_layer=2, max_length=30)
    cfg.to_json_file(tmp_path / "diff.json")
    cfg.to_json_file(tmp_path / "full.json", use_diff=False)
    HFConfig(n_layer=2, max_length=30).to_json_file(tmp_path / "hf.json")
    diff = json.loads((tmp_path / "diff.json").read_text())
    assert _without_version(diff) == _without_version(json.loads((tmp_path / "hf.json").read_text()))
    assert "top_k" not in diff and json.loads((tmp_path / "full.json").read_text())["top_k"] == 50
    assert (
        GPT2Config.from_json_file(tmp_path / "diff.json")
        == cfg
        == GPT2Config.from_json_file(tmp_path / "full.json")
    )
