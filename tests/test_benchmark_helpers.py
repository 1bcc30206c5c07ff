"""The benchmarks' own bookkeeping: which machine they ran on, and how a run is checked against the issue's goals."""

from benchmarks.gateway import check
from benchmarks.machine import cpu_info, describe


def test_cpu_info_names_the_model_and_the_vector_extensions_that_pick_kernels(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu sse2 avx2 fma avx512f "
                       "avx512_bf16 avx512bw\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu\n")
    assert cpu_info(cpuinfo) == {"cpu_model": "AMD EPYC 9B14", "simd": ["avx2", "fma", "avx512f", "avx512_bf16"]}
    assert cpu_info(tmp_path / "missing")["simd"] is None


def test_describe_carries_a_speed_yardstick():
    machine = describe(threads=2)
    assert machine["threads"] == 2 and machine["cpus"] >= 1
    assert machine["calibration_ms"] > 0


def _row(target, clients, rps, added_p95=1.0, vs_litellm=None):
    return {"target": target, "concurrency": clients, "rps": rps, "added_p50_ms": 0.5, "added_p95_ms": added_p95,
            "rps_vs_litellm": vs_litellm}


def test_gateway_targets_are_checked_at_the_levels_that_ran():
    checks = check([_row("changjak", 10, 2800, added_p95=5.6, vs_litellm=14.0), _row("litellm", 10, 200),
                    _row("changjak cache hit", 1, 999.0), _row("changjak cache hit", 100, 3000)])
    by_target = {c["target"]: c["pass"] for c in checks}
    assert by_target == {"added p95 ms at 10 clients (cache miss)": False, "cache hits req/s at 1 clients": False,
                         "cache hits req/s at 100 clients": True, "req/s x LiteLLM at 10 clients (cache miss)": True}
    assert check([_row("changjak cache hit", 10, 1000)]) == [
        {"target": "cache hits req/s at 10 clients", "value": 1000, "goal": ">= 1000", "pass": True}]
