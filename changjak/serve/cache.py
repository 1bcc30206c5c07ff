"""The exact-match response cache: the same question, asked the same way, answered once.

    cache = ResponseCache.from_settings(settings, client)        # client: redis.asyncio, or None
    found = await cache.lookup(tenant, model_id, version, None, params, messages)  # found.hit: CachedAnswer | None
    await cache.store(found, CachedAnswer(content, finish_reason, prompt_tokens, completion_tokens))
    await cache.invalidate()                                     # promote/rollback: forget every entry

A request is answered from the cache only when its sampling is deterministic (``temperature`` 0,
or ``top_p`` at most 1e-6) or it opts in with the header ``X-Changjak-Cache: allow``;
``X-Changjak-Cache: skip`` never reads or writes it. See :func:`wanted`.

The key is a SHA-256 over the tenant, the model and its registry version, the prompt version, the
sampling parameters and the messages (NFC, stripped). Only the hash reaches the store, never text,
so keys hold no PII. Values are answers as they were sent (already through the output checks); a
hit goes through the output checks again, in the chat route. A cache that fails (Redis down) is a
miss, logged, never a failed request.

Each entry carries the cache's generation number, read in the same round trip as the entry
(``get_many``). ``invalidate()`` bumps it (in Redis when configured, so every replica sees it at
once), which makes every older entry a miss; they are overwritten or expire with their TTL. The
CLI uses :func:`invalidate_sync`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from changjak.backends import cache as cache_backends
from changjak.backends.cache import CacheBackend
from changjak.backends.inference import GenerationParams

logger = logging.getLogger(__name__)
HEADER = "x-changjak-cache"  # request: allow | skip; response: hit | miss | skip
DETERMINISTIC_TOP_P = 1e-6
_KEY_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode  # = json.dumps(..., same options), built once


@dataclass(frozen=True)
class CachedAnswer:
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Lookup:
    key: str
    generation: int  # the cache's generation when it was looked up
    hit: CachedAnswer | None


def wanted(headers: Mapping[str, str], params: GenerationParams) -> bool:
    """Whether this request may be answered from (and stored in) the cache."""
    choice = headers.get(HEADER, "").strip().lower()
    if choice == "skip":
        return False
    return choice == "allow" or params.temperature == 0 or params.top_p <= DETERMINISTIC_TOP_P


def normalise(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


class ResponseCache:
    def __init__(self, backend: CacheBackend, *, ttl_s: float, prefix: str = "changjak",
                 enabled: bool = True) -> None:
        self.backend, self.ttl_s, self.enabled = backend, ttl_s, enabled
        self.prefix = f"{prefix}:resp"
        self.generation_key = f"{self.prefix}:generation"

    @classmethod
    def from_settings(cls, settings: Any, client: Any = None) -> ResponseCache:
        """The cache ``settings.cache`` asks for; ``client`` is the shared Redis client, if any."""
        name = settings.cache.backend
        if name == "auto":
            name = "redis" if client is not None else "memory"
        backend = cache_backends.create(name, client=client, url=settings.redis_url,
                                        max_entries=settings.cache.max_entries)
        return cls(backend, ttl_s=settings.cache.ttl_s, prefix=settings.redis_prefix,
                   enabled=settings.cache.enabled)

    async def generation(self) -> int:
        value = await self.backend.get(self.generation_key)
        return int(value) if value is not None else 0

    def key(self, tenant: str | None, model_id: str, model_version: str | None, prompt_version: str | None,
            params: GenerationParams, messages: Sequence[Any]) -> str:
        """The store key for one request: a hash, nothing readable."""
        sampling = {**vars(params), "stop": list(params.stop)}  # = asdict(params), at a tenth of its cost
        del sampling["whole"]  # how the answer travels: a stream and a whole answer share entries
        if not sampling["min_tokens"]:  # added later: keys without it stay those of earlier releases
            del sampling["min_tokens"]
        material = {
            "tenant": tenant, "model": model_id, "version": model_version, "prompt": prompt_version,
            "params": sampling, "messages": [[m.role, normalise(m.content), m.name] for m in messages],
        }
        digest = hashlib.sha256(_KEY_JSON(material).encode()).hexdigest()
        return f"{self.prefix}:{digest}"

    async def get(self, key: str) -> Lookup:
        """The entry under ``key`` if it is of the current generation (one round trip for both)."""
        generation, raw = await self.backend.get_many([self.generation_key, key])
        current = int(generation) if generation is not None else 0
        if raw is None:
            return Lookup(key, current, None)
        try:
            entry = json.loads(raw)
            stored = entry.pop("generation")
            answer = CachedAnswer(**entry)
        except (ValueError, TypeError, KeyError):  # an entry of another version of this code: a miss
            logger.warning("ignoring an unreadable response-cache entry")
            return Lookup(key, current, None)
        return Lookup(key, current, answer if stored == current else None)

    async def put(self, key: str, answer: CachedAnswer, generation: int) -> None:
        entry = {**asdict(answer), "generation": generation}
        await self.backend.set(key, json.dumps(entry, ensure_ascii=False).encode(), self.ttl_s)

    async def lookup(self, tenant: str | None, model_id: str, model_version: str | None,
                     prompt_version: str | None, params: GenerationParams, messages: Sequence[Any]) -> Lookup | None:
        """What the cache holds for this request (``.hit`` None on a miss); None when the store fails."""
        try:
            return await self.get(self.key(tenant, model_id, model_version, prompt_version, params, messages))
        except Exception as e:  # noqa: BLE001 - a cache is an optimisation: without it, answer fresh
            logger.warning("response cache unavailable (%s): answering without it", e.__class__.__name__)
            return None

    async def store(self, lookup: Lookup, answer: CachedAnswer) -> None:
        """Keep ``answer`` for the request of ``lookup``, logging instead of failing when the store is down.

        It is stored under the generation its lookup saw, so an answer made while the cache was being
        invalidated is already stale.
        """
        try:
            await self.put(lookup.key, answer, lookup.generation)
        except Exception as e:  # noqa: BLE001
            logger.warning("response cache unavailable (%s): answer not stored", e.__class__.__name__)

    async def invalidate(self) -> int:
        """Forget every entry (on every replica sharing the store); returns the new generation."""
        generation = await self.backend.incr(self.generation_key)
        logger.info("response cache invalidated (generation %d)", generation)
        return generation

    async def aclose(self) -> None:
        await self.backend.aclose()


def invalidate_sync(settings: Any) -> bool:
    """Invalidate the shared cache from a command (``changjak promote``/``rollback``).

    Only a Redis cache can be reached from another process; an in-process cache lives and dies
    with its server, which the alias move reaches through ``/admin`` or a restart. Returns
    whether a shared cache was invalidated.
    """
    if not settings.redis_url or settings.cache.backend == "memory" or not settings.cache.enabled:
        return False
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        generation = client.incr(f"{settings.redis_prefix}:resp:generation")
    finally:
        client.close()
    logger.info("response cache invalidated (generation %d)", generation)
    return True
