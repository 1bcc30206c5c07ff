"""The instruments: what one request's context becomes, cost from settings prices, per-app
registries, and the multiprocess aggregation ``serve --workers`` relies on."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from prometheus_client.parser import text_string_to_metric_families

from changjak.monitor.metrics import Metrics
from changjak.serve.context import Caller, RequestContext


def value(metrics: Metrics, name: str, **labels: str) -> float:
    text = metrics.render()[0].decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def context(**fields) -> RequestContext:
    ctx = RequestContext(request_id="req_1", caller=Caller("cj_ab12", "n", "user", "acme"), model_version="3")
    for key, val in fields.items():
        setattr(ctx, key, val)
    return ctx


def test_a_request_counts_by_route_status_version_tenant_with_tokens_and_cost(make_settings) -> None:
    metrics = Metrics(make_settings(monitor={"price_per_1k_prompt_tokens": 0.5,
                                             "price_per_1k_completion_tokens": 2.0}))
    metrics.observe_request(context(prompt_tokens=1000, completion_tokens=500), route="/v1/chat/completions",
                            method="POST", status=200, seconds=0.02)
    who = {"model_version": "3", "tenant": "acme"}
    assert value(metrics, "changjak_requests_total", route="/v1/chat/completions", method="POST", status="200",
                 **who) == 1
    assert value(metrics, "changjak_request_duration_seconds_count", route="/v1/chat/completions") == 1
    assert value(metrics, "changjak_prompt_tokens_total", **who) == 1000
    assert value(metrics, "changjak_completion_tokens_total", **who) == 500
    assert value(metrics, "changjak_estimated_cost_total", **who) == 0.5 + 1.0


def test_cache_results_and_rate_limits_come_from_the_decisions() -> None:
    metrics = Metrics()
    for decisions, status in (({"cache": "hit"}, 200), ({"cache": "miss"}, 200), ({"cache": "hit"}, 200),
                              ({"limits": "rpm"}, 429), ({"limits": {"refused": "tpm"}}, 429), ({}, 429),
                              ({"limits": "ok"}, 200)):
        metrics.observe_request(context(decisions=decisions), route="/v1/chat/completions", method="POST",
                                status=status, seconds=0.001)
    assert value(metrics, "changjak_cache_lookups_total", result="hit", tenant="acme") == 2
    assert value(metrics, "changjak_cache_lookups_total", result="miss", tenant="acme") == 1
    assert value(metrics, "changjak_rate_limited_requests_total", limit="rpm") == 1
    assert value(metrics, "changjak_rate_limited_requests_total", limit="tpm") == 1
    assert value(metrics, "changjak_rate_limited_requests_total", limit="unknown") == 1


def test_unknown_caller_and_version_are_a_dash_and_no_tokens_count_nothing() -> None:
    metrics = Metrics()
    metrics.observe_request(RequestContext(request_id="r"), route="/v1/models", method="GET", status=401,
                            seconds=0.001)
    metrics.observe_request(None, route="unmatched", method="GET", status=404, seconds=0.001)
    assert value(metrics, "changjak_requests_total", status="401", tenant="-", model_version="-") == 1
    assert value(metrics, "changjak_requests_total", route="unmatched", status="404") == 1
    assert value(metrics, "changjak_prompt_tokens_total") == 0


def test_each_app_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.in_flight.inc()
    assert value(a, "changjak_requests_in_flight") == 1 and value(b, "changjak_requests_in_flight") == 0


def test_multiprocess_mode_aggregates_every_process(tmp_path) -> None:
    child = textwrap.dedent("""
        from changjak.monitor.metrics import Metrics
        from changjak.serve.context import RequestContext
        m = Metrics()
        m.observe_request(RequestContext(request_id="r"), route="/healthz", method="GET", status=200, seconds=0.01)
        m.in_flight.inc()
    """)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": ""}
    for _ in range(2):  # two "workers", one after the other, each its own process
        subprocess.run([sys.executable, "-c", child], check=True, env=env)
    reader = "from changjak.monitor.metrics import Metrics; print(Metrics().render()[0].decode())"
    text = subprocess.run([sys.executable, "-c", reader], check=True, env=env, capture_output=True,
                          text=True).stdout
    samples = {(s.name, s.labels.get("route")): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("changjak_requests_total", "/healthz")] == 2
    assert samples[("changjak_request_duration_seconds_count", "/healthz")] == 2
