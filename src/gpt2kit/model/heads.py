"""Task heads on the GPT-2 trunk: language modelling, multiple choice, sequence / token classification, QA.

Each head model holds the trunk as `self.transformer`, so its weights are named `transformer.*` like
transformers' and a checkpoint moves between the two libraries unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpt2kit.config import GPT2Config
from gpt2kit.generation.mixin import GenerationMixin
from gpt2kit.model.dropout import Dropout
from gpt2kit.model.gpt2 import GPT2Model, GPT2PreTrainedModel
from gpt2kit.model.loss import causal_lm_loss
from gpt2kit.model.matmul import LMHead, is_compiling
from gpt2kit.model.outputs import (
    CausalLMOutputWithCrossAttentions,
    GPT2DoubleHeadsModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)

logger = logging.getLogger(__name__)

# The trunk's forward arguments, passed through by every head.
_TRUNK_ARGS = (
    "past_key_values",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "head_mask",
    "inputs_embeds",
    "encoder_hidden_states",
    "encoder_attention_mask",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "cache_position",
)


def _trunk_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = [k for k in kwargs if k not in _TRUNK_ARGS and k not in ("num_items_in_batch",)]
    if unknown:
        raise TypeError(f"forward() got unexpected keyword arguments {unknown}")
    return {k: v for k, v in kwargs.items() if k in _TRUNK_ARGS}


class GPT2LMHeadModel(GenerationMixin, GPT2PreTrainedModel):
    """GPT-2 with its language-modelling head (tied to the token embedding).

    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100)).eval()
    >>> out = model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]]))
    >>> out.logits.shape, out.loss.dim()
    (torch.Size([1, 3, 100]), 0)
    """

    _tied_lm_head = True
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = LMHead(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithCrossAttentions | tuple:
        """labels (B, T), -100 where no loss is wanted; logits_to_keep=k computes logits for the last k only."""
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(input_ids, **_trunk_kwargs(kwargs), return_dict=True)
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[..., -logits_to_keep:, :]
        logits = self.lm_head(h)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        result = CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cross_attentions=out.cross_attentions,
        )
        return result if return_dict else result.to_tuple()


class SequenceSummary(nn.Module):
    """Pool a sequence to one vector (transformers' SequenceSummary, driven by the summary_* config fields)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.summary_type = config.summary_type
        if self.summary_type == "attn":
            raise ValueError(
                "summary_type='attn' is not implemented (transformers does not implement it either)"
            )
        self.summary: nn.Module = nn.Identity()
        if config.summary_use_proj:
            n_out = (
                config.num_labels
                if config.summary_proj_to_labels and config.num_labels > 0
                else config.n_embd
            )
            self.summary = nn.Linear(config.n_embd, n_out)
        self.activation: nn.Module = nn.Tanh() if config.summary_activation == "tanh" else nn.Identity()
        p_first = config.summary_first_dropout or 0.0
        p_last = config.extra.get("summary_last_dropout", 0.0)
        self.first_dropout: nn.Module = nn.Dropout(p_first) if p_first > 0 else nn.Identity()
        self.last_dropout: nn.Module = nn.Dropout(p_last) if p_last > 0 else nn.Identity()

    def forward(self, hidden: torch.Tensor, cls_index: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (..., T, C), cls_index (...) -> (..., n_out)."""
        if self.summary_type == "last":
            out = hidden[..., -1, :]
        elif self.summary_type == "first":
            out = hidden[..., 0, :]
        elif self.summary_type == "mean":
            out = hidden.mean(dim=-2)
        else:  # cls_index: the hidden state at a given position per sequence (default: the last)
            if cls_index is None:
                index = torch.full_like(hidden[..., :1, :], hidden.shape[-2] - 1, dtype=torch.long)
            else:
                index = cls_index.long()[..., None, None].expand(*cls_index.shape, 1, hidden.shape[-1])
            out = hidden.gather(-2, index).squeeze(-2)
        return self.last_dropout(self.activation(self.summary(self.first_dropout(out))))


class GPT2DoubleHeadsModel(GenerationMixin, GPT2PreTrainedModel):
    """GPT-2 with an LM head and a multiple-choice head; input_ids are (B, n_choices, T)."""

    _tied_lm_head = True
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: GPT2Config) -> None:
        config.num_labels = 1  # one score per choice, as transformers sets it
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = LMHead(config.n_embd, config.vocab_size, bias=False)
        self.multiple_choice_head = SequenceSummary(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        mc_token_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        mc_labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> GPT2DoubleHeadsModelOutput | tuple:
        """mc_token_ids (B, n_choices): the position whose hidden state scores each choice; mc_labels (B,)."""
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(input_ids, **_trunk_kwargs(kwargs), return_dict=True)
        h = out.last_hidden_state  # (B, n_choices, T, C)
        lm_logits = self.lm_head(h)
        mc_logits = self.multiple_choice_head(h, mc_token_ids).squeeze(-1)  # (B, n_choices)
        mc_loss = None
        if mc_labels is not None:
            mc_loss = F.cross_entropy(
                mc_logits.view(-1, mc_logits.size(-1)), mc_labels.view(-1).to(mc_logits.device)
            )
        lm_loss = causal_lm_loss(lm_logits, labels) if labels is not None else None
        result = GPT2DoubleHeadsModelOutput(
            loss=lm_loss,
            mc_loss=mc_loss,
            logits=lm_logits,
            mc_logits=mc_logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return result if return_dict else result.to_tuple()


def check_class_labels(labels: torch.Tensor, num_labels: int) -> None:
    """Single-label targets must be class ids in [0, num_labels), or -100 (ignored)."""
    bad = labels[((labels < 0) | (labels >= num_labels)) & (labels != -100)]
    if bad.numel():
        raise ValueError(
            f"labels must be class ids in [0, num_labels={num_labels}) or -100, got {int(bad[0])}; "
            "pass num_labels= (or id2label=) when loading the model"
        )


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: GPT2Config) -> torch.Tensor:
    """The loss transformers picks from problem_type (inferred when unset): MSE, cross-entropy or BCE."""
    n = config.num_labels
    problem = config.problem_type
    if problem is None:
        if n == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    labels = labels.to(logits.device)
    if problem == "regression":
        if n == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        if not is_compiling():  # a data-dependent check would split the graph; the Trainer checks first
            check_class_labels(labels, n)
        return F.cross_entropy(logits.view(-1, n), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    """GPT-2 scoring a whole sequence from its last non-padding token (config.pad_token_id marks padding)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutputWithPast | tuple:
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(input_ids, **_trunk_kwargs(kwargs), return_dict=True)
        logits = self.score(out.last_hidden_state)  # (B, T, num_labels)
        B = logits.shape[0]
        pad = self.config.pad_token_id
        if pad is None and B != 1:
            raise ValueError(
                "GPT2ForSequenceClassification needs config.pad_token_id to find each row's last token in a "
                "batch; set model.config.pad_token_id = tokenizer.pad_token_id (GPT-2 usually pads with eos)"
            )
        if pad is None or input_ids is None:
            if input_ids is None and pad is not None:
                logger.warning("inputs_embeds given: padding cannot be detected, scoring the last position")
            last = torch.full((B,), -1, device=logits.device)
        else:
            # The rightmost non-pad token, which is right for left and right padding alike.
            not_pad = (input_ids != pad).to(logits.device, torch.int32)
            last = (torch.arange(input_ids.shape[-1], device=logits.device) * not_pad).argmax(-1)
        pooled = logits[torch.arange(B, device=logits.device), last]
        loss = classification_loss(pooled, labels, self.config) if labels is not None else None
        result = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return result if return_dict else result.to_tuple()


class GPT2ForTokenClassification(GPT2PreTrainedModel):
    """GPT-2 labelling every token (NER-style)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        p = config.extra.get("classifier_dropout")
        if p is None:
            p = config.extra.get("hidden_dropout", 0.1)
        self.dropout = Dropout(p)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput | tuple:
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(input_ids, **_trunk_kwargs(kwargs), return_dict=True)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).to(logits.device))
        result = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
        return result if return_dict else result.to_tuple()


class GPT2ForQuestionAnswering(GPT2PreTrainedModel):
    """GPT-2 predicting an answer span's start and end positions."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.qa_outputs = nn.Linear(config.n_embd, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        start_positions: torch.LongTensor | None = None,
        end_positions: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> QuestionAnsweringModelOutput | tuple:
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(input_ids, **_trunk_kwargs(kwargs), return_dict=True)
        start_logits, end_logits = self.qa_outputs(out.last_hidden_state).split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()  # (B, T)
        end_logits = end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence are ignored, as transformers does.
            ignored = start_logits.size(1)
            start = start_positions.reshape(-1).clamp(0, ignored).to(start_logits.device)
            end = end_positions.reshape(-1).clamp(0, ignored).to(end_logits.device)
            loss = (
                F.cross_entropy(start_logits, start, ignore_index=ignored)
                + F.cross_entropy(end_logits, end, ignore_index=ignored)
            ) / 2
        result = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return result if return_dict else result.to_tuple()
