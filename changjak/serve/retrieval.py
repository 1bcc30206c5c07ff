"""Grounding a chat in the tenant's documents (RAG) before the model sees it.

A request opts in with ``"rag": true`` or ``"rag": {"top_k": 3, "min_score": 0.82}`` in its body
(``extra_body`` in the openai SDK); ``rag.auto`` in settings grounds every chat. The last user
message (already checked and masked by the safety policy) is the query; the hits are fenced as
one data block (:func:`changjak.safety.fencing.fence_documents`) and appended to the system
message, after the fenced system prompt, so a document can neither pose as the system nor as the
user. Which chunks were used goes to the audit record (``ctx.decisions["rag"]``) and back to the
client as ``citations``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request

from changjak.errors import BadRequest
from changjak.rag import Citation
from changjak.serve.auth import ALL_TENANTS
from changjak.serve.context import Caller, context_of
from changjak.serve.guard import GuardedChat


def options(raw: Any, auto: bool) -> dict[str, Any] | None:
    """The search options a request asked for, or None when it is not grounded."""
    if raw is None:
        return {} if auto else None
    if raw is False:
        return None
    if raw is True:
        return {}
    if isinstance(raw, dict) and set(raw) <= {"top_k", "min_score"}:
        top_k, floor = raw.get("top_k"), raw.get("min_score")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 20):
            raise BadRequest("Invalid 'rag.top_k': an integer from 1 to 20.", param="rag.top_k", code="invalid_value")
        if floor is not None and (not isinstance(floor, int | float) or isinstance(floor, bool) or not -1 <= floor <= 1):
            raise BadRequest("Invalid 'rag.min_score': a number from -1 to 1.", param="rag.min_score",
                             code="invalid_value")
        return {"k": top_k, "min_score": floor}
    raise BadRequest("Invalid 'rag': true, false, or {\"top_k\": n, \"min_score\": x}.", param="rag",
                     code="invalid_value")


async def ground(request: Request, chat: GuardedChat, caller: Caller | None,
                 wanted: dict[str, Any] | None) -> list[Citation]:
    """Put the tenant's nearest chunks in front of the model; the citations (empty when none match).

    ``wanted`` is what :func:`options` made of the request.
    """
    from changjak.serve.routes.rag import get_index

    if wanted is None or caller is None or caller.tenant == ALL_TENANTS:
        return []  # a key of every tenant has no documents of its own
    query = next((m["content"] for m in reversed(chat.messages) if m["role"] == "user"), "")
    index = await get_index(request)
    hits = await asyncio.to_thread(index.search, caller.tenant, query, **{k: v for k, v in wanted.items()
                                                                           if v is not None})
    if ctx := context_of(request):
        ctx.decisions["rag"] = [{"doc_id": h.chunk.doc_id, "chunk_id": h.chunk.id, "score": round(h.score, 4)}
                                for h in hits]
    if not hits:
        return []
    block, citations = index.context(hits)
    chat.add_context(block)
    return citations
