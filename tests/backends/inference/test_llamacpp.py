"""The llama.cpp backend on a GGUF this module writes from the tiny Qwen2, through the shared contract,
plus what is its own: finding the GGUF, the crash probe and its fallback, the context limit, and a
Korean round trip through the HTTP API with the official ``openai`` SDK.

Without llama-cpp-python the llama.cpp tests skip (``make`` installs it); under CI=true they fail.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path

import pytest

from changjak.backends.inference import llamacpp
from changjak.backends.inference.base import GenerationParams
from changjak.errors import BackendError, ServiceUnavailable
from changjak.settings import LlamaCppSettings
from tests.backends.inference.contract import PROMPTS, BackendContract, ask, collect, text_of
from tests.conftest import CI

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
OPTIONS = LlamaCppSettings(n_threads=1, n_ctx=256, parallel=2)


def require_llama_cpp() -> None:
    if not HAVE_LLAMA_CPP:
        if CI:
            pytest.fail("llama-cpp-python is required under CI=true (the Makefile installs it)")
        pytest.skip("llama-cpp-python is not installed (run `make .venv/.llamacpp`)")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 as an f16 GGUF, written by the export's converter."""
    require_llama_cpp()
    from changjak.export import convert

    return convert(tiny_model_dir, tmp_path_factory.mktemp("tiny-gguf") / "model-f16.gguf")


class TestLlamaCppContract(BackendContract):
    @pytest.fixture
    def backend(self, tiny_gguf: Path):
        backend = llamacpp.LlamaCppBackend.load(tiny_gguf, model_id="tiny", options=OPTIONS)
        yield backend
        asyncio.run(backend.aclose())

    def tokens_generated(self, backend: llamacpp.LlamaCppBackend) -> int:
        return backend.decoded


# --- finding the model ------------------------------------------------------------------------

def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    return path


def test_an_exported_model_in_the_version_wins_over_the_base(tmp_path: Path) -> None:
    base = touch(tmp_path / "base" / "base.gguf")
    exported = touch(tmp_path / "version" / "model-q8_0.gguf")
    (tmp_path / "version" / "adapter_config.json").write_text("{}")
    assert llamacpp.find_gguf(base.parent, exported.parent) == (exported, None)


def test_a_gguf_lora_adapter_is_applied_to_the_gguf_base(tmp_path: Path) -> None:
    base = touch(tmp_path / "base" / "base.gguf")
    adapter = touch(tmp_path / "version" / "adapter-f16.gguf")
    assert llamacpp.find_gguf(base, adapter.parent) == (base, adapter)
    assert llamacpp.find_gguf(base.parent, None) == (base, None)


def test_a_peft_adapter_or_a_safetensors_base_says_to_export(tmp_path: Path) -> None:
    base = touch(tmp_path / "base" / "base.gguf")
    (tmp_path / "version").mkdir()
    (tmp_path / "version" / "adapter_config.json").write_text("{}")
    with pytest.raises(BackendError, match="not in GGUF form") as e:
        llamacpp.find_gguf(base, tmp_path / "version")
    assert "changjak export" in str(e.value)
    (tmp_path / "hf").mkdir()
    with pytest.raises(BackendError, match="needs a GGUF model"):
        llamacpp.find_gguf(tmp_path / "hf", None)


# --- the crash probe --------------------------------------------------------------------------

def test_a_crash_on_the_first_decode_falls_back_to_no_extra_buffer_types(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    model = touch(tmp_path / "m.gguf")
    probed, opened = [], []
    monkeypatch.setattr(llamacpp, "probe", lambda m, lora, n, *, extra_bufts: probed.append(extra_bufts)
                        or not extra_bufts)
    monkeypatch.setattr(llamacpp, "open_llama", lambda m, lora, opts, *, extra_bufts: opened.append(extra_bufts))
    monkeypatch.setattr(llamacpp.LlamaCppBackend, "__init__", lambda self, llm, **kwargs: None)
    with caplog.at_level(logging.WARNING):
        llamacpp.LlamaCppBackend.load(model, model_id="m", options=LlamaCppSettings())
    assert probed == [True, False] and opened == [False]
    assert "use_extra_bufts=False" in caplog.text


def test_a_build_that_crashes_either_way_is_a_backend_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llamacpp, "probe", lambda *a, **k: False)
    with pytest.raises(BackendError, match="crashes") as e:
        llamacpp.LlamaCppBackend.load(touch(tmp_path / "m.gguf"), model_id="m", options=LlamaCppSettings())
    assert "make" in str(e.value)


def test_the_probe_decodes_a_token_of_a_real_gguf_in_a_subprocess(tiny_gguf: Path) -> None:
    llamacpp._probed.clear()
    assert llamacpp.probe(tiny_gguf, None, 1, extra_bufts=True)
    assert llamacpp.probe(tiny_gguf, None, 1, extra_bufts=False)


def test_the_probe_reports_a_broken_file_as_such_not_as_a_crash(tmp_path: Path) -> None:
    require_llama_cpp()
    with pytest.raises(BackendError, match="cannot load"):
        llamacpp.probe(touch(tmp_path / "broken.gguf"), None, 1, extra_bufts=True)


def test_the_extra_buffer_types_setting_reaches_the_model_params() -> None:
    require_llama_cpp()
    import llama_cpp

    with llamacpp._model_params(use_extra_bufts=False, n_seq_max=6):
        assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is False
        assert llama_cpp.llama_cpp.llama_context_default_params().n_seq_max == 6
    assert llama_cpp.llama_model_default_params().use_extra_bufts is True
    assert llama_cpp.llama_context_default_params().n_seq_max == 1


# --- requests ---------------------------------------------------------------------------------

@pytest.fixture
def one_context(tiny_gguf: Path):
    backend = llamacpp.LlamaCppBackend.load(tiny_gguf, model_id="tiny", options=OPTIONS.model_copy(
        update={"parallel": 1, "n_ctx": 256, "use_extra_bufts": False}))
    yield backend
    asyncio.run(backend.aclose())


@pytest.mark.anyio
async def test_a_prompt_longer_than_the_context_is_refused(one_context: llamacpp.LlamaCppBackend) -> None:
    with pytest.raises(BackendError, match="context holds 256"):
        await collect(one_context, ask("주인공은 " * 400), max_tokens=4)


@pytest.mark.anyio
async def test_the_reply_stops_at_the_end_of_the_context(one_context: llamacpp.LlamaCppBackend) -> None:
    chunks = await collect(one_context, ask("용"), max_tokens=500, temperature=0)
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].prompt_tokens + chunks[-1].completion_tokens == 256


@pytest.mark.anyio
async def test_requests_beyond_the_slots_wait_their_turn(one_context: llamacpp.LlamaCppBackend) -> None:
    replies = await asyncio.gather(*(collect(one_context, ask("용"), max_tokens=6, temperature=0) for _ in range(3)))
    assert len({text_of(r) for r in replies}) == 1 and all(r[-1].completion_tokens == 6 for r in replies)


@pytest.mark.anyio
async def test_a_named_adapter_is_a_backend_error_and_a_closed_backend_refuses(
        one_context: llamacpp.LlamaCppBackend) -> None:
    with pytest.raises(BackendError, match="adapter"):
        await collect(one_context, ask("용"), max_tokens=2, adapter="challenger")
    await one_context.aclose()
    assert not await one_context.ready()
    with pytest.raises(BackendError, match="closed"):
        await anext(one_context.generate(ask("용"), GenerationParams(max_tokens=2)))


@pytest.mark.anyio
async def test_korean_streams_through_the_http_api_with_the_openai_sdk(make_settings, tiny_gguf: Path) -> None:
    from changjak.serve.app import create_app
    from tests.serve.conftest import KEY, serving

    # the gateway adds its fenced system prompt: ~500 tokens of the tiny tokenizer
    backend = llamacpp.LlamaCppBackend.load(tiny_gguf, model_id="changjak-writer",
                                            options=OPTIONS.model_copy(update={"n_ctx": 2048}))
    app = create_app(make_settings(api_keys=KEY), backend, model_version="1")
    try:
        async with serving(app) as client:
            stream = await client.chat.completions.create(
                model="changjak-writer", stream=True, max_tokens=24, temperature=1.0, seed=3,
                messages=[{"role": "user", "content": "비 내리는 골목의 이야기를 들려주세요"}])
            pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    finally:
        await backend.aclose()
    reply = "".join(pieces)
    assert reply and not reply.endswith("\ufffd")
    assert reply.encode("utf-8").decode("utf-8") == reply


# --- batching --------------------------------------------------------------------------------

def load(tiny_gguf: Path, **options) -> llamacpp.LlamaCppBackend:
    return llamacpp.LlamaCppBackend.load(tiny_gguf, model_id="tiny", options=OPTIONS.model_copy(update=options),
                                         max_queue=options.pop("max_queue", 64))


@pytest.mark.anyio
async def test_concurrent_requests_share_decode_steps(tiny_gguf: Path) -> None:
    backend = load(tiny_gguf, parallel=8)
    try:
        replies = await asyncio.gather(*(collect(backend, ask(p), max_tokens=12, temperature=0)
                                         for p in PROMPTS))
        batched_steps = backend.batcher.steps
        for prompt, reply in zip(PROMPTS, replies, strict=True):
            assert text_of(reply) == text_of(await collect(backend, ask(prompt), max_tokens=12, temperature=0))
        alone_steps = backend.batcher.steps - batched_steps
    finally:
        await backend.aclose()
    tokens = sum(r[-1].completion_tokens for r in replies)
    assert tokens > 8 * 6
    assert batched_steps < alone_steps / 3  # one llama_decode a step for all eight, not one each


@pytest.mark.anyio
async def test_a_request_joins_a_running_batch_and_both_answer_as_alone(tiny_gguf: Path) -> None:
    backend = load(tiny_gguf, parallel=4)
    try:
        alone = [text_of(await collect(backend, ask(p), max_tokens=20, temperature=0)) for p in PROMPTS[:2]]
        first = backend.generate(ask(PROMPTS[0]), GenerationParams(max_tokens=20, temperature=0))
        head = [await anext(first) for _ in range(3)]  # it is decoding when the second one arrives
        second = asyncio.ensure_future(collect(backend, ask(PROMPTS[1]), max_tokens=20, temperature=0))
        rest = [c async for c in first]
        assert text_of(head + rest) == alone[0]
        assert text_of(await second) == alone[1]
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_a_prompt_longer_than_a_step_is_prefilled_in_chunks_beside_a_running_stream(tiny_gguf: Path) -> None:
    long_prompt = ask("비 내리는 골목에서 오래된 편지를 발견했다. " * 12)
    reference = load(tiny_gguf, parallel=2)
    try:
        alone = text_of(await collect(reference, long_prompt, max_tokens=10, temperature=0))
    finally:
        await reference.aclose()
    backend = load(tiny_gguf, parallel=2, n_batch=16)
    try:
        prompt_tokens = len(backend._encode(long_prompt))
        assert prompt_tokens > 4 * 16
        running = asyncio.ensure_future(collect(backend, ask("용"), max_tokens=40, temperature=0))
        chunked = await collect(backend, long_prompt, max_tokens=10, temperature=0)
        await running
    finally:
        await backend.aclose()
    assert text_of(chunked) == alone  # chunked prefill reaches the same KV cache as one pass
    assert backend.batcher.steps >= prompt_tokens / 16


SYSTEM = {"role": "system", "content": "너는 한국어 소설가를 돕는 조수다. 이야기는 따뜻하고 자세하게 쓴다. " * 3}


async def fresh_replies(tiny_gguf: Path, asks: list[list[dict]]) -> list[str]:
    """Each greedy reply on a backend that has seen nothing: what any reuse of KV cells must equal."""
    replies = []
    for messages in asks:
        backend = load(tiny_gguf, parallel=1)
        try:
            replies.append(text_of(await collect(backend, messages, max_tokens=12, temperature=0)))
        finally:
            await backend.aclose()
    return replies


@pytest.mark.anyio
async def test_a_slot_keeps_its_prompt_so_a_shared_prefix_is_prefilled_once(tiny_gguf: Path) -> None:
    system = SYSTEM
    asks = [[system, *ask(p)] for p in (PROMPTS[0], PROMPTS[3], PROMPTS[0], PROMPTS[6])]
    fresh = await fresh_replies(tiny_gguf, asks)
    backend = load(tiny_gguf, parallel=1)
    try:
        shared = len(backend._encode([system]))  # the system turn's tokens (and a little of the user's)
        repeated = len(backend._encode(asks[2])) - 1  # the third prompt is the first again: all but its last token
        replies = [text_of(await collect(backend, messages, max_tokens=12, temperature=0)) for messages in asks]
        reused = backend.batcher.reused
    finally:
        await backend.aclose()
    assert replies == fresh  # kept cells answer exactly as a fresh prefill does, prompt after prompt
    assert reused >= 2 * (shared - 8) + repeated


@pytest.mark.anyio
async def test_a_shared_prefix_is_copied_from_another_sequence_not_prefilled_again(tiny_gguf: Path) -> None:
    system = SYSTEM
    asks = [[system, *ask(p)] for p in PROMPTS[:5]]
    fresh = await fresh_replies(tiny_gguf, asks)
    backend = load(tiny_gguf, parallel=4, n_ctx=2048)
    try:
        shared = len(backend._encode([system]))
        assert shared > 32 + 8
        # copied from a sequence that is decoding: its reply's cells past the prefix must not come along
        running = backend.generate(asks[0], GenerationParams(max_tokens=400, min_tokens=400, temperature=0))
        head = [await anext(running)]
        with backend.batcher._wake:  # the decode thread stops before its next admission: asks[0] still runs
            joining = asyncio.ensure_future(collect(backend, asks[4], max_tokens=12, temperature=0))
            while not backend.batcher.waiting:
                await asyncio.sleep(0)
            assert len(backend.batcher.running) == 1  # asks[0], 400 tokens long: it cannot end meanwhile
        joined = text_of(await joining)
        rest = [c async for c in running]
        assert backend.batcher.copied == 1
        # three at once: two take the slots that kept the prefix, the third copies it into an empty one
        together = await asyncio.gather(*(collect(backend, m, max_tokens=12, temperature=0) for m in asks[1:4]))
        copied, reused = backend.batcher.copied, backend.batcher.reused
    finally:
        await backend.aclose()
    assert list(map(text_of, together)) == fresh[1:4]
    assert copied == 2 and reused >= 4 * (shared - 8)
    assert joined == fresh[4] and text_of(head + rest).startswith(fresh[0])


@pytest.mark.anyio
async def test_seeded_sampling_in_a_batch_draws_as_it_does_alone(tiny_gguf: Path) -> None:
    backend = load(tiny_gguf, parallel=4)
    try:
        params = {"max_tokens": 16, "temperature": 1.0, "top_p": 0.9, "seed": 7}
        alone = text_of(await collect(backend, ask(PROMPTS[0]), **params))
        together = await asyncio.gather(collect(backend, ask(PROMPTS[0]), **params),
                                        collect(backend, ask(PROMPTS[2]), max_tokens=16, temperature=1.0),
                                        collect(backend, ask(PROMPTS[3]), max_tokens=16, temperature=0))
    finally:
        await backend.aclose()
    assert text_of(together[0]) == alone


@pytest.mark.anyio
async def test_cancelling_frees_the_slot_and_a_full_queue_is_refused_with_503(tiny_gguf: Path) -> None:
    backend = load(tiny_gguf, parallel=1, max_queue=1)
    try:
        running = backend.generate(ask("용"), GenerationParams(max_tokens=200, temperature=0))
        await anext(running)
        queued = asyncio.ensure_future(collect(backend, ask("용"), max_tokens=3, temperature=0))
        await asyncio.sleep(0)  # submitted: it waits for the one slot
        with pytest.raises(ServiceUnavailable) as refused:
            await collect(backend, ask("용"), max_tokens=3)
        assert refused.value.status_code == 503 and refused.value.code == "model_overloaded"
        await running.aclose()
        # with one slot, this only ends if the closed request left it (a hang guard, not a timing assert)
        assert (await asyncio.wait_for(queued, timeout=60))[-1].completion_tokens == 3
        assert backend.decoded < 200
    finally:
        await backend.aclose()


# --- LoRA -------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_a_gguf_lora_adapter_applied_at_load_answers_like_the_merged_model(
        tiny_model_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    from changjak.export import convert, convert_lora, merge
    from tests.backends.inference.conftest import build_lora_adapter

    adapter = build_lora_adapter(tiny_model_dir, tmp_path / "peft")
    lora = convert_lora(adapter, tiny_model_dir, tmp_path / "version" / "adapter-f16.gguf")
    merge(tiny_model_dir, adapter, tmp_path / "merged")
    merged = convert(tmp_path / "merged", tmp_path / "merged-f16.gguf")

    async def greedy(base: Path, adapter_dir: Path | None) -> str:
        backend = llamacpp.LlamaCppBackend.load(base, adapter_dir, model_id="tiny", options=OPTIONS)
        try:
            return text_of(await collect(backend, ask("소설의 첫 문장을 써 주세요"), max_tokens=16, temperature=0))
        finally:
            await backend.aclose()

    with_lora = await greedy(tiny_gguf, lora.parent)
    assert with_lora != await greedy(tiny_gguf, None)
    assert with_lora == await greedy(merged, None)


@pytest.mark.anyio
async def test_min_tokens_holds_back_the_end_of_generation(eos_first_model_dir: Path,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    require_llama_cpp()
    from changjak.export import convert

    gguf = convert(eos_first_model_dir, tmp_path_factory.mktemp("eos-first-gguf") / "model-f16.gguf")
    backend = llamacpp.LlamaCppBackend.load(gguf, model_id="tiny", options=OPTIONS)
    try:
        async def final(temperature=0, **params):
            return (await collect(backend, ask("용"), temperature=temperature, **params))[-1]

        assert (await final(max_tokens=20)).completion_tokens == 0  # this model ends at once
        together = await asyncio.gather(final(max_tokens=20, min_tokens=5), final(max_tokens=20))
        assert [(c.completion_tokens, c.finish_reason) for c in together] == [(5, "stop"), (0, "stop")]
        assert (await final(max_tokens=3, min_tokens=5)).finish_reason == "length"
        sampled = await final(temperature=1.0, seed=7, max_tokens=6, min_tokens=6)  # before the chain's draw
        assert (sampled.completion_tokens, sampled.finish_reason) == (6, "length")
    finally:
        await backend.aclose()
