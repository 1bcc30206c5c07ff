"""The fake backend follows the same rules as the real ones: length, stop, chunks, failure."""

from __future__ import annotations

import pytest

from changjak.backends.inference.base import GenerationChunk, GenerationParams
from changjak.backends.inference.fake import FakeBackend
from changjak.errors import BackendError
from tests.backends.inference.contract import BackendContract

pytestmark = pytest.mark.anyio
MESSAGES = [{"role": "system", "content": "짧게"}, {"role": "user", "content": "바다는 조용했다."}]


class CountingFake(FakeBackend):
    """The fake, also counting every token it has made (its ``emitted`` restarts with each request)."""

    total = 0

    @property
    def emitted(self) -> int:
        return self.__dict__.get("_emitted", 0)

    @emitted.setter
    def emitted(self, n: int) -> None:
        self.total += max(0, n - self.emitted)
        self.__dict__["_emitted"] = n


class TestFakeBackendContract(BackendContract):
    @pytest.fixture
    def backend(self) -> CountingFake:
        return CountingFake()

    def tokens_generated(self, backend: CountingFake) -> int:
        return backend.total


async def collect(backend: FakeBackend, **params) -> list[GenerationChunk]:
    return [c async for c in backend.generate(MESSAGES, GenerationParams(**params))]


async def test_it_echoes_the_last_user_message_one_character_at_a_time() -> None:
    chunks = await collect(FakeBackend())
    assert [c.text for c in chunks[:-1]] == list("바다는 조용했다.")
    assert chunks[-1] == GenerationChunk("", "stop", prompt_tokens=2 + 9, completion_tokens=9)


async def test_max_tokens_cuts_the_reply_with_finish_reason_length() -> None:
    chunks = await collect(FakeBackend(), max_tokens=3)
    assert "".join(c.text for c in chunks) == "바다는"
    assert (chunks[-1].finish_reason, chunks[-1].completion_tokens) == ("length", 3)


async def test_a_stop_string_ends_the_reply_before_it() -> None:
    chunks = await collect(FakeBackend(), stop=["조용"])
    assert "".join(c.text for c in chunks) == "바다는 "
    assert chunks[-1].finish_reason == "stop"


async def test_it_fails_after_the_given_number_of_tokens() -> None:
    backend = FakeBackend(fail_after=2)
    seen: list[str] = []
    with pytest.raises(BackendError, match="after 2 tokens"):
        async for chunk in backend.generate(MESSAGES, GenerationParams()):
            seen.append(chunk.text)
    assert seen == ["바", "다"]
    assert not backend.running


async def test_ready_until_closed() -> None:
    backend = FakeBackend()
    assert await backend.ready()
    await backend.aclose()
    assert not await backend.ready()
    assert not await FakeBackend(is_ready=False).ready()
