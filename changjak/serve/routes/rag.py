"""/v1/rag: a tenant's documents for retrieval. Ingest, list and delete need ``rag:ingest``; search needs ``inference``.

    POST   /v1/rag/documents        {"id": "novel-1", "title": "바다의 노래", "text": "..."}  -> 201
    GET    /v1/rag/documents        the tenant's documents, with their chunk counts
    DELETE /v1/rag/documents/{id}   404 when the tenant has no such document
    POST   /v1/rag/search           {"query": "민지의 고향은?", "top_k": 4} -> the nearest chunks

A key acts for its own tenant; a key of every tenant (``*``) names one with ``tenant``. Documents
pass the safety policy at ingest (see :mod:`changjak.rag`): PII is stored masked, a document the
policy blocks is a 400 ``content_policy_violation``. The index is built on first use.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from changjak.errors import BadRequest, ContentPolicyViolation, NotFound, PermissionDenied
from changjak.rag import RagIndex
from changjak.serve.auth import ALL_TENANTS, Principal, RagIngester
from changjak.serve.context import Caller, context_of

router = APIRouter(prefix="/v1/rag", tags=["rag"])
_lock = asyncio.Lock()


class DocumentIn(BaseModel):
    id: str | None = Field(None, max_length=128)
    title: str | None = Field(None, max_length=300)
    text: str = Field(min_length=1)
    source: str | None = Field(None, max_length=500)
    tenant: str | None = Field(None, max_length=128)  # only for keys of every tenant


class DocumentOut(BaseModel):
    id: str
    object: str = "rag.document"
    title: str | None = None
    chunks: int
    action: str | None = None  # the safety action taken at ingest (allow, flag, mask)
    categories: dict[str, int] = {}


class DocumentList(BaseModel):
    object: str = "list"
    data: list[DocumentOut]


class SearchIn(BaseModel):
    query: str = Field(min_length=1, max_length=4000)
    top_k: int | None = Field(None, ge=1, le=50)
    min_score: float | None = Field(None, ge=-1, le=1)
    tenant: str | None = Field(None, max_length=128)


class SearchHit(BaseModel):
    doc_id: str
    chunk_id: str
    title: str | None
    text: str
    score: float


class SearchResult(BaseModel):
    object: str = "list"
    data: list[SearchHit]


async def get_index(request: Request) -> RagIndex:
    """The app's RAG index, built once on first use (loading the embedder takes a moment)."""
    state = request.app.state
    if getattr(state, "rag", None) is None:
        async with _lock:
            if getattr(state, "rag", None) is None:
                state.rag = await asyncio.to_thread(RagIndex.from_settings, state.settings, state.safety)
    return state.rag


Index = Annotated[RagIndex, Depends(get_index)]


def tenant_of(caller: Caller, asked: str | None) -> str:
    """The tenant a request acts for: its key's own, or the one named by a key of every tenant."""
    if caller.tenant != ALL_TENANTS:
        if asked not in (None, caller.tenant):
            raise PermissionDenied("This key acts only for its own tenant; leave out 'tenant'.", param="tenant")
        return caller.tenant
    if not asked or asked == ALL_TENANTS:
        raise BadRequest("Missing 'tenant': this key acts for every tenant, so name the one to use.",
                         param="tenant", code="missing_required_parameter")
    return asked


@router.post("/documents", status_code=201)
async def ingest_document(body: DocumentIn, caller: RagIngester, index: Index, request: Request) -> DocumentOut:
    """Check, chunk, embed and store one document (an existing id is replaced)."""
    tenant = tenant_of(caller, body.tenant)
    ctx = context_of(request)
    try:
        result = await asyncio.to_thread(index.ingest, tenant, body.text, doc_id=body.id, title=body.title,
                                         source=body.source)
    except ContentPolicyViolation as refused:
        if ctx is not None:
            ctx.decisions["safety"] = getattr(refused, "verdicts", [])
        raise
    if ctx is not None:
        ctx.decisions["safety"] = result.verdicts
        ctx.decisions["rag"] = {"ingested": result.doc_id, "chunks": result.chunks}
    return DocumentOut(id=result.doc_id, title=index.safety.mask_for_log(body.title) if body.title else None,
                       chunks=result.chunks, action=result.action, categories=result.categories)


@router.get("/documents")
async def list_documents(caller: RagIngester, index: Index, tenant: str | None = None) -> DocumentList:
    """The tenant's documents."""
    docs = await asyncio.to_thread(index.documents, tenant_of(caller, tenant))
    return DocumentList(data=[DocumentOut(id=doc_id, title=str(chunks[0].metadata.get("title") or "") or None,
                                          chunks=len(chunks)) for doc_id, chunks in sorted(docs.items())])


@router.delete("/documents/{doc_id}")
async def delete_document(doc_id: str, caller: RagIngester, index: Index, tenant: str | None = None) -> dict:
    """Remove a document and all its chunks."""
    if not await asyncio.to_thread(index.delete, tenant_of(caller, tenant), doc_id):
        raise NotFound("No such document.", param="doc_id", code="document_not_found")
    return {"id": doc_id, "object": "rag.document.deleted", "deleted": True}


@router.post("/search")
async def search(body: SearchIn, caller: Principal, index: Index) -> SearchResult:
    """The tenant's chunks nearest to ``query``."""
    hits = await asyncio.to_thread(index.search, tenant_of(caller, body.tenant), body.query, k=body.top_k,
                                   min_score=body.min_score)
    return SearchResult(data=[SearchHit(doc_id=h.chunk.doc_id, chunk_id=h.chunk.id, text=h.chunk.text,
                                        title=str(h.chunk.metadata.get("title") or "") or None,
                                        score=round(h.score, 4)) for h in hits])
