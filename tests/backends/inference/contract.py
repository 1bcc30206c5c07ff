"""The contract every inference backend keeps, as a test class to subclass.

    class TestMyBackendContract(BackendContract):
        @pytest.fixture
        def backend(self, tiny_model_dir):          # the backend under test, on a tiny model
            return MyBackend.load(tiny_model_dir, device="cpu", dtype="fp32", model_id="tiny")

        def tokens_generated(self, backend):        # optional: total tokens it has decoded so far
            return backend.decoded

        adapters = ("a", "b")                       # optional: LoRA adapters it loaded by name

Then ``pytest tests/backends/inference/test_my_backend.py`` runs every ``test_*`` below on it.
It covers the stream's shape (text deltas, then one final chunk with ``finish_reason`` and the
token counts), ``stop`` (one spanning two deltas, never returned), ``max_tokens``, cancellation
(closing the iterator stops that generation within one decode step), 8 concurrent requests
(each equal to the same request run alone, when greedy), a Korean round trip, and LoRA adapters
per request. The model may be random: tests compare a backend with itself, never with fixed text.
The module is named ``contract.py`` (not ``test_*``) so pytest collects it only through a subclass.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from changjak.backends.inference.base import GenerationChunk, GenerationParams, InferenceBackend
from changjak.errors import BackendError

HANGUL = re.compile("[가-힣]")
PROMPTS = [  # Korean prompts of different lengths, so a batching backend must pad and mask
    "소설의 첫 문장을 써 주세요",
    "주인공은",
    "비 내리는 골목에서 오래된 편지를 발견한 주인공의 이야기를 길게 들려주세요. 분위기는 쓸쓸하게.",
    "바다는 조용했다. 그 다음은?",
    "시를 한 편 써 줘",
    "오늘 날씨가 정말 좋네요. 산책하는 장면을 묘사해 주세요.",
    "용",
    "마법사와 고양이가 함께 여행을 떠나는 동화의 줄거리를 알려 주세요.",
]


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


async def collect(backend: InferenceBackend, messages: list[dict], **params: Any) -> list[GenerationChunk]:
    return [c async for c in backend.generate(messages, GenerationParams(**params))]


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


class BackendContract:
    """Subclass it with a ``backend`` fixture; see the module docstring."""

    adapters: tuple[str, ...] = ()  # names accepted as GenerationParams.adapter; two or more to test
    max_tokens = 24  # the tiny model must not end its turn sooner than this, greedy, on PROMPTS[0]

    @pytest.fixture
    def backend(self) -> InferenceBackend:
        raise NotImplementedError("override the `backend` fixture with the backend under test")

    def tokens_generated(self, backend: Any) -> int | None:
        """Tokens the backend has decoded so far, over every request; None if it cannot tell."""
        return None

    @pytest.mark.anyio
    async def test_it_follows_the_protocol(self, backend: InferenceBackend) -> None:
        assert isinstance(backend, InferenceBackend)
        assert isinstance(backend.model_id, str)
        assert await backend.ready()

    @pytest.mark.anyio
    async def test_it_streams_deltas_then_one_final_chunk_with_the_counts(self, backend: InferenceBackend) -> None:
        chunks = await collect(backend, ask(PROMPTS[0]), max_tokens=self.max_tokens, temperature=0)
        *deltas, last = chunks
        assert deltas, "the reply should come as more than one chunk"
        assert all(c.text and c.finish_reason is None for c in deltas)
        assert all((c.prompt_tokens, c.completion_tokens) == (0, 0) for c in deltas)
        assert last.text == "" and last.finish_reason in ("stop", "length")
        assert last.prompt_tokens > 0 and 0 < last.completion_tokens <= self.max_tokens

    @pytest.mark.anyio
    async def test_greedy_replies_repeat(self, backend: InferenceBackend) -> None:
        first = await collect(backend, ask(PROMPTS[0]), max_tokens=self.max_tokens, temperature=0)
        second = await collect(backend, ask(PROMPTS[0]), max_tokens=self.max_tokens, temperature=0)
        assert text_of(first) == text_of(second)
        assert first[-1] == second[-1]

    @pytest.mark.anyio
    async def test_max_tokens_ends_the_reply_with_length_and_exactly_that_many_tokens(
            self, backend: InferenceBackend) -> None:
        full = text_of(await collect(backend, ask(PROMPTS[0]), max_tokens=self.max_tokens, temperature=0))
        short = await collect(backend, ask(PROMPTS[0]), max_tokens=5, temperature=0)
        assert (short[-1].finish_reason, short[-1].completion_tokens) == ("length", 5)
        assert full.startswith(text_of(short))

    @pytest.mark.anyio
    async def test_a_stop_string_spanning_two_deltas_ends_the_reply_before_it(
            self, backend: InferenceBackend) -> None:
        pieces = [c.text for c in await collect(backend, ask(PROMPTS[0]), max_tokens=self.max_tokens,
                                                temperature=0) if c.text]
        full = "".join(pieces)
        i = next(i for i in range(1, len(pieces) - 1) if pieces[i].strip() and pieces[i + 1].strip())
        stop = pieces[i][-1] + pieces[i + 1][0]  # the end of one delta and the start of the next

        chunks = await collect(backend, ask(PROMPTS[0]), max_tokens=self.max_tokens, temperature=0,
                               stop=["never-generated", stop])
        assert text_of(chunks) == full[: full.find(stop)]
        assert stop not in text_of(chunks)
        assert chunks[-1].finish_reason == "stop"
        assert chunks[-1].completion_tokens < self.max_tokens

    @pytest.mark.anyio
    async def test_closing_the_stream_stops_its_generation_within_one_step(self, backend: InferenceBackend) -> None:
        stream = backend.generate(ask(PROMPTS[0]), GenerationParams(max_tokens=400, temperature=0))
        await anext(stream)
        await stream.aclose()
        at_close = self.tokens_generated(backend)
        # Another request runs to its end: the backend has moved on, and had every chance to go on
        # with the closed one. No sleeps, so a slow machine cannot make this pass or fail.
        after = await collect(backend, ask(PROMPTS[1]), max_tokens=8, temperature=0)
        assert after[-1].finish_reason in ("stop", "length")
        if at_close is not None:
            # the step running when it closed may finish (+1); the other request may also decode its EOS
            assert self.tokens_generated(backend) <= at_close + 1 + after[-1].completion_tokens + 1
            assert at_close < 400

    @pytest.mark.anyio
    async def test_eight_concurrent_requests_each_equal_the_same_request_alone(
            self, backend: InferenceBackend) -> None:
        alone = [await collect(backend, ask(p), max_tokens=12, temperature=0) for p in PROMPTS]
        together = await asyncio.gather(*(collect(backend, ask(p), max_tokens=12, temperature=0) for p in PROMPTS))
        assert [text_of(c) for c in together] == [text_of(c) for c in alone]
        assert [c[-1] for c in together] == [c[-1] for c in alone]

    @pytest.mark.anyio
    async def test_korean_round_trips_without_broken_characters_at_chunk_edges(
            self, backend: InferenceBackend) -> None:
        replies = []
        for seed in range(3):  # sampled: a random tiny model emits stray UTF-8 bytes, the hard case
            chunks = await collect(backend, ask(PROMPTS[2]), max_tokens=32, temperature=1.0, seed=seed)
            for c in chunks:
                c.text.encode("utf-8")  # no lone surrogates
                # a delta never ends inside a character (a stray byte mid-text is the model's own)
                assert not c.text.endswith("\ufffd"), repr(c.text)
            replies.append(text_of(chunks))
        assert HANGUL.search("".join(replies)), "the model should answer a Korean prompt with some Hangul"

    @pytest.mark.anyio
    async def test_seeded_sampling_repeats(self, backend: InferenceBackend) -> None:
        a = await collect(backend, ask(PROMPTS[0]), max_tokens=16, temperature=1.0, seed=7)
        b = await collect(backend, ask(PROMPTS[0]), max_tokens=16, temperature=1.0, seed=7)
        assert text_of(a) == text_of(b)

    @pytest.mark.anyio
    async def test_two_adapters_in_one_batch_answer_differently_and_as_they_do_alone(
            self, backend: InferenceBackend) -> None:
        if len(self.adapters) < 2:
            pytest.skip("the backend loads no LoRA adapters by name")
        first, second = self.adapters[:2]
        alone = [await collect(backend, ask(PROMPTS[0]), max_tokens=16, temperature=0, adapter=a)
                 for a in (first, second)]
        together = await asyncio.gather(*(collect(backend, ask(PROMPTS[0]), max_tokens=16, temperature=0, adapter=a)
                                          for a in (first, second, first)))
        assert text_of(alone[0]) != text_of(alone[1])
        assert [text_of(c) for c in together] == [text_of(alone[0]), text_of(alone[1]), text_of(alone[0])]

    @pytest.mark.anyio
    async def test_an_adapter_it_did_not_load_is_a_backend_error(self, backend: InferenceBackend) -> None:
        if not self.adapters:
            pytest.skip("the backend loads no LoRA adapters by name")
        with pytest.raises(BackendError, match="adapter"):
            await collect(backend, ask(PROMPTS[0]), max_tokens=4, adapter="never-loaded")
