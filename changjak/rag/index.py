"""The RAG index: ingest, search, delete and list documents of one tenant at a time."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from changjak.backends import embedding, vectorstore
from changjak.backends.vectorstore import Hit, StoredChunk
from changjak.errors import BadRequest, ContentPolicyViolation
from changjak.rag.chunk import chunk
from changjak.safety import fencing

if TYPE_CHECKING:
    from changjak.backends.embedding import Embedder
    from changjak.backends.vectorstore import VectorStore
    from changjak.safety.policy import SafetyEngine
    from changjak.settings import RagSettings, Settings

logger = logging.getLogger(__name__)
_DOC_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class IngestResult:
    doc_id: str
    chunks: int
    action: str  # the strictest safety action taken on a chunk (allow, flag, mask)
    categories: dict[str, int] = field(default_factory=dict)  # category -> chunks it fired on
    verdicts: list[dict] = field(default_factory=list)  # summaries (no text) of the chunks a check fired on


@dataclass(frozen=True)
class Citation:
    doc_id: str
    chunk_id: str
    title: str | None
    score: float


class RagIndex:
    def __init__(self, store: VectorStore, embedder: Embedder, safety: SafetyEngine, settings: RagSettings) -> None:
        self.store, self.embedder, self.safety, self.settings = store, embedder, safety, settings

    @classmethod
    def from_settings(cls, settings: Settings, safety: SafetyEngine) -> RagIndex:
        rag = settings.rag
        store = vectorstore.create(rag.vectorstore, path=settings.resolved_chroma_path, url=rag.chroma_url)
        return cls(store, embedding.create(rag.embedder), safety, rag)

    def ingest(self, tenant: str, text: str, *, doc_id: str | None = None, title: str | None = None,
               source: str | None = None) -> IngestResult:
        """Check, chunk, embed and store one document, replacing an earlier one with the same id."""
        text = unicodedata.normalize("NFC", text)
        if not text.strip():
            raise BadRequest("The document is empty.", param="text", code="invalid_value")
        if len(text) > self.settings.max_document_chars:
            raise BadRequest(f"The document is longer than {self.settings.max_document_chars} characters; "
                             "split it.", param="text", code="invalid_value")
        if doc_id is not None and not _DOC_ID.fullmatch(doc_id):
            raise BadRequest("Invalid 'id': use 1-128 letters, digits, '.', '_', ':' or '-'.", param="id",
                             code="invalid_value")
        doc_id = doc_id or "doc_" + hashlib.sha256(text.encode()).hexdigest()[:16]
        pieces = chunk(text, max_chars=self.settings.chunk_chars, overlap=self.settings.chunk_overlap)
        kept, fired, strictest, verdicts = [], {}, "allow", []
        for n, piece in enumerate(pieces):
            verdict = self.safety.check(piece, surface="document", tenant=tenant)
            for d in verdict.decisions:
                fired[d.category] = fired.get(d.category, 0) + 1
            if verdict.decisions:
                verdicts.append(verdict.summary())
            if verdict.blocked:
                refused = ContentPolicyViolation(f"The document was refused by the safety policy: chunk {n} "
                                                 f"({', '.join(verdict.blocked_by)}).", param="text")
                refused.verdicts = verdicts
                raise refused
            strictest = max(strictest, verdict.action, key=("allow", "flag", "mask", "block").index)
            meta = {"n": n, "title": self.safety.mask_for_log(title or ""), "source": source or "",
                    "flags": ",".join(sorted(d.category for d in verdict.decisions))}
            kept.append(StoredChunk(f"{doc_id}#{n}", doc_id, verdict.text, meta))
        vectors = self.embedder.embed_documents([c.text for c in kept])
        self.store.delete_document(tenant, doc_id)  # a shorter new version leaves no stale chunks
        self.store.add(tenant, kept, vectors)
        logger.info("ingested %s for a tenant: %d chunks, action %s", doc_id, len(kept), strictest)
        return IngestResult(doc_id, len(kept), strictest, fired, verdicts)

    def search(self, tenant: str, query: str, *, k: int | None = None, min_score: float | None = None) -> list[Hit]:
        """The chunks of ``tenant`` nearest to ``query`` that score at least ``min_score``."""
        k = self.settings.top_k if k is None else k
        floor = self.settings.min_score if min_score is None else min_score
        if not query.strip() or k <= 0:
            return []
        hits = self.store.query(tenant, self.embedder.embed_query(unicodedata.normalize("NFC", query)), k)
        return [h for h in hits if h.score >= floor]

    def context(self, hits: list[Hit]) -> tuple[str, list[Citation]]:
        """The hits fenced as one data block for the system prompt, and their citations."""
        fenced = fencing.fence_documents([h.chunk.text for h in hits])
        citations = [Citation(h.chunk.doc_id, h.chunk.id, str(h.chunk.metadata.get("title") or "") or None,
                              round(h.score, 4)) for h in hits]
        return fenced.text, citations

    def delete(self, tenant: str, doc_id: str) -> int:
        return self.store.delete_document(tenant, doc_id)

    def documents(self, tenant: str) -> dict[str, list[StoredChunk]]:
        return self.store.documents(tenant)

    def close(self) -> None:
        self.store.close()
