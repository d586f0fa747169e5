"""Greedy generation: gpt2kit vs the CPU engines a user would pick instead, on the 124M GPT-2 (random weights).

What: tokens per second for greedy decoding of a 32-token prompt of random ids (fixed seed) + exactly 128 new
tokens, batch 1 and 8, every side on the same checkpoint (bench_model.make_checkpoint) and with the same
number of threads (torch.get_num_threads(); ONNX Runtime's intra_op_num_threads, CTranslate2's
intra_threads), next to two quality figures against transformers fp32.

    hf-fp32          transformers GPT2LMHeadModel.generate(), fp32: the baseline every ratio is against
    gpt2kit-fp32     gpt2kit.GPT2LMHeadModel.from_pretrained() + generate(), the default path
    gpt2kit-packed   the same after gpt2kit.pack_weights(model, batch_size=B) for the batch B it decodes
    gpt2kit-int8     the fp32 model after gpt2kit.quantize_int8(model)
    gpt2kit-fp32-torch-kernels   gpt2kit-fp32 under GPT2KIT_CPU_MATMUL=torch (the floor the default must beat)
    gpt2kit-int8-eager   (opt-in) gpt2kit-int8 with GPT2KIT_TRACE_DECODE=0: no recorded decode step
    gpt2kit-int8-compiled   (opt-in) gpt2kit-int8 with generate(compile=True)
    gpt2kit-fp32-compiled   (opt-in) gpt2kit-fp32 with generate(compile="max-autotune"): weights frozen into
                     the compiled step, inductor's C++ GEMMs where they time faster than torch's
    ort-fp32         ONNX Runtime (ORT_ENABLE_ALL) on gpt2kit's ONNX export (gpt2kit.export.onnx, the decoder
                     with past key/values: one graph for prefill and decode), greedy loop in numpy
    ort-int8         the same export after onnxruntime.quantization.quantize_dynamic (QInt8 weights,
                     per_channel=False: the defaults ORT's own transformers tooling, quantize_helper.py, uses)
    ct2-fp32         CTranslate2 Generator.generate_batch on TransformersConverter(quantization="float32")
    ct2-int8         the same with quantization="int8", compute_type="int8"

Exactly 128 new tokens per row, with no eos stop, everywhere: transformers and gpt2kit get
min_new_tokens=max_new_tokens=128, which masks eos (50256) at every step; the numpy loop masks it too, and
CTranslate2 gets min_length=max_length=128 (its min_length masks the end token, the model's eos). Every side's
output length is checked.

How: all sides are loaded at once and run in one process. Two warm-up calls per side (the second one's tokens
are the ones compared; gpt2kit records its decode step once a shape has decoded 256 steps, during the
second), then --reps repetitions whose side order rotates; a short pause before each timed call lets the
previous engine's spinning worker threads (OpenMP, ORT) go idle first. tok/s is batch * new / the call's
time and ms/step the call's time / new (the prefill included). Ratios to hf-fp32 are taken per repetition,
then the median (this machine's speed drifts). Quality: (a) the share of rows whose greedy tokens equal
transformers fp32's, and the share of generated tokens equal up to each row's first divergence;
(b) teacher-forced top-1 agreement: transformers fp32's greedy sequence (prompt + new) is fed to every side
as context and the argmax of every generated position compared with transformers fp32's (raw argmax, eos
not masked). torch sides and CTranslate2 (Generator.forward_batch, which returns the logits) take it in one
forward; ONNX Runtime takes the prompt then one token per step, as it decodes, because its int8 activation
scales are per tensor (a whole-sequence forward would be another computation). The random weights make
greedy runs repetitive, so a row that diverges once often stays diverged: (b) is the finer measure.
The ONNX export and the CTranslate2 conversions are cached under benchmarks/out/.

    python benchmarks/bench_engines.py [--reps 3] [--new 128] [--prompt-len 32] [--batches 1,8]
    python benchmarks/bench_engines.py --sides hf-fp32,gpt2kit-int8,ort-int8,ct2-int8 --out results.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch

# Steady state: a long-running process's weights sit in huge pages (model/hugepages.py moves them once a model
# has decoded 1,024 steps); here at the first, untimed call, so that no timed call includes the copy.
os.environ.setdefault("GPT2KIT_HUGEPAGES", "1")
from bench_model import CKPT, make_checkpoint

import gpt2kit  # names resolve lazily: importing it costs nothing until a side is loaded

OUT = Path(__file__).parent / "out"
ONNX_DIR = OUT / "onnx-124m"
EOS = 50256
ISA_FLAGS = [
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
]


# --------------------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    import ctranslate2
    import onnxruntime
    import transformers

    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    present = set(flags.group(1).split()) if flags else set()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": model.group(1).strip() if model else "unknown",
        "isa": [f for f in ISA_FLAGS if f in present],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "ctranslate2": ctranslate2.__version__,
        "load_average_start": load_average(),
    }


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------------------------------------------- sides
# Each side has generate(prompt (B, T) int64, new) -> new tokens (B, new), and top1(seq (B, L), T) -> the
# argmax of the logits that predict seq's tokens T.. (B, L - T), with seq fed as context: both numpy.


class TorchSide:
    """transformers or gpt2kit: both have transformers' generate() and forward()."""

    def __init__(self, model, **generate_options) -> None:
        self.model = model
        self.options = generate_options  # e.g. compile=True

    def generate(self, prompt: np.ndarray, new: int) -> np.ndarray:
        x = torch.from_numpy(prompt)
        with torch.inference_mode():
            out = self.model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=EOS,
                **self.options,
            )
        return out[:, prompt.shape[1] :].numpy()

    def top1(self, seq: np.ndarray, prompt_len: int) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(seq)).logits
        return logits[:, prompt_len - 1 : -1].argmax(-1).numpy()


class OrtSide:
    """ONNX Runtime on the export below: one session, a greedy loop that feeds the presents back as pasts."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        _, heads, _, head_dim = self.session.get_inputs()[3].shape
        self.head_shape = (heads, head_dim)

    def forward(self, ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        batch, length = ids.shape
        start = past[0].shape[2]
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones((batch, start + length), np.int64),
            "position_ids": np.tile(np.arange(start, start + length, dtype=np.int64), (batch, 1)),
            **dict(zip(self.past_names, past)),
        }
        logits, *present = self.session.run(None, feed)
        return logits, present

    def empty_past(self, batch: int) -> list[np.ndarray]:
        # A past of length 0 makes the first call the prefill: the same graph serves every step.
        empty = np.zeros((batch, self.head_shape[0], 0, self.head_shape[1]), np.float32)
        return [empty] * len(self.past_names)

    def generate(self, prompt: np.ndarray, new: int) -> np.ndarray:
        ids, past, out = prompt, self.empty_past(len(prompt)), []
        for _ in range(new):
            logits, past = self.forward(ids, past)
            last = logits[:, -1]
            last[:, EOS] = -np.inf  # as min_new_tokens does in the torch sides
            ids = last.argmax(-1)[:, None].astype(np.int64)
            out.append(ids)
        return np.concatenate(out, axis=1)

    def top1(self, seq: np.ndarray, prompt_len: int) -> np.ndarray:
        # Step by step, as generate() runs: quantize_dynamic quantizes activations with one scale per tensor,
        # so a whole-sequence forward would quantize each position differently than decoding does.
        logits, past = self.forward(seq[:, :prompt_len], self.empty_past(len(seq)))
        top = [logits[:, -1].argmax(-1)]
        for t in range(prompt_len, seq.shape[1] - 1):
            logits, past = self.forward(seq[:, t : t + 1], past)
            top.append(logits[:, -1].argmax(-1))
        return np.stack(top, axis=1)


class Ct2Side:
    """CTranslate2's Generator. generate_batch takes token strings (GPT-2's vocab.json keys, in id order in
    the converted model's vocabulary.json); forward_batch takes ids and returns the logits."""

    def __init__(self, model_dir: Path, compute_type: str, threads: int) -> None:
        import ctranslate2

        self.generator = ctranslate2.Generator(
            str(model_dir), device="cpu", compute_type=compute_type, intra_threads=threads
        )
        self.vocab = json.loads((model_dir / "vocabulary.json").read_text())

    def generate(self, prompt: np.ndarray, new: int) -> np.ndarray:
        tokens = [[self.vocab[i] for i in row] for row in prompt.tolist()]
        results = self.generator.generate_batch(
            tokens,
            max_length=new,  # new tokens only, since the prompt is not in the result
            min_length=new,  # masks the end token (eos) until then
            sampling_topk=1,
            beam_size=1,
            include_prompt_in_result=False,
        )
        return np.array([r.sequences_ids[0] for r in results], dtype=np.int64)

    def top1(self, seq: np.ndarray, prompt_len: int) -> np.ndarray:
        logits = np.asarray(self.generator.forward_batch(seq.tolist()))
        return logits[:, prompt_len - 1 : -1].argmax(-1)


class TorchKernelsSide(TorchSide):
    """gpt2kit with GPT2KIT_CPU_MATMUL=torch: the floor its default (measured) kernel choice must not lose to."""

    def _with_torch_kernels(self, fn, *args):
        from gpt2kit.model import matmul

        before = matmul.cpu_matmul()
        matmul.set_cpu_matmul("torch")
        try:
            return fn(*args)
        finally:
            matmul.set_cpu_matmul(before)

    def generate(self, prompt: np.ndarray, new: int) -> np.ndarray:
        return self._with_torch_kernels(super().generate, prompt, new)

    def top1(self, seq: np.ndarray, prompt_len: int) -> np.ndarray:
        return self._with_torch_kernels(super().top1, seq, prompt_len)


def gpt2kit_model():
    return gpt2kit.GPT2LMHeadModel.from_pretrained(CKPT)


class PackedSide(TorchSide):
    """gpt2kit after pack_weights laid out for the batch it decodes, as `gpt2kit generate` packs for its own
    batch: a model per batch size, packed at its first (untimed, warm-up) call."""

    def __init__(self) -> None:
        super().__init__(None)
        self.models: dict[int, object] = {}

    def _for(self, batch: int) -> None:
        if batch not in self.models:
            self.models[batch] = gpt2kit.pack_weights(gpt2kit_model().eval(), batch_size=batch)
        self.model = self.models[batch]

    def generate(self, prompt: np.ndarray, new: int) -> np.ndarray:
        self._for(len(prompt))
        return super().generate(prompt, new)

    def top1(self, seq: np.ndarray, prompt_len: int) -> np.ndarray:
        self._for(len(seq))
        return super().top1(seq, prompt_len)


def load_hf(threads: int) -> TorchSide:
    """Every loader takes the thread count; torch's is process-wide (torch.set_num_threads) already."""
    import transformers

    return TorchSide(transformers.GPT2LMHeadModel.from_pretrained(CKPT, dtype=torch.float32).eval())


# gpt2kit's variants: one line each (name -> model loader).
GPT2KIT_SIDES = {
    "gpt2kit-fp32": lambda: gpt2kit_model(),
    "gpt2kit-int8": lambda: long_running(gpt2kit.quantize_int8(gpt2kit_model())),
}


def long_running(model):
    """An int8 model as a long-running process has it (quant.few_rows_engines_when_due: batched steps on their
    own measured engine once 1,024 steps are planned; the server at load): from the first, untimed call."""
    from gpt2kit.model import quant

    quant.few_rows_engines_when_due(model, 0, at_once=True)
    return model


# Sides run only when named in --sides (compiling adds minutes; the eager one is a comparison).
OPT_IN = ("gpt2kit-int8-eager", "gpt2kit-int8-compiled", "gpt2kit-fp32-compiled")


def _eager_decode(model):
    """The model, decoded by the eager step in this worker process (GPT2KIT_TRACE_DECODE=0)."""
    os.environ["GPT2KIT_TRACE_DECODE"] = "0"
    return model


SIDES = {
    "hf-fp32": load_hf,
    **{name: (lambda threads, load=load: TorchSide(load())) for name, load in GPT2KIT_SIDES.items()},
    "gpt2kit-packed": lambda threads: PackedSide(),
    "gpt2kit-fp32-torch-kernels": lambda threads: TorchKernelsSide(gpt2kit_model()),
    # opt-in: int8 without the recorded decode step (generation/traced.py), to show what the replay saves
    "gpt2kit-int8-eager": lambda threads: TorchSide(
        _eager_decode(long_running(gpt2kit.quantize_int8(gpt2kit_model())))
    ),
    # opt-in: the decode step under torch.compile (the warm-up call compiles, ~20 s per batch size)
    "gpt2kit-int8-compiled": lambda threads: TorchSide(
        long_running(gpt2kit.quantize_int8(gpt2kit_model())), compile=True
    ),
    # opt-in: float32 with generate(compile="max-autotune"): on a CPU the weights frozen into the step and
    # inductor's own C++ GEMMs (the warm-up call compiles and times kernels, ~1-3 min per batch size)
    "gpt2kit-fp32-compiled": lambda threads: TorchSide(gpt2kit_model(), compile="max-autotune"),
    "ort-fp32": lambda threads: OrtSide(onnx_export(), threads),
    "ort-int8": lambda threads: OrtSide(onnx_int8(), threads),
    "ct2-fp32": lambda threads: Ct2Side(ct2_convert("float32"), "float32", threads),
    "ct2-int8": lambda threads: Ct2Side(ct2_convert("int8"), "int8", threads),
}


# --------------------------------------------------------------------------------------------- conversions


def onnx_export() -> Path:
    """gpt2kit's ONNX export of the checkpoint (gpt2kit.export.onnx, cached): decoder_with_past_model.onnx,
    whose past of length 0 makes the first call the prefill, so one graph serves every step.

    Inputs input_ids, attention_mask, position_ids, past_key_values.{i}.key/value (B, heads, past, 64);
    outputs logits and present.{i}.key/value: Optimum's names, the graph `gpt2kit export onnx` writes.
    """
    path = ONNX_DIR / "decoder_with_past_model.onnx"
    if path.is_file():
        return path
    from gpt2kit.export.onnx import export_decoder

    return export_decoder(gpt2kit_model(), path, with_past=True)


def onnx_int8() -> Path:
    """ORT's dynamic quantization of the export (gpt2kit.export.onnx.quantize_onnx_int8, cached): int8 weights,
    activations quantized per call, per-tensor weight scales, every MatMul (the LM head too) and the embedding
    Gathers quantized: the defaults ORT's own transformers quantize_helper.py uses."""
    path = ONNX_DIR / "decoder_with_past_model_quantized.onnx"
    if path.is_file():
        return path
    from gpt2kit.export.onnx import quantize_onnx_int8

    return quantize_onnx_int8(onnx_export(), path)


def ct2_convert(quantization: str) -> Path:
    """TransformersConverter(CKPT).convert(quantization=...), cached. The random checkpoint has no tokenizer
    files, which the converter reads for the vocabulary and eos: it gets gpt2kit's bundled GPT-2 files."""
    out = OUT / f"ct2-124m-{quantization}"
    if (out / "model.bin").is_file():
        return out
    import transformers
    from ctranslate2.converters import TransformersConverter

    tok_dir = Path(gpt2kit.__file__).parent / "tokenizer" / "gpt2"

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return transformers.GPT2Tokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))

    Converter(str(CKPT)).convert(str(out), quantization=quantization, force=True)
    return out


# --------------------------------------------------------------------------------------------- measuring


class Isolated:
    """A side loaded in its own worker process, driven from here: the sides stay interleaved (the machine's
    drift is shared) but no engine's runtime shares a process with another's. In one process, CTranslate2's
    thread pool slowed gpt2kit-int8 from 7.7 to 13.1 ms per step at batch 1 (its own figure barely moved),
    which is a cost of the benchmark, not of either engine as a user runs it."""

    def __init__(self, name: str, threads: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(name, threads, child), daemon=True)
        self.proc.start()
        status = self.conn.recv()
        if status != "ready":
            raise RuntimeError(f"side {name} failed to load: {status}")

    def _call(self, method: str, *args):
        self.conn.send((method, args))
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(value)
        return value

    def generate(self, prompt: np.ndarray, new: int) -> np.ndarray:
        return self._call("generate", prompt, new)

    def top1(self, seq: np.ndarray, prompt_len: int) -> np.ndarray:
        return self._call("top1", seq, prompt_len)


def _worker(name: str, threads: int, conn) -> None:
    torch.set_num_threads(threads)
    try:
        side = SIDES[name](threads)
    except Exception as e:  # report it to the parent rather than hang it
        conn.send(f"{type(e).__name__}: {e}")
        return
    conn.send("ready")
    while True:
        try:
            method, args = conn.recv()
        except EOFError:
            return
        try:
            conn.send((True, getattr(side, method)(*args)))
        except Exception as e:
            conn.send((False, f"{type(e).__name__}: {e}"))


def timed(side, prompt: np.ndarray, new: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    tokens = side.generate(prompt, new)
    elapsed = time.perf_counter() - t0
    assert tokens.shape == (len(prompt), new), f"{tokens.shape} != {(len(prompt), new)}"
    return elapsed, tokens


def greedy_match(tokens: np.ndarray, ref: np.ndarray) -> dict:
    """Share of rows identical to ref, and of tokens equal up to each row's first divergence."""
    equal = tokens == ref
    prefix = np.where(equal.all(1), ref.shape[1], equal.argmin(1))
    return {
        "same_rows": float(equal.all(1).mean()),
        "same_tokens_to_divergence": float(prefix.sum() / ref.size),
    }


def bench_batch(sides: dict, batch: int, args) -> list[dict]:
    names = list(sides)
    rng = np.random.default_rng(0)  # the batch-1 prompt is the first row of the batch-8 one
    prompt = rng.integers(0, EOS, (batch, args.prompt_len), dtype=np.int64)
    tokens = {}
    for name in names:  # two warm-up calls (the second's tokens are the ones the quality figures use)
        # idle first, as before a timed call: gpt2kit measures its kernels in its first call (where this
        # machine has no decisions yet), and another engine's spinning threads would crowd that measurement
        time.sleep(args.pause)
        timed(sides[name], prompt, args.new)
        tokens[name] = timed(sides[name], prompt, args.new)[1]
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(args.pause)  # let the previous engine's worker threads stop spinning
            times[name].append(timed(sides[name], prompt, args.new)[0])

    ref_name = "hf-fp32" if "hf-fp32" in sides else None
    if ref_name:
        # Teacher forcing on transformers' greedy sequence: the positions that predicted its new tokens.
        seq = np.concatenate([prompt, tokens[ref_name]], axis=1)
        ref_top = sides[ref_name].top1(seq, args.prompt_len)
    rows = []
    for name in names:
        row = {"side": name, "batch": batch, **stats(times[name], batch, args.new)}
        if ref_name:
            hf_times = times[ref_name]
            ratios = [t_hf / t for t, t_hf in zip(times[name], hf_times)]
            row["vs_hf_fp32"] = statistics.median(ratios)
            row["vs_hf_fp32_min_max"] = [min(ratios), max(ratios)]
            row["vs_hf_fp32_reps"] = [round(r, 3) for r in ratios]
            row.update(greedy_match(tokens[name], tokens[ref_name]))
            row["top1_agreement"] = float((sides[name].top1(seq, args.prompt_len) == ref_top).mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def stats(times: list[float], batch: int, new: int) -> dict:
    tok_s = [batch * new / t for t in times]
    return {
        "tok_s": statistics.median(tok_s),
        "tok_s_min_max": [min(tok_s), max(tok_s)],
        "ms_per_step": 1000 * statistics.median(times) / new,
        "seconds_reps": [round(t, 3) for t in times],
    }


# --------------------------------------------------------------------------------------------- output


def header(info: dict) -> str:
    return (
        f"{info['date']}  CPU: {info['cpu']}  ISA: {' '.join(info['isa']) or '-'}  "
        f"torch capability: {info['torch_cpu_capability']}  threads: {info['threads']}\n"
        f"torch {info['torch']}, transformers {info['transformers']}, onnxruntime {info['onnxruntime']}, "
        f"ctranslate2 {info['ctranslate2']}; load average {info['load_average_start']}"
    )


def table(rows: list[dict], batch: int, args) -> str:
    lines = [
        f"batch {batch}, prompt {args.prompt_len} + {args.new} new tokens, {args.reps} reps",
        "| side | tok/s median [min-max] | ms/step | vs hf-fp32 median [range] | same greedy rows "
        "| same tokens to 1st divergence | top-1 agreement |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["tok_s_min_max"]
        ratio = same = agree = ""
        if "vs_hf_fp32" in r:
            lo_r, hi_r = r["vs_hf_fp32_min_max"]
            ratio = f"{r['vs_hf_fp32']:.2f}x [{lo_r:.2f}-{hi_r:.2f}]"
            same = f"{round(r['same_rows'] * batch)}/{batch} | {r['same_tokens_to_divergence']:.1%}"
            agree = f"{r['top1_agreement']:.2%}"
        else:
            same = " | "
        lines.append(
            f"| {r['side']} | {r['tok_s']:.1f} [{lo:.1f}-{hi:.1f}] | {r['ms_per_step']:.1f} | {ratio} "
            f"| {same} | {agree} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = ",".join(n for n in SIDES if n not in OPT_IN)
    ap.add_argument("--sides", default=default, help=f"comma-separated, of: {', '.join(SIDES)}")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--pause", type=float, default=0.3, help="seconds of idle before each timed call")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    ap.add_argument(
        "--same-process",
        action="store_true",
        help="load every side in this process (default: each in its own worker process; see Isolated)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.sides.split(",")
    unknown = [n for n in names if n not in SIDES]
    if unknown:
        ap.error(f"unknown sides {unknown}; known: {', '.join(SIDES)}")

    info = machine_info()
    print(header(info), flush=True)
    make_checkpoint()
    threads = torch.get_num_threads()
    sides = {}
    for name in names:
        t0 = time.perf_counter()
        sides[name] = SIDES[name](threads) if args.same_process else Isolated(name, threads)
        print(f"loaded {name} in {time.perf_counter() - t0:.1f} s", flush=True)

    report = {
        **info,
        "isolated": not args.same_process,
        "new": args.new,
        "prompt_len": args.prompt_len,
        "reps": args.reps,
        "results": [],
    }
    tables = []
    for batch in (int(b) for b in args.batches.split(",")):
        rows = bench_batch(sides, batch, args)
        report["results"] += rows
        tables.append(table(rows, batch, args))
    report["load_average_end"] = load_average()

    print("\n" + header(info) + f"; at the end {report['load_average_end']}\n")
    print("\n\n".join(tables) + "\n")
    line = json.dumps(report)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
