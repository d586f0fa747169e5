"""The opt-in speed levers of generate(): the compiled fixed-shape decode step and weight-only int8.

The compiled step must give the eager loop's tokens (a property: same model, same prompts); int8 changes the
numbers on purpose, so it is held to its kernel's arithmetic and to a top-1 agreement rate instead.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

import gpt2kit
from gpt2kit.generation import search
from gpt2kit.model import quant
from gpt2kit.model.cache import StaticCache
from gpt2kit.model.packed import PackedLinear, pack_weights
from gpt2kit.model.quant import DynamicInt8Linear, Int8Linear, dynamic_engines, quantize_int8, quantize_weight
from hf_oracle import hf_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fast")
    hf_model("GPT2LMHeadModel", seed=7).save_pretrained(folder)
    return gpt2kit.GPT2LMHeadModel.from_pretrained(folder)


def prompts(B=3, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 99, (B, T), generator=g)
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # left padding
    return x.masked_fill(mask == 0, 0), mask


# --- compile= -------------------------------------------------------------------------------------------


def test_compile_option_is_validated_before_any_work(model):
    x = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="not a torch.compile mode"):
        model.generate(x, max_new_tokens=2, compile="fast")
    with pytest.raises(ValueError, match=r"unknown torch.compile arguments \['fulgraph'\]"):
        model.generate(x, max_new_tokens=2, compile={"fulgraph": True})
    with pytest.raises(TypeError, match="compile must be a bool"):
        model.generate(x, max_new_tokens=2, compile=1)
    assert search.compile_options(False) is None and search.compile_options(None) is None
    assert search.compile_options("max-autotune") == {
        "fullgraph": True,
        "dynamic": False,
        "mode": "max-autotune",
    }


def test_static_step_equals_the_eager_step(model):
    """decode_one_token_static (all slots, masked) gives decode_one_token's logits, with left padding."""
    x, mask = prompts()
    B, T = x.shape
    logits = []
    with torch.inference_mode():
        for static in (False, True):
            cache = StaticCache.for_model(model.config, B, 64)
            for buf in (*cache.k, *cache.v):
                buf.zero_()
            pos = search._position_ids(mask, B, T, x.device)
            nxt = search.prefill(model, x, mask, pos, cache).argmax(-1)[:, None]
            full = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)
            if static:
                key_ok = torch.ones(B, 64, dtype=torch.bool)
                key_ok[:, : T + 1] = full.bool()
                args = (nxt, pos[:, -1:] + 1, torch.tensor([T]), cache.k, cache.v, key_ok)
                logits.append(search.decode_one_token_static(model, *args))
            else:
                logits.append(search.decode_one_token(model, nxt, full, pos[:, -1:] + 1, cache))
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [dict(max_new_tokens=12), dict(max_new_tokens=8, num_beams=3, num_return_sequences=2)],
    ids=["greedy", "beam"],
)
def test_traced_step_gives_the_eager_tokens(model, kw):
    """The compile plumbing (fixed-shape cache, slot index, mask) under dynamo, without inductor's compile
    time: backend="eager" traces the step exactly as torch.compile does and runs the graph as is."""
    x, mask = prompts()
    a = model.generate(x, attention_mask=mask, pad_token_id=0, **kw)
    b = model.generate(x, attention_mask=mask, pad_token_id=0, compile={"backend": "eager"}, **kw)
    assert torch.equal(a, b), (a, b)


def test_new_lengths_in_one_cache_bucket_reuse_the_compiled_step(model):
    """Calls whose lengths share a cache bucket run one compiled graph: the step's inputs keep their shapes
    and strides from call to call (dynamo guards on both; a new graph costs a full compile)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()  # other tests' graphs of the same step count against dynamo's cache limit
    counter = CompileCounter()
    x, mask = prompts()
    for new in (5, 9, 12):
        model.generate(
            x, attention_mask=mask, pad_token_id=0, max_new_tokens=new, compile={"backend": counter}
        )
    assert counter.frame_count == 1


@pytest.mark.slow
def test_compiled_step_gives_the_eager_tokens(model):
    """inductor (compile=True): ~10-40 s of compilation on a 2-core CPU."""
    x, mask = prompts()
    a = model.generate(x, attention_mask=mask, pad_token_id=0, max_new_tokens=12)
    b = model.generate(x, attention_mask=mask, pad_token_id=0, max_new_tokens=12, compile=True)
    assert torch.equal(a, b), (a, b)


def test_max_autotune_on_a_cpu_freezes_one_step_per_model_and_weights(model):
    """compile="max-autotune" on a CPU bakes the weights into the compiled code: a step is kept per model and
    weights version (a change in place gets a new step, not the old constants). torch.compile is lazy: nothing
    compiles here."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = search.compile_options("max-autotune")
    assert search.freezes(auto, cpu) and search.freezes(
        search.compile_options("max-autotune-no-cudagraphs"), cpu
    )
    assert not search.freezes(auto, cuda)  # inductor's CUDA max-autotune is left as torch has it
    assert not search.freezes(search.compile_options(True), cpu)
    assert not search.freezes(search.compile_options({"mode": "max-autotune", "backend": "eager"}), cpu)
    assert not search.freezes({**auto, "options": {"freezing": False}}, cpu)  # (torch takes mode or options)

    m = copy.deepcopy(model).eval()
    step = search.compiled_step(auto, m)
    assert step is search.compiled_step(auto, m)
    assert step is not search.compiled_step(auto, copy.deepcopy(model).eval())  # each model its own
    assert step is not search.compiled_step(search.compile_options(True), m)  # the shared, unfrozen one
    with torch.no_grad():
        m.transformer.h[0].mlp.c_fc.weight.mul_(2.0)
    again = search.compiled_step(auto, m)
    assert again is not step and again is search.compiled_step(auto, m)
    assert again.__wrapped__.__code__ is not step.__wrapped__.__code__  # dynamo's cache is per code object
    m.load_state_dict(copy.deepcopy(model).state_dict())
    loaded = search.compiled_step(auto, m)
    assert loaded is not again
    m.transformer.ln_f.weight.data.copy_(torch.rand_like(m.transformer.ln_f.weight))  # bumps no version
    by_data = search.compiled_step(auto, m)
    assert by_data is not loaded and by_data is search.compiled_step(auto, m)
    with torch.inference_mode():  # inference tensors have no version counter
        made_inside = copy.deepcopy(model).eval()
        made_inside.load_state_dict(model.state_dict())
        inference_step = search.compiled_step(auto, made_inside)
    assert inference_step is search.compiled_step(auto, made_inside)


@pytest.mark.slow
def test_max_autotune_step_gives_the_eager_tokens_before_and_after_a_weight_change(model, caplog):
    """inductor max-autotune with frozen weights and its C++ GEMMs (~1-2 min on a 2-core CPU): the eager
    tokens, and after the weights change in place, the new eager tokens (a frozen step kept across the change
    gave the old model's)."""
    m = copy.deepcopy(model).eval()
    x, mask = prompts()
    kw = dict(attention_mask=mask, pad_token_id=0, max_new_tokens=8)
    assert torch.equal(m.generate(x, **kw, compile="max-autotune"), m.generate(x, **kw))
    with torch.no_grad():
        m.lm_head.weight.copy_(torch.randn_like(m.lm_head.weight))
    changed = m.generate(x, **kw)
    with caplog.at_level("WARNING", logger="gpt2kit.generation.search"):
        assert torch.equal(m.generate(x, **kw, compile="max-autotune"), changed)
    assert "compiling the step again" in caplog.text

    # A collected model's frozen weights go once dynamo's cache is reset (inductor's module cache kept them,
    # and packed copies, to the process's end), and a model with the same weights as one whose step was
    # dropped compiles and decodes right.
    weight = weakref.ref(m.lm_head.weight)
    del m
    gc.collect()
    torch._dynamo.reset()
    gc.collect()
    assert weight() is None
    again = copy.deepcopy(model).eval()
    assert torch.equal(again.generate(x, **kw, compile="max-autotune"), again.generate(x, **kw))
    del again
    gc.collect()
    twin = copy.deepcopy(model).eval()
    assert torch.equal(twin.generate(x, **kw, compile="max-autotune"), twin.generate(x, **kw))


# --- int8 -----------------------------------------------------------------------------------------------


def test_quantize_weight_rounds_each_row_to_its_own_scale():
    w = torch.randn(10, 16) * torch.logspace(-3, 1, 10)[:, None]
    q, scales = quantize_weight(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    err = (q.float() * scales[:, None] - w).abs()
    assert bool((err <= scales[:, None] / 2 + 1e-7).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_is_the_dequantized_matmul(dtype):
    layer = gpt2kit.model.linear.Linear(16, 24)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    q = Int8Linear.from_float(layer, dtype)
    x = torch.randn(2, 3, 16)
    w = q.weight_int8.float() * q.scales.float()[:, None]  # (out, in)
    want = x @ w.t() + layer.bias
    tol = 1e-5 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(q(x.to(dtype)).float(), want, atol=tol, rtol=tol / 10)


def test_quantize_int8_model_agrees_on_top1_and_generates(model):
    """Teacher-forced top-1 agreement with the float model on 4 x 40 positions; the untouched embedding
    stays the float one."""
    qm = quantize_int8(copy.deepcopy(model), method="weight-only")
    assert isinstance(qm.lm_head, Int8Linear) and isinstance(qm.transformer.h[0].mlp.c_fc, Int8Linear)
    assert qm.transformer.wte.weight.dtype == torch.float32
    x = torch.randint(1, 99, (4, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        agree = (qm(x).logits.argmax(-1) == model(x).logits.argmax(-1)).float().mean()
    assert agree >= 0.9, agree
    out = qm.generate(x[:, :5], max_new_tokens=6, pad_token_id=0)
    assert out.shape == (4, 11)


def test_quantize_int8_refuses_what_it_cannot_do(model):
    m = copy.deepcopy(model)
    with pytest.raises(ValueError, match="model.eval"):
        quantize_int8(m.train())
    quantize_int8(m.eval())
    with pytest.raises(ValueError, match="already quantized"):
        quantize_int8(m)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        quantize_int8(copy.deepcopy(model).double())


# --- prepacked (oneDNN) weights -------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 8, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_is_the_same_product(rows, dtype):
    from gpt2kit.model.packed import packing_available

    if not packing_available(dtype):  # bf16 on a CPU without AVX-512 (or an ONEDNN_MAX_CPU_ISA=AVX2 run)
        with pytest.raises(ValueError, match="cannot pack torch.bfloat16 weights on this CPU"):
            PackedLinear.from_float(gpt2kit.model.linear.Linear(4, 4).to(dtype), batch_size=8)
        return
    layer = gpt2kit.model.linear.Linear(48, 40)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    layer = layer.to(dtype)
    x = torch.randn(rows, 48, dtype=dtype)
    packed = PackedLinear.from_float(layer, batch_size=8)
    tol = 1e-5 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(packed(x[None]).float(), layer(x[None]).float(), atol=tol, rtol=tol)


def test_pack_weights_keeps_greedy_tokens(model):
    x, mask = prompts()
    packed = pack_weights(copy.deepcopy(model), batch_size=3, measure=False)  # every layer, timed or not
    assert isinstance(packed.lm_head, PackedLinear) and isinstance(
        packed.transformer.h[1].attn.c_attn, PackedLinear
    )
    a = model.generate(x, attention_mask=mask, pad_token_id=0, max_new_tokens=12)
    b = packed.generate(x, attention_mask=mask, pad_token_id=0, max_new_tokens=12)
    assert torch.equal(a, b), (a, b)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x).logits, model(x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not dynamic_engines(), reason="no quantized engine in this torch")
@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_dynamic_int8_decode_step_compiles_whole(model, backend):
    """The prepacked int8 weights reach compiled code through the gpt2kit::dynamic_int8_linear op, so the
    step traces as one graph (fullgraph=True: a break would raise) and gives the eager int8 tokens."""
    qm = quantize_int8(copy.deepcopy(model).eval(), method="dynamic")
    assert isinstance(qm.lm_head, DynamicInt8Linear)
    x, mask = prompts()
    a = qm.generate(x, attention_mask=mask, pad_token_id=0, max_new_tokens=10)
    opts = {"backend": backend, "fullgraph": True}
    b = qm.generate(x, attention_mask=mask, pad_token_id=0, max_new_tokens=10, compile=opts)
    assert torch.equal(a, b), (a, b)
    handle = qm.lm_head.handle
    del qm, b
    gc.collect()
    assert handle not in quant._PACKED  # a dropped model releases its prepacked weights


def test_pack_weights_refuses_what_it_cannot_do(model):
    with pytest.raises(ValueError, match="model.eval"):
        pack_weights(copy.deepcopy(model).train())
    with pytest.raises(ValueError, match="batch_size"):
        pack_weights(copy.deepcopy(model), batch_size=0)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        pack_weights(copy.deepcopy(model).double())
    with pytest.raises(ValueError, match="cannot trace a model after pack_weights"):
        pack_weights(copy.deepcopy(model), measure=False).generate(
            torch.tensor([[1, 2]]), max_new_tokens=2, compile=True
        )


def test_resolve_weights_picks_packed_only_where_it_can():
    from gpt2kit.model.inference import convert_weights, load_dtype, resolve_weights
    from gpt2kit.model.packed import packing_available

    cpu = "packed" if packing_available() else "float"
    assert resolve_weights("auto") == resolve_weights("auto", "cpu") == cpu
    assert resolve_weights("auto", "cuda") == "float"  # oneDNN's layout is a CPU layout
    assert resolve_weights("auto", "cpu", compile=True) == "float"  # dynamo cannot trace packed weights
    assert resolve_weights("int8", "cpu") == "int8" and load_dtype("int8", "float32") == "float32"
    assert load_dtype("packed", "float32") == "float32"
    assert load_dtype("int8", "float32", "cuda") == "float32"  # the slow fp32 int8 kernel is a CPU matter
    with pytest.raises(ValueError, match="--weights packed is oneDNN's CPU layout and cannot run on cuda"):
        resolve_weights("packed", "cuda")
    with pytest.raises(ValueError, match="not one of auto, float, packed, int8"):
        resolve_weights("fp4")
    with pytest.raises(ValueError, match="resolve auto first"):
        convert_weights(torch.nn.Linear(2, 2), "auto")
