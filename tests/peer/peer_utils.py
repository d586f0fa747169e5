"""Plain helpers for the peer tests: the model tester's tiny config and inputs, labels per head, oracles.

The numbers are the ones transformers' GPT2ModelTester (4.5x) uses: batch 14, sequence 7, vocabulary 99,
32-wide, 2 layers of 4 heads, 37-wide MLP, 512 positions, 16 token types, 4 choices, 3 labels, and the last
vocabulary id as bos = eos = pad. Inputs come from a seeded torch.Generator, so every run sees the same ones.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from types import SimpleNamespace

import torch

BATCH, SEQ, VOCAB, HIDDEN, LAYERS, HEADS = 14, 7, 99, 32, 2, 4
TYPE_VOCAB, CHOICES, LABELS, SEQ_LABELS = 16, 4, 3, 2

MODEL_CLASSES = (
    "GPT2Model",
    "GPT2LMHeadModel",
    "GPT2DoubleHeadsModel",
    "GPT2ForQuestionAnswering",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
)
GENERATIVE_CLASSES = ("GPT2LMHeadModel", "GPT2DoubleHeadsModel")
HEAD_CLASSES = MODEL_CLASSES[1:]


def config_kwargs(**overrides) -> dict:
    """The tester's GPT2Config keyword arguments, with overrides."""
    kwargs = dict(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=37,
        activation_function="gelu",
        resid_pdrop=0.1,
        attn_pdrop=0.1,
        n_positions=512,
        type_vocab_size=TYPE_VOCAB,
        initializer_range=0.02,
        use_cache=True,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        pad_token_id=VOCAB - 1,
    )
    kwargs.update(overrides)
    return kwargs


def make_config(backend, **overrides):
    return backend.GPT2Config(**config_kwargs(**overrides))


def rand_ids(gen: torch.Generator, shape, high: int) -> torch.Tensor:
    return torch.randint(0, high, tuple(shape), generator=gen)


def model_inputs(seed: int = 0) -> SimpleNamespace:
    """Everything GPT2ModelTester.prepare_config_and_inputs draws, from one seed."""
    g = torch.Generator().manual_seed(seed)
    mask = rand_ids(g, (BATCH, SEQ), 2)
    mask[:, 0] = 1  # every row attends to at least its first token
    return SimpleNamespace(
        input_ids=rand_ids(g, (BATCH, SEQ), VOCAB),
        input_mask=mask,
        token_type_ids=rand_ids(g, (BATCH, SEQ), TYPE_VOCAB),
        mc_token_ids=rand_ids(g, (BATCH, CHOICES), SEQ),
        sequence_labels=rand_ids(g, (BATCH,), SEQ_LABELS),
        token_labels=rand_ids(g, (BATCH, SEQ), LABELS),
        choice_labels=rand_ids(g, (BATCH,), CHOICES),
        head_mask=rand_ids(g, (LAYERS, HEADS), 2),
    )


def common_inputs(seed: int = 0) -> dict:
    """prepare_config_and_inputs_for_common: input_ids, token_type_ids and a random 0/1 head_mask."""
    t = model_inputs(seed)
    return {"input_ids": t.input_ids, "token_type_ids": t.token_type_ids, "head_mask": t.head_mask}


def for_class(inputs: dict, cls_name: str, labels: bool = False) -> dict:
    """_prepare_for_class: copy the inputs and, with labels=True, add the labels each head's loss needs."""
    out = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if not labels:
        return out
    if cls_name == "GPT2DoubleHeadsModel":  # GPT2ModelTest's own override: (B, choices, T) everything
        zeros = torch.zeros(BATCH, CHOICES, SEQ, dtype=torch.long)
        out.update(input_ids=zeros, token_type_ids=zeros.clone(), labels=zeros.clone())
        out["mc_token_ids"] = torch.zeros(BATCH, CHOICES, dtype=torch.long)
        out["mc_labels"] = torch.zeros(BATCH, dtype=torch.long)
    elif cls_name == "GPT2ForQuestionAnswering":
        out["start_positions"] = torch.zeros(BATCH, dtype=torch.long)
        out["end_positions"] = torch.zeros(BATCH, dtype=torch.long)
    elif cls_name == "GPT2ForSequenceClassification":
        out["labels"] = torch.zeros(BATCH, dtype=torch.long)
    elif cls_name in ("GPT2ForTokenClassification", "GPT2LMHeadModel"):
        out["labels"] = torch.zeros(BATCH, SEQ, dtype=torch.long)
    return out


def zero_init(config):
    """_config_zero_init: initializer_range (the only *_range / *_std field of GPT-2) set to 1e-10."""
    config.initializer_range = 1e-10
    return config


def tensors(obj):
    """Every tensor inside nested outputs, tuples, lists and caches (a cache as its (key, value) pairs)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from tensors(item)


class LogRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@contextlib.contextmanager
def capture_logs(backend, level: int = logging.WARNING):
    """Records what the backend's library loggers emit at `level` and above (transformers' root logger does
    not propagate, so pytest's caplog never sees it)."""
    handler = LogRecords()
    handler.setLevel(level)
    loggers = [logging.getLogger(name) for name in backend.loggers]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(min(level, lg.level) if lg.level else level)
    try:
        yield handler
    finally:
        for lg, lvl in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(lvl)


def hf_checkpoint(folder: Path, cls_name: str, seed: int = 0, **overrides) -> Path:
    """A transformers checkpoint of the tester's config with seeded random weights, written once."""
    if not (folder / "config.json").is_file():
        import transformers

        torch.manual_seed(seed)
        model = getattr(transformers, cls_name)(transformers.GPT2Config(**config_kwargs(**overrides)))
        model.save_pretrained(folder)
    return folder


def transformers_model(folder: Path, cls_name: str, **kwargs):
    """The oracle: transformers' class loaded from a folder, eager attention, eval mode."""
    import transformers

    kwargs.setdefault("attn_implementation", "eager")
    return getattr(transformers, cls_name).from_pretrained(folder, **kwargs).eval()
