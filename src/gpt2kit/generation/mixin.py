"""generate() on the language-model classes; the loops themselves live in search.py."""

from __future__ import annotations

from typing import Any

import torch

from gpt2kit.generation.config import GenerationConfig


class GenerationMixin:
    """Adds `generate` and a `generation_config` to a model with `transformer` and `lm_head`."""

    _generation_config: GenerationConfig | None = None

    @property
    def generation_config(self) -> GenerationConfig:
        """The defaults generate() starts from: generation_config.json if the folder had one, else derived
        from the model's config (bos/eos ids), as in transformers."""
        if self._generation_config is None:
            self._generation_config = GenerationConfig.from_model_config(self.config)
        return self._generation_config

    @generation_config.setter
    def generation_config(self, value: GenerationConfig) -> None:
        if not isinstance(value, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig, got {type(value).__name__}")
        self._generation_config = value

    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        streamer: Any = None,
        **kwargs: Any,
    ):
        """Continue prompts: transformers 4.57's generate() with its defaults and meaning.

        input_ids (B, T), left-padded for batches (tok.padding_side = "left", tok.pad_token = tok.eos_token),
        attention_mask (B, T). Keyword arguments are GenerationConfig fields (max_new_tokens, do_sample,
        temperature, top_k, top_p, min_p, typical_p, repetition_penalty, no_repeat_ngram_size, bad_words_ids,
        num_beams, length_penalty, early_stopping, num_return_sequences, eos_token_id, pad_token_id,
        stop_strings with tokenizer=, remove_invalid_values, use_cache, cache_implementation,
        return_dict_in_generate, output_scores, output_logits, output_attentions, output_hidden_states), plus
        logits_processor=, generator= (a torch.Generator for sampling), truncate_prompt=True (drop the
        prompt's left part when prompt + new tokens exceed n_positions), presence_penalty= and
        frequency_penalty= (OpenAI's, on generated tokens), compile= (False by default; True, a
        torch.compile mode name or a dict of torch.compile arguments runs the one-token decode step
        compiled, with fixed shapes: the first call per batch size and cache length pays the compilation,
        ~1-2 min for the 124M model on a 2-core CPU, and the tokens are the eager loop's;
        compile="max-autotune" on a CPU also freezes the weights into the step and lets inductor multiply
        with its own C++ GEMM kernels: the fastest float32 decoding, compiled again if the weights change).
        For the fastest CPU decoding, quantize the weights first: gpt2kit.model.quant.quantize_int8(model).

        Forward inputs pass on to the model as in transformers: token_type_ids (B, T) (each new token takes
        the type of the prompt's last column), position_ids (B, T) (each new token then gets the prompt's last
        position, as transformers 4.57 does), head_mask, encoder_hidden_states (B, S, C) and
        encoder_attention_mask (B, S) for add_cross_attention models; labels= and logits_to_keep= are
        accepted and ignored. past_key_values= (a cache of the first positions of input_ids, as a previous
        return_dict_in_generate=True call returned it) skips recomputing them; inputs_embeds (B, T, C) with
        input_ids (B, T) stand in for the prompt's embedding lookup. Any other keyword raises TypeError naming
        it. Speculative greedy decoding (batch size 1, do_sample=False, the same tokens as plain greedy, faster
        when proposals are accepted): prompt_lookup_num_tokens=N proposes up to N tokens that followed an
        earlier occurrence of the last max_matching_ngram_size (default 2) tokens; assistant_model=draft
        proposes draft.generation_config.num_assistant_tokens (default 20) of the draft's greedy tokens.
        The model checks each proposal in one forward pass and keeps the prefix it agrees with.
        The strategies transformers 4.56 moved to the Hub run as 4.55 ran them: contrastive search
        (penalty_alpha > 0 with top_k > 1), group beam search (num_beam_groups > 1 with diversity_penalty > 0),
        constrained beam search (force_words_ids, constraints=[PhrasalConstraint(...), ...]) and DoLa
        (dola_layers="low" / "high" / indices); sequence_bias, epsilon_cutoff, eta_cutoff,
        exponential_decay_length_penalty and watermarking_config are transformers 4.57's processors.

        Returns prompt + continuation ids (B * num_return_sequences, L), finished rows padded with
        pad_token_id, or a GenerateDecoderOnlyOutput / GenerateBeamDecoderOnlyOutput when
        return_dict_in_generate=True: with output_attentions / output_hidden_states, per step and layer,
        the forward pass's attentions and hidden states (the prompt first, then one position per step, or the
        whole sequence so far with use_cache=False); with use_cache=True (the default), past_key_values, a
        DynamicCache of the cached positions (a StaticCache with cache_implementation="static").

        >>> out = model.generate(**tok(["Hello"], return_tensors="pt"), max_new_tokens=20)  # doctest: +SKIP
        """
        from gpt2kit.generation.search import generate

        return generate(self, input_ids, attention_mask, generation_config, streamer, **kwargs)

    def compute_transition_scores(
        self,
        sequences: torch.Tensor,
        scores: tuple[torch.Tensor, ...],
        beam_indices: torch.Tensor | None = None,
        normalize_logits: bool = False,
    ) -> torch.Tensor:
        """The score of each generated token (N, steps), from generate(return_dict_in_generate=True,
        output_scores=True)'s sequences, scores and (beam search) beam_indices; as in transformers.

        >>> out = model.generate(ids, max_new_tokens=5, return_dict_in_generate=True, output_scores=True)  # doctest: +SKIP
        >>> model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)  # doctest: +SKIP
        """
        from gpt2kit.generation.scores import compute_transition_scores

        return compute_transition_scores(sequences, scores, beam_indices, normalize_logits)
