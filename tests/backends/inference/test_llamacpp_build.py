"""The llama.cpp build flags follow the CPU: never AMX, never an instruction the CPU lacks."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from changjak.backends.inference import llamacpp_build as build

# Flag sets as /proc/cpuinfo lists them (trimmed to what matters).
SAPPHIRE_RAPIDS = ("fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 avx512f avx512dq avx512cd "
                   "avx512bw avx512vl avx_vnni avx512_bf16 avx512vbmi avx512_vnni amx_bf16 amx_tile amx_int8")
HASWELL = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2"
SANDY_BRIDGE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx"
ZEN4 = ("fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 avx512f avx512dq avx512cd avx512bw "
        "avx512vl avx512_bf16 avx512vbmi avx512_vnni")
HALF_AVX512 = "sse4_2 avx avx2 fma f16c bmi2 avx512f avx512_vnni avx512vbmi"  # no cd/vl/dq/bw


def cpuinfo(flags: str) -> str:
    return f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"


def options(flags: str) -> dict[str, str]:
    args = build.cmake_args("Linux", "x86_64", cpuinfo(flags)).split()
    return dict(a.removeprefix("-D").split("=") for a in args)


def test_an_amx_cpu_gets_avx512_and_vnni_but_never_amx_or_native() -> None:
    got = options(SAPPHIRE_RAPIDS)
    assert got["GGML_NATIVE"] == "OFF"
    assert {got[k] for k in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")} == {"OFF"}
    on = ("GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2", "GGML_AVX_VNNI", "GGML_AVX512",
          "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16")
    assert {k: got[k] for k in on} == dict.fromkeys(on, "ON")


def test_an_avx2_cpu_gets_no_avx512() -> None:
    got = options(HASWELL)
    assert got["GGML_AVX2"] == got["GGML_FMA"] == got["GGML_BMI2"] == "ON"
    assert got["GGML_AVX512"] == got["GGML_AVX512_VNNI"] == got["GGML_AVX_VNNI"] == "OFF"


def test_an_avx_only_cpu_gets_no_avx2_fma_or_f16c() -> None:
    got = options(SANDY_BRIDGE)
    assert got["GGML_AVX"] == "ON"
    assert got["GGML_AVX2"] == got["GGML_FMA"] == got["GGML_F16C"] == got["GGML_BMI2"] == "OFF"


def test_zen4_has_avx512_without_avx_vnni() -> None:
    got = options(ZEN4)
    assert got["GGML_AVX512"] == got["GGML_AVX512_BF16"] == "ON"
    assert got["GGML_AVX_VNNI"] == "OFF"


def test_avx512_extras_need_the_whole_avx512_base() -> None:
    got = options(HALF_AVX512)
    assert got["GGML_AVX512"] == got["GGML_AVX512_VNNI"] == got["GGML_AVX512_VBMI"] == "OFF"


def test_no_flags_line_turns_everything_off() -> None:
    got = options("")
    assert set(got.values()) == {"OFF"}


def test_macos_keeps_the_default_metal_build_and_arm_linux_the_native_one() -> None:
    assert build.cmake_args("Darwin", "arm64", "") == ""
    assert build.cmake_args("Linux", "aarch64", "") == "-DGGML_NATIVE=ON"


def test_the_cache_key_changes_with_the_flags_and_the_version() -> None:
    a = build.cache_key("0.3.36", build.cmake_args("Linux", "x86_64", cpuinfo(HASWELL)), "x86_64")
    b = build.cache_key("0.3.36", build.cmake_args("Linux", "x86_64", cpuinfo(ZEN4)), "x86_64")
    c = build.cache_key("0.3.37", build.cmake_args("Linux", "x86_64", cpuinfo(HASWELL)), "x86_64")
    assert len({a, b, c}) == 3 and a.startswith("llama-cpp-python-0.3.36-")


def test_this_machine_gets_args_and_the_script_prints_them(capsys: pytest.CaptureFixture[str]) -> None:
    build.main([])
    printed = capsys.readouterr().out
    assert not any(f"-D{name}=ON" in printed for name in build.ALWAYS_OFF)


def test_the_converter_is_unpacked_from_the_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py", "src/llama.cpp"):
            data = b"# " + name.encode()
            info = tarfile.TarInfo(f"llama_cpp_python-9.9.9/vendor/llama.cpp/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("CHANGJAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CHANGJAK_LLAMACPP_CONVERTER", raising=False)
    build.main(["--tools", str(sdist)])
    script = build.converter("9.9.9")
    assert script == tmp_path / "cache" / "llama.cpp-9.9.9" / "convert_hf_to_gguf.py"
    assert (script.parent / "conversion" / "__init__.py").is_file()
    assert (script.parent / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert not (script.parent / "src").exists()  # only what the converter needs
