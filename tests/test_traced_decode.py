"""The recorded decode step (generation/traced.py): generate() replays a torch.jit trace of its eager step.

The replay must be invisible: the same logits bit for bit, for every weight format and with left padding,
and it must step aside for what it cannot replay. Each test also checks that a recording was really made
(or really not), so a silent fallback to the eager step cannot pass for the replay.
"""

from __future__ import annotations

import pytest
import torch

import gpt2kit
from gpt2kit.generation import traced
from gpt2kit.model import matmul
from gpt2kit.model.packed import pack_weights, packing_available
from gpt2kit.model.quant import dynamic_engines, quantize_int8
from hf_oracle import hf_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("traced")
    hf_model("GPT2LMHeadModel", seed=3).save_pretrained(path)
    return path


@pytest.fixture
def record_now(monkeypatch):
    """Record at the first decode step of a call instead of after TRACE_AFTER_STEPS steps."""
    monkeypatch.setattr(traced, "TRACE_AFTER_STEPS", 1)
    monkeypatch.delenv("GPT2KIT_TRACE_DECODE", raising=False)


def prompts(padded: bool, B: int = 3, T: int = 6):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 99, (B, T), generator=g)
    mask = torch.ones_like(x)
    if padded:
        mask[0, :2] = 0
        mask[2, :4] = 0
    return x.masked_fill(mask == 0, 0), mask


def run(model, x, mask, monkeypatch, trace: bool, **kw):
    monkeypatch.setenv("GPT2KIT_TRACE_DECODE", "1" if trace else "0")
    torch.manual_seed(5)
    out = model.generate(
        x,
        attention_mask=mask,
        max_new_tokens=12,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_logits=True,
        **kw,
    )
    return out.sequences, torch.stack(out.logits)


def test_the_replay_is_one_flat_graph(folder, record_now, monkeypatch):
    """The recording is inlined (traced._inlined): no module calls left for the interpreter, no eval-mode
    dropout, and the int8 layers are one op each."""
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    if dynamic_engines():
        quantize_int8(model, method="dynamic")
    x, mask = prompts(False)
    run(model, x, mask, monkeypatch, trace=True)
    (recording,) = traced._recordings[model].values()
    kinds = [n.kind() for n in recording.graph.nodes()]
    assert "prim::CallMethod" not in kinds and "aten::dropout" not in kinds
    if dynamic_engines():
        assert kinds.count("quantized::linear_dynamic") == 4 * model.config.n_layer + 1
        assert "aten::contiguous" not in kinds


def recordings(model) -> int:
    return len(traced._recordings.get(model, {}))


def code(script_module) -> str:
    """The TorchScript code of a traced module and all its submodules."""
    return "\n".join(m.code for m in script_module.modules() if hasattr(m, "code"))


def formats():
    out = ["float", "onednn"]
    if packing_available():
        out.append("packed")
    if dynamic_engines():
        out.append("int8")
    return out


@pytest.mark.parametrize("fmt", formats())
@pytest.mark.parametrize("padded", [False, True])
def test_replay_gives_the_eager_logits_bit_for_bit(folder, fmt, padded, record_now, monkeypatch):
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    if fmt == "onednn":  # the measured float32 choice, forced to oneDNN's op so the trace must hold it
        if not matmul.onednn_linear_available():
            pytest.skip("no oneDNN linear op in this torch build")
        monkeypatch.setattr(matmul, "_choice", "onednn")
        monkeypatch.setattr(matmul, "_fast", {})
    elif fmt == "packed":
        pack_weights(model, batch_size=3, measure=False)
    elif fmt == "int8":
        quantize_int8(model, method="dynamic")
    x, mask = prompts(padded)
    want_ids, want_logits = run(model, x, mask, monkeypatch, trace=False)
    assert recordings(model) == 0
    got_ids, got_logits = run(model, x, mask, monkeypatch, trace=True)
    assert recordings(model) == 1, "generate() did not record its decode step"
    assert torch.equal(got_ids, want_ids)
    assert torch.equal(got_logits, want_logits)
    # sampling replays the same recording (same shape), and draws the same tokens
    got = run(model, x, mask, monkeypatch, trace=True, do_sample=True, top_k=20)
    want = run(model, x, mask, monkeypatch, trace=False, do_sample=True, top_k=20)
    assert recordings(model) == 1
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("fmt", [f for f in formats() if f in ("float", "int8")])
@pytest.mark.parametrize("padded", [False, True])
def test_greedy_replay_chooses_the_tokens_itself(folder, fmt, padded, record_now, monkeypatch):
    """Greedy decoding that keeps no scores records the eos masks and the argmax with the step
    (traced._PickStep): the loop then only reads the tokens. Rows end at different steps, some while
    min_new_tokens still forbids eos: the same sequences as the eager loop and as transformers."""
    import transformers

    from gpt2kit.generation import search

    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    if fmt == "int8":
        quantize_int8(model, method="dynamic")
    x, mask = prompts(padded)
    kw = dict(attention_mask=mask, max_new_tokens=12, pad_token_id=0)
    free = model.generate(x, **kw)[:, x.shape[1] :]
    # eos: the token greedy decoding picks most often without one, so that it ends rows early and the mask
    # has something to forbid during the first min_new_tokens steps
    eos = int(free[:, :-1].flatten().mode().values)
    assert (free[:, :4] == eos).any() and (free[:, 4:] == eos).any()
    kw.update(eos_token_id=eos, min_new_tokens=4)
    monkeypatch.setenv("GPT2KIT_TRACE_DECODE", "0")
    want = model.generate(x, **kw)
    monkeypatch.setenv("GPT2KIT_TRACE_DECODE", "1")
    choices = []
    real_choose = search.choose
    monkeypatch.setattr(search, "choose", lambda *a, **k: choices.append(1) or real_choose(*a, **k))
    got = model.generate(x, **kw)
    assert recordings(model) == 1
    (key,) = traced._recordings[model]
    assert key[-1] is True, "the recording does not make the choice"
    assert torch.equal(got, want)
    assert len(choices) == 1  # only the prompt's token is chosen in Python; every later one in the replay
    assert (got[:, x.shape[1] :] == 0).any(), "no row ended early: the test checks nothing about eos"
    if fmt == "float":
        hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
        assert torch.equal(got, hf.generate(x, **kw))
    # the same call keeping its scores runs the processors in Python, with the same tokens
    out = model.generate(x, return_dict_in_generate=True, output_scores=True, **kw)
    assert torch.equal(out.sequences, want)


def test_beam_search_replays_too(folder, record_now, monkeypatch):
    """Beam search reorders the cache rows between steps; the replay reads the reordered buffers."""
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    x, mask = prompts(True)
    kw = dict(num_beams=3, num_return_sequences=2, output_scores=True)
    monkeypatch.setenv("GPT2KIT_TRACE_DECODE", "0")
    want = model.generate(
        x, attention_mask=mask, max_new_tokens=10, pad_token_id=0, return_dict_in_generate=True, **kw
    )
    monkeypatch.setenv("GPT2KIT_TRACE_DECODE", "1")
    got = model.generate(
        x, attention_mask=mask, max_new_tokens=10, pad_token_id=0, return_dict_in_generate=True, **kw
    )
    assert recordings(model) == 1
    assert torch.equal(got.sequences, want.sequences)
    assert torch.equal(got.sequences_scores, want.sequences_scores)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, want.scores))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_the_trace_holds_this_machines_kernel_choice(folder, record_now, monkeypatch):
    """A decode recording keeps the measured float32 kernels (here oneDNN's op, forced); a plain
    torch.jit.trace of the model (for export) keeps torch's own, which run anywhere."""
    if not matmul.onednn_linear_available():
        pytest.skip("no oneDNN linear op in this torch build")
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    monkeypatch.setattr(matmul, "_choice", "onednn")
    monkeypatch.setattr(matmul, "_fast", {})
    monkeypatch.setattr(matmul.kernels, "MIN_MACS", 0)
    x, mask = prompts(False)
    run(model, x, mask, monkeypatch, trace=True)
    (recording,) = traced._recordings[model].values()
    # matmul._lp's TorchScript function holds oneDNN's op (the tracer cannot record it directly); the
    # replayed recording is inlined (traced._inlined), so the op itself shows
    assert "_linear_pointwise(" in code(recording) and "torch.addmm(" not in code(recording)

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(ids, return_dict=False)[0]

    exported = torch.jit.trace(Logits(), (x,), check_trace=False)
    assert " = lp(" not in code(exported) and "_linear_pointwise(" not in code(exported)
    assert "torch.addmm(" in code(exported)


def test_the_trace_holds_the_measured_attention_kernel(folder, record_now, monkeypatch):
    """A decode step whose attention runs as matmuls (measured faster for its batch x heads, here forced)
    records them, and the replay gives the eager step's logits bit for bit."""
    from gpt2kit.model import attention

    monkeypatch.setattr(attention, "decode_kernel", lambda batch_heads, head_dim: "matmul")
    monkeypatch.setattr(matmul, "_choice", "auto")
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    x, mask = prompts(False)
    want_ids, want_logits = run(model, x, mask, monkeypatch, trace=False)
    got_ids, got_logits = run(model, x, mask, monkeypatch, trace=True)
    (recording,) = traced._recordings[model].values()
    assert "scaled_dot_product_attention" not in code(recording) and "softmax" in code(recording)
    assert torch.equal(got_ids, want_ids) and torch.equal(got_logits, want_logits)


def test_a_recording_made_at_the_first_step_holds_the_decisions_that_step_takes(
    folder, record_now, monkeypatch, tmp_path
):
    """Kernel decisions taken at a first use (here the attention's, timed to pick the matmuls) are taken by
    an eager step before the trace: timed inside it they would be recorded, and taken after it they made
    the check step differ from the replay, which refused the recording for good."""
    from gpt2kit.model import attention, kernels

    monkeypatch.setenv("GPT2KIT_KERNEL_CACHE", str(tmp_path / "kernels.json"))
    monkeypatch.setattr(kernels, "TABLE", kernels.KernelTable())
    monkeypatch.setattr(matmul, "_fast", {})
    monkeypatch.setattr(attention, "_decode_fast", {})
    monkeypatch.setattr(attention, "DECODE_MIN_MACS", 0)

    def timings(calls, cold=False):
        for call in calls.values():
            call()
        return {name: [0.5 if name == "matmul" else 1.0] * 3 for name in calls}

    monkeypatch.setattr(kernels, "time_candidates", timings)
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    x, mask = prompts(False)
    got_ids, got_logits = run(model, x, mask, monkeypatch, trace=True)
    (recording,) = traced._recordings[model].values()  # made and kept, not refused
    assert "scaled_dot_product_attention" not in code(recording) and "softmax" in code(recording)
    want_ids, want_logits = run(model, x, mask, monkeypatch, trace=False)
    assert torch.equal(got_ids, want_ids) and torch.equal(got_logits, want_logits)


def test_a_recording_is_reused_and_renewed_when_the_model_changes(folder, record_now, monkeypatch):
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    made = []
    real_trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: made.append(1) or real_trace(*a, **k))
    x, mask = prompts(False)
    run(model, x, mask, monkeypatch, trace=True)
    run(model, x, mask, monkeypatch, trace=True)
    assert len(made) == 1  # the second call replays the first one's recording
    run(model, x[:2], mask[:2], monkeypatch, trace=True)
    assert len(made) == 2  # another batch size: another recording
    if dynamic_engines():
        quantize_int8(model, method="dynamic")  # new layers: the old recordings hold the float weights
        want = run(model, x, mask, monkeypatch, trace=False)
        got = run(model, x, mask, monkeypatch, trace=True)
        assert len(made) == 3
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_weights_written_in_place_make_a_new_recording(folder, record_now, monkeypatch):
    """A recording may hold copies of weights (matmul.io_copy for the LM head): after an in-place update
    (an optimizer step, a load_state_dict) it must not replay the old weights."""
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    x, mask = prompts(False)
    run(model, x, mask, monkeypatch, trace=True)
    assert recordings(model) == 1
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.5)
        model.transformer.h[0].mlp.c_fc.weight.add_(0.1)
    want = run(model, x, mask, monkeypatch, trace=False)
    got = run(model, x, mask, monkeypatch, trace=True)
    assert recordings(model) == 2  # recorded anew, not replayed
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_recording_waits_until_decoding_has_run_long_enough(folder, monkeypatch):
    monkeypatch.delenv("GPT2KIT_TRACE_DECODE", raising=False)
    monkeypatch.setattr(traced, "TRACE_AFTER_STEPS", 30)
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    x = torch.tensor([[5, 6, 7]])
    model.generate(x, max_new_tokens=12, min_new_tokens=12, pad_token_id=0)
    model.generate(x, max_new_tokens=12, min_new_tokens=12, pad_token_id=0)
    assert recordings(model) == 0  # 24 steps so far: a one-off short call never pays for a recording
    model.generate(x, max_new_tokens=12, min_new_tokens=12, pad_token_id=0)
    assert recordings(model) == 1


def test_a_replay_that_differs_is_dropped_for_the_eager_step(folder, record_now, monkeypatch):
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    x, mask = prompts(True)
    want = run(model, x, mask, monkeypatch, trace=False)
    real_trace = torch.jit.trace

    def wrong(*a, **k):
        good = real_trace(*a, **k)
        return lambda *inputs: good(*inputs) + 1e-3

    tries = []
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: tries.append(1) or wrong(*a, **k))
    got = run(model, x, mask, monkeypatch, trace=True)
    assert recordings(model) == 0
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    run(model, x, mask, monkeypatch, trace=True)
    assert len(tries) == 1  # a shape whose replay differed is not recorded again


def test_a_step_the_tracer_cannot_record_decodes_eagerly(folder, record_now, monkeypatch):
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    x, mask = prompts(False)
    want = run(model, x, mask, monkeypatch, trace=False)

    def fails(*a, **k):
        raise RuntimeError("unsupported input list type")

    tries = []
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: tries.append(1) or fails())
    got = run(model, x, mask, monkeypatch, trace=True)
    assert recordings(model) == 0
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    run(model, x, mask, monkeypatch, trace=True)
    assert len(tries) == 1  # a shape that failed is not tried again


def test_what_the_replay_cannot_hold_runs_eagerly(folder, record_now, monkeypatch):
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder).eval()
    x, mask = prompts(False)
    kw = dict(max_new_tokens=4, pad_token_id=0)
    # per-step attentions and hidden states, extra model inputs
    model.generate(x, return_dict_in_generate=True, output_hidden_states=True, **kw)
    model.generate(x, token_type_ids=torch.zeros_like(x), **kw)
    # a forward hook (Python that a replay would skip)
    seen = []
    handle = model.transformer.h[0].register_forward_hook(lambda *a: seen.append(1))
    model.generate(x, **kw)
    assert len(seen) == 4  # the prompt and three decode steps, all eager
    handle.remove()
    # the off switch
    monkeypatch.setenv("GPT2KIT_TRACE_DECODE", "0")
    model.generate(x, **kw)
    assert recordings(model) == 0
    monkeypatch.setenv("GPT2KIT_TRACE_DECODE", "1")
    model.generate(x, **kw)
    assert recordings(model) == 1
