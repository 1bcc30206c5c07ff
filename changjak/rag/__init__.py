"""Retrieval-augmented generation: Korean-aware chunks, e5 embeddings, one vector collection per tenant.

    changjak rag ingest --tenant acme notes/*.md        # chunk, check, embed, store
    changjak rag search --tenant acme "주인공의 고향은?"  # the nearest chunks, with scores

Every document goes through the safety policy's ``document`` surface at ingest, chunk by chunk:
PII is masked before anything is stored, and a chunk the policy blocks (an indirect prompt
injection, hate) refuses the whole document with the chunk and the reason. At answer time the
retrieved chunks are fenced as data (:func:`changjak.safety.fencing.fence_documents`), so text in
a document cannot pose as instructions.
"""

from changjak.rag.index import Citation, IngestResult, RagIndex

__all__ = ["Citation", "IngestResult", "RagIndex"]
