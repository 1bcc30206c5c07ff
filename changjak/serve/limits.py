"""Per-key limits: requests per minute, tokens per minute, requests in flight, tokens per period.

    lease = await limiter.admit(caller, tokens=prompt_estimate + max_tokens)   # RateLimited if over
    ...                                                                         # generate
    await lease.settle(prompt_tokens + completion_tokens)  # once, when the response has ended

Whose limits apply is decided by the authenticated key alone (``Caller.key_id``); nothing the
client sends in headers (``X-Forwarded-For`` ...) changes it. A key's own rpm/tpm/concurrency/budget
wins; None there means ``settings.limits.default_*``, and None there means unlimited.

- rpm and tpm are token buckets refilled evenly over a minute: a key may burst up to its limit.
  Admission reserves ``prompt + max_tokens`` tokens; settling refunds what was not used.
- concurrency is a set of leases, each lapsing after ``concurrency_lease_s`` so a replica that
  dies mid-request cannot hold a slot for ever. Settling releases it.
- the budget counts tokens per calendar day or month (UTC); it is reserved and settled like tpm.

With Redis (``settings.redis_url``) one Lua script checks every limit and takes what the request
needs, atomically, on Redis's clock: N replicas together never let more through than the limit.
Without it, the same arithmetic runs in-process, where one event loop makes it atomic.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from changjak.errors import RateLimited
from changjak.serve.context import Caller
from changjak.settings import LimitSettings

# which limit -> (error code, words for the message)
EXCEEDED = {
    "rpm": ("rate_limit_exceeded", "requests per minute"),
    "tpm": ("tokens_limit_exceeded", "tokens per minute"),
    "concurrency": ("concurrency_limit_exceeded", "concurrent requests"),
    "budget": ("insufficient_quota", "tokens per budget period"),
}
_ORDER = ("rpm", "tpm", "concurrency", "budget")  # the Lua script answers with a 1-based index into this
_MINUTE_MS = 60_000
_CONCURRENCY_RETRY_MS = 1000  # a slot frees when some request ends; there is no better guess


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget: int | None = None

    @classmethod
    def of(cls, caller: Caller, defaults: LimitSettings) -> Limits:
        def pick(own: int | None, default: int | None) -> int | None:
            return own if own is not None else default

        return cls(pick(caller.rpm, defaults.default_rpm), pick(caller.tpm, defaults.default_tpm),
                   pick(caller.concurrency, defaults.default_concurrency), pick(caller.budget, defaults.default_budget))

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.concurrency, self.budget))


@dataclass(frozen=True)
class Ask:
    """One admission, as both stores receive it: keys, limits (0 = unlimited) and what to take."""

    keys: tuple[str, str, str, str]  # rpm bucket, tpm bucket, concurrency leases, budget counter
    rpm: int
    tpm: int
    concurrency: int
    budget: int
    tokens: int  # reserved against the budget
    tpm_cost: int  # reserved against tpm (never more than the whole tpm, or it could never pass)
    lease_id: str
    lease_ms: int
    budget_left_ms: int  # until the budget period ends
    budget_ttl_s: int


class Store(Protocol):
    async def admit(self, ask: Ask) -> tuple[int, int]:
        """(0, 0) when admitted and taken; else (1-based index into _ORDER, retry after ms)."""
        ...

    async def settle(self, ask: Ask, tokens: int) -> None:
        """Release the lease and turn the reservation into ``tokens`` actually used."""
        ...


@dataclass
class Lease:
    """What an admitted request holds until it settles."""

    store: Store | None
    ask: Ask | None
    decision: dict[str, Any] = field(default_factory=dict)
    settled: bool = False

    @property
    def holds(self) -> bool:
        """Whether settling has something to give back to the store (False for a hit: settling awaits nothing)."""
        return self.store is not None and self.ask is not None and not self.settled

    async def settle(self, tokens: int) -> None:
        """Charge ``tokens`` and free the concurrency slot; later calls do nothing."""
        if self.settled:
            return
        self.settled = True
        self.decision["charged"] = tokens
        if self.store is not None and self.ask is not None:
            await self.store.settle(self.ask, max(0, tokens))


class Limiter:
    def __init__(self, settings: LimitSettings, store: Store, *, prefix: str = "changjak") -> None:
        self.settings, self.store, self.prefix = settings, store, prefix

    @classmethod
    def from_settings(cls, settings: Any, client: Any = None) -> Limiter:
        """In Redis when ``client`` (a redis.asyncio client for ``settings.redis_url``) is given."""
        if client is not None:
            from changjak.serve.limits_redis import RedisStore

            return cls(settings.limits, RedisStore(client), prefix=settings.redis_prefix)
        return cls(settings.limits, MemoryStore(), prefix=settings.redis_prefix)

    async def admit(self, caller: Caller, tokens: int, decisions: dict[str, Any] | None = None, *,
                    hold: bool = True) -> Lease:
        """Take one request and ``tokens`` from ``caller``'s limits, or raise RateLimited naming the limit.

        ``hold=False`` (an answer from the cache: instant, no model) takes a request from rpm only:
        no tokens, no concurrency slot, nothing to settle.
        """
        limits = Limits.of(caller, self.settings)
        if not hold:
            limits, tokens = Limits(rpm=limits.rpm), 0
        decision: dict[str, Any] = {"key": caller.key_id, "reserved": tokens}
        if decisions is not None:
            decisions["limits"] = decision
        if not limits.any:
            return Lease(None, None, decision)
        ask = self._ask(caller.key_id, limits, tokens)
        which, retry_ms = await self.store.admit(ask)
        if which:
            name = _ORDER[which - 1]
            code, words = EXCEEDED[name]
            decision.update(exceeded=name, retry_after_s=round(retry_ms / 1000, 3))
            limit = getattr(limits, name)
            raise RateLimited(f"Rate limit reached for this API key on {words} (limit {limit}); "
                              f"retry after {max(1, -(-retry_ms // 1000))} s.", code=code,
                              retry_after=max(retry_ms / 1000, 0.001))
        return Lease(self.store if hold else None, ask, decision)

    def _ask(self, key_id: str, limits: Limits, tokens: int) -> Ask:
        base = f"{self.prefix}:lim:{{{key_id}}}"  # {hash tag}: one Redis Cluster slot per key
        period, left_s = self._period(time.time())
        return Ask(keys=(f"{base}:rpm", f"{base}:tpm", f"{base}:inflight", f"{base}:budget:{period}"),
                   rpm=limits.rpm or 0, tpm=limits.tpm or 0, concurrency=limits.concurrency or 0,
                   budget=limits.budget or 0, tokens=tokens,
                   tpm_cost=min(tokens, limits.tpm) if limits.tpm else tokens,
                   lease_id=os.urandom(16).hex() if limits.concurrency else "",  # only a concurrency slot needs one
                   lease_ms=int(self.settings.concurrency_lease_s * 1000), budget_left_ms=int(left_s * 1000),
                   budget_ttl_s=int(left_s) + 86_400)

    def _period(self, now: float) -> tuple[str, float]:
        """:func:`budget_period` of ``now``, its calendar arithmetic done once per period."""
        label, end = getattr(self, "_current_period", ("", 0.0))
        if now >= end or now < end - 32 * 86_400:  # a new period (or a clock set back by more than one)
            label, left = budget_period(now, self.settings.budget_period)
            end = now + left
            self._current_period = (label, end)
        return label, end - now


def budget_period(now: float, period: str) -> tuple[str, float]:
    """The id of the UTC day or month holding ``now``, and the seconds left in it."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end, label = start + timedelta(days=1), start.strftime("%Y-%m-%d")
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end, label = (start + timedelta(days=32)).replace(day=1), start.strftime("%Y-%m")
    return label, (end - moment).total_seconds()


class MemoryStore:
    """The limits of one process. Nothing here awaits, so each call is atomic on its event loop."""

    def __init__(self) -> None:
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens available, at ms)
        self.leases: dict[str, dict[str, float]] = {}  # key -> lease id -> expiry ms
        self.used: dict[str, int] = {}  # budget key -> tokens

    @staticmethod
    def _now_ms() -> float:
        return time.monotonic() * 1000

    def _available(self, key: str, limit: int, now: float) -> float:
        tokens, at = self.buckets.get(key, (limit, now))
        return min(limit, tokens + (now - at) * limit / _MINUTE_MS)

    async def admit(self, ask: Ask) -> tuple[int, int]:
        now = self._now_ms()
        rpm_key, tpm_key, lease_key, budget_key = ask.keys
        failures: list[tuple[float, int]] = []
        if ask.rpm and (avail := self._available(rpm_key, ask.rpm, now)) < 1:
            failures.append(((1 - avail) * _MINUTE_MS / ask.rpm, 1))
        if ask.tpm and (avail := self._available(tpm_key, ask.tpm, now)) < ask.tpm_cost:
            failures.append(((ask.tpm_cost - avail) * _MINUTE_MS / ask.tpm, 2))
        if ask.concurrency:
            live = {k: v for k, v in self.leases.get(lease_key, {}).items() if v > now}
            self.leases[lease_key] = live
            if len(live) >= ask.concurrency:
                failures.append((_CONCURRENCY_RETRY_MS, 3))
        if ask.budget and self.used.get(budget_key, 0) + ask.tokens > ask.budget:
            failures.append((ask.budget_left_ms, 4))
        if failures:
            wait, which = max(failures)
            return which, int(-(-wait // 1))
        if ask.rpm:
            self.buckets[rpm_key] = (self._available(rpm_key, ask.rpm, now) - 1, now)
        if ask.tpm:
            self.buckets[tpm_key] = (self._available(tpm_key, ask.tpm, now) - ask.tpm_cost, now)
        if ask.concurrency:
            self.leases[lease_key][ask.lease_id] = now + ask.lease_ms
        if ask.budget:
            self.used[budget_key] = self.used.get(budget_key, 0) + ask.tokens
        return 0, 0

    async def settle(self, ask: Ask, tokens: int) -> None:
        now = self._now_ms()
        _, tpm_key, lease_key, budget_key = ask.keys
        if ask.tpm and tokens != ask.tpm_cost:
            self.buckets[tpm_key] = (min(ask.tpm, self._available(tpm_key, ask.tpm, now) + ask.tpm_cost - tokens), now)
        if ask.concurrency:
            self.leases.get(lease_key, {}).pop(ask.lease_id, None)
        if ask.budget and budget_key in self.used:
            self.used[budget_key] += tokens - ask.tokens
