"""The AVX2 code paths, exercised on any x86 machine: oneDNN honours ONEDNN_MAX_CPU_ISA and ATen honours
ATEN_CPU_CAPABILITY, so a subprocess under AVX2 limits behaves like an AVX2-only CPU (no AVX-512, no native
bf16: oneDNN's bf16 reorder refuses, bf16 products are emulated). What broke there before: pack_weights on
a bf16 model raised from inside torch, and `gpt2kit generate --dtype bfloat16` died with that traceback.

.ci/run also runs the kernel test files under these limits (see there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from gpt2kit.model import kernels

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
pytestmark = pytest.mark.skipif(
    kernels.hardware().machine not in ("x86_64", "amd64") or "avx2" not in kernels.hardware().flags,
    reason="the AVX2 limits apply to x86 CPUs with AVX2",
)

CHECK = textwrap.dedent(
    """
    import json, torch, gpt2kit
    from gpt2kit.model import kernels
    from gpt2kit.model.packed import packing_available, pack_weights, PackedLinear
    from gpt2kit.model.quant import quantize_int8
    out = dict(aten=torch.backends.cpu.get_cpu_capability(), isa=kernels.hardware().isa,
               native_bf16=kernels.native_bf16(), pack_bf16=packing_available(torch.bfloat16),
               pack_fp32=packing_available(torch.float32))
    cfg = gpt2kit.GPT2Config(vocab_size=512, n_positions=64, n_layer=2, n_embd=256, n_head=4)
    torch.manual_seed(0)
    model = gpt2kit.GPT2LMHeadModel(cfg).eval()
    x = torch.randint(0, 512, (2, 10))
    with torch.inference_mode():
        want = model(x).logits
        bf16 = pack_weights(gpt2kit.GPT2LMHeadModel(cfg).eval().to(torch.bfloat16))  # must not raise
        out["bf16_packed_layers"] = bf16.packed
        out["bf16_generates"] = list(bf16.generate(x[:1], max_new_tokens=3, pad_token_id=0).shape)
        import copy
        packed = pack_weights(copy.deepcopy(model), measure=False)
        out["packed_err"] = float((packed(x).logits - want).abs().max())
        q = quantize_int8(copy.deepcopy(model))
        out["int8"] = q.quantized
        out["int8_top1"] = float((q(x).logits.argmax(-1) == want.argmax(-1)).float().mean())
    print("RESULT" + json.dumps(out))
    """
)


def run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **AVX2}
    return subprocess.run([sys.executable, *args, code] if code else [sys.executable, *args],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip


def test_avx2_limits_take_effect_and_nothing_crashes():
    proc = run(CHECK, "-c")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["aten"] == "AVX2" and out["isa"] == "AVX2"  # the limits are honoured by this torch build
    assert not out["native_bf16"] and not out["pack_bf16"] and out["pack_fp32"]
    assert out["bf16_packed_layers"] == 0 and out["bf16_generates"] == [1, 13]
    assert "emulated on this CPU" in proc.stderr  # one line saying bf16 is slow here
    assert out["packed_err"] < 1e-3
    assert out["int8"].startswith("int8 (") and out["int8_top1"] >= 0.8


def test_cli_generate_bfloat16_runs_under_avx2(tmp_path):
    proc = run("", "-m", "gpt2kit", "generate", "--model", "gpt2kit-demo", "--dtype", "bfloat16",
               "--max-new-tokens", "4", "--no-stream", "guitar (noun):")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("guitar (noun):")
    assert "Traceback" not in proc.stderr and "emulated on this CPU" in proc.stderr
