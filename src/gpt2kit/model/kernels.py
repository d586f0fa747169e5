"""Which kernel multiplies each linear layer on this machine: chosen by timing the candidates, not by vendor.

The fastest CPU kernel for a product depends on the CPU, the torch build, the weight's shape and the number
of rows. Measured on the project's machines: oneDNN beats torch's default (MKL) 2x on an AMD EPYC with
AVX-512 at every row count, but on an AVX2-only EPYC it loses 0.6x on 768x3072 at many rows and wins 3-6x at
8 rows; packed weights win at 8 rows there and lose at 1. No rule written from one machine is right on the
next, so every choice here is a measurement:

- a *family* names the candidates and the weight's layout ("fp32-io": a GPT-2 projection, weight (in, out);
  "fp32-oi": the LM head, weight (out, in); "pack-*": plain vs prepacked; "int8-*": the int8 kernels);
- the rows are bucketed: 1 (a batch-1 decode step), 2-16 (batched decoding, timed at 8), 17+ (prefill,
  embedding, training: timed at a row count that keeps one call near 2 GFLOP, 64-512 rows);
- `choose(family, K, N, rows, candidates)` times each candidate on random inputs of that shape, interleaved,
  a few timed units each (the best counts: this machine's speed drifts, and the minimum is the least noisy
  statistic of a fixed amount of work), and keeps the fastest. torch's own kernel is always a candidate where
  it exists, and another wins only when it is at least 5% faster, so a choice is never slower than torch's
  default by more than the timing noise.

Decisions are cached in memory and in `$GPT2KIT_KERNEL_CACHE` (default `~/.cache/gpt2kit/kernels.json`), keyed by
the machine: CPU model (name and family / model / stepping), its ISA flags, the torch version, the thread
count, and the oneDNN/ATen ISA limits (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY). A new machine, a new torch or
another thread count measures again; the same one reuses the file (atomic writes; an unreadable file is ignored and rewritten).
GPT2KIT_KERNEL_CACHE=0 keeps decisions in memory only; `gpt2kit info --hardware --remeasure` times again
(a decision measured while other programs loaded the CPU can be wrong: the timer takes the best of
several interleaved runs, which resists short hiccups, and a decision timed while more tasks wanted a CPU
than there are is used but not cached; a load that /proc/stat does not show can still mislead it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# A candidate must beat torch's kernel by this much to replace it: less is within the timing noise.
MARGIN = 1.05
# Products smaller than this (multiply-adds) are not worth timing: overheads dominate and torch's kernel is
# as good as any. Tiny test models stay on torch's default without a measurement.
MIN_MACS = 1 << 18
# Timing: rounds per candidate (the best counts), the length of one timed unit, and the time a candidate
# may use before it stops after 2 rounds.
ROUNDS = 5
UNIT_S = 0.002
BUDGET_S = 0.06
# A measurement whose units spread more than this (median / best) was disturbed: used, not cached.
NOISE = 1.5
# Part of every cache key: bump it when the candidates or the way they are timed change, so decisions
# taken without a new candidate are measured again (2: split-K for float32; cold weights for few rows;
# 3: split-K on an (in, out) copy of an (out, in) weight, the LM head; 4: oneDNN's blocked layout for one-row
# packed products, and the CPU's family / model / stepping in the key; 5: int8 kernels timed on cold weights;
# 6: cold timing reads an eviction buffer between calls on up to COLD_COPIES copies).
CANDIDATES_VERSION = 6

_ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "avx_ne_convert",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


# --- the machine ---------------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo; on macOS the same fields from sysctl ({} where neither
    answers: Windows)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        if platform.system() == "Darwin":
            return _darwin_cpuinfo()
    return info


# macOS's names for the ARM features gpt2kit's kernels care about (Apple M2 and later have BF16 and I8MM).
_DARWIN_FEATURES = {
    "hw.optional.AdvSIMD": "asimd",
    "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
}


def _sysctl(name: str) -> str:
    # /usr/sbin is not on every PATH (cron, some IDEs): there first, then wherever PATH finds it
    for exe in ("/usr/sbin/sysctl", "sysctl"):
        try:
            out = subprocess.run([exe, "-n", name], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        return out.stdout.strip() if out.returncode == 0 else ""
    return ""


def _darwin_cpuinfo() -> dict[str, str]:
    """/proc/cpuinfo's fields for a Mac: the chip's name ("Apple M2 Pro") and its features as ARM Linux
    lists them, so that an Apple M2's native bf16 is seen (without /proc/cpuinfo it read as emulated)."""
    features = [flag for name, flag in _DARWIN_FEATURES.items() if _sysctl(name) == "1"]
    info = {"Features": " ".join(features)}
    brand = _sysctl("machdep.cpu.brand_string")
    if brand:
        info["model name"] = brand
    return info


# ARM cores by (CPU implementer, CPU part) of /proc/cpuinfo, which names none of them: Linux on ARM has no
# "model name". Graviton 2 / 3 / 4 are Neoverse N1 / V1 / V2; Ampere Altra is Neoverse N1.
_ARM_CORES = {
    ("0x41", "0xd03"): "Arm Cortex-A53",
    ("0x41", "0xd05"): "Arm Cortex-A55",
    ("0x41", "0xd08"): "Arm Cortex-A72",
    ("0x41", "0xd0b"): "Arm Cortex-A76",
    ("0x41", "0xd0c"): "Arm Neoverse N1",
    ("0x41", "0xd40"): "Arm Neoverse V1",
    ("0x41", "0xd49"): "Arm Neoverse N2",
    ("0x41", "0xd4f"): "Arm Neoverse V2",
    ("0x48", "0xd01"): "HiSilicon Kunpeng 920",
}


def _cpu_name(info: dict[str, str]) -> str:
    """The CPU's name: x86's (and macOS's) model name, else an ARM core's from its implementer and part."""
    name = info.get("model name") or info.get("Model")
    if name:
        return name
    core = _ARM_CORES.get((info.get("CPU implementer", "").lower(), info.get("CPU part", "").lower()))
    return core or platform.processor() or "unknown CPU"


@dataclass(frozen=True)
class Hardware:
    """What this process computes on: the CPU, the ISA features gpt2kit's kernels care about, and the limits
    torch runs under. `isa` is the highest level oneDNN and ATen may use here (the env limits included)."""

    cpu: str
    machine: str
    flags: tuple[str, ...]
    aten_capability: str
    onednn_max_isa: str
    native_bf16: bool
    threads: int
    torch_version: str
    cuda: str | None = None
    # The CPU's generation ("family 26 model 2 stepping 1"; ARM's implementer / part): virtual machines often
    # report one name ("AMD EPYC") for several generations, whose fastest kernels differ.
    cpu_id: str = ""

    @property
    def isa(self) -> str:
        """One word for the fastest instruction set the kernels may use here."""
        if self.machine in ("aarch64", "arm64"):
            vector = (
                self.aten_capability.upper() if self.aten_capability.upper().startswith("SVE") else "NEON"
            )
            return vector + ("+BF16" if "bf16" in self.flags else "")
        if self.aten_capability.upper().startswith("AVX512") or "avx512f" in self.flags:
            limited = self.onednn_max_isa.upper().startswith(("AVX2", "SSE"))
            if limited or self.aten_capability.upper() in ("AVX2", "DEFAULT"):
                return "AVX2" if "avx2" in self.flags else "SSE4"
            if {"amx_bf16", "amx_tile"} <= set(self.flags) and self.native_bf16:
                return "AMX"
            return "AVX512-BF16" if self.native_bf16 else "AVX512"
        return "AVX2" if "avx2" in self.flags else (self.aten_capability or "generic")

    def key(self) -> str:
        """What makes a measurement valid: the same CPU, ISA limits, torch and thread count."""
        parts = [self.cpu, self.cpu_id, self.machine, ",".join(self.flags), self.aten_capability]
        parts += [self.onednn_max_isa, str(self.threads), self.torch_version, f"v{CANDIDATES_VERSION}"]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """The CPU's name, architecture and generation: "AMD EPYC (x86_64, family 26 model 2 stepping 1)"."""
        return f"{self.cpu} ({self.machine}{', ' + self.cpu_id if self.cpu_id else ''})"

    def describe(self) -> str:
        return (
            f"{self.label}, ISA {self.isa}, flags {' '.join(self.flags) or '-'}, "
            f"torch {self.torch_version} (ATen {self.aten_capability}), {self.threads} threads"
            + (f", CUDA {self.cuda}" if self.cuda else "")
        )


def constant_under_compile(fn: Callable[[], bool]) -> Callable[[], bool]:
    """fn's answer, a fact of the machine, taken as a constant when torch.compile traces a caller: hardware()
    reads /proc/cpuinfo and torch.get_num_threads(), which dynamo cannot trace, and a graph break there split
    a compiled training step at every layer's attention (then recompiled per layer, past dynamo's limit).

    torch.compiler.assume_constant_result imports dynamo, 1.3 of the 4.5 s a one-off `gpt2kit generate` took:
    until something else imports it (torch.compile does), fn gets the mark that function gives (checked
    against it in tests/test_kernels.py)."""
    if "torch._dynamo" in sys.modules:
        assume = getattr(getattr(torch, "compiler", None), "assume_constant_result", None)
        return assume(fn) if assume is not None else fn
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


@constant_under_compile
def native_bf16() -> bool:
    """Whether bfloat16 products run natively here (AVX512-BF16, AMX or AVX-NE-CONVERT on x86, as oneDNN
    reports under any ONEDNN_MAX_CPU_ISA limit; BF16 on ARM). Elsewhere bf16 is emulated and slower than
    float32 (measured 14 against 115 GFLOP/s on an AVX2-only EPYC)."""
    return hardware().native_bf16


def _detect_native_bf16(flags: set[str], machine: str) -> bool:
    if machine in ("aarch64", "arm64"):
        return "bf16" in flags
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    onednn_ok = bool(supported()) if supported is not None and torch.backends.mkldnn.is_available() else False
    return onednn_ok and bool(flags & {"avx512_bf16", "amx_bf16", "avx_ne_convert"})


def _flags(info: dict[str, str]) -> tuple[str, ...]:
    raw = set((info.get("flags") or info.get("Features") or "").split())
    wanted = _ISA_FLAGS + ("asimd", "bf16", "i8mm", "sve", "sve2")
    return tuple(f for f in wanted if f in raw)


def _cpu_id(info: dict[str, str]) -> str:
    """The CPU's generation from /proc/cpuinfo: x86's family, model and stepping, ARM's implementer, part
    and revision ("" where there is no /proc/cpuinfo)."""
    fields = ("cpu family", "model", "stepping", "CPU implementer", "CPU part", "CPU variant", "CPU revision")
    return " ".join(f"{f.removeprefix('cpu ').removeprefix('CPU ')} {info[f]}" for f in fields if f in info)


_hardware: Hardware | None = None


def hardware() -> Hardware:
    """This process's Hardware (the CPU read once; the thread count as it is now)."""
    global _hardware
    if _hardware is None:
        info = _cpuinfo()
        cpu = _cpu_name(info)
        get_cap = getattr(torch.backends.cpu, "get_cpu_capability", None)
        cuda = None
        if torch.cuda.is_available():
            cuda = torch.cuda.get_device_name(0)
        flags, machine = _flags(info), platform.machine().lower()
        _hardware = Hardware(
            cpu=cpu,
            machine=machine,
            flags=flags,
            aten_capability=get_cap() if get_cap else "",
            onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")),
            native_bf16=_detect_native_bf16(set(flags), machine),
            threads=torch.get_num_threads(),
            torch_version=torch.__version__,
            cuda=cuda,
            cpu_id=_cpu_id(info),
        )
    if _hardware.threads != torch.get_num_threads():
        _hardware = dataclasses.replace(_hardware, threads=torch.get_num_threads())
    return _hardware


# --- rows and timing -------------------------------------------------------------------------------------


def row_bucket(rows: int) -> str:
    """The row bucket a product falls in: '1', '8' (2-16 rows) or 'many'."""
    return "1" if rows <= 1 else ("8" if rows <= 16 else "many")


def timing_rows(bucket: str, k: int, n: int) -> int:
    """Rows to time a bucket at: 1, 8, or ~0.5 GFLOP per call (32-256 rows: a few ms on any CPU)."""
    if bucket in ("1", "8"):
        return int(bucket)
    rows = int(5e8 // (2 * k * n))
    return max(32, min(256, rows))


_inputs = torch.Generator().manual_seed(0)


def random_input(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random operands for timing, from a generator of its own: a decision taken on first use, in the
    middle of a training run, must not move the global RNG (dropout's stream), or a resumed run, which
    finds the decision cached, would draw other numbers than the run it replays."""
    return torch.randn(*shape, generator=_inputs).to(dtype)


def last_level_cache_bytes() -> int:
    """The last-level cache's size (from sysfs; 32 MiB where unknown)."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip().upper()
        return int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1:], 0)
    except (OSError, ValueError):
        return 32 << 20


def working_set_bytes() -> int:
    """Bytes that pass through the caches between two calls on the same weight when timing few-row products:
    twice the last-level cache, so each call reads its weight from memory as a decode step does."""
    return min(2 * last_level_cache_bytes(), 512 << 20)


# Few-row candidates cycle through at most this many copies of their weight; reads of an eviction buffer
# between the calls make up the rest of the working set.
COLD_COPIES = 4


def cold_copies(
    first: object, make: Callable[[], object], nbytes: int, rows: int, evicted: bool = True
) -> list:
    """A weight (first, of nbytes) and copies of it (make() builds one) to cycle through while timing a
    product of `rows` rows: at most 16 rows a product is bound by reading its weight, and a decode step reads
    each weight from memory, not from the cache where a weight timed over and over would sit (on the dev VM a
    768 x 3072 layer timed that way ran 2x faster than in a decode step, and the ranking of kernels changed).
    Few copies where time_candidates(cold=True) reads an eviction buffer between the calls (copies filling
    the whole working set, up to 109 of a small int8 weight, were most of a 124M model's first
    quantize_int8: 5.6-6.3 s on the dev VM, 2.3-3.0 s without them); enough to fill it where it does not
    (evicted=False). More rows reuse each weight row enough that the cache matters little: one copy."""
    if rows > 16:
        return [first]
    # evicted: the slices read between calls pass the cache's size; a weight at least that big pushes itself
    # out (the int8 LM head, 38.6 MB) and needs no copy
    fill = last_level_cache_bytes() if evicted else working_set_bytes()
    count = max(1, -(-fill // max(nbytes, 1)))
    count = min(count, COLD_COPIES) if evicted else count
    return [first] + [make() for _ in range(count - 1)]


# The eviction buffer, twice the last-level cache, is read in slices of a quarter of the cache: with
# COLD_COPIES copies in the cycle, at least the cache's size (plus the other copies, and the other candidates'
# weights, interleaved) passes between two calls on one copy, and a slice is read again only after the whole
# buffer. (Bigger slices slowed the next call beyond what it takes in a decode step: on the dev VM, 32 MB
# cache, 16 MB slices made a small int8 product ~1.5x slower, 8 MB ones matched.)
SLICES = 2 * COLD_COPIES


class _Evictor:
    """The eviction buffer, read a slice at a time between cold timed calls. Held while measurements run
    (held() is re-entrant and thread-safe) and freed after: allocating and touching 64 MB costs ~15 ms,
    reading a slice ~0.2-0.4 ms on the dev VM."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._slices: list[torch.Tensor] = []
        self._next = 0

    @contextlib.contextmanager
    def held(self):
        with self._lock:
            self._depth += 1
        try:
            yield self
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._slices = []

    def evict(self) -> None:
        with self._lock:
            if not self._slices:
                # float32 elements a slice; the buffer at most 1 GB, whatever sysfs claims of the cache
                piece = max(min(last_level_cache_bytes(), 512 << 20) // COLD_COPIES // 4, 1)
                buf = torch.ones(piece * SLICES)  # touched: not the shared zero page
                self._slices = list(buf.chunk(SLICES))
            slices, i = self._slices, self._next
            self._next += 1
        slices[i % len(slices)].sum()


EVICTOR = _Evictor()


def time_candidates(calls: dict[str, Callable[[], object]], cold: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one figure per timed unit, taken in rounds A B C, A B C, ...
    (interleaving spreads the machine's drift over all candidates). A unit repeats a fast call until it
    lasts ~UNIT_S, so one scheduler hiccup cannot decide a 50-microsecond product; a candidate stops once it
    has used BUDGET_S and has 2 units.

    cold: the calls cycle through copies of their weights (cold_copies) and each must find its weight in
    memory; a unit is then up to COLD_COPIES calls, each timed alone after reading a slice of the eviction
    buffer (on the dev VM this matched each product's time in a decode step within ~10%: a call right after
    flushing the whole cache ran up to 2.5x slower, and calls back to back on copies alone needed up to 109
    copies)."""
    units: dict[str, list[float]] = {name: [] for name in calls}
    spent = dict.fromkeys(calls, 0.0)
    repeats = {}
    with torch.no_grad(), EVICTOR.held():
        for name, call in calls.items():  # warm-up, and the repeats for a unit
            t0 = time.perf_counter()
            call()
            fit = int(UNIT_S / max(time.perf_counter() - t0, 1e-7))
            # cold: a call of 2 ms is a unit of its own; shorter ones a pass over their copies
            repeats[name] = max(1, min(COLD_COPIES if cold else 200, fit))
        for round_ in range(ROUNDS):
            for name, call in calls.items():
                if round_ >= 2 and spent[name] >= BUDGET_S:
                    continue
                dt = 0.0
                if cold:
                    for _ in range(repeats[name]):
                        EVICTOR.evict()
                        t0 = time.perf_counter()
                        call()
                        dt += time.perf_counter() - t0
                else:
                    t0 = time.perf_counter()
                    for _ in range(repeats[name]):
                        call()
                    dt = time.perf_counter() - t0
                spent[name] += dt
                units[name].append(dt / repeats[name])
                running = runnable_tasks()
                if running is not None:
                    _running.append(running)
    return units


# runnable_tasks() after each timed unit of the decision being measured (decide() reads and clears it).
_running: list[int] = []


def runnable_tasks() -> int | None:
    """Tasks running or waiting for a CPU on this machine now (/proc/stat's procs_running; None elsewhere)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def crowded(samples: list[int]) -> bool:
    """Whether more tasks wanted a CPU than there are while timing (the median of the samples): another
    program was then taking turns with the timed kernels' threads. Its interference can be steady for the
    whole measurement, which steady() cannot see: with other jobs running on the dev VM's 2 CPUs, oneDNN's
    two-thread one-row product measured 1 GFLOP/s against torch's one-thread 14 (Zen 5), and the cached
    decisions made a batch-1 decode step 15.0 ms instead of 12.2."""
    return bool(samples) and statistics.median(samples) > (os.cpu_count() or 1)


def steady(units: dict[str, list[float]]) -> bool:
    """Whether a measurement looks undisturbed: each candidate's median unit within NOISE of its best.
    Another program busy on the same cores makes threaded kernels wait for descheduled threads, and a
    decision taken then is not worth keeping."""
    return all(statistics.median(u) <= NOISE * min(u) for u in units.values())


# --- decisions -------------------------------------------------------------------------------------------


@dataclass
class Decision:
    """The choice for one (family, K, N, bucket): the winner and each candidate's measured GFLOP/s."""

    choice: str
    gflops: dict[str, float] = field(default_factory=dict)
    steady: bool = True  # False: timed on a busy CPU, used by this process but not cached


def cache_path() -> Path | None:
    """$GPT2KIT_KERNEL_CACHE (a file; 0/off: no file), else ~/.cache/gpt2kit/kernels.json."""
    env = os.environ.get("GPT2KIT_KERNEL_CACHE", "").strip()
    if env.lower() in ("0", "false", "no", "off"):
        return None
    if env:
        return Path(env).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(root) / "gpt2kit" / "kernels.json"


def decision_key(family: str, k: int, n: int, rows: int) -> str:
    return f"{family}:{k}x{n}:{row_bucket(rows)}"


class KernelTable:
    """Decisions for this machine: in memory, backed by cache_path() (read once, rewritten on each new one)."""

    def __init__(self) -> None:
        # RLock: a candidate's setup may itself run a product that consults the table.
        self._lock = threading.RLock()
        self._by_machine: dict[str, dict[str, Decision]] = {}  # Hardware.key() -> decisions

    def _load(self) -> dict[str, Decision]:
        """This machine's decisions (the thread count is part of the machine: set_num_threads changes it)."""
        key = hardware().key()
        if key not in self._by_machine:
            self._by_machine[key] = {}
            path = cache_path()
            try:
                if path is not None and path.is_file():
                    mine = json.loads(path.read_text()).get(key, {}).get("decisions", {})
                    self._by_machine[key] = {k: Decision(**v) for k, v in mine.items()}
            except (OSError, ValueError, TypeError) as e:
                logger.warning("ignoring the kernel cache %s (%s); it will be rewritten", path, e)
        return self._by_machine[key]

    def _save(self) -> None:
        """Write this machine's steady decisions (unsteady ones stay in memory, for this process only)."""
        path = cache_path()
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = json.loads(path.read_text()) if path.is_file() else {}
            except (OSError, ValueError):
                data = {}
            hw = hardware()
            data[hw.key()] = {
                "machine": hw.describe(),
                "decisions": {k: vars(d) for k, d in sorted(self._load().items()) if d.steady},
            }
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kernels-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, path)
        except OSError as e:  # a read-only home must not break inference: decide again next process
            logger.info("could not write the kernel cache %s: %s", path, e)

    def get(self, key: str) -> Decision | None:
        with self._lock:
            return self._load().get(key)

    def decide(
        self,
        family: str,
        k: int,
        n: int,
        rows: int,
        candidates: Callable[[int], dict[str, Callable]],
        floor: str = "torch",
        cold: bool | None = None,
        macs: int | None = None,
    ) -> Decision:
        """The decision for (family, K, N, rows' bucket), measured now if this machine has none yet.

        candidates(rows) returns {name: zero-argument call} for the rows to time; `floor` (when present:
        torch's kernel, or the layer as it is) is the one the others must beat by MARGIN. cold: whether the
        calls must find their weights in memory (time_candidates); by default where at most 16 rows are timed
        (cold_copies gives them copies to cycle through). macs: multiply-adds of one timed call, for the
        GFLOP/s figures, where it is not rows x K x N (attention).
        """
        bucket = row_bucket(rows)
        key = decision_key(family, k, n, rows)
        with self._lock:
            found = self._load().get(key)
            if found is not None:
                return found
            m = timing_rows(bucket, k, n)
            calls = candidates(m)
            if len(calls) == 1:
                decision = Decision(next(iter(calls)))
            else:
                t0 = time.perf_counter()
                _running.clear()
                units = time_candidates(calls, cold=m <= 16 if cold is None else cold)
                seconds = {name: min(u) for name, u in units.items()}
                persist = steady(units) and not crowded(_running)
                work = m * k * n if macs is None else macs
                gflops = {name: round(2 * work / s / 1e9, 1) for name, s in seconds.items()}
                base = seconds.get(floor)
                best = min(seconds, key=seconds.__getitem__)
                if base is not None and best != floor and seconds[best] * MARGIN > base:
                    best = floor
                decision = Decision(best, gflops, persist)
                logger.info(
                    "kernel %s for %s (%d rows timed, %.0f ms%s): %s",
                    best,
                    key,
                    m,
                    1e3 * (time.perf_counter() - t0),
                    "" if persist else "; timings unsteady, the CPU is busy: not cached",
                    gflops,
                )
            self._load()[key] = decision
            if decision.steady:
                self._save()
            return decision

    def decisions(self) -> dict[str, Decision]:
        with self._lock:
            return dict(self._load())

    def clear(self) -> None:
        """Forget this machine's decisions, so each is measured again (the file's entry for this machine is
        replaced at the next decision)."""
        with self._lock:
            self._by_machine[hardware().key()] = {}


TABLE = KernelTable()

_warned_bf16 = False


def warn_if_slow_bf16(what: str = "bfloat16") -> bool:
    """Log one warning per process when bf16 products are emulated on this CPU; returns whether they are."""
    global _warned_bf16
    if native_bf16() or platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    if not _warned_bf16:
        _warned_bf16 = True
        logger.warning(
            "%s runs emulated on this CPU (%s: no AVX512-BF16, AMX or AVX-NE-CONVERT), several times slower "
            "than float32; use float32 here (and int8 weights for speed)",
            what,
            hardware().isa,
        )
    return True
