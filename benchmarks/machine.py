"""What machine a benchmark ran on, written into its JSON so figures from different machines are not mixed.

    from benchmarks.machine import describe
    results = {"machine": describe(threads=2), ...}

Machines of the same nominal size (2 cores here) differ a lot: one kind had AVX2 only, where
PyTorch computes bf16 no faster than fp32, and another AVX-512 with BF16 instructions, where a
bf16 matrix product is ~5x faster and the same Python code runs ~2-4x faster too. ``describe``
records the CPU model, the vector extensions that change which code paths run (AVX2, AVX-512,
its BF16 and VNNI parts, AMX), and ``calibrate``'s yardstick: the CPU time of a fixed
pure-Python workload, which moves with the machine's speed at the moment of the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

# the extensions that pick different kernels in PyTorch, llama.cpp and the JSON/regex code we run
SIMD = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
_TEXT = [{"role": "user", "content": "비 오는 서울의 밤을 배경으로 짧은 이야기를 써 줘."}]


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, object]:
    """The CPU's model name and which of ``SIMD`` it has (Linux; elsewhere what ``platform`` knows)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {"cpu_model": model, "simd": None}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            model = value.strip()
        elif key in ("flags", "Features"):
            flags = set(value.split())
            break  # every core says the same
    return {"cpu_model": model, "simd": [f for f in SIMD if f in flags]}


def calibrate() -> float:
    """CPU ms of a fixed pure-Python workload (JSON, hashing, dicts): a yardstick of how fast the machine is
    right now (a shared VM's CPU time per instruction varies by tens of per cent, and by kind)."""
    import gc

    gc.disable()  # the collector's cost grows with the heap, which the caller may have grown
    try:
        started = time.process_time()
        for i in range(20_000):
            text = json.dumps({"i": i, "messages": _TEXT, "tenant": "bench"}, ensure_ascii=False)
            hashlib.sha256(text.encode()).hexdigest()
            {k: v for k, v in json.loads(text).items() if k != "i"}
        return round((time.process_time() - started) * 1000, 1)
    finally:
        gc.enable()


def describe(**extra: object) -> dict[str, object]:
    """The machine's description for a benchmark's JSON: CPUs, Python, platform, CPU model, SIMD, yardstick."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            **cpu_info(), "calibration_ms": calibrate(), **extra}
