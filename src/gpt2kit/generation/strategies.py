"""The decoding strategies transformers 4.56+ moved out to the Hub: contrastive search, DoLa, group (diverse)
beam search and constrained beam search, each following transformers 4.55 (the last release that ran them
itself) step for step, so that the same checkpoint gives the same tokens.

`resolve_mode` picks the strategy from the settings, in transformers' order of precedence; `check_plan`
refuses what a strategy cannot run. Contrastive search is its own loop (each step runs the top_k candidates
as a batch); DoLa is plain greedy / sampling with a different head (`DolaHead`), so it runs in
search.decode; group and constrained beam search share `legacy_beam_search`, transformers' per-hypothesis
beam scorer (Python floats, a list of finished hypotheses per prompt and group) rather than the vectorised
one search.beam_search follows.

Legend: B prompts, k beams or candidates per prompt, T prompt length, V vocabulary, C n_embd.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from gpt2kit.generation.constraints import ConstraintListState, constraints_from_config
from gpt2kit.model.cache import StaticCache

logger = logging.getLogger(__name__)


# --- which strategy ---------------------------------------------------------------------------------------


def resolve_mode(cfg, assistant_model=None) -> str:
    """The strategy generate() runs for these settings, with transformers 4.55's precedence: constraints
    make it constrained beam search; then beams (group beam search with num_beam_groups > 1); without beams,
    contrastive search (penalty_alpha > 0 and top_k > 1, greedy) or greedy / sampling, which a draft model or
    prompt lookup turns into assisted decoding, or else dola_layers into DoLa.

    >>> from gpt2kit.generation import GenerationConfig
    >>> resolve_mode(GenerationConfig(penalty_alpha=0.6, top_k=4))
    'contrastive'
    """
    if cfg.constraints is not None or cfg.force_words_ids is not None:
        if cfg.num_beams < 2:
            raise ValueError(
                "force_words_ids / constraints run constrained beam search, which needs num_beams > 1 (got "
                f"num_beams={cfg.num_beams}); pass num_beams=4, say"
            )
        mode = "constrained_beam"
    elif cfg.num_beams > 1:
        if cfg.num_beam_groups > 1:
            mode = "group_beam"
        elif cfg.diversity_penalty > 0:
            raise ValueError(
                f"diversity_penalty={cfg.diversity_penalty} needs group beam search: pass num_beam_groups > 1 "
                f"(a divisor of num_beams={cfg.num_beams}), or diversity_penalty=0.0"
            )
        else:
            mode = "beam"
    elif not cfg.do_sample:
        contrastive = cfg.penalty_alpha is not None and cfg.penalty_alpha > 0 and (cfg.top_k or 0) > 1
        mode = "contrastive" if contrastive else "greedy"
    else:
        mode = "sample"
    speculative = assistant_model is not None or cfg.prompt_lookup_num_tokens is not None
    if speculative and mode in ("greedy", "sample"):
        mode = "assisted"
    elif speculative and cfg.num_beams == 1:
        logger.warning(
            "assistant_model / prompt_lookup_num_tokens run with greedy search only; %s ignores them", mode
        )
    if cfg.dola_layers is not None:
        if mode in ("greedy", "sample"):
            mode = "dola"
        else:
            logger.warning("dola_layers runs with greedy search and sampling only; %s ignores it", mode)
    return mode


def check_plan(mode: str, cfg, model, compile_opts, past, inputs_embeds) -> None:
    """Refuse what the strategy does not run, naming what to change."""
    name = {
        "contrastive": "contrastive search (penalty_alpha)",
        "dola": "DoLa (dola_layers)",
        "group_beam": "group beam search (num_beam_groups)",
        "constrained_beam": "constrained beam search (force_words_ids / constraints)",
    }.get(mode)
    if name is None:
        return
    if compile_opts is not None:
        raise ValueError(
            f"compile= runs the plain decode step; {name} runs eagerly, so generate without compile="
        )
    if mode == "constrained_beam":
        constraints_from_config(cfg.constraints, cfg.force_words_ids)  # type errors now, not mid-search
    if mode == "dola" and not dola_layers(cfg.dola_layers, model.config):
        raise ValueError(
            f"dola_layers={cfg.dola_layers!r} names no layer below the last ({model.config.n_layer}); pass "
            "'low', 'high' or indices < n_layer"
        )
    if mode != "contrastive":
        return
    if not cfg.use_cache:
        raise ValueError("Contrastive search requires `use_cache=True`")
    unsupported = [
        n
        for n, on in (
            ("past_key_values", past is not None),
            ("inputs_embeds", inputs_embeds is not None),
            ("output_attentions", cfg.return_dict_in_generate and cfg.output_attentions),
            ("output_hidden_states", cfg.return_dict_in_generate and cfg.output_hidden_states),
        )
        if on
    ]
    if unsupported:
        raise ValueError(
            f"gpt2kit's {name} does not return or take {unsupported}; generate without them, or use greedy "
            "search for them"
        )


# --- DoLa -------------------------------------------------------------------------------------------------


def dola_layers(setting, config) -> list[int]:
    """The premature layers DoLa contrasts with the last one (transformers 4.55's choice for "low" / "high").

    Index i is hidden_states[i]: 0 the embeddings, i the output of block i. With tied embeddings layer 0 is
    skipped (its logits would be the identity's), and shallow models start at 1.
    """
    n = config.n_layer
    if not getattr(config, "tie_word_embeddings", True):
        start = 0
    else:
        start = 2 if n > 2 else (1 if n == 2 else 0)
    if setting == "low":
        if start == n // 2:
            return [start]
        return list(range(start, n // 2, 2)) if n <= 40 else list(range(start, 20, 2))
    if setting == "high":
        return list(range(n // 2, n, 2)) if n <= 40 else list(range(n - 20, n, 2))
    return [i for i in setting if i < n]


class DolaHead:
    """DoLa (Chuang et al. 2023): next-token logits as the contrast of the last layer with the premature
    layer whose distribution differs most from it (largest Jensen-Shannon divergence, averaged over the
    batch), keeping only tokens within a factor 10 of the last layer's top probability.

    Called as head(model, trunk output with hidden_states) -> (B, V); `raw` keeps the last layer's logits.
    """

    RELATIVE_TOP = 0.1

    def __init__(self, layers: list[int]):
        self.layers = layers
        self.raw: torch.Tensor | None = None

    def __call__(self, model, out) -> torch.Tensor:
        final = model.lm_head(out.last_hidden_state[:, -1, :]).float()  # (B, V)
        self.raw = final
        early = {i: model.lm_head(out.hidden_states[i][:, -1, :]) for i in self.layers}
        if len(self.layers) == 1:
            base = early[self.layers[0]]
        else:
            stacked = torch.stack([early[i] for i in self.layers])  # (L, B, V)
            mean = 0.5 * (F.softmax(final, dim=-1)[None] + F.softmax(stacked, dim=-1))
            kl_final = F.kl_div(F.log_softmax(final, dim=-1)[None], mean, reduction="none").mean(-1)  # (L, B)
            kl_early = F.kl_div(F.log_softmax(stacked, dim=-1), mean, reduction="none").mean(-1)
            js = (0.5 * (kl_final + kl_early)).mean(-1)  # (L,)
            base = early[self.layers[int(js.argmax())]]
        final_logp = final.log_softmax(dim=-1)
        base_logp = base.log_softmax(dim=-1)
        top = final_logp.max(dim=-1).values
        threshold = torch.min(top, top + math.log(self.RELATIVE_TOP))[:, None]
        low = final_logp < threshold
        return final_logp.masked_fill(low, -math.inf) - base_logp.masked_fill(low, -1e-3)


def dola_head(cfg, model) -> DolaHead:
    return DolaHead(dola_layers(cfg.dola_layers, model.config))


# --- contrastive search -----------------------------------------------------------------------------------


def contrastive_decode(model, plan, scores_out=None, logits_out=None, state=None):
    """Contrastive search (Su et al. 2022); yields the tokens (B,) chosen at each step.

    Each step takes the top_k tokens of the processed distribution, runs all B * top_k candidates in one
    forward pass against a cache of B * top_k rows, and picks per prompt the candidate with the best
    (1 - alpha) * probability - alpha * (its hidden state's largest cosine similarity to the context's).
    The chosen candidate's pass already holds the next logits and its cache entry, so a step costs one
    forward pass of B * top_k rows.
    """
    from gpt2kit.generation.search import _PER_ROW_INPUTS, _positions, _step_inputs

    cfg = plan.config
    k, alpha = cfg.top_k, cfg.penalty_alpha
    ids = plan.input_ids
    B, T = ids.shape
    device = ids.device
    if plan.max_length <= T:
        return
    tokens = torch.full((B, plan.max_length), plan.pad_token_id or 0, dtype=torch.long, device=device)
    tokens[:, :T] = ids
    mask = torch.ones((B, plan.max_length), dtype=torch.long, device=device)
    if plan.attention_mask is not None:
        mask[:, :T] = plan.attention_mask
    mask_k = mask.repeat_interleave(k, dim=0)  # (B * k, max_length)
    position_ids, advance = _positions(plan, B, T)

    prompt_cache = StaticCache.for_model(model.config, B, plan.max_length, dtype=model.dtype, device=device)
    with torch.inference_mode():
        out = model.transformer(
            input_ids=ids,
            attention_mask=plan.attention_mask,
            position_ids=position_ids,
            past_key_values=prompt_cache,
            use_cache=True,
            return_dict=True,
            **plan.model_inputs,
        )
        context = out.last_hidden_state  # (B, T, C), after ln_f: what the cosine similarities compare
        logits = model.lm_head(context[:, -1, :]).float()
    # the candidates' cache: every prompt's rows repeated k times
    cache = StaticCache.for_model(model.config, B * k, plan.max_length, dtype=model.dtype, device=device)
    for i in range(len(cache)):
        cache.k[i][:, :, :T] = prompt_cache.k[i][:, :, :T].repeat_interleave(k, dim=0)
        cache.v[i][:, :, :T] = prompt_cache.v[i][:, :, :T].repeat_interleave(k, dim=0)
    cache.lengths = [T] * len(cache)
    del prompt_cache
    inputs = {
        n: v.repeat_interleave(k, dim=0) if n in _PER_ROW_INPUTS else v for n, v in _step_inputs(plan).items()
    }
    next_pos = (position_ids[:, -1:] + advance).repeat_interleave(k, dim=0)  # (B * k, 1)
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    rows = torch.arange(B, device=device)
    cur = T
    while True:
        scores = plan.processors(tokens[:, :cur], logits)
        if scores_out is not None:
            scores_out.append(scores)
        if logits_out is not None:
            logits_out.append(logits)
        top_probs, top_ids = torch.topk(torch.softmax(scores, dim=-1), k=k, dim=-1)  # (B, k)
        with torch.inference_mode():
            out = model.transformer(
                input_ids=top_ids.reshape(B * k, 1),
                attention_mask=mask_k[:, : cur + 1] if plan.attention_mask is not None else None,
                position_ids=next_pos,
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
                **inputs,
            )
            hidden = out.last_hidden_state  # (B * k, 1, C)
            cand_logits = model.lm_head(hidden[:, -1, :]).float()  # (B * k, V)
        chosen = _rank_candidates(context, hidden, top_probs, mask[:, :cur], alpha, k)  # (B,)
        nxt = top_ids[rows, chosen]
        context = torch.cat([context, hidden.view(B, k, -1)[rows, chosen][:, None]], dim=1)
        logits = cand_logits.view(B, k, -1)[rows, chosen]
        # every row of a prompt continues from its chosen candidate's cache entry
        cache.reorder_cache((rows * k + chosen).repeat_interleave(k))
        if plan.eos is not None:
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, plan.pad_token_id))
        tokens[:, cur] = nxt
        cur += 1
        next_pos = next_pos + advance
        yield nxt
        if plan.eos is not None:
            unfinished &= ~torch.isin(nxt, plan.eos)
        if plan.stop_checker is not None:
            unfinished &= ~plan.stop_checker(tokens[:, :cur])
        if cur >= plan.max_length or not bool(unfinished.any()):
            break
    if state is not None:  # as transformers: the prompts' cache without the last, look-ahead position
        kept = StaticCache.for_model(model.config, B, plan.max_length, dtype=model.dtype, device=device)
        for i in range(len(cache)):
            kept.k[i][:, :, : cur - 1] = cache.k[i][::k, :, : cur - 1]
            kept.v[i][:, :, : cur - 1] = cache.v[i][::k, :, : cur - 1]
        kept.lengths = [cur - 1] * len(kept)
        state["cache"] = kept


def _rank_candidates(context, hidden, probs, mask, alpha: float, k: int) -> torch.Tensor:
    """context (B, S, C), hidden (B * k, 1, C), probs (B, k), mask (B, S) -> the chosen candidate per prompt
    (B,): the best (1 - alpha) * probability - alpha * max cosine similarity to an unpadded context position.
    The same operations as transformers' _ranking_fast, in the same shapes, so ties break alike."""
    ctx = context.repeat_interleave(k, dim=0)  # (B * k, S, C)
    ctx = ctx / ctx.norm(dim=2, keepdim=True)
    cand = hidden / hidden.norm(dim=2, keepdim=True)
    cosine = torch.matmul(ctx, cand.transpose(1, 2)).squeeze(-1)  # (B * k, S)
    padded = (1 - mask.repeat_interleave(k, dim=0).to(cosine.dtype)) * torch.finfo(cosine.dtype).min
    degeneration = torch.max(cosine + padded, dim=-1).values  # (B * k,)
    score = (1.0 - alpha) * probs.view(-1) - alpha * degeneration
    return torch.stack(torch.split(score, k)).max(dim=-1).indices


# --- group and constrained beam search --------------------------------------------------------------------


class _Hypotheses:
    """The best finished hypotheses of one prompt (and group): transformers' BeamHypotheses, in Python
    floats as it computes them (a score is the sum of log-probabilities / generated_len ** length_penalty)."""

    def __init__(self, size: int, length_penalty: float, early_stopping, max_length: int):
        self.size = size
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.max_length = max_length
        self.beams: list[tuple[float, torch.Tensor, tuple | None]] = []
        self.worst_score = 1e9

    def add(
        self, seq: torch.Tensor, sum_logprobs: float, beam_index: tuple | None, generated_len: int
    ) -> None:
        score = sum_logprobs / (generated_len**self.length_penalty)
        if len(self.beams) < self.size or score > self.worst_score:
            self.beams.append((score, seq, beam_index))
            if len(self.beams) > self.size:
                ranked = sorted((s, i) for i, (s, _, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, cur_len: int, prompt_len: int) -> bool:
        if len(self.beams) < self.size:
            return False
        if self.early_stopping is True:
            return True
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best = best_sum_logprobs / (self.max_length - prompt_len) ** self.length_penalty
        else:
            best = best_sum_logprobs / (cur_len - prompt_len) ** self.length_penalty
        return self.worst_score >= best


def legacy_beam_search(model, plan, scores_out=None, logits_out=None, record=None, state=None):
    """Group (diverse) beam search and constrained beam search, as transformers 4.55 ran them.

    Group beam search splits the k beams of a prompt into num_beam_groups groups decoded one after another
    within each step; a group's scores are lowered for the tokens earlier groups just chose (Hamming
    diversity), and each group keeps its own finished hypotheses. Constrained beam search adds, to the usual
    best continuations, each beam's continuations that make progress on the constraints, and ranks all by
    how much of the constraints they fulfil first, score second (Hu et al. 2019's banks), finishing only
    hypotheses that meet every constraint. Returns (sequences (B * n, L), sequence scores (B * n,), beam
    indices (B * n, L - T) or None).
    """
    from gpt2kit.generation.search import _new_cache, _positions, _start, _step_function

    cfg = plan.config
    k = cfg.num_beams
    constrained = plan.mode == "constrained_beam"
    G = 1 if constrained else cfg.num_beam_groups
    gs = k // G  # beams per group
    flat = plan.input_ids
    BK, T = flat.shape
    B = BK // k
    device = flat.device
    max_length = plan.max_length
    if max_length <= T:
        return flat, torch.zeros(BK, device=device)[: B * cfg.num_return_sequences], None
    eos_ids = plan.eos.tolist() if plan.eos is not None else None
    n_eos = len(eos_ids) if eos_ids is not None else 0
    pad = plan.pad_token_id
    constraints = constraints_from_config(cfg.constraints, cfg.force_words_ids) if constrained else None

    tokens = torch.full((BK, max_length), pad if pad is not None else 0, dtype=torch.long, device=device)
    tokens[:, :T] = flat
    mask = None
    if plan.attention_mask is not None:
        mask = torch.ones((BK, max_length), dtype=plan.attention_mask.dtype, device=device)
        mask[:, :T] = plan.attention_mask
    cache = _new_cache(model, plan, BK) if cfg.use_cache else None
    if state is not None:
        state["cache"] = cache
    step_fn = _step_function(model, plan, cache, mask, record)
    position_ids, advance = _positions(plan, BK, T)

    beam_scores = torch.full((B, k), -1e9, dtype=torch.float, device=device)
    beam_scores[:, ::gs] = 0  # one live beam per group at the start, so the group's beams differ
    beam_scores = beam_scores.view(BK)
    hyps = [_Hypotheses(gs, cfg.length_penalty, cfg.early_stopping, max_length) for _ in range(B * G)]
    done = [False] * (B * G)
    # transformers' beam_indices bookkeeping (output_scores): per group, a tuple of indices per beam
    track = scores_out is not None
    history: list[list[tuple]] = [[() for _ in range(B * gs)] for _ in range(G)]

    with torch.inference_mode():
        logits = _start(model, plan, position_ids, cache, record)  # (BK, V)
    next_pos = position_ids[:, -1:] + advance
    cur = T
    while True:
        if logits_out is not None:
            logits_out.append(logits)
        current = torch.zeros(BK, dtype=torch.long, device=device)
        reorder = torch.zeros(BK, dtype=torch.long, device=device)
        step_scores = torch.zeros_like(logits) if scores_out is not None else None
        for g in range(G):
            rows = torch.tensor(
                [b * k + j for b in range(B) for j in range(g * gs, (g + 1) * gs)], device=device
            )
            group_ids = tokens[rows, :cur]  # (B * gs, cur)
            logp = F.log_softmax(logits[rows], dim=-1)
            if constrained:
                processed = plan.processors(group_ids, logp)
            else:
                processed = plan.processors(group_ids, logp, current_tokens=current, beam_group_idx=g)
            acc = processed + beam_scores[rows][:, None]  # (B * gs, V)
            if step_scores is not None:
                # transformers records the processed scores for group beams, the accumulated ones here
                step_scores[rows] = acc if constrained else processed
            V = acc.shape[-1]
            top_scores, top = torch.topk(
                acc.view(B, gs * V), max(2, 1 + n_eos) * gs, dim=1, largest=True, sorted=True
            )
            from_beam, top_tokens = top // V, top % V
            new_scores, new_tokens, new_rows = _process_group(
                hyps,
                done,
                g,
                G,
                gs,
                group_ids,
                top_scores,
                top_tokens,
                from_beam,
                eos_ids,
                pad,
                cur,
                T,
                history if track else None,
                constraints,
                acc,
            )
            beam_scores[rows] = new_scores
            if track:  # transformers extends the group's own records, indexed by row within the group
                history[g] = [history[g][r] + (r,) for r in new_rows.tolist()]
            tokens[rows, :cur] = group_ids[new_rows]
            tokens[rows, cur] = new_tokens
            current[rows] = new_tokens
            reorder[rows] = k * torch.div(new_rows, gs, rounding_mode="floor") + g * gs + new_rows % gs
        if step_scores is not None:
            scores_out.append(step_scores)
        if cache is not None:
            cache.reorder_cache(reorder)
        cur += 1
        last = tokens[:, cur - 1]
        stop = cur >= max_length or all(done)
        if not stop and plan.eos is not None:
            stop = bool(torch.isin(last, plan.eos).all())
        if not stop and plan.stop_checker is not None:
            stop = bool(plan.stop_checker(tokens[:, :cur]).all())
        if stop:
            break
        with torch.inference_mode():
            logits = step_fn(tokens[:, cur - 1 : cur], cur, next_pos, tokens[:, :cur])
        next_pos = next_pos + advance

    final_history = [h for group in history for h in group] if track else None
    return _finalize(
        hyps,
        done,
        tokens[:, :cur],
        beam_scores,
        G,
        gs,
        T,
        cfg,
        eos_ids,
        pad,
        max_length,
        final_history,
        constraints,
    )


def _process_group(
    hyps,
    done,
    g,
    G,
    gs,
    group_ids,
    top_scores,
    top_tokens,
    from_beam,
    eos_ids,
    pad,
    cur,
    T,
    history,
    constraints,
    acc,
):
    """One group's step for every prompt (transformers' BeamScorer.process): move the continuations that end
    in eos (among the gs best) into the finished hypotheses, keep the gs best others. -> (scores (B * gs,),
    tokens (B * gs,), source rows in group_ids (B * gs,))."""
    B = top_scores.shape[0]
    device = top_scores.device
    next_scores = torch.zeros((B, gs), dtype=top_scores.dtype, device=device)
    next_tokens = torch.zeros((B, gs), dtype=torch.long, device=device)
    next_rows = torch.zeros((B, gs), dtype=torch.long, device=device)
    flat_history = [h for group in history for h in group] if history is not None else None
    for b in range(B):
        h = hyps[b * G + g]
        if done[b * G + g]:
            if eos_ids is None or pad is None:
                raise ValueError(
                    "Generated beams >= num_beams -> eos_token_id and pad_token have to be defined"
                )
            next_tokens[b] = pad
            continue
        j = 0
        for rank, (tok, score, src) in enumerate(
            zip(top_tokens[b].tolist(), top_scores[b].tolist(), from_beam[b].tolist())
        ):
            row = b * gs + src
            if eos_ids is not None and tok in eos_ids:
                if rank >= gs:
                    continue
                seq = group_ids[row]
                if constraints is not None and not _completes(constraints, seq.tolist()):
                    continue
                index = flat_history[row] + (row,) if flat_history is not None else None
                h.add(seq.clone(), score, index, cur + 1 - T)
            else:
                next_scores[b, j], next_tokens[b, j], next_rows[b, j] = top_scores[b, rank], tok, row
                j += 1
            if j == gs:
                break
        if constraints is not None:
            next_scores[b], next_tokens[b], next_rows[b] = _advance_constraints(
                b, gs, group_ids, acc, next_scores[b], next_tokens[b], next_rows[b], constraints
            )
        if j < gs:
            raise ValueError(
                f"At most {gs} tokens in {top_tokens[b].tolist()} can be equal to eos_token_id {eos_ids}; "
                "check the logits processors"
            )
        done[b * G + g] = done[b * G + g] or h.is_done(float(top_scores[b].max()), cur + 1, T)
    return next_scores.view(-1), next_tokens.view(-1), next_rows.view(-1)


def _completes(constraints, seq: list[int]) -> bool:
    state = ConstraintListState([c.copy() for c in constraints])
    state.reset(seq)
    return state.completed


def _advance_constraints(b, k, ids, acc, scores, tokens, rows, constraints):
    """Constrained beam search's re-ranking for prompt b (transformers 4.55's step_sentence_constraint).

    Candidates: the k best continuations (scores, tokens, rows into ids) plus, for every beam not yet done
    with its constraints, its continuations by each token that makes progress. Each gets a bank (how much of
    the constraints its sequence fulfils); the survivors are taken round-robin over the banks, best bank
    first, each bank's candidates in order of bank * 100 + score.
    """
    device = rows.device
    start = b * k
    candidates = torch.cat([ids[rows], tokens[:, None]], dim=-1)  # (k, cur + 1)
    seen = candidates.tolist()
    states = []
    for seq in seen:
        state = ConstraintListState(constraints)
        state.reset(seq)
        states.append(state)
    extra_rows, extra_tokens, extra_scores = [], [], []
    for i in range(k):
        prefix = ids[start + i]
        state = ConstraintListState(constraints)
        state.reset(prefix.tolist())
        if state.completed:
            continue
        for tok in state.advance():
            grown = state.copy(stateful=True)  # shares a disjunctive constraint's progress list (see copy)
            grown.add(int(tok))
            seq = prefix.tolist() + [int(tok)]
            if seq in seen:
                continue
            seen.append(seq)
            extra_rows.append(start + i)
            extra_tokens.append(int(tok))
            extra_scores.append(acc[start + i, int(tok)])
            states.append(grown)
    if not extra_rows:
        return scores, tokens, rows
    all_tokens = torch.cat([tokens, torch.tensor(extra_tokens, dtype=torch.long, device=device)])
    all_scores = torch.cat([scores, torch.stack(extra_scores).to(scores.dtype)])
    all_rows = torch.cat([rows, torch.tensor(extra_rows, dtype=torch.long, device=device)])
    banks = torch.tensor([s.get_bank() for s in states], device=device)
    order = (banks * 100 + all_scores).sort(descending=True).indices
    sorted_banks = banks[order].tolist()
    rank_in_bank, count, current = [], -1, sorted_banks[0]
    for bank in sorted_banks:
        count = count + 1 if bank == current else 0
        current = bank
        rank_in_bank.append(count)
    round_robin = sorted(range(len(rank_in_bank)), key=rank_in_bank.__getitem__)  # stable
    keep = order[torch.tensor(round_robin, device=device)][:k]
    return all_scores[keep], all_tokens[keep], all_rows[keep]


def _finalize(hyps, done, tokens, beam_scores, G, gs, T, cfg, eos_ids, pad, max_length, history, constraints):
    """Add the running beams of unfinished prompts to their hypotheses, then take each prompt's best
    num_return_sequences (transformers' BeamScorer.finalize): a finished hypothesis lacks its eos, which is
    written back as eos_token_id[0]."""
    n = cfg.num_return_sequences
    B = len(hyps) // G
    cur = tokens.shape[1]
    for idx, h in enumerate(hyps):
        if done[idx]:
            continue
        rows = [idx * gs + j for j in range(gs)]
        if constraints is not None:
            met = [r for r in rows if _completes(constraints, tokens[r].tolist())]
            # too few beams meet the constraints: the others are added too (transformers adds them all)
            rows = met + ([r for r in rows if r not in met] if len(met) < n else [])
        for r in rows:
            index = history[r] if history is not None else None
            if constraints is not None and r not in met:
                index = None
            h.add(tokens[r], float(beam_scores[r]), index, cur - T)
    best, lengths, indices = [], [], []
    scores = torch.zeros(B * n, dtype=torch.float32, device=tokens.device)
    for b in range(B):
        ranked = sorted((beam for h in hyps[b * G : (b + 1) * G] for beam in h.beams), key=lambda x: x[0])
        for j in range(n):
            score, seq, index = ranked.pop()
            best.append(seq)
            lengths.append(len(seq))
            indices.append(index)
            scores[b * n + j] = score
    width = min(max(lengths) + 1, max_length)
    out = torch.full((B * n, width), pad if pad is not None else 0, dtype=torch.long, device=tokens.device)
    if min(lengths) != max(lengths) and pad is None:
        raise ValueError("`pad_token_id` has to be defined")
    beam_indices = None
    if indices and indices[0] is not None:
        beam_indices = torch.full((B * n, width), -1, dtype=torch.long, device=tokens.device)
    for i, seq in enumerate(best):
        out[i, : lengths[i]] = seq
        if beam_indices is not None and indices[i] is not None:
            beam_indices[i, : len(indices[i])] = torch.tensor(indices[i], dtype=torch.long)
        if lengths[i] < width and eos_ids is not None:
            out[i, lengths[i]] = eos_ids[0]
    # as transformers 4.55's beam scorer: beam_indices as wide as the sequences, -1 past each hypothesis
    return out, scores, beam_indices
