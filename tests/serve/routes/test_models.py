"""GET /v1/models lists the served model, for key holders only."""

from __future__ import annotations

import openai
import pytest

from tests.serve.conftest import MODEL, serving

pytestmark = pytest.mark.anyio


async def test_the_served_model_is_listed(sdk: openai.AsyncOpenAI) -> None:
    models = [m async for m in sdk.models.list()]
    assert [(m.id, m.object, m.owned_by) for m in models] == [(MODEL, "model", "changjak")]
    assert models[0].created > 0


async def test_listing_needs_a_key(app) -> None:
    async with serving(app, api_key="wrong") as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()
