"""Prometheus instruments of one gateway app, and their text exposition for ``GET /metrics``.

    metrics = Metrics(settings)            # one per app: tests build many apps in one process
    metrics.observe_request(ctx, route="/v1/chat/completions", method="POST", status=200, seconds=0.04)
    body, content_type = metrics.render()

Each app has its own ``CollectorRegistry``. With ``changjak serve --workers N`` the environment
variable ``PROMETHEUS_MULTIPROC_DIR`` (set by ``serve`` to a fresh directory before the workers
start) puts prometheus_client in multiprocess mode: every worker writes its values to files
there and :meth:`Metrics.render` aggregates all of them, so one scrape sees the whole server.

Labels stay low-cardinality: the route is the template (``/admin/keys/{prefix}``), never the
raw path; tenant and model version come from the request context (``-`` when unknown).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from changjak.serve.context import RequestContext
    from changjak.settings import Settings

UNKNOWN = "-"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Gateway latency: sub-millisecond cache hits up to minute-long streams.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    def __init__(self, settings: Settings | None = None, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        monitor = getattr(settings, "monitor", None)
        self.price_in = monitor.price_per_1k_prompt_tokens if monitor else 0.0
        self.price_out = monitor.price_per_1k_completion_tokens if monitor else 0.0
        who = ["model_version", "tenant"]
        self.requests = Counter("changjak_requests", "HTTP requests answered, by route template and status.",
                                ["route", "method", "status", *who], registry=r)
        self.latency = Histogram("changjak_request_duration_seconds",
                                 "Time from request to the end of its response (a stream's last byte).",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("changjak_time_to_first_token_seconds",
                              "Time from asking the backend to its first text (queueing included).",
                              ["model_version"], buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("changjak_inter_token_latency_seconds",
                             "Time between successive pieces of text from the backend.",
                             ["model_version"], buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter("changjak_prompt_tokens", "Tokens in (prompts).", who, registry=r)
        self.completion_tokens = Counter("changjak_completion_tokens", "Tokens out (completions).", who,
                                         registry=r)
        self.cost = Counter("changjak_estimated_cost", "Estimated cost: tokens x settings.monitor prices "
                            "per 1k tokens.", who, registry=r)
        self.cache = Counter("changjak_cache_lookups", "Response-cache lookups, by result (hit, miss).",
                             ["result", "tenant"], registry=r)
        self.rate_limited = Counter("changjak_rate_limited_requests",
                                    "Requests refused by a limit (429), by the limit that refused.",
                                    ["limit", "tenant"], registry=r)
        self.safety = Counter("changjak_safety_decisions", "Safety policy decisions: a check that fired, by "
                              "surface, category and the action taken.", ["surface", "category", "action", "tenant"],
                              registry=r)
        self.in_flight = Gauge("changjak_requests_in_flight", "HTTP requests being answered now.",
                               registry=r, multiprocess_mode="livesum")
        self.queued = Gauge("changjak_generations_queued", "Generations asked of the backend that have "
                            "not produced anything yet.", registry=r, multiprocess_mode="livesum")
        self.running = Gauge("changjak_generations_running", "Generations producing text now.",
                             registry=r, multiprocess_mode="livesum")
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # see child()

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus_client validates and locks on every call
        (~10 µs), and a request touches up to six labelled children."""
        key = (id(metric), labels)
        if (found := self._children.get(key)) is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_request(self, ctx: RequestContext | None, *, route: str, method: str, status: int,
                        seconds: float) -> None:
        """Count one answered request and everything its context says was decided."""
        tenant = _label(ctx.caller.tenant if ctx and ctx.caller else None)
        version = _label(ctx.model_version if ctx else None)
        child = self.child
        child(self.requests, route, method, str(status), version, tenant).inc()
        child(self.latency, route, method).observe(seconds)
        if ctx is None:
            return
        if ctx.prompt_tokens or ctx.completion_tokens:
            child(self.prompt_tokens, version, tenant).inc(ctx.prompt_tokens)
            child(self.completion_tokens, version, tenant).inc(ctx.completion_tokens)
            cost = (ctx.prompt_tokens * self.price_in + ctx.completion_tokens * self.price_out) / 1000
            if cost:
                child(self.cost, version, tenant).inc(cost)
        if (cache := ctx.decisions.get("cache")) in ("hit", "miss"):
            child(self.cache, cache, tenant).inc()
        for verdict in _verdicts(ctx.decisions.get("safety")):
            for category, decision in verdict.get("categories", {}).items():
                self.safety.labels(str(verdict.get("surface", UNKNOWN)), category,
                                   str(decision.get("action", UNKNOWN)), tenant).inc()
        limited = _limit_name(ctx.decisions.get("limits", ctx.decisions.get("limit")))
        if status == 429 or limited:
            self.rate_limited.labels(limited or "unknown", tenant).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text format: of every worker's files in multiprocess mode, else this app's."""
        if (path := multiprocess_dir()) is not None:
            registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry, path=path)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int | None = None) -> None:
    """Drop a finished worker's live gauges (in-flight, queued) from the multiprocess files."""
    if multiprocess_dir() is not None:
        _multiprocess.mark_process_dead(pid or os.getpid())


def _label(value: str | None) -> str:
    return value if value else UNKNOWN


def _verdicts(found: Any) -> list[dict]:
    """Every verdict summary (``{"surface", "action", "categories"}``) inside a ``decisions["safety"]`` value."""
    if isinstance(found, dict):
        if "categories" in found and "surface" in found:
            return [found]
        return [v for value in found.values() for v in _verdicts(value)]
    if isinstance(found, list):
        return [v for value in found for v in _verdicts(value)]
    return []


def _limit_name(decision: Any) -> str | None:
    """Which limit refused, from ``ctx.decisions["limits"]``: ``"rpm"``, ``{"refused": "rpm"}``, ..."""
    if isinstance(decision, str):
        return None if decision in ("ok", "pass", "allowed", "") else decision
    if isinstance(decision, dict):
        for key in ("refused", "limited", "exceeded", "limit"):
            if isinstance(found := decision.get(key), str) and found:
                return found
    return None
