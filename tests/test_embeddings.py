"""Embedder against transformers 4.57: each text run alone, hidden_states[layer] pooled over its own tokens.

The checkpoint is tiny and random (tests/hf_oracle.py, large weights so that no wiring mistake hides under
the tolerance) with GPT-2's real vocabulary, so texts go through the real tokenizer. Every comparison
uses batches that really are padded (asserted through `last_stats`), so padding leaking into a vector
would show.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gpt2kit import Embedder, GPT2TokenizerFast
from gpt2kit.embeddings import plan_batches, windows
from hf_oracle import hf_model

N_POSITIONS = 48

TEXTS = [
    "Hello world",
    "A",
    "The quick brown fox jumps over the lazy dog, and then it runs away into the woods.",
    "GPT-2's hidden states as features for your own classifier or regressor.",
    "x",
    "Numbers 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15",
    "ümlaut, 日本語, emoji 🙂 and <|endoftext|> in one text",
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(transformers model, folder): a 2-layer random GPT-2 with GPT-2's tokenizer saved next to it."""
    folder = tmp_path_factory.mktemp("embed") / "tiny"
    hf = hf_model("GPT2Model", seed=3, vocab_size=50257, n_positions=N_POSITIONS)
    hf.save_pretrained(folder)
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(folder)
    return hf, folder


@pytest.fixture(scope="module")
def tok():
    return GPT2TokenizerFast.from_pretrained("gpt2")


def oracle_states(hf, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """transformers' hidden_states for one text run alone (no padding, no mask): (n_layer + 1) x (T, C)."""
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states)


def pool(h: torch.Tensor, pooling: str) -> np.ndarray:
    return {
        "mean": lambda: h.mean(0),
        "max": lambda: h.amax(0),
        "first": lambda: h[0],
        "last": lambda: h[-1],
        "none": lambda: h,
    }[pooling]().numpy()


def oracle(hf, tok, text, layers, pooling, max_length=None):
    ids = tok(text)["input_ids"][:max_length]
    hs = oracle_states(hf, ids)
    return pool(torch.cat([hs[i] for i in layers], dim=-1), pooling)


def assert_vec_close(got, want, tol=1e-4):
    """Within tol, relative to the vector's scale (hidden states of the oracle's large weights reach ~30)."""
    scale = max(1.0, float(np.abs(want).max()))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=tol * scale, rtol=tol)


@pytest.mark.parametrize("pooling", ["mean", "max", "first", "last", "none"])
@pytest.mark.parametrize("layer", [-1, 0, 1, [0, -1], [2, 1]])
def test_every_pooling_and_layer_matches_transformers(ckpt, tok, pooling, layer):
    hf, folder = ckpt
    emb = Embedder.from_pretrained(folder, layer=layer, pooling=pooling, batch_tokens=80)
    out = emb.embed(TEXTS)
    stats = emb.last_stats
    if pooling == "first":  # causal: a text's first token alone has the hidden states it has in the text
        assert stats.positions == stats.tokens == len(TEXTS)
    else:
        assert stats.positions > stats.tokens  # batches held padding, and several texts each
    assert len(out) == len(TEXTS)
    layers = [layer] if isinstance(layer, int) else layer
    layers = [i % 3 for i in layers]
    for text, got in zip(TEXTS, out):
        assert got.dtype == np.float32
        assert_vec_close(got, oracle(hf, tok, text, layers, pooling))
    if pooling != "none":
        assert isinstance(out, np.ndarray) and out.shape == (len(TEXTS), emb.dim)
        assert emb.dim == 32 * len(layers)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_packed_weights_match_transformers(ckpt, tok, monkeypatch, pooling):
    """from_pretrained packs the projections where packing measures faster (forced here) and runs c_fc with
    its GELU as one oneDNN call: same vectors, same model fingerprint as unpacked."""
    from gpt2kit.model import packed

    if not packed.packing_available():
        pytest.skip("this torch build cannot pack weights")
    hf, folder = ckpt
    monkeypatch.setattr(packed, "_packed_rows", lambda layer, rows: rows)
    emb = Embedder.from_pretrained(folder, pooling=pooling, batch_tokens=80)
    mlp = emb.model.h[0].mlp
    assert type(mlp.c_fc).__name__ == "_PackedTanhGelu" and type(mlp.c_proj).__name__ == "PackedLinear"
    out = emb.embed(TEXTS)
    assert emb.last_stats.positions > emb.last_stats.tokens
    for text, got in zip(TEXTS, out):
        assert_vec_close(got, oracle(hf, tok, text, [2], pooling))
    plain = Embedder.from_pretrained(folder, pooling=pooling, pack=False)
    assert type(plain.model.h[0].mlp.c_fc).__name__ == "Linear"
    assert emb.options() == plain.options()  # a resumed file run sees the same model


def test_normalize(ckpt, tok):
    hf, folder = ckpt
    for pooling in ("mean", "none"):
        out = Embedder.from_pretrained(folder, pooling=pooling, normalize=True).embed(TEXTS[:3])
        for text, got in zip(TEXTS, out):
            want = oracle(hf, tok, text, [2], pooling)
            want = want / np.linalg.norm(want, axis=-1, keepdims=True)
            assert_vec_close(got, want)
            np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-5)


def test_padding_never_leaks(ckpt):
    """A short text's vector is the same alone and in a batch padded to much longer texts."""
    _, folder = ckpt
    long = "word " * 40  # 40 tokens
    for pooling in ("mean", "max", "last"):  # "first" runs one position per text: nothing to pad
        emb = Embedder.from_pretrained(folder, pooling=pooling, batch_tokens=10_000)
        alone = emb.embed(["short text"])[0]
        batch = emb.embed([long, "short text", long + "!"])
        assert emb.last_stats.positions == 3 * max(map(len, emb.tokenize([long, long + "!"])))
        np.testing.assert_allclose(batch[1], alone, atol=1e-5 * max(1, np.abs(alone).max()), rtol=1e-5)


def test_input_order_survives_bucketing(ckpt):
    _, folder = ckpt
    emb = Embedder.from_pretrained(folder, batch_tokens=64)
    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(n)) for n in rng.integers(1, 40, size=30)]
    texts = [f"{i} {t}" for i, t in enumerate(texts)]  # all different
    batched = emb.embed(texts)
    alone = np.stack([emb.embed([t])[0] for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-4, rtol=1e-5)
    # the rows really came back in input order: neighbours differ from each other
    assert min(np.abs(batched[i] - batched[i + 1]).max() for i in range(len(texts) - 1)) > 1e-3


def test_truncate_counts_and_logs(ckpt, tok, caplog):
    hf, folder = ckpt
    long = "one two three four five six seven eight nine ten " * 4  # 40 tokens
    emb = Embedder.from_pretrained(folder, max_length=16)
    with caplog.at_level(logging.WARNING, logger="gpt2kit"):
        out = emb.embed([long, "short"])
    assert emb.last_stats.truncated == 1 and emb.last_stats.chunked == 0
    assert "1 of 2 texts were longer than max_length=16" in caplog.text
    assert_vec_close(out[0], oracle(hf, tok, long, [2], "mean", max_length=16))


@pytest.mark.parametrize("pooling", ["mean", "max", "first", "last", "none"])
def test_chunk_pools_every_token_once_with_context(ckpt, tok, pooling):
    """long_text="chunk": windows of max_length every stride tokens; each token pooled once, from the
    window that first reached it (with stride..max_length tokens of left context)."""
    hf, folder = ckpt
    long = "one two three four five six seven eight nine ten " * 4
    ids = tok(long)["input_ids"]
    L, stride = 16, 6
    emb = Embedder.from_pretrained(folder, max_length=L, long_text="chunk", stride=stride, pooling=pooling)
    out = emb.embed(["short", long])
    assert emb.last_stats.chunked == (pooling != "first") and emb.last_stats.truncated == 0
    # the oracle: transformers on each window alone, keeping the tokens no earlier window kept
    kept = torch.cat([oracle_states(hf, ids[s:e])[-1][keep:] for s, e, keep in windows(len(ids), L, stride)])
    assert kept.shape[0] == len(ids)
    want = pool(kept, pooling)
    assert_vec_close(out[1], want)
    if pooling == "mean":  # the mean of the windows' means weighted by the tokens each contributes
        parts = [oracle_states(hf, ids[s:e])[-1][keep:] for s, e, keep in windows(len(ids), L, stride)]
        weighted = sum(p.mean(0) * len(p) for p in parts) / len(ids)
        assert_vec_close(out[1], weighted.numpy())
    assert_vec_close(out[0], oracle(hf, tok, "short", [2], pooling))  # short texts are unaffected


@given(n=st.integers(1, 300), max_length=st.integers(1, 64), data=st.data())
def test_windows_cover_every_token_once(n, max_length, data):
    stride = data.draw(st.integers(1, max_length))
    ws = windows(n, max_length, stride)
    covered = []
    for s, e, keep in ws:
        assert 0 < e - s <= max_length and 0 <= keep < e - s
        covered += range(s + keep, e)
        if s > 0:  # every window after the first gives its new tokens at least max_length - stride context
            assert keep >= max_length - stride or e == n
    assert covered == list(range(n))


def greedy_plan(lengths, budget):
    """The obvious plan: longest first, fill each batch up to the budget."""
    batches = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def plan_cost(lengths, batches, min_tokens):
    return sum(max(len(b) * max(lengths[i] for i in b), min_tokens) for b in batches)


@given(
    lengths=st.lists(st.integers(1, 500), max_size=60),
    budget=st.integers(1, 3000),
    min_tokens=st.sampled_from([1, 64, 256]),
)
def test_plan_batches_is_a_partition_under_the_budget(lengths, budget, min_tokens):
    batches = plan_batches(lengths, budget, min_tokens)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * width <= budget
        assert lengths[b[0]] == width  # the first row sets the width
    # never worse than filling greedily (it is the optimum over cuts of the sorted rows)
    assert plan_cost(lengths, batches, min_tokens) <= plan_cost(
        lengths, greedy_plan(lengths, budget), min_tokens
    )


def test_plan_batches_runs_long_texts_alone_rather_than_padded():
    assert plan_batches([300, 3, 290, 18, 20, 17], 4096) == [[0], [2], [4, 3, 5, 1]]
    assert plan_batches([300, 290], 4096, min_tokens=1000) == [[0, 1]]  # unless tiny batches cost more


def test_batches_are_length_sorted_so_padding_is_small(ckpt):
    _, folder = ckpt
    emb = Embedder.from_pretrained(folder, batch_tokens=256)
    rng = np.random.default_rng(1)
    texts = [" ".join(["tok"] * int(n)) for n in np.exp(rng.uniform(np.log(2), np.log(40), size=200))]
    emb.embed(texts)
    assert emb.last_stats.padding_overhead < 1.06


def test_empty_texts_get_zero_vectors(ckpt):
    _, folder = ckpt
    for pooling in ("mean", "max", "first", "last"):
        emb = Embedder.from_pretrained(folder, pooling=pooling, normalize=True)
        out = emb.embed(["", "not empty", ""])
        assert emb.last_stats.empty == 2
        assert not out[0].any() and not out[2].any() and out[1].any()
    out = Embedder.from_pretrained(folder, pooling="none").embed(["", "two words"])
    assert out[0].shape == (0, 32) and out[1].shape == (2, 32)
    assert Embedder.from_pretrained(folder).embed([]).shape == (0, 32)


def test_bfloat16_is_close_to_float32(tmp_path):
    """bf16 on a normally initialised model (the oracle's inflated weights would overstate the error)."""
    import transformers

    torch.manual_seed(0)
    transformers.GPT2Model(
        transformers.GPT2Config(n_layer=4, n_embd=128, n_head=4, n_positions=64)
    ).save_pretrained(tmp_path)
    texts = [f"sentence number {i} about {w}" for i, w in enumerate(["cats", "dogs", "finance", "music"] * 4)]
    fp32 = Embedder.from_pretrained(tmp_path).embed(texts)
    emb = Embedder.from_pretrained(tmp_path, dtype="bfloat16")
    assert emb.dtype == torch.bfloat16
    bf16 = emb.embed(texts)
    assert bf16.dtype == np.float32
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() > 0.999, cos.min()
    assert np.abs(fp32 - bf16).max() > 0  # it really ran in bf16


def test_deeper_blocks_are_skipped(ckpt):
    _, folder = ckpt
    emb = Embedder.from_pretrained(folder, layer=1)
    ran = []
    handle = emb.model.h[1].register_forward_hook(lambda *a: ran.append(1))
    emb.embed(["some text"])
    handle.remove()
    assert ran == []
    assert not emb.model.h[1]._forward_hooks  # and our own hooks are gone


def test_bundled_tokenizer_fallback(ckpt, tmp_path):
    hf, _ = ckpt
    hf.save_pretrained(tmp_path / "no_tok")
    emb = Embedder.from_pretrained(tmp_path / "no_tok")
    assert emb.tokenize(["Hello world"]) == [[15496, 995]]
    hf_model("GPT2Model").save_pretrained(tmp_path / "small_vocab")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        Embedder.from_pretrained(tmp_path / "small_vocab")


def test_errors_name_the_bad_value(ckpt):
    _, folder = ckpt
    with pytest.raises(ValueError, match="layer 3 is out of range.*0..2"):
        Embedder.from_pretrained(folder, layer=3)
    with pytest.raises(ValueError, match="layer -4"):
        Embedder.from_pretrained(folder, layer=[-1, -4])
    with pytest.raises(TypeError, match="layer must be"):
        Embedder.from_pretrained(folder, layer="last")
    with pytest.raises(ValueError, match="pooling must be one of"):
        Embedder.from_pretrained(folder, pooling="avg")
    with pytest.raises(ValueError, match=f"max_length must be an int in \\[1, {N_POSITIONS}\\]"):
        Embedder.from_pretrained(folder, max_length=N_POSITIONS + 1)
    with pytest.raises(ValueError, match="long_text"):
        Embedder.from_pretrained(folder, long_text="split")
    with pytest.raises(ValueError, match="dtype must be one of"):
        Embedder.from_pretrained(folder, dtype="int8")
    emb = Embedder.from_pretrained(folder)
    with pytest.raises(TypeError, match="wrap it"):
        emb.embed("one text")
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        emb.embed(["a", 3])


def test_example_classifier_runs():
    """examples/embed_classify.py end to end on the bundled demo model, its default (as every example's):
    well above chance on its three topics."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("sklearn")
    script = Path(__file__).resolve().parents[1] / "examples" / "embed_classify.py"
    out = subprocess.run([sys.executable, str(script), "--per-topic", "30"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "embedded 90 texts with gpt2kit-demo -> (90, 224)" in out.stdout, out.stdout
    accuracy = float(out.stdout.split("test accuracy")[1].split()[0])
    assert accuracy > 0.6, out.stdout
