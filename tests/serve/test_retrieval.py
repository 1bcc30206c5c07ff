"""Chats grounded in the tenant's documents: what the model sees, what the client and the audit get."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from changjak.backends.inference.fake import FakeBackend
from changjak.errors import BadRequest
from changjak.serve import retrieval
from changjak.settings import Settings
from tests.serve.capture import Capture
from tests.serve.conftest import KEY, MAX_TOKENS_LIMIT, MODEL, serving
from tests.serve.routes.test_admin import as_key, new_key

pytestmark = pytest.mark.anyio
NOVEL = "주인공 민지는 부산에서 태어났다. 그녀는 바다를 사랑했다."
ASK = {"model": MODEL, "messages": [{"role": "user", "content": "민지의 고향은 어디야?"}]}


@pytest.fixture
def serve_settings(make_settings) -> Settings:
    return make_settings(api_keys=KEY, serve={"max_tokens_limit": MAX_TOKENS_LIMIT},
                         rag={"vectorstore": "memory", "embedder": "hashing", "min_score": -1})


@pytest.mark.parametrize(("raw", "auto", "expected"), [
    (None, False, None), (None, True, {}), (False, True, None), (True, False, {}),
    ({"top_k": 2}, False, {"k": 2, "min_score": None}), ({"min_score": 0.5}, False, {"k": None, "min_score": 0.5}),
])
def test_options(raw, auto, expected):
    assert retrieval.options(raw, auto) == expected


@pytest.mark.parametrize(("raw", "param"), [({"top_k": 0}, "rag.top_k"), ({"top_k": True}, "rag.top_k"),
                                             ({"min_score": 2}, "rag.min_score"), ({"k": 1}, "rag"), ("yes", "rag")])
def test_bad_options_name_the_parameter(raw, param):
    with pytest.raises(BadRequest) as info:
        retrieval.options(raw, False)
    assert info.value.param == param


async def test_a_grounded_chat_sees_the_tenants_document_fenced_and_cites_it(app: FastAPI, fake: FakeBackend,
                                                                             admin: httpx.AsyncClient) -> None:
    dev = as_key(admin, await new_key(admin, name="dev", role="developer", tenant="acme"))
    await admin.post("/v1/rag/documents", json={"id": "novel", "title": "바다의 노래", "text": NOVEL}, **dev)
    user_key = await new_key(admin, name="u", role="user", tenant="acme")
    async with serving(app, api_key=user_key) as sdk:
        answer = await sdk.chat.completions.create(**ASK, extra_body={"rag": True})
    system = fake.seen[0]
    assert system["role"] == "system" and NOVEL in system["content"] and "DATA" in system["content"]
    assert system["content"].index("SYSTEM") < system["content"].index("DATA")  # after the fenced system prompt
    assert answer.model_extra["citations"] == [{"doc_id": "novel", "chunk_id": "novel#0", "title": "바다의 노래",
                                                "score": pytest.approx(answer.model_extra["citations"][0]["score"])}]
    async with serving(app, api_key=user_key) as sdk:
        plain = await sdk.chat.completions.create(**ASK)
    assert NOVEL not in fake.seen[0]["content"] and plain.model_extra.get("citations") is None


async def test_another_tenant_is_never_grounded_in_those_documents(fake: FakeBackend, app: FastAPI,
                                                                  admin: httpx.AsyncClient) -> None:
    await admin.post("/v1/rag/documents", json={"text": NOVEL, "tenant": "acme"})
    other = await new_key(admin, name="g", role="user", tenant="globex")
    async with serving(app, api_key=other) as sdk:
        answer = await sdk.chat.completions.create(**ASK, extra_body={"rag": {"top_k": 3, "min_score": -1}})
    assert all(NOVEL not in m["content"] for m in fake.seen) and answer.model_extra.get("citations") is None


async def test_the_retrieved_chunks_go_to_the_audit_context_and_streams_carry_citations(
        serve_settings: Settings, fake: FakeBackend) -> None:
    from changjak.serve.app import create_app

    capture = Capture(create_app(serve_settings, fake))
    app = capture.app
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=capture), base_url="http://t",
                               headers={"Authorization": f"Bearer {KEY}"})
    async with app.router.lifespan_context(app), client as admin:
        await admin.post("/v1/rag/documents", json={"id": "novel", "text": NOVEL, "tenant": "acme"})
        user_key = await new_key(admin, name="u", role="user", tenant="acme")
        body = {**ASK, "stream": True, "rag": True}
        async with admin.stream("POST", "/v1/chat/completions", json=body, **as_key(admin, user_key)) as r:
            lines = [line async for line in r.aiter_lines() if line.startswith("data: {")]
    assert '"citations":[{"doc_id":"novel"' in lines[0]
    assert capture.contexts[-1].decisions["rag"] == [{"doc_id": "novel", "chunk_id": "novel#0",
                                                      "score": capture.contexts[-1].decisions["rag"][0]["score"]}]
    assert capture.contexts[-1].decisions["cache"] == "skip"  # a grounded answer is never cached
