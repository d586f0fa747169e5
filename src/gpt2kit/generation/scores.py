"""compute_transition_scores: the score of each generated token, read back from generate()'s outputs."""

from __future__ import annotations

import torch


def compute_transition_scores(
    sequences: torch.Tensor,
    scores: tuple[torch.Tensor, ...],
    beam_indices: torch.Tensor | None = None,
    normalize_logits: bool = False,
) -> torch.Tensor:
    """Per generated token, its score at the step that chose it -> (N, steps), as transformers computes it.

    sequences (N, L) and scores (one (R, V) tensor per step) from generate(return_dict_in_generate=True,
    output_scores=True); beam_indices (N, steps) from beam search says which of the R rows produced each
    token (-1 after a hypothesis ended, where the result is 0); without it, row i produced sequence i.
    normalize_logits=True log-softmaxes the scores first (for output_logits=True's raw logits, or warped
    scores). With greedy search and renormalize_logits, or beam search, the sum over a row is the sequence's
    log-probability.

    >>> out = model.generate(ids, max_new_tokens=5, return_dict_in_generate=True, output_scores=True)  # doctest: +SKIP
    >>> model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)  # doctest: +SKIP
    """
    if not scores:
        raise ValueError(
            "scores is empty; call generate(..., return_dict_in_generate=True, output_scores=True)"
        )
    steps = len(scores)
    stacked = torch.stack(tuple(scores))  # (steps, R, V)
    if normalize_logits:
        stacked = torch.log_softmax(stacked, dim=-1)
    if beam_indices is None:
        rows = stacked.shape[1]
        if sequences.shape[0] != rows:
            raise ValueError(
                f"sequences has {sequences.shape[0]} rows but the scores {rows}; for beam search pass "
                "beam_indices=out.beam_indices"
            )
        beam_indices = torch.arange(rows, device=sequences.device)[:, None].expand(-1, steps)
    beam_indices = beam_indices.to(sequences.device)
    ended = beam_indices < 0  # (N, W)
    length = int((~ended).sum(-1).max())
    if length > steps or length > sequences.shape[-1]:
        raise ValueError(
            f"beam_indices covers {length} steps but there are {steps} scores and {sequences.shape[-1]} tokens; "
            "pass the outputs of one generate() call"
        )
    rows = beam_indices[:, :length].masked_fill(ended[:, :length], 0)
    tokens = sequences[:, sequences.shape[-1] - length :]
    step = torch.arange(length, device=sequences.device)[None, :]
    out = stacked.to(sequences.device)[step, rows, tokens]  # (N, length)
    return out.masked_fill(ended[:, :length], 0.0)
