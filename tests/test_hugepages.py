"""Weights moved into transparent huge pages for CPU decoding (model/hugepages.py): the same values, a 2 MB
boundary, once per model, tied weights moved once, and the model still decodes the same tokens, trains and
saves afterwards."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from gpt2kit import GPT2Config, GPT2LMHeadModel
from gpt2kit.model import hugepages

pytestmark = pytest.mark.skipif(not hugepages.available(), reason="no transparent huge pages on this OS")


def test_copy_is_equal_aligned_and_owns_its_memory():
    t = torch.randn(1536, 1024)
    for src in (t, t.t()):
        out = hugepages.copy(src)
        assert torch.equal(out, src) and out.is_contiguous() and out.shape == src.shape
        assert hugepages.in_huge_pages(out)
    out = hugepages.copy(t)
    del t
    out.add_(1)  # writable, and alive without the source
    assert torch.isfinite(out).all()


def lm(seed=0):
    torch.manual_seed(seed)
    # wte: 8192 x 64 float32 = 2 MB, the smallest tensor worth a huge page
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=8192, n_positions=64)).eval()


def test_generate_moves_the_big_weights_once_and_decodes_the_same(monkeypatch, tmp_path):
    moved, kept = lm(), lm()
    ids = torch.randint(0, 8192, (2, 5), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.inference_mode():  # as a user would call it: the moved weights must still be trainable
        monkeypatch.setenv("GPT2KIT_HUGEPAGES", "0")  # the reference stays where it was built
        b = kept.generate(ids, **kw)
        monkeypatch.setenv("GPT2KIT_HUGEPAGES", "1")  # at the first call (by default, once it decodes a lot)
        a = moved.generate(ids, **kw)
        monkeypatch.delenv("GPT2KIT_HUGEPAGES")
    assert torch.equal(a, b)
    wte = moved.transformer.wte.weight
    assert hugepages.in_huge_pages(wte) and not hugepages.in_huge_pages(kept.transformer.wte.weight)
    assert moved.lm_head.weight is wte  # the tied head is the same Parameter, moved once
    assert hugepages.adopt(moved) == 0  # once per model

    moved.train()
    opt = torch.optim.SGD(moved.parameters(), lr=0.1)
    moved(ids, labels=ids).loss.backward()
    before = wte.detach().clone()
    opt.step()
    assert not torch.equal(wte, before) and hugepages.in_huge_pages(wte)  # updated in place

    moved.save_pretrained(tmp_path)
    again = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert torch.equal(again.transformer.wte.weight, wte)


def test_generate_moves_the_weights_once_the_model_has_decoded_enough(monkeypatch):
    """Fresh huge pages can be slow to fault in (1.5-1.9 s for 124M's weights on the dev VM, for ~3% a step):
    generate() adopts once the model has decoded ADOPT_AFTER_STEPS steps, the call about to run counted, and
    drops the decode step recordings that hold the old weights."""
    from gpt2kit.generation import traced

    monkeypatch.delenv("GPT2KIT_HUGEPAGES", raising=False)
    monkeypatch.setattr(hugepages, "ADOPT_AFTER_STEPS", 10)
    model, reference = lm(), lm()
    ids = torch.randint(0, 8192, (1, 5), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    wte = model.transformer.wte.weight
    traced._recordings[model] = OrderedDict()  # a model's recordings: kept until its weights move
    first = model.generate(ids, **kw)
    assert not hugepages.in_huge_pages(wte) and model in traced._recordings  # 6 steps: not yet
    second = model.generate(ids, **kw)  # 12 with this call's
    assert hugepages.in_huge_pages(wte) and model not in traced._recordings
    monkeypatch.setenv("GPT2KIT_HUGEPAGES", "0")
    assert torch.equal(first, second) and torch.equal(second, reference.generate(ids, **kw))


def test_a_compiled_step_moves_the_weights_at_the_first_call(monkeypatch):
    """A compiled decode step (max-autotune on a CPU) freezes the weights it is compiled with: moving them
    later would compile it again, so a compiling call adopts at once."""
    monkeypatch.delenv("GPT2KIT_HUGEPAGES", raising=False)
    model = lm()
    assert hugepages.adopt_when_due(model, 6, at_once=True)
    assert hugepages.in_huge_pages(model.transformer.wte.weight)
    assert not hugepages.adopt_when_due(model, 6, at_once=True)  # nothing left to move
    for value, want in (("off", False), ("no", False), (" 0 ", False), ("on", True), ("", True)):
        monkeypatch.setenv("GPT2KIT_HUGEPAGES", value)
        assert hugepages.enabled() is (want and hugepages.available())


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("GPT2KIT_HUGEPAGES", "0")
    model = lm()
    assert hugepages.adopt(model) == 0
    assert not hugepages.in_huge_pages(model.transformer.wte.weight)
    monkeypatch.delenv("GPT2KIT_HUGEPAGES")
    assert hugepages.adopt(model) == 8192 * 64 * 4  # only wte is 2 MB or more


def test_aliased_or_shared_parameters_stay_where_they_are():
    model = lm()
    flat = torch.zeros(2 * 8192 * 64)
    model.transformer.wte.weight.data = flat[: 8192 * 64].view(8192, 64)  # a view into a flat buffer
    model.transformer.wpe.weight = torch.nn.Parameter(torch.zeros(1024, 1024))
    model.lm_head.extra = torch.nn.Parameter(model.transformer.wpe.weight.data)  # two Parameters, one storage
    assert hugepages.adopt(model) == 0
    assert model.transformer.wte.weight.data_ptr() == flat.data_ptr()
    assert model.lm_head.extra.data_ptr() == model.transformer.wpe.weight.data_ptr()
    shared = lm()
    shared.share_memory()
    assert hugepages.adopt(shared) == 0 and shared.transformer.wte.weight.is_shared()


def test_a_moved_weight_saves_at_its_own_size(tmp_path):
    t = hugepages.copy(torch.randn(1024, 1024))
    assert t.untyped_storage().nbytes() == 4 << 20  # no alignment padding in the storage
    torch.save(t, tmp_path / "t.pt")
    assert (tmp_path / "t.pt").stat().st_size < (4 << 20) + 4096
