"""The CMAKE_ARGS that build llama-cpp-python safely for the CPU this runs on.

    CMAKE_ARGS="$(python changjak/backends/inference/llamacpp_build.py)" \\
        CMAKE_BUILD_PARALLEL_LEVEL=2 pip wheel --no-binary llama-cpp-python llama-cpp-python==0.3.36
    python changjak/backends/inference/llamacpp_build.py --key 0.3.36   # the wheel cache key
    python changjak/backends/inference/llamacpp_build.py --tools SDIST  # unpack the GGUF converter

Why not the default build: it compiles with ``-march=native`` and, on a CPU with AMX, crashes
with a segmentation fault on the first decode (``ggml_backend_amx_mul_mat``). So on x86 Linux
the native build is off, each instruction set (AVX, AVX2, FMA, F16C, BMI2, AVX-VNNI, AVX512 and
its VBMI/VNNI/BF16 parts) is switched on only when ``/proc/cpuinfo`` lists it, and AMX is always
off. macOS keeps the default build (Metal); other machines (ARM Linux) keep the native one,
which has no AMX. Standard library only, so the Makefile can run it before anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# GGML option -> the cpuinfo flags it needs (all of them).
X86_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    # ggml's AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw.
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
}
# These are only used by ggml when GGML_AVX512 is on.
AVX512_EXTRAS: dict[str, tuple[str, ...]] = {
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}
ALWAYS_OFF = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The instruction-set flags of the first CPU listed in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def x86_args(flags: set[str]) -> list[str]:
    """``-D`` options for an x86 CPU with these cpuinfo flags: no native build, no AMX."""
    on = {name: all(f in flags for f in needs) for name, needs in X86_OPTIONS.items()}
    for name, needs in AVX512_EXTRAS.items():
        on[name] = on["GGML_AVX512"] and all(f in flags for f in needs)
    args = ["-DGGML_NATIVE=OFF"]
    args += [f"-D{name}={'ON' if value else 'OFF'}" for name, value in on.items()]
    args += [f"-D{name}=OFF" for name in ALWAYS_OFF]
    return args


def cmake_args(system: str | None = None, machine: str | None = None, cpuinfo: str | None = None) -> str:
    """CMAKE_ARGS for this machine (or for the one described by the arguments, in tests)."""
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    if system == "Darwin":
        return ""  # llama-cpp-python's default: Metal on Apple silicon
    if machine in ("x86_64", "amd64", "i686", "i386"):
        if cpuinfo is None:
            path = Path("/proc/cpuinfo")
            cpuinfo = path.read_text() if path.exists() else ""
        return " ".join(x86_args(cpu_flags(cpuinfo)))
    return "-DGGML_NATIVE=ON"  # ARM and others: native is safe (no AMX)


def cache_key(version: str, args: str, machine: str | None = None) -> str:
    """Directory name for a wheel built with ``args``: version plus a short hash of the build."""
    machine = (machine or platform.machine()).lower()
    digest = hashlib.sha256(f"{machine} {sys.version_info[:2]} {args}".encode()).hexdigest()[:12]
    return f"llama-cpp-python-{version}-{digest}"


# --- llama.cpp's GGUF converter, which the wheel does not ship --------------------------------

TOOL_MEMBERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")


def cache_dir() -> Path:
    """Where built wheels and unpacked llama.cpp tools live: $CHANGJAK_CACHE or ~/.cache/changjak."""
    if env := os.environ.get("CHANGJAK_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "changjak"


def extract_tools(sdist: Path, dest: Path) -> Path:
    """Unpack ``convert_hf_to_gguf.py`` with its ``conversion`` and ``gguf-py`` packages from the sdist."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent if dest.parent.exists() else None))
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            _, _, inner = member.name.partition("/vendor/llama.cpp/")
            if inner and inner.startswith(TOOL_MEMBERS) and (member.isfile() or member.isdir()):
                member.name = inner
                members.append(member)
        if not any(m.name == TOOL_MEMBERS[0] for m in members):
            raise FileNotFoundError(f"{sdist} holds no vendor/llama.cpp/{TOOL_MEMBERS[0]}")
        tar.extractall(tmp, members=members, filter="data")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, dest)
    except OSError:
        if not (dest / TOOL_MEMBERS[0]).is_file():  # else another process unpacked it first
            raise
    return dest


def converter(version: str | None = None, script: str = TOOL_MEMBERS[0]) -> Path:
    """The converter (or ``convert_lora_to_gguf.py``) matching the installed llama-cpp-python:
    unpacked once, fetched if need be.

    $CHANGJAK_LLAMACPP_CONVERTER names one directly (a llama.cpp checkout's convert_hf_to_gguf.py;
    the LoRA converter is looked for beside it).
    """
    if env := os.environ.get("CHANGJAK_LLAMACPP_CONVERTER"):
        return Path(env).with_name(script)
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            version = installed("llama-cpp-python")
        except PackageNotFoundError:
            raise FileNotFoundError("llama-cpp-python is not installed: run `make .venv/.llamacpp`, or set "
                                    "CHANGJAK_LLAMACPP_CONVERTER to a convert_hf_to_gguf.py") from None
    dest = cache_dir() / f"llama.cpp-{version}"
    if not (dest / script).is_file():
        shutil.rmtree(dest, ignore_errors=True)  # unpacked by an older changjak, with fewer tools
        sdist = cache_dir() / "wheels" / f"llama_cpp_python-{version}.tar.gz"
        if not sdist.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={version}", "-d", str(sdist.parent)], check=True)
        extract_tools(sdist, dest)
    return dest / script


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--key", metavar="VERSION", help="print the wheel cache key instead")
    parser.add_argument("--tools", metavar="SDIST", type=Path, help="unpack the GGUF converter from this sdist")
    ns = parser.parse_args(argv)
    if ns.tools:
        version = ns.tools.name.removeprefix("llama_cpp_python-").removesuffix(".tar.gz")
        dest = cache_dir() / f"llama.cpp-{version}"
        if not all((dest / m).exists() for m in TOOL_MEMBERS):
            shutil.rmtree(dest, ignore_errors=True)
            extract_tools(ns.tools, dest)
        print(dest)
        return
    args = cmake_args()
    print(cache_key(ns.key, args) if ns.key else args)


if __name__ == "__main__":
    main()
