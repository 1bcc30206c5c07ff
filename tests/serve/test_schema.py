"""Property-based tests of the HTTP API against its own OpenAPI schema (schemathesis).

Every operation is called with generated inputs, valid and invalid, holding the bootstrap (admin)
key, on the fake backend: no answer may be a 5xx, and every answer must match what the schema
says (status, content type, body; errors are the OpenAI shape, see ``changjak.serve.openapi``).
The quick run keeps a few examples per operation and skips the slow ones; ``-m e2e`` runs all
operations with many more. (Operations are walked in one test: schemathesis' pytest plugin does
not run under pytest 9 here.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from changjak.backends.inference.fake import FakeBackend
from changjak.serve.app import create_app
from tests.serve.conftest import KEY, MODEL

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Slow by nature here: RAG ingest embeds with e5 on CPU, champion moves go to the MLflow registry.
SLOW = ("/v1/rag/", "/admin/models/")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from changjak.settings import Settings

    home = tmp_path_factory.mktemp("schema") / ".changjak"
    app = create_app(Settings.load(api_keys=KEY, home=home, serve={"max_tokens_limit": 64}), FakeBackend(MODEL))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # the app's lifespan ran in schemathesis' own event loop thread


def fuzz(api, *, examples: int, skip: tuple[str, ...] = ()) -> list[str]:
    """Run every operation (but ``skip``); returns their labels, or fails listing every bad one."""
    done, failed = [], []
    for result in api.get_all_operations():
        operation = result.ok()
        if any(part in operation.path for part in skip):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                                 suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def check(case) -> None:
                case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS)

            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # no parameters to get wrong: nothing to try
            except Exception as e:  # noqa: BLE001 - collected, so one run names every failing operation
                failed.append(f"{operation.label} ({mode.value}): {str(e).strip().splitlines()[0][:300]}")
        done.append(operation.label)
    assert not failed, "\n".join(failed)
    return done


def test_no_5xx_and_answers_match_the_schema(api) -> None:
    done = fuzz(api, examples=10, skip=SLOW)
    assert {"POST /v1/chat/completions", "GET /v1/models", "GET /metrics", "GET /readyz"} <= set(done)


@pytest.mark.e2e
def test_every_operation_at_length(api) -> None:
    from schemathesis.python import asgi

    with asgi.get_client(api.app) as client:  # MLflow makes its tables on first use: not a case's time
        client.post("/admin/models/x/rollback", json={"reason": "warm"}, headers={"Authorization": f"Bearer {KEY}"})
    fuzz(api, examples=50)
