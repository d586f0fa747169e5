"""LoRA adapters in PEFT's format: train a low-rank update of GPT-2's projections, save it as peft does, load
what peft saved, fold it into the weights.

A LoRA layer adds a trainable update of rank r to a frozen projection (Hu et al., 2021):

    y = x @ W + b + dropout(x) @ A^T @ B^T * scaling      W (in, out), A (r, in), B (out, r)

with scaling = alpha / r (alpha / sqrt(r) with use_rslora). A starts as nn.Linear's default (Kaiming
uniform), B at zero, so training starts exactly from the base model; only A and B (and, with bias="all" /
"lora_only", biases) are trained.

The files are peft's, so `peft.PeftModel.from_pretrained(transformers_model, folder)` loads what gpt2kit
writes and `load_adapter` loads what peft writes: `adapter_config.json` (peft's LoraConfig fields: peft_type
"LORA", task_type, r, lora_alpha, lora_dropout, target_modules, fan_in_fan_out, bias, ...) and
`adapter_model.safetensors`, whose keys are the model's own names under `base_model.model.`
(`base_model.model.transformer.h.0.attn.c_attn.lora_A.weight`); a trained bias of an adapted layer is
`...c_attn.base_layer.bias`, as peft names it.

fan_in_fan_out: GPT-2 stores its projections (in, out) (transformers' Conv1D, gpt2kit's Linear), which peft
records as fan_in_fan_out=True. A and B have the same shapes whatever the layout; the layout only decides
how the update is folded into W: (B @ A)^T here, B @ A for an (out, in) nn.Linear.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpt2kit.model.dropout import Dropout
from gpt2kit.model.linear import Linear

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # peft's PeftModel -> LoraModel -> the model: keys carry both levels
BIASES = ("none", "all", "lora_only")
ALL_LINEAR = "all-linear"
PROJECTIONS = ("c_attn", "c_proj", "c_fc", "q_attn")  # every gpt2kit Linear of GPT-2's blocks

# peft LoraConfig fields with a meaning gpt2kit does not implement, and the value that means "not used".
_UNSUPPORTED = {
    "use_dora": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "exclude_modules": None,
    "lora_bias": False,
    "layer_replication": None,
    "target_parameters": None,
    "trainable_token_indices": None,
    "alora_invocation_tokens": None,
}


@dataclass
class LoraConfig:
    """What to adapt and how: peft's LoraConfig under shorter names (alpha = peft's lora_alpha, dropout =
    lora_dropout; both are also readable under peft's names).

    target_modules: module names as peft matches them: a list matches a module whose name is, or ends with
    ".", an entry ("c_proj" matches attn.c_proj and mlp.c_proj); a string is a regular expression the whole
    name must match (r"transformer\\.h\\.[01]\\.attn\\.c_attn"); "all-linear" is every block projection.
    bias: "none", "all" (every bias of the model is trained and saved), "lora_only" (the adapted layers'
    biases). rank_pattern / alpha_pattern: per-module r and alpha, keyed by regular expressions matched
    against the end of a module's name, as peft does.

    >>> LoraConfig(r=8, alpha=16, target_modules=["c_attn", "c_proj"]).scaling_for("transformer.h.0.attn.c_attn")
    2.0
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: ["c_attn"])
    fan_in_fan_out: bool = True  # GPT-2's projections store W as (in, out); see the module docstring
    bias: str = "none"
    use_rslora: bool = False  # scaling alpha / sqrt(r) instead of alpha / r
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (set, frozenset)):  # peft keeps a set; JSON needs a list
            self.target_modules = sorted(self.target_modules)
        elif isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        _check_rank("r", self.r)
        for key, r in self.rank_pattern.items():
            _check_rank(f"rank_pattern[{key!r}]", r)
        alphas = [("alpha", self.alpha)] + [
            (f"alpha_pattern[{k!r}]", a) for k, a in self.alpha_pattern.items()
        ]
        for name, alpha in alphas:
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
                raise ValueError(
                    f"LoraConfig.{name}={alpha!r} is invalid: it must be a positive number (alpha / r scales "
                    "the update; alpha = 2 * r is common)"
                )
        p = self.dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(
                f"LoraConfig.dropout={self.dropout!r} is invalid: it must be in [0, 1), e.g. 0.05"
            )
        if self.bias not in BIASES:
            raise ValueError(f"LoraConfig.bias={self.bias!r} is unknown; choose one of {BIASES}")
        if not isinstance(self.fan_in_fan_out, bool):
            raise TypeError(f"LoraConfig.fan_in_fan_out must be True or False, got {self.fan_in_fan_out!r}")
        targets = self.target_modules
        if isinstance(targets, str):
            if targets != ALL_LINEAR:
                try:
                    re.compile(targets)
                except re.error as e:
                    raise ValueError(
                        f"LoraConfig.target_modules={targets!r} is not a valid regular expression ({e}); pass "
                        "a list of names instead, e.g. ['c_attn', 'c_proj']"
                    ) from None
        elif not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(
                f"LoraConfig.target_modules={targets!r} is invalid: name the layers to adapt, e.g. "
                f"['c_attn'] or ['c_attn', 'c_proj', 'c_fc'] (GPT-2's projections: {', '.join(PROJECTIONS)})"
            )
        else:
            # A name matches by its last part, so one that does not end in a projection can never match.
            wrong = [t for t in targets if t.rpartition(".")[2] not in PROJECTIONS]
            if wrong:
                raise ValueError(
                    f"LoraConfig.target_modules: {', '.join(map(repr, wrong))} is not a GPT-2 projection; "
                    f"gpt2kit's LoRA adapts {', '.join(PROJECTIONS)} (or a path ending in one, like "
                    "'attn.c_proj'), e.g. target_modules=['c_attn', 'c_proj']"
                )

    # peft's names, for code written against peft.LoraConfig
    @property
    def lora_alpha(self) -> float:
        return self.alpha

    @property
    def lora_dropout(self) -> float:
        return self.dropout

    def targets(self, name: str) -> bool:
        """Whether the module called `name` (e.g. "transformer.h.0.attn.c_attn") is adapted, by peft's rule."""
        if self.target_modules == ALL_LINEAR:
            return name.rpartition(".")[2] in PROJECTIONS
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, name) is not None
        return any(name == t or name.endswith("." + t) for t in self.target_modules)

    def rank_for(self, name: str) -> int:
        return _by_pattern(self.rank_pattern, name, self.r)

    def scaling_for(self, name: str) -> float:
        r, alpha = self.rank_for(name), _by_pattern(self.alpha_pattern, name, self.alpha)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def to_peft_dict(self, base_model_name_or_path: str | None, task_type: str | None) -> dict[str, Any]:
        """adapter_config.json as peft writes it: every field since peft 0.10 that bears on LoRA, under peft's
        names (later peft versions fill in their newer fields with defaults; older ones would refuse them)."""
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return {
            "peft_type": "LORA",
            "task_type": task_type,
            "base_model_name_or_path": base_model_name_or_path or None,
            "revision": None,
            "inference_mode": True,  # peft writes True whatever the model's mode was
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": targets,
            "fan_in_fan_out": self.fan_in_fan_out,
            "bias": self.bias,
            "use_rslora": self.use_rslora,
            "use_dora": False,
            "init_lora_weights": True,
            "modules_to_save": None,
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "auto_mapping": None,
        }

    @classmethod
    def from_peft_dict(cls, d: dict[str, Any], source: str = "the adapter config") -> LoraConfig:
        """A LoraConfig from adapter_config.json's fields (written by peft or gpt2kit); features gpt2kit does
        not implement are refused by name."""
        if d.get("peft_type", "LORA") != "LORA":
            raise ValueError(
                f"{source} is a {d.get('peft_type')} adapter; gpt2kit loads LoRA adapters only (peft_type 'LORA')"
            )
        for key, unused in _UNSUPPORTED.items():
            value = d.get(key, unused)
            if value not in (unused, [], {}):
                raise ValueError(
                    f"{source} sets {key}={value!r}, which gpt2kit's LoRA does not implement; load this adapter "
                    "with peft, or merge it there (PeftModel.merge_and_unload) and load the merged model"
                )
        targets = d.get("target_modules")
        if targets is None:
            targets = ["c_attn"]  # peft's default for GPT-2 when none are named
        return cls(
            r=d.get("r", 8),
            alpha=d.get("lora_alpha", 8),
            dropout=d.get("lora_dropout", 0.0),
            target_modules=targets,
            fan_in_fan_out=bool(d.get("fan_in_fan_out", False)),
            bias=d.get("bias", "none"),
            use_rslora=bool(d.get("use_rslora", False)),
            rank_pattern=dict(d.get("rank_pattern") or {}),
            alpha_pattern=dict(d.get("alpha_pattern") or {}),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraConfig:
        """From to_dict()'s fields (TrainingConfig's JSON); unknown keys are an error naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LoraConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)


def _check_rank(name: str, r: Any) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoraConfig.{name}={r!r} is invalid: the rank must be a positive integer, e.g. 8")


def _by_pattern(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """peft's rule for rank_pattern / alpha_pattern: the first key that matches the end of the module name
    (at a dot boundary), as a regular expression."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?(?:{key})$", name):
            return value
    return default


# --- the layer ----------------------------------------------------------------------------------------------


class LoraLinear(nn.Module):
    """A GPT-2 projection (weight (in, out), frozen) plus a low-rank update: y = x @ W + b + dropout(x) @ A^T @
    B^T * scaling. Holds the projection's own `weight` and `bias` parameters under their names, so the model's
    state-dict keys are unchanged and the adapter's are `<layer>.lora_A.weight` (r, in) and
    `<layer>.lora_B.weight` (out, r), as in peft.

    Not a subclass of Linear on purpose: pack_weights and quantize_int8 replace Linear layers by the base
    weight alone, which would drop the adapter silently; a LoraLinear stays as it is (merge first for speed).
    """

    def __init__(self, base: Linear, r: int, scaling: float, dropout: float) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **like)  # Kaiming uniform, as peft
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **like)
        nn.init.zeros_(self.lora_B.weight)  # the update starts at zero: training starts from the base model
        self.lora_dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r = r
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        # The frozen product: Linear's own forward (its measured kernel) on this layer's W and b.
        y = Linear.forward(self, x)
        A = self.lora_A.weight
        return y + self.lora_B(self.lora_A(self.lora_dropout(x).to(A.dtype))).to(y.dtype) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The update in W's (in, out) layout, in float32: (B @ A)^T * scaling."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()).t() * self.scaling

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, scaling={self.scaling:g}"


# --- adding, reading and removing adapters ------------------------------------------------------------------


def has_adapter(model: nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None))


def adapter_config(model: nn.Module) -> LoraConfig:
    if not has_adapter(model):
        raise ValueError(
            "the model has no adapter; add one with model.add_adapter(LoraConfig(...)) or load one with "
            "model.load_adapter(folder)"
        )
    return model.peft_config["default"]


def add_adapter(model: nn.Module, config: LoraConfig, adapter_name: str | None = None) -> nn.Module:
    """Replace the targeted projections of `model` by LoraLinear layers, in place, and make only the adapter
    (and the biases bias= names) trainable. Returns the model.

    The config is kept as `model.peft_config["default"]`, as transformers' PeftAdapterMixin keeps it; with
    target_modules="all-linear" it holds the names that matched, as peft records them.

    >>> model = add_adapter(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4)), LoraConfig(r=4))  # doctest: +SKIP
    """
    if isinstance(config, dict):
        config = LoraConfig.from_dict(config)
    if not isinstance(config, LoraConfig):
        raise TypeError(
            f"add_adapter needs a gpt2kit.LoraConfig, got {type(config).__name__}; a peft.LoraConfig's "
            "fields convert with gpt2kit.LoraConfig.from_peft_dict(peft_config.to_dict())"
        )
    if adapter_name not in (None, "default"):
        raise ValueError(
            f"adapter_name={adapter_name!r}: gpt2kit holds one adapter per model, named 'default'; leave "
            "adapter_name out"
        )
    if has_adapter(model):
        raise ValueError(
            "the model already has an adapter; gpt2kit holds one at a time. Merge it (merge_and_unload), drop "
            "it (gpt2kit.model.lora.unload(model, merge=False)) or start from a freshly loaded base model"
        )
    matched = [(name, m) for name, m in model.named_modules() if name and config.targets(name)]
    wrong = [f"{name} ({type(m).__name__})" for name, m in matched if not isinstance(m, Linear)]
    if wrong:
        raise ValueError(
            f"target_modules={config.target_modules!r} matches {', '.join(wrong[:3])}"
            f"{' ...' if len(wrong) > 3 else ''}; gpt2kit's LoRA adapts GPT-2's block projections only "
            f"({', '.join(PROJECTIONS)}): name those, e.g. ['c_attn', 'c_proj']"
        )
    if not matched:
        raise ValueError(
            f"target_modules={config.target_modules!r} matches no layer of this {type(model).__name__}; "
            f"GPT-2's projections are {', '.join(PROJECTIONS)} (e.g. target_modules=['c_attn'])"
        )
    if not config.fan_in_fan_out:
        # peft does the same: the layout is a fact of the layer (Conv1D stores (in, out)), not a choice.
        logger.warning(
            "fan_in_fan_out=False does not fit GPT-2's projections, which store their weight (in, out) "
            "(transformers' Conv1D); setting fan_in_fan_out=True, as peft does"
        )
    names = sorted({name.rpartition(".")[2] for name, _ in matched})
    targets = names if config.target_modules == ALL_LINEAR else config.target_modules
    config = dataclasses.replace(config, fan_in_fan_out=True, target_modules=targets)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = []
    for name, base in matched:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = LoraLinear(base, config.rank_for(name), config.scaling_for(name), config.dropout)
        layer.train(base.training)
        setattr(parent, child, layer)
        layers.append(layer)
    for layer in layers:
        layer.lora_A.weight.requires_grad_(True)
        layer.lora_B.weight.requires_grad_(True)
    if config.bias == "all":
        for name, p in model.named_parameters():
            if "bias" in name:  # peft's test, on the parameter's full name
                p.requires_grad_(True)
    elif config.bias == "lora_only":
        for layer in layers:
            layer.bias.requires_grad_(True)
    model.peft_config = {"default": config}
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the model's own names: every lora_A / lora_B weight, and the biases that
    bias= trains. What save_adapter writes (under peft's names) and a Trainer checkpoint holds."""
    config = adapter_config(model)
    layers = {name for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    state = {}
    for name, p in model.named_parameters():
        module, _, leaf = name.rpartition(".")
        adapter = module.endswith((".lora_A", ".lora_B")) and module.rpartition(".")[0] in layers
        trained_bias = (config.bias == "all" and "bias" in name) or (
            config.bias == "lora_only" and leaf == "bias" and module in layers
        )
        if adapter or trained_bias:
            state[name] = p
    return state


def _to_peft_key(name: str, layers: set[str]) -> str:
    module, _, leaf = name.rpartition(".")
    if leaf == "bias" and module in layers:
        name = f"{module}.base_layer.bias"  # peft keeps an adapted layer's own parameters under base_layer
    return PEFT_PREFIX + name


def _from_peft_key(key: str) -> str:
    return key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def task_type(model: nn.Module) -> str | None:
    """peft's task_type for the model's class: what PeftModel.from_pretrained wraps it in."""
    return {"GPT2LMHeadModel": "CAUSAL_LM", "GPT2Model": "FEATURE_EXTRACTION"}.get(type(model).__name__)


def save_adapter(model: nn.Module, save_directory: str | os.PathLike) -> Path:
    """Write the adapter as peft does: adapter_config.json and adapter_model.safetensors (each written to a
    temporary name, then renamed). What model.save_pretrained writes while the model holds an adapter."""
    from safetensors.torch import save_file

    from gpt2kit.data import atomic_write_text, file_mode

    config = adapter_config(model)
    folder = Path(save_directory)
    if folder.is_file():
        raise ValueError(f"save_pretrained needs a folder, but {folder} is a file")
    folder.mkdir(parents=True, exist_ok=True)
    layers = {name for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    state = {_to_peft_key(k, layers): v.detach().contiguous() for k, v in adapter_state_dict(model).items()}
    path, tmp = folder / ADAPTER_WEIGHTS, folder / f".{ADAPTER_WEIGHTS}.tmp"
    mode = file_mode(path)
    try:
        save_file(state, tmp, metadata={"format": "pt"})
        os.chmod(tmp, mode)  # safetensors creates 0o600 files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    peft_dict = config.to_peft_dict(getattr(model, "name_or_path", None), task_type(model))
    atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(peft_dict, indent=2, sort_keys=True) + "\n")
    return folder


def read_adapter(folder: str | os.PathLike) -> tuple[LoraConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, tensors under the model's own names, adapter_config.json as written) of an adapter folder.
    Safetensors only: an adapter_model.bin (a pickle) is refused with the conversion to run."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config_file, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder} has no {ADAPTER_CONFIG}; an adapter folder (written by peft or gpt2kit) holds "
            f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
        )
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file} is not readable JSON ({e}); re-save the adapter") from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"{config_file} does not hold an adapter config (a JSON object); re-save the adapter"
        )
    config = LoraConfig.from_peft_dict(raw, source=str(config_file))
    if not weights.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise ValueError(
                f"{folder} holds adapter_model.bin, a pickle, and gpt2kit reads adapters from safetensors only "
                "(it never runs pickled code); convert it with peft: PeftModel.from_pretrained(model, "
                f"'{folder}').save_pretrained(OUT) writes {ADAPTER_WEIGHTS}"
            )
        raise FileNotFoundError(f"{folder} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(
            f"{weights} is not a readable safetensors file ({e}); it is probably truncated or corrupt — "
            "re-download or re-save it"
        ) from None
    return config, {_from_peft_key(k): v for k, v in state.items()}, raw


def check_adapter_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a ValueError naming the keys when `state` (model names) is not exactly this model's adapter."""
    expected = {k: p.shape for k, p in adapter_state_dict(model).items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} (the model's: {tuple(shape)})"
        for k, shape in expected.items()
        if k in state and state[k].shape != shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{what} {', '.join(keys[:4])}{f' and {len(keys) - 4} more' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shapes differ:", wrong))
            if keys
        ]
        raise ValueError(
            f"the adapter in {source} does not fit this {type(model).__name__}: {'; '.join(parts)}. Load it into "
            "the base model it was trained on (adapter_config.json's base_model_name_or_path)"
        )


def load_adapter(
    model: nn.Module,
    peft_model_id: str | os.PathLike,
    adapter_name: str | None = None,
    *,
    revision: str | None = None,
    is_trainable: bool = False,
) -> nn.Module:
    """Add the adapter saved in a folder (or a Hub name in the local cache) by peft or gpt2kit to `model`, in
    place, as transformers' model.load_adapter does. is_trainable=False (the default) freezes it too.
    Nothing changes if the files do not fit the model. Returns the model.

    >>> model = GPT2LMHeadModel.from_pretrained("path/to/gpt2")  # doctest: +SKIP
    >>> load_adapter(model, "path/to/adapter")                   # doctest: +SKIP
    """
    from gpt2kit import hub

    folder = hub.find_model_dir(
        peft_model_id, download_ok=True, revision=revision, files=(ADAPTER_CONFIG, ADAPTER_WEIGHTS)
    )
    config, state, _ = read_adapter(folder)
    add_adapter(model, config, adapter_name)
    try:
        check_adapter_state(model, state, str(folder))
    except ValueError:
        unload(model, merge=False)
        raise
    params = adapter_state_dict(model)
    with torch.no_grad():
        for key, tensor in state.items():
            params[key].copy_(tensor)
    if not is_trainable:
        for p in model.parameters():
            p.requires_grad_(False)
    logger.info("loaded the LoRA adapter of %s (%d tensors)", folder, len(state))
    return model


def unload(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every LoraLinear by a plain Linear, in place: with merge=True (merge_and_unload) its update is
    first added to the weight, W += (B @ A)^T * scaling; with merge=False the adapter is dropped. Parameters
    are trainable again afterwards, as in a freshly loaded model. Returns the model."""
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, LoraLinear):
            continue
        if merge:
            with torch.no_grad():
                w = layer.weight
                w.copy_((w.float() + layer.delta_weight()).to(w.dtype))
        with torch.device("meta"):  # no storage: the layer takes the existing parameters
            plain = Linear(layer.in_features, layer.out_features)
        plain.weight, plain.bias = layer.weight, layer.bias
        plain.train(layer.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold the adapter into the weights and remove it (peft's PeftModel.merge_and_unload): the model is then
    a plain GPT-2 model that save_pretrained writes as a full checkpoint. In place; returns the model."""
    adapter_config(model)  # a clear error when there is nothing to merge
    return unload(model, merge=True)


def base_model_of(folder: str | os.PathLike) -> str:
    """The base model an adapter folder names (adapter_config.json's base_model_name_or_path)."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path} is not a readable adapter config ({e}); re-save the adapter") from None
    if not base:
        raise ValueError(
            f"{path} does not name its base model (base_model_name_or_path); load the base model and add the "
            "adapter to it: GPT2LMHeadModel.from_pretrained(BASE).load_adapter(folder), or pass --model BASE"
        )
    return base


def merge_adapter(
    model: str | os.PathLike | None,
    adapter: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: str | torch.dtype | None = "auto",
) -> Path:
    """Base model folder + adapter folder -> a full checkpoint folder in output_dir (config, weights,
    generation config and the tokenizer files) that transformers and gpt2kit load. `model` None: the
    adapter's base_model_name_or_path. The tokenizer files are the adapter folder's when it has them (the
    tokenizer it was trained with), else the base model's. dtype "auto" keeps the base checkpoint's.

    >>> merge_adapter("path/to/gpt2", "path/to/adapter", "merged")  # doctest: +SKIP
    """
    from gpt2kit import hub
    from gpt2kit.model import heads
    from gpt2kit.model.gpt2 import GPT2Model
    from gpt2kit.tokenizer.files import ALL_FILES

    adapter_dir = hub.find_model_dir(adapter, download_ok=True, files=(ADAPTER_CONFIG, ADAPTER_WEIGHTS))
    _, _, raw = read_adapter(adapter_dir)
    if model is None:
        model = base_model_of(adapter_dir)
    base_dir = hub.find_model_dir(model, download_ok=True)
    out = Path(output_dir)
    for what, folder in (("base model", base_dir), ("adapter", adapter_dir)):
        if out.exists() and out.resolve() == Path(folder).resolve():
            raise ValueError(
                f"the output folder {out} is the {what} folder; choose another output folder (-o)"
            )
    if raw.get("task_type") == "CAUSAL_LM":
        cls: Any = heads.GPT2LMHeadModel
    else:  # the base folder's own class (transformers' "architectures"), else the trunk
        architectures = (
            json.loads((base_dir / "config.json").read_text(encoding="utf-8")).get("architectures") or []
        )
        cls = getattr(heads, architectures[0], GPT2Model) if architectures else GPT2Model
    merged = cls.from_pretrained(base_dir, dtype=dtype)
    load_adapter(merged, adapter_dir)
    merge_and_unload(merged)
    merged.save_pretrained(out)
    has_tokenizer = any((adapter_dir / name).is_file() for name in ("vocab.json", "tokenizer.json"))
    source = adapter_dir if has_tokenizer else base_dir
    for name in ALL_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    logger.info("merged the adapter %s into %s: %s", adapter_dir, base_dir, out)
    return out


__all__ = [
    "LoraConfig",
    "LoraLinear",
    "adapter_state_dict",
    "add_adapter",
    "base_model_of",
    "has_adapter",
    "load_adapter",
    "merge_adapter",
    "merge_and_unload",
    "read_adapter",
    "save_adapter",
    "unload",
]
