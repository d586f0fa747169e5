"""Sliding-window perplexity against the loop of transformers' perplexity guide, run on transformers 4.57."""

from __future__ import annotations

import math

import pytest
import torch

from gpt2kit import GPT2LMHeadModel, GPT2TokenizerFast
from gpt2kit.training.evaluate import evaluate_perplexity, perplexity_of_file, plan_windows
from hf_oracle import hf_model, save_hf

pytest.importorskip("transformers")


def guide_perplexity(model, input_ids: torch.Tensor, stride: int, max_length: int) -> tuple[float, int]:
    """The guide's code (transformers 4.57 docs, "Perplexity of fixed-length models"), on a (1, T) tensor."""
    seq_len = input_ids.size(1)
    nll_sum = 0.0
    n_tokens = 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        ids = input_ids[:, begin_loc:end_loc]
        target_ids = ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            neg_log_likelihood = model(ids, labels=target_ids).loss
        num_valid_tokens = (target_ids != -100).sum().item()
        batch_size = target_ids.size(0)
        num_loss_tokens = num_valid_tokens - batch_size
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    avg_nll = nll_sum / n_tokens
    return float(avg_nll), n_tokens


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random transformers GPT-2 (n_positions 64, vocab 99) and the same checkpoint loaded by gpt2kit."""
    hf = hf_model("GPT2LMHeadModel", seed=3)
    folder = save_hf(hf, tmp_path_factory.mktemp("tiny"))
    return hf, GPT2LMHeadModel.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 99, (1, 200), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "stride, max_length",
    [
        (8, 64),  # stride divides the length (200)
        (24, 64),  # does not divide it: the last window is short
        (64, 64),  # stride == max_length: disjoint chunks
        (7, 32),  # a window shorter than n_positions
        (1, 16),  # every window scores one token: the guide gives those windows weight 0
    ],
)
def test_equals_the_guide_on_transformers(models, ids, stride, max_length):
    hf, ours = models
    want_loss, want_tokens = guide_perplexity(hf, ids, stride, max_length)
    got = evaluate_perplexity(ours, input_ids=ids, stride=stride, max_length=max_length)
    assert got.tokens == want_tokens
    assert got.loss == pytest.approx(want_loss, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(want_loss), rel=1e-5)
    assert got.windows == len(plan_windows(200, max_length, stride))


def test_batches_of_windows_and_default_max_length(models, ids):
    hf, ours = models
    want_loss, want_tokens = guide_perplexity(hf, ids, 24, 64)
    for batch_size in (1, 3, 16):
        got = evaluate_perplexity(ours, input_ids=ids[0].tolist(), stride=24, batch_size=batch_size)
        assert got.tokens == want_tokens
        assert got.loss == pytest.approx(want_loss, rel=1e-5)
    # Any causal LM with .config.n_positions and .logits works: transformers' own model gives the same.
    assert evaluate_perplexity(hf, input_ids=ids, stride=24).loss == pytest.approx(want_loss, rel=1e-5)


def test_windows_follow_the_guide():
    assert plan_windows(10, 4, 4) == [(0, 4, 4), (4, 8, 4), (8, 10, 2)]
    assert plan_windows(10, 4, 3) == [
        (0, 4, 4),
        (3, 7, 3),
        (6, 10, 3),
    ]  # stops at the window reaching the end
    assert plan_windows(3, 8, 2) == [(0, 3, 3)]


def test_mode_restored_and_no_grad(models, ids):
    _, ours = models
    ours.train()
    evaluate_perplexity(ours, input_ids=ids, stride=32)
    assert ours.training
    ours.eval()


def test_file_scored_as_written_or_rows_joined_like_the_guide(tmp_path):
    """Text in, with the real GPT-2 vocabulary. A .txt file is its text as written (single newlines stay
    single: before issue 15 its lines were joined by blank lines, which doubled them and changed the number);
    the rows of a .jsonl are joined by blank lines, as the guide joins WikiText's rows. Both tokenized at once."""
    import transformers

    tok = GPT2TokenizerFast.from_pretrained("gpt2")
    hf = hf_model("GPT2LMHeadModel", seed=1, vocab_size=len(tok), n_positions=32)
    ours = GPT2LMHeadModel.from_pretrained(save_hf(hf, tmp_path / "m")).eval()
    assert isinstance(hf, transformers.GPT2LMHeadModel)
    rows = [
        "The quick brown fox jumps over the lazy dog.",
        "",
        "Perplexity, with a sliding window: 12 345.",
    ] * 3
    text = "\n".join(rows) + "\n\r\n  trailing spaces and a Windows line end  \r\n"
    (tmp_path / "t.txt").write_bytes(text.encode("utf-8"))
    (tmp_path / "t.jsonl").write_text("".join(f'{{"body": "{r}"}}\n' for r in rows), encoding="utf-8")

    cases = (
        (tmp_path / "t.txt", "text", text, None),
        (tmp_path / "t.jsonl", "body", "\n\n".join(rows), len(rows)),
    )
    for path, column, scored, n_rows in cases:
        ids = torch.tensor([tok(scored)["input_ids"]])
        want_loss, want_tokens = guide_perplexity(hf, ids, 10, 32)
        got = perplexity_of_file(ours, tok, path, stride=10, column=column)
        assert (got.tokens, got.windows) == (want_tokens, len(plan_windows(ids.shape[1], 32, 10)))
        assert got.loss == pytest.approx(want_loss, rel=1e-5)
        assert (got.text_tokens, got.rows) == (ids.shape[1], n_rows)
    # The two differ: the old doubling of a .txt file's newlines is gone.
    doubled = torch.tensor([tok("\n\n".join(text.split("\n")))["input_ids"]])
    assert perplexity_of_file(ours, tok, tmp_path / "t.txt", stride=10).loss != pytest.approx(
        guide_perplexity(hf, doubled, 10, 32)[0], rel=1e-5
    )


def test_errors(models, tmp_path):
    _, ours = models
    with pytest.raises(ValueError, match=r"stride must be .* 1 to max_length \(64\), got 65"):
        evaluate_perplexity(ours, input_ids=[1, 2, 3], stride=65)
    with pytest.raises(ValueError, match="stride must be .* got 0"):
        evaluate_perplexity(ours, input_ids=[1, 2, 3], stride=0)
    with pytest.raises(ValueError, match="longer than the model's n_positions 64"):
        evaluate_perplexity(ours, input_ids=[1, 2, 3], stride=4, max_length=65)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        evaluate_perplexity(ours, input_ids=[5], stride=4)
    with pytest.raises(ValueError, match="either text .* or input_ids"):
        evaluate_perplexity(ours, stride=4)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        evaluate_perplexity(ours, text="hello", stride=4)
    with pytest.raises(ValueError, match=r"one sequence, shape \(T,\) or \(1, T\); got shape \(2, 3\)"):
        evaluate_perplexity(ours, input_ids=[[1, 2, 3], [4, 5, 6]], stride=4)
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no text"):
        perplexity_of_file(ours, None, tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError):
        perplexity_of_file(ours, None, tmp_path / "missing.txt")
